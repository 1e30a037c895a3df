"""A wide concat as a kernel of its own: for each operand, one memcpy per index of the axes
before `axis` (a concat of few operands is inlined and evaluated by index instead, see
`passes/fuse.py`)."""

from __future__ import annotations

import math

import llvmlite.ir as ir

from graphc.codegen.context import KernelContext, Lowering
from graphc.codegen.llvm_types import I1, I8, I64, PTR, VOID, intrinsic
from graphc.codegen.loops import for_range


def _concat(ctx: KernelContext) -> None:
    node = ctx.kernel.anchor
    assert node is not None
    b = ctx.b
    axis = node.attrs["axis"]
    after = math.prod(node.shape[axis + 1:])
    outer = math.prod(node.shape[:axis])
    size = max(node.dtype.itemsize, 1)
    out_row = node.shape[axis] * after * size
    memcpy = intrinsic(ctx.module, "llvm.memcpy", VOID, [PTR, PTR, I64, I1], [PTR, PTR, I64])
    offset = 0
    for src in node.inputs:
        block = src.shape[axis] * after * size
        if block:
            with for_range(b, 0, outer, 1, name="c") as o:
                dst = b.gep(ctx.out, [b.add(b.mul(o, ir.Constant(I64, out_row)),
                                            ir.Constant(I64, offset))],
                            inbounds=True, source_etype=I8)
                from_ = b.gep(ctx.ptr(src), [b.mul(o, ir.Constant(I64, block))],
                              inbounds=True, source_etype=I8)
                b.call(memcpy, [dst, from_, ir.Constant(I64, block), ir.Constant(I1, 0)])
        offset += block


LOWERINGS = (Lowering("concat", _concat),)
