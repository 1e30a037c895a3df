"""loop_sink: per-step contractions accumulated into a carry finish after the loop instead.

    scan{ acc' = acc + a_t^T @ b_t }      ->  acc_T = acc_0 + reshape(A)^T @ reshape(B)
    scan{ acc' = acc + sum(u_t, axis 0) } ->  acc_T = acc_0 + sum(U, axes 0 and 1)
    either times an invariant c           ->  c times the whole sum

with A, B, U the per-step values stacked over the steps: an x of the loop (already stacked
outside), a result it stacks already, or a new stacked result. This is the shape of every
weight gradient of a scan's backward loop (dW += h_{t-1}^T dz_t, db += sum(dz_t)): T small
GEMMs of depth R (the batch) on the loop's critical path become one GEMM of depth T*R after
it, which runs near the machine's peak (loop_hoist does the mirror image before the loop).

Conditions, per carry: its param is read only by the accumulating `add`, which is read only
as the carry's result; the product (or sum) is read only by that add; a and b (or u) vary
per step (an invariant factor would need a different rewrite); new stacked results stay
under `loop_hoist.MAX_HOISTED_BYTES`. The sunk carry leaves the loop (its result is the
expression after it), so the loop also stops copying it every step.

Only the order of the additions changes (a sum over T*R products in the GEMM's blocked
order, instead of T partial sums added one by one): values agree to rounding, not bit for
bit. The pass runs once, after loop_hoist.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from graphc.ir import Graph, Node, Region, Signature, TensorType, TupleType
from graphc.ops import registry

from . import loop_hoist
from .loop_rewrite import rebuild_region, rewrite_kept_scans
from .rewrite import PassContext, PassDef, Pending, Rebuilder

__all__ = ["loop_sink"]


@dataclass(frozen=True)
class Sunk:
    """One carry whose accumulation moves after the loop: `result` = `carry` param +
    `term` (`carry_first`: the param is the add's first operand), `term` a transposed
    matmul (factors a, b) or a sum over axis 0 (factor u)."""

    index: int  # the carry's position among the carries
    term: Node
    factors: tuple[Node, ...]
    carry_first: bool
    scale: Node | None = None  # term = mul(scale, product): an invariant factor


def _accumulation(body: Region, k: int, nc: int, users: dict[Node, list[Node]],
                  results: Sequence[Node]) -> Sunk | None:
    param, result = body.params[nc + k], body.results[k]
    if result.op != "add" or not _only(users[param], result) or users[result]:
        return None
    if sum(r is result for r in results) != 1 or any(r is param for r in results):
        return None
    a, b = result.inputs
    carry_first = a is param
    term = b if carry_first else a
    if term is param or not _only(users[term], result) or any(r is term for r in results):
        return None
    scale = None
    if term.op == "mul":  # c * product with an invariant c: c * sum = sum of c * product
        u, v = term.inputs
        inner, scale = (u, v) if _invariant(v, body, nc) else (v, u)
        if not _invariant(scale, body, nc) or not _only(users[inner], term):
            return None
        if inner.type != term.type:
            return None
        term = inner
    if term.op == "matmul":
        x, y = term.inputs
        if (not term.attrs["transpose_a"] or term.attrs["transpose_b"] or x.type.ndim != 2
                or y.type.ndim != 2):
            return None
        return Sunk(k, term, (x, y), carry_first, scale)
    if term.op == "sum" and tuple(term.attrs["axes"]) == (0,) and not term.attrs["keepdims"]:
        return Sunk(k, term, (term.inputs[0],), carry_first, scale)
    return None


def _invariant(n: Node, body: Region, nc: int) -> bool:
    """A const param or a constant of the body (what loop_hoist leaves invariant)."""
    return n.op == "constant" or any(n is p for p in body.params[:nc])


def _only(readers: list[Node], node: Node) -> bool:
    """Whether `node` is the one reader (by identity: Node's == builds a node)."""
    return len(readers) == 1 and readers[0] is node


def _varies(body: Region, nc: int, nk: int) -> set[Node]:
    """Body nodes that depend on the carry or an x slice (not only on consts)."""
    varying: set[Node] = set(body.params[nc:])
    for n in body.needed_nodes():
        if n not in varying and any(i in varying for i in n.inputs):
            varying.add(n)
    return varying


@dataclass
class Plan:
    sunk: list[Sunk]
    new_ys: list[Node]  # body nodes to stack as extra results


def plan(scan: Node) -> Plan | None:
    """Which carries of a kept scan sink, and which body values must be stacked for them."""
    body = scan.regions[0]
    nc, nk, length = (scan.attrs[k] for k in ("num_consts", "num_carry", "length"))
    needed = body.needed_nodes()
    users: dict[Node, list[Node]] = {n: [] for n in needed}
    for n in needed:
        for i in n.inputs:
            users[i].append(n)
    varying = _varies(body, nc, nk)
    carry_params = set(body.params[nc:nc + nk])
    ys = set(body.results[nk:])
    xs = set(body.params[nc + nk:])
    sunk: list[Sunk] = []
    new_ys: list[Node] = []
    budget = loop_hoist.MAX_HOISTED_BYTES
    for k in range(nk):
        s = _accumulation(body, k, nc, users, body.results)
        if s is None:
            continue
        if any(f not in varying or f in carry_params for f in s.factors):
            continue
        extra = [f for f in s.factors
                 if f not in xs and f not in ys and not any(f is y for y in new_ys)]
        size = sum(length * f.type.size * f.type.dtype.itemsize for f in extra)
        if size > budget:
            continue
        budget -= size
        sunk.append(s)
        new_ys.extend(extra)
    # No factor reads a sunk carry's param: that param's only reader is its own add.
    return Plan(sunk, new_ys) if sunk else None


def _new_body(body: Region, found: Plan, nc: int, nk: int) -> Region:
    """The body without the sunk carries, stacking the new factors as extra results."""
    gone = {s.index for s in found.sunk}
    keep_carry = [k for k in range(nk) if k not in gone]
    params = [*body.params[:nc], *(body.params[nc + k] for k in keep_carry),
              *body.params[nc + nk:]]
    results = [*(body.results[k] for k in keep_carry), *body.results[nk:], *found.new_ys]
    return rebuild_region(body, params, results)


def _sink(p: Pending, old: Node, rb: Rebuilder, ctx: PassContext) -> list[Node] | None:
    """The new loop and the outer value of each of the old loop's results, or None."""
    found = plan(old)
    if found is None:
        return None
    body = old.regions[0]
    nc, nk, steps = (old.attrs[k] for k in ("num_consts", "num_carry", "length"))
    gone = {s.index for s in found.sunk}
    keep_carry = [k for k in range(nk) if k not in gone]
    inputs = p.inputs
    operands = (*inputs[:nc], *(inputs[nc + k] for k in keep_carry), *inputs[nc + nk:])
    region = _new_body(body, found, nc, nk)
    assert isinstance(old.type, TupleType)
    types = old.type.elements
    ys_types = list(types[nk:])
    new_types = [*(types[k] for k in keep_carry), *ys_types,
                 *(TensorType((steps, *f.type.shape), f.type.dtype) for f in found.new_ys)]
    attrs = registry.get("scan").check_attrs({**old.attrs, "num_carry": len(keep_carry)})
    loop = rb.keep(Pending("scan", tuple(operands), attrs, TupleType(tuple(new_types)),
                           p.name, p.loc, None, (region,)))
    gets = [rb.emit("get", (loop,), {"index": i}, at=p) for i in range(len(new_types))]
    n_keep = len(keep_carry)
    stacked: dict[Node, Node] = {}
    for j, y in enumerate(body.results[nk:]):
        stacked.setdefault(y, gets[n_keep + j])
    for j, f in enumerate(found.new_ys):
        stacked[f] = gets[n_keep + len(ys_types) + j]
    for j, x in enumerate(body.params[nc + nk:]):
        stacked[x] = inputs[nc + nk + j]
    values: list[Node] = []
    for k in range(nk):
        if k in gone:
            s = next(s for s in found.sunk if s.index == k)
            scale = None
            if s.scale is not None:
                scale = (rb.constant(body.graph.constants[s.scale.name], at=p)
                         if s.scale.op == "constant"
                         else inputs[next(i for i, q in enumerate(body.params) if q is s.scale)])
            values.append(_after(s, [stacked[f] for f in s.factors], scale, inputs[nc + k],
                                 rb, p))
            ctx.hit(sink_accumulation)
        else:
            values.append(gets[keep_carry.index(k)])
    values.extend(gets[n_keep:n_keep + len(ys_types)])
    return values


def _after(s: Sunk, factors: list[Node], scale: Node | None, init: Node, rb: Rebuilder,
           p: Pending) -> Node:
    """init + the whole sum (times the scale), computed from the stacked factors."""
    flat = [rb.emit("reshape", (f,), {"shape": (f.type.shape[0] * f.type.shape[1],  # type: ignore[union-attr]
                                                 *f.type.shape[2:])}, at=p)  # type: ignore[union-attr]
            for f in factors]
    if s.term.op == "matmul":
        total = rb.emit("matmul", flat, dict(s.term.attrs), at=p)
    else:
        total = rb.emit("sum", flat, {"axes": (0,), "keepdims": False}, at=p)
    if scale is not None:
        total = rb.emit("mul", (total, scale), at=p)
    return rb.emit("add", (init, total) if s.carry_first else (total, init), at=p)


def sink_accumulation() -> None:
    """acc' = acc + a_t^T b_t in a loop -> acc_0 + A^T B after it (one GEMM over all steps)"""


def loop_sink(graph: Graph, sig: Signature, ctx: PassContext) -> tuple[Graph, Signature]:
    """Copy the graph, finishing every sinkable carry accumulation after its loop."""
    return rewrite_kept_scans(graph, sig, lambda p, old, rb: _sink(p, old, rb, ctx))


PASS = PassDef("loop_sink", loop_sink,
               "finish carry accumulations of per-step products after the loop: "
               "acc + a_t^T b_t over the steps as one GEMM over the stacked a and b",
               enabled_by=frozenset())
