"""LLVM types and constants for graphc dtypes.

Booleans are stored as one byte (numpy's layout) and computed as `i1`; `load`/`store`
helpers in `codegen.memory` convert between the two.
"""

from __future__ import annotations

import llvmlite.ir as ir

from graphc.ir import DType

I1 = ir.IntType(1)
I8 = ir.IntType(8)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
F32 = ir.FloatType()
F64 = ir.DoubleType()
PTR = ir.PointerType()
VOID = ir.VoidType()

_COMPUTE = {
    DType.float32: F32,
    DType.float64: F64,
    DType.int32: I32,
    DType.int64: I64,
    DType.bool: I1,
}
_STORAGE = {**_COMPUTE, DType.bool: I8}


def compute_type(dtype: DType, lanes: int = 1) -> ir.Type:
    """The type values of `dtype` have in registers (`<lanes x T>` when lanes > 1)."""
    t = _COMPUTE[dtype]
    return ir.VectorType(t, lanes) if lanes > 1 else t


def storage_type(dtype: DType, lanes: int = 1) -> ir.Type:
    """The type values of `dtype` have in memory."""
    t = _STORAGE[dtype]
    return ir.VectorType(t, lanes) if lanes > 1 else t


def const(dtype: DType, value: float | int | bool, lanes: int = 1) -> ir.Constant:
    """A scalar constant, or a splat vector constant when lanes > 1."""
    t = _COMPUTE[dtype]
    if dtype.is_float:
        c = ir.Constant(t, float(value))
    elif dtype == DType.bool:
        c = ir.Constant(t, int(bool(value)))
    else:
        c = ir.Constant(t, int(value))
    if lanes == 1:
        return c
    return ir.Constant(ir.VectorType(t, lanes), [c] * lanes)


def i64(value: int) -> ir.Constant:
    return ir.Constant(I64, value)
