"""lower_control: region ops become plain ops, so code generation never sees a body.

    scan(consts, init, xs){length=T} -> T copies of the body, step t reading x[t]; the
                                        carries chained, ys stacked
    cond(p, operands)                -> both branches, then where(p, true_i, false_i)
    while_loop                       -> CompileError (a trip count known only at run time)

This is how `gc.compile` runs loops and branches until the native loop exists (the next
step: the body compiled once into a function of its own, called T times). Until then the
compiled graph holds T copies of a scan's body, so compile time grows with T, as it did for
hand-unrolled RNNs; the passes after this one see the copies and optimize across steps
(CSE merges a forward scan with the residual-saving twin its gradient builds).

A cond computes both branches in compiled code (a select, as XLA lowers small conds on
CPUs): the results are the taken branch's, bit for bit, but an error the untaken branch
would raise (an index out of range) is raised too, and its cost is paid. The reference
interpreter runs only the taken branch.

Bodies nested in bodies are lowered as they are copied. Every copied node keeps its source
location; new names are fresh. The pass runs first in the default pipeline and is
idempotent (nothing gives it work again).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from graphc.errors import CompileError
from graphc.ir import Graph, Node, Region, Signature

from .rewrite import PassContext, PassDef, Pending, Rebuilder

__all__ = ["lower_control"]


def unroll_scan(p: Pending, rb: Rebuilder) -> list[Node]:
    """scan(consts, init, xs){length=T} -> T inlined bodies; the results of the scan"""
    nc, nk, length = p.attrs["num_consts"], p.attrs["num_carry"], p.attrs["length"]
    body = p.regions[0]
    consts, carry = list(p.inputs[:nc]), list(p.inputs[nc:nc + nk])
    xs = list(p.inputs[nc + nk:])
    steps = range(length - 1, -1, -1) if p.attrs["reverse"] else range(length)
    per_step: dict[int, list[Node]] = {}
    for t in steps:
        x_t = [_index(rb, x, t, p) for x in xs]
        out = _inline(rb, body, [*consts, *carry, *x_t], p)
        carry, per_step[t] = out[:nk], out[nk:]
    ys = []
    for j, y in enumerate(body.results[nk:]):
        if length == 0:
            ys.append(_zeros(rb, (0, *y.type.shape), y, p))  # type: ignore[union-attr]
            continue
        rows = [rb.emit("reshape", (per_step[t][j],), {"shape": (1, *y.type.shape)}, at=p)  # type: ignore[union-attr]
                for t in range(length)]
        ys.append(rows[0] if length == 1 else rb.emit("concat", rows, {"axis": 0}, at=p))
    return [*carry, *ys]


def select_cond(p: Pending, rb: Rebuilder) -> list[Node]:
    """cond(p, operands) -> where(p, true branch, false branch), result by result"""
    pred, operands = p.inputs[0], list(p.inputs[1:])
    taken = _inline(rb, p.regions[0], operands, p)
    other = _inline(rb, p.regions[1], operands, p)
    return [a if a is b else rb.emit("where", (pred, a, b), at=p) for a, b in zip(taken, other)]


def refuse_while(p: Pending, rb: Rebuilder) -> list[Node]:
    """while_loop -> CompileError (not unrollable: its trip count depends on data)"""
    raise CompileError(f"while_loop %{p.name}: its trip count depends on data, so it cannot "
                       "be unrolled, and compiled code has no native loops yet; it runs in "
                       "the reference interpreter only (gc.reference), for now",
                       op="while_loop", loc=p.loc)


LOWER = {"scan": unroll_scan, "cond": select_cond, "while_loop": refuse_while}


def _lower(p: Pending, rb: Rebuilder, ctx: PassContext | None) -> list[Node]:
    rule = LOWER.get(p.op)
    if rule is None:
        raise CompileError(f"no lowering for the region op {p.op} %{p.name}", op=p.op,
                           loc=p.loc)
    if ctx is not None:
        ctx.hit(rule)
    return rule(p, rb)


def _inline(rb: Rebuilder, region: Region, args: Sequence[Node], at: Pending) -> list[Node]:
    """Copy `region`'s body into the new graph with its params bound to `args`; its
    results. Nested region ops are lowered on the way."""
    values: dict[Node, Node] = dict(zip(region.params, args))
    tuples: dict[Node, list[Node]] = {}
    for n in region.needed_nodes():
        if n in values:
            continue
        if n.op == "get":  # reads a region op of the body, lowered already
            values[n] = tuples[n.inputs[0]][n.attrs["index"]]
            continue
        inputs = tuple(values[i] for i in n.inputs)
        if n.op == "constant":
            values[n] = rb.constant(n.graph.constants[n.name], at=_at(n, at))
        elif n.regions:
            tuples[n] = _lower(Pending(n.op, inputs, n.attrs, n.type, n.name, _at(n, at).loc,
                                       None, n.regions), rb, None)
        else:
            values[n] = rb.emit(n.op, inputs, n.attrs, at=_at(n, at))
    return [values[r] for r in region.results]


def _at(n: Node, owner: Pending) -> Pending:
    """Where a copy of body node `n` is located: at `n`'s line, else at the loop's."""
    return Pending(n.op, (), n.attrs, n.type, n.name, n.loc or owner.loc)


def _index(rb: Rebuilder, x: Node, t: int, at: Pending) -> Node:
    """x[t] as slice + reshape (the ops `x[t]` builds)."""
    starts = (t, *(0 for _ in x.shape[1:]))
    stops = (t + 1, *x.shape[1:])
    row = rb.emit("slice", (x,), {"starts": starts, "stops": stops,
                                  "steps": tuple(1 for _ in x.shape)}, at=at)
    return rb.emit("reshape", (row,), {"shape": x.shape[1:]}, at=at)


def _zeros(rb: Rebuilder, shape: tuple[int, ...], like: Node, at: Pending) -> Node:
    return rb.constant(np.zeros(shape, like.type.dtype.np), at=at)  # type: ignore[union-attr]


def lower_control(graph: Graph, sig: Signature, ctx: PassContext) -> tuple[Graph, Signature]:
    """Copy the graph, replacing every region op by its lowering and each `get` of it by
    the lowered result."""
    rb = Rebuilder(graph)
    tuples: dict[Node, list[Node]] = {}
    for old in graph.nodes:
        if old.regions:
            inputs = tuple(rb.mapping[i] for i in old.inputs)
            tuples[old] = _lower(Pending(old.op, inputs, old.attrs, old.type, old.name,
                                         old.loc, None, old.regions), rb, ctx)
        elif old.op == "get" and old.inputs[0] in tuples:
            rb.mapping[old] = tuples[old.inputs[0]][old.attrs["index"]]
        else:
            rb.copy(old)
    return rb.finish(sig)


PASS = PassDef("lower_control", lower_control,
               "unroll scans and turn conds into selects (until native loops exist); "
               "while_loop is a CompileError", enabled_by=frozenset())
