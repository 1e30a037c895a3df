"""The text IR: `format_graph` prints a graph, `parse_graph` reads it back.

The two are inverses: ``parse_graph(format_graph(g), values)`` is a graph identical to `g`
(names, ops, inputs, attributes, types, source locations, signatures and constant values;
see `graph_diff`). Golden tests of passes are therefore written as text. Example::

    graph "mlp"
    signature "train" (%x, %y) -> (%loss) updates (%w1 <- %new_w1)
    %x = placeholder : f32[128,784]  loc("model.py":3 in "build")
    %w1 = variable {trainable=true} : f32[784,512]  loc("model.py":5 in "build")
    %two = constant {value=2.0} : f32[]
    %h = add(%mm, %b1) : f32[128,512]  loc("model.py":12)

One line per node: ``%name = op(%inputs) {attrs} : type  loc("file":line in "function")``;
parentheses are omitted when there are no inputs, braces when there are no attributes, the
loc when it is unknown and ``in "function"`` when the function is. Attribute values are ints,
floats (``1.0``, ``inf``, ``-inf``, ``nan``), ``true``/``false``, ``none``, quoted strings
(JSON escapes), dtypes (bare ``float32``) and tuples ``(1, 2)``. Constants of at most
`INLINE_LIMIT` elements carry their value as the attribute ``value`` (nested ``[...]`` lists
or a scalar); larger constants and all variables get their values from the `values` mapping
given to `parse_graph`. ``#`` starts a comment.

Parsing never evaluates code: it is a small hand-written recursive-descent parser. Each node
goes through its op's type rule, which must reproduce the printed type. Every error is a
`SerializationError` naming the line and column, what was expected and what was found, with
the line underlined by a caret.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from graphc.errors import GraphcError, SerializationError, SourceLoc
from graphc.io.rebuild import NodeError, add_checked_node, bind_value, graph_diff, graphs_equal
from graphc.io.textcursor import IDENT, STRING, LineCursor
from graphc.ir import DType, Graph, Node, TensorType

__all__ = ["INLINE_LIMIT", "format_graph", "graph_diff", "graphs_equal", "parse_graph"]

INLINE_LIMIT = 16


# --- printing ---------------------------------------------------------------------------------

def format_graph(graph: Graph) -> str:
    """The text IR of `graph`: a header, its signatures, then one line per node in order."""
    lines = [f"graph {_quote(graph.name)}"]
    for sig in graph.signatures.values():
        line = (f"signature {_quote(sig.name)} ({_names(sig.inputs)}) -> "
                f"({_names(sig.outputs)})")
        if sig.updates:
            pairs = ", ".join(f"%{var.name} <- %{new.name}" for var, new in sig.updates)
            line += f" updates ({pairs})"
        lines.append(line)
    lines.extend(format_node(node) for node in graph.nodes)
    return "\n".join(lines) + "\n"


def format_node(node: Node) -> str:
    """One node's line (a constant's value inline if it has at most `INLINE_LIMIT` elements)."""
    text = f"%{node.name} = {node.op}"
    if node.inputs:
        text += f"({_names(node.inputs)})"
    items = [f"{_format_key(k)}={format_value(v)}" for k, v in node.attrs.items()]
    if node.op == "constant" and node.size <= INLINE_LIMIT:
        value = node.graph.constants.get(node.name)
        if value is not None:
            items.append(f"value={_format_array(value)}")
    if items:
        text += " {" + ", ".join(items) + "}"
    text += f" : {node.type}"
    if node.loc is not None:
        func = f" in {_quote(node.loc.func)}" if node.loc.func else ""
        text += f"  loc({_quote(node.loc.file)}:{node.loc.line}{func})"
    return text


def format_value(value: Any) -> str:
    """An attribute value in text-IR syntax (the inverse of the parser's value rule)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _format_float(value, repr(value))
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, DType):
        return value.value
    if isinstance(value, tuple):
        inner = ", ".join(format_value(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    raise SerializationError(f"cannot print attribute value {value!r} "
                             f"of type {type(value).__name__}")


def _format_float(x: float, finite: str) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return finite


def _format_array(a: np.ndarray) -> str:
    if a.ndim == 0:
        x = a.item()
        if a.dtype.kind == "f":
            # str() of a numpy scalar is the shortest text that reads back to the same value
            # in that precision (0.1 for float32(0.1), not 0.10000000149011612).
            return _format_float(x, str(a[()]))
        return format_value(x)
    return "[" + ", ".join(_format_array(a[i]) for i in range(a.shape[0])) + "]"


def _names(nodes: tuple[Node, ...]) -> str:
    return ", ".join(f"%{n.name}" for n in nodes)


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _format_key(key: str) -> str:
    return key if IDENT.fullmatch(key) else _quote(key)


# --- parsing ----------------------------------------------------------------------------------

class _Parser:
    """Reads lines into a graph; signatures are resolved once every node is known."""

    def __init__(self, values: Mapping[str, np.ndarray]):
        self.values = values
        self.graph: Graph | None = None
        self.signatures: list[tuple[LineCursor, str, list[Any], list[Any], list[Any]]] = []

    def parse(self, text: str) -> Graph:
        # Split on "\n" only: str.splitlines() would also split inside strings at U+2028 etc.
        for number, raw in enumerate(text.split("\n"), start=1):
            line = LineCursor(raw.rstrip("\r"), number)
            if line.at_end():
                continue
            if self.graph is None:
                self.header(line)
            elif line.accept("signature"):
                self.signature(line)
            else:
                self.node(line)
            if not line.at_end():
                raise line.expected("end of line")
        if self.graph is None:
            raise SerializationError('empty text IR: expected a header line `graph "name"`')
        self.resolve_signatures(self.graph)
        unknown = sorted(set(self.values) - {n.name for n in self.graph.nodes
                                              if n.op in ("variable", "constant")})
        if unknown:
            raise SerializationError(f"values given for names that are not variables or "
                                     f"constants of the graph: {', '.join(unknown)}")
        return self.graph

    def header(self, line: LineCursor) -> None:
        if not line.accept("graph"):
            raise line.expected('the header `graph "name"`')
        self.graph = Graph(line.string("the graph name as a quoted string"))

    def signature(self, line: LineCursor) -> None:
        name = line.string("the signature name as a quoted string")
        line.expect("(")
        inputs = line.names(")")
        line.expect("->")
        line.expect("(")
        outputs = line.names(")")
        updates: list[tuple[tuple[str, int], tuple[str, int]]] = []
        if line.accept("updates"):
            line.expect("(")
            while not line.accept(")"):
                var = line.node_ref()
                line.expect("<-")
                updates.append((var, line.node_ref()))
                if not line.accept(",") and not line.text.startswith(")", line.pos):
                    raise line.expected("',' or ')'")
        self.signatures.append((line, name, inputs, outputs, updates))

    def resolve_signatures(self, graph: Graph) -> None:
        for line, name, inputs, outputs, updates in self.signatures:
            def get(ref: tuple[str, int], line: LineCursor = line, name: str = name) -> Node:
                if ref[0] not in graph:
                    raise line.error(f"signature {name!r} names %{ref[0]}, which is not a node "
                                     "of the graph", ref[1])
                return graph[ref[0]]

            try:
                graph.add_signature(name, [get(r) for r in inputs], [get(r) for r in outputs],
                                    [(get(v), get(u)) for v, u in updates])
            except SerializationError:
                raise
            except GraphcError as exc:
                raise line.error(f"signature {name!r}: {exc.message}", 0) from None

    def node(self, line: LineCursor) -> None:
        assert self.graph is not None
        graph = self.graph
        name, name_pos = line.node_ref()
        line.expect("=")
        line.skip()
        pos = {"name": name_pos, "op": line.pos}
        op = line.word("an op name")
        inputs: list[Node] = []
        line.skip()
        pos["inputs"] = line.pos
        if line.accept("("):
            for ref, ref_pos in line.names(")"):
                if ref not in graph:
                    raise line.error(f"%{ref} is not defined before this line", ref_pos)
                inputs.append(graph[ref])
        attrs: dict[str, Any] = {}
        line.skip()
        pos["attrs"] = line.pos
        if line.accept("{"):
            attrs = self.attrs(line)
        line.expect(":")
        line.skip()
        pos["type"] = line.pos
        ttype = line.tensor_type()
        loc = self.loc(line) if line.accept("loc") else None
        value = attrs.pop("value", None) if op == "constant" else None
        try:
            node = add_checked_node(graph, op, inputs, attrs, ttype, name, loc)
        except NodeError as exc:
            raise line.error(exc.message, pos[exc.part]) from None
        try:
            self.bind(node, value)
        except SerializationError as exc:
            raise line.error(exc.message, pos["attrs" if value is not None else "type"]) from None

    def attrs(self, line: LineCursor) -> dict[str, Any]:
        attrs: dict[str, Any] = {}
        while not line.accept("}"):
            line.skip()
            start = line.pos
            key = line.match(STRING)
            key = json.loads(key) if key is not None else line.word("an attribute name")
            if key in attrs:
                raise line.error(f"attribute {key!r} given twice", start)
            line.expect("=")
            attrs[key] = line.value(allow_list=key == "value")
            if not line.accept(",") and not line.text.startswith("}", line.pos):
                raise line.expected("',' or '}'")
        return attrs

    def loc(self, line: LineCursor) -> SourceLoc:
        line.expect("(")
        file = line.string("the file name as a quoted string")
        line.expect(":")
        number = line.integer("a line number")
        func = line.string("the function name as a quoted string") if line.accept("in") else ""
        line.expect(")")
        return SourceLoc(file, number, func)

    def bind(self, node: Node, inline: Any) -> None:
        assert self.graph is not None
        if inline is not None:
            bind_value(self.graph, node, _array_of(inline, node.type), copy=False)
        elif node.name in self.values:
            if node.op not in ("variable", "constant"):
                raise SerializationError(f"a value is given for %{node.name}, a {node.op}")
            bind_value(self.graph, node, self.values[node.name], copy=True)
        elif node.op == "variable":
            bind_value(self.graph, node, np.zeros(node.shape, node.dtype.np), copy=False)
        elif node.op == "constant":
            raise SerializationError(
                f"constant %{node.name} ({node.type}) has no value: constants with more than "
                f"{INLINE_LIMIT} elements take theirs from values={{{node.name!r}: array}}")


def _array_of(value: Any, ttype: TensorType) -> np.ndarray:
    """A constant's inline value as an array of `ttype`, checking nesting and element kinds."""
    flat: list[Any] = []
    shape = _nested_shape(value, flat)
    if shape != ttype.shape and not (ttype.size == 0 and len(flat) == 0):
        raise SerializationError(f"the value has shape {shape}, the type is {ttype}")
    kind = ttype.dtype
    for x in flat:
        ok = (isinstance(x, bool) if kind == DType.bool else
              isinstance(x, int) and not isinstance(x, bool) if kind.is_int else
              isinstance(x, (int, float)) and not isinstance(x, bool))
        if not ok:
            raise SerializationError(f"value element {format_value(x)} is not a {kind.value}")
    try:
        return np.array(flat, dtype=kind.np).reshape(ttype.shape)
    except (OverflowError, ValueError) as exc:
        raise SerializationError(f"value does not fit {ttype}: {exc}") from None


def _nested_shape(value: Any, flat: list[Any]) -> tuple[int, ...]:
    if not isinstance(value, list):
        if isinstance(value, (tuple, str, DType)) or value is None:
            raise SerializationError(f"value element {format_value(value)} is not a number")
        flat.append(value)
        return ()
    shapes = {_nested_shape(v, flat) for v in value}
    if len(shapes) > 1:
        raise SerializationError("the value is ragged (rows of different lengths)")
    return (len(value), *(shapes.pop() if shapes else ()))


def parse_graph(text: str, values: Mapping[str, np.ndarray] | None = None) -> Graph:
    """Read text IR into a new graph (see the module docstring for the syntax).

    `values` maps variable and constant names to arrays of their nodes' exact types (they are
    copied). Variables without one get zeros; a constant without an inline value or one
    raises. Errors are `SerializationError`s naming the line and column.
    """
    return _Parser(values or {}).parse(text)
