"""Shape and data-movement ONNX ops: Constant, Shape, Reshape, Transpose, Concat, Slice,
Gather, Expand, Tile, Pad, ... Each folds with numpy when its data is known at import, so a
model's shape arithmetic never reaches the graph; shapes, axes and indices that steer an op
must be known then (graphc graphs have static shapes).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from graphc import builder as gb
from graphc.ir import Node
from graphc.onnx.convert import Context, Value, all_known, axis_of, ints, rule
from graphc.onnx.model import tensor_array
from graphc.ops import elementwise as ew
from graphc.ops import gather, join, layout, slicing

Inputs = list[Value | None]


@rule("Constant", 1)
def _constant(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    if "value" in attrs:
        value = attrs["value"]
        return [value if isinstance(value, np.ndarray) else tensor_array(value, ctx.node_name)]
    if "value_float" in attrs:
        return [np.array(attrs["value_float"], dtype=np.float32)]
    if "value_floats" in attrs:
        return [np.array(attrs["value_floats"], dtype=np.float32)]
    if "value_int" in attrs:
        return [np.array(attrs["value_int"], dtype=np.int64)]
    if "value_ints" in attrs:
        return [np.array(attrs["value_ints"], dtype=np.int64)]
    raise ctx.error("only tensor, float(s) and int(s) values are supported (sparse tensors "
                    "and strings have no graphc type)")


@rule("Shape", 1)
def _shape(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x = inputs[0]
    if x is None:
        raise ctx.error("input 'data' is missing")
    shape = list(x.shape)
    rank = len(shape)
    start = int(attrs.get("start", 0))
    end = attrs.get("end")
    start = min(max(start + rank if start < 0 else start, 0), rank)
    stop = rank if end is None else int(end)
    stop = min(max(stop + rank if stop < 0 else stop, 0), rank)
    return [np.array(shape[start:stop], dtype=np.int64)]


@rule("Size", 1)
def _size(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x = inputs[0]
    if x is None:
        raise ctx.error("input 'data' is missing")
    return [np.array(int(np.prod(x.shape, dtype=np.int64)), dtype=np.int64)]


def _reshape_target(ctx: Context, in_shape: tuple[int, ...], spec: list[int],
                    allowzero: bool) -> list[int]:
    out = []
    for i, d in enumerate(spec):
        if d == 0 and not allowzero:
            if i >= len(in_shape):
                raise ctx.error(f"shape entry {i} is 0 (copy) but the input has rank "
                                f"{len(in_shape)}")
            out.append(in_shape[i])
        else:
            out.append(d)
    if out.count(-1) > 1:
        raise ctx.error(f"shape {spec} has more than one -1")
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1], dtype=np.int64))
        total = int(np.prod(in_shape, dtype=np.int64))
        if known == 0 or total % known:
            raise ctx.error(f"cannot reshape {in_shape} to {spec}")
        out[out.index(-1)] = total // known
    if int(np.prod(out, dtype=np.int64)) != int(np.prod(in_shape, dtype=np.int64)):
        raise ctx.error(f"cannot reshape {in_shape} to {spec}")
    return out


def _reshape(ctx: Context, x: Value | None, shape: list[int]) -> Value:
    if x is None:
        raise ctx.error("input 'data' is missing")
    if isinstance(x, np.ndarray):
        return x.reshape(shape)
    return x if tuple(x.shape) == tuple(shape) else layout.reshape(x, shape)


@rule("Reshape", 5)
def _reshape5(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x = inputs[0]
    spec = ints(ctx.need_known(inputs[1], "shape"))
    assert x is not None
    target = _reshape_target(ctx, tuple(x.shape), spec, bool(attrs.get("allowzero", 0)))
    return [_reshape(ctx, x, target)]


@rule("Flatten", 1)
def _flatten(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x = inputs[0]
    if x is None:
        raise ctx.error("input is missing")
    shape = tuple(x.shape)
    axis = int(attrs.get("axis", 1))
    if axis < 0:
        axis += len(shape)
    if not 0 <= axis <= len(shape):
        raise ctx.error(f"axis {attrs.get('axis')} out of range for rank {len(shape)}")
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    return [_reshape(ctx, x, [outer, int(np.prod(shape[axis:], dtype=np.int64))])]


def _axes_arg(ctx: Context, inputs: Inputs, attrs: dict[str, Any], from_input: bool
              ) -> list[int] | None:
    if from_input:
        if len(inputs) > 1 and inputs[1] is not None:
            return ints(ctx.need_known(inputs[1], "axes"))
        return None
    return [int(a) for a in attrs["axes"]] if "axes" in attrs else None


def _squeeze(ctx: Context, inputs: Inputs, axes: list[int] | None) -> list[Value]:
    x = inputs[0]
    if x is None:
        raise ctx.error("input is missing")
    shape = tuple(x.shape)
    rank = len(shape)
    if axes is None:
        axes = [i for i, d in enumerate(shape) if d == 1]
    axes = sorted({axis_of(a, rank, ctx) for a in axes})
    for a in axes:
        if shape[a] != 1:
            raise ctx.error(f"cannot squeeze axis {a} of size {shape[a]}")
    target = [d for i, d in enumerate(shape) if i not in axes]
    return [_reshape(ctx, x, target)]


@rule("Squeeze", 1)
def _squeeze1(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    return _squeeze(ctx, inputs, _axes_arg(ctx, inputs, attrs, False))


@rule("Squeeze", 13)
def _squeeze13(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    return _squeeze(ctx, inputs, _axes_arg(ctx, inputs, attrs, True))


def _unsqueeze(ctx: Context, inputs: Inputs, axes: list[int] | None) -> list[Value]:
    x = inputs[0]
    if x is None or axes is None:
        raise ctx.error("input or axes missing")
    shape = list(x.shape)
    rank = len(shape) + len(axes)
    norm = sorted(axis_of(a, rank, ctx) for a in axes)
    if len(set(norm)) != len(norm):
        raise ctx.error(f"repeated axes {axes}")
    for a in norm:
        shape.insert(a, 1)
    return [_reshape(ctx, x, shape)]


@rule("Unsqueeze", 1)
def _unsqueeze1(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    return _unsqueeze(ctx, inputs, _axes_arg(ctx, inputs, attrs, False))


@rule("Unsqueeze", 13)
def _unsqueeze13(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    return _unsqueeze(ctx, inputs, _axes_arg(ctx, inputs, attrs, True))


@rule("Transpose", 1)
def _transpose(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x = inputs[0]
    if x is None:
        raise ctx.error("input is missing")
    rank = len(x.shape)
    perm = [int(p) for p in attrs.get("perm", list(range(rank))[::-1])]
    if sorted(perm) != list(range(rank)):
        raise ctx.error(f"perm {perm} is not a permutation of {rank} axes")
    if isinstance(x, np.ndarray):
        return [np.transpose(x, perm).copy()]
    return [x if perm == list(range(rank)) else layout.transpose(x, perm)]


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


def _broadcast_shape(ctx: Context, a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(a, b))
    except ValueError:
        raise ctx.error(f"shapes {a} and {b} do not broadcast") from None


@rule("Expand", 8)
def _expand(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x = inputs[0]
    if x is None:
        raise ctx.error("input is missing")
    target = _broadcast_shape(ctx, tuple(x.shape),
                              tuple(ints(ctx.need_known(inputs[1], "shape"))))
    if isinstance(x, np.ndarray):
        return [np.broadcast_to(x, target).copy()]
    return [x if tuple(x.shape) == target else layout.broadcast_to(x, target)]


@rule("Tile", 6)
def _tile(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x = inputs[0]
    if x is None:
        raise ctx.error("input is missing")
    reps = ints(ctx.need_known(inputs[1], "repeats"))
    shape = list(x.shape)
    if len(reps) != len(shape) or any(r < 0 for r in reps):
        raise ctx.error(f"repeats {reps} do not match rank {len(shape)}")
    if isinstance(x, np.ndarray):
        return [np.tile(x, reps)]
    # (d0, d1, ...) -> (1, d0, 1, d1, ...) broadcast to (r0, d0, r1, d1, ...) -> (r0·d0, ...)
    n = ctx.node(x)
    inter = [v for d in shape for v in (1, d)]
    wide = [v for r, d in zip(reps, shape) for v in (r, d)]
    out = layout.broadcast_to(layout.reshape(n, inter), wide)
    return [layout.reshape(out, [r * d for r, d in zip(reps, shape)])]


@rule("ConstantOfShape", 9)
def _constant_of_shape(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    shape = ints(ctx.need_known(inputs[0], "input"))
    if any(d < 0 for d in shape):
        raise ctx.error(f"negative dimension in {shape}")
    value = attrs.get("value")
    fill = (np.zeros(1, np.float32) if value is None
            else (value if isinstance(value, np.ndarray) else tensor_array(value, "value")))
    return [np.full(shape, fill.reshape(-1)[0], dtype=fill.dtype)]


@rule("Range", 11)
def _range(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    start = ctx.need_known(inputs[0], "start")
    limit = ctx.need_known(inputs[1], "limit")
    delta = ctx.need_known(inputs[2], "delta")
    if float(delta) == 0:
        raise ctx.error("delta is 0")
    n = max(int(np.ceil((float(limit) - float(start)) / float(delta))), 0)
    return [(start + np.arange(n) * delta).astype(start.dtype)]


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
    if mode in ("reflect", "edge"):
        if isinstance(x, np.ndarray):
            return np.pad(x, width, mode=mode)
        return _pad_gather(ctx, x, width, mode)
    raise ctx.error(f"mode '{mode}' is not supported (constant, reflect, edge)")


def _pad_gather(ctx: Context, x: Node, width: list[tuple[int, int]], mode: str) -> Node:
    """Reflect/edge padding as a gather of source indices along each padded axis."""
    out = x
    for a, (lo, hi) in enumerate(width):
        if lo == 0 and hi == 0:
            continue
        n = x.shape[a]
        src = np.arange(-lo, n + hi)
        if mode == "edge":
            src = np.clip(src, 0, n - 1)
        else:
            if n == 1:
                src = np.zeros_like(src)
            else:
                period = 2 * (n - 1)
                src = np.abs(src) % period
                src = np.where(src >= n, period - src, src)
        out = gather.take(out, gb.constant(src.astype(np.int64)), a)
    return out


@rule("Trilu", 14)
def _trilu(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x = inputs[0]
    if x is None or len(x.shape) < 2:
        raise ctx.error("input of rank >= 2 needed")
    k = 0
    if len(inputs) > 1 and inputs[1] is not None:
        k = int(ctx.need_known(inputs[1], "k").reshape(-1)[0])
    rows, cols = x.shape[-2], x.shape[-1]
    upper = bool(attrs.get("upper", 1))
    mask = np.triu(np.ones((rows, cols), np.bool_), k) if upper else \
        np.tril(np.ones((rows, cols), np.bool_), k)
    if isinstance(x, np.ndarray):
        return [np.where(mask, x, np.zeros_like(x))]
    n = ctx.node(x)
    zero = ew.sub(n, n) if not n.dtype.is_float else ew.mul(n, 0.0)
    return [ew.where(gb.constant(mask), n, zero)]


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
