"""Resize as one dense interpolation matrix per axis, for what the gather path does not
cover: `antialias=1` (a filter widened by 1/scale when downsampling) and
`tf_crop_and_resize` (coordinates inside a region of interest, `extrapolation_value`
outside it).

Each axis's (n_out x n_in) matrix is built at import by ONNX's own 1-D rule (its reference
implementation: the coefficients of the n nearest source positions, edge-padded) applied
to every output position, and applied with a matmul over that axis. Rows of positions
outside the region are zero and the extrapolation value is added there; the rows of the
other positions sum to 1, so a value extrapolated along one axis stays that value through
the next.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from graphc import builder as gb
from graphc.ir import Node
from graphc.onnx.convert import Context
from graphc.ops import elementwise as ew
from graphc.ops import layout, linalg

Coeffs = Callable[[float, float], np.ndarray]


def _coeff_fn(ctx: Context, attrs: dict[str, Any]) -> Coeffs:
    mode = str(attrs.get("mode", "nearest"))
    antialias = bool(int(attrs.get("antialias", 0)))
    a = float(attrs.get("cubic_coeff_a", -0.75))
    if mode == "linear" and antialias:
        def linear_aa(ratio: float, scale: float) -> np.ndarray:
            scale = min(scale, 1.0)
            start = int(np.floor(-1 / scale) + 1)
            args = (np.arange(start, start + 2 - 2 * start) - ratio) * scale
            c = np.clip(1 - np.abs(args), 0, 1)
            return c / c.sum()
        return linear_aa
    if mode == "linear":
        return lambda ratio, scale: np.array([1 - ratio, ratio])
    if mode == "cubic":
        def cubic(ratio: float, scale: float) -> np.ndarray:
            scale = min(scale, 1.0) if antialias else 1.0
            start = int(np.floor(-2 / scale) + 1)
            x = np.abs(scale * (np.arange(start, 2 - start) - ratio))
            c = np.where(x <= 1, (a + 2) * x**3 - (a + 3) * x**2 + 1,
                         np.where(x < 2, a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a, 0.0))
            return c / c.sum() if antialias else c
        return cubic
    if mode == "nearest" and not antialias:
        rounding = str(attrs.get("nearest_mode", "round_prefer_floor"))

        def nearest(ratio: float, scale: float) -> np.ndarray:
            if float(ratio).is_integer():
                return np.array([0.0, 1.0])
            up = {"round_prefer_floor": ratio > 0.5, "round_prefer_ceil": ratio >= 0.5,
                  "floor": False, "ceil": True}[rounding]
            return np.array([0.0, 1.0]) if up else np.array([1.0, 0.0])
        return nearest
    raise ctx.error(f"mode '{mode}' with antialias={int(antialias)} is not supported")


def source_coords(mode: str, n_out: int, n_in: int, scale: float,
                  roi: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """The source coordinate of every output position along one axis, as ONNX's reference
    defines each coordinate_transformation_mode (the resized length is n_in * scale,
    unrounded); NaN where tf_crop_and_resize's region leaves the input. ValueError for an
    unknown mode."""
    o = np.arange(n_out, dtype=np.float64)
    length = scale * n_in
    if mode == "align_corners":
        return o * (n_in - 1) / (length - 1) if length != 1 else np.zeros_like(o)
    if mode == "asymmetric":
        return o / scale
    if mode == "tf_crop_and_resize":
        lo, hi = roi
        span = (hi - lo) * (n_in - 1)
        x = (np.full_like(o, span / 2) if length == 1 else o * span / (length - 1)) \
            + lo * (n_in - 1)
        return np.where((x < 0) | (x > n_in - 1), np.nan, x)
    if mode == "pytorch_half_pixel":
        return (o + 0.5) / scale - 0.5 if length != 1 else np.full_like(o, -0.5)
    if mode == "half_pixel":
        return (o + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        offset = n_in / 2 * (1 - n_out / length)
        return offset + (o + 0.5) / scale - 0.5
    raise ValueError(mode)


def axis_matrix(ctx: Context, attrs: dict[str, Any], n_in: int, n_out: int, scale: float,
                roi: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(W (n_out x n_in), outside (n_out,) bool) for one axis."""
    coord_mode = str(attrs.get("coordinate_transformation_mode", "half_pixel"))
    coeffs_of = _coeff_fn(ctx, attrs)
    exclude = bool(int(attrs.get("exclude_outside", 0)))
    w = np.zeros((n_out, n_in))
    outside = np.zeros(n_out, bool)
    try:
        coords = source_coords(coord_mode, n_out, n_in, scale, roi)
    except ValueError:
        raise ctx.error(f"coordinate_transformation_mode '{coord_mode}' is not "
                        "supported") from None
    for o, x in enumerate(coords.tolist()):
        if math.isnan(x):
            outside[o] = True
            continue
        base = math.floor(x)
        ratio = 1.0 if float(x).is_integer() else x - base
        c = np.array(coeffs_of(ratio, scale), dtype=np.float64)
        n = len(c)
        # The n nearest positions of the edge-padded axis, ties to the left (as ONNX).
        pad = math.ceil(n / 2)
        centre = x + pad
        cands = sorted(range(n_in + 2 * pad), key=lambda i: (abs(centre - i), i))[:n]
        idx = np.array(sorted(cands)) - pad
        if exclude:
            c = np.where((idx >= 0) & (idx < n_in), c, 0.0)
            c = c / c.sum()
        for i, coef in zip(np.clip(idx, 0, n_in - 1), c):
            w[o, i] += coef
    return w, outside


def resize_dense(ctx: Context, x: Node, sizes: list[int], scales: list[float],
                 attrs: dict[str, Any], roi: np.ndarray | None) -> Node:
    """`x` resized to `sizes`, one dense matrix per resized axis (see the module doc)."""
    extrap = float(attrs.get("extrapolation_value", 0.0))
    np_dtype = np.float64 if x.dtype.name == "float64" else np.float32
    out = x
    for axis in range(x.ndim):
        n_in, n_out = x.shape[axis], sizes[axis]
        box = (0.0, 1.0) if roi is None else (float(roi[axis]), float(roi[x.ndim + axis]))
        if n_in == n_out and scales[axis] == 1.0 and box == (0.0, 1.0):
            continue
        w, outside = axis_matrix(ctx, attrs, n_in, n_out, scales[axis], box)
        perm = [a for a in range(x.ndim) if a != axis] + [axis]
        inverse = [perm.index(a) for a in range(x.ndim)]
        moved = layout.transpose(out, perm)
        mixed = linalg.matmul(moved, gb.constant(np.ascontiguousarray(w.T.astype(np_dtype))))
        out = layout.transpose(mixed, inverse)
        if outside.any():
            shape = [1] * x.ndim
            shape[axis] = n_out
            out = ew.add(out, gb.constant((outside * extrap).reshape(shape).astype(np_dtype)))
    return out
