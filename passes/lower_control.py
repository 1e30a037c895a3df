"""lower_control: region ops become plain ops, or native loop kernels code generation runs.

    scan(consts, init, xs){length=T, unroll=k}
        k >= T     -> T copies of the body, step t reading x[t]; the carries chained, ys
                      stacked (T <= 1 always: a loop of one step is no loop)
        k < T      -> kept: code generation compiles the body once and runs it in a native
                      loop (`codegen/loop.py`); a scan that only adds results to another
                      scan of the same operands and body (the residual-saving twin that
                      its gradient builds) is merged into that twin, so the loop runs once;
                      1 < k < T is partial unrolling, done later by `loop_unroll` (after
                      loop_hoist and loop_sink, which then see the one-step body)
    cond(p, operands)
        cheap branches -> both branches, then where(p, true_i, false_i)
        otherwise      -> kept: code generation calls only the taken branch's program
                          (`codegen/branch.py`)
    while_loop      -> kept: a native loop running its cond and body programs
                       (`codegen/while_loop.py`); `unroll_control` refuses it (a trip count
                       known only at run time cannot be unrolled)

Which conds become selects (`branch_worthy` is false): both branches at most
`MAX_SELECT_NODES` computing nodes, all pointwise (elementwise, broadcast) or reshapes.
Such a select fuses into its neighbours' elementwise kernels and computes both branches
in one pass over the data, which costs less than a kernel call, a predicate load and
materialized results; and pointwise ops cannot fail, so computing the untaken branch
raises nothing the reference would not. Anything else -- a matmul, a reduction, a gather
that may find an index out of range, a nested region op, or a longer chain -- is a real
branch, so the untaken branch neither runs nor raises.

Bodies nested in unrolled bodies are lowered as they are copied; the bodies of kept region
ops are left as they are (the pipeline runs on them when code generation compiles them,
so nested region ops are lowered there). Every copied node keeps its source location; new
names are fresh. The pass runs first in the default pipeline and is idempotent (what it
keeps it keeps again).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from graphc.errors import CompileError
from graphc.ir import Attrs, Graph, Node, Region, Signature
from graphc.ir.opdef import Fusion
from graphc.ops import registry

from .rewrite import PassContext, PassDef, Pending, Rebuilder

__all__ = ["lower_control", "unroll_control"]

# Whether a region op (op name, attributes, regions) stays in the graph rather than being
# lowered.
Keep = Callable[[str, Attrs, Sequence[Region]], bool]

# A cond whose branches each have at most this many computing nodes, all pointwise, is a
# select (see the module doc).
MAX_SELECT_NODES = 8
_SELECTABLE = (Fusion.ELEMENTWISE, Fusion.BROADCAST, Fusion.VIEW)


def unroll_scan(p: Pending, rb: Rebuilder, keep: Keep) -> list[Node]:
    """scan(consts, init, xs){length=T} -> T inlined bodies; the results of the scan"""
    nc, nk, length = p.attrs["num_consts"], p.attrs["num_carry"], p.attrs["length"]
    body = p.regions[0]
    consts, carry = list(p.inputs[:nc]), list(p.inputs[nc:nc + nk])
    xs = list(p.inputs[nc + nk:])
    steps = range(length - 1, -1, -1) if p.attrs["reverse"] else range(length)
    per_step: dict[int, list[Node]] = {}
    for t in steps:
        x_t = [_index(rb, x, t, p) for x in xs]
        out = _inline(rb, body, [*consts, *carry, *x_t], p, keep)
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


def select_cond(p: Pending, rb: Rebuilder, keep: Keep) -> list[Node]:
    """cond(p, operands) -> where(p, true branch, false branch), result by result"""
    pred, operands = p.inputs[0], list(p.inputs[1:])
    taken = _inline(rb, p.regions[0], operands, p, keep)
    other = _inline(rb, p.regions[1], operands, p, keep)
    return [a if a is b else rb.emit("where", (pred, a, b), at=p) for a, b in zip(taken, other)]


def refuse_while(p: Pending, rb: Rebuilder, keep: Keep) -> list[Node]:
    """while_loop -> CompileError when asked to unroll (its trip count depends on data)"""
    raise CompileError(f"while_loop %{p.name}: its trip count depends on data, so it cannot "
                       "be unrolled; compiled code runs it as a native loop (lower_control "
                       "keeps it), a consumer that takes no region ops cannot",
                       op="while_loop", loc=p.loc)


LOWER = {"scan": unroll_scan, "cond": select_cond, "while_loop": refuse_while}


def kept(op: str, attrs: Attrs, regions: Sequence[Region]) -> bool:
    """Whether a region op stays in the graph for code generation to run natively: a scan
    that is not asked to unroll fully (`unroll` < `length`; partial unrolling keeps a
    loop too), every while_loop, a cond whose branches are worth a branch."""
    if op == "scan":
        return bool(attrs["unroll"] < attrs["length"])
    if op == "cond":
        return branch_worthy(regions)
    return op == "while_loop"


def branch_worthy(regions: Sequence[Region]) -> bool:
    """Whether a cond with these branches runs as a real branch rather than a select: some
    branch has more than `MAX_SELECT_NODES` computing nodes, or one that is not pointwise
    (or a reshape), see the module doc."""
    for region in regions:
        nodes = [n for n in region.needed_nodes() if n.op not in ("placeholder", "constant")]
        if len(nodes) > MAX_SELECT_NODES:
            return True
        if any(n.regions or registry.OPS[n.op].fusion not in _SELECTABLE for n in nodes):
            return True
    return False


def _lower(p: Pending, rb: Rebuilder, ctx: PassContext | None, keep: Keep) -> list[Node]:
    rule = LOWER.get(p.op)
    if rule is None:
        raise CompileError(f"no lowering for the region op {p.op} %{p.name}", op=p.op,
                           loc=p.loc)
    if ctx is not None:
        ctx.hit(rule)
    return rule(p, rb, keep)


def _keep_loop(p: Pending, rb: Rebuilder, keep: Keep) -> list[Node]:
    """The kept region op copied as it is (its bodies shared); its results as `get`s."""
    node = rb.keep(p)
    return [rb.emit("get", (node,), {"index": i}, at=p) for i in range(len(p.type))]  # type: ignore[arg-type]


def _inline(rb: Rebuilder, region: Region, args: Sequence[Node], at: Pending, keep: Keep
            ) -> list[Node]:
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
            nested = Pending(n.op, inputs, n.attrs, n.type, rb.fresh_name(n.op),
                             _at(n, at).loc, None, n.regions)
            tuples[n] = (_keep_loop(nested, rb, keep) if keep(n.op, n.attrs, n.regions)
                         else _lower(nested, rb, None, keep))
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
    """Copy the graph, replacing every region op that is not kept by its lowering and each
    `get` of it by the lowered result; kept scans are merged into their widest twin."""
    return _run(graph, sig, ctx, kept)


def unroll_control(graph: Graph, sig: Signature) -> tuple[Graph, Signature]:
    """`lower_control` keeping no loop: every scan unrolled, at every depth (for consumers
    that take no region ops, such as the ONNX writer)."""
    return _run(graph, sig, None, lambda op, attrs, regions: False)


def _run(graph: Graph, sig: Signature, ctx: PassContext | None, keep: Keep
         ) -> tuple[Graph, Signature]:
    rb = Rebuilder(graph)
    tuples: dict[Node, list[Node]] = {}
    twin_of = _widest_twins(graph, keep)
    for old in graph.nodes:
        if old.regions and keep(old.op, old.attrs, old.regions):
            twin = twin_of.get(old, old)
            if twin in rb.mapping:  # the twin took this loop's place already
                rb.mapping[old] = rb.mapping[twin]
                continue
            # The twin has the same operands, so it may take the first member's place.
            rb.mapping[old] = rb.copy(twin)
            if twin is not old:
                if ctx is not None:
                    ctx.hit(_widest_twins)
                rb.mapping[twin] = rb.mapping[old]
        elif old.regions:
            inputs = tuple(rb.mapping[i] for i in old.inputs)
            tuples[old] = _lower(Pending(old.op, inputs, old.attrs, old.type, old.name,
                                         old.loc, None, old.regions), rb, ctx, keep)
        elif old.op == "get" and old.inputs[0] in tuples:
            rb.mapping[old] = tuples[old.inputs[0]][old.attrs["index"]]
        else:
            rb.copy(old)
    return rb.finish(sig)


def _widest_twins(graph: Graph, keep: Keep) -> dict[Node, Node]:
    """scan_a(ops){body: r...}, scan_b(ops){body: r..., s...} -> scan_b; get i of scan_a
    reads get i of scan_b.

    Each kept scan maps to the scan it merges into: among scans of the same operands,
    attributes, body graph and params whose results extend one another, the one with the
    most results (a scan maps to itself when it has no wider twin)."""
    groups: dict[tuple, list[Node]] = {}
    for n in graph.nodes:
        if n.op == "scan" and keep(n.op, n.attrs, n.regions):
            body = n.regions[0]
            key = (n.inputs, n.attrs, id(body.graph), body.params)
            groups.setdefault(key, []).append(n)
    twin_of: dict[Node, Node] = {}
    for members in groups.values():
        widest = max(members, key=lambda m: len(m.regions[0].results))
        wide = widest.regions[0].results
        for m in members:
            results = m.regions[0].results
            twin_of[m] = widest if wide[:len(results)] == results else m
    return twin_of


PASS = PassDef("lower_control", lower_control,
               "unroll scans asked to unroll (fully, or k steps per trip; others run as "
               "native loops, gradient twins merged), turn conds of cheap branches into "
               "selects (others and while_loops run natively)",
               enabled_by=frozenset())
