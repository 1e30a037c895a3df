"""Region ops: slice, reverse, pad.

    slice(x, starts, stops, steps, axes)   Python slice semantics per axis; stored resolved
                                           (0 <= start <= stop <= dim, step >= 1, full rank)
    reverse(x, axis)                       numpy.flip
    pad(x, pad_width, value)               numpy.pad's constant mode; the stored primitive
                                           also has interior padding

Gradient closure: slice and pad (with interior padding for the steps) are each other's
adjoint, and reverse is its own.
"""

from __future__ import annotations

import builtins
import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from graphc.builder import Operand, apply
from graphc.errors import AttrError
from graphc.ir import Attrs, DType, Node, TensorType
from graphc.ir.attrs import AttrSpec, Kind
from graphc.ir.opdef import OpDef
from graphc.ops.common import as_node, int_tuple, normalize_axes, normalize_axis, resolve, shape_op

__all__ = ["pad", "pad_interior", "reverse", "slice"]

OPS: list[OpDef] = []
_op = functools.partial(shape_op, OPS)

_pyslice = builtins.slice  # `slice` below is the op builder


def _canonical_axes(value: Any, x: TensorType, what: str = "axes") -> tuple[int, ...]:
    axes = int_tuple(value, what)
    if normalize_axes(axes, x.ndim) != axes:
        raise AttrError(f"{what} attribute {axes} must be sorted non-negative axes of x {x}")
    return axes


# --- slice --------------------------------------------------------------------------------

def _slice_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    x = types[0]
    starts = int_tuple(attrs["starts"], "starts", x.ndim)
    stops = int_tuple(attrs["stops"], "stops", x.ndim)
    steps = int_tuple(attrs["steps"], "steps", x.ndim)
    shape = []
    for axis, (a, b, s, d) in enumerate(zip(starts, stops, steps, x.shape)):
        if not (0 <= a <= b <= d and s >= 1):
            raise AttrError(f"axis {axis} of x {x}: need 0 <= start <= stop <= {d} and "
                            f"step >= 1, got start {a}, stop {b}, step {s}")
        shape.append((b - a + s - 1) // s)
    return TensorType(tuple(shape), x.dtype)


def _slice_ref(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    index = tuple(_pyslice(*t) for t in zip(attrs["starts"], attrs["stops"], attrs["steps"]))
    return arrays[0][index]


def _slice_grad(n: Node, g: Node) -> list[Node | None]:
    # Scatter g back: `start` zeros before, step-1 zeros between, the remainder after.
    pads = []
    for a, s, d, c in zip(n.attrs["starts"], n.attrs["steps"], n.inputs[0].shape, n.shape):
        used = c + builtins.max(c - 1, 0) * (s - 1)
        pads.append((a, d - a - used, s - 1))
    return [_pad(g, tuple(pads), 0.0)]


SLICE = _op("slice", 1, _slice_infer, _slice_ref, _slice_grad,
            doc="x[start:stop:step] per axis (resolved: 0 <= start <= stop <= dim, step >= 1)",
            attrs=(AttrSpec("starts", Kind.INTS, low=0), AttrSpec("stops", Kind.INTS, low=0),
                   AttrSpec("steps", Kind.INTS, low=1)))


def _slice(x: Node, starts: tuple[int, ...], stops: tuple[int, ...],
           steps: tuple[int, ...]) -> Node:
    """A slice node from resolved full-rank attributes (for gradient rules)."""
    return apply(SLICE, [x], {"starts": starts, "stops": stops, "steps": steps})


def _int_or_none(v: Any, what: str) -> int | None:
    if v is None:
        return None
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise AttrError(f"{what} entries must be ints or None, got {v!r}")
    return int(v)


def _entries(v: Any, what: str) -> list[Any]:
    if isinstance(v, np.ndarray) and v.ndim == 1:
        return v.tolist()
    if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
        raise AttrError(f"{what} must be a sequence (one entry per sliced axis), got {v!r}")
    return list(v)


def _resolve_slice(x: TensorType, starts: Any, stops: Any, steps: Any, axes: Any
                   ) -> tuple[list[list[int]], tuple[int, ...]]:
    """Per-axis (start, stop, step) with Python slice clamping, and the axes to reverse first.

    A negative step is rewritten as a positive step on the reversed axis: element
    ``start - k*|step|`` of x is element ``dim-1-start + k*|step|`` of reverse(x).
    """
    starts, stops = _entries(starts, "starts"), _entries(stops, "stops")
    steps = [1] * len(starts) if steps is None else _entries(steps, "steps")
    axes_t = tuple(range(len(starts))) if axes is None else tuple(
        normalize_axis(a, x.ndim) for a in int_tuple(axes, "axes"))
    if not len(starts) == len(stops) == len(steps) == len(axes_t):
        raise AttrError(f"starts, stops, steps and axes must have equal lengths, got "
                        f"{len(starts)}, {len(stops)}, {len(steps)}, {len(axes_t)}")
    if len(set(axes_t)) != len(axes_t) or len(axes_t) > x.ndim:
        raise AttrError(f"axes {axes_t} repeat an axis or exceed the rank of x {x}")
    resolved = [[0, d, 1] for d in x.shape]
    flips = []
    for a, b, s, axis in zip(starts, stops, steps, axes_t):
        step = _int_or_none(s, "steps")
        if step == 0:
            raise AttrError(f"axis {axis}: slice step cannot be zero")
        d = x.shape[axis]
        start, stop, step = _pyslice(_int_or_none(a, "starts"), _int_or_none(b, "stops"),
                                     step).indices(d)
        count = len(range(start, stop, step))
        if step < 0:
            flips.append(axis)
            start, step = d - 1 - start, -step
        resolved[axis] = [start, start + (count - 1) * step + 1 if count else start, step]
    return resolved, tuple(sorted(flips))


def slice(  # the op's name (shadows the builtin)
    x: Operand,
    starts: Sequence[int | None],
    stops: Sequence[int | None],
    steps: Sequence[int | None] | None = None,
    axes: Sequence[int] | None = None,
    name: str | None = None,
) -> Node:
    """``x[starts[i]:stops[i]:steps[i]]`` on `axes` (default: the first len(starts) axes).

    Entries follow Python slice semantics (None, negative indices, clamping to the axis).
    A negative step reverses the axis first (a `reverse` node), then slices with a positive
    step; the stored attributes are always resolved and full-rank.
    """
    x = as_node(x)
    resolved, flips = resolve("slice", lambda: _resolve_slice(x.type, starts, stops, steps,
                                                                axes))
    if flips:
        x = reverse(x, flips)
    attrs = {k: tuple(r[i] for r in resolved) for i, k in enumerate(("starts", "stops", "steps"))}
    return apply(SLICE, [x], attrs, name=name)


# --- reverse ------------------------------------------------------------------------------

def _reverse_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    _canonical_axes(attrs["axes"], types[0])
    return types[0]


REVERSE = _op("reverse", 1, _reverse_infer,
              lambda a, attrs: np.flip(a[0], attrs["axes"]).copy(),
              lambda n, g: [reverse(g, n.attrs["axes"])],
              doc="flip the order of elements along `axes`",
              attrs=(AttrSpec("axes", Kind.INTS, low=0),))


def reverse(x: Operand, axis: int | Sequence[int] | None = None, name: str | None = None
            ) -> Node:
    """Flip `x` along `axis` (an int, a sequence, or None for all axes), like numpy.flip."""
    x = as_node(x)
    axes = resolve("reverse", lambda: normalize_axes(
        axis if axis is None else int_tuple(axis, "axis"), x.ndim))
    return apply(REVERSE, [x], {"axes": axes}, name=name)


# --- pad ----------------------------------------------------------------------------------

def _pad_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    x = types[0]
    pads = attrs["pads"]
    if not isinstance(pads, tuple) or len(pads) != x.ndim:
        raise AttrError(f"pads must have one (low, high, interior) per axis of x {x}, "
                        f"got {pads!r}")
    shape = []
    for axis, (p, d) in enumerate(zip(pads, x.shape)):
        lo, hi, interior = int_tuple(p, f"pads[{axis}]", 3)
        if min(lo, hi, interior) < 0:
            raise AttrError(f"pads[{axis}] = {p}: padding must be >= 0")
        shape.append(lo + hi + d + builtins.max(d - 1, 0) * interior)
    value = attrs["value"]
    if not isinstance(value, float):
        raise AttrError(f"value must be a float, got {value!r}")
    if not x.dtype.is_float and not value.is_integer():
        raise AttrError(f"value {value!r} is not representable in x {x}")
    if x.dtype == DType.bool and value not in (0.0, 1.0):
        raise AttrError(f"value {value!r} must be 0.0 or 1.0 for x {x}")
    return TensorType(tuple(shape), x.dtype)


def _pad_ref(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    x = arrays[0]
    shape = tuple(lo + hi + d + builtins.max(d - 1, 0) * i
                  for (lo, hi, i), d in zip(attrs["pads"], x.shape))
    out = np.full(shape, attrs["value"], dtype=x.dtype)
    out[tuple(_pyslice(lo, lo + d + builtins.max(d - 1, 0) * i, i + 1)
              for (lo, hi, i), d in zip(attrs["pads"], x.shape))] = x
    return out


def _pad_grad(n: Node, g: Node) -> list[Node | None]:
    pads, shape = n.attrs["pads"], n.inputs[0].shape
    starts = tuple(lo for lo, _, _ in pads)
    stops = tuple(lo + d + builtins.max(d - 1, 0) * i for (lo, _, i), d in zip(pads, shape))
    return [_slice(g, starts, stops, tuple(i + 1 for _, _, i in pads))]


PAD = _op("pad", 1, _pad_infer, _pad_ref, _pad_grad,
          doc="pad each axis with (low, high, interior) copies of `value`",
          attrs=(AttrSpec("pads", Kind.INT_ROWS, low=0, width=3), AttrSpec("value", Kind.FLOAT)))


def _pad(x: Node, pads: tuple[tuple[int, int, int], ...], value: float) -> Node:
    return apply(PAD, [x], {"pads": pads, "value": float(value)})


def _resolve_pad_width(x: TensorType, pad_width: Any) -> tuple[tuple[int, int, int], ...]:
    try:
        if isinstance(pad_width, Node):
            raise ValueError
        width = np.asarray(pad_width)
        if width.dtype.kind not in "iu" or width.ndim > 2:
            raise ValueError
        width = np.broadcast_to(width, (x.ndim, 2))
    except ValueError:
        raise AttrError(f"pad_width must be an int, a (low, high) pair or one pair per axis "
                        f"of x {x}, got {pad_width!r}") from None
    if (width < 0).any():
        raise AttrError(f"pad_width {pad_width!r} must be >= 0")
    return tuple((int(lo), int(hi), 0) for lo, hi in width)


def pad_interior(x: Operand, pads: Any, value: float = 0.0) -> Node:
    """Pad with (low, high, interior) per axis: `interior` copies of `value` between
    neighbouring elements too (spreading x out), as XLA's pad does."""
    x = as_node(x)
    return _pad(x, tuple(tuple(int(v) for v in p) for p in pads), value)


def pad(x: Operand, pad_width: Any, value: float = 0.0, name: str | None = None) -> Node:
    """Constant padding with numpy.pad's `pad_width` (an int, (low, high), or per-axis pairs)."""
    x = as_node(x)
    pads = resolve("pad", lambda: _resolve_pad_width(x.type, pad_width))
    return apply(PAD, [x], {"pads": pads, "value": float(value)}, name=name)
