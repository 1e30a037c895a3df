"""`to_dot(graph)`: the Graphviz DOT text of a graph (always available; rendering it to SVG or
PNG needs the `dot` program, see ``graphc viz``).

Each node is labelled with its name, op and type (shape and dtype). Sources are drawn
distinctly: placeholders as blue input houses, variables as orange 3-D boxes, constants as
grey notes; other ops are white rounded boxes. Outputs of the graph's signatures get a thick
red double border. When an op has several inputs, each edge is labelled with its input
index. A variable update is a dashed edge from the new value back to the variable.
(The styles live in `dotlib.py`, shared with the picture of fused kernels, `fused.py`.)
"""

from __future__ import annotations

from graphc.ir import Graph
from graphc.viz.dotlib import header, node_line, node_style, quote, update_edge

__all__ = ["to_dot"]


def to_dot(graph: Graph) -> str:
    """The DOT text of `graph`: one vertex per node, one edge per input use."""
    outputs = {n.name for sig in graph.signatures.values() for n in sig.outputs}
    lines = header(graph.name)
    for node in graph.nodes:
        lines.append(node_line(node, node_style(node, output=node.name in outputs)))
    for node in graph.nodes:
        several = len(node.inputs) > 1
        for i, inp in enumerate(node.inputs):
            label = f" [label={quote(str(i))}]" if several else ""
            lines.append(f"  {quote(inp.name)} -> {quote(node.name)}{label};")
    for sig in graph.signatures.values():
        for var, new in sig.updates:
            lines.append(update_edge(new, var, f"update {sig.name}"))
    lines.append("}")
    return "\n".join(lines) + "\n"
