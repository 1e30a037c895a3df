"""The fused attention forward kernels: `attention`, `attention_lse` and
`attention_with_lse` (an online softmax over key blocks; shared pieces in `attention`).

For each (batch·head, block of BR query rows), the kernel walks the keys in blocks of BC:

    S  = Q_blk @ K_blkᵀ · scale (+ mask, causal -inf)     GEMM, epilogue applies the rest
    m' = max(m, rowmax S);  P = exp(S - m');  α = exp(m - m')
    l  = α·l + rowsum P;    O_blk = α·O_blk + P @ V_blk   GEMM accumulating into O
    finally O_blk /= l, lse = m + log l

so only a BR x BC tile of scores exists at a time (FlashAttention's online softmax; PyTorch's
CPU flash kernel and ggml's tiled path do the same). O itself is the accumulator. With more
than FEW_QUERIES queries the block runs on the GEMM's micro-kernel directly, K and V packed
once per head and causal-cut blocks trimmed (`attention_tiles`); a decode step's few rows
use the packed register-blocked GEMM of `graphc.codegen.gemm` at static sizes: a
block has BR or Tq % BR rows and BC or Tk % BC keys, and each of those (at most four)
combinations gets its own code. With `causal`, a query block stops at its diagonal key
block, and BC = BR so that block is the last one. Rows whose scores are all -inf (fully
masked) have l = 0 and give 0 (lse -inf).

Work items (batch·head, query block) are split across the thread pool; each task has its
own scratch (score tile, running max and sum, GEMM packing buffers), so results do not
depend on the thread count. The backward kernel is in `attention_grad`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import llvmlite.ir as ir

from graphc.codegen.context import KernelContext, Lowering
from graphc.codegen.gemm.emit import GemmSpec, emit_gemm
from graphc.codegen.gemm.helpers import for_range, hsum
from graphc.codegen.index import splat
from graphc.codegen.llvm_types import I64, compute_type, const
from graphc.codegen.loops import entry_alloca
from graphc.codegen.opaque.attention import (
    KV_BYTE_FLOPS,
    TASK_FLOPS,
    Geometry,
    aligned,
    at,
    geometry,
    head_offsets,
    i64,
    lanes_max,
    row_vectors,
    scale_row,
    score_epilogue,
    static_cases,
    task_scratch,
    vmax,
    zero_fill,
)
from graphc.codegen.opaque.attention_tiles import (
    BlockPtrs,
    Regions,
    TileLayout,
    init_task,
    key_block,
    pack_head,
    pack_tail,
    regions,
    tile_layout,
    use_tiles,
)
from graphc.codegen.parallel import parallel_range, split_plan
from graphc.codegen.target import Target
from graphc.codegen.vecmath import functions as vecmath
from graphc.ir import Node
from graphc.passes.kernels import Kernel


@dataclass(frozen=True)
class Outputs:
    """What a forward kernel writes: O with row stride `o_stride` (0: no O), the
    log-sum-exp with stride `lse_stride` (0: none), at element `lse_offset` of the row."""

    o_stride: int
    lse_stride: int
    lse_offset: int = 0


def outputs_of(node: Node, g: Geometry) -> Outputs:
    if node.op == "attention":
        return Outputs(g.dv, 0)
    if node.op == "attention_lse":
        return Outputs(0, 1)
    return Outputs(g.dv + 1, g.dv + 1, g.dv)  # attention_with_lse: [O | lse] rows


def gemm_specs_forward(g: Geometry, m: int, n: int, o_stride: int) -> list[GemmSpec]:
    """S = Q Kᵀ (m x n, k = Dk) and O += P V (m x Dv, k = n) for a block of m rows, n keys."""
    return [GemmSpec(m, n, g.dk, g.dtype, False, True, g.dk, g.dk, g.ld),
            GemmSpec(m, g.dv, n, g.dtype, False, False, g.ld, g.dv, max(o_stride, g.dv))]


def _forward_layout(g: Geometry, target: Target, outs: Outputs) -> tuple[int, int, int]:
    """(tile bytes, stats bytes, GEMM scratch bytes) of one forward task."""
    tile = aligned(g.br * g.ld * g.dtype.itemsize)
    stats = aligned(2 * g.br * g.dtype.itemsize)
    gemm = 0
    for m in g.sizes(g.tq, g.br):
        for n in g.sizes(g.tk, g.bc):
            specs = gemm_specs_forward(g, m, n, outs.o_stride)
            for spec in specs if outs.o_stride else specs[:1]:
                gemm = max(gemm, aligned(spec.scratch_bytes(target)))
    return tile, stats, gemm


def _forward_split(g: Geometry, threads: int) -> tuple[int, tuple[int, int] | None]:
    """(work items, split_plan) of the forward kernel: one item per (matrix, query block)."""
    blocks = -(-g.tq // g.br) if g.tq else 0
    items = g.batch * blocks
    # An item reads its matrix's keys and values whole: with few queries (a decode step)
    # that read, not the arithmetic, is its cost (KV_BYTE_FLOPS flops' worth per byte).
    item_flops = max(2 * g.br * g.tk * (g.dk + g.dv),
                     KV_BYTE_FLOPS * g.tk * (g.dk + g.dv) * g.dtype.itemsize)
    return items, split_plan(items, max(1, TASK_FLOPS // max(item_flops, 1)), threads)


def _per_task(g: Geometry, target: Target, outs: Outputs) -> int:
    if use_tiles(g):
        return tile_layout(g, target, bool(outs.o_stride)).total
    return sum(_forward_layout(g, target, outs))


def forward_scratch(kernel: Kernel, target: Target, threads: int = 1,
                    conv: str = "auto") -> int:
    node = kernel.anchor
    assert node is not None
    g = geometry(node)
    per_task = _per_task(g, target, outputs_of(node, g))
    _, split = _forward_split(g, threads)
    return per_task * (split[1] if split else 1)


def emit_forward(ctx: KernelContext) -> None:
    node = ctx.kernel.anchor
    assert node is not None
    g = geometry(node)
    outs = outputs_of(node, g)
    q, k, v, *rest = node.inputs
    mask_node = rest[0] if rest else None
    dtype = g.dtype
    lanes = ctx.target.lanes(dtype.itemsize)
    tile_bytes, stats_bytes, _ = _forward_layout(g, ctx.target, outs)
    per_task = _per_task(g, ctx.target, outs)
    tiles = tile_layout(g, ctx.target, bool(outs.o_stride)) if use_tiles(g) else None
    items, split = _forward_split(g, ctx.threads)
    blocks = -(-g.tq // g.br) if g.tq else 0
    if items == 0:
        return

    def task(c: KernelContext, start: ir.Value, stop: ir.Value) -> None:
        b = c.b
        mine = task_scratch(c, start, split, per_task)
        tile = mine
        stats = b.gep(mine, [i64(tile_bytes)], inbounds=True, source_etype=ir.IntType(8))
        gemm_scratch = b.gep(mine, [i64(tile_bytes + stats_bytes)], inbounds=True,
                             source_etype=ir.IntType(8))
        run_max, run_sum = stats, at(b, stats, g.br, dtype)
        qp, kp, vp, out = c.ptr(q), c.ptr(k), c.ptr(v), c.out
        mp = c.ptr(mask_node) if mask_node is not None else None
        if tiles is not None:
            regs = regions(b, g, tiles, mine)
            init_task(b, g, tiles, regs)
            packed_kv = entry_alloca(b, I64, "packed_kv")
            b.store(i64(-1), packed_kv)
        with for_range(b, start, stop, name="item") as item:
            bh = b.udiv(item, i64(blocks))
            i0 = b.mul(b.urem(item, i64(blocks)), i64(g.br))
            kv, mask_base = head_offsets(b, g, bh)
            q_blk = at(b, qp, b.add(b.mul(bh, i64(g.tq * g.dk)), b.mul(i0, i64(g.dk))), dtype)
            k_mat = at(b, kp, b.mul(kv, i64(g.tk * g.dk)), dtype)
            v_mat = at(b, vp, b.mul(kv, i64(g.tk * g.dv)), dtype)
            # Row i0 of matrix bh: O's (or, for attention_lse, the log-sum-exp's) first
            # element; the log-sum-exp of attention_with_lse sits after each O row.
            row = b.add(b.mul(bh, i64(g.tq)), i0)
            o_blk = at(b, out, b.mul(row, i64(max(outs.o_stride, 1))), dtype)
            lse_blk = at(b, o_blk, outs.lse_offset, dtype)
            rows = b.sub(ir.Constant(I64, g.tq), i0)
            rows = b.select(b.icmp_signed("<", rows, i64(g.br)), rows, i64(g.br))

            if tiles is not None:  # K and V of this head packed, unless the last item's
                with b.if_then(b.icmp_signed("!=", b.load(packed_kv), kv)):
                    pack_head(b, g, tiles, regs, k_mat, v_mat if outs.o_stride else None)
                    b.store(kv, packed_kv)

            def block(m: int) -> None:
                if tiles is not None:
                    _tiled_query_block(b, g, m, lanes, outs, tiles, regs, q_blk, v_mat,
                                       o_blk, lse_blk, mp, mask_base, i0)
                    return
                _query_block(b, g, m, lanes, outs, q_blk, k_mat, v_mat, o_blk, lse_blk, mp,
                             mask_base, i0, tile, run_max, run_sum, gemm_scratch, ctx.target)

            static_cases(b, rows, g.sizes(g.tq, g.br), block)

    if split is None:
        task(ctx, i64(0), i64(items))
    else:
        parallel_range(ctx, items, split[0], task)


def _query_block(b: ir.IRBuilder, g: Geometry, m: int, lanes: int, outs: Outputs,
                 q_blk: ir.Value, k_mat: ir.Value, v_mat: ir.Value, o_blk: ir.Value,
                 lse_blk: ir.Value, mask: ir.Value | None, mask_base: ir.Value,
                 i0: ir.Value, tile: ir.Value, run_max: ir.Value, run_sum: ir.Value,
                 gemm_scratch: ir.Value, target: Target) -> None:
    """One block of m query rows: the key loop with the online softmax, then normalize."""
    dtype = g.dtype
    _init_block(b, g, m, lanes, outs, o_blk, run_max, run_sum)
    with for_range(b, 0, _kv_end(b, g, m, i0), g.bc, name="kv") as j0:
        keys = b.sub(i64(g.tk), j0)
        keys = b.select(b.icmp_signed("<", keys, i64(g.bc)), keys, i64(g.bc))

        def kv_block(n: int) -> None:
            if mask is not None and g.row_invariant_mask:
                # Every score of the block -inf: it adds nothing to the softmax; skip it.
                with b.if_then(_any_key_visible(b, g, mask, mask_base, j0, n)):
                    key_block(n)
            else:
                key_block(n)

        def key_block(n: int) -> None:
            s_spec, pv_spec = gemm_specs_forward(g, m, n, outs.o_stride)
            k_blk = at(b, k_mat, b.mul(j0, i64(g.dk)), dtype)
            emit_gemm(b, s_spec, q_blk, k_blk, tile, gemm_scratch, target,
                      score_epilogue(g, mask, mask_base, i0, j0))
            with for_range(b, 0, m, name="row") as r:
                _softmax_row(b, g, n, lanes, outs.o_stride, tile, r, run_max, run_sum,
                             o_blk)
            if outs.o_stride:
                v_blk = at(b, v_mat, b.mul(j0, i64(g.dv)), dtype)
                emit_gemm(b, pv_spec, tile, v_blk, o_blk, gemm_scratch, target,
                          accumulate=True)

        static_cases(b, keys, g.sizes(g.tk, g.bc), kv_block)
    _finish_block(b, g, m, lanes, outs, o_blk, lse_blk, run_max, run_sum)


def _init_block(b: ir.IRBuilder, g: Geometry, m: int, lanes: int, outs: Outputs,
                o_blk: ir.Value, run_max: ir.Value, run_sum: ir.Value) -> None:
    """Running max -inf, sum 0 and O 0 for a block of m rows."""
    dtype = g.dtype
    isz = dtype.itemsize
    with for_range(b, 0, m, name="init") as r:
        b.store(const(dtype, -math.inf), at(b, run_max, r, dtype), align=isz)
        b.store(const(dtype, 0.0), at(b, run_sum, r, dtype), align=isz)
    if outs.o_stride:
        zero_fill(b, dtype, lanes, o_blk, m * outs.o_stride)


def _kv_end(b: ir.IRBuilder, g: Geometry, m: int, i0: ir.Value) -> ir.Value:
    """Where a query block's keys end: Tk, or with `causal` its last row's diagonal."""
    kv_end: ir.Value = i64(g.tk)
    if g.causal:
        last = b.add(i0, i64(m))
        kv_end = b.select(b.icmp_signed("<", last, kv_end), last, kv_end)
    return kv_end


def _finish_block(b: ir.IRBuilder, g: Geometry, m: int, lanes: int, outs: Outputs,
                  o_blk: ir.Value, lse_blk: ir.Value, run_max: ir.Value,
                  run_sum: ir.Value) -> None:
    """O /= the running sum; the log-sum-exp m + log l (-inf and O = 0 for empty rows)."""
    dtype = g.dtype
    ct = compute_type(dtype)
    isz = dtype.itemsize
    with for_range(b, 0, m, name="fin") as r:
        total = b.load(at(b, run_sum, r, dtype), typ=ct, align=isz)
        empty = b.fcmp_ordered("==", total, const(dtype, 0.0))
        if outs.o_stride:
            inv = b.select(empty, const(dtype, 0.0), b.fdiv(const(dtype, 1.0), total))
            scale_row(b, dtype, lanes, at(b, o_blk, b.mul(r, i64(outs.o_stride)), dtype),
                       g.dv, inv)
        if outs.lse_stride:
            top = b.load(at(b, run_max, r, dtype), typ=ct, align=isz)
            safe = b.select(empty, const(dtype, 1.0), total)
            lse = b.select(empty, const(dtype, -math.inf),
                           b.fadd(top, vecmath.log(b, safe)))
            b.store(lse, at(b, lse_blk, b.mul(r, i64(outs.lse_stride)), dtype), align=isz)


def _tiled_query_block(b: ir.IRBuilder, g: Geometry, m: int, lanes: int, outs: Outputs,
                       lay: TileLayout, regs: Regions, q_blk: ir.Value, v_mat: ir.Value,
                       o_blk: ir.Value, lse_blk: ir.Value, mask: ir.Value | None,
                       mask_base: ir.Value, i0: ir.Value) -> None:
    """`_query_block` on `attention_tiles`' register blocks (K and V of the head packed)."""
    pack_tail(b, g, lay, q_blk, g.dk, m, regs.q_pack)
    ptrs = BlockPtrs(q_blk, v_mat, o_blk if outs.o_stride else None, outs.o_stride, mask,
                     mask_base)
    _init_block(b, g, m, lanes, outs, o_blk, regs.run_max, regs.run_sum)
    with for_range(b, 0, _kv_end(b, g, m, i0), g.bc, name="kv") as j0:
        keys = b.sub(i64(g.tk), j0)
        keys = b.select(b.icmp_signed("<", keys, i64(g.bc)), keys, i64(g.bc))

        def kv_block(n: int) -> None:
            def run() -> None:
                key_block(b, g, lay, regs, ptrs, m, n, i0, j0)

            if mask is not None and g.row_invariant_mask:
                # Every score of the block -inf: it adds nothing to the softmax; skip it.
                with b.if_then(_any_key_visible(b, g, mask, mask_base, j0, n)):
                    run()
            else:
                run()

        static_cases(b, keys, g.sizes(g.tk, g.bc), kv_block)
    _finish_block(b, g, m, lanes, outs, o_blk, lse_blk, regs.run_max, regs.run_sum)


def _any_key_visible(b: ir.IRBuilder, g: Geometry, mask: ir.Value, mask_base: ir.Value,
                     j0: ir.Value, n: int) -> ir.Value:
    """Whether the row-invariant mask lets any of keys [j0, j0 + n) through (i1)."""
    dtype = g.dtype
    sk = g.mask_strides[-1] if g.mask_strides is not None else 0
    if sk == 0:  # one value for every key of the row
        m = b.load(at(b, mask, mask_base, dtype), typ=compute_type(dtype), align=dtype.itemsize)
        return b.fcmp_ordered("!=", m, const(dtype, -math.inf))
    seen = entry_alloca(b, ir.IntType(1))
    b.store(ir.Constant(ir.IntType(1), 0), seen)
    with for_range(b, 0, n, name="vis") as c:
        off = b.add(mask_base, b.mul(b.add(j0, c), i64(sk)))
        m = b.load(at(b, mask, off, dtype), typ=compute_type(dtype), align=dtype.itemsize)
        b.store(b.or_(b.load(seen), b.fcmp_ordered("!=", m, const(dtype, -math.inf))), seen)
    return b.load(seen)


def _softmax_row(b: ir.IRBuilder, g: Geometry, n: int, lanes: int, o_stride: int,
                 tile: ir.Value, r: ir.Value, run_max: ir.Value, run_sum: ir.Value,
                 o_blk: ir.Value) -> None:
    """Row r of the tile: scores -> probabilities (exp(s - m')), update the running max and
    sum, rescale the row's output accumulator by exp(m - m')."""
    dtype = g.dtype
    ct = compute_type(dtype)
    isz = dtype.itemsize
    w = min(lanes, 1 << (n - 1).bit_length()) if n > 1 else 1
    w = max(w, 2) if lanes > 1 else 1
    best = [const(dtype, -math.inf, w)]

    def take_max(ptr: ir.Value, v: ir.Value, valid: ir.Value) -> None:
        best[0] = b.select(b.fcmp_ordered(">", v, best[0]), v, best[0])

    row_vectors(b, g, tile, r, n, w, take_max)
    old = b.load(at(b, run_max, r, dtype), typ=ct, align=isz)
    new = vmax(b, dtype, old, lanes_max(b, dtype, best[0]))
    b.store(new, at(b, run_max, r, dtype), align=isz)
    # All -inf so far: shift by 0, so exp gives 0 rather than nan.
    finite = b.fcmp_ordered("!=", new, const(dtype, -math.inf))
    shift = b.select(finite, new, const(dtype, 0.0))
    total = [const(dtype, 0.0, w)]

    def exp_store(ptr: ir.Value, v: ir.Value, valid: ir.Value) -> None:
        p = vecmath.exp(b, b.fsub(v, splat(b, shift, w)))
        p = b.select(valid, p, const(dtype, 0.0, w))
        b.store(p, ptr, align=isz)
        total[0] = b.fadd(total[0], p)

    row_vectors(b, g, tile, r, n, w, exp_store)
    alpha = vecmath.exp(b, b.fsub(old, shift))  # old = -inf: 0 (the accumulator is 0 too)
    s = b.load(at(b, run_sum, r, dtype), typ=ct, align=isz)
    b.store(b.fadd(b.fmul(s, alpha), hsum(b, dtype, total[0])), at(b, run_sum, r, dtype),
            align=isz)
    if o_stride:
        scale_row(b, dtype, lanes, at(b, o_blk, b.mul(r, i64(o_stride)), dtype), g.dv, alpha)


LOWERINGS: tuple[Lowering, ...] = (
    Lowering("attention", emit_forward, forward_scratch),
    Lowering("attention_lse", emit_forward, forward_scratch),
    Lowering("attention_with_lse", emit_forward, forward_scratch),
)
