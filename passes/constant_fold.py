"""constant_fold: replace a node whose inputs are all constants by a constant of its value.

The value comes from the op's numpy reference (`registry.OPS[op].reference`), the same code
the reference interpreter runs, so folding cannot change what the graph computes.

A constant broadcast, ``broadcast_to(c)``, counts as a constant input, but is itself never
folded (as in XLA): materializing it multiplies the constant's size, and consumers see
through it anyway. For the same reason a folded result whose elements are all equal
(bit for bit) becomes ``broadcast_to(scalar constant)`` rather than a full array: one number
is stored, and the fuser treats a scalar constant as an immediate.

Not folded:
- sources (placeholders and variables change between calls; constants are already folded);
- region ops and `get` (`Fusion.CONTROL`): a loop's bodies run, and fold, once unrolled
  (`lower_control`), and a `get` reads no constant;
- collective ops (`OpDef.collective`, allreduce): their value comes from the other ranks;
- random ops (`OpDef.random`): they are pure, but computing them is cheaper than storing
  them, and a draw baked into the graph would hide where the randomness comes from;
- results with more than `options.fold_max_elements` elements (a large constant costs
  memory and load bandwidth at every call, and time to compute now);
- nodes whose reference rejects the constant values (a `GraphcError`, e.g. an index out of
  range): the error is reported, with the user's line, when the graph runs.
"""

from __future__ import annotations

import numpy as np

from graphc.errors import GraphcError
from graphc.ir import SOURCE_OPS, Graph, Node, Signature
from graphc.ir.opdef import Fusion, OpDef
from graphc.ops import registry

from .rewrite import PassContext, PassDef, Pending, Rebuilder

__all__ = ["constant_fold", "evaluable", "reference_value"]


def constant_value(rb: Rebuilder, node: Node) -> np.ndarray | None:
    """The value of a constant, or of a broadcast constant (as a read-only numpy view)."""
    if node.op == "broadcast_to":
        inner = rb.value(node.inputs[0])
        return None if inner is None else np.broadcast_to(inner, node.shape)
    return rb.value(node)


def evaluable(op: OpDef) -> bool:
    """Whether a node of `op` with known inputs may be computed at compile time by its
    reference: not a source, not random, not a collective (its value is the whole world's)
    and not a region op (its reference needs the interpreter to run bodies)."""
    return not (op.name in SOURCE_OPS or op.random or op.collective
                or op.fusion == Fusion.CONTROL)


def reference_value(p: Pending | Node, values: list[np.ndarray]) -> np.ndarray | None:
    """`p`'s array computed by its op's reference from its inputs' arrays `values`, in
    `p`'s dtype (None where the reference refuses them)."""
    try:
        with np.errstate(all="ignore"):  # inf/nan are folded as the runtime computes them
            result = np.asarray(registry.get(p.op).evaluate_reference(values, p.attrs, p.type))
    except GraphcError:
        return None
    if result.shape != p.shape:
        raise GraphcError(f"reference of %{p.name} returned shape {result.shape}, its type is "
                          f"{p.type} (a bug in the op's reference)", op=p.op, loc=p.loc)
    # The reference interpreter casts too: a reference may compute in a wider dtype.
    return result.astype(p.dtype.np, order="C", copy=False)


def fold(p: Pending, rb: Rebuilder, max_elements: int) -> Node | None:
    """op(c1, ..., cn) -> c  (every input constant; c computed by the op's reference)"""
    op = registry.get(p.op)
    if not evaluable(op) or p.op == "broadcast_to" or p.type.size > max_elements:
        return None
    values = [constant_value(rb, i) for i in p.inputs]
    if any(v is None for v in values):
        return None
    result = reference_value(p, values)
    if result is None:
        return None
    if result.size > 1 and _all_equal_bits(result):
        scalar = rb.constant(result.reshape(-1)[0], at=p)
        return rb.emit("broadcast_to", (scalar,), {"shape": p.shape}, at=p, name=p.name)
    return rb.constant(result, at=p, name=p.name)


def _all_equal_bits(a: np.ndarray) -> bool:
    """Every element has the first one's bytes (so 0.0 and -0.0 differ, equal NaNs match)."""
    rows = a.reshape(-1).view(np.uint8).reshape(a.size, a.itemsize)
    return bool((rows == rows[0]).all())


def constant_fold(graph: Graph, sig: Signature, ctx: PassContext) -> tuple[Graph, Signature]:
    """Fold every foldable node, inputs first, so whole constant subgraphs collapse."""
    limit = ctx.options.fold_max_elements

    def visit(p: Pending, rb: Rebuilder) -> Node:
        folded = fold(p, rb, limit)
        if folded is None:
            return rb.keep(p)
        ctx.hit(fold)
        return folded

    return Rebuilder(graph, visit).run().finish(sig)


PASS = PassDef("constant_fold", constant_fold,
               "evaluate nodes whose inputs are all constants (not random ops or broadcasts, "
               "not results above fold_max_elements)",
               # rewrites can leave constant operands (integer_matmul: its zero-point casts)
               enabled_by=frozenset({"simplify", "integer_matmul"}))
