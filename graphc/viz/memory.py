"""A picture of a memory plan: arena buffers as rectangles, schedule step vs byte offset.

`plan_to_svg(plan)` writes SVG directly (no Graphviz needed); `plan_to_dot(plan)` gives a
DOT rendering of the same rectangles for users who want to post-process it with Graphviz.
Each slot of the arena is a rectangle spanning its live interval (x, in kernel steps) and
its byte range (y); slots shared by an in-place chain show every buffer name. A dashed line
marks the lower bound (the most bytes live at once).

The SVG has labelled axes: x is the schedule step (kernel index), ticked every 1, 2, 5, 10,
20, ... kernels so that tick labels stay apart however many kernels there are; y is the
arena offset, ticked every power-of-two number of bytes and labelled in B, KiB, MiB or GiB.
A slot's label (its buffer names, then its size on a second line when there is room) is
drawn only inside its rectangle: text widths are estimated from the character count and the
font size (`text_width`), a name list that does not fit is cut with an ellipsis, and a
rectangle too small for three characters gets no label. Every rectangle keeps its full text
as a `<title>` tooltip. Elements carry classes (``slot``, ``slot-label``, ``x-tick``,
``y-tick``, ``axis-label``) for tests and style sheets.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable

from graphc.passes.memory_plan import MemoryPlan, Slot
from graphc.viz.dotlib import quote

__all__ = [
    "ASCENT",
    "CHAR_WIDTH",
    "DESCENT",
    "LABEL_FONT_SIZE",
    "LABEL_FONT_SIZES",
    "LABEL_PAD",
    "format_bytes",
    "human_bytes",
    "plan_to_dot",
    "plan_to_svg",
    "text_box",
    "text_width",
]

_COLORS = ("#8ecae6", "#ffb703", "#90be6d", "#f28482", "#b5838d", "#84a59d", "#cdb4db",
           "#f6bd60", "#a3c4f3", "#bde0fe")

# Text metrics, in units of the font size: a conservative average advance of a sans-serif
# character, and the extent of a line above and below its baseline.
CHAR_WIDTH = 0.62
ASCENT = 0.95
DESCENT = 0.25
LABEL_FONT_SIZE = 10  # slot labels; smaller rectangles try the next size
LABEL_FONT_SIZES = (LABEL_FONT_SIZE, 8)
TICK_FONT_SIZE = 10
LABEL_PAD = 2.0  # space between a rectangle's border and its label
MIN_LABEL_CHARS = 3  # a cut label keeps at least this many characters before the ellipsis
ELLIPSIS = "…"

_UNITS = (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))
_X_STEPS = (1, 2, 5)  # times a power of ten kernels between x ticks
_MIN_Y_TICK_GAP = 28.0  # pixels between y ticks, at least


def text_width(text: str, font_size: float = LABEL_FONT_SIZE) -> float:
    """The estimated width in pixels of `text` drawn at `font_size`."""
    return len(text) * font_size * CHAR_WIDTH


def text_box(x: float, y: float, text: str,
             font_size: float = LABEL_FONT_SIZE) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of `text` drawn from `x` with its baseline at `y`
    (``text-anchor="start"``), with the estimates `plan_to_svg` lays labels out with."""
    return (x, y - ASCENT * font_size, x + text_width(text, font_size),
            y + DESCENT * font_size)


def format_bytes(n: int) -> str:
    """`n` bytes in the largest unit that shows it exactly with at most two decimals:
    ``0 B``, ``640 B``, ``1.5 KiB``, ``1056 B``, ``2 MiB``."""
    for name, unit in _UNITS:
        if n >= unit and (n * 100) % unit == 0:
            return f"{n / unit:g} {name}"
    return f"{n} B"


def human_bytes(n: int) -> str:
    """`n` bytes to three significant digits: ``640 B``, ``18.4 KiB``, ``2 MiB``."""
    for name, unit in _UNITS:
        if n >= unit:
            return f"{n / unit:.3g} {name}"
    return f"{n} B"


def _approx_bytes(n: int) -> str:
    """``4928 B (4.81 KiB)``: exact, and approximate in a larger unit when there is one."""
    return f"{n} B" if n < 1024 else f"{n} B ({human_bytes(n)})"


def _fit(text: str, room: float, font_size: float) -> str | None:
    """`text`, or its start and an ellipsis, whichever fits in `room` pixels (None: neither)."""
    if text_width(text, font_size) <= room:
        return text
    keep = math.floor(room / (font_size * CHAR_WIDTH)) - 1
    return text[:keep] + ELLIPSIS if keep >= MIN_LABEL_CHARS else None


def _x_tick_step(kernels: int, px_per_step: float) -> int:
    """The smallest 1, 2, 5 x 10^k kernels between ticks that keeps tick labels apart."""
    widest = text_width(str(max(kernels - 1, 0)), TICK_FONT_SIZE)
    need = max(widest + 10.0, 24.0) / max(px_per_step, 1e-9)
    scale = 1
    while True:
        for m in _X_STEPS:
            if m * scale >= need:
                return m * scale
        scale *= 10


def _y_tick_step(arena: int, px_per_byte: float) -> int:
    """The smallest power of two of bytes between ticks that keeps them `_MIN_Y_TICK_GAP`
    pixels apart."""
    step = 1
    while step * px_per_byte < _MIN_Y_TICK_GAP and step < arena:
        step *= 2
    return step


def _slot_names(slot: Slot) -> str:
    return ", ".join("%" + n.name for n in slot.nodes) or "(update temporary)"


def plan_to_svg(plan: MemoryPlan, width: int = 900, height: int = 480) -> str:
    """The plan as an SVG picture (see the module docstring)."""
    kernels = len(plan.program.kernels)
    arena = max(plan.arena_bytes, 1)
    # Steps shown: every kernel, and the moments before the first and after the last when a
    # slot lives there (copies in and out of the arena).
    lo = min([0, *(s.start for s in plan.slots)])
    hi = max([kernels - 1, 0, *(s.end for s in plan.slots)])
    top, right, bottom = 52.0, 80.0, 50.0
    h = height - top - bottom
    y_step = _y_tick_step(arena, h / arena)
    y_ticks = list(range(0, arena + 1, y_step))
    y_labels = [format_bytes(v) for v in y_ticks]
    left = 34 + max(text_width(t, TICK_FONT_SIZE) for t in y_labels)  # room for the labels
    w = width - left - right
    px_per_step = w / (hi - lo + 1)

    def x(step: float) -> float:
        return left + (step - lo + 0.5) * px_per_step

    def y(offset: float) -> float:
        return top + h - offset / arena * h

    title = (f"memory plan of {plan.program.graph.name} ({kernels} kernels, "
             f"{len(plan.slots)} slots)")
    sizes = (f"arena {_approx_bytes(plan.arena_bytes)}, lower bound "
             f"{_approx_bytes(plan.lower_bound)}, naive {_approx_bytes(plan.naive_bytes)}")
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f"<title>{html.escape(f'{title}: {sizes}')}</title>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>',
        f'<text class="title" x="{left:.1f}" y="18" font-size="13">{html.escape(title)}</text>',
        f'<text class="title" x="{left:.1f}" y="36" font-size="11">{html.escape(sizes)}</text>',
    ]
    # y axis: grid lines, ticks and labels in human units.
    parts.append('<g class="y-axis">')
    for v, label in zip(y_ticks, y_labels):
        yy = y(v)
        parts.append(f'<line x1="{left:.1f}" y1="{yy:.1f}" x2="{left + w:.1f}" y2="{yy:.1f}" '
                     f'stroke="#e6e6e6"/>')
        parts.append(f'<line class="tick" x1="{left - 5:.1f}" y1="{yy:.1f}" x2="{left:.1f}" '
                     f'y2="{yy:.1f}" stroke="black"/>')
        parts.append(f'<text class="y-tick" x="{left - 8:.1f}" y="{yy + 3.5:.1f}" '
                     f'font-size="{TICK_FONT_SIZE}" text-anchor="end">{label}</text>')
    parts.append("</g>")
    # x axis: a tick every few kernels, so that the labels never touch.
    parts.append('<g class="x-axis">')
    x_step = _x_tick_step(kernels, px_per_step)
    for k in range(0, max(kernels, 1), x_step):
        xx = x(k)
        parts.append(f'<line class="tick" x1="{xx:.1f}" y1="{top + h:.1f}" x2="{xx:.1f}" '
                     f'y2="{top + h + 5:.1f}" stroke="black"/>')
        parts.append(f'<text class="x-tick" x="{xx:.1f}" y="{top + h + 17:.1f}" '
                     f'font-size="{TICK_FONT_SIZE}" text-anchor="middle">{k}</text>')
    parts.append("</g>")
    parts += [
        f'<line x1="{left:.1f}" y1="{top + h:.1f}" x2="{left + w:.1f}" y2="{top + h:.1f}" '
        f'stroke="black"/>',
        f'<line x1="{left:.1f}" y1="{top:.1f}" x2="{left:.1f}" y2="{top + h:.1f}" '
        f'stroke="black"/>',
        f'<text class="axis-label" id="x-axis-label" x="{left + w / 2:.1f}" '
        f'y="{height - 10}" text-anchor="middle">schedule step (kernel index)</text>',
        f'<text class="axis-label" id="y-axis-label" x="14" y="{top + h / 2:.1f}" '
        f'transform="rotate(-90 14 {top + h / 2:.1f})" text-anchor="middle">'
        f"arena offset</text>",
    ]
    for i, slot in enumerate(sorted(plan.slots, key=lambda s: (s.offset, s.start))):
        parts.extend(_slot(slot, _COLORS[i % len(_COLORS)], x, y))
    lb = y(plan.lower_bound)
    parts.append(f'<line class="lower-bound" x1="{left:.1f}" y1="{lb:.1f}" x2="{left + w:.1f}" '
                 f'y2="{lb:.1f}" stroke="red" stroke-dasharray="4 3"/>')
    parts.append(f'<text x="{left + w + 4:.1f}" y="{lb + 3.5:.1f}" font-size="10" fill="red">'
                 f"lower bound</text>")
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _slot(slot: Slot, color: str, x: Callable[[float], float],
          y: Callable[[float], float]) -> list[str]:
    """The rectangle of `slot`, its tooltip, and its label where the label fits."""
    x0, x1 = x(slot.start - 0.45), x(slot.end + 0.45)
    y0, y1 = y(slot.offset + slot.nbytes), y(slot.offset)
    rw, rh = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    names = _slot_names(slot)
    size = human_bytes(slot.nbytes)
    tip = (f"{names}: {_approx_bytes(slot.nbytes)} at arena bytes [{slot.offset}, "
           f"{slot.offset + slot.nbytes}), live from step {slot.start} to {slot.end}")
    out = [
        '<g class="slot">',
        f"<title>{html.escape(tip)}</title>",
        f'<rect x="{x0:.2f}" y="{y0:.2f}" width="{rw:.2f}" height="{rh:.2f}" fill="{color}" '
        f'stroke="#333" stroke-width="0.5"/>',
    ]
    # The largest font that shows the names whole, else the largest that shows their start.
    fs, lines = LABEL_FONT_SIZE, []
    for cut, fs in ((c, f) for c in (False, True) for f in LABEL_FONT_SIZES):
        lines = _label_lines(names, size, rw - 2 * LABEL_PAD, rh - 2 * LABEL_PAD, fs, cut=cut)
        if lines:
            break
    line = (ASCENT + DESCENT) * fs
    for j, text in enumerate(lines):  # baselines: one line below the other, from the top
        tx, ty = x0 + LABEL_PAD, y0 + LABEL_PAD + ASCENT * fs + j * line
        out.append(f'<text class="slot-label" x="{tx:.2f}" y="{ty:.2f}" font-size="{fs}">'
                   f"{html.escape(text)}</text>")
    out.append("</g>")
    return out


def _label_lines(names: str, size: str, room_w: float, room_h: float, fs: float, *,
                 cut: bool) -> list[str]:
    """The lines of a slot's label that fit in `room_w` x `room_h` pixels at font size `fs`:
    the names (cut with an ellipsis if `cut` and need be), then the size when a second line
    fits whole; or none."""
    line = (ASCENT + DESCENT) * fs
    if room_h < line:
        return []
    first = _fit(names, room_w, fs) if cut else names
    if first is None or text_width(first, fs) > room_w:
        return []
    if room_h >= 2 * line and text_width(size, fs) <= room_w:
        return [first, size]
    return [first]


def plan_to_dot(plan: MemoryPlan, width_in: float = 12.0, height_in: float = 6.0) -> str:
    """The slots as fixed-size boxes at fixed positions (Graphviz: ``neato -n``).

    x is kernel time, y is the arena offset; a box spans its live interval and byte range,
    like `plan_to_svg`.
    """
    steps = max(len(plan.program.kernels) + 1, 1)
    arena = max(plan.arena_bytes, 1)
    step_pt = width_in * 72 / (steps + 1)
    title = (f"memory plan of {plan.program.graph.name}: arena {plan.arena_bytes} B, "
             f"lower bound {plan.lower_bound} B, naive {plan.naive_bytes} B")
    lines = [
        "digraph memory_plan {",
        f"  graph [label={quote(title)}, labelloc=t];",
        "  node [shape=box, style=filled, fixedsize=true, fontsize=8, margin=0];",
    ]
    for i, slot in enumerate(plan.slots):
        label = f"{_slot_names(slot)}\n[{slot.offset}, {slot.offset + slot.nbytes})"
        start = max(slot.start, -1) + 1
        x = (start + (slot.end + 1)) / 2 * step_pt + step_pt / 2
        w = (slot.end + 1 - start + 1) * step_pt * 0.96
        y = (slot.offset + slot.nbytes / 2) / arena * height_in * 72
        h = max(slot.nbytes / arena * height_in * 72 * 0.96, 6)
        lines.append(f"  s{i} [label={quote(label)}, pos=\"{x:.1f},{y:.1f}\", "
                     f"width={w / 72:.3f}, height={h / 72:.3f}, "
                     f"fillcolor=\"{_COLORS[i % len(_COLORS)]}\", "
                     f"tooltip=\"live {slot.start}..{slot.end}\"];")
    lines.append("}")
    return "\n".join(lines) + "\n"
