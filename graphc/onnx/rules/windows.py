"""Sliding windows beyond graphc's 1-D/2-D kernels, written as compositions.

- Pooling of any rank, with dilation or `ceil_mode`: the window's k1*k2*... strided slices of
  the padded input, combined with `maximum` or added and divided by a divisor computed at
  import (so `count_include_pad` and the clipped windows of `ceil_mode` are exact).
- 3-D convolution: the sum over kernel depth of 2-D convolutions of depth slices (each
  output depth becomes a batch row of the 2-D convolution), so it reuses graphc's tuned 2-D
  kernels and their gradients.
- LpPool: the p-th root of a sum pool of |x|^p.
- LRN: the squared input summed over a channel window by shifted slices.

The rules in `nn.py` take graphc's native pooling and convolution whenever they apply and
come here otherwise; every composition here is differentiable.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphc import builder as gb
from graphc.ir import Node
from graphc.onnx.convert import Context, Value, rule
from graphc.ops import conv, layout, slicing
from graphc.ops import elementwise as ew

Inputs = list[Value | None]


@dataclass(frozen=True)
class Window:
    """One window geometry over the spatial axes (all lists have one entry per axis)."""

    kernel: list[int]
    strides: list[int]
    dilations: list[int]
    begin: list[int]  # padding before
    end: list[int]  # padding after

    def span(self, i: int) -> int:
        return (self.kernel[i] - 1) * self.dilations[i] + 1


def window(ctx: Context, attrs: dict[str, Any], spatial: Sequence[int],
           kernel: Sequence[int]) -> Window:
    """The window of a Conv/Pool node's attributes over input sizes `spatial` (auto_pad
    resolved as ONNX defines it)."""
    d = len(spatial)
    strides = [int(s) for s in attrs.get("strides", [1] * d)]
    dilations = [int(v) for v in attrs.get("dilations", [1] * d)]
    if len(strides) != d or len(dilations) != d or len(kernel) != d:
        raise ctx.error(f"kernel {list(kernel)}, strides {strides} or dilations {dilations} "
                        f"do not have one entry per spatial axis ({d})")
    if any(v <= 0 for v in [*kernel, *strides, *dilations]):
        raise ctx.error(f"kernel {list(kernel)}, strides {strides} and dilations {dilations} "
                        "must be positive")
    auto = str(attrs.get("auto_pad", "NOTSET"))
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for i in range(d):
            out = -(-spatial[i] // strides[i])
            total = max((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1
                        - spatial[i], 0)
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            begin.append(lo)
            end.append(total - lo)
    elif auto == "VALID":
        begin, end = [0] * d, [0] * d
    else:
        pads = [int(p) for p in attrs.get("pads", [0] * (2 * d))]
        if len(pads) != 2 * d:
            raise ctx.error(f"pads {pads} need {2 * d} entries")
        begin, end = pads[:d], pads[d:]
    return Window(list(kernel), strides, dilations, begin, end)


def pooled_sizes(ctx: Context, spatial: Sequence[int], w: Window, ceil_mode: bool
                 ) -> list[int]:
    """Output sizes; with ceil_mode a last window must start inside the input or its
    leading padding (as PyTorch and ONNX Runtime count)."""
    out = []
    for i, size in enumerate(spatial):
        room = size + w.begin[i] + w.end[i] - w.span(i)
        if room < 0:
            raise ctx.error(f"window {w.span(i)} is larger than the padded input "
                            f"{size + w.begin[i] + w.end[i]} on spatial axis {i}")
        o = (-(-room // w.strides[i]) if ceil_mode else room // w.strides[i]) + 1
        if ceil_mode and (o - 1) * w.strides[i] >= size + w.begin[i]:
            o -= 1
        out.append(o)
    return out


def overhang(spatial: Sequence[int], w: Window, out: Sequence[int]) -> list[int]:
    """Per axis, how far the last of `out` windows reaches past the end padding (ceil_mode
    windows read that many filler elements)."""
    return [max((out[i] - 1) * w.strides[i] + w.span(i)
                - (spatial[i] + w.begin[i] + w.end[i]), 0) for i in range(len(spatial))]


def _lowest(x: Node) -> float:
    if x.dtype.is_float:
        return -math.inf
    return float(np.iinfo(np.dtype(x.dtype.name)).min)


def window_pool(ctx: Context, x: Node, w: Window, kind: str, ceil_mode: bool,
                count_include_pad: bool) -> Node:
    """Max, sum or average pooling of `x` (N, C, *spatial) as strided slices of its
    padding (`kind` "max", "sum" or "avg")."""
    spatial = list(x.shape[2:])
    out = pooled_sizes(ctx, spatial, w, ceil_mode)
    d = len(spatial)
    extra = overhang(spatial, w, out)
    fill = _lowest(x) if kind == "max" else 0.0
    widths = [(0, 0), (0, 0)] + [(w.begin[i], w.end[i] + extra[i]) for i in range(d)]
    xp = slicing.pad(x, widths, value=fill) if any(a or b for a, b in widths) else x
    acc: Node | None = None
    axes = list(range(2, 2 + d))
    for offsets in itertools.product(*(range(k) for k in w.kernel)):
        starts = [offsets[i] * w.dilations[i] for i in range(d)]
        stops = [starts[i] + (out[i] - 1) * w.strides[i] + 1 for i in range(d)]
        piece = slicing.slice(xp, starts, stops, w.strides, axes)
        if acc is None:
            acc = piece
        else:
            acc = ew.maximum(acc, piece) if kind == "max" else ew.add(acc, piece)
    assert acc is not None
    if kind in ("max", "sum"):
        return acc
    divisor = np.ones([1, 1], dtype=np.float64)
    for i in range(d):
        pad_weight = 1.0 if count_include_pad else 0.0
        mask = np.concatenate([np.full(w.begin[i], pad_weight), np.ones(spatial[i]),
                               np.full(w.end[i], pad_weight), np.zeros(extra[i])])
        counts = np.array([sum(mask[o * w.strides[i] + j * w.dilations[i]]
                               for j in range(w.kernel[i])) for o in range(out[i])])
        divisor = np.multiply.outer(divisor, counts)
    divisor = np.maximum(divisor, 1.0).reshape([1, 1, *out])
    return ew.div(acc, gb.constant(divisor.astype(np.dtype(x.dtype.name))))


def conv3d(ctx: Context, x: Node, wt: Node, bias: Node | None, attrs: dict[str, Any]) -> Node:
    """Conv over (N, C, D, H, W): for each kernel depth i, the input's depth slices that
    kernel depth meets become batch rows of one 2-D convolution; the results add up."""
    kernel = [int(k) for k in attrs.get("kernel_shape", wt.shape[2:])]
    win = window(ctx, attrs, x.shape[2:], kernel)
    n, c, depth = x.shape[0], x.shape[1], x.shape[2]
    m = wt.shape[0]
    (out_d,) = pooled_sizes(ctx, [depth], Window(kernel[:1], win.strides[:1],
                                                 win.dilations[:1], win.begin[:1],
                                                 win.end[:1]), False)
    xp = slicing.pad(x, [(0, 0), (0, 0), (win.begin[0], win.end[0]), (0, 0), (0, 0)])
    xp = layout.transpose(xp, [0, 2, 1, 3, 4])  # (N, Dp, C, H, W)
    total: Node | None = None
    for i in range(kernel[0]):
        start = i * win.dilations[0]
        rows = slicing.slice(xp, [start], [start + (out_d - 1) * win.strides[0] + 1],
                             [win.strides[0]], [1])
        rows = layout.reshape(rows, [n * out_d, c, x.shape[3], x.shape[4]])
        w2 = layout.reshape(slicing.slice(wt, [i], [i + 1], None, [2]),
                            [m, wt.shape[1], wt.shape[3], wt.shape[4]])
        y = conv.conv2d(rows, w2, stride=win.strides[1:], dilation=win.dilations[1:],
                        padding=((win.begin[1], win.end[1]), (win.begin[2], win.end[2])),
                        groups=int(attrs.get("group", 1)),
                        bias=bias if i == 0 else None)
        total = y if total is None else ew.add(total, y)
    assert total is not None
    y5 = layout.reshape(total, [n, out_d, m, total.shape[2], total.shape[3]])
    return layout.transpose(y5, [0, 2, 1, 3, 4])


@rule("LRN", 1)
def _lrn(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """x / (bias + alpha / size * sum of x^2 over a window of `size` channels) ** beta."""
    x = ctx.node(inputs[0])
    if "size" not in attrs:
        raise ctx.error("attribute 'size' is missing")
    size = int(attrs["size"])
    if size <= 0 or x.ndim < 3:
        raise ctx.error(f"needs size > 0 and an input of rank >= 3; got size {size}, "
                        f"rank {x.ndim}")
    alpha, beta = float(attrs.get("alpha", 1e-4)), float(attrs.get("beta", 0.75))
    bias = float(attrs.get("bias", 1.0))
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = ew.mul(x, x)
    widths = [(0, 0), (lo, hi)] + [(0, 0)] * (x.ndim - 2)
    padded = slicing.pad(sq, widths)
    channels = x.shape[1]
    total: Node | None = None
    for j in range(size):
        piece = slicing.slice(padded, [j], [j + channels], None, [1])
        total = piece if total is None else ew.add(total, piece)
    assert total is not None
    return [ew.div(x, ew.pow(ew.add(ew.mul(total, alpha / size), bias), beta))]


@rule("LpPool", 11)
def _lp_pool(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x = ctx.node(inputs[0])
    if x.ndim < 3 or "kernel_shape" not in attrs:
        raise ctx.error("needs an input of rank >= 3 and the attribute 'kernel_shape'")
    p = float(attrs.get("p", 2))
    win = window(ctx, attrs, x.shape[2:], [int(k) for k in attrs["kernel_shape"]])
    summed = window_pool(ctx, ew.pow(ew.abs(x), p), win, "sum",
                         bool(int(attrs.get("ceil_mode", 0))), True)
    return [ew.pow(summed, 1.0 / p)]
