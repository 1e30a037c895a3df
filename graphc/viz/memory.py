"""A picture of a memory plan: arena buffers as rectangles, kernel index vs byte offset.

`plan_to_svg(plan)` writes SVG directly (no Graphviz needed); `plan_to_dot(plan)` gives a
DOT rendering of the same rectangles for users who want to post-process it with Graphviz.
Each slot of the arena is a rectangle spanning its live interval (x, in kernel steps) and
its byte range (y); slots shared by an in-place chain show every buffer name. A dashed line
marks the lower bound (the most bytes live at once).
"""

from __future__ import annotations

import html

from graphc.passes.memory_plan import MemoryPlan

_COLORS = ("#8ecae6", "#ffb703", "#90be6d", "#f28482", "#b5838d", "#84a59d", "#cdb4db",
           "#f6bd60", "#a3c4f3", "#bde0fe")


def plan_to_svg(plan: MemoryPlan, width: int = 900, height: int = 480) -> str:
    kernels = plan.program.kernels
    steps = max(len(kernels) + 1, 1)
    arena = max(plan.arena_bytes, 1)
    left, top, right, bottom = 70, 40, 20, 50
    w, h = width - left - right, height - top - bottom

    def x(step: float) -> float:
        return left + (step + 1) / (steps + 1) * w

    def y(offset: float) -> float:
        return top + h - offset / arena * h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="20" font-size="14">memory plan of '
        f'{html.escape(plan.program.graph.name)}: arena {plan.arena_bytes} B, lower bound '
        f'{plan.lower_bound} B, naive {plan.naive_bytes} B</text>',
        f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}" stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + h}" stroke="black"/>',
        f'<text x="{left + w / 2}" y="{height - 12}" text-anchor="middle">kernel (time)</text>',
        f'<text x="14" y="{top + h / 2}" transform="rotate(-90 14 {top + h / 2})" '
        f'text-anchor="middle">arena offset (bytes)</text>',
    ]
    for i, slot in enumerate(sorted(plan.slots, key=lambda s: s.offset)):
        x0, x1 = x(slot.start - 0.45), x(slot.end + 0.45)
        y0, y1 = y(slot.offset + slot.nbytes), y(slot.offset)
        names = ", ".join("%" + n.name for n in slot.nodes) or "(update temporary)"
        title = html.escape(f"{names}: bytes [{slot.offset}, {slot.offset + slot.nbytes}), "
                            f"live {slot.start}..{slot.end}")
        parts.append(f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{max(x1 - x0, 1):.1f}" '
                     f'height="{max(y1 - y0, 1):.1f}" fill="{_COLORS[i % len(_COLORS)]}" '
                     f'stroke="#333" stroke-width="0.5"><title>{title}</title></rect>')
        if y1 - y0 > 12 and x1 - x0 > 40:
            parts.append(f'<text x="{x0 + 3:.1f}" y="{y0 + 11:.1f}">'
                         f'{html.escape(names[:int((x1 - x0) / 6)])}</text>')
    lb = y(plan.lower_bound)
    parts.append(f'<line x1="{left}" y1="{lb:.1f}" x2="{left + w}" y2="{lb:.1f}" '
                 f'stroke="red" stroke-dasharray="4 3"/>')
    parts.append(f'<text x="{left + w - 4}" y="{lb - 3:.1f}" text-anchor="end" fill="red">'
                 f'lower bound</text>')
    for k in kernels:
        parts.append(f'<text x="{x(k.index):.1f}" y="{top + h + 14}" text-anchor="middle">'
                     f'{k.index}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def plan_to_dot(plan: MemoryPlan, width_in: float = 12.0, height_in: float = 6.0) -> str:
    """The slots as fixed-size boxes at fixed positions (Graphviz: ``neato -n``).

    x is kernel time, y is the arena offset; a box spans its live interval and byte range,
    like `plan_to_svg`.
    """
    steps = max(len(plan.program.kernels) + 1, 1)
    arena = max(plan.arena_bytes, 1)
    step_pt = width_in * 72 / (steps + 1)
    lines = [
        "digraph memory_plan {",
        f'  graph [label="memory plan of {plan.program.graph.name}: arena {plan.arena_bytes} B,'
        f' lower bound {plan.lower_bound} B, naive {plan.naive_bytes} B", labelloc=t];',
        "  node [shape=box, style=filled, fixedsize=true, fontsize=8, margin=0];",
    ]
    for i, slot in enumerate(plan.slots):
        names = ", ".join("%" + n.name for n in slot.nodes) or "(update temporary)"
        label = f"{names}\\n[{slot.offset}, {slot.offset + slot.nbytes})"
        start = max(slot.start, -1) + 1
        x = (start + (slot.end + 1)) / 2 * step_pt + step_pt / 2
        w = (slot.end + 1 - start + 1) * step_pt * 0.96
        y = (slot.offset + slot.nbytes / 2) / arena * height_in * 72
        h = max(slot.nbytes / arena * height_in * 72 * 0.96, 6)
        lines.append(f'  s{i} [label="{label}", pos="{x:.1f},{y:.1f}", width={w / 72:.3f}, '
                     f'height={h / 72:.3f}, fillcolor="{_COLORS[i % len(_COLORS)]}", '
                     f'tooltip="live {slot.start}..{slot.end}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"
