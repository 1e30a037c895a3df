"""The numpy reference interpreter: the oracle every pass and backend is tested against.

`reference(g, inputs, outputs, updates)` returns a callable with the calling convention of
compiled executables (see `runtime.arguments`). It evaluates the nodes the outputs and
updates need, in graph order, with each op's numpy reference, then writes all updates into
`g.variables` at once (every update sees the variables' old values). Region ops run their
bodies through `run_body` (only the taken branch of a cond; a while_loop to its end).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from graphc.errors import GraphcError
from graphc.ir import Graph, Node, Region, Signature, TensorType, TupleType
from graphc.ops import registry
from graphc.runtime.arguments import bind_arguments, resolve_signature


def evaluate(sig: Signature, feeds: Mapping[str, np.ndarray]) -> dict[Node, Any]:
    """Values of every node the signature needs, given placeholder values by name (a region
    op's value is the list of its results' arrays)."""
    values: dict[Node, Any] = {}
    for node in sig.needed_nodes():
        if node.op == "placeholder":
            values[node] = feeds[node.name]
        else:
            values[node] = _evaluate_node(node, values)
    return values


def run_body(region: Region, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run a body graph on arrays for its params; the arrays of its results."""
    values: dict[Node, Any] = dict(zip(region.params, args))
    for node in _body_order(region):
        if node not in values:
            values[node] = _evaluate_node(node, values)
    return [values[r] for r in region.results]


@functools.lru_cache(maxsize=1024)
def _body_order(region: Region) -> tuple[Node, ...]:
    # NOTE: a loop runs its body once per step; the walk over the body is done once.
    return tuple(region.needed_nodes())


def _evaluate_node(node: Node, values: Mapping[Node, Any]) -> Any:
    graph = node.graph
    if node.op == "variable":
        return graph.variables[node.name]
    if node.op == "constant":
        return graph.constants[node.name]
    op = registry.get(node.op)
    args = [values[i] for i in node.inputs]
    try:
        with np.errstate(all="ignore"):
            if op.region is not None:
                return _checked(node, op.region.evaluate(args, node.attrs, node.regions,
                                                         run_body))
            value = op.evaluate_reference(args, node.attrs, node.type)
    except GraphcError as exc:
        raise exc.with_context(op=node.op, loc=node.loc) from None
    except (IndexError, ValueError) as exc:
        raise GraphcError(f"reference evaluation of %{node.name} failed: {exc}",
                          op=node.op, loc=node.loc) from None
    return _cast(node, node.type, value)  # type: ignore[arg-type]


def _checked(node: Node, results: list[np.ndarray]) -> list[np.ndarray]:
    assert isinstance(node.type, TupleType)
    return [_cast(node, t, v) for t, v in zip(node.type.elements, results, strict=True)]


def _cast(node: Node, ttype: TensorType, value: Any) -> np.ndarray:
    value = np.asarray(value)
    if value.shape != ttype.shape:
        raise GraphcError(
            f"reference of %{node.name} returned shape {value.shape}, "
            f"its type is {ttype} (a bug in the op's reference)", op=node.op)
    if value.dtype != ttype.dtype.np:
        value = value.astype(ttype.dtype.np)
    return value


class ReferenceFunction:
    """A graph signature run by the numpy interpreter; called like a compiled Executable."""

    def __init__(self, graph: Graph, sig: Signature, single_output: bool):
        self.graph = graph
        self.signature = sig
        self.single_output = single_output

    @property
    def input_names(self) -> list[str]:
        return [n.name for n in self.signature.inputs]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        arrays = bind_arguments(self.signature.inputs, args, kwargs, "reference function")
        feeds = {n.name: a for n, a in zip(self.signature.inputs, arrays)}
        values = evaluate(self.signature, feeds)
        outputs = tuple(np.array(values[n], copy=True) for n in self.signature.outputs)
        new_state = [(var, np.array(values[v], copy=True)) for var, v in self.signature.updates]
        for var, value in new_state:
            np.copyto(self.graph.variables[var.name], value)
        if self.single_output:
            return outputs[0]
        return outputs


def reference(
    graph: Graph,
    inputs: Sequence[Node] | None = None,
    outputs: Sequence[Node] | Node | None = None,
    updates: Mapping[Node, Node] | Sequence[tuple[Node, Node]] | None = None,
    *,
    signature: str | None = None,
) -> ReferenceFunction:
    """Run `graph` with numpy: same arguments and calling convention as `gc.compile`.

    `outputs` given as one node makes calls return one array; given as a list, a tuple.
    """
    sig, single = resolve_signature(graph, inputs, outputs, updates, signature)
    return ReferenceFunction(graph, sig, single)
