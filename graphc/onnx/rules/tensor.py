"""Shape ONNX ops: Constant, Shape, Size, Reshape, Flatten, Squeeze, Unsqueeze, Transpose,
Expand, Tile, ConstantOfShape, Range, NonZero and Unique (whose output shapes depend on their
input's values), OptionalHasElement and OptionalGetElement on tensors (indexing and joining
ops are in `indexing`). Each folds with numpy
when its data is known at import, so a model's shape arithmetic never reaches the graph;
shapes and axes that steer an op must be known then (graphc graphs have static shapes).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from graphc.onnx.convert import Context, Value, axis_of, ints, rule
from graphc.onnx.model import tensor_array
from graphc.ops import layout

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
    # Scalars (ONNX's reference takes one-element tensors too, as expanded functions pass).
    start, limit, delta = (ctx.need_known(v, what) for v, what in
                           zip(inputs[:3], ("start", "limit", "delta")))
    if start.size != 1 or limit.size != 1 or delta.size != 1:
        raise ctx.error("start, limit and delta must be scalars")
    start, limit, delta = start.reshape(()), limit.reshape(()), delta.reshape(())
    if float(delta) == 0:
        raise ctx.error("delta is 0")
    n = max(int(np.ceil((float(limit) - float(start)) / float(delta))), 0)
    return [(start + np.arange(n) * delta).astype(start.dtype)]


# --- ops whose output shape depends on the values ---------------------------------------------

@rule("NonZero", 9)
def _nonzero(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """The indices (rank, count) of the non-zero elements; the count depends on the
    values, so x must be known at import."""
    x = ctx.need_known(inputs[0], "X")
    if x.ndim == 0:
        return [np.zeros((0, int(np.count_nonzero(x))), np.int64)]
    return [np.vstack(np.nonzero(x)).astype(np.int64)]


@rule("Unique", 11)
def _unique(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """The distinct elements (or slices along `axis`) of X, sorted or in order of first
    occurrence, with their first indices, the inverse indices and the counts; the number
    of distinct values depends on the values, so X must be known at import."""
    x = ctx.need_known(inputs[0], "X")
    axis = attrs.get("axis")
    if axis is not None:
        axis = axis_of(int(axis), x.ndim, ctx)
    y, first, inverse, counts = np.unique(x, True, True, True, axis=axis)
    if not int(attrs.get("sorted", 1)):
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        first, counts, inverse = first[order], counts[order], rank[inverse.reshape(-1)]
        y = np.take(x.reshape(-1) if axis is None else x, first, axis=axis or 0)
    return [np.asarray(y, x.dtype), first.astype(np.int64),
            inverse.reshape(-1).astype(np.int64), counts.astype(np.int64)]


# --- optional values (tensors only; graphc has no optional or sequence types) ------------------

@rule("OptionalHasElement", 15)
def _optional_has_element(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """False for a missing input, true for a tensor (an empty optional input cannot reach
    graphc: the importer takes tensor inputs only)."""
    present = bool(inputs) and inputs[0] is not None
    return [np.array(present)]


@rule("OptionalGetElement", 15)
def _optional_get_element(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """The tensor itself (a tensor is an optional that holds it)."""
    if not inputs or inputs[0] is None:
        raise ctx.error("the optional input is empty (missing)")
    return [inputs[0]]
