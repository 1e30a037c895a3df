"""The fused attention backward kernel (`attention_grad`): FlashAttention-2's scheme.

Inputs q, k, v, o, dO, lse (and the mask). For each key/value head (one work item, so the
query heads of a group, which share it, add into its dK and dV without a race):

    for each query head h of the group:
        D = rowsum(dO ⊙ O)                                        per query row
        for each key block j:              (with `causal`, from the block holding row j0)
            for each query block i:
                S  = Q_i K_jᵀ · scale (+ mask)       GEMM with the forward's epilogue
                P  = exp(S - lse_i)                  probabilities recomputed, never saved
                dV_j += Pᵀ dO_i                      GEMM accumulating into the output
                dP = dO_i V_jᵀ                       GEMM
                dS = scale · P ⊙ (dP - D_i)
                dQ_i += dS K_j;  dK_j += dSᵀ Q_i     GEMMs accumulating into the output

With more than FEW_QUERIES queries the pairs run on the GEMM's micro-kernel directly, operands
packed once per head and causal-cut pairs trimmed (`attention_grad_tiles`).

Memory is O(T): two BR x BC tiles per task. The result is dq, dk, dv flattened back to
back (`graphc.ops.attention`); every region is zeroed by the task that owns it first.
"""

from __future__ import annotations

import math

import llvmlite.ir as ir

from graphc.codegen.context import KernelContext, Lowering
from graphc.codegen.gemm.emit import GemmSpec, emit_gemm
from graphc.codegen.gemm.helpers import for_range, hsum
from graphc.codegen.index import splat
from graphc.codegen.llvm_types import compute_type, const
from graphc.codegen.opaque import attention_grad_tiles as tiles
from graphc.codegen.opaque.attention import (
    Geometry,
    aligned,
    at,
    geometry,
    grad_block_pairs,
    head_offsets,
    i64,
    row_vectors,
    score_epilogue,
    task_scratch,
    zero_fill,
)
from graphc.codegen.opaque.attention_tiles import use_tiles
from graphc.codegen.parallel import parallel_range, split_plan
from graphc.codegen.target import Target
from graphc.codegen.vecmath import functions as vecmath
from graphc.passes.kernels import Kernel


def _specs(g: Geometry, m: int, n: int) -> dict[str, GemmSpec]:
    """The five GEMMs of a block of m query rows and n keys (tiles have row stride ld)."""
    f = g.dtype
    return {
        "s": GemmSpec(m, n, g.dk, f, False, True, g.dk, g.dk, g.ld),
        "dv": GemmSpec(n, g.dv, m, f, True, False, g.ld, g.dv, g.dv),
        "dp": GemmSpec(m, n, g.dv, f, False, True, g.dv, g.dv, g.ld),
        "dq": GemmSpec(m, g.dk, n, f, False, False, g.ld, g.dk, g.dk),
        "dk": GemmSpec(n, g.dk, m, f, True, False, g.ld, g.dk, g.dk),
    }


def _layout(g: Geometry, target: Target) -> tuple[int, int, int]:
    """(tile bytes, D bytes, GEMM scratch bytes) of one task (it has two tiles)."""
    tile = aligned(g.br * g.ld * g.dtype.itemsize)
    rows = aligned(max(g.tq, 1) * g.dtype.itemsize)
    gemm = max((aligned(spec.scratch_bytes(target))
                for m in g.sizes(g.tq, g.br) for n in g.sizes(g.tk, g.bc)
                for spec in _specs(g, m, n).values()), default=0)
    return tile, rows, gemm


def _split(g: Geometry, threads: int) -> tuple[int, tuple[int, int] | None]:
    items = g.batch // g.group
    return items, split_plan(items, 1, threads)


def _per_task(g: Geometry, target: Target) -> int:
    if use_tiles(g):
        return tiles.grad_layout(g, target).total
    tile, rows, gemm = _layout(g, target)
    return 2 * tile + rows + gemm


def scratch(kernel: Kernel, target: Target, threads: int = 1, conv: str = "auto") -> int:
    node = kernel.anchor
    assert node is not None
    g = geometry(node)
    _, split = _split(g, threads)
    return _per_task(g, target) * (split[1] if split else 1)


def emit(ctx: KernelContext) -> None:
    node = ctx.kernel.anchor
    assert node is not None
    g = geometry(node)
    packed = bool(node.attrs["packed"])
    if packed:  # o is attention_with_lse's [O | lse] rows
        q, k, v, o, do, *rest = node.inputs
        lse = o
    else:
        q, k, v, o, do, lse, *rest = node.inputs
    mask_node = rest[0] if rest else None
    o_stride = g.dv + 1 if packed else g.dv
    lse_stride = g.dv + 1 if packed else 1
    dtype = g.dtype
    lanes = ctx.target.lanes(dtype.itemsize)
    tile_bytes, rows_bytes, _ = _layout(g, ctx.target)
    per_task = _per_task(g, ctx.target)
    lay = tiles.grad_layout(g, ctx.target) if use_tiles(g) else None
    items, split = _split(g, ctx.threads)
    q_size = g.batch * g.tq * g.dk
    k_size = items * g.tk * g.dk
    if items == 0:
        return

    def task(c: KernelContext, start: ir.Value, stop: ir.Value) -> None:
        b = c.b
        mine = task_scratch(c, start, split, per_task)

        def region(offset: int) -> ir.Value:
            return b.gep(mine, [i64(offset)], inbounds=True, source_etype=ir.IntType(8))

        p_tile, ds_tile = mine, region(tile_bytes)
        d_rows, gemm_scratch = region(2 * tile_bytes), region(2 * tile_bytes + rows_bytes)
        if lay is not None:
            regs = tiles.regions(b, lay, mine)
            d_rows = regs["d_rows"]
            tiles.init_task(b, g, lay, regs)
        ptr = {n: c.ptr(n) for n in (q, k, v, o, do, lse)}
        lse_base = at(b, ptr[lse], g.dv, dtype) if packed else ptr[lse]
        mp = c.ptr(mask_node) if mask_node is not None else None
        out = c.out
        with for_range(b, start, stop, name="kvh") as kv:
            k_mat = at(b, ptr[k], b.mul(kv, i64(g.tk * g.dk)), dtype)
            v_mat = at(b, ptr[v], b.mul(kv, i64(g.tk * g.dv)), dtype)
            dk_mat = at(b, out, b.add(i64(q_size), b.mul(kv, i64(g.tk * g.dk))), dtype)
            dv_mat = at(b, out, b.add(i64(q_size + k_size), b.mul(kv, i64(g.tk * g.dv))),
                        dtype)
            zero_fill(b, dtype, lanes, dk_mat, g.tk * g.dk)
            zero_fill(b, dtype, lanes, dv_mat, g.tk * g.dv)
            if lay is not None:
                tiles.pack_kv_head(b, g, lay, regs, k_mat, v_mat)
            outer = b.udiv(kv, i64(g.kv_heads))
            first_head = b.add(b.mul(outer, i64(g.heads)),
                               b.mul(b.urem(kv, i64(g.kv_heads)), i64(g.group)))
            with for_range(b, 0, g.group, name="qh") as h:
                bh = b.add(first_head, h)
                _, mask_base = head_offsets(b, g, bh)
                mats = {name: at(b, base, b.mul(bh, i64(g.tq * width)), dtype)
                        for name, base, width in (("q", ptr[q], g.dk), ("o", ptr[o], o_stride),
                                                  ("do", ptr[do], g.dv),
                                                  ("lse", lse_base, lse_stride))}
                mats["dq"] = at(b, out, b.mul(bh, i64(g.tq * g.dk)), dtype)
                zero_fill(b, dtype, lanes, mats["dq"], g.tq * g.dk)
                _row_dots(b, g, lanes, mats["o"], o_stride, mats["do"], d_rows)
                if lay is not None:
                    tiles.pack_query_head(b, g, lay, regs, mats["q"], mats["do"])
                    tiles.head(b, g, lay, regs, tiles.HeadPtrs(
                        mats["q"], mats["do"], k_mat, mats["lse"], lse_stride, mats["dq"],
                        dk_mat, dv_mat, mp, mask_base))
                else:
                    _head(b, g, lanes, mats, lse_stride, k_mat, v_mat, dk_mat, dv_mat, mp,
                          mask_base, d_rows, p_tile, ds_tile, gemm_scratch, ctx.target)

    if split is None:
        task(ctx, i64(0), i64(items))
    else:
        parallel_range(ctx, items, split[0], task)


def _row_dots(b: ir.IRBuilder, g: Geometry, lanes: int, o: ir.Value, o_stride: int,
              do: ir.Value, d_rows: ir.Value) -> None:
    """D[i] = sum(dO[i] ⊙ O[i]) for every query row of one head (O rows `o_stride` apart)."""
    dtype = g.dtype
    isz = dtype.itemsize
    with for_range(b, 0, g.tq, name="drow") as i:
        base = b.mul(i, i64(g.dv))
        o_base = b.mul(i, i64(o_stride))
        acc = const(dtype, 0.0, lanes)
        tail = const(dtype, 0.0)
        for c in range(0, g.dv, lanes):
            if c + lanes > g.dv:
                for e in range(c, g.dv):
                    x = b.load(at(b, o, b.add(o_base, i64(e)), dtype),
                               typ=compute_type(dtype), align=isz)
                    y = b.load(at(b, do, b.add(base, i64(e)), dtype), typ=compute_type(dtype),
                               align=isz)
                    tail = b.fadd(tail, b.fmul(x, y))
                break
            vt = compute_type(dtype, lanes)
            x = b.load(at(b, o, b.add(o_base, i64(c)), dtype), typ=vt, align=isz)
            y = b.load(at(b, do, b.add(base, i64(c)), dtype), typ=vt, align=isz)
            acc = b.fadd(acc, b.fmul(x, y))
        b.store(b.fadd(hsum(b, dtype, acc), tail), at(b, d_rows, i, dtype), align=isz)


def _head(b: ir.IRBuilder, g: Geometry, lanes: int, mats: dict[str, ir.Value],
          lse_stride: int, k_mat: ir.Value, v_mat: ir.Value, dk_mat: ir.Value, dv_mat: ir.Value,
          mask: ir.Value | None, mask_base: ir.Value, d_rows: ir.Value, p_tile: ir.Value,
          ds_tile: ir.Value, gemm_scratch: ir.Value, target: Target) -> None:
    """Every (key block, query block) pair of one query head."""
    dtype = g.dtype

    def pair(m: int, n: int, i0: ir.Value, j0: ir.Value) -> None:
        spec = _specs(g, m, n)
        q_i = at(b, mats["q"], b.mul(i0, i64(g.dk)), dtype)
        do_i = at(b, mats["do"], b.mul(i0, i64(g.dv)), dtype)
        dq_i = at(b, mats["dq"], b.mul(i0, i64(g.dk)), dtype)
        k_j = at(b, k_mat, b.mul(j0, i64(g.dk)), dtype)
        v_j = at(b, v_mat, b.mul(j0, i64(g.dv)), dtype)
        dk_j = at(b, dk_mat, b.mul(j0, i64(g.dk)), dtype)
        dv_j = at(b, dv_mat, b.mul(j0, i64(g.dv)), dtype)
        emit_gemm(b, spec["s"], q_i, k_j, p_tile, gemm_scratch, target,
                  score_epilogue(g, mask, mask_base, i0, j0))
        with for_range(b, 0, m, name="prow") as r:
            lse_at = b.mul(b.add(i0, r), i64(lse_stride))
            _probabilities(b, g, n, lanes, p_tile, r, at(b, mats["lse"], lse_at, dtype))
        emit_gemm(b, spec["dv"], p_tile, do_i, dv_j, gemm_scratch, target, accumulate=True)
        emit_gemm(b, spec["dp"], do_i, v_j, ds_tile, gemm_scratch, target)
        with for_range(b, 0, m, name="dsrow") as r:
            _score_grads(b, g, n, lanes, p_tile, ds_tile, r, at(b, d_rows, b.add(i0, r), dtype))
        emit_gemm(b, spec["dq"], ds_tile, k_j, dq_i, gemm_scratch, target, accumulate=True)
        emit_gemm(b, spec["dk"], ds_tile, q_i, dk_j, gemm_scratch, target, accumulate=True)

    grad_block_pairs(b, g, pair)


def _probabilities(b: ir.IRBuilder, g: Geometry, n: int, lanes: int, tile: ir.Value,
                   r: ir.Value, lse_ptr: ir.Value) -> None:
    """Row r of the score tile becomes exp(s - lse) (0 for a fully masked row)."""
    dtype = g.dtype
    lse = b.load(lse_ptr, typ=compute_type(dtype), align=dtype.itemsize)
    finite = b.fcmp_ordered("!=", lse, const(dtype, -math.inf))
    shift = splat(b, b.select(finite, lse, const(dtype, 0.0)), lanes)

    def visit(ptr: ir.Value, s: ir.Value, valid: ir.Value) -> None:
        p = b.select(valid, vecmath.exp(b, b.fsub(s, shift)), const(dtype, 0.0, lanes))
        b.store(p, ptr, align=dtype.itemsize)

    row_vectors(b, g, tile, r, n, lanes, visit)


def _score_grads(b: ir.IRBuilder, g: Geometry, n: int, lanes: int, p_tile: ir.Value,
                 ds_tile: ir.Value, r: ir.Value, d_ptr: ir.Value) -> None:
    """Row r of the dP tile becomes dS = scale · P ⊙ (dP - D[r])."""
    dtype = g.dtype
    isz = dtype.itemsize
    d = splat(b, b.load(d_ptr, typ=compute_type(dtype), align=isz), lanes)
    scale = const(dtype, g.scale, lanes)
    vt = compute_type(dtype, lanes)
    base = b.mul(r, i64(g.ld))
    # Both tiles hold full vectors up to ld (P is 0 past column n), so no masks are needed.
    for c in range(0, n, lanes):
        pp = at(b, p_tile, b.add(base, i64(c)), dtype)
        dp_ptr = at(b, ds_tile, b.add(base, i64(c)), dtype)
        p = b.load(pp, typ=vt, align=isz)
        dp = b.load(dp_ptr, typ=vt, align=isz)
        b.store(b.fmul(scale, b.fmul(p, b.fsub(dp, d))), dp_ptr, align=isz)


LOWERINGS: tuple[Lowering, ...] = (Lowering("attention_grad", emit, scratch),)
