"""Spatial ONNX ops built from graphc kernels: ConvTranspose (the convolution's input
gradient), Resize/Upsample (separable gathers and interpolation weights computed at import),
CenterCropPad, and the integer bit shifts.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from graphc import builder as gb
from graphc.ir import Node
from graphc.onnx.convert import Context, Value, ints, rule
from graphc.onnx.rules.resize_dense import resize_dense, source_coords
from graphc.ops import conv, gather, layout, slicing
from graphc.ops import elementwise as ew

Inputs = list[Value | None]


@rule("ConvTranspose", 1)
def _conv_transpose(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """ConvTranspose(x, w) is the input gradient of a convolution with the same weights:
    x (N, C_in, H, W) plays the output gradient, w (C_in, C_out/g, kh, kw) the weights."""
    x, w = ctx.node(inputs[0]), ctx.node(inputs[1])
    if x.ndim != 4:
        raise ctx.error(f"only 2-D transposed convolution is supported; got rank {x.ndim}")
    groups = int(attrs.get("group", 1))
    kernel = [int(k) for k in attrs.get("kernel_shape", w.shape[2:])]
    strides = [int(s) for s in attrs.get("strides", [1, 1])]
    dilations = [int(d) for d in attrs.get("dilations", [1, 1])]
    out_pad = [int(p) for p in attrs.get("output_padding", [0, 0])]
    auto = str(attrs.get("auto_pad", "NOTSET"))
    pads = [int(p) for p in attrs.get("pads", [0, 0, 0, 0])]
    full = [(x.shape[2 + i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 + out_pad[i]
            for i in range(2)]
    if "output_shape" in attrs:
        want = [int(v) for v in attrs["output_shape"]][-2:]
        total = [full[i] - want[i] for i in range(2)]
        if any(t < 0 for t in total):
            raise ctx.error(f"output_shape {want} is larger than the full output {full}")
        upper = auto != "SAME_LOWER"
        pads = [total[0] - total[0] // 2 if not upper else total[0] // 2,
                total[1] - total[1] // 2 if not upper else total[1] // 2]
        pads = [*pads, total[0] - pads[0], total[1] - pads[1]]
    elif auto in ("SAME_UPPER", "SAME_LOWER"):
        want = [x.shape[2 + i] * strides[i] for i in range(2)]
        total = [full[i] - want[i] for i in range(2)]
        lo = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in total]
        pads = lo + [total[i] - lo[i] for i in range(2)]
    elif auto == "VALID":
        pads = [0, 0, 0, 0]
    out_hw = [full[i] - pads[i] - pads[i + 2] for i in range(2)]
    c_out = w.shape[1] * groups
    # The convolution whose input gradient this is pads its input by `pads` and has the
    # output_padding rows as extra input rows at the bottom/right (they only see padding).
    # Output rows past the end pads (output_padding beyond them) see no input: they are
    # zeros appended after the gradient of the convolution over the rows that do.
    short = [max(out_pad[i] - pads[i + 2], 0) for i in range(2)]
    in_shape = [x.shape[0], c_out, out_hw[0] - short[0], out_hw[1] - short[1]]
    padding = ((pads[0], pads[2] - out_pad[0] + short[0]),
               (pads[1], pads[3] - out_pad[1] + short[1]))
    y = conv.conv2d_grad_input(x, w, in_shape, stride=strides, padding=padding,
                               dilation=dilations, groups=groups)
    if any(short):
        y = slicing.pad(y, [(0, 0), (0, 0), (0, short[0]), (0, short[1])])
    if len(inputs) > 2 and inputs[2] is not None:
        y = ew.add(y, layout.reshape(ctx.node(inputs[2]), [1, c_out, 1, 1]))
    return [y]


# --- Resize ----------------------------------------------------------------------------------

def _nearest(coords: np.ndarray, mode: str) -> np.ndarray:
    if mode == "round_prefer_floor":
        return np.where(coords - np.floor(coords) == 0.5, np.floor(coords), np.round(coords))
    if mode == "round_prefer_ceil":
        return np.where(coords - np.floor(coords) == 0.5, np.ceil(coords), np.round(coords))
    if mode == "floor":
        return np.floor(coords)
    if mode == "ceil":
        return np.ceil(coords)
    raise ValueError(mode)


def _taps(ctx: Context, mode: str, coords: np.ndarray, in_size: int, attrs: dict[str, Any]
          ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(source index, weight) pairs per output position along one axis."""
    if mode == "nearest":
        idx = _nearest(coords, str(attrs.get("nearest_mode", "round_prefer_floor")))
        return [(np.clip(idx, 0, in_size - 1).astype(np.int64), np.ones_like(coords))]
    if mode == "linear":
        c = np.clip(coords, 0, in_size - 1)
        lo = np.floor(c)
        frac = c - lo
        hi = np.minimum(lo + 1, in_size - 1)
        return [(lo.astype(np.int64), 1 - frac), (hi.astype(np.int64), frac)]
    if mode == "cubic":
        a = float(attrs.get("cubic_coeff_a", -0.75))
        base = np.floor(coords)
        t = coords - base
        ws = [((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
              ((a + 2) * t - (a + 3)) * t * t + 1,
              ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
              ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a]
        taps = []
        exclude = int(attrs.get("exclude_outside", 0))
        idxs = [base - 1, base, base + 1, base + 2]
        if exclude:
            inside = [(i >= 0) & (i < in_size) for i in idxs]
            ws = [np.where(m, w, 0.0) for w, m in zip(ws, inside)]
            total = sum(ws)
            ws = [w / total for w in ws]
        for i, w in zip(idxs, ws):
            taps.append((np.clip(i, 0, in_size - 1).astype(np.int64), w))
        return taps
    raise ctx.error(f"mode '{mode}' is not supported (nearest, linear, cubic)")


def _resize(ctx: Context, x: Node, sizes: list[int], scales: list[float],
            attrs: dict[str, Any], roi: np.ndarray | None = None) -> Node:
    mode = str(attrs.get("mode", "nearest"))
    coord_mode = str(attrs.get("coordinate_transformation_mode", "half_pixel"))
    if coord_mode == "tf_crop_and_resize" or int(attrs.get("antialias", 0)):
        return resize_dense(ctx, x, sizes, scales, attrs, roi)
    out = x
    for axis in range(x.ndim):
        n_in, n_out = x.shape[axis], sizes[axis]
        if n_in == n_out and scales[axis] == 1.0:
            continue
        try:
            coords = source_coords(coord_mode, n_out, n_in, scales[axis])
        except ValueError:
            raise ctx.error(f"coordinate_transformation_mode '{coord_mode}' is not "
                            "supported") from None
        acc: Node | None = None
        for idx, w in _taps(ctx, mode, coords, n_in, attrs):
            picked = gather.take(out, gb.constant(idx), axis)
            if mode == "nearest":
                acc = picked
                continue
            shape = [1] * x.ndim
            shape[axis] = n_out
            term = ew.mul(picked, gb.constant(w.reshape(shape).astype(
                np.float64 if x.dtype.name == "float64" else np.float32)))
            acc = term if acc is None else ew.add(acc, term)
        assert acc is not None
        out = acc
    return out


@rule("Resize", 10)
def _resize10(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x = ctx.node(inputs[0])
    scales = [float(s) for s in ctx.need_known(inputs[1], "scales").reshape(-1)]
    attrs = {**attrs, "coordinate_transformation_mode": "asymmetric",
             "nearest_mode": "floor"} if ctx.opset < 11 else attrs
    sizes = [math.floor(d * s) for d, s in zip(x.shape, scales)]
    return [_resize(ctx, x, sizes, scales, attrs)]


@rule("Resize", 11)
def _resize11(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x = ctx.node(inputs[0])
    scales_in = inputs[2] if len(inputs) > 2 else None
    sizes_in = inputs[3] if len(inputs) > 3 else None
    axes = [int(a) % x.ndim for a in attrs.get("axes", range(x.ndim))]
    policy = str(attrs.get("keep_aspect_ratio_policy", "stretch"))
    sizes = list(x.shape)
    scales = [1.0] * x.ndim
    given = scales_in is not None and math.prod(scales_in.shape) > 0
    known_scales = ctx.need_known(scales_in, "scales") if given else None
    if known_scales is not None and known_scales.size:
        for a, s in zip(axes, known_scales.reshape(-1)):
            scales[a] = float(s)
            sizes[a] = math.floor(x.shape[a] * float(s))
    elif sizes_in is not None:
        want = ints(ctx.need_known(sizes_in, "sizes"))
        if policy != "stretch":
            ratios = [want[i] / x.shape[a] for i, a in enumerate(axes)]
            r = min(ratios) if policy == "not_larger" else max(ratios)
            want = [round(x.shape[a] * r) for a in axes]
            for a in axes:
                scales[a] = r
        for a, s in zip(axes, want):
            sizes[a] = s
            if policy == "stretch":
                scales[a] = s / x.shape[a]
    else:
        raise ctx.error("needs one of the inputs scales and sizes")
    roi = None
    if str(attrs.get("coordinate_transformation_mode", "")) == "tf_crop_and_resize":
        given = ctx.need_known(inputs[1] if len(inputs) > 1 else None, "roi").reshape(-1)
        roi = np.concatenate([np.zeros(x.ndim), np.ones(x.ndim)])
        for i, a in enumerate(axes):  # roi lists (starts, ends) of the resized axes
            roi[a], roi[x.ndim + a] = given[i], given[len(axes) + i]
    return [_resize(ctx, x, sizes, scales, attrs, roi)]


@rule("Upsample", 9)
def _upsample(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x = ctx.node(inputs[0])
    scales = [float(s) for s in ctx.need_known(inputs[1], "scales").reshape(-1)]
    attrs = {"mode": str(attrs.get("mode", "nearest")),
             "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    sizes = [math.floor(d * s) for d, s in zip(x.shape, scales)]
    return [_resize(ctx, x, sizes, scales, attrs)]


# --- others ----------------------------------------------------------------------------------

@rule("Compress", 11)
def _compress(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x = ctx.node(inputs[0])
    cond = ctx.need_known(inputs[1], "condition").reshape(-1).astype(bool)
    axis = attrs.get("axis")
    if axis is None:
        x = layout.reshape(x, [int(np.prod(x.shape, dtype=np.int64))])
        axis = 0
    axis = int(axis) % x.ndim
    idx = np.nonzero(cond[:x.shape[axis]])[0].astype(np.int64)
    return [gather.take(x, gb.constant(idx), axis)]


@rule("CenterCropPad", 18)
def _center_crop_pad(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x = ctx.node(inputs[0])
    shape = ints(ctx.need_known(inputs[1], "shape"))
    axes = [int(a) % x.ndim for a in attrs.get("axes", range(x.ndim))]
    out = x
    for a, want in zip(axes, shape):
        have = out.shape[a]
        starts: list[int | None] = [None] * x.ndim
        stops: list[int | None] = [None] * x.ndim
        if want < have:
            start = (have - want) // 2
            starts[a], stops[a] = start, start + want
            out = slicing.slice(out, starts, stops)
        elif want > have:
            lo = (want - have) // 2
            width = [(0, 0)] * x.ndim
            width[a] = (lo, want - have - lo)
            out = slicing.pad(out, width, 0.0)
    return [out]


_INT_BITS = {2: (8, False), 3: (8, True), 4: (16, False), 5: (16, True), 6: (32, True),
             7: (64, True), 12: (32, False), 13: (64, False)}


@rule("BitShift", 11)
def _bit_shift(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """x << y or x >> y in the declared integer width (graphc may hold the values wider),
    as ONNX's reference does: shifts below 0 or of the width or more give 0 (-1 for a
    negative x shifted right), left shifts wrap. Computed in float64, so exact for widths
    up to 32 bits and for 64-bit results below 2^53."""
    x, y = ctx.node(inputs[0]), ctx.node(inputs[1])
    direction = str(attrs.get("direction", ""))
    if direction not in ("LEFT", "RIGHT"):
        raise ctx.error(f"direction '{direction}' is not LEFT or RIGHT")
    declared = ctx.input_types[0] if ctx.input_types else None
    if x.dtype.is_float or declared not in _INT_BITS:
        raise ctx.error("needs an integer input of a declared type")
    bits, signed = _INT_BITS[declared]
    yf = ew.cast(y, "float64")
    xf = ew.cast(x, "float64")
    p = ew.pow(2.0, yf)
    if direction == "LEFT":
        out = ew.mod(ew.mul(xf, p), float(2 ** bits))
        if signed:
            out = ew.where(ew.greater_equal(out, float(2 ** (bits - 1))),
                           ew.sub(out, float(2 ** bits)), out)
        spill = ew.mul(xf, 0.0)
    else:
        out = ew.floor(ew.div(xf, p))
        spill = ew.where(ew.less(xf, 0.0), ew.add(ew.mul(xf, 0.0), -1.0), ew.mul(xf, 0.0))
    outside = ew.logical_or(ew.less(yf, 0.0), ew.greater_equal(yf, float(bits)))
    return [ew.cast(ew.where(outside, spill, out), x.dtype)]
