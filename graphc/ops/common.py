"""What the op families share: type-rule helpers and builder argument helpers.

Type rules: dtype sets and checks, broadcasting, axis normalization. They raise `GraphcError`
subclasses without op/location; `builder.apply` adds both.

Builders resolve user conventions (-1 in shapes, negative axes, Python slices) before a node
exists; `resolve` and `fail` give such checks the same error context (`op`, the user's line)
that `builder.apply` gives type rules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn, TypeVar

import numpy as np

from graphc.builder import Operand, constant, user_location
from graphc.errors import AttrError, DTypeError, GraphcError, ShapeError
from graphc.ir import DType, Node, TensorType
from graphc.ir.attrs import AttrSpec
from graphc.ir.opdef import Fusion, OpDef

FLOATS = frozenset({DType.float32, DType.float64, DType.bfloat16})
INTS = frozenset({DType.int32, DType.int64})
QUANTIZED = frozenset({DType.int8, DType.uint8})
NUMERIC = FLOATS | INTS
ALL = NUMERIC | {DType.bool} | QUANTIZED
# What `OpDef.lowp` declares: ops computing in float32 on widened bf16 values (elementwise,
# reductions) take BF16; ops that only move elements (layout) take every low-precision type.
BF16 = frozenset({DType.bfloat16})
LOWP = BF16 | QUANTIZED

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


# --- builder arguments -------------------------------------------------------------------

_T = TypeVar("_T")


def as_node(x: Operand) -> Node:
    """`x` itself if it is a Node, else a constant holding it (a builder needs its type)."""
    return x if isinstance(x, Node) else constant(x)


def resolve(op: str, fn: Callable[[], _T]) -> _T:
    """Run a builder's argument resolution; a GraphcError gets `op` and the user's line.

    Type rules get op/loc from `builder.apply`; this does the same for the checks builders
    make before a node exists (an axis out of range, a -1 that cannot be resolved).
    """
    try:
        return fn()
    except GraphcError as exc:
        raise exc.with_context(op=op, loc=user_location()) from None


def fail(op: str, exc: GraphcError) -> NoReturn:
    """Raise `exc` from a builder, with `op` and the user's line."""
    raise exc.with_context(op=op, loc=user_location())


def int_tuple(value: Any, what: str, length: int | None = None) -> tuple[int, ...]:
    """An int or a sequence of ints as a tuple, or an AttrError (bools are not ints)."""
    if isinstance(value, Node):  # iterating a Node would build getitem nodes
        raise AttrError(f"{what} must be static ints, got node %{value.name}")
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        value = (value,)
    try:
        items = tuple(value)
    except TypeError:
        raise AttrError(f"{what} must be a sequence of ints, got {value!r}") from None
    for v in items:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise AttrError(f"{what} must be a sequence of ints, got {value!r}")
    if length is not None and len(items) != length:
        raise AttrError(f"{what} must have {length} entries (one per axis), got {items}")
    return tuple(int(v) for v in items)


def shape_op(ops: list[OpDef], name: str, arity: int | None, infer: Any, reference: Any,
             grad: Any, fusion: Fusion = Fusion.INDEXED, doc: str = "",
             attrs: tuple[AttrSpec, ...] = ()) -> OpDef:
    """An OpDef of the "shape" family, appended to `ops` (the defining submodule's `OPS`)."""
    op = OpDef(name, "shape", arity, infer, reference, fusion, grad, doc=doc, attrs=attrs,
               lowp=LOWP)
    ops.append(op)
    return op
