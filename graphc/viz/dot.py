"""`to_dot(graph)`: the Graphviz DOT text of a graph (always available; rendering it to SVG or
PNG needs the `dot` program, see ``graphc viz``).

Each node is labelled with its name, op and type (shape and dtype). Sources are drawn
distinctly: placeholders as blue input houses, variables as orange 3-D boxes, constants as
grey notes; other ops are white rounded boxes. Outputs of the graph's signatures get a thick
red double border. When an op has several inputs, each edge is labelled with its input
index. A variable update is a dashed edge from the new value back to the variable.
"""

from __future__ import annotations

from graphc.ir import Graph, Node

__all__ = ["to_dot"]

_SOURCE_STYLE = {
    "placeholder": {"shape": "invhouse", "style": "filled", "fillcolor": "#cfe2ff",
                    "color": "#3d6fb6"},
    "variable": {"shape": "box3d", "style": "filled", "fillcolor": "#ffe0b2",
                 "color": "#c46a00"},
    "constant": {"shape": "note", "style": "filled", "fillcolor": "#eeeeee", "color": "#777777"},
}
_OP_STYLE = {"shape": "box", "style": "rounded,filled", "fillcolor": "#ffffff",
             "color": "#444444"}
_OUTPUT_STYLE = {"peripheries": "2", "penwidth": "2", "color": "#c62828"}


def to_dot(graph: Graph) -> str:
    """The DOT text of `graph`: one vertex per node, one edge per input use."""
    outputs = {n.name for sig in graph.signatures.values() for n in sig.outputs}
    lines = [
        f"digraph {_quote(graph.name)} {{",
        "  rankdir=TB;",
        '  node [fontname="Helvetica", fontsize=10];',
        '  edge [fontname="Helvetica", fontsize=8, color="#555555"];',
    ]
    for node in graph.nodes:
        style = {"label": _label(node), **_SOURCE_STYLE.get(node.op, _OP_STYLE)}
        if node.name in outputs:
            style.update(_OUTPUT_STYLE)
        lines.append(f"  {_quote(node.name)} [{_attrs(style)}];")
    for node in graph.nodes:
        several = len(node.inputs) > 1
        for i, inp in enumerate(node.inputs):
            label = f" [label={_quote(str(i))}]" if several else ""
            lines.append(f"  {_quote(inp.name)} -> {_quote(node.name)}{label};")
    for sig in graph.signatures.values():
        for var, new in sig.updates:
            style = {"style": "dashed", "color": "#c46a00", "label": f"update {sig.name}",
                     "constraint": "false"}
            lines.append(f"  {_quote(new.name)} -> {_quote(var.name)} [{_attrs(style)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _attrs(attrs: dict[str, str]) -> str:
    return ", ".join(f"{k}={_quote(v)}" for k, v in attrs.items())


def _label(node: Node) -> str:
    return f"%{node.name}\n{node.op}\n{node.type}"


def _quote(text: str) -> str:
    """A DOT double-quoted string; newlines become DOT's centred line breaks."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\r", "").replace("\n", "\\n") + '"'
