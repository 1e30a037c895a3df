"""Matmul kernels: batch loops around the GEMM emitter, with the fused epilogue.

A MATMUL kernel computes its anchor `matmul(a, b)` (numpy semantics: batch dimensions
broadcast, `transpose_a`/`transpose_b` read an operand transposed without copying it) and
applies the kernel's elementwise epilogue (bias, activation, ...) as the GEMM stores each
finished block, so the matmul result never makes a round trip through memory.
"""

from __future__ import annotations

import math

import llvmlite.ir as ir

from graphc.codegen.context import KernelContext
from graphc.codegen.expr import strides
from graphc.codegen.gemm import GemmSpec, emit_gemm
from graphc.codegen.index import Idx
from graphc.codegen.loops import for_range
from graphc.codegen.target import Target
from graphc.codegen.types import I64, storage_type
from graphc.passes.fuse import Kernel


def gemm_spec(kernel: Kernel) -> GemmSpec:
    anchor = kernel.anchor
    assert anchor is not None
    a, b = anchor.inputs
    ta, tb = bool(anchor.attrs["transpose_a"]), bool(anchor.attrs["transpose_b"])
    ra, ca = a.shape[-2:]
    rb, cb = b.shape[-2:]
    m, k = (ca, ra) if ta else (ra, ca)
    n = rb if tb else cb
    return GemmSpec(m=m, n=n, k=k, dtype=anchor.dtype, trans_a=ta, trans_b=tb,
                    lda=ca, ldb=cb, ldc=n)


def scratch_bytes(kernel: Kernel, target: Target) -> int:
    return gemm_spec(kernel).scratch_bytes(target)


def _batch_strides(shape: tuple[int, ...], out_batch: tuple[int, ...]) -> list[int]:
    """Element strides of each output batch dim in an operand (0 where it broadcasts)."""
    batch = shape[:-2]
    mat = shape[-2] * shape[-1]
    full = [s * mat for s in strides(batch)] if batch else []
    offset = len(out_batch) - len(batch)
    result = []
    for d in range(len(out_batch)):
        j = d - offset
        result.append(0 if j < 0 or batch[j] == 1 else full[j])
    return result


def emit_matmul(ctx: KernelContext) -> None:
    kernel = ctx.kernel
    anchor = kernel.anchor
    assert anchor is not None
    a, bnode = anchor.inputs
    spec = gemm_spec(kernel)
    out_batch = anchor.shape[:-2]
    a_strides = _batch_strides(a.shape, out_batch)
    b_strides = _batch_strides(bnode.shape, out_batch)
    c_strides = [s * spec.m * spec.n for s in strides(out_batch)] if out_batch else []
    elem = storage_type(anchor.dtype)
    builder = ctx.b
    root = kernel.root

    def one(batch_idx: list[ir.Value]) -> None:
        def offset(ptr: ir.Value, per_dim: list[int]) -> ir.Value:
            total: ir.Value = ir.Constant(I64, 0)
            for i, s in zip(batch_idx, per_dim):
                if s:
                    total = builder.add(total, builder.mul(i, ir.Constant(I64, s)))
            return builder.gep(ptr, [total], inbounds=True, source_etype=elem)

        pa = offset(ctx.ptr(a), a_strides)
        pb = offset(ctx.ptr(bnode), b_strides)
        pc = offset(ctx.out, c_strides)
        epilogue = None
        if root is not anchor:
            def epilogue(b: ir.IRBuilder, row: ir.Value, col: ir.Value, acc: ir.Value,
                         lanes: int) -> ir.Value:
                ev = ctx.evaluator(lanes, overrides={anchor: acc})
                ev.b = b
                ev.ix.b = b
                idx = [Idx(i) for i in batch_idx] + [Idx(row), Idx(col, 1 if lanes > 1 else 0)]
                return ev.at(root, idx)

        emit_gemm(builder, spec, pa, pb, pc, ctx.scratch, ctx.target, epilogue)

    def level(d: int, prefix: list[ir.Value]) -> None:
        if d == len(out_batch):
            one(prefix)
            return
        with for_range(builder, 0, out_batch[d], 1, name=f"batch{d}") as i:
            level(d + 1, [*prefix, i])

    if math.prod(anchor.shape) == 0:
        return
    level(0, [])
