"""constant_fold: replace a node whose inputs are all constants by a constant of its value.

The value comes from the op's numpy reference (`registry.OPS[op].reference`), the same code
the reference interpreter runs, so folding cannot change what the graph computes. Not
folded:

- sources (placeholders and variables change between calls; constants are already folded);
- random ops (`OpDef.random`): they are pure, but computing them is cheaper than storing
  them, and a draw baked into the graph would hide where the randomness comes from;
- results with more than `options.fold_max_elements` elements: folding
  ``broadcast_to(0.0, (1024, 1024))`` would trade one cheap node for megabytes of data;
- nodes whose reference rejects the constant values (a `GraphcError`, e.g. an index out of
  range): the error is reported, with the user's line, when the graph runs.
"""

from __future__ import annotations

import numpy as np

from graphc.errors import GraphcError
from graphc.ir import SOURCE_OPS, Graph, Node, Signature
from graphc.ops import registry

from .rewrite import PassContext, PassDef, Pending, Rebuilder

__all__ = ["constant_fold"]


def fold(p: Pending, rb: Rebuilder, max_elements: int) -> Node | None:
    """op(c1, ..., cn) -> c (every input a constant; c evaluated by the op's reference)."""
    op = registry.get(p.op)
    if p.op in SOURCE_OPS or op.random or p.type.size > max_elements:
        return None
    values = [rb.value(i) for i in p.inputs]
    if any(v is None for v in values):
        return None
    try:
        with np.errstate(all="ignore"):  # inf/nan results are folded as the runtime computes them
            result = np.asarray(op.reference(values, p.attrs))
    except GraphcError:
        return None
    if result.shape != p.shape:
        raise GraphcError(f"reference of %{p.name} returned shape {result.shape}, its type is "
                          f"{p.type} (a bug in the op's reference)", op=p.op, loc=p.loc)
    # The reference interpreter also casts: a reference may compute in a wider dtype.
    return rb.constant(result.astype(p.dtype.np, copy=False), at=p, name=p.name)


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
               "evaluate nodes whose inputs are all constants (not random ops, not results "
               "above fold_max_elements)")
