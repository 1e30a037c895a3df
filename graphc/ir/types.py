"""IR value types: `DType`, `TensorType` (static shape + dtype) and hashable `Attrs`."""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphc.errors import DTypeError, GraphcError, ShapeError


class DType(enum.Enum):
    """The element types graphc supports.

    The low-precision types are storage types with their own arithmetic rules:
    `bfloat16` is computed in float32 (every op widens its bf16 operands exactly and rounds
    its bf16 result to nearest-even, `graphc.ir.bf16`); `int8`/`uint8` hold quantized values
    for casts, layout ops and the integer GEMM. numpy has no bfloat16, so graphc carries
    bf16 tensors as `uint16` arrays of their bit patterns (``DType.of(np.uint16)`` is
    bfloat16; graphc has no uint16 type); `gc.to_bfloat16` / `gc.from_bfloat16` convert.
    """

    float32 = "float32"
    float64 = "float64"
    int32 = "int32"
    int64 = "int64"
    bool = "bool"
    bfloat16 = "bfloat16"
    int8 = "int8"
    uint8 = "uint8"

    @property
    def np(self) -> np.dtype:
        """The numpy dtype of arrays holding values of this type (uint16 for bfloat16)."""
        return _NUMPY[self]

    @property
    def compute_np(self) -> np.dtype:
        """The numpy dtype op references compute in (float32 for bfloat16)."""
        return np.dtype(np.float32) if self is DType.bfloat16 else _NUMPY[self]

    @property
    def is_low_precision(self) -> bool:
        """bfloat16, int8, uint8: accepted only by ops that declare them (`OpDef.lowp`)."""
        return self in (DType.bfloat16, DType.int8, DType.uint8)

    @property
    def short(self) -> str:
        return _SHORT[self]

    @property
    def is_float(self) -> bool:
        return self in (DType.float32, DType.float64, DType.bfloat16)

    @property
    def is_int(self) -> bool:
        """int32 and int64: the index and label types (int8/uint8 are `is_quantized`)."""
        return self in (DType.int32, DType.int64)

    @property
    def is_quantized(self) -> bool:
        """int8 and uint8: the element types of quantized tensors."""
        return self in (DType.int8, DType.uint8)

    @property
    def itemsize(self) -> int:
        return self.np.itemsize

    @classmethod
    def of(cls, value: Any) -> DType:
        """Convert a DType, a name ('float32' or 'f32'), or a numpy dtype-like to a DType."""
        if isinstance(value, DType):
            return value
        if isinstance(value, str) and value in _FROM_SHORT:
            return _FROM_SHORT[value]
        if isinstance(value, str) and value == "bfloat16":
            return cls.bfloat16
        try:
            name = np.dtype(value).name
        except TypeError as exc:
            raise DTypeError(f"unknown dtype {value!r}") from exc
        if name == "uint16":  # the bit patterns of bfloat16 values (see the class doc)
            return cls.bfloat16
        try:
            return cls(name)
        except ValueError as exc:
            supported = ", ".join(d.value for d in cls)
            raise DTypeError(f"unsupported dtype {name!r} (supported: {supported})") from exc

    def __repr__(self) -> str:
        return f"gc.{self.value}"

    def __str__(self) -> str:
        return self.value


_SHORT = {
    DType.float32: "f32",
    DType.float64: "f64",
    DType.int32: "i32",
    DType.int64: "i64",
    DType.bool: "bool",
    DType.bfloat16: "bf16",
    DType.int8: "i8",
    DType.uint8: "u8",
}
_NUMPY = {d: np.dtype(np.uint16 if d.value == "bfloat16" else d.value) for d in DType}
_FROM_SHORT = {v: k for k, v in _SHORT.items()}

float32 = DType.float32
float64 = DType.float64
int32 = DType.int32
int64 = DType.int64
bool_ = DType.bool
bfloat16 = DType.bfloat16
int8 = DType.int8
uint8 = DType.uint8


@dataclass(frozen=True)
class TensorType:
    """A static shape and an element type. Printed as ``f32[128,784]`` (``f32[]`` scalar)."""

    shape: tuple[int, ...]
    dtype: DType

    def __post_init__(self) -> None:
        shape = tuple(int(d) for d in self.shape)
        if any(d < 0 for d in shape):
            raise ShapeError(f"negative dimension in shape {shape}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "dtype", DType.of(self.dtype))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __str__(self) -> str:
        return f"{self.dtype.short}[{','.join(str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class TupleType:
    """The type of a node with several results: a region op (``scan``, ``cond``,
    ``while_loop``). Printed as ``(f32[4], f32[10,4])``.

    As in XLA's HLO (tuple-shaped ``while``/``conditional`` read by ``get-tuple-element``),
    such a node is read only by ``get`` nodes, one per result used; every other node has a
    `TensorType`. `shape` and `dtype` raise, so code that assumes a tensor fails clearly.
    """

    elements: tuple[TensorType, ...]

    def __post_init__(self) -> None:
        elements = tuple(self.elements)
        if not all(isinstance(e, TensorType) for e in elements):
            raise GraphcError(f"tuple elements must be tensor types, got {elements!r}")
        object.__setattr__(self, "elements", elements)

    @property
    def shape(self) -> tuple[int, ...]:
        raise GraphcError(f"a value of type {self} has several results and no shape; "
                          "read one with a `get` node")

    @property
    def dtype(self) -> DType:
        raise GraphcError(f"a value of type {self} has several results and no dtype; "
                          "read one with a `get` node")

    @property
    def size(self) -> int:
        return sum(e.size for e in self.elements)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.elements)

    def __len__(self) -> int:
        return len(self.elements)

    def __str__(self) -> str:
        inner = ", ".join(str(e) for e in self.elements)
        return f"({inner},)" if len(self.elements) == 1 else f"({inner})"


ValueType = TensorType | TupleType


AttrValue = Any  # int | float | bool | str | None | DType | tuple[AttrValue, ...]


def _freeze(value: Any) -> AttrValue:
    """Turn an attribute value into its canonical hashable form (lists become tuples)."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (bool, int, float, str, DType)) or value is None:
        return value
    raise GraphcError(f"attribute value {value!r} of type {type(value).__name__} is not allowed")


class Attrs(Mapping[str, AttrValue]):
    """An immutable, hashable mapping of op attributes (sorted by key)."""

    __slots__ = ("_hash", "_items")

    def __init__(self, items: Mapping[str, Any] | None = None):
        frozen = tuple(sorted((k, _freeze(v)) for k, v in (items or {}).items()))
        self._items: tuple[tuple[str, AttrValue], ...] = frozen
        self._hash = hash(frozen)

    def __getitem__(self, key: str) -> AttrValue:
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Attrs):
            return self._items == other._items
        return NotImplemented

    def __repr__(self) -> str:
        return f"Attrs({dict(self._items)!r})"
