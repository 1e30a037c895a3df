"""`fused_to_dot(program)`: the kernels of a fused program as Graphviz DOT clusters.

Layout (``graphc viz MODEL --stage fused``):

- each kernel is a ``subgraph cluster_k<i>`` (filled by kind: elementwise green, reduction
  purple, matmul amber, conv blue, opaque grey, loop pink) labelled with the kernel's name, its kind
  and its anchor; inside it, its nodes (name, op, type), the anchor drawn bold, with plain
  edges between them: the values that never leave registers;
- the sources a kernel reads from memory (placeholders, variables, non-scalar constants) are
  drawn outside every cluster, styled as in `dot.py`; scalar constants are immediates in
  the generated code and are not drawn;
- a reshape is a view of its base's buffer, not a kernel: a small dashed node whose arrow
  points at the base;
- an edge from a node of one kernel to a node of another is a buffer stored by the first and
  read by the second (an unfused edge): it is drawn red and labelled with the reason fusion
  left it (`FusedProgram.unfused`, looked up by (producer, consumer); an edge without an
  entry has no label);
- outputs of the signature get the red double border of `dot.py`; a variable update is a
  dashed edge from the new value back to the variable.
"""

from __future__ import annotations

import textwrap

from graphc.ir import Node
from graphc.passes.kernels import FusedProgram, Kernel, KernelKind
from graphc.viz.dotlib import (
    OUTPUT_STYLE,
    attrs,
    header,
    node_line,
    node_style,
    quote,
    update_edge,
)

__all__ = ["KIND_STYLE", "REASON_WIDTH", "fused_to_dot", "wrap_reason"]

# kernel kind -> the cluster's fill and border colours.
KIND_STYLE: dict[KernelKind, tuple[str, str]] = {
    KernelKind.ELEMENTWISE: ("#e8f5e9", "#2e7d32"),
    KernelKind.REDUCTION: ("#f3e5f5", "#6a1b9a"),
    KernelKind.MATMUL: ("#fff8e1", "#b26a00"),
    KernelKind.CONV: ("#e3f2fd", "#1565c0"),
    KernelKind.OPAQUE: ("#eeeeee", "#555555"),
    KernelKind.MULTI_OUTPUT: ("#e0f2f1", "#00695c"),
    KernelKind.LOOP: ("#fce4ec", "#ad1457"),
}
_UNFUSED_EDGE = {"color": "#b23b3b", "fontcolor": "#b23b3b", "penwidth": "1.4"}
_READ_EDGE = {"color": "#888888"}
_VIEW_NODE = {"shape": "box", "style": "dashed,rounded", "fontsize": "8", "height": "0.25",
              "margin": "0.05,0.02", "color": "#777777"}
_VIEW_EDGE = {"dir": "back", "style": "dashed", "color": "#777777", "arrowtail": "empty"}
REASON_WIDTH = 34  # edge labels are wrapped at this many characters


def fused_to_dot(program: FusedProgram) -> str:
    """The DOT text of `program`: one cluster per kernel (see the module docstring)."""
    sig = program.signature
    outputs = set(sig.outputs)
    reasons = {(u.producer, u.consumer): u.reason for u in program.unfused}
    kernel_of = program.kernel_of

    drawn = {n for k in program.kernels for n in k.nodes} | set(program.views)
    wanted: set[Node] = {i for k in program.kernels for i in k.inputs}
    wanted |= set(program.views.values()) | outputs
    for var, new in sig.updates:
        wanted |= {var, new}
    # What else is drawn: sources (never in a kernel; scalar constants only as outputs).
    sources = [n for n in program.graph.nodes if n in wanted and n not in drawn]
    drawn |= set(sources)

    title = (f"fused {program.graph.name}: {len(program.kernels)} kernels, "
             f"{len(program.unfused)} unfused edges (labelled with the reason)")
    lines = header(program.graph.name,
                   f'  graph [label={quote(title)}, labelloc="t", fontname="Helvetica", '
                   'fontsize=12, newrank="true"];')
    for n in sources:
        lines.append(node_line(n, node_style(n, output=n in outputs)))

    between: list[str] = []  # edges that leave a kernel, drawn after every cluster
    for k in program.kernels:
        lines.extend(_cluster(k, outputs))
        members = set(k.nodes)
        for n in k.nodes:
            for i in n.inputs:
                if i not in drawn:  # an immediate
                    continue
                if i in members:
                    lines.append(f"    {quote(i.name)} -> {quote(n.name)};")
                    continue
                style = dict(_READ_EDGE)
                if i in kernel_of:  # stored by another kernel: an unfused edge
                    style = dict(_UNFUSED_EDGE)
                    reason = reasons.get((i, n))
                    if reason is not None:
                        style["label"] = wrap_reason(reason)
                between.append(f"  {quote(i.name)} -> {quote(n.name)} [{attrs(style)}];")
        lines.append("  }")

    for view, base in program.views.items():
        style = {"label": f"%{view.name}\nview of %{base.name}\n{view.type}", **_VIEW_NODE}
        if view in outputs:
            style.update(OUTPUT_STYLE)
        lines.append(node_line(view, style))
        between.append(f"  {quote(base.name)} -> {quote(view.name)} [{attrs(_VIEW_EDGE)}];")
    lines.extend(between)
    for var, new in sig.updates:
        lines.append(update_edge(new, var))
    lines.append("}")
    return "\n".join(lines) + "\n"


def wrap_reason(reason: str) -> str:
    """`reason` broken into lines of about `REASON_WIDTH` characters, at spaces only."""
    return textwrap.fill(reason, REASON_WIDTH, break_long_words=False, break_on_hyphens=False)


def _cluster(k: Kernel, outputs: set[Node]) -> list[str]:
    """The opening of kernel `k`'s cluster and its nodes (the caller adds edges and `}`)."""
    fill, border = KIND_STYLE[k.kind]
    label = f"{k.name}\n{k.kind.value} kernel"
    if k.anchor is not None:
        label += f", anchor %{k.anchor.name}"
    reads = ", ".join("%" + n.name for n in k.inputs) or "nothing"
    cluster = {"label": label, "style": "rounded,filled", "fillcolor": fill, "color": border,
               "fontcolor": border, "fontsize": "10", "labeljust": "l",
               "tooltip": f"{k.name} reads {reads}"}
    lines = [f"  subgraph {quote(f'cluster_k{k.index}')} {{", f"    graph [{attrs(cluster)}];"]
    for n in k.nodes:
        style = node_style(n, output=n in outputs)
        if n is k.anchor:
            style["style"] += ",bold"
        lines.append(node_line(n, style, indent="    "))
    return lines
