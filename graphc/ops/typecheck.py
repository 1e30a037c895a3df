"""Helpers shared by type rules: broadcasting, dtype checks, axis normalization.

They raise `GraphcError` subclasses without op/location; `builder.apply` adds both.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from graphc.errors import AttrError, DTypeError, ShapeError
from graphc.ir import DType, TensorType

FLOATS = frozenset({DType.float32, DType.float64})
INTS = frozenset({DType.int32, DType.int64})
NUMERIC = FLOATS | INTS
ALL = NUMERIC | {DType.bool}

_KIND_NAMES = {FLOATS: "a float dtype", INTS: "an integer dtype", NUMERIC: "a numeric dtype"}


def operand_name(i: int, names: Sequence[str] | None = None) -> str:
    return names[i] if names and i < len(names) else f"operand {i}"


def check_dtype(t: TensorType, allowed: Iterable[DType], operand: str) -> None:
    allowed = frozenset(allowed)
    if t.dtype not in allowed:
        want = _KIND_NAMES.get(allowed) or " or ".join(sorted(d.value for d in allowed))
        raise DTypeError(f"{operand}: expected {want}, got {t}")


def same_dtype(types: Sequence[TensorType], names: Sequence[str] | None = None) -> DType:
    """All operands must share one dtype (graphc never promotes implicitly)."""
    first = types[0]
    for i, t in enumerate(types[1:], start=1):
        if t.dtype != first.dtype:
            raise DTypeError(
                f"{operand_name(i, names)}: expected dtype {first.dtype} like "
                f"{operand_name(0, names)} ({first}), got {t}; insert gc.cast(...) to convert"
            )
    return first.dtype


def broadcast_shapes(types: Sequence[TensorType], names: Sequence[str] | None = None
                     ) -> tuple[int, ...]:
    """numpy broadcasting of the operands' shapes, or a ShapeError naming them."""
    ndim = max(t.ndim for t in types)
    result = [1] * ndim
    for t in types:
        for i, d in enumerate(t.shape):
            j = ndim - t.ndim + i
            if result[j] == 1:
                result[j] = d
            elif d != 1 and d != result[j]:
                shown = ", ".join(f"{operand_name(k, names)} {u}" for k, u in enumerate(types))
                raise ShapeError(f"operands do not broadcast together: {shown}")
    return tuple(result)


def normalize_axis(axis: Any, ndim: int, what: str = "axis") -> int:
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise AttrError(f"{what} must be an int, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise AttrError(f"{what} {axis} is out of range for rank {ndim}")
    return axis % ndim


def normalize_axes(axes: Any, ndim: int) -> tuple[int, ...]:
    """None -> all axes; an int or a sequence -> sorted unique non-negative axes."""
    if axes is None:
        return tuple(range(ndim))
    if isinstance(axes, int) and not isinstance(axes, bool):
        axes = (axes,)
    result = sorted({normalize_axis(a, ndim) for a in axes})
    if len(result) != len(tuple(axes)):
        raise AttrError(f"repeated axis in {tuple(axes)}")
    return tuple(result)


def reduced_shape(shape: Sequence[int], axes: Sequence[int], keepdims: bool) -> tuple[int, ...]:
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)
