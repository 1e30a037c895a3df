"""DOT text helpers shared by the pictures of graphs (`dot.py`) and of fused kernels
(`fused.py`): quoting, attribute lists, the node label and the node styles.

Styles: placeholders are blue input houses, variables orange 3-D boxes, constants grey
notes, other ops white rounded boxes; outputs of a signature get a thick red double border;
a variable update is a dashed orange edge from the new value back to the variable.
"""

from __future__ import annotations

from graphc.ir import Node

__all__ = [
    "OP_STYLE",
    "OUTPUT_STYLE",
    "SOURCE_STYLE",
    "attrs",
    "header",
    "node_label",
    "node_line",
    "node_style",
    "quote",
    "update_edge",
]

SOURCE_STYLE: dict[str, dict[str, str]] = {
    "placeholder": {"shape": "invhouse", "style": "filled", "fillcolor": "#cfe2ff",
                    "color": "#3d6fb6"},
    "variable": {"shape": "box3d", "style": "filled", "fillcolor": "#ffe0b2",
                 "color": "#c46a00"},
    "constant": {"shape": "note", "style": "filled", "fillcolor": "#eeeeee", "color": "#777777"},
}
OP_STYLE: dict[str, str] = {"shape": "box", "style": "rounded,filled", "fillcolor": "#ffffff",
                            "color": "#444444"}
OUTPUT_STYLE: dict[str, str] = {"peripheries": "2", "penwidth": "2", "color": "#c62828"}


def quote(text: str) -> str:
    """A DOT double-quoted string; newlines become DOT's centred line breaks."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\r", "").replace("\n", "\\n") + '"'


def attrs(values: dict[str, str]) -> str:
    """``k1="v1", k2="v2"``: the inside of a DOT attribute list, every value quoted."""
    return ", ".join(f"{k}={quote(v)}" for k, v in values.items())


def node_label(node: Node) -> str:
    """Name, op and type, one per line."""
    return f"%{node.name}\n{node.op}\n{node.type}"


def node_style(node: Node, *, output: bool) -> dict[str, str]:
    """The label and drawing attributes of `node` (a source's style, or an op's)."""
    style = {"label": node_label(node), **SOURCE_STYLE.get(node.op, OP_STYLE)}
    if output:
        style.update(OUTPUT_STYLE)
    return style


def node_line(node: Node, style: dict[str, str], indent: str = "  ") -> str:
    return f"{indent}{quote(node.name)} [{attrs(style)}];"


def header(name: str, *extra: str) -> list[str]:
    """The opening lines of a digraph: its name, top-down layout, fonts, then `extra`."""
    return [
        f"digraph {quote(name)} {{",
        "  rankdir=TB;",
        '  node [fontname="Helvetica", fontsize=10];',
        '  edge [fontname="Helvetica", fontsize=8, color="#555555"];',
        *extra,
    ]


def update_edge(new: Node, var: Node, label: str = "update") -> str:
    """The dashed edge from an update's new value back to its variable."""
    style = {"style": "dashed", "color": "#c46a00", "label": label, "constraint": "false"}
    return f"  {quote(new.name)} -> {quote(var.name)} [{attrs(style)}];"
