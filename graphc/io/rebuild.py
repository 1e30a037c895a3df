"""What the text IR parser and the `.gcg` loader share: rebuilding a graph node by node.

Both readers turn untrusted input into a `Graph` the same way: every node is added with
`Graph.add_node` (so names and source locations survive exactly), its op's type rule runs and
must reproduce the recorded type, and variable/constant values must have their node's exact
shape and dtype. Failures are `SerializationError`s whose messages say which node and what
was expected; the callers add where in the file it happened.

`graph_diff` compares two graphs field by field; it is how round trips are tested.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from graphc.errors import GraphcError, SerializationError, SourceLoc
from graphc.ir import SOURCE_OPS, DType, Graph, Node, Region, TensorType, ValueType
from graphc.ops import registry
from graphc.verify import check_region

__all__ = ["NodeError", "add_checked_node", "bind_value", "body_prefix", "graph_diff",
           "graphs_equal", "value_items"]


class NodeError(SerializationError):
    """A node read from a file is invalid; `part` says which field is at fault.

    `part` is one of "name", "op", "inputs", "attrs", "type" (a reader uses it to point at
    the right place in its input).
    """

    def __init__(self, message: str, *, part: str = "op", op: str | None = None,
                 loc: SourceLoc | None = None):
        self.part = part
        super().__init__(message, op=op, loc=loc)


def add_checked_node(
    graph: Graph,
    op: str,
    inputs: Sequence[Node],
    attrs: Mapping[str, Any],
    ttype: ValueType,
    name: str,
    loc: SourceLoc | None,
    regions: Sequence[Region] = (),
) -> Node:
    """Add one node read from a file, after checking that its op accepts it.

    The op must be registered, take this many inputs and regions, and its type rule must
    infer exactly `ttype` (source ops take no inputs and their recorded type is
    authoritative). Each region must be a well-formed closed body (`verify.check_region`;
    its nodes were checked as they were read). Raises `SerializationError` naming the node;
    never adds a node that fails a check.
    """
    where = f"node %{name}"
    opdef = registry.OPS.get(op)
    if opdef is None:
        raise NodeError(f"{where}: unknown op {op!r} (see `graphc ops --list`)")
    if opdef.arity is not None and len(inputs) != opdef.arity:
        raise NodeError(f"{where}: op {op} takes {opdef.arity} input(s), got {len(inputs)}",
                        part="inputs")
    if opdef.arity is None and not inputs:
        raise NodeError(f"{where}: op {op} takes at least one input, got none", part="inputs")
    try:
        frozen = opdef.check_attrs(attrs)
    except GraphcError as exc:
        raise NodeError(f"{where}: {exc.message}", part="attrs") from None
    if op in SOURCE_OPS and not isinstance(ttype, TensorType):
        raise NodeError(f"{where}: a {op} has a tensor type, not {ttype}", part="type")
    for i, region in enumerate(regions):
        try:
            check_region(region)
        except GraphcError as exc:
            raise NodeError(f"{where}: region {i} ({region.graph.name!r}): {exc.message}",
                            part="op") from None
    if op not in SOURCE_OPS:
        try:
            inferred = opdef.infer_type(tuple(i.type for i in inputs), frozen, regions)
        except GraphcError as exc:
            raise NodeError(f"{where}: the type rule of {op} rejects it: {exc.message}",
                            part="op") from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            # A malformed attribute (a string where a tuple belongs, a missing key) reaches
            # the type rule, which only promises to check well-formed builder attributes.
            raise NodeError(
                f"{where}: the attributes of {op} are malformed ({type(exc).__name__}: {exc})",
                part="attrs") from None
        if inferred != ttype:
            raise NodeError(
                f"{where}: the type rule of {op} infers {inferred}, the file says {ttype}",
                part="type")
    try:
        return graph.add_node(op, inputs, frozen, ttype, name=name, loc=loc, regions=regions)
    except GraphcError as exc:
        raise NodeError(f"{where}: {exc.message}", part="name") from None


def body_prefix(prefix: str, node: Node | str, index: int) -> str:
    """The value-key prefix of region `index` of `node` in a graph whose keys start with
    `prefix`: a body constant's value is stored under ``prefix + node@index@ + name``. Node
    names never contain ``@``, so a key of a body never equals a top-level name."""
    name = node if isinstance(node, str) else node.name
    return f"{prefix}{name}@{index}@"


def value_items(graph: Graph, prefix: str = "") -> list[tuple[str, Node]]:
    """(value key, node) of every variable and constant of `graph` and of its bodies, in
    graph order (a body's after its node): what a file stores values for."""
    items: list[tuple[str, Node]] = []
    for n in graph.nodes:
        if n.op in ("variable", "constant"):
            items.append((prefix + n.name, n))
        for i, region in enumerate(n.regions):
            items.extend(value_items(region.graph, body_prefix(prefix, n, i)))
    return items


def bind_value(graph: Graph, node: Node, value: Any, *, copy: bool) -> None:
    """Attach the value of a variable or constant node after checking its exact type.

    With `copy` the array is copied (the caller's array is not shared with the new graph).
    Constants become read-only, as `gc.constant` makes them.
    """
    if not isinstance(value, np.ndarray):
        raise SerializationError(
            f"the value of {node.op} %{node.name} is a {type(value).__name__}, not an array")
    try:
        dtype = DType.of(value.dtype)
    except GraphcError:
        dtype = None
    if dtype != node.dtype or value.shape != node.shape:
        raise SerializationError(
            f"the value of {node.op} %{node.name} is {value.dtype}{list(value.shape)}, "
            f"its type is {node.type}")
    # Not np.ascontiguousarray: it turns a 0-d array into a 1-d one.
    array = np.array(value, copy=copy or not value.flags.c_contiguous, order="C")
    if node.op == "variable":
        if not array.flags.writeable:
            array = array.copy()
        graph.variables.bind(node.name, array)
    elif node.op == "constant":
        array.flags.writeable = False
        graph.constants[node.name] = array
    else:
        raise SerializationError(f"%{node.name} is a {node.op}; only variables and constants "
                                 "have values")


# --- comparison -------------------------------------------------------------------------------

def graph_diff(a: Graph, b: Graph, *, variables: bool = True) -> str | None:
    """The first difference between two graphs, or None if they are identical.

    Compared: the graph name; per node (in order) the name, op, input names, attributes
    (type-strict: ``1`` differs from ``1.0`` and ``True``; -0.0 from 0.0), type and source
    location; constant values (bit-for-bit up to NaN payloads); the signatures in order;
    and, if `variables`, the variable values.
    """
    if a.name != b.name:
        return f"graph names differ: {a.name!r} vs {b.name!r}"
    found = _nodes_diff(a, b, variables)
    if found is not None:
        return found
    sig_a = [_sig_key(s) for s in a.signatures.values()]
    sig_b = [_sig_key(s) for s in b.signatures.values()]
    if sig_a != sig_b:
        return f"signatures differ: {sig_a} vs {sig_b}"
    return None


def _nodes_diff(a: Graph, b: Graph, variables: bool) -> str | None:
    if len(a.nodes) != len(b.nodes):
        return f"node counts differ: {len(a.nodes)} vs {len(b.nodes)}"
    for x, y in zip(a.nodes, b.nodes):
        fields = (
            ("name", x.name, y.name),
            ("op", x.op, y.op),
            ("inputs", [i.name for i in x.inputs], [i.name for i in y.inputs]),
            ("type", x.type, y.type),
            ("loc", x.loc, y.loc),
        )
        for field_name, u, v in fields:
            if u != v:
                return f"node %{x.name}: {field_name} differs: {u!r} vs {v!r}"
        if list(x.attrs) != list(y.attrs) or not all(
            same_attr(x.attrs[k], y.attrs[k]) for k in x.attrs
        ):
            return f"node %{x.name}: attrs differ: {dict(x.attrs)!r} vs {dict(y.attrs)!r}"
        if x.op == "constant" or (x.op == "variable" and variables):
            u, v = _value_of(a, x), _value_of(b, y)
            if u is None or v is None:
                return f"{x.op} %{x.name}: value missing in one graph"
            if not same_array(u, v):
                return f"{x.op} %{x.name}: values differ"
        if len(x.regions) != len(y.regions):
            return f"node %{x.name}: region counts differ"
        for i, (r, q) in enumerate(zip(x.regions, y.regions)):
            found = _region_diff(r, q, variables)
            if found is not None:
                return f"node %{x.name}, region {i}: {found}"
    return None


def _region_diff(r: Region, q: Region, variables: bool) -> str | None:
    if r.graph.name != q.graph.name:
        return f"body names differ: {r.graph.name!r} vs {q.graph.name!r}"
    for what, u, v in (("params", r.params, q.params), ("results", r.results, q.results)):
        if [n.name for n in u] != [n.name for n in v]:
            return f"{what} differ: {[n.name for n in u]} vs {[n.name for n in v]}"
    return _nodes_diff(r.graph, q.graph, variables)


def graphs_equal(a: Graph, b: Graph, *, variables: bool = True) -> bool:
    """True if `graph_diff(a, b)` finds no difference."""
    return graph_diff(a, b, variables=variables) is None


def same_attr(x: Any, y: Any) -> bool:
    """Type-strict equality of attribute values (Python's ``1 == 1.0 == True`` is too loose)."""
    if type(x) is not type(y):
        return False
    if isinstance(x, tuple):
        return len(x) == len(y) and all(same_attr(u, v) for u, v in zip(x, y))
    if isinstance(x, float):
        if math.isnan(x) or math.isnan(y):
            return math.isnan(x) and math.isnan(y)
        return x == y and math.copysign(1.0, x) == math.copysign(1.0, y)
    return bool(x == y)


def same_array(x: np.ndarray, y: np.ndarray) -> bool:
    """Same dtype, shape and values (NaN equals NaN; -0.0 differs from 0.0)."""
    if x.dtype != y.dtype or x.shape != y.shape:
        return False
    if x.dtype.kind == "f":
        return bool(np.array_equal(x, y, equal_nan=True)
                    and np.array_equal(np.signbit(x), np.signbit(y)))
    return bool(np.array_equal(x, y))


def _value_of(graph: Graph, node: Node) -> np.ndarray | None:
    store: Mapping[str, np.ndarray] = (
        graph.variables if node.op == "variable" else graph.constants)
    try:
        return store[node.name]
    except (KeyError, GraphcError):  # VariableStore raises GraphNameError for unknown names
        return None


def _sig_key(sig: Any) -> tuple[Any, ...]:
    return (
        sig.name,
        [n.name for n in sig.inputs],
        [n.name for n in sig.outputs],
        [(v.name, u.name) for v, u in sig.updates],
    )
