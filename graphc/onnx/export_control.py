"""ONNX forms of graphc's region ops (registered into the exporter's `EMIT` table).

- `scan` -> ONNX Scan (opset 9+): the carries are its state variables, xs its scan
  inputs (axis 0); a reverse scan runs and stacks in reverse directions.
- `cond` -> ONNX If: each branch a subgraph without inputs.
- `while_loop` -> ONNX Loop without a trip count: the loop's condition input is the test
  region applied to the initial carry (inlined before the Loop), the body subgraph runs the
  body region and then the test region on its result, whose value is the body's condition
  output; the iteration counter is unused.

A region's consts (the outer values it captured) and, for `cond`, every operand are read
from the enclosing scope by name, as ONNX subgraphs read outer values. Result i of the
node is the ONNX value `out#i` (the `get`s read it). Names inside a body are prefixed with
the owning node's name and `@` (which graphc names never contain), so nested bodies and a
region inlined twice never clash.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from graphc.ir import DType, Node, Region
from graphc.onnx.exporter import _ELEM, _emit, _write, _Writer
from graphc.onnx.model import OnnxError


def _inline(w: _Writer, region: Region, bound: Mapping[Node, str], prefix: str) -> list[str]:
    """Write `region`'s nodes into `w`, its params named as `bound` says (outer values or
    the subgraph's inputs), every other node `prefix + name`; the results' names."""

    def name(m: Node) -> str:
        return bound.get(m, prefix + m.name)

    _write(w, [m for m in region.needed_nodes() if m not in bound], name)
    return [name(r) for r in region.results]


def _info(w: _Writer, name: str, node: Node) -> Any:
    return w.onnx.helper.make_tensor_value_info(name, _ELEM[node.dtype], list(node.shape))


def _subgraph(w: _Writer, sub: _Writer, name: str, inputs: Sequence[tuple[str, Node]],
              outputs: Sequence[tuple[str, Node]], taken: set[str]) -> Any:
    """The GraphProto of `sub`'s nodes; an output that is an input, an outer value, an
    initializer or another output gets an Identity of its own (`taken`: the names
    already used so)."""
    outs = []
    initializers = {t.name for t in sub.initializers}
    for value, node in outputs:
        if value in taken or value in initializers:
            value = sub.node("Identity", [value], sub.fresh(name + "@result"))
        taken.add(value)
        outs.append(_info(w, value, node))
    return w.onnx.helper.make_graph(sub.nodes, name, [_info(w, v, n) for v, n in inputs],
                                    outs, sub.initializers)


@_emit("get")
def _get(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    w.node("Identity", [f"{ins[0]}#{n.attrs['index']}"], out)


@_emit("scan")
def _scan(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    nc, nk, reverse = n.attrs["num_consts"], n.attrs["num_carry"], n.attrs["reverse"]
    body = n.regions[0]
    nx, ny = len(n.inputs) - nc - nk, len(body.results) - nk
    if nx == 0:
        raise OnnxError(f"scan %{n.name} has no xs; ONNX's Scan takes its length from them")
    prefix = f"{out}@"
    bound = dict(zip(body.params[:nc], ins[:nc]))  # captured: read from the outer scope
    inputs = [(prefix + p.name, p) for p in body.params[nc:]]
    bound.update((p, v) for v, p in inputs)
    sub = _Writer(w.onnx, w.opset)
    results = _inline(sub, body, bound, prefix)
    graph = _subgraph(w, sub, prefix + "body", inputs, list(zip(results, body.results)),
                      set(bound.values()))
    directions: dict[str, list[int]] = {}
    if reverse:  # forward is the default (and an empty list has no attribute type)
        directions["scan_input_directions"] = [1] * nx
        if ny:
            directions["scan_output_directions"] = [1] * ny
    w.nodes.append(w.onnx.helper.make_node(
        "Scan", ins[nc:], [f"{out}#{i}" for i in range(nk + ny)], name=out, body=graph,
        num_scan_inputs=nx, **directions))


@_emit("cond")
def _cond(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    branches = []
    for label, region in zip(("then", "else"), n.regions):
        prefix = f"{out}@{label}@"
        bound = dict(zip(region.params, ins[1:]))  # every operand: from the outer scope
        sub = _Writer(w.onnx, w.opset)
        results = _inline(sub, region, bound, prefix)
        branches.append(_subgraph(w, sub, prefix + "branch", [],
                                  list(zip(results, region.results)), set(bound.values())))
    w.nodes.append(w.onnx.helper.make_node(
        "If", [ins[0]], [f"{out}#{i}" for i in range(len(n.regions[0].results))], name=out,
        then_branch=branches[0], else_branch=branches[1]))


@_emit("while_loop")
def _while_loop(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    nc = n.attrs["num_consts"]
    test, body = n.regions
    consts, init = ins[:nc], ins[nc:]
    # The condition of the first iteration, before the Loop.
    (start,) = _inline(w, test, dict(zip(test.params, ins)), f"{out}@start@")
    prefix = f"{out}@"
    counter = w.onnx.helper.make_tensor_value_info(prefix + "iteration", _ELEM[DType.int64], [])
    flag = w.onnx.helper.make_tensor_value_info(prefix + "cond_in", _ELEM[DType.bool], [])
    carry = [(prefix + p.name, p) for p in body.params[nc:]]
    sub = _Writer(w.onnx, w.opset)
    bound = {**dict(zip(body.params[:nc], consts)), **{p: v for v, p in carry}}
    after = _inline(sub, body, bound, prefix + "body@")
    (again,) = _inline(sub, test, {**dict(zip(test.params[:nc], consts)),
                                   **dict(zip(test.params[nc:], after))}, prefix + "test@")
    taken = {*consts, *(v for v, _ in carry), prefix + "iteration", prefix + "cond_in"}
    outputs = [(again, test.results[0]), *zip(after, body.results)]
    graph = _subgraph(w, sub, prefix + "body", [], outputs, taken)
    graph.input.extend([counter, flag, *(_info(w, v, p) for v, p in carry)])
    w.nodes.append(w.onnx.helper.make_node(
        "Loop", ["", start, *init], [f"{out}#{i}" for i in range(len(init))], name=out,
        body=graph))

