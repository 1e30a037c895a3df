"""The JSON document of a graph (``graph.json`` in a `.gcg` file), and its validating reader.

Document (version 1)::

    {"format": "graphc-graph", "version": 1, "name": "mlp",
     "signatures": [{"name": "train", "inputs": ["x", "y"], "outputs": ["loss"],
                     "updates": [["w1", "new_w1"]]}],
     "nodes": [{"name": "h", "op": "add", "inputs": ["mm", "b1"], "attrs": {},
                "type": {"dtype": "float32", "shape": [128, 512]},
                "loc": {"file": "model.py", "line": 12, "func": "build"}}]}

`loc` is null when unknown. Attribute values are plain JSON where JSON can say them exactly
(ints, finite floats, bools, strings, null) and a one-key object otherwise:
``{"tuple": [...]}``, ``{"dtype": "float32"}``, ``{"float": "inf" | "-inf" | "nan"}``.
Values of variables and constants are not in the document; the reader asks for them.

`graph_from_json` accepts exactly this schema (unknown or missing keys, wrong types and a
signature name given twice are `SerializationError`s naming the JSON path) and rebuilds the
nodes through their type rules.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from graphc.errors import GraphcError, SerializationError, SourceLoc
from graphc.io.rebuild import add_checked_node, bind_value
from graphc.ir import DType, Graph, Node, TensorType

__all__ = ["graph_from_json", "graph_to_json", "value_nodes"]

_MAX_ATTR_DEPTH = 32
_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}

ValueReader = Callable[[str, TensorType], np.ndarray]


def value_nodes(graph: Graph) -> list[Node]:
    """The nodes whose values a file stores: variables and constants, in graph order."""
    return [n for n in graph.nodes if n.op in ("variable", "constant")]


# --- writing ----------------------------------------------------------------------------------

def graph_to_json(graph: Graph, fmt: str, version: int) -> dict[str, Any]:
    """The JSON document of `graph` (values excluded)."""
    return {
        "format": fmt,
        "version": version,
        "name": graph.name,
        "signatures": [
            {
                "name": s.name,
                "inputs": [n.name for n in s.inputs],
                "outputs": [n.name for n in s.outputs],
                "updates": [[v.name, u.name] for v, u in s.updates],
            }
            for s in graph.signatures.values()
        ],
        "nodes": [
            {
                "name": n.name,
                "op": n.op,
                "inputs": [i.name for i in n.inputs],
                "attrs": {k: encode_attr(v) for k, v in n.attrs.items()},
                "type": {"dtype": n.dtype.value, "shape": list(n.shape)},
                "loc": None if n.loc is None else
                {"file": n.loc.file, "line": n.loc.line, "func": n.loc.func},
            }
            for n in graph.nodes
        ],
    }


def encode_attr(value: Any) -> Any:
    """An attribute value in the typed JSON encoding."""
    if isinstance(value, tuple):
        return {"tuple": [encode_attr(v) for v in value]}
    if isinstance(value, DType):
        return {"dtype": value.value}
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise SerializationError(f"cannot encode attribute value {value!r}")


# --- reading ----------------------------------------------------------------------------------

def graph_from_json(doc: Any, read_value: ValueReader) -> Graph:
    """Rebuild a graph from its JSON document; `read_value(name, type)` gives values.

    The caller has checked "format" and "version". Every node goes through
    `add_checked_node`; every value through `bind_value`.
    """
    _keys(doc, "$", {"format", "version", "name", "signatures", "nodes"})
    graph = Graph(_str(doc["name"], "$.name"))
    for i, item in enumerate(_list(doc["nodes"], "$.nodes")):
        _node(graph, item, f"$.nodes[{i}]", read_value)
    for i, item in enumerate(_list(doc["signatures"], "$.signatures")):
        _signature(graph, item, f"$.signatures[{i}]")
    return graph


def _node(graph: Graph, item: Any, path: str, read_value: ValueReader) -> None:
    _keys(item, path, {"name", "op", "inputs", "attrs", "type", "loc"})
    name = _str(item["name"], f"{path}.name")
    inputs = [_ref(graph, x, f"{path}.inputs[{j}]")
              for j, x in enumerate(_list(item["inputs"], f"{path}.inputs"))]
    attrs_doc = item["attrs"]
    if not isinstance(attrs_doc, dict):
        raise SerializationError(f"{path}.attrs: expected an object")
    attrs = {k: decode_attr(v, f"{path}.attrs.{k}") for k, v in attrs_doc.items()}
    ttype = _type(item["type"], f"{path}.type")
    loc = _loc(item["loc"], f"{path}.loc")
    try:
        node = add_checked_node(graph, _str(item["op"], f"{path}.op"), inputs, attrs, ttype,
                                name, loc)
    except SerializationError as exc:
        raise SerializationError(f"{path}: {exc.message}") from None
    if node.op in ("variable", "constant"):
        bind_value(graph, node, read_value(node.name, ttype), copy=False)


def _signature(graph: Graph, item: Any, path: str) -> None:
    _keys(item, path, {"name", "inputs", "outputs", "updates"})
    ins = [_ref(graph, x, f"{path}.inputs") for x in _list(item["inputs"], f"{path}.inputs")]
    outs = [_ref(graph, x, f"{path}.outputs") for x in _list(item["outputs"], f"{path}.outputs")]
    updates = []
    for pair in _list(item["updates"], f"{path}.updates"):
        if not isinstance(pair, list) or len(pair) != 2:
            raise SerializationError(f"{path}.updates: expected [variable, new value] pairs")
        updates.append((_ref(graph, pair[0], f"{path}.updates"),
                        _ref(graph, pair[1], f"{path}.updates")))
    name = _str(item["name"], f"{path}.name")
    # Graph.add_signature replaces a signature of the same name; a file that names two is
    # ambiguous (which one did its writer mean?), and `graph_to_json` never writes one.
    if name in graph.signatures:
        raise SerializationError(f"{path}.name: signature {_short(name)} appears twice")
    try:
        graph.add_signature(name, ins, outs, updates)
    except GraphcError as exc:
        raise SerializationError(f"{path}: signature {name!r}: {exc.message}") from None


def decode_attr(value: Any, path: str, depth: int = 0) -> Any:
    """The inverse of `encode_attr`, rejecting anything it would not produce."""
    if depth > _MAX_ATTR_DEPTH:
        raise SerializationError(f"{path}: attribute nested too deeply")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict) and len(value) == 1:
        (kind, inner), = value.items()
        if kind == "tuple" and isinstance(inner, list):
            return tuple(decode_attr(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(inner))
        if kind == "dtype" and isinstance(inner, str) and inner in DType._value2member_map_:
            return DType(inner)
        if kind == "float" and isinstance(inner, str) and inner in _NONFINITE:
            return _NONFINITE[inner]
    raise SerializationError(f"{path}: expected an attribute value (number, string, bool, null, "
                             "{\"tuple\": [...]}, {\"dtype\": name} or {\"float\": "
                             f"\"inf\"|\"-inf\"|\"nan\"}}), got {_short(value)}")


def _type(item: Any, path: str) -> TensorType:
    _keys(item, path, {"dtype", "shape"})
    dtype = _str(item["dtype"], f"{path}.dtype")
    if dtype not in DType._value2member_map_:
        raise SerializationError(f"{path}.dtype: unknown dtype {dtype!r}")
    shape = _list(item["shape"], f"{path}.shape")
    for d in shape:
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            raise SerializationError(f"{path}.shape: expected non-negative ints, got {_short(d)}")
    return TensorType(tuple(shape), DType(dtype))


def _loc(item: Any, path: str) -> SourceLoc | None:
    if item is None:
        return None
    _keys(item, path, {"file", "line", "func"})
    line = item["line"]
    if not isinstance(line, int) or isinstance(line, bool) or line < 0:
        raise SerializationError(f"{path}.line: expected a line number, got {_short(line)}")
    return SourceLoc(_str(item["file"], f"{path}.file"), line, _str(item["func"], f"{path}.func"))


def _ref(graph: Graph, name: Any, path: str) -> Node:
    name = _str(name, path)
    if name not in graph:
        raise SerializationError(f"{path}: %{name} is not a node defined before this point")
    return graph[name]


def _keys(item: Any, path: str, keys: set[str]) -> None:
    if not isinstance(item, dict):
        raise SerializationError(f"{path}: expected an object, got {_short(item)}")
    missing = sorted(keys - set(item))
    unknown = sorted(set(item) - keys)
    if missing or unknown:
        raise SerializationError(f"{path}: missing key(s) {missing}, unknown key(s) {unknown}"
                                 if missing and unknown else
                                 f"{path}: missing key(s) {missing}" if missing else
                                 f"{path}: unknown key(s) {unknown}")


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise SerializationError(f"{path}: expected a string, got {_short(value)}")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise SerializationError(f"{path}: expected a list, got {_short(value)}")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
