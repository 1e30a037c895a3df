"""loop_unroll: a kept scan asked to unroll partially (1 < unroll = k < length) runs k steps
per trip of its loop (JAX's partial unrolling).

    scan(consts, init, xs){T, unroll=k} -> scan(consts, init, xs'){T // k, unroll=1}
        whose body holds k copies of the step (reading rows of xs reshaped to
        (T // k, k, ...)), then the T % k remaining steps inlined after it; with
        reverse=True the loop covers the last T // k * k rows and the remainder the first
        (run last, as in JAX). T // k == 1: fully unrolled (a loop of one trip is no loop).

The same steps in the same order, so results equal unroll=1's bit for bit. It runs after
loop_hoist and loop_sink, which see the one-step body (their rewrites then apply to every
unroll factor alike), and is idempotent: what it makes has unroll=1. A forward scan whose
length is not a multiple of k copies the loop's rows of xs once before the loop.
"""

from __future__ import annotations

from graphc.ir import Graph, Node, Region, Signature, TensorType
from graphc.ops import registry

from .loop_rewrite import rewrite_kept_scans
from .lower_control import Keep, _index, _inline, kept, unroll_scan
from .rewrite import PassContext, PassDef, Pending, Rebuilder

__all__ = ["loop_unroll"]


def _partial(p: Pending | Node) -> bool:
    """Whether a kept scan is asked to unroll partially (1 < unroll < length)."""
    return p.op == "scan" and 1 < p.attrs["unroll"] < p.attrs["length"]


def unroll_partially(p: Pending, rb: Rebuilder, keep: Keep) -> list[Node]:
    """scan(consts, init, xs){T, unroll=k} -> scan(consts, init, xs'){T // k, unroll=1}
    with k steps per body, then the T % k remaining steps inlined (see the module doc)"""
    nc, nk, length, k = (p.attrs["num_consts"], p.attrs["num_carry"], p.attrs["length"],
                         p.attrs["unroll"])
    reverse = p.attrs["reverse"]
    trips, rem = divmod(length, k)
    if trips <= 1:  # a loop of one trip is no loop
        return unroll_scan(p, rb, keep)
    body = p.regions[0]
    consts, carry = list(p.inputs[:nc]), list(p.inputs[nc:nc + nk])
    xs = list(p.inputs[nc + nk:])
    looped = range(rem, length) if reverse else range(trips * k)
    chunks = [_rows(rb, x, looped.start, looped.stop, (trips, k), p) for x in xs]
    attrs = {**p.attrs, "length": trips, "unroll": 1}
    region = _chunk_body(body, nc, nk, k, reverse, p, keep)
    inputs = (*consts, *carry, *chunks)
    scan = registry.get("scan")
    frozen = scan.check_attrs(attrs)
    node = rb.keep(Pending("scan", inputs, frozen,
                           scan.infer_type(tuple(i.type for i in inputs), frozen, (region,)),
                           rb.fresh_name(p.name), p.loc, None, (region,)))
    out = [rb.emit("get", (node,), {"index": i}, at=p) for i in range(len(node.type))]  # type: ignore[arg-type]
    carry = out[:nk]
    ys_loop = [rb.emit("reshape", (y,), {"shape": (trips * k, *y.shape[2:])}, at=p)
               for y in out[nk:]]
    rest = range(rem - 1, -1, -1) if reverse else range(trips * k, length)
    rows: dict[int, list[Node]] = {}
    for t in rest:
        step = _inline(rb, body, [*consts, *carry, *(_index(rb, x, t, p) for x in xs)], p,
                       keep)
        carry, rows[t] = step[:nk], step[nk:]
    ys = []
    for j, y in enumerate(ys_loop):
        extra = [rb.emit("reshape", (rows[t][j],), {"shape": (1, *y.shape[1:])}, at=p)
                 for t in sorted(rows)]
        parts = [*extra, y] if reverse else [y, *extra]
        ys.append(y if not extra else rb.emit("concat", parts, {"axis": 0}, at=p))
    return [*carry, *ys]


def _chunk_body(body: Region, nc: int, nk: int, k: int, reverse: bool, at: Pending,
                keep: Keep) -> Region:
    """A scan body running `k` steps of `body`: params (consts, carry, x chunks of k rows),
    results (carry after the k steps, ys of the k steps stacked in row order)."""
    crb = Rebuilder(body.graph)
    params = []
    for i, param in enumerate(body.params):
        t = param.type
        if i >= nc + nk:
            assert isinstance(t, TensorType)
            t = TensorType((k, *t.shape), t.dtype)
        params.append(crb.graph.add_node("placeholder", (), {}, t,  # type: ignore[arg-type]
                                         name=crb.fresh_name(param.name), loc=param.loc))
    consts, carry, chunks = params[:nc], params[nc:nc + nk], params[nc + nk:]
    rows: dict[int, list[Node]] = {}
    for j in (range(k - 1, -1, -1) if reverse else range(k)):
        step = _inline(crb, body, [*consts, *carry, *(_index(crb, x, j, at) for x in chunks)],
                       at, keep)
        carry, rows[j] = step[:nk], step[nk:]
    ys = []
    for i in range(len(body.results) - nk):
        stacked = [crb.emit("reshape", (rows[j][i],), {"shape": (1, *rows[j][i].shape)}, at=at)
                   for j in range(k)]
        ys.append(crb.emit("concat", stacked, {"axis": 0}, at=at))
    return Region(crb.graph, tuple(params), (*carry, *ys))


def _rows(rb: Rebuilder, x: Node, start: int, stop: int, lead: tuple[int, int], at: Pending
          ) -> Node:
    """x[start:stop] reshaped to (*lead, *x.shape[1:])."""
    if (start, stop) != (0, x.shape[0]):
        x = rb.emit("slice", (x,), {"starts": (start, *(0 for _ in x.shape[1:])),
                                    "stops": (stop, *x.shape[1:]),
                                    "steps": tuple(1 for _ in x.shape)}, at=at)
    return rb.emit("reshape", (x,), {"shape": (*lead, *x.shape[1:])}, at=at)


def loop_unroll(graph: Graph, sig: Signature, ctx: PassContext) -> tuple[Graph, Signature]:
    """Copy the graph, unrolling every kept scan with 1 < unroll < length partially."""

    def rewrite(p: Pending, old: Node, rb: Rebuilder) -> list[Node] | None:
        if not _partial(old):
            return None
        ctx.hit(unroll_partially)
        return unroll_partially(p, rb, kept)

    return rewrite_kept_scans(graph, sig, rewrite)


PASS = PassDef("loop_unroll", loop_unroll,
               "partially unroll kept scans with 1 < unroll < length: k steps per trip of "
               "the loop, the remainder inlined after it", enabled_by=frozenset())
