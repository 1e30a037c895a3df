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
given to `parse_graph` (a constant of a body under the key ``node@i@name``, where `node`
owns the body as its region `i`; see `rebuild.body_prefix`). ``#`` starts a comment.

A region op's line ends with ``{``; each of its bodies follows as a line
``region "name" (%params) -> (%results)`` and the body's nodes (names are scoped to the
body, which is closed: it reads only its own nodes), and a line ``}`` ends them. Indentation
is for the reader only::

    %scan = scan(%w, %h0, %xs) {length=5, num_carry=1, num_consts=1, reverse=false,
                                unroll=1} : (f32[3], f32[5,3]) {     # (one line)
      region "scan_body" (%w, %h, %x) -> (%h2, %h2)
        %w = placeholder : f32[3,3]
        ...
        %h2 = tanh(%a) : f32[3]
    }
    %h_T = get(%scan) {index=0} : f32[3]

Parsing never evaluates code: it is a small hand-written recursive-descent parser. Each node
goes through its op's type rule, which must reproduce the printed type. Every error is a
`SerializationError` naming the line and column, what was expected and what was found, with
the line underlined by a caret.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphc.errors import GraphcError, SerializationError, SourceLoc
from graphc.io.rebuild import (
    NodeError,
    add_checked_node,
    bind_value,
    body_prefix,
    graph_diff,
    graphs_equal,
    value_items,
)
from graphc.io.textcursor import IDENT, STRING, LineCursor
from graphc.ir import DType, Graph, Node, Region, TensorType, TupleType
from graphc.verify import MAX_REGION_DEPTH

__all__ = ["INLINE_LIMIT", "format_graph", "graph_diff", "graphs_equal", "parse_graph"]

INLINE_LIMIT = 16


# --- printing ---------------------------------------------------------------------------------

def format_graph(graph: Graph, locations: bool = True) -> str:
    """The text IR of `graph`: a header, its signatures, then one line per node in order
    (without source locations if `locations` is False: what the program cache keys on,
    since where a node was built does not change its code)."""
    lines = [f"graph {_quote(graph.name)}"]
    for sig in graph.signatures.values():
        line = (f"signature {_quote(sig.name)} ({_names(sig.inputs)}) -> "
                f"({_names(sig.outputs)})")
        if sig.updates:
            pairs = ", ".join(f"%{var.name} <- %{new.name}" for var, new in sig.updates)
            line += f" updates ({pairs})"
        lines.append(line)
    _format_nodes(graph, lines, "", locations)
    return "\n".join(lines) + "\n"


def _format_nodes(graph: Graph, lines: list[str], indent: str, locations: bool = True
                  ) -> None:
    """One line per node; a region op's line ends with ``{``, its bodies follow, each
    after a ``region "name" (%params) -> (%results)`` line, and ``}`` closes them."""
    for node in graph.nodes:
        if not node.regions:
            lines.append(indent + format_node(node, locations))
            continue
        lines.append(f"{indent}{format_node(node, locations)} {{")
        for region in node.regions:
            lines.append(f"{indent}  region {_quote(region.graph.name)} "
                         f"({_names(region.params)}) -> ({_names(region.results)})")
            _format_nodes(region.graph, lines, indent + "    ", locations)
        lines.append(indent + "}")


def format_node(node: Node, locations: bool = True) -> str:
    """One node's line (a constant's value inline if it has at most `INLINE_LIMIT` elements;
    its source location unless `locations` is False)."""
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
    if node.loc is not None and locations:
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

@dataclass
class _Body:
    """A body being read: its graph and its header line's params and results."""

    graph: Graph
    line: LineCursor
    params: list[tuple[str, int]]
    results: list[tuple[str, int]]


@dataclass
class _Owner:
    """A region op whose line has been read and whose bodies are being read; its node is
    added when ``}`` closes them (its type rule needs them)."""

    line: LineCursor
    pos: dict[str, int]
    graph: Graph  # the graph the node goes into
    prefix: str  # the value-key prefix of that graph
    op: str
    inputs: list[Node]
    attrs: dict[str, Any]
    ttype: TensorType | TupleType
    name: str
    loc: SourceLoc | None
    bodies: list[_Body] = field(default_factory=list)


class _Parser:
    """Reads lines into a graph; signatures are resolved once every node is known, a
    body's params and results once its last line is read."""

    def __init__(self, values: Mapping[str, np.ndarray]):
        self.values = values
        self.graph: Graph | None = None
        self.signatures: list[tuple[LineCursor, str, list[Any], list[Any], list[Any]]] = []
        self.owners: list[_Owner] = []

    def parse(self, text: str) -> Graph:
        # Split on "\n" only: str.splitlines() would also split inside strings at U+2028 etc.
        for number, raw in enumerate(text.split("\n"), start=1):
            line = LineCursor(raw.rstrip("\r"), number)
            if line.at_end():
                continue
            if self.graph is None:
                self.header(line)
            elif line.accept("signature"):
                if self.owners:
                    raise line.error("a signature inside a body (bodies have none)", 0)
                self.signature(line)
            elif line.accept("region"):
                self.region(line)
            elif line.accept("}"):
                self.close(line)
            else:
                self.node(line)
            if not line.at_end():
                raise line.expected("end of line")
        if self.graph is None:
            raise SerializationError('empty text IR: expected a header line `graph "name"`')
        if self.owners:
            owner = self.owners[-1]
            raise owner.line.error(f"the bodies of %{owner.name} are not closed by '}}'", 0)
        self.resolve_signatures(self.graph)
        unknown = sorted(set(self.values) - {key for key, _ in value_items(self.graph)})
        if unknown:
            raise SerializationError(f"values given for names that are not variables or "
                                     f"constants of the graph: {', '.join(unknown)}")
        return self.graph

    def scope(self, line: LineCursor) -> tuple[Graph, str]:
        """The graph the next node belongs to, and its value-key prefix."""
        if not self.owners:
            assert self.graph is not None
            return self.graph, ""
        owner = self.owners[-1]
        if not owner.bodies:
            raise line.error(f"expected a `region` line starting a body of %{owner.name}", 0)
        return owner.bodies[-1].graph, body_prefix(owner.prefix, owner.name,
                                                   len(owner.bodies) - 1)

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
        graph, prefix = self.scope(line)
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
        ttype = line.value_type()
        loc = self.loc(line) if line.accept("loc") else None
        if line.accept("{"):
            if len(self.owners) >= MAX_REGION_DEPTH:
                raise line.error(f"bodies nest deeper than {MAX_REGION_DEPTH} levels", 0)
            self.owners.append(_Owner(line, pos, graph, prefix, op, inputs, attrs, ttype, name,
                                      loc))
            return
        value = attrs.pop("value", None) if op == "constant" else None
        node = self.add(line, pos, graph, op, inputs, attrs, ttype, name, loc, ())
        try:
            self.bind(graph, prefix + name, node, value)
        except SerializationError as exc:
            raise line.error(exc.message, pos["attrs" if value is not None else "type"]) from None

    def add(self, line: LineCursor, pos: dict[str, int], graph: Graph, op: str,
            inputs: list[Node], attrs: dict[str, Any], ttype: TensorType | TupleType,
            name: str, loc: SourceLoc | None, regions: Sequence[Region]) -> Node:
        try:
            return add_checked_node(graph, op, inputs, attrs, ttype, name, loc, regions)
        except NodeError as exc:
            raise line.error(exc.message, pos[exc.part]) from None

    def region(self, line: LineCursor) -> None:
        if not self.owners:
            raise line.error("a `region` line outside the bodies of a region op", 0)
        owner = self.owners[-1]
        name = line.string("the body's name as a quoted string")
        line.expect("(")
        params = line.names(")")
        line.expect("->")
        line.expect("(")
        results = line.names(")")
        owner.bodies.append(_Body(Graph(name), line, params, results))

    def close(self, line: LineCursor) -> None:
        if not self.owners:
            raise line.error("'}' closes no bodies", 0)
        owner = self.owners.pop()
        regions = []
        for body in owner.bodies:
            def ref(r: tuple[str, int], body: _Body = body) -> Node:
                if r[0] not in body.graph:
                    raise body.line.error(f"%{r[0]} is not a node of body "
                                          f"{body.graph.name!r}", r[1])
                return body.graph[r[0]]
            regions.append(Region(body.graph, tuple(ref(r) for r in body.params),
                                  tuple(ref(r) for r in body.results)))
        self.add(owner.line, owner.pos, owner.graph, owner.op, owner.inputs, owner.attrs,
                 owner.ttype, owner.name, owner.loc, regions)

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

    def bind(self, graph: Graph, key: str, node: Node, inline: Any) -> None:
        if inline is not None:
            bind_value(graph, node, _array_of(inline, node.type), copy=False)  # type: ignore[arg-type]
        elif key in self.values:
            if node.op not in ("variable", "constant"):
                raise SerializationError(f"a value is given for %{node.name}, a {node.op}")
            bind_value(graph, node, self.values[key], copy=True)
        elif node.op == "variable":
            bind_value(graph, node, np.zeros(node.shape, node.dtype.np), copy=False)
        elif node.op == "constant":
            raise SerializationError(
                f"constant %{node.name} ({node.type}) has no value: constants with more than "
                f"{INLINE_LIMIT} elements take theirs from values={{{key!r}: array}}")


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
