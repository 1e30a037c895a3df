"""bfloat16 in generated code: widening to float, rounding back, and who may use
AVX512_BF16 for it.

bf16 values live in memory as `i16` bit patterns and in registers as `float`. Widening is
exact (the bits shifted into the upper half). Rounding follows `graphc.ir.bf16` bit for bit
(nearest-even; NaN quieted; float32 subnormals to signed zero), which is what
`vcvtneps2bf16` computes: on a target with avx512bf16 it is one `fptrunc` to `bfloat`; on
others an integer sequence (LLVM would call `__truncsfbf2` per element, which neither the
JIT nor an exported library provides).

Whether a module may use the instruction is a fact of the module, set once by whoever
creates it for a target (`set_native`), so the many loaders and storers of elements need no
target argument.
"""

from __future__ import annotations

import llvmlite.ir as ir

from graphc.codegen.llvm_types import BF16, F32, I16, I32

_NATIVE_ATTR = "_graphc_bf16_native"


def set_native(module: ir.Module, native: bool) -> None:
    """Declare whether code in `module` may use AVX512_BF16 conversions (the target's
    feature `avx512bf16`)."""
    setattr(module, _NATIVE_ATTR, native)


def is_native(module: ir.Module) -> bool:
    return bool(getattr(module, _NATIVE_ATTR, False))


def _like(v: ir.Value, element: ir.Type) -> ir.Type:
    return ir.VectorType(element, v.type.count) if isinstance(v.type, ir.VectorType) \
        else element


def _const(v: ir.Value, value: int, element: ir.Type = I32) -> ir.Constant:
    t = _like(v, element)
    c = ir.Constant(element, value)
    return ir.Constant(t, [c] * t.count) if isinstance(t, ir.VectorType) else c


def widen(b: ir.IRBuilder, bits: ir.Value) -> ir.Value:
    """`i16` bit patterns (scalar or vector) -> their float values (exact)."""
    wide = b.zext(bits, _like(bits, I32))
    return b.bitcast(b.shl(wide, _const(wide, 16)), _like(bits, F32))


def narrow(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """float (scalar or vector) -> the `i16` bit patterns of its bf16 rounding."""
    if is_native(b.module):
        return b.bitcast(b.fptrunc(x, _like(x, BF16)), _like(x, I16))
    bits = b.bitcast(x, _like(x, I32))
    high = b.lshr(bits, _const(bits, 16))
    lsb = b.and_(high, _const(bits, 1))
    rounded = b.lshr(b.add(b.add(bits, _const(bits, 0x7FFF)), lsb), _const(bits, 16))
    sign = b.and_(high, _const(bits, 0x8000))
    subnormal = b.icmp_unsigned("==", b.and_(bits, _const(bits, 0x7F800000)), _const(bits, 0))
    nan = b.fcmp_unordered("uno", x, x)
    quiet = b.or_(high, _const(bits, 0x40))
    out = b.select(nan, quiet, b.select(subnormal, sign, rounded))
    return b.trunc(out, _like(x, I16))


def round_float(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """float -> the float value of its bf16 rounding (what storing and reloading gives)."""
    return widen(b, narrow(b, x))
