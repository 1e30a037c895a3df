"""Integer-array indexing: the gathers `take` and `take_along_axis`, their scatter-add
adjoints `take_grad` and `take_along_axis_grad`, and the composite `one_hot`.

- `take` and `take_along_axis` are gathers with numpy's semantics. Their gradients are the
  scatter-add primitives `take_grad` and `take_along_axis_grad`, which accumulate into zeros
  of the gathered tensor's shape, summing duplicate indices (``np.add.at``). The gradient of
  a scatter-add is the matching gather, so grad-of-grad works.
- `one_hot` is a composite of `equal` against a constant ``arange``.

Indices follow numpy: a negative index counts from the end (once); an index outside
``[-n, n)`` raises a `GraphcError` naming the op, at build time when the indices are a
constant, else when the graph is evaluated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from graphc.builder import Operand, apply, constant, user_location
from graphc.errors import AttrError, DTypeError, GraphcError, ShapeError
from graphc.ir import Attrs, DType, Node, TensorType
from graphc.ir.attrs import AttrSpec, Kind
from graphc.ir.opdef import Fusion, OpDef
from graphc.ops import elementwise as _elementwise
from graphc.ops.common import ALL, INTS, check_dtype, normalize_axis
from graphc.ops.layout import reshape

# The scatter-adds take_grad and take_along_axis_grad are importable from here but not
# exported to `graphc` (they are gradients, not user ops).
__all__ = ["one_hot", "take", "take_along_axis"]

OPS: list[OpDef] = []


# --- helpers ------------------------------------------------------------------------------

def _check_indices(t: TensorType) -> None:
    check_dtype(t, INTS, "indices")


def _normalized(indices: np.ndarray, size: int, axis: int) -> np.ndarray:
    """`indices` with negatives wrapped once; GraphcError if any is outside [-size, size)."""
    bad = (indices < -size) | (indices >= size)
    if np.any(bad):
        first = int(indices[bad].flat[0])
        raise GraphcError(f"index {first} is out of range for axis {axis} with size {size}")
    return np.where(indices < 0, indices + size, indices).astype(np.intp)


def _as_indices(indices: Operand, op: str) -> Operand:
    """Non-node indices as an int32/int64 numpy array (a Python int must not become a float).

    int32/int64 arrays keep their dtype; Python ints and lists become int32 like other
    integer literals (int64 if a value needs it); other integer arrays widen to the smallest
    of the two that holds them.
    """
    if isinstance(indices, Node):
        return indices
    try:
        array = np.asarray(indices)
    except (TypeError, ValueError) as exc:
        raise DTypeError(f"indices: cannot convert {type(indices).__name__} to an array: {exc}",
                         op=op, loc=user_location()) from None
    if array.dtype.kind not in "iu" or array.dtype == np.uint64:
        raise DTypeError(f"indices: expected an integer dtype (int32 or int64), got "
                         f"{array.dtype} values", op=op, loc=user_location())
    if isinstance(indices, np.ndarray) and array.dtype in (np.int32, np.int64):
        return array
    fits32 = array.size == 0 or (array.min() >= -(2**31) and array.max() < 2**31)
    if not isinstance(indices, np.ndarray):
        return array.astype(np.int32 if fits32 else np.int64)
    return array.astype(np.int32 if array.dtype.itemsize < 4 else np.int64)


def _constant_value(x: Operand) -> np.ndarray | None:
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, Node) and x.op == "constant":
        return x.graph.constants[x.name]
    return None


def _check_constant_range(indices: Operand, size: int, axis: int, op: str) -> None:
    """Report out-of-range constant indices at the user's line rather than at run time."""
    value = _constant_value(indices)
    if value is not None and value.size:
        try:
            _normalized(value, size, axis)
        except GraphcError as exc:
            raise exc.with_context(op=op, loc=user_location()) from None


def _static_axis(x: Operand, axis: Any, indices: Operand, op: str) -> Any:
    """`axis` made non-negative (canonical attrs) when valid, and constant indices checked.

    An invalid axis is returned as is: the type rule reports it with the op's context.
    """
    if not isinstance(x, Node) or isinstance(axis, bool) or not isinstance(axis, int):
        return axis
    if not -x.ndim <= axis < x.ndim:
        return axis
    axis %= x.ndim
    _check_constant_range(indices, x.shape[axis], axis, op)
    return axis


# --- take / take_grad ---------------------------------------------------------------------

def _take_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    x, idx = types
    check_dtype(x, ALL, "x")
    _check_indices(idx)
    if x.ndim == 0:
        raise ShapeError(f"x: expected rank >= 1, got {x}")
    axis = normalize_axis(attrs["axis"], x.ndim)
    return TensorType((*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]), x.dtype)


def _take_reference(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    x, idx = arrays
    axis = attrs["axis"] % x.ndim
    return np.take(x, _normalized(idx, x.shape[axis], axis), axis=axis)


def _take_grad_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    g, idx = types
    check_dtype(g, ALL, "g")
    _check_indices(idx)
    axis, size = attrs["axis"], attrs["size"]
    if not 0 <= axis <= g.ndim - idx.ndim:
        raise AttrError(f"axis {axis} does not fit g {g} gathered with indices {idx}")
    if g.shape[axis:axis + idx.ndim] != idx.shape:
        raise ShapeError(f"g: expected dims {axis}..{axis + idx.ndim - 1} to be the indices "
                         f"shape {idx.shape}, got {g}")
    if size < 0:
        raise AttrError(f"size must be >= 0, got {size}")
    return TensorType((*g.shape[:axis], size, *g.shape[axis + idx.ndim:]), g.dtype)


def _take_grad_reference(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    g, idx = arrays
    axis, size = attrs["axis"], attrs["size"]
    out = np.zeros((*g.shape[:axis], size, *g.shape[axis + idx.ndim:]), g.dtype)
    # out[:, ..., idx, ...] += g, with duplicate indices accumulating (np.add.at).
    np.add.at(out, (slice(None),) * axis + (_normalized(idx, size, axis),), g)
    return out


def _take_gradient(n: Node, g: Node) -> list[Node | None]:
    x, idx = n.inputs
    axis = n.attrs["axis"] % x.ndim
    return [take_grad(g, idx, axis, x.shape[axis]), None]


def _take_grad_gradient(n: Node, g: Node) -> list[Node | None]:
    return [take(g, n.inputs[1], axis=n.attrs["axis"]), None]


AXIS = AttrSpec("axis", Kind.INT, low=0)  # resolved: non-negative
TAKE = OpDef("take", "indexing", 2, _take_infer, _take_reference, Fusion.INJECTIVE,
             _take_gradient, doc="numpy.take(x, indices, axis): gather along one axis",
             attrs=(AXIS,))
TAKE_GRAD = OpDef(
    "take_grad", "indexing", 2, _take_grad_infer, _take_grad_reference, Fusion.OPAQUE,
    _take_grad_gradient,
    doc="adjoint of take: scatter-add g into zeros with `size` along axis (duplicates sum)",
    attrs=(AXIS, AttrSpec("size", Kind.INT, low=0)),
)
OPS += [TAKE, TAKE_GRAD]


def take(x: Operand, indices: Operand, axis: int = 0, name: str | None = None) -> Node:
    """``numpy.take(x, indices, axis)``: shape ``x.shape[:axis] + indices.shape +
    x.shape[axis+1:]``. `indices` is an int32/int64 node or array; negative indices count
    from the end. Differentiable in `x` (duplicate indices accumulate)."""
    indices = _as_indices(indices, "take")
    axis = _static_axis(x, axis, indices, "take")
    return apply(TAKE, [x, indices], {"axis": axis}, name=name)


def take_grad(g: Operand, indices: Operand, axis: int, size: int,
              name: str | None = None) -> Node:
    """The adjoint of ``take(x, indices, axis)`` for ``x.shape[axis] == size``: zeros of x's
    shape with ``g`` scatter-added along `axis` (non-negative) at `indices`."""
    return apply(TAKE_GRAD, [g, _as_indices(indices, "take_grad")],
                 {"axis": int(axis), "size": int(size)}, name=name)


# --- take_along_axis / take_along_axis_grad -----------------------------------------------

def _along_shape(x_shape: tuple[int, ...], idx: TensorType, axis: int) -> tuple[int, ...]:
    """numpy's take_along_axis result shape: dims other than `axis` broadcast."""
    out = []
    for d, (a, b) in enumerate(zip(x_shape, idx.shape)):
        if d == axis:
            out.append(b)
        elif a == b or b == 1:
            out.append(a)
        elif a == 1:
            out.append(b)
        else:
            raise ShapeError(f"indices {idx} does not broadcast against x of shape {x_shape} "
                             f"in dim {d} ({b} vs {a})")
    return tuple(out)


def _along_check(x_shape: tuple[int, ...], idx: TensorType, axis: Any) -> int:
    if len(x_shape) == 0:
        raise ShapeError("x: expected rank >= 1, got a scalar")
    if idx.ndim != len(x_shape):
        raise ShapeError(f"indices: expected rank {len(x_shape)} like x, got {idx}")
    return normalize_axis(axis, len(x_shape))


def _along_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    x, idx = types
    check_dtype(x, ALL, "x")
    _check_indices(idx)
    axis = _along_check(x.shape, idx, attrs["axis"])
    return TensorType(_along_shape(x.shape, idx, axis), x.dtype)


def _along_index(shape: tuple[int, ...], idx: np.ndarray, axis: int) -> tuple[np.ndarray, ...]:
    """The fancy index ``(arange, ..., idx, ..., arange)`` selecting x[..., idx[...], ...]."""
    ndim = len(shape)
    return tuple(
        _normalized(idx, shape[d], d) if d == axis
        else np.arange(shape[d]).reshape((1,) * d + (-1,) + (1,) * (ndim - d - 1))
        for d in range(ndim)
    )


def _along_reference(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    x, idx = arrays
    axis = attrs["axis"] % x.ndim
    return np.asarray(x[_along_index(x.shape, idx, axis)])


def _along_grad_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    g, idx = types
    check_dtype(g, ALL, "g")
    _check_indices(idx)
    shape = tuple(attrs["shape"])
    axis = _along_check(shape, idx, attrs["axis"])
    want = _along_shape(shape, idx, axis)
    if g.shape != want:
        raise ShapeError(f"g: expected shape {want} (x {shape} gathered with indices {idx}), "
                         f"got {g}")
    return TensorType(shape, g.dtype)


def _along_grad_reference(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    g, idx = arrays
    shape = tuple(attrs["shape"])
    out = np.zeros(shape, g.dtype)
    np.add.at(out, _along_index(shape, idx, attrs["axis"] % len(shape)), g)
    return out


def _along_gradient(n: Node, g: Node) -> list[Node | None]:
    x, idx = n.inputs
    return [take_along_axis_grad(g, idx, n.attrs["axis"], x.shape), None]


def _along_grad_gradient(n: Node, g: Node) -> list[Node | None]:
    return [take_along_axis(g, n.inputs[1], axis=n.attrs["axis"]), None]


TAKE_ALONG_AXIS = OpDef(
    "take_along_axis", "indexing", 2, _along_infer, _along_reference, Fusion.INJECTIVE,
    _along_gradient, doc="numpy.take_along_axis(x, indices, axis): indices of x's rank",
    attrs=(AXIS,),
)
TAKE_ALONG_AXIS_GRAD = OpDef(
    "take_along_axis_grad", "indexing", 2, _along_grad_infer, _along_grad_reference,
    Fusion.OPAQUE, _along_grad_gradient,
    doc="adjoint of take_along_axis: scatter-add g into zeros of `shape` (duplicates sum)",
    attrs=(AXIS, AttrSpec("shape", Kind.INTS, low=0)),
)
OPS += [TAKE_ALONG_AXIS, TAKE_ALONG_AXIS_GRAD]


def take_along_axis(x: Operand, indices: Operand, axis: int,
                    name: str | None = None) -> Node:
    """``numpy.take_along_axis(x, indices, axis)``: `indices` (int32/int64) has x's rank;
    its other dims broadcast against x's. Differentiable in `x`."""
    indices = _as_indices(indices, "take_along_axis")
    axis = _static_axis(x, axis, indices, "take_along_axis")
    return apply(TAKE_ALONG_AXIS, [x, indices], {"axis": axis}, name=name)


def take_along_axis_grad(g: Operand, indices: Operand, axis: int, shape: Sequence[int],
                         name: str | None = None) -> Node:
    """The adjoint of ``take_along_axis(x, indices, axis)`` for x of `shape`."""
    return apply(TAKE_ALONG_AXIS_GRAD, [g, _as_indices(indices, "take_along_axis_grad")],
                 {"axis": int(axis), "shape": tuple(int(d) for d in shape)}, name=name)


# --- one_hot ------------------------------------------------------------------------------

def one_hot(indices: Operand, depth: int, dtype: DType | str = DType.float32, axis: int = -1,
            name: str | None = None) -> Node:
    """One-hot encoding: ``out[..., i, ...] = (indices[...] == i)`` for ``i < depth``, as
    `dtype`, with the new axis of size `depth` at `axis` (of the result's rank). An index
    outside ``[0, depth)`` gives an all-zero row (as in TensorFlow). Not differentiable.
    """
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 0:
        raise AttrError(f"depth must be a non-negative int, got {depth!r}", op="one_hot",
                        loc=user_location())
    if not isinstance(indices, Node):
        indices = constant(_as_indices(indices, "one_hot"))
    try:
        check_dtype(indices.type, INTS, "indices")
        pos = normalize_axis(axis, indices.ndim + 1)
    except GraphcError as exc:
        raise exc.with_context(op="one_hot", loc=user_location()) from None
    out_dtype = DType.of(dtype)
    lead, trail = indices.shape[:pos], indices.shape[pos:]
    expanded = reshape(indices, (*lead, 1, *trail))
    classes = np.arange(depth, dtype=indices.dtype.np).reshape((depth,) + (1,) * len(trail))
    if out_dtype == DType.bool:
        return _elementwise.equal(expanded, classes, name=name)
    return _elementwise.cast(_elementwise.equal(expanded, classes), out_dtype, name=name)
