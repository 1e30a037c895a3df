"""Image ops built from gathers and scatters over the flattened image: Col2Im and MaxUnpool
are graphc scatter-adds (`gather.take_grad`) at positions known at import (Col2Im) or given
at run time (MaxUnpool's indices); RoiAlign and DeformConv gather the four bilinear
corners of sample points computed at run time (from the ROIs, from the offsets).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from graphc import builder as gb
from graphc.ir import Node
from graphc.onnx.convert import Context, Value, ints, rule
from graphc.ops import elementwise as ew
from graphc.ops import gather, layout, linalg, reduce, slicing

Inputs = list[Value | None]


def _spatial_attr(ctx: Context, attrs: dict[str, Any], name: str, r: int,
                  default: int) -> list[int]:
    values = [int(v) for v in attrs.get(name, [default] * r)]
    if len(values) != r:
        raise ctx.error(f"{name} {values} has {len(values)} entries for {r} spatial dims")
    return values


@rule("Col2Im", 18)
def _col2im(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """Input (N, C·prod(block), L) holds, for each of the L block positions, the C·prod(block)
    pixels of a sliding block; each is added into the image (N, C, image_shape) at
    block_position·stride + offset·dilation - pad_begin (overlaps add up)."""
    x = ctx.node(inputs[0])
    image = ints(ctx.need_known(inputs[1], "image_shape"))
    block = ints(ctx.need_known(inputs[2], "block_shape"))
    r = len(image)
    if r == 0 or len(block) != r or x.ndim != 3:
        raise ctx.error(f"input {tuple(x.shape)}, image_shape {image}, block_shape {block}: "
                        "expected (N, C·prod(block), L) and one block size per image dim")
    dil = _spatial_attr(ctx, attrs, "dilations", r, 1)
    stride = _spatial_attr(ctx, attrs, "strides", r, 1)
    pads = [int(v) for v in attrs.get("pads", [0] * 2 * r)]
    if len(pads) != 2 * r:
        raise ctx.error(f"pads {pads} need {2 * r} entries")
    padded = [image[d] + pads[d] + pads[d + r] for d in range(r)]
    counts = [(padded[d] - dil[d] * (block[d] - 1) - 1) // stride[d] + 1 for d in range(r)]
    k = int(np.prod(block, dtype=np.int64))
    n, ck, length = x.shape
    if ck % k or length != int(np.prod(counts, dtype=np.int64)) or min(counts) <= 0:
        raise ctx.error(f"input {tuple(x.shape)} does not hold blocks {block} at the "
                        f"{counts} positions image {image} gives")
    c = ck // k
    strides = [int(np.prod(padded[d + 1:], dtype=np.int64)) for d in range(r)]
    index = np.zeros((k, length), np.int64)
    for i, offset in enumerate(itertools.product(*(range(b) for b in block))):
        where = np.zeros(counts, np.int64)
        for d in range(r):
            shape = [1] * r
            shape[d] = counts[d]
            pos = np.arange(counts[d]) * stride[d] + offset[d] * dil[d]
            where = where + pos.reshape(shape) * strides[d]
        index[i] = where.reshape(-1)
    total = int(np.prod(padded, dtype=np.int64))
    flat = layout.reshape(x, [n, c, k * length])
    out = gather.take_grad(flat, index.reshape(-1), 2, total)
    out = layout.reshape(out, [n, c, *padded])
    if any(pads):
        out = slicing.slice(out, [pads[d] for d in range(r)],
                            [pads[d] + image[d] for d in range(r)], axes=list(range(2, 2 + r)))
    return [out]


@rule("MaxUnpool", 9)
def _max_unpool(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """Each value of X goes to its flat position (MaxPool's Indices, over the whole unpooled
    tensor) in zeros of the pooling's input shape, (in - 1)·stride - pads + kernel; an
    `output_shape` larger than that is zero-padded at the end of each dim. Indices that
    repeat add up (ONNX leaves them undefined)."""
    x, idx = ctx.node(inputs[0]), ctx.node(inputs[1])
    r = x.ndim - 2
    kernel = [int(v) for v in attrs.get("kernel_shape", [])]
    if r < 1 or len(kernel) != r or tuple(idx.shape) != tuple(x.shape):
        raise ctx.error(f"X {tuple(x.shape)}, indices {tuple(idx.shape)}, kernel_shape "
                        f"{kernel}: expected (N, C, D..), indices of X's shape, one kernel "
                        "size per spatial dim")
    stride = _spatial_attr(ctx, attrs, "strides", r, 1)
    pads = [int(v) for v in attrs.get("pads", [0] * 2 * r)]
    inferred = [x.shape[0], x.shape[1]] + [
        (x.shape[2 + d] - 1) * stride[d] - pads[d] - pads[d + r] + kernel[d] for d in range(r)]
    shape = inferred
    if len(inputs) > 2 and inputs[2] is not None:
        shape = ints(ctx.need_known(inputs[2], "output_shape"))
        if len(shape) != x.ndim or any(s < i for s, i in zip(shape, inferred)):
            raise ctx.error(f"output_shape {shape} is smaller than the unpooled {inferred}")
    total = int(np.prod(inferred, dtype=np.int64))
    count = int(np.prod(x.shape, dtype=np.int64))
    flat_idx = layout.reshape(ew.cast(idx, "int64") if idx.dtype.name != "int64" else idx,
                              [count])
    out: Node = layout.reshape(gather.take_grad(layout.reshape(x, [count]), flat_idx, 0, total),
                               inferred)
    if shape != inferred:
        out = slicing.pad(out, [(0, s - i) for s, i in zip(shape, inferred)], 0.0)
    return [out]


def _roi_axis(start: Node, size: Node, pooled: int, grid: int, limit: int
              ) -> tuple[Node, Node, Node, Node, Node]:
    """Along one axis of every ROI (start, size: (R, 1)): the sample coordinates (R, pooled
    * grid), bilinear as ONNX's reference: (low index, high index, low weight, high weight,
    valid), an out-of-image sample (beyond -1 or the size) weighing 0."""
    steps = (np.arange(pooled)[:, None] + (np.arange(grid)[None, :] + 0.5) / grid).reshape(-1)
    pos = ew.add(start, ew.mul(ew.div(size, float(pooled)), steps.astype(np.float64)))
    valid = ew.logical_and(ew.greater_equal(pos, -1.0), ew.less_equal(pos, float(limit)))
    pos = ew.maximum(pos, 0.0)
    low = ew.floor(pos)
    edge = ew.greater_equal(low, float(limit - 1))
    low = ew.where(edge, float(limit - 1), low)
    high = ew.where(edge, low, ew.add(low, 1.0))
    pos = ew.where(edge, low, pos)
    frac = ew.sub(pos, low)
    return low, high, ew.sub(1.0, frac), frac, valid


@rule("RoiAlign", 10)
def _roi_align(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """Each ROI (x1, y1, x2, y2 scaled by spatial_scale) of image batch_indices[r] is split
    into output_height x output_width bins, each sampled on a sampling_ratio^2 grid by
    bilinear interpolation and averaged (mode avg) or maxed (mode max, over the weighted
    corner values as ONNX's reference does). sampling_ratio 0 (a grid that depends on each
    ROI's size) is not supported."""
    x, rois, batch = ctx.node(inputs[0]), ctx.node(inputs[1]), ctx.node(inputs[2])
    mode = str(attrs.get("mode", "avg"))
    ph, pw = int(attrs.get("output_height", 1)), int(attrs.get("output_width", 1))
    ratio = int(attrs.get("sampling_ratio", 0))
    half = str(attrs.get("coordinate_transformation_mode", "half_pixel")) == "half_pixel"
    if mode not in ("avg", "max") or x.ndim != 4 or rois.ndim != 2 or rois.shape[1] != 4:
        raise ctx.error(f"mode '{mode}', X {tuple(x.shape)}, rois {tuple(rois.shape)}: "
                        "expected avg or max, (N, C, H, W) and (R, 4)")
    if ratio <= 0:
        raise ctx.error("sampling_ratio 0 (a sample grid that depends on each ROI's size) is "
                        "not supported; give sampling_ratio > 0")
    _, c, h, w = x.shape
    r = rois.shape[0]
    scale = float(attrs.get("spatial_scale", 1.0))
    box = ew.sub(ew.mul(ew.cast(rois, "float64"), scale), 0.5 if half else 0.0)

    def coord(i: int) -> Node:
        return slicing.slice(box, [i], [i + 1], axes=[1])  # (R, 1)

    extent = []
    for lo, hi in ((1, 3), (0, 2)):  # y, then x
        size = ew.sub(coord(hi), coord(lo))
        extent.append((coord(lo), size if half else ew.maximum(size, 1.0)))
    y0, y1, wy0, wy1, vy = _roi_axis(*extent[0], ph, ratio, h)
    x0, x1, wx0, wx1, vx = _roi_axis(*extent[1], pw, ratio, w)
    sy, sx = ph * ratio, pw * ratio
    image = layout.reshape(gather.take(x, batch, 0), [r, c, h * w])
    valid = ew.logical_and(layout.reshape(vy, [r, sy, 1]), layout.reshape(vx, [r, 1, sx]))
    corners = []
    for yi, wy in ((y0, wy0), (y1, wy1)):
        for xi, wx in ((x0, wx0), (x1, wx1)):
            index = ew.add(layout.reshape(ew.mul(yi, float(w)), [r, sy, 1]),
                           layout.reshape(xi, [r, 1, sx]))
            weight = ew.mul(layout.reshape(wy, [r, sy, 1]), layout.reshape(wx, [r, 1, sx]))
            weight = ew.where(valid, weight, 0.0)
            flat = layout.reshape(ew.cast(index, "int64"), [r, 1, sy * sx])
            value = gather.take_along_axis(image, layout.broadcast_to(flat, [r, c, sy * sx]), 2)
            corners.append(ew.mul(value, layout.reshape(ew.cast(weight, x.dtype),
                                                        [r, 1, sy * sx])))
    if mode == "avg":
        samples = ew.add(ew.add(corners[0], corners[1]), ew.add(corners[2], corners[3]))
    else:
        samples = ew.maximum(ew.maximum(corners[0], corners[1]),
                             ew.maximum(corners[2], corners[3]))
    grid = layout.reshape(samples, [r, c, ph, ratio, pw, ratio])
    if mode == "avg":
        return [ew.div(reduce.sum(grid, (3, 5)), float(ratio * ratio))]
    return [reduce.max(grid, (3, 5))]


def _bilinear_taps(pos: Node, size: int) -> list[tuple[Node, Node]]:
    """The two taps (int64 index, weight) of pixel coordinates `pos` along an axis of
    `size`; a tap outside the image weighs 0 (zero padding)."""
    low = ew.floor(pos)
    frac = ew.sub(pos, low)
    taps = []
    for index, weight in ((low, ew.sub(1.0, frac)), (ew.add(low, 1.0), frac)):
        inside = ew.logical_and(ew.greater_equal(index, 0.0), ew.less_equal(index, size - 1.0))
        taps.append((ew.cast(ew.clip(index, 0.0, size - 1.0), "int64"),
                     ew.where(inside, weight, 0.0)))
    return taps


@rule("DeformConv", 19)
def _deform_conv(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """2-D deformable convolution: kernel tap (u, v) of output (i, j) reads X at
    (i·stride - pad + u·dilation + offset_y, j·stride - pad + v·dilation + offset_x) by
    bilinear interpolation (zero outside), times the optional mask; the samples of each
    offset group's channels are then contracted with W per group as a batched matmul."""
    x, w, off = ctx.node(inputs[0]), ctx.node(inputs[1]), ctx.node(inputs[2])
    bias = inputs[3] if len(inputs) > 3 else None
    mask = inputs[4] if len(inputs) > 4 else None
    if x.ndim != 4 or w.ndim != 4 or off.ndim != 4:
        raise ctx.error(f"X {tuple(x.shape)}, W {tuple(w.shape)}, offset {tuple(off.shape)}: "
                        "only 2-D deformable convolution (rank-4 tensors) is supported")
    n, ic, h, wd = x.shape
    oc, icg, kh, kw = w.shape
    group, og = int(attrs.get("group", 1)), int(attrs.get("offset_group", 1))
    oh, ow = off.shape[2], off.shape[3]
    if ic != icg * group or oc % group or ic % og or off.shape[1] != og * kh * kw * 2:
        raise ctx.error(f"X {tuple(x.shape)}, W {tuple(w.shape)}, offset "
                        f"{tuple(off.shape)} do not fit group {group}, offset_group {og}")
    sh, sw = _spatial_attr(ctx, attrs, "strides", 2, 1)
    dh, dw = _spatial_attr(ctx, attrs, "dilations", 2, 1)
    pads = [int(v) for v in attrs.get("pads", [0, 0, 0, 0])]
    k, p = kh * kw, oh * ow
    offsets = layout.reshape(off, [n, og, k, 2, p])
    base_y = (np.arange(kh)[:, None, None, None] * dh + np.arange(oh)[None, None, :, None] * sh
              - pads[0]) + np.zeros((kh, kw, oh, ow))
    base_x = (np.arange(kw)[None, :, None, None] * dw + np.arange(ow)[None, None, None, :] * sw
              - pads[1]) + np.zeros((kh, kw, oh, ow))
    pos = []
    for axis, base in ((0, base_y), (1, base_x)):
        shift = layout.reshape(slicing.slice(offsets, [axis], [axis + 1], axes=[3]),
                               [n, og, k, p])
        pos.append(ew.add(shift, gb.constant(base.reshape(k, p).astype(x.dtype.np))))
    image = layout.reshape(x, [n, og, ic // og, h * wd])
    sampled: Node | None = None
    for yi, wy in _bilinear_taps(pos[0], h):
        for xi, wx in _bilinear_taps(pos[1], wd):
            index = layout.reshape(ew.add(ew.mul(yi, wd), xi), [n, og, 1, k * p])
            value = gather.take_along_axis(
                image, layout.broadcast_to(index, [n, og, ic // og, k * p]), 3)
            term = ew.mul(value, layout.reshape(ew.mul(wy, wx), [n, og, 1, k * p]))
            sampled = term if sampled is None else ew.add(sampled, term)
    assert sampled is not None
    if mask is not None:
        sampled = ew.mul(sampled, layout.reshape(ctx.node(mask), [n, og, 1, k * p]))
    cols = layout.reshape(sampled, [n, group, icg * k, p])
    kernel = layout.reshape(w, [1, group, oc // group, icg * k])
    y = layout.reshape(linalg.matmul(kernel, cols), [n, oc, oh, ow])
    if bias is not None:
        y = ew.add(y, layout.reshape(ctx.node(bias), [1, oc, 1, 1]))
    return [y]
