"""ONNX's GridSample and AffineGrid (2-D and 3-D), as ONNX's reference computes them.

GridSample reads X (N, C, D1..Dr) at the normalized coordinates of a grid (N, O1..Or, r)
whose last axis lists them innermost dimension first. Per spatial dimension a coordinate
is denormalized (`align_corners`: -1 and 1 are the corner pixels' centres, else their outer
edges), moved inside the border by `padding_mode` (border: clamped, reflection: reflected),
and split into taps: nearest (round half to even), linear (2 taps) or cubic (4 taps, Keys'
kernel with a = -0.75); a tap outside the image reads 0 (zeros), the edge pixel (border) or
its mirror image (reflection). The taps of all dimensions combine as a product (2^r or 4^r
gathers from the flattened image, weighted and summed), so any grid values work at run time.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from graphc import builder as gb
from graphc.ir import Node
from graphc.onnx.convert import Context, Value, ints, rule
from graphc.ops import elementwise as ew
from graphc.ops import gather, layout, linalg, slicing

Inputs = list[Value | None]
Tap = tuple[Node, Node | None]  # (integer-valued float index, weight or None for 1)
_MODES = {"bilinear": "linear", "linear": "linear", "nearest": "nearest", "bicubic": "cubic",
          "cubic": "cubic"}


def _reflect(x: Node, lo: float, hi: float) -> Node:
    """x reflected at lo and hi until it lies within [lo, hi]."""
    span = hi - lo
    if span <= 0:
        return ew.add(ew.mul(x, 0.0), lo)
    below, above = ew.sub(lo, x), ew.sub(x, hi)
    out = x
    for dist, near, far in ((below, lo, hi), (above, hi, lo)):
        n = ew.floor(ew.div(dist, span))
        r = ew.sub(dist, ew.mul(n, span))
        even = ew.equal(ew.mod(n, 2.0), 0.0)
        toward = 1.0 if near == lo else -1.0  # reflected back inside from the near border
        folded = ew.where(even, ew.add(ew.mul(r, toward), near), ew.sub(far, ew.mul(r, toward)))
        out = ew.where(ew.greater(dist, 0.0), folded, out)
    return out


def _cubic(t: Node) -> list[Node]:
    """Keys' cubic weights (a = -0.75) of the taps at -1, 0, 1, 2 for a fraction t."""
    a = -0.75

    def near(d: Node) -> Node:  # |d| <= 1
        return ew.add(ew.mul(ew.mul(ew.sub(ew.mul(d, a + 2), a + 3), d), d), 1.0)

    def far(d: Node) -> Node:  # 1 < |d| < 2
        return ew.sub(ew.mul(ew.add(ew.mul(ew.sub(ew.mul(d, a), 5 * a), d), 8 * a), d), 4 * a)

    return [far(ew.add(t, 1.0)), near(t), near(ew.sub(1.0, t)), far(ew.sub(2.0, t))]


def _taps(ctx: Context, g: Node, size: int, mode: str, padding: str,
          align: bool) -> list[tuple[Node, Node | None]]:
    """The taps (index as an int64 node, weight or None) of normalized coordinates `g` along
    a dimension of `size` pixels, their padding applied."""
    if align:
        x = ew.mul(ew.add(g, 1.0), (size - 1) / 2.0)
        lo, hi = 0.0, float(size - 1)
    else:
        x = ew.div(ew.sub(ew.mul(ew.add(g, 1.0), float(size)), 1.0), 2.0)
        lo, hi = -0.5, size - 0.5
    if mode == "nearest":
        x = ew.round(x)
    outside = ew.logical_or(ew.less(x, lo), ew.greater(x, hi))
    if padding == "border":
        x = ew.where(outside, ew.clip(x, 0.0, float(size - 1)), x)
    elif padding == "reflection":
        x = ew.where(outside, _reflect(x, lo, hi), x)
    taps: list[Tap]
    if mode == "nearest":
        taps = [(ew.where(ew.less(x, 0.0), ew.ceil(x), ew.floor(x)), None)]  # truncation
    else:
        x0 = ew.floor(x)
        t = ew.sub(x, x0)
        if mode == "linear":
            taps = [(x0, ew.sub(1.0, t)), (ew.add(x0, 1.0), t)]
        else:
            taps = [(ew.add(x0, float(k - 1)), w) for k, w in enumerate(_cubic(t))]
    out = []
    for i, w in taps:
        if padding == "zeros":
            inside = ew.logical_and(ew.greater_equal(i, 0.0), ew.less_equal(i, size - 1.0))
            mask = ew.where(inside, 1.0, ew.mul(i, 0.0))
            w = mask if w is None else ew.mul(w, mask)
        elif padding == "reflection":
            r = _reflect(i, lo, hi)
            i = ew.where(ew.less(r, 0.0), ew.ceil(r), ew.floor(r))
        out.append((ew.cast(ew.clip(i, 0.0, float(size - 1)), "int64"), w))
    return out


@rule("GridSample", 16)
def _grid_sample(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x, grid = ctx.node(inputs[0]), ctx.node(inputs[1])
    r = x.ndim - 2
    mode = _MODES.get(str(attrs.get("mode", "linear" if ctx.opset >= 20 else "bilinear")))
    padding = str(attrs.get("padding_mode", "zeros"))
    if mode is None or padding not in ("zeros", "border", "reflection"):
        raise ctx.error(f"mode '{attrs.get('mode')}' / padding_mode '{padding}': expected "
                        "nearest, linear or cubic and zeros, border or reflection")
    if r < 1 or grid.ndim != x.ndim or grid.shape[-1] != r or grid.shape[0] != x.shape[0]:
        raise ctx.error(f"X {tuple(x.shape)} and grid {tuple(grid.shape)}: expected "
                        f"(N, C, D1..Dr) and (N, O1..Or, r)")
    align = bool(int(attrs.get("align_corners", 0)))
    if grid.dtype != x.dtype:
        grid = ew.cast(grid, x.dtype)
    n, c = x.shape[0], x.shape[1]
    dims = list(x.shape[2:])
    out_dims = list(grid.shape[1:-1])
    points = int(np.prod(out_dims, dtype=np.int64))
    strides = [int(np.prod(dims[d + 1:], dtype=np.int64)) for d in range(r)]
    per_dim = []
    for d in range(r):
        coord = layout.squeeze(slicing.slice(grid, [r - 1 - d], [r - d], axes=[grid.ndim - 1]),
                               grid.ndim - 1)
        per_dim.append(_taps(ctx, layout.reshape(coord, [n, 1, points]), dims[d], mode,
                             padding, align))
    flat = layout.reshape(x, [n, c, int(np.prod(dims, dtype=np.int64))])
    total: Node | None = None
    for combo in itertools.product(*per_dim):
        index: Node | None = None
        weight: Node | None = None
        for d, (i, w) in enumerate(combo):
            term = ew.mul(i, strides[d]) if strides[d] != 1 else i
            index = term if index is None else ew.add(index, term)
            if w is not None:
                weight = w if weight is None else ew.mul(weight, w)
        assert index is not None
        value = gather.take_along_axis(flat, layout.broadcast_to(index, [n, c, points]), 2)
        value = value if weight is None else ew.mul(value, weight)
        total = value if total is None else ew.add(total, value)
    assert total is not None
    return [layout.reshape(total, [n, c, *out_dims])]


@rule("AffineGrid", 20)
def _affine_grid(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """The grid (N, D.., r) of theta (N, r, r+1) applied to the homogeneous normalized
    coordinates (x, y[, z], 1) of every output pixel; `size` (N, C, D..) known at import."""
    theta = ctx.node(inputs[0])
    size = ints(ctx.need_known(inputs[1], "size"))
    spatial = size[2:]
    r = len(spatial)
    if r not in (2, 3) or tuple(theta.shape) != (size[0], r, r + 1):
        raise ctx.error(f"theta {tuple(theta.shape)} and size {size}: expected (N, 2, 3) "
                        "with (N, C, H, W) or (N, 3, 4) with (N, C, D, H, W)")
    align = bool(int(attrs.get("align_corners", 0)))
    axes = []
    for length in spatial:
        i = np.arange(length, dtype=np.float64)
        if align:
            axes.append(-1.0 + 2.0 * i / (length - 1) if length > 1 else np.full(1, -1.0))
        else:
            axes.append(-1.0 + (2.0 * i + 1.0) / length)
    mesh = np.meshgrid(*axes, indexing="ij")  # one array per spatial dim, outermost first
    base = np.stack([*mesh[::-1], np.ones(spatial)], -1).reshape(-1, r + 1)
    grid = linalg.matmul(gb.constant(base.astype(theta.dtype.np)), theta, transpose_b=True)
    return [layout.reshape(grid, [size[0], *spatial, r])]
