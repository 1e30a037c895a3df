"""Gradients of region ops: `scan` (a reverse scan over saved residuals) and `cond` (a cond
of the branches' VJPs). `while_loop` has none (its trip count depends on data).

Both differentiate a body by copying it into a new "joint" graph and letting autodiff's
`vjp` add the backward nodes there (the way JAX linearizes a jaxpr and partial-evaluates
it into known and unknown parts):

scan
    forward nodes of the joint body that vary per step (they depend on the carry or x) and
    that backward nodes read are the *residuals*. The forward scan is rebuilt to also
    output them, stacked per step (an x param is not stacked again: xs is the stack); a
    forward node that depends only on consts is recomputed in the backward body instead.
    The backward scan runs the other way over (cotangents of ys, residuals), carrying the
    cotangents of the float carries and accumulating those of the float consts. With the
    scan's `remat`, the residuals are the carry (and x) params themselves, each step's
    value saved, and the backward body recomputes the forward nodes it reads from them
    (JAX's checkpointed scan body).
    The rebuilt forward scan computes what the original computes, plus the residuals; the
    reference runs both, compiled code merges the original into it (`lower_control`).
cond
    a cond on the same predicate whose branches are the VJPs of the two branches (each
    recomputes its forward part: nothing is saved), so only the taken branch's cotangents
    are computed (compiled code calls only the taken branch, or selects between tiny
    pointwise ones: `lower_control`).

Contracts as for `RegionRules.grad`: one cotangent per result (None: zero) in, one per
input (None: no gradient, for non-float inputs) out.
"""

from __future__ import annotations

from collections.abc import Sequence

from graphc.builder import apply
from graphc.ir import Attrs, Graph, Node, Region, TensorType, TupleType, ancestors
from graphc.ir.copy import copy_needed
from graphc.ir.opdef import OpDef, Vjp
from graphc.ops import elementwise as _ew
from graphc.ops.sequence import zeros

__all__ = ["cond_grad", "scan_grad"]


def _is_float(t: object) -> bool:
    return isinstance(t, TensorType) and t.dtype.is_float


def _placeholder(graph: Graph, t: TensorType, base: str) -> Node:
    return graph.add_node("placeholder", (), {}, t, name=graph.unique_name(base))


def _results(node: Node, get: OpDef) -> list[Node]:
    assert isinstance(node.type, TupleType)
    return [apply(get, [node], {"index": i}) for i in range(len(node.type))]


def _or_zeros(x: Node | None, t: TensorType) -> Node:
    return zeros(t) if x is None else x


class _Joint:
    """A body copied into a new graph with cotangent params, and autodiff's backward nodes
    of its float results with respect to its float params."""

    def __init__(self, body: Region, vjp: Vjp, name: str):
        self.graph = Graph(name)
        self.params = [_placeholder(self.graph, p.type, p.name) for p in body.params]
        self.forward = copy_needed(list(body.results), self.graph,
                                   dict(zip(body.params, self.params)))
        self.forward_count = len(self.graph.nodes)
        outs = [self.forward[r] for r in body.results]
        self.diff_out = [i for i, r in enumerate(outs) if _is_float(r.type)]
        self.diff_in = [i for i, p in enumerate(self.params) if _is_float(p.type)]
        self.cts = [_placeholder(self.graph, outs[i].type, "ct") for i in self.diff_out]  # type: ignore[arg-type]
        grads = (vjp([outs[i] for i in self.diff_out], self.cts,
                     [self.params[i] for i in self.diff_in])
                 if self.diff_out and self.diff_in else [None] * len(self.diff_in))
        self.grads: dict[int, Node | None] = dict(zip(self.diff_in, grads))

    def forward_nodes(self) -> list[Node]:
        return self.graph.nodes[:self.forward_count]

    def read_by_backward(self) -> set[Node]:
        """Forward nodes the backward nodes read, or that are gradients themselves."""
        forward = set(self.forward_nodes())
        read = {g for g in self.grads.values() if g is not None and g in forward}
        for n in self.graph.nodes[self.forward_count:]:
            read.update(i for i in n.inputs if i in forward)
        return read


def scan_grad(node: Node, cts: Sequence[Node | None], vjp: Vjp, scan: OpDef, get: OpDef
              ) -> list[Node | None]:
    """The VJP of a scan node: a forward scan saving residuals, then a reverse scan."""
    attrs: Attrs = node.attrs
    nc, nk, length = attrs["num_consts"], attrs["num_carry"], attrs["length"]
    body = node.regions[0]
    consts, init, xs = (list(node.inputs[:nc]), list(node.inputs[nc:nc + nk]),
                        list(node.inputs[nc + nk:]))
    ny = len(body.results) - nk
    joint = _Joint(body, vjp, f"{body.graph.name}_vjp")
    if not any(g is not None for g in joint.grads.values()):
        return [None] * len(node.inputs)
    jp = joint.params
    # Forward nodes that vary per step: those depending on a carry or an x param.
    varying: set[Node] = set(jp[nc:])
    for n in joint.forward_nodes():
        if any(i in varying for i in n.inputs):
            varying.add(n)
    read = joint.read_by_backward()
    if attrs["remat"]:
        # Save the carry and x params' values of every step the backward depends on; the
        # backward body recomputes every other forward node from them (copy_needed stops
        # at the residuals, so whatever lies between is copied, i.e. recomputed).
        needed = ancestors(read)
        residuals = [p for p in jp[nc:] if p in needed]
    else:
        residuals = [n for n in joint.forward_nodes() if n in read and n in varying]
    x_params = {p: j for j, p in enumerate(jp[nc + nk:])}
    stacked = [r for r in residuals if r not in x_params]
    original = {new: old for old, new in joint.forward.items()}

    with node.graph:
        saving = Region(body.graph, body.params,
                        (*body.results, *(original[r] for r in stacked)))
        fwd = _results(apply(scan, node.inputs, attrs, regions=[saving]), get)
        res_stacks = iter(fwd[nk + ny:])
        res_inputs = [xs[x_params[r]] if r in x_params else next(res_stacks)
                      for r in residuals]
        float_carry = [i for i in range(nk) if _is_float(init[i].type)]
        float_consts = [i for i in range(nc) if _is_float(consts[i].type)]
        float_ys = [j for j in range(ny) if _is_float(body.results[nk + j].type)]
        float_xs = [j for j in range(len(xs)) if _is_float(xs[j].type)]
        result_types = node.type.elements  # type: ignore[union-attr]
        ct_carry = [_or_zeros(cts[i], result_types[i]) for i in float_carry]
        acc_init = [zeros(consts[i].type) for i in float_consts]  # type: ignore[arg-type]
        ct_ys = [_or_zeros(cts[nk + j], result_types[nk + j]) for j in float_ys]
        backward_body = _backward_body(joint, (nc, nk), residuals, float_carry,
                                       float_consts, float_ys, float_xs,
                                       f"{body.graph.name}_bwd")
        bwd_attrs = {"num_consts": nc, "num_carry": len(ct_carry) + len(acc_init),
                     "length": length, "reverse": not attrs["reverse"],
                     "unroll": attrs["unroll"], "remat": attrs["remat"]}
        bwd = _results(apply(scan, [*consts, *ct_carry, *acc_init, *ct_ys, *res_inputs],
                             bwd_attrs, regions=[backward_body]), get)
    out: list[Node | None] = [None] * len(node.inputs)
    for k, i in enumerate(float_carry):
        out[nc + i] = bwd[k]
    for k, i in enumerate(float_consts):
        out[i] = bwd[len(float_carry) + k]
    for k, j in enumerate(float_xs):
        out[nc + nk + j] = bwd[len(float_carry) + len(float_consts) + k]
    return out


def _backward_body(joint: _Joint, sizes: tuple[int, int], residuals: list[Node],
                   float_carry: list[int], float_consts: list[int], float_ys: list[int],
                   float_xs: list[int], name: str) -> Region:
    """The backward scan's body: params (consts, cotangents of the float carries, the float
    consts' accumulators, cotangents of the float y_t, residuals at t) -> (the carries'
    cotangents before the step, the accumulators plus this step's, cotangents of x_t).
    `sizes` is the forward scan's (num_consts, num_carry)."""
    nc, nk = sizes
    jp = joint.params
    graph = Graph(name)
    consts = [_placeholder(graph, p.type, p.name) for p in jp[:nc]]  # type: ignore[arg-type]
    ct_carry = [_placeholder(graph, jp[nc + i].type, "ct_carry")  # type: ignore[arg-type]
                for i in float_carry]
    accs = [_placeholder(graph, jp[i].type, "acc") for i in float_consts]  # type: ignore[arg-type]
    cts_by_result = dict(zip(joint.diff_out, joint.cts))
    ct_ys = [_placeholder(graph, cts_by_result[nk + j].type, "ct_y")  # type: ignore[arg-type]
             for j in float_ys]
    res = [_placeholder(graph, r.type, "res") for r in residuals]  # type: ignore[arg-type]
    mapping: dict[Node, Node] = dict(zip(jp[:nc], consts))
    mapping.update(zip(residuals, res))
    mapping.update((cts_by_result[i], p) for i, p in zip(float_carry, ct_carry))
    mapping.update((cts_by_result[nk + j], p) for j, p in zip(float_ys, ct_ys))
    copy_needed([g for g in joint.grads.values() if g is not None], graph, mapping)

    def grad_of(param: int) -> Node | None:
        g = joint.grads.get(param)
        return None if g is None else mapping[g]

    with graph:
        carry_out = [_or_zeros(grad_of(nc + i), jp[nc + i].type)  # type: ignore[arg-type]
                     for i in float_carry]
        acc_out = [acc if grad_of(i) is None else _ew.add(acc, grad_of(i))
                   for acc, i in zip(accs, float_consts)]
        x_out = [_or_zeros(grad_of(nc + nk + j), jp[nc + nk + j].type)  # type: ignore[arg-type]
                 for j in float_xs]
    return Region(graph, (*consts, *ct_carry, *accs, *ct_ys, *res),
                  (*carry_out, *acc_out, *x_out))


def cond_grad(node: Node, cts: Sequence[Node | None], vjp: Vjp, cond: OpDef, get: OpDef
              ) -> list[Node | None]:
    """The VJP of a cond node: a cond of the branches' VJPs on the same predicate."""
    pred, operands = node.inputs[0], list(node.inputs[1:])
    result_types = node.type.elements  # type: ignore[union-attr]
    float_out = [i for i, t in enumerate(result_types) if t.dtype.is_float]
    float_in = [i for i, x in enumerate(operands) if _is_float(x.type)]
    if not float_out or not float_in or all(cts[i] is None for i in float_out):
        return [None] * len(node.inputs)
    branches = [_branch_vjp(region, vjp, float_out, float_in) for region in node.regions]
    with node.graph:
        ct_nodes = [_or_zeros(cts[i], result_types[i]) for i in float_out]
        grads = _results(apply(cond, [pred, *operands, *ct_nodes], regions=branches), get)
    out: list[Node | None] = [None] * len(node.inputs)
    for k, i in enumerate(float_in):
        out[1 + i] = grads[k]
    return out


def _branch_vjp(branch: Region, vjp: Vjp, float_out: list[int], float_in: list[int]
                ) -> Region:
    """A branch's VJP as a body: params (operands..., cotangents of float results...) ->
    cotangents of the float operands (zeros where disconnected)."""
    graph = Graph(f"{branch.graph.name}_vjp")
    params = [_placeholder(graph, p.type, p.name) for p in branch.params]  # type: ignore[arg-type]
    mapping = copy_needed(list(branch.results), graph, dict(zip(branch.params, params)))
    outs = [mapping[branch.results[i]] for i in float_out]
    ct_params = [_placeholder(graph, o.type, "ct") for o in outs]  # type: ignore[arg-type]
    grads = vjp(outs, ct_params, [params[i] for i in float_in])
    with graph:
        results = [_or_zeros(g, params[i].type)  # type: ignore[arg-type]
                   for g, i in zip(grads, float_in)]
    return Region(graph, (*params, *ct_params), tuple(results))

