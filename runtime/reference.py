"""The numpy reference interpreter: the oracle every pass and backend is tested against.

`reference(g, inputs, outputs, updates)` returns a callable with the calling convention of
compiled executables (see `runtime.arguments`). It evaluates the nodes the outputs and
updates need, in graph order, with each op's numpy reference, then writes all updates into
`g.variables` at once (every update sees the variables' old values).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from graphc.errors import GraphcError
from graphc.ir import Graph, Node, Signature
from graphc.ops import registry
from graphc.runtime.arguments import bind_arguments, resolve_signature


def evaluate(sig: Signature, feeds: Mapping[str, np.ndarray]) -> dict[Node, np.ndarray]:
    """Values of every node the signature needs, given placeholder values by name."""
    graph_values: dict[Node, np.ndarray] = {}
    for node in sig.needed_nodes():
        graph = node.graph
        if node.op == "placeholder":
            value = feeds[node.name]
        elif node.op == "variable":
            value = graph.variables[node.name]
        elif node.op == "constant":
            value = graph.constants[node.name]
        else:
            op = registry.get(node.op)
            args = [graph_values[i] for i in node.inputs]
            try:
                with np.errstate(all="ignore"):
                    value = op.reference(args, node.attrs)
            except GraphcError as exc:
                raise exc.with_context(op=node.op, loc=node.loc) from None
            except (IndexError, ValueError) as exc:
                raise GraphcError(f"reference evaluation of %{node.name} failed: {exc}",
                                  op=node.op, loc=node.loc) from None
            value = np.asarray(value)
            if value.shape != node.shape:
                raise GraphcError(
                    f"reference of %{node.name} returned shape {value.shape}, "
                    f"its type is {node.type} (a bug in the op's reference)", op=node.op)
            if value.dtype != node.dtype.np:
                value = value.astype(node.dtype.np)
        graph_values[node] = value
    return graph_values


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
