"""`verify(graph)`: the IR's invariants, checked independently of any pass.

Checks that nodes are topologically ordered and belong to the graph, names are unique, every
op is registered with the right arity, every node's type equals what its op's type rule
infers, and every variable/constant has a value of its node's exact type. Passes must leave
these true; the pass manager runs `verify` after each pass in debug mode.
"""

from __future__ import annotations

from graphc.errors import GraphcError, VerifyError
from graphc.ir import DType, Graph, Region, TensorType
from graphc.ops import registry

# How deeply bodies may nest (a scan in a cond in a scan is 3): a bound for the recursive
# walkers (verify, printer, readers) and for hostile files.
MAX_REGION_DEPTH = 32


def verify(graph: Graph) -> None:
    """Raise `VerifyError` naming the first broken node; return None if the graph is sound.

    Bodies of region ops are verified too, recursively: each is closed (its sources are its
    params, which are exactly its placeholders, and its own constants), has no variables
    or signatures, and its node types satisfy the region op's type rule.
    """
    _verify_graph(graph, 0)


def _verify_graph(graph: Graph, depth: int) -> None:
    if depth > MAX_REGION_DEPTH:
        raise VerifyError(f"bodies nest deeper than {MAX_REGION_DEPTH} levels")
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
            if not isinstance(node.type, TensorType):
                raise VerifyError(f"{where} has the tuple type {node.type}", op=node.op)
            _verify_source(graph, node.op, node.name, node.type)
            continue
        for i, region in enumerate(node.regions):
            try:
                _verify_region(region, depth)
            except VerifyError as exc:
                raise VerifyError(f"{where}, region {i} ({region.graph.name!r}): "
                                  f"{exc.message}", op=node.op, loc=node.loc) from None
        try:
            inferred = op.infer_type(tuple(i.type for i in node.inputs), node.attrs,
                                     node.regions)
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
            if not isinstance(n.type, TensorType):
                raise VerifyError(f"signature {sig.name!r} names %{n.name} of the tuple type "
                                  f"{n.type}; name its `get` nodes instead")


def _verify_region(region: Region, depth: int) -> None:
    check_region(region)
    _verify_graph(region.graph, depth + 1)


def check_region(region: Region) -> None:
    """The invariants of one body, not of its nodes: closed (its placeholders are exactly
    its params, each listed once), no variables or signatures, results of its own graph
    with tensor types. Raises VerifyError."""
    body = region.graph
    if len(body.variables) or any(n.op == "variable" for n in body.nodes):
        raise VerifyError("a body has variables (outer state is passed in as operands)")
    if body.signatures:
        raise VerifyError("a body has signatures")
    if len({id(p) for p in region.params}) != len(region.params):
        raise VerifyError("a param is listed twice")
    placeholders = {id(n) for n in body.nodes if n.op == "placeholder"}
    for p in region.params:
        if p.graph is not body or p.op != "placeholder":
            raise VerifyError(f"param %{p.name} is not a placeholder of the body")
    if placeholders != {id(p) for p in region.params}:
        raise VerifyError("a placeholder of the body is not one of its params")
    for r in region.results:
        if r.graph is not body:
            raise VerifyError(f"result %{r.name} is not a node of the body")
        if not isinstance(r.type, TensorType):
            raise VerifyError(f"result %{r.name} has the tuple type {r.type}")


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
