"""The JSON document of a graph (``graph.json`` in a `.gcg` file), and its validating reader.

Document (version 1)::

    {"format": "graphc-graph", "version": 1, "name": "mlp",
     "signatures": [{"name": "train", "inputs": ["x", "y"], "outputs": ["loss"],
                     "updates": [["w1", "new_w1"]]}],
     "nodes": [{"name": "h", "op": "add", "inputs": ["mm", "b1"], "attrs": {},
                "type": {"dtype": "float32", "shape": [128, 512]},
                "loc": {"file": "model.py", "line": 12, "func": "build"}}]}

`loc` is null when unknown. A region op's node has the type ``{"tuple": [type, ...]}`` and
a key "regions": one object per body, ``{"name": ..., "params": [names], "results":
[names], "nodes": [...]}``, whose nodes are read like the graph's (names scoped to the
body); other nodes have no "regions" key. A body constant's value is read under the key
``node@i@name`` (`rebuild.body_prefix`).

Attribute values are plain JSON where JSON can say them exactly (ints, finite floats,
bools, strings, null) and a one-key object otherwise:
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
from graphc.io.rebuild import add_checked_node, bind_value, body_prefix, value_items
from graphc.ir import DType, Graph, Node, Region, TensorType, TupleType
from graphc.verify import MAX_REGION_DEPTH

__all__ = ["graph_from_json", "graph_to_json", "value_nodes"]

_MAX_ATTR_DEPTH = 32
_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}

ValueReader = Callable[[str, TensorType], np.ndarray]


def value_nodes(graph: Graph) -> list[tuple[str, Node]]:
    """(key, node) of the values a file stores: variables and constants, in graph order,
    those of bodies under their scoped keys (`rebuild.value_items`)."""
    return value_items(graph)


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
        "nodes": _nodes_to_json(graph),
    }


def _nodes_to_json(graph: Graph) -> list[dict[str, Any]]:
    nodes = []
    for n in graph.nodes:
        item = {
            "name": n.name,
            "op": n.op,
            "inputs": [i.name for i in n.inputs],
            "attrs": {k: encode_attr(v) for k, v in n.attrs.items()},
            "type": _type_to_json(n.type),
            "loc": None if n.loc is None else
            {"file": n.loc.file, "line": n.loc.line, "func": n.loc.func},
        }
        if n.regions:
            item["regions"] = [{"name": r.graph.name, "params": [p.name for p in r.params],
                                "results": [x.name for x in r.results],
                                "nodes": _nodes_to_json(r.graph)} for r in n.regions]
        nodes.append(item)
    return nodes


def _type_to_json(t: TensorType | TupleType) -> dict[str, Any]:
    if isinstance(t, TupleType):
        return {"tuple": [_type_to_json(e) for e in t.elements]}
    return {"dtype": t.dtype.value, "shape": list(t.shape)}


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
    _read_nodes(graph, doc["nodes"], "$.nodes", read_value, "", 0)
    for i, item in enumerate(_list(doc["signatures"], "$.signatures")):
        _signature(graph, item, f"$.signatures[{i}]")
    return graph


def _read_nodes(graph: Graph, items: Any, path: str, read_value: ValueReader, prefix: str,
                depth: int) -> None:
    for i, item in enumerate(_list(items, path)):
        _node(graph, item, f"{path}[{i}]", read_value, prefix, depth)


def _region(item: Any, path: str, read_value: ValueReader, prefix: str, depth: int) -> Region:
    if depth >= MAX_REGION_DEPTH:
        raise SerializationError(f"{path}: bodies nest deeper than {MAX_REGION_DEPTH} levels")
    _keys(item, path, {"name", "params", "results", "nodes"})
    body = Graph(_str(item["name"], f"{path}.name"))
    _read_nodes(body, item["nodes"], f"{path}.nodes", read_value, prefix, depth + 1)
    params = [_ref(body, x, f"{path}.params") for x in _list(item["params"], f"{path}.params")]
    results = [_ref(body, x, f"{path}.results")
               for x in _list(item["results"], f"{path}.results")]
    return Region(body, tuple(params), tuple(results))


def _node(graph: Graph, item: Any, path: str, read_value: ValueReader, prefix: str,
          depth: int) -> None:
    if not isinstance(item, dict) or "regions" not in item:
        _keys(item, path, {"name", "op", "inputs", "attrs", "type", "loc"})
    else:
        _keys(item, path, {"name", "op", "inputs", "attrs", "type", "loc", "regions"})
    name = _str(item["name"], f"{path}.name")
    inputs = [_ref(graph, x, f"{path}.inputs[{j}]")
              for j, x in enumerate(_list(item["inputs"], f"{path}.inputs"))]
    attrs_doc = item["attrs"]
    if not isinstance(attrs_doc, dict):
        raise SerializationError(f"{path}.attrs: expected an object")
    attrs = {k: decode_attr(v, f"{path}.attrs.{k}") for k, v in attrs_doc.items()}
    ttype = _value_type(item["type"], f"{path}.type")
    loc = _loc(item["loc"], f"{path}.loc")
    regions = [_region(r, f"{path}.regions[{j}]", read_value, body_prefix(prefix, name, j),
                       depth)
               for j, r in enumerate(_list(item.get("regions", []), f"{path}.regions"))]
    try:
        node = add_checked_node(graph, _str(item["op"], f"{path}.op"), inputs, attrs, ttype,
                                name, loc, regions)
    except SerializationError as exc:
        raise SerializationError(f"{path}: {exc.message}") from None
    if node.op in ("variable", "constant"):
        assert isinstance(ttype, TensorType)  # add_checked_node refuses tuple-typed sources
        bind_value(graph, node, read_value(prefix + node.name, ttype), copy=False)


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


def _value_type(item: Any, path: str) -> TensorType | TupleType:
    if isinstance(item, dict) and set(item) == {"tuple"}:
        elements = _list(item["tuple"], f"{path}.tuple")
        return TupleType(tuple(_type(e, f"{path}.tuple[{i}]") for i, e in enumerate(elements)))
    return _type(item, path)


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
