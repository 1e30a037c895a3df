"""Indexing and joining ONNX ops: Concat, Split, Slice, Gather, GatherElements, Pad (constant,
reflect, edge, wrap), ReverseSequence, Trilu, OneHot, ScatterElements and ScatterND. Like
`tensor`'s ops they fold with numpy when their data is known at import; indices, starts and
pads that steer them must be known then. Scatters with reduction none or add are graphc
scatter-adds; mul, max and min select through a dense (updates x positions) mask.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from graphc import builder as gb
from graphc.ir import Node
from graphc.onnx.convert import Context, Value, all_known, axis_of, ints, rule
from graphc.ops import elementwise as ew
from graphc.ops import gather, join, layout, reduce, sequence, slicing

Inputs = list[Value | None]

@rule("Concat", 4)
def _concat(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    xs = [x for x in inputs if x is not None]
    if not xs:
        raise ctx.error("needs at least one input")
    if "axis" not in attrs:
        raise ctx.error("attribute 'axis' is missing")
    axis = axis_of(int(attrs["axis"]), len(xs[0].shape), ctx)
    if all_known(xs):
        return [np.concatenate(xs, axis=axis)]
    xs = [x for x in xs if x.shape[axis] != 0]
    if len(xs) == 1:
        return [ctx.node(xs[0])]
    return [join.concat([ctx.node(x) for x in xs], axis)]


def _split_sizes(ctx: Context, size: int, inputs: Inputs, attrs: dict[str, Any],
                 outputs: int, split_from_input: bool) -> list[int]:
    split = None
    if split_from_input and len(inputs) > 1 and inputs[1] is not None:
        split = ints(ctx.need_known(inputs[1], "split"))
    elif not split_from_input and "split" in attrs:
        split = [int(s) for s in attrs["split"]]
    if split is not None:
        if sum(split) != size:
            raise ctx.error(f"split sizes {split} do not add up to {size}")
        return split
    n = int(attrs.get("num_outputs", outputs))
    chunk = -(-size // n)
    sizes = [chunk] * (n - 1) + [size - chunk * (n - 1)]
    if sizes[-1] < 0:
        raise ctx.error(f"cannot split {size} into {n} parts")
    return sizes


def _split(ctx: Context, inputs: Inputs, attrs: dict[str, Any], from_input: bool
           ) -> list[Value]:
    x = inputs[0]
    if x is None:
        raise ctx.error("input is missing")
    axis = axis_of(int(attrs.get("axis", 0)), len(x.shape), ctx)
    sizes = _split_sizes(ctx, x.shape[axis], inputs, attrs, ctx.num_outputs, from_input)
    outs: list[Value] = []
    start = 0
    for s in sizes:
        stops = [None] * len(x.shape)
        starts: list[int | None] = [None] * len(x.shape)
        starts[axis], stops[axis] = start, start + s
        if isinstance(x, np.ndarray):
            index = tuple(slice(a, b) for a, b in zip(starts, stops))
            outs.append(x[index].copy())
        else:
            outs.append(slicing.slice(x, starts, stops))
        start += s
    return outs


@rule("Split", 2)
def _split2(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    return _split(ctx, inputs, attrs, False)


@rule("Split", 13)
def _split13(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    return _split(ctx, inputs, attrs, True)


def _slice(ctx: Context, x: Value | None, starts: list[int], ends: list[int],
           axes: list[int] | None, steps: list[int] | None) -> Value:
    if x is None:
        raise ctx.error("input 'data' is missing")
    rank = len(x.shape)
    axes = list(range(len(starts))) if axes is None else [axis_of(a, rank, ctx) for a in axes]
    steps = [1] * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ctx.error("starts, ends, axes and steps differ in length")
    index: list[slice] = [slice(None)] * rank
    big = 2 ** 62
    for a, s, e, st in zip(axes, starts, ends, steps):
        if st == 0:
            raise ctx.error("a step of 0")
        # ONNX clamps like Python does; INT64_MAX/MIN mean "to the end".
        index[a] = slice(max(min(s, big), -big), max(min(e, big), -big), st)
    if isinstance(x, np.ndarray):
        return x[tuple(index)].copy()
    starts_f = [index[a].start for a in range(rank)]
    stops_f = [index[a].stop for a in range(rank)]
    steps_f = [index[a].step for a in range(rank)]
    return slicing.slice(x, starts_f, stops_f, steps_f)


@rule("Slice", 1)
def _slice1(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    axes = [int(a) for a in attrs["axes"]] if "axes" in attrs else None
    return [_slice(ctx, inputs[0], [int(s) for s in attrs.get("starts", [])],
                   [int(e) for e in attrs.get("ends", [])], axes, None)]


@rule("Slice", 10)
def _slice10(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    def opt(i: int, what: str) -> list[int] | None:
        if len(inputs) > i and inputs[i] is not None:
            return ints(ctx.need_known(inputs[i], what))
        return None
    starts = ints(ctx.need_known(inputs[1], "starts"))
    ends = ints(ctx.need_known(inputs[2], "ends"))
    return [_slice(ctx, inputs[0], starts, ends, opt(3, "axes"), opt(4, "steps"))]


@rule("Gather", 1)
def _gather(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x, idx = inputs[0], inputs[1]
    if x is None or idx is None:
        raise ctx.error("data or indices missing")
    axis = axis_of(int(attrs.get("axis", 0)), len(x.shape), ctx)
    if isinstance(idx, np.ndarray):
        bad = (idx < -x.shape[axis]) | (idx >= x.shape[axis])
        if bad.any():
            raise ctx.error(f"index {int(idx[bad].reshape(-1)[0])} out of range for axis "
                            f"{axis} of size {x.shape[axis]}")
        if isinstance(x, np.ndarray):
            return [np.take(x, idx, axis=axis)]
    return [gather.take(ctx.node(x), ctx.node(idx), axis)]


@rule("GatherElements", 11)
def _gather_elements(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x, idx = ctx.node(inputs[0]), ctx.node(inputs[1])
    axis = axis_of(int(attrs.get("axis", 0)), x.ndim, ctx)
    # Negative indices count from the end, as in Gather.
    idx = ew.where(ew.less(idx, 0), ew.add(idx, x.shape[axis]), idx)
    return [gather.take_along_axis(x, idx, axis)]


@rule("Pad", 2)
def _pad2(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    pads = [int(p) for p in attrs.get("pads", [])]
    return [_pad(ctx, inputs[0], pads, float(attrs.get("value", 0.0)),
                 str(attrs.get("mode", "constant")), None)]


@rule("Pad", 11)
def _pad11(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    pads = ints(ctx.need_known(inputs[1], "pads"))
    value = 0.0
    if len(inputs) > 2 and inputs[2] is not None:
        v = ctx.need_known(inputs[2], "constant_value")
        value = v.reshape(-1)[0].item() if v.size else 0.0
    axes = None
    if len(inputs) > 3 and inputs[3] is not None:
        axes = ints(ctx.need_known(inputs[3], "axes"))
    return [_pad(ctx, inputs[0], pads, value, str(attrs.get("mode", "constant")), axes)]


def _pad(ctx: Context, x: Value | None, pads: list[int], value: Any, mode: str,
         axes: list[int] | None) -> Value:
    if x is None:
        raise ctx.error("input is missing")
    rank = len(x.shape)
    axes = list(range(rank)) if axes is None else [axis_of(a, rank, ctx) for a in axes]
    if len(pads) != 2 * len(axes):
        raise ctx.error(f"{len(pads)} pads for {len(axes)} axes")
    width = [(0, 0)] * rank
    for i, a in enumerate(axes):
        width[a] = (pads[i], pads[i + len(axes)])
    if any(lo < 0 or hi < 0 for lo, hi in width):
        # Negative pads crop.
        starts = [max(-lo, 0) for lo, _ in width]
        stops = [d - max(-hi, 0) for (_, hi), d in zip(width, x.shape)]
        x = (x[tuple(slice(a, b) for a, b in zip(starts, stops))].copy()
             if isinstance(x, np.ndarray) else slicing.slice(x, starts, stops))
        width = [(max(lo, 0), max(hi, 0)) for lo, hi in width]
    if mode == "constant":
        if isinstance(x, np.ndarray):
            return np.pad(x, width, constant_values=value)
        return slicing.pad(x, width, value) if any(w != (0, 0) for w in width) else x
    if mode in ("reflect", "edge", "wrap"):
        if isinstance(x, np.ndarray):
            return np.pad(x, width, mode=mode)
        return _pad_gather(ctx, x, width, mode)
    raise ctx.error(f"mode '{mode}' is not supported (constant, reflect, edge, wrap)")


def _pad_gather(ctx: Context, x: Node, width: list[tuple[int, int]], mode: str) -> Node:
    """Reflect/edge/wrap padding as a gather of source indices along each padded axis."""
    out = x
    for a, (lo, hi) in enumerate(width):
        if lo == 0 and hi == 0:
            continue
        n = x.shape[a]
        src = np.arange(-lo, n + hi)
        if mode == "edge":
            src = np.clip(src, 0, n - 1)
        elif mode == "wrap":
            src = src % n
        else:
            if n == 1:
                src = np.zeros_like(src)
            else:
                period = 2 * (n - 1)
                src = np.abs(src) % period
                src = np.where(src >= n, period - src, src)
        out = gather.take(out, gb.constant(src.astype(np.int64)), a)
    return out


@rule("ReverseSequence", 10)
def _reverse_sequence(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """Each batch row's first sequence_lens[b] steps along time_axis reversed, the rest
    kept: a gather along the time axis of index len - 1 - t (t < len) or t."""
    x, lens = ctx.node(inputs[0]), ctx.node(inputs[1])
    batch_axis = axis_of(int(attrs.get("batch_axis", 1)), x.ndim, ctx)
    time_axis = axis_of(int(attrs.get("time_axis", 0)), x.ndim, ctx)
    if batch_axis == time_axis or tuple(lens.shape) != (x.shape[batch_axis],):
        raise ctx.error(f"batch_axis {batch_axis}, time_axis {time_axis}, sequence_lens "
                        f"{tuple(lens.shape)} for input {tuple(x.shape)}")
    shape = [1] * x.ndim
    shape[time_axis] = x.shape[time_axis]
    t = gb.constant(np.arange(x.shape[time_axis], dtype=np.int64).reshape(shape))
    at = [1] * x.ndim
    at[batch_axis] = x.shape[batch_axis]
    n = layout.reshape(ew.cast(lens, "int64") if lens.dtype.name != "int64" else lens, at)
    index = ew.where(ew.less(t, n), ew.sub(ew.sub(n, 1), t), ew.add(t, ew.mul(n, 0)))
    return [gather.take_along_axis(x, index, time_axis)]


@rule("Trilu", 14)
def _trilu(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x = inputs[0]
    if x is None or len(x.shape) < 2:
        raise ctx.error("input of rank >= 2 needed")
    k = 0
    if len(inputs) > 1 and inputs[1] is not None:
        k = int(ctx.need_known(inputs[1], "k").reshape(-1)[0])
    upper = bool(attrs.get("upper", 1))
    if isinstance(x, np.ndarray):
        return [np.triu(x, k) if upper else np.tril(x, k)]
    # The mask is iota-computed (fused into the select), not a (rows, cols) constant.
    return [(sequence.triu if upper else sequence.tril)(ctx.node(x), k)]


@rule("OneHot", 11)
def _one_hot(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    idx = ctx.node(inputs[0])
    depth = int(ctx.need_known(inputs[1], "depth").reshape(-1)[0])
    values = ctx.need_known(inputs[2], "values").reshape(-1)
    axis = int(attrs.get("axis", -1))
    if idx.dtype.is_float:
        idx = ew.cast(ew.floor(idx), "int64")
    idx = ew.where(ew.less(idx, 0), ew.add(idx, depth), idx)
    hot = gather.one_hot(idx, depth, "bool", axis)
    dtype = values.dtype
    return [ew.where(hot, gb.constant(values[1:2].reshape(()).astype(dtype)),
                     gb.constant(values[0:1].reshape(()).astype(dtype)))]


def _scatter_result(ctx: Context, data: Node, scattered: Node, count: Node,
                    reduction: str) -> Node:
    """ONNX's reductions none and add over the positions `count` marks (scatter-adds of the
    updates and of ones): none replaces them (duplicates are undefined in ONNX), add adds."""
    if reduction == "add":
        return ew.add(data, scattered)
    return ew.where(ew.greater(count, 0.0), scattered, data)


# The largest updates x positions product the dense max/min/mul scatter builds.
_DENSE_LIMIT = 1 << 24


def _scatter_dense(ctx: Context, data: Node, lin: Node, upd: Node, reduction: str) -> Node:
    """Reductions max, min and mul: data (P, R) combined with the updates (n, R) that the
    flat positions `lin` (n,) send to each row, through an (n, P, R) selection (graphc has
    no scatter-max), so every update of a row takes part, duplicates included."""
    if reduction not in ("max", "min", "mul"):
        raise ctx.error(f"reduction '{reduction}' is not one of none, add, mul, max, min")
    (n, r), p = upd.shape, data.shape[0]
    if n * p * r > _DENSE_LIMIT:
        raise ctx.error(f"reduction '{reduction}' of {n} updates into {p} positions: more "
                        f"than the {_DENSE_LIMIT} elements graphc's dense scatter builds")
    hit = ew.equal(layout.reshape(lin, [n, 1]), gb.constant(np.arange(p, dtype=np.int64)))
    if reduction == "mul":
        fill: float | int = 1
    elif data.dtype.is_float:
        fill = -np.inf if reduction == "max" else np.inf
    else:
        info = np.iinfo(data.dtype.np)
        fill = int(info.min if reduction == "max" else info.max)
    picked = ew.where(layout.reshape(hit, [n, p, 1]), layout.reshape(upd, [n, 1, r]),
                      gb.constant(np.asarray(fill, data.dtype.np)))
    combine = {"max": (reduce.max, ew.maximum), "min": (reduce.min, ew.minimum),
               "mul": (reduce.prod, ew.mul)}[reduction]
    touched = layout.reshape(reduce.max(ew.cast(hit, "int32"), 0), [p, 1])
    return ew.where(ew.greater(touched, 0), combine[1](data, combine[0](picked, 0)), data)


@rule("Scatter", 9)  # deprecated in opset 11 for ScatterElements, the same op
@rule("ScatterElements", 11)
def _scatter_elements(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    data, idx, upd = (ctx.node(v) for v in inputs[:3])
    axis = axis_of(int(attrs.get("axis", 0)), data.ndim, ctx)
    idx = ew.where(ew.less(idx, 0), ew.add(idx, data.shape[axis]), idx)
    reduction = str(attrs.get("reduction", "none"))
    if reduction not in ("none", "add"):
        # Each update's flat position in data: its own coordinates, `idx` along the axis.
        strides = np.array([int(np.prod(data.shape[d + 1:], dtype=np.int64))
                            for d in range(data.ndim)], np.int64)
        coords = np.indices(tuple(upd.shape), dtype=np.int64)
        fixed = sum(coords[d] * strides[d] for d in range(data.ndim) if d != axis)
        idx64 = ew.cast(idx, "int64") if idx.dtype.name != "int64" else idx
        lin = ew.add(gb.constant(np.asarray(fixed, np.int64)), ew.mul(idx64, int(strides[axis])))
        size = int(np.prod(data.shape, dtype=np.int64))
        count = int(np.prod(upd.shape, dtype=np.int64))
        out = _scatter_dense(ctx, layout.reshape(data, [size, 1]), layout.reshape(lin, [count]),
                             layout.reshape(upd, [count, 1]), reduction)
        return [layout.reshape(out, list(data.shape))]
    fdt = "float64" if data.dtype.name == "float64" else "float32"
    scattered = gather.take_along_axis_grad(upd, idx, axis, data.shape)
    count_n = gather.take_along_axis_grad(ew.add(ew.mul(ew.cast(upd, fdt), 0.0), 1.0), idx,
                                          axis, data.shape)
    return [_scatter_result(ctx, data, scattered, count_n, reduction)]


@rule("ScatterND", 11)
def _scatter_nd(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    data, idx, upd = (ctx.node(v) for v in inputs[:3])
    k = idx.shape[-1]
    if k > data.ndim:
        raise ctx.error(f"index tuples of length {k} for rank {data.ndim}")
    lead = int(np.prod(data.shape[:k], dtype=np.int64))
    rest = list(data.shape[k:])
    n = int(np.prod(idx.shape[:-1], dtype=np.int64))
    strides = [int(np.prod(data.shape[i + 1:k], dtype=np.int64)) for i in range(k)]
    idx = ew.cast(idx, "int64") if idx.dtype.name != "int64" else idx
    dims = gb.constant(np.array(data.shape[:k], np.int64))
    idx = ew.where(ew.less(idx, 0), ew.add(idx, dims), idx)
    lin = layout.reshape(reduce.sum(ew.mul(idx, gb.constant(np.array(strides, np.int64))), -1),
                         [n])
    flat_upd = layout.reshape(upd, [n, *rest])
    reduction = str(attrs.get("reduction", "none"))
    if reduction not in ("none", "add"):
        width = int(np.prod(rest, dtype=np.int64))
        out = _scatter_dense(ctx, layout.reshape(data, [lead, width]), lin,
                             layout.reshape(upd, [n, width]), reduction)
        return [layout.reshape(out, list(data.shape))]
    fdt = "float64" if data.dtype.name == "float64" else "float32"
    scattered = layout.reshape(gather.take_grad(flat_upd, lin, 0, lead), list(data.shape))
    ones = ew.add(ew.mul(ew.cast(flat_upd, fdt), 0.0), 1.0)
    count = layout.reshape(gather.take_grad(ones, lin, 0, lead), list(data.shape))
    return [_scatter_result(ctx, data, scattered, count, reduction)]
