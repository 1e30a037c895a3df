"""The counter-based generator of random_uniform and random_normal, as LLVM IR.

Every element's value is a pure function of (seed, key, flat element index): a kernel
evaluates it at any index, in any order, on any thread, and gets the reference
interpreter's bits (see `graphc/ops/random.py` for the specification).
"""

from __future__ import annotations

import llvmlite.ir as ir

from graphc.codegen.fused.op_table import convert
from graphc.codegen.llvm_types import F64, I32, const, unary_intrinsic
from graphc.codegen.vecmath import functions as vecmath
from graphc.ir import DType, Node


def _u32(b: ir.IRBuilder, value: int, lanes: int) -> ir.Value:
    c = ir.Constant(I32, value & 0xFFFFFFFF)
    return ir.Constant(ir.VectorType(I32, lanes), [c] * lanes) if lanes > 1 else c


def _mix32(b: ir.IRBuilder, x: ir.Value, lanes: int) -> ir.Value:
    """Chris Wellons' lowbias32 (see graphc/ops/random.py for the specification)."""
    x = b.xor(x, b.lshr(x, _u32(b, 16, lanes)))
    x = b.mul(x, _u32(b, 0x7FEB352D, lanes))
    x = b.xor(x, b.lshr(x, _u32(b, 15, lanes)))
    x = b.mul(x, _u32(b, 0x846CA68B, lanes))
    return b.xor(x, b.lshr(x, _u32(b, 16, lanes)))


def lower_random(b: ir.IRBuilder, lanes: int, node: Node, key: ir.Value, flat: ir.Value
                 ) -> ir.Value:
    """random_uniform / random_normal at flat element indices `flat` (i64 per lane)."""
    key_dtype = node.inputs[0].dtype
    key32 = b.trunc(key, ir.VectorType(I32, lanes) if lanes > 1 else I32) \
        if key_dtype == DType.int64 else key
    stream = _mix32(b, b.xor(_u32(b, node.attrs["seed"], lanes),
                             _mix32(b, b.add(key32, _u32(b, 0x632BE5AB, lanes)), lanes)), lanes)

    def bits(counter: ir.Value) -> ir.Value:
        return _mix32(b, b.add(b.mul(counter, _u32(b, 0x9E3779B9, lanes)), stream), lanes)

    def unit(h: ir.Value, plus_one: bool) -> ir.Value:
        top = b.lshr(h, _u32(b, 8, lanes))
        if plus_one:
            top = b.add(top, _u32(b, 1, lanes))
        as_f64 = b.uitofp(top, ir.VectorType(F64, lanes) if lanes > 1 else F64)
        return b.fmul(as_f64, const(DType.float64, 2.0**-24, lanes))

    i32_type = ir.VectorType(I32, lanes) if lanes > 1 else I32
    counter = b.trunc(flat, i32_type)
    f64 = DType.float64
    if node.op == "random_uniform":
        u = unit(bits(counter), False)
        low, high = float(node.attrs["low"]), float(node.attrs["high"])
        value = b.fadd(const(f64, low, lanes), b.fmul(const(f64, high - low, lanes), u))
    else:
        twice = b.shl(counter, _u32(b, 1, lanes))
        u1 = unit(bits(twice), True)
        u2 = unit(bits(b.add(twice, _u32(b, 1, lanes))), False)
        radius = unary_intrinsic(b, "llvm.sqrt", b.fmul(const(f64, -2.0, lanes),
                                                     vecmath.log(b, u1)))
        angle = b.fmul(const(f64, 6.283185307179586, lanes), u2)
        z = b.fmul(radius, vecmath.cos(b, angle))
        value = b.fadd(const(f64, float(node.attrs["mean"]), lanes),
                       b.fmul(const(f64, float(node.attrs["std"]), lanes), z))
    return convert(b, value, f64, node.dtype)

