"""Pooling gradients: max_pool2d_grad and avg_pool2d_grad, in two passes.

Pass 1 writes one value per pooling window to scratch: its share g/divisor (avg) or the
plane offset of its first argmax (max, i32, -1 for a padding position; see `pool.window_argmax`).
Pass 2 (`_transposed`) computes each dx chunk as the sum, over the windows that contain it,
of their share -- or of their g where their argmax is that element. Pass 2 is vectorized
over dx columns by column phases (`window.transposed_phases`, as conv2d_grad_input):
contiguous loads, no scatter-add conflicts between overlapping windows, and the reference's
summation order (kernel offsets in row-major order), so results match it bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import llvmlite.ir as ir

from graphc.codegen.context import KernelContext, Lowering
from graphc.codegen.index import splat
from graphc.codegen.llvm_types import I32, storage_type
from graphc.codegen.loops import entry_alloca, for_range
from graphc.codegen.opaque.pooling import Pool, by_planes, check_plane, divisor, window_argmax
from graphc.codegen.target import Target
from graphc.codegen.window import (
    ColPhase,
    Run,
    const_splat,
    element_ptr,
    emit_chunks,
    i64,
    in_range,
    iota,
    lin,
    loop,
    pick_lanes,
    plan_chunks,
    safe_outputs,
    transposed_phases,
)
from graphc.ir import DType
from graphc.passes.kernels import Kernel


def _max_pool_grad(ctx: KernelContext, planes: tuple[ir.Value, ir.Value]) -> None:
    """Pass 1: each window's argmax offset (i32, -1 for padding) into scratch. Pass 2: each
    dx chunk sums g over the windows whose argmax it is (see `_transposed`)."""
    node = ctx.kernel.anchor
    assert node is not None
    if node.size == 0:
        return
    assert ctx.scratch is not None
    x, g = node.inputs
    pool = Pool(ctx, node, x.shape)
    b = ctx.b
    where = ctx.scratch
    i32 = DType.int32
    check_plane(pool)

    def first(nc: ir.Value, p: ir.Value, q0: ir.Value, checked: bool,
              limit: ir.Value | None) -> None:
        x_plane = pool.plane(ctx.ptr(x), nc, pool.h * pool.w)
        at = window_argmax(ctx, pool, x_plane, p, q0, checked, limit)
        row = element_ptr(b, where, i32, lin(b, [(nc, pool.ho * pool.wo), (p, pool.wo)]))
        Run(b, pool.lanes, q0, 1, pool.wo, False, limit).store(row, i32, at)

    pool.rows(first, planes)

    def contribution(nc: ir.Value, p: ir.Value, run: Run, positions: ir.Value) -> ir.Value:
        row = lin(b, [(nc, pool.ho * pool.wo), (p, pool.wo)])
        won = run.load(element_ptr(b, where, i32, row), i32, -1)
        gv = run.load(element_ptr(b, ctx.ptr(g), pool.dtype, row), pool.dtype, 0.0)
        lanes = run.lanes
        hit = b.icmp_signed("==", won, b.trunc(positions, ir.VectorType(I32, lanes)))
        return b.select(hit, gv, const_splat(pool.dtype, 0.0, lanes))

    _transposed(ctx, pool, contribution, planes)


def _transposed(ctx: KernelContext, pool: Pool,
                contribution: Callable[[ir.Value, ir.Value, Run, ir.Value], ir.Value],
                planes: tuple[ir.Value, ir.Value]) -> None:
    """dx[nc, y, x] = sum of contribution(nc, p, run of q, positions) over the windows
    (p, q) that contain (y, x), in the reference's kernel-offset order (so the sums round
    alike). Vectorized over x by column phases (`transposed_phases`): contiguous loads of
    window data, one (strided) store per chunk, no scatter conflicts. `positions` are the
    plane offsets y*W + x of the lanes."""
    b = ctx.b
    dtype = pool.dtype
    phases = transposed_phases(pool.w, pool.sw, 1, pool.pl, pool.kw)
    lanes = pick_lanes(ctx.target.lanes(dtype.itemsize), max(ph.count for ph in phases))
    acc = entry_alloca(b, ir.VectorType(storage_type(dtype), lanes), name="acc")
    if pool.n * pool.c * pool.h * pool.w == 0:
        return
    with for_range(b, planes[0], planes[1], 1, name="nc") as nc, \
            for_range(b, 0, pool.h, 1, name="y") as y:
        dx_row = element_ptr(b, ctx.out, dtype, lin(b, [(nc, pool.h * pool.w), (y, pool.w)]))
        for phase in phases:
            offs = [off for _, off in phase.taps] or [0]
            plan = plan_chunks(phase.count, lanes, safe_outputs(1, min(offs), max(offs),
                                                                 pool.wo))

            def chunk(q0: ir.Value, checked: bool, limit: ir.Value | None,
                      phase: ColPhase = phase) -> None:
                b.store(const_splat(dtype, 0.0, lanes), acc)
                col0 = lin(b, [(q0, phase.step)], phase.start)
                positions = b.add(splat(b, lin(b, [(y, pool.w), (col0, 1)]), lanes),
                                  iota(lanes, phase.step))
                with loop(b, pool.kh, "i") as i:
                    num = lin(b, [(y, 1), (i, -1)], pool.pt)
                    valid = in_range(b, num, 0, pool.ho * pool.sh)
                    if pool.sh > 1:
                        exact = b.icmp_signed("==", b.srem(num, i64(pool.sh)), i64(0))
                        valid = b.and_(valid, exact)
                    with b.if_then(valid):
                        p = b.sdiv(num, i64(pool.sh)) if pool.sh > 1 else num
                        for _j, off in phase.taps:
                            run = Run(b, lanes, lin(b, [(q0, 1)], off), 1, pool.wo, checked,
                                      limit)
                            b.store(b.fadd(b.load(acc), contribution(nc, p, run, positions)),
                                    acc)
                Run(b, lanes, col0, phase.step, pool.w, False, limit).store(dx_row, dtype,
                                                                             b.load(acc))

            emit_chunks(b, plan, chunk)


def _avg_pool_grad(ctx: KernelContext, planes: tuple[ir.Value, ir.Value]) -> None:
    """Pass 1: share = g / divisor into scratch (the reference's rounding). Pass 2: each dx
    chunk sums the shares of the windows containing it (see `_transposed`)."""
    node = ctx.kernel.anchor
    assert node is not None
    if node.size == 0:
        return
    assert ctx.scratch is not None
    g = node.inputs[0]
    pool = Pool(ctx, node, tuple(node.attrs["input_shape"]))
    b = ctx.b
    share = ctx.scratch

    def first(nc: ir.Value, p: ir.Value, q0: ir.Value, checked: bool,
              limit: ir.Value | None) -> None:
        gv = pool.load_out(pool.plane(ctx.ptr(g), nc, pool.ho * pool.wo), p, q0, limit)
        pool.store_out(pool.plane(share, nc, pool.ho * pool.wo), p, q0, limit,
                       b.fdiv(gv, divisor(pool, p, q0)))

    pool.rows(first, planes)

    def contribution(nc: ir.Value, p: ir.Value, run: Run, _positions: ir.Value) -> ir.Value:
        row = lin(b, [(nc, pool.ho * pool.wo), (p, pool.wo)])
        return run.load(element_ptr(b, share, pool.dtype, row), pool.dtype, 0.0)

    _transposed(ctx, pool, contribution, planes)


def _scratch_like_output(kernel: Kernel, target: Target, threads: int, conv: str) -> int:
    """Bytes of one value per pooling window (the gradient's input g)."""
    assert kernel.anchor is not None
    g = kernel.anchor.inputs[-1]
    return g.size * (4 if kernel.anchor.op == "max_pool2d_grad" else g.dtype.itemsize)


LOWERINGS = (
    Lowering("max_pool2d_grad", by_planes(_max_pool_grad), _scratch_like_output),
    Lowering("avg_pool2d_grad", by_planes(_avg_pool_grad), _scratch_like_output),
)
