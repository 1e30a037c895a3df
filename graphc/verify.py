"""`verify(graph)`: the IR's invariants, checked independently of any pass.

Checks that nodes are topologically ordered and belong to the graph, names are unique, every
op is registered with the right arity, every node's type equals what its op's type rule
infers, and every variable/constant has a value of its node's exact type. Passes must leave
these true; the pass manager runs `verify` after each pass in debug mode.
"""

from __future__ import annotations

from graphc.errors import GraphcError, VerifyError
from graphc.ir import DType, Graph, TensorType
from graphc.ops import registry


def verify(graph: Graph) -> None:
    """Raise `VerifyError` naming the first broken node; return None if the graph is sound."""
    seen: set[int] = set()
    names: set[str] = set()
    for node in graph.nodes:
        where = f"node %{node.name}"
        if node.graph is not graph:
            raise VerifyError(f"{where} belongs to another graph", op=node.op, loc=node.loc)
        if node.name in names:
            raise VerifyError(f"{where}: name used twice", op=node.op, loc=node.loc)
        names.add(node.name)
        for inp in node.inputs:
            if id(inp) not in seen:
                raise VerifyError(f"{where} reads %{inp.name}, which is not defined before it "
                                  "(cycle or foreign node)", op=node.op, loc=node.loc)
        seen.add(id(node))
        if node.op not in registry.OPS:
            raise VerifyError(f"{where}: unknown op {node.op!r}", loc=node.loc)
        op = registry.OPS[node.op]
        if op.arity is not None and len(node.inputs) != op.arity:
            raise VerifyError(f"{where}: {len(node.inputs)} inputs, op takes {op.arity}",
                              op=node.op, loc=node.loc)
        try:
            canonical = op.check_attrs(node.attrs)
        except GraphcError as exc:
            raise VerifyError(f"{where}: {exc.message}", op=node.op, loc=node.loc) from None
        if canonical != node.attrs:
            raise VerifyError(f"{where}: attributes {dict(node.attrs)} are not in canonical "
                              f"form {dict(canonical)}", op=node.op, loc=node.loc)
        if op.family == "source":
            _verify_source(graph, node.op, node.name, node.type)
            continue
        try:
            inferred = op.infer(tuple(i.type for i in node.inputs), node.attrs)
        except GraphcError as exc:
            raise VerifyError(f"{where}: type rule rejects its inputs: {exc.message}",
                              op=node.op, loc=node.loc) from None
        if inferred != node.type:
            raise VerifyError(f"{where} has type {node.type}, its type rule infers {inferred}",
                              op=node.op, loc=node.loc)
    for sig in graph.signatures.values():
        for n in (*sig.inputs, *sig.outputs, *(x for pair in sig.updates for x in pair)):
            if n.graph is not graph or (graph.nodes and n.name not in graph):
                raise VerifyError(f"signature {sig.name!r} names %{n.name}, not in the graph")


def _verify_source(graph: Graph, op: str, name: str, ttype: TensorType) -> None:
    store = {"variable": graph.variables, "constant": graph.constants}.get(op)
    if store is None:
        return
    if name not in store:
        raise VerifyError(f"{op} %{name} has no value", op=op)
    value = store[name]
    if value.shape != ttype.shape or DType.of(value.dtype) != ttype.dtype:
        raise VerifyError(f"{op} %{name} is {ttype} but its value is "
                          f"{value.dtype}{list(value.shape)}", op=op)
