"""loop_hoist: work in a kept scan's body that does not depend on the carry moves out of it.

    scan(consts, init, xs){ ... w' = f(consts) ... m = x_t @ W ... }
      -> w = f(consts) once before the loop, passed in as a new const;
         M = reshape(xs) @ W, one GEMM over every step before the loop, whose row t the
         body reads as a new x (cuDNN's and the JAX LSTM benchmark's input projection)

Each node of the body is classified by what it reads:

- *invariant*: only consts and the body's constants. Computed once outside: every such node
  that is not itself a constant (the body's pipeline folds those) is hoisted.
- *mapped*: x slices (and invariants), not the carry, through ops with a batching rule
  (`_BATCH`): computed for all steps at once as an array with a leading step axis.
  Only the heavy ones are worth it (a matmul: T small GEMMs become one big one, which also
  leaves the loop's critical path); they are hoisted with the mapped nodes they read.
  Elementwise mapped work stays in the loop: moving it out would cost the same arithmetic
  plus a T-times-larger array.
- everything else (the carry's cone, random ops, collectives, region ops, in-place ops)
  stays in the body.

A body result is never hoisted (the loop writes it every step from the body's own code);
what it reads may be. The hoisted values at the boundary become new params; params the
body no longer reads are dropped, carries are kept as they are. A mapped value larger than
`MAX_HOISTED_BYTES` stays in the loop, so the pass never trades a small per-step temporary
for an unbounded array.

The body's own pipeline (which runs when code generation compiles it) then sees a smaller
body; nested loops are hoisted there, level by level. The pass keeps what every scan
computes, bit for bit: the hoisted nodes are the same ops on the same values, and a
matmul's rows do not depend on how many rows it is given (the GEMM kernels accumulate each
output element over K in the same order whatever M is). It runs once, right after
lower_control, which leaves only the loops that stay loops.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from graphc.ir import Attrs, Graph, Node, Region, Signature
from graphc.ops import registry

from .constant_fold import evaluable
from .loop_rewrite import rebuild_region, rewrite_kept_scans
from .rewrite import PassContext, PassDef, Pending, Rebuilder

__all__ = ["MAX_HOISTED_BYTES", "loop_hoist"]

# A mapped value (one row per step) bigger than this stays in the loop (256 MiB).
MAX_HOISTED_BYTES = 1 << 28


class Kind(enum.Enum):
    """What a body node depends on."""

    CONSTANT = "constant"  # a constant node of the body
    INVARIANT = "invariant"  # consts (and constants): the same every step
    MAPPED = "mapped"  # x slices and invariants, through batchable ops
    VARIANT = "variant"  # the carry, or an op that must stay in the loop


# --- batching rules: a body op applied to every step's values at once -------------------------
# A rule gets the outer values of the node's inputs (mapped ones with a leading step axis of
# `steps`, invariant ones as in the body) and emits the stacked result, or returns None when
# it has no batched form for these operands.

Emit = Callable[[str, Sequence[Node], dict], Node]


@dataclass(frozen=True)
class BatchCall:
    node: Node  # the body node
    inputs: list[Node]  # outer values of its inputs
    mapped: list[bool]  # which inputs carry a step axis
    steps: int
    emit: Emit


def _batch_pointwise(c: BatchCall) -> Node:
    """f(a, b, ...) with numpy broadcasting: give a mapped operand of lower rank than the
    result ones after its step axis, so that it lines up; invariant ones broadcast."""
    rank = c.node.type.ndim
    args = []
    for value, is_mapped in zip(c.inputs, c.mapped):
        inner = value.type.shape[1:] if is_mapped else value.type.shape
        if is_mapped and len(inner) < rank:
            value = c.emit("reshape", [value],
                           {"shape": (c.steps, *(1,) * (rank - len(inner)), *inner)})
        args.append(value)
    return c.emit(c.node.op, args, dict(c.node.attrs))


def _batch_reshape(c: BatchCall) -> Node:
    return c.emit("reshape", c.inputs, {"shape": (c.steps, *c.node.attrs["shape"])})


def _batch_transpose(c: BatchCall) -> Node:
    perm = (0, *(p + 1 for p in c.node.attrs["perm"]))
    return c.emit("transpose", c.inputs, {"perm": perm})


def _batch_matmul(c: BatchCall) -> Node | None:
    """a_t @ W for a mapped a and an invariant rank-2 W: all steps' rows in one GEMM."""
    a, w = c.inputs
    if c.mapped != [True, False] or w.type.ndim != 2 or c.node.attrs["transpose_a"]:
        return None
    rows = a.type.shape[:-1]
    flat = c.emit("reshape", [a], {"shape": (int(_prod(rows)), a.type.shape[-1])})
    product = c.emit("matmul", [flat, w], dict(c.node.attrs))
    return c.emit("reshape", [product], {"shape": (*rows, product.type.shape[-1])})


def _prod(shape: Sequence[int]) -> int:
    total = 1
    for d in shape:
        total *= d
    return total


Batch = Callable[[BatchCall], "Node | None"]
_BATCH: dict[str, Batch] = {"reshape": _batch_reshape, "transpose": _batch_transpose,
                            "matmul": _batch_matmul}
# Ops worth taking out of the loop when mapped (everything else mapped stays in it).
HEAVY = frozenset({"matmul"})


def _batch_rule(op: str) -> Batch | None:
    if op in _BATCH:
        return _BATCH[op]
    opdef = registry.get(op)
    if opdef.fusion.pointwise and not opdef.random and op != "broadcast_to":
        return _batch_pointwise
    return None


def _batchable(n: Node, kinds: dict[Node, Kind]) -> bool:
    """Whether `n`, reading at least one mapped value, has a batched form: `_batch_matmul`
    takes only a mapped left operand times an invariant matrix."""
    if n.op == "matmul":
        a, w = (kinds[i] for i in n.inputs)
        return (a == Kind.MAPPED and w != Kind.MAPPED and n.inputs[1].type.ndim == 2
                and not n.attrs["transpose_a"])
    return _batch_rule(n.op) is not None


# --- the plan for one scan -------------------------------------------------------------------

@dataclass
class Plan:
    """What moves out of one scan's body: `hoisted` body nodes in body order, with their
    kinds; `boundary` the hoisted ones the body still reads (they become params)."""

    kinds: dict[Node, Kind]
    hoisted: list[Node]
    boundary: list[Node]


def _stays(n: Node) -> bool:
    """Ops that must run every step whatever they read."""
    opdef = registry.get(n.op)
    return bool(n.regions) or not evaluable(opdef) or bool(opdef.overwrites) or n.op == "get"


def _classify(body: Region, attrs: Attrs) -> dict[Node, Kind]:
    nc, nk = attrs["num_consts"], attrs["num_carry"]
    kinds: dict[Node, Kind] = {}
    for i, p in enumerate(body.params):
        kinds[p] = Kind.INVARIANT if i < nc else Kind.VARIANT if i < nc + nk else Kind.MAPPED
    for n in body.needed_nodes():
        if n in kinds:
            continue
        if n.op == "constant":
            kinds[n] = Kind.CONSTANT
            continue
        seen = {kinds[i] for i in n.inputs}
        if _stays(n) or Kind.VARIANT in seen:
            kinds[n] = Kind.VARIANT
        elif Kind.MAPPED in seen:
            kinds[n] = Kind.MAPPED if _batchable(n, kinds) else Kind.VARIANT
        else:  # consts and constants only (constants only: folded before the loop)
            kinds[n] = Kind.INVARIANT
    return kinds


def plan(scan: Node) -> Plan | None:
    """The hoisting plan of a kept scan, or None when nothing moves."""
    body = scan.regions[0]
    kinds = _classify(body, scan.attrs)
    results, params = set(body.results), set(body.params)  # sets: Node == builds a node
    length = scan.attrs["length"]
    chosen: set[Node] = set()
    for n in body.needed_nodes():
        if n in results or n in params:
            continue
        kind = kinds[n]
        if kind == Kind.INVARIANT or (kind == Kind.MAPPED and n.op in HEAVY):
            chosen.add(n)
    # A hoisted node needs the mapped and invariant nodes it reads outside too.
    stack = list(chosen)
    while stack:
        for i in stack.pop().inputs:
            if i not in chosen and i not in params and kinds[i] in (Kind.MAPPED,
                                                                          Kind.INVARIANT):
                chosen.add(i)
                stack.append(i)
    too_big = {n for n in chosen if kinds[n] == Kind.MAPPED
               and length * n.type.size * n.type.dtype.itemsize > MAX_HOISTED_BYTES}
    if too_big:  # drop them and whatever reads them (it would need them outside)
        order = body.needed_nodes()
        for n in order:
            if n in chosen and (n in too_big or any(i in too_big for i in n.inputs)):
                chosen.discard(n)
                too_big.add(n)
    hoisted = [n for n in body.needed_nodes() if n in chosen]
    if not hoisted:
        return None
    inside = [n for n in body.needed_nodes() if n not in chosen and n not in params]
    read = {i for n in inside for i in n.inputs} | results
    boundary = [n for n in hoisted if n in read]
    return Plan(kinds, hoisted, boundary)


# --- rewriting -------------------------------------------------------------------------------

def _hoist(p: Pending, old: Node, rb: Rebuilder, ctx: PassContext) -> list[Node] | None:
    """Emit the hoisted nodes before the loop, then the loop with its new body; the loop's
    results (None: nothing moves)."""
    body = old.regions[0]
    found = plan(old)
    if found is None:
        return None
    nc, nk, steps = old.attrs["num_consts"], old.attrs["num_carry"], old.attrs["length"]
    outer: dict[Node, Node] = dict(zip(body.params, p.inputs))

    def emit(op: str, inputs: Sequence[Node], attrs: dict) -> Node:
        return rb.emit(op, inputs, attrs, at=p)

    for n in found.hoisted:
        inputs = []
        for i in n.inputs:
            if i not in outer:  # a constant of the body
                outer[i] = rb.constant(body.graph.constants[i.name], at=p)
            inputs.append(outer[i])
        if found.kinds[n] == Kind.INVARIANT:
            outer[n] = rb.emit(n.op, inputs, n.attrs, at=p)
            ctx.hit(hoist_invariant)
        else:
            mapped = [found.kinds[i] == Kind.MAPPED for i in n.inputs]
            rule = _batch_rule(n.op)
            assert rule is not None
            value = rule(BatchCall(n, inputs, mapped, steps, emit))
            assert value is not None, f"{n.op}: _batchable and its batching rule disagree"
            outer[n] = value
            ctx.hit(hoist_mapped)
    region, operands, num_consts = _new_body(body, found, outer, nc, nk)
    attrs = {**old.attrs, "num_consts": num_consts}
    new = rb.keep(Pending(p.op, tuple(operands), registry.get(p.op).check_attrs(attrs),
                          p.type, p.name, p.loc, None, (region,)))
    return [rb.emit("get", (new,), {"index": i}, at=p) for i in range(len(p.type))]  # type: ignore[arg-type]


def hoist_invariant() -> None:
    """f(consts) in a loop body -> f(consts) once before the loop, a new const"""


def hoist_mapped() -> None:
    """x_t @ W in a loop body -> (xs @ W)[t], one GEMM over all steps before the loop"""


def _new_body(body: Region, found: Plan, outer: dict[Node, Node], nc: int, nk: int
              ) -> tuple[Region, list[Node], int]:
    """The body without the hoisted nodes, reading the boundary through new params; its
    operands (consts, carries, xs) and how many consts it has. Params no one reads any
    more are dropped (never carries)."""
    chosen = set(found.hoisted)
    inside = [n for n in body.needed_nodes() if n not in chosen]
    read = {i for n in inside for i in n.inputs} | set(body.results)
    params = list(body.params)
    consts = [q for q in params[:nc] if q in read]
    xs = [q for q in params[nc + nk:] if q in read]
    new_consts = [b for b in found.boundary if found.kinds[b] == Kind.INVARIANT]
    new_xs = [b for b in found.boundary if found.kinds[b] == Kind.MAPPED]
    order = [*consts, *new_consts, *params[nc:nc + nk], *xs, *new_xs]
    region = rebuild_region(body, order, body.results)
    return region, [outer[q] for q in order], len(consts) + len(new_consts)


def loop_hoist(graph: Graph, sig: Signature, ctx: PassContext) -> tuple[Graph, Signature]:
    """Copy the graph, hoisting carry-independent work out of every kept scan's body."""
    return rewrite_kept_scans(graph, sig, lambda p, old, rb: _hoist(p, old, rb, ctx))


PASS = PassDef("loop_hoist", loop_hoist,
               "move carry-independent work out of loop bodies: invariants computed once, "
               "x_t @ W over all steps as one GEMM before the loop",
               enabled_by=frozenset())
