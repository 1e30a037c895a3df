"""LLVM types and constants for graphc dtypes.

Booleans are stored as one byte (numpy's layout) and computed as `i1`; bfloat16 is stored as
`i16` bit patterns and computed as `float` (`codegen.bf16` converts); int8 and uint8 are `i8`
(signedness is the dtype's, not the type's). The `load`/`store` helpers of
`codegen.index` convert between storage and compute types.
"""

from __future__ import annotations

import functools

import llvmlite.ir as ir

from graphc.ir import DType, from_bfloat16, to_bfloat16

I1 = ir.IntType(1)
I8 = ir.IntType(8)
I16 = ir.IntType(16)
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
    DType.bfloat16: F32,
    DType.int8: I8,
    DType.uint8: I8,
}
_STORAGE = {**_COMPUTE, DType.bool: I8, DType.bfloat16: I16}


class BFloatType(ir.Type):
    """LLVM's `bfloat` (llvmlite has no class for it): the operand type of the AVX512_BF16
    intrinsics and of `fptrunc`, which selects `vcvtneps2bf16`. Never a storage type."""

    def _to_string(self) -> str:
        return "bfloat"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BFloatType)

    def __hash__(self) -> int:
        return hash(BFloatType)


BF16 = BFloatType()


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
    if dtype == DType.bfloat16:  # a bf16 value: the float rounded as storing it would
        c = ir.Constant(t, float(from_bfloat16(to_bfloat16(float(value)))))
    elif dtype.is_float:
        c = ir.Constant(t, float(value))
    elif dtype == DType.bool:
        c = ir.Constant(t, int(bool(value)))
    else:
        c = ir.Constant(t, int(value))
    if lanes == 1:
        return c
    return ir.Constant(ir.VectorType(t, lanes), [c] * lanes)


@functools.lru_cache(maxsize=4096, typed=True)
def i64(value: int) -> ir.Constant:
    """The i64 constant `value`. Shared like `shuffle_mask`'s constants."""
    return ir.Constant(I64, value)


@functools.lru_cache(maxsize=1024)
def shuffle_mask(indices: tuple[int, ...]) -> ir.Constant:
    """The <n x i32> shufflevector mask `indices`. One shared constant per mask: llvmlite
    never mutates a constant and formats its text once, and splat and transpose masks recur
    thousands of times in a module (a fifth of the module's text formatting time)."""
    return ir.Constant(ir.VectorType(I32, len(indices)), list(indices))


def mangle(t: ir.Type) -> str:
    """LLVM's overloaded-intrinsic suffix of a type: f32, v16f32, i64, v8i1, p0."""
    if isinstance(t, ir.VectorType):
        return f"v{t.count}{mangle(t.element)}"
    if isinstance(t, ir.FloatType):
        return "f32"
    if isinstance(t, ir.DoubleType):
        return "f64"
    if isinstance(t, BFloatType):
        return "bf16"
    if isinstance(t, ir.IntType):
        return f"i{t.width}"
    if isinstance(t, ir.PointerType):
        return "p0"
    raise TypeError(f"cannot mangle {t}")


def intrinsic(module: ir.Module, name: str, ret: ir.Type, args: list[ir.Type],
              overloads: list[ir.Type] | None = None) -> ir.Function:
    """Declare (once) the LLVM intrinsic `name` specialized for `overloads` (default: ret).

    llvmlite's `declare_intrinsic` cannot mangle vector types, hence this helper.
    """
    over = [ret] if overloads is None else overloads
    full = ".".join([name, *(mangle(t) for t in over)])
    existing = module.globals.get(full)
    if existing is not None:
        return existing
    return ir.Function(module, ir.FunctionType(ret, args), full)


def unary_intrinsic(b: ir.IRBuilder, name: str, x: ir.Value) -> ir.Value:
    """Call a same-type intrinsic such as llvm.fabs, llvm.sqrt, llvm.floor."""
    return b.call(intrinsic(b.module, name, x.type, [x.type]), [x])


def binary_intrinsic(b: ir.IRBuilder, name: str, x: ir.Value, y: ir.Value) -> ir.Value:
    """Call a same-type binary intrinsic such as llvm.maximum, llvm.smax."""
    return b.call(intrinsic(b.module, name, x.type, [x.type, x.type]), [x, y])
