"""`to_dot(graph)`: the Graphviz DOT text of a graph (always available; rendering it to SVG or
PNG needs the `dot` program, see ``graphc viz``).

Each node is labelled with its name, op and type (shape and dtype). Sources are drawn
distinctly: placeholders as blue input houses, variables as orange 3-D boxes, constants as
grey notes; other ops are white rounded boxes. Outputs of the graph's signatures get a thick
red double border. When an op has several inputs, each edge is labelled with its input
index. A variable update is a dashed edge from the new value back to the variable.

A region op's bodies are drawn as clusters (a dashed box labelled with the op, the body's
name and its region index) holding the body's nodes, with dotted edges from the region
node to each body param ("param i") and from each body result back to it ("result j").
Vertices of a body are named by their scoped key (``node@i@name``), so names that a body
shares with its graph never collide.
(The styles live in `dotlib.py`, shared with the picture of fused kernels, `fused.py`.)
"""

from __future__ import annotations

from graphc.io.rebuild import body_prefix
from graphc.ir import Graph, Node
from graphc.viz.dotlib import attrs, header, node_style, quote, update_edge

__all__ = ["to_dot"]


def to_dot(graph: Graph) -> str:
    """The DOT text of `graph`: one vertex per node, one edge per input use."""
    outputs = {n.name for sig in graph.signatures.values() for n in sig.outputs}
    lines = header(graph.name)
    _draw(graph, "", outputs, lines, "  ")
    for sig in graph.signatures.values():
        for var, new in sig.updates:
            lines.append(update_edge(new, var, f"update {sig.name}"))
    lines.append("}")
    return "\n".join(lines) + "\n"


def _draw(graph: Graph, prefix: str, outputs: set[str], lines: list[str], indent: str) -> None:
    """The vertices and edges of `graph`, whose vertex ids start with `prefix`, and the
    clusters of its bodies, recursively."""
    for node in graph.nodes:
        style = node_style(node, output=not prefix and node.name in outputs)
        lines.append(f"{indent}{quote(prefix + node.name)} [{attrs(style)}];")
    for node in graph.nodes:
        several = len(node.inputs) > 1
        for i, inp in enumerate(node.inputs):
            label = f" [label={quote(str(i))}]" if several else ""
            lines.append(f"{indent}{quote(prefix + inp.name)} -> {quote(prefix + node.name)}"
                         f"{label};")
        for index, region in enumerate(node.regions):
            inner = body_prefix(prefix, node, index)
            lines.append(f"{indent}subgraph {quote('cluster_' + inner)} {{")
            lines.append(f"{indent}  {attrs(_BODY_STYLE | {'label': _body_label(node, index)})};")
            _draw(region.graph, inner, outputs, lines, indent + "  ")
            lines.append(f"{indent}}}")
            owner = quote(prefix + node.name)
            for i, param in enumerate(region.params):
                lines.append(f"{indent}{owner} -> {quote(inner + param.name)} "
                             f"[{attrs(_BIND_STYLE | {'label': f'param {i}'})}];")
            for j, result in enumerate(region.results):
                back = _BIND_STYLE | {"label": f"result {j}", "constraint": "false"}
                lines.append(f"{indent}{quote(inner + result.name)} -> {owner} "
                             f"[{attrs(back)}];")


_BODY_STYLE = {"style": "dashed,rounded", "color": "#6a1b9a", "fontname": "Helvetica",
               "fontsize": "10"}
_BIND_STYLE = {"style": "dotted", "color": "#6a1b9a", "fontsize": "8"}


def _body_label(node: Node, index: int) -> str:
    region = node.regions[index]
    return f"{node.op} %{node.name}, region {index}: {region.graph.name}"
