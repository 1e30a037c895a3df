"""The attention forward's query block at many queries, on the GEMM's register blocks.

`attention_forward` computes a block's two products S = Q Kᵀ and O += P V with `emit_gemm`,
which packs its operands again for every (query block, key block) pair, and computes every
score of a causal diagonal block although half of them are masked. At the small shapes of
a transformer (T = 128: a third of the blocks are diagonal, and each product is only
64 x 64 x 64) both cost a third of the time. Here the kernel drives the packed GEMM's
micro-kernel (`graphc.codegen.gemm.kernels`) itself:

- K (as Kᵀ's NR-wide panels) and V (as NR-wide panels over Dv, all Tk keys long) are packed
  once per key/value head and task, Q once per query block; P is read in place from the
  score tile (the micro-kernel specialised for its row stride);
- in a block that the causal mask cuts (`j0 + n > i0 + 1`), each MR-row tile of queries
  computes only the NR-wide key panels that hold a key it sees, the softmax covers only
  those keys, and P V runs over only those keys (the micro-kernel's k is a runtime count).
  Blocks wholly below the diagonal have no causal select at all.

Contract as in `attention_forward`: same results up to rounding order; per-task scratch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import llvmlite.ir as ir

from graphc.codegen.gemm.helpers import carried_loop, for_range, hsum, smin
from graphc.codegen.gemm.kernels import (
    micro_kernel,
    pack_function,
    store_full_tile,
    store_tile_code,
    store_tile_function,
)
from graphc.codegen.gemm.spec import Epilogue, kernel_shape
from graphc.codegen.index import splat
from graphc.codegen.llvm_types import I64, compute_type, const
from graphc.codegen.opaque.attention import (
    FEW_QUERIES,
    Geometry,
    aligned,
    at,
    i64,
    lanes_max,
    scale_row,
    score_epilogue,
    vmax,
    zero_fill,
)
from graphc.codegen.target import Target
from graphc.codegen.vecmath import functions as vecmath


def use_tiles(g: Geometry) -> bool:
    """Whether the forward uses this path: many queries (a decode step's few rows are
    cheaper through `emit_gemm`'s unpacked paths than packing all of K and V)."""
    return g.tq > FEW_QUERIES


@dataclass(frozen=True)
class TileLayout:
    """Register block (mr x nr of `lanes`-wide vectors) and one task's scratch regions
    (byte offsets): packed K and V of a head, packed Q block, score tile (rows padded to a
    multiple of mr, so P's in-place reads of a last partial row tile stay inside), running
    max and sum, the micro-kernel's output tile."""

    mr: int
    nr: int
    lanes: int
    rows: int
    k_pack: int
    v_pack: int
    q_pack: int
    tile: int
    stats: int
    acc: int
    total: int


def tile_layout(g: Geometry, target: Target, with_v: bool) -> TileLayout:
    mr, nr, lanes = kernel_shape(g.dtype, target, 1 << 30)
    isz = g.dtype.itemsize
    rows = -(-g.br // mr) * mr
    sizes = [aligned(-(-g.tk // nr) * nr * g.dk * isz),
             aligned(-(-g.dv // nr) * nr * g.tk * isz) if with_v else 0,
             aligned(rows * g.dk * isz), aligned(rows * g.ld * isz),
             aligned(2 * g.br * isz), aligned(mr * nr * isz)]
    offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    return TileLayout(mr, nr, lanes, rows, *offsets)


@dataclass(frozen=True)
class Regions:
    """Pointers to one task's scratch regions (see `TileLayout`)."""

    k_pack: ir.Value
    v_pack: ir.Value
    q_pack: ir.Value
    tile: ir.Value
    run_max: ir.Value
    run_sum: ir.Value
    acc: ir.Value


def regions(b: ir.IRBuilder, g: Geometry, lay: TileLayout, mine: ir.Value) -> Regions:
    def region(offset: int) -> ir.Value:
        return b.gep(mine, [i64(offset)], inbounds=True, source_etype=ir.IntType(8))

    stats = region(lay.stats)
    return Regions(region(lay.k_pack), region(lay.v_pack), region(lay.q_pack),
                   region(lay.tile), stats, at(b, stats, g.br, g.dtype), region(lay.acc))


def init_task(b: ir.IRBuilder, g: Geometry, lay: TileLayout, r: Regions) -> None:
    """Zero the score tile: P's in-place reads of a partial row tile load rows past the
    block (their products are discarded, but stale bits could be slow denormals)."""
    zero_fill(b, g.dtype, lay.lanes, r.tile, lay.rows * g.ld)


def pack_head(b: ir.IRBuilder, g: Geometry, lay: TileLayout, r: Regions, k_mat: ir.Value,
              v_mat: ir.Value | None) -> None:
    """Kᵀ into NR-wide key panels (k = Dk) and V into NR-wide Dv panels (k = Tk)."""
    module = b.module
    pack_k = pack_function(module, g.dtype, lay.nr, lay.lanes, transposed=True)
    b.call(pack_k, [k_mat, i64(g.dk), i64(g.tk), i64(g.dk), r.k_pack])
    if v_mat is not None:
        pack_v = pack_function(module, g.dtype, lay.nr, lay.lanes, transposed=False)
        b.call(pack_v, [v_mat, i64(g.dv), i64(g.dv), i64(g.tk), r.v_pack])


def pack_queries(b: ir.IRBuilder, g: Geometry, lay: TileLayout, r: Regions, q_blk: ir.Value,
                 m: int) -> None:
    pack_q = pack_function(b.module, g.dtype, lay.mr, lay.lanes, transposed=True)
    b.call(pack_q, [q_blk, i64(g.dk), i64(m), i64(g.dk), r.q_pack])


def key_block(b: ir.IRBuilder, g: Geometry, lay: TileLayout, r: Regions, m: int, n: int,
              i0: ir.Value, j0: ir.Value, mask: ir.Value | None, mask_base: ir.Value,
              o_blk: ir.Value | None, o_stride: int) -> None:
    """Key block [j0, j0 + n) of the query block [i0, i0 + m) (Q packed): scores, the online
    softmax update (which rescales O's rows) and O += P V. A block the causal mask cuts
    takes the trimmed variant."""
    if not g.causal:
        _block(b, g, lay, r, m, n, i0, j0, mask, mask_base, o_blk, o_stride, None)
        return
    cut = b.icmp_signed(">", b.add(j0, i64(n)), b.add(i0, i64(1)))
    with b.if_else(cut) as (then, otherwise):
        with then:
            _block(b, g, lay, r, m, n, i0, j0, mask, mask_base, o_blk, o_stride,
                   b.sub(i0, j0))
        with otherwise:
            _block(b, g, lay, r, m, n, i0, j0, mask, mask_base, o_blk, o_stride, None)


def _block(b: ir.IRBuilder, g: Geometry, lay: TileLayout, r: Regions, m: int, n: int,
           i0: ir.Value, j0: ir.Value, mask: ir.Value | None, mask_base: ir.Value,
           o_blk: ir.Value | None, o_stride: int, diag: ir.Value | None) -> None:
    """`key_block` with `diag` = i0 - j0 when the causal mask cuts the block (row tile
    [t, t + mr) then sees keys [0, clamp(t + mr + diag, 0, n)) of it), None when it does
    not (every row sees all n keys: no causal select)."""
    dtype = g.dtype
    module = b.module
    mr, nr = lay.mr, lay.nr
    epi = score_epilogue(g if diag is not None else dataclasses.replace(g, causal=False),
                         mask, mask_base, i0, j0)
    uk = micro_kernel(module, dtype, mr, nr, lay.lanes)

    def seen(t: ir.Value) -> ir.Value | int:
        """Keys of this block that row tile t sees (a prefix)."""
        if diag is None:
            return n
        end = b.add(b.add(t, i64(mr)), diag)
        end = b.select(b.icmp_signed("<", end, i64(0)), i64(0), end)
        return smin(b, n, end)

    def store(c: ir.Value, ldc: int, t: ir.Value, col: ir.Value | int, rows: int, cols: int,
              load_c: bool, epilogue: Epilogue | None) -> None:
        """The acc tile into C (rows x cols of it in bounds: `rows` rows of a row tile,
        static; `cols` columns up to the static panel width)."""
        if rows == mr and cols == nr:
            store_full_tile(b, dtype, lay.lanes, mr, nr, r.acc, c, ldc, load_c, epilogue, t,
                            col)
        elif epilogue is None:
            b.call(store_tile_function(module, dtype, lay.lanes, nr),
                   [r.acc, c, i64(ldc), i64(rows), i64(cols), ir.Constant(ir.IntType(1),
                                                                        load_c)])
        else:
            store_tile_code(b, dtype, lay.lanes, nr, r.acc, c, i64(ldc), i64(rows), i64(cols),
                            load_c, epilogue, t, col)

    def row_tiles(body: Callable[[ir.Value, int], None]) -> None:
        """body(t, rows) for each row tile: the full ones in a loop, the partial one after."""
        full = m - m % mr
        with for_range(b, 0, full, mr, name="rt") as t:
            body(t, mr)
        if full < m:
            body(i64(full), m - full)

    # S = Q Kᵀ · scale (+ mask, causal -inf), only the key panels a row tile sees.
    def scores(t: ir.Value, rows: int) -> None:
        a_panel = at(b, r.q_pack, b.mul(t, i64(g.dk)), dtype)
        cols = seen(t)
        full = n - n % nr

        def panel(jr: ir.Value | int, width: int) -> None:
            kp = at(b, r.k_pack, b.mul(b.add(j0, i64(jr) if isinstance(jr, int) else jr),
                                       i64(g.dk)), dtype)
            b.call(uk, [i64(g.dk), a_panel, kp, r.acc])
            c = at(b, r.tile, b.add(b.mul(t, i64(g.ld)), i64(jr) if isinstance(jr, int)
                                    else jr), dtype)
            store(c, g.ld, t, jr, rows, width, False, epi)

        with for_range(b, 0, smin(b, full, cols), nr, name="jr") as jr:
            panel(jr, nr)
        if full < n:
            with b.if_then(b.icmp_signed(">", cols if isinstance(cols, ir.Value)
                                         else i64(cols), i64(full))):
                panel(full, n - full)

    row_tiles(scores)

    # The online softmax, row by row, over the keys each row's tile sees.
    with for_range(b, 0, m, name="row") as row:
        tile_start = b.mul(b.udiv(row, i64(mr)), i64(mr))
        _softmax_row(b, g, n, seen(tile_start), lay.lanes, o_stride, r.tile, row,
                     r.run_max, r.run_sum, o_blk)
    if o_blk is None:
        return

    # O += P V over the keys each row tile sees; P read in place from the score tile.
    uk_p = micro_kernel(module, dtype, mr, nr, lay.lanes, a_strides=(g.ld, 1))

    def values(t: ir.Value, rows: int) -> None:
        kc = seen(t)
        a_rows = at(b, r.tile, b.mul(t, i64(g.ld)), dtype)
        full = g.dv - g.dv % nr
        for jq in range(0, g.dv, nr):
            vp = at(b, r.v_pack, b.add(i64(jq * g.tk), b.mul(j0, i64(nr))), dtype)
            b.call(uk_p, [kc if isinstance(kc, ir.Value) else i64(kc), a_rows, vp, r.acc])
            c = at(b, o_blk, b.add(b.mul(t, i64(o_stride)), i64(jq)), dtype)
            store(c, o_stride, t, jq, rows, nr if jq < full else g.dv - full, True, None)

    row_tiles(values)


def _softmax_row(b: ir.IRBuilder, g: Geometry, n: int, width: ir.Value | int, lanes: int,
                 o_stride: int, tile: ir.Value, r: ir.Value, run_max: ir.Value,
                 run_sum: ir.Value, o_blk: ir.Value | None) -> None:
    """Row r of the score tile, keys [0, width) (width <= n; later keys of the row are not
    read by P V): scores -> exp(s - m'); update the running max and sum; rescale the
    row of O by exp(m - m'). Vectors past `width` but inside the tile's row get P = 0."""
    dtype = g.dtype
    ct = compute_type(dtype)
    isz = dtype.itemsize
    vt = compute_type(dtype, lanes)
    base = b.mul(r, i64(g.ld))
    count = b.udiv(b.add(width if isinstance(width, ir.Value) else i64(width),
                         i64(lanes - 1)), i64(lanes))
    iota = ir.Constant(ir.VectorType(I64, lanes), list(range(lanes)))

    def load(v: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value]:
        col = b.mul(v, i64(lanes))
        ptr = at(b, tile, b.add(base, col), dtype)
        x = b.load(ptr, typ=vt, align=isz)
        valid = b.icmp_signed("<", b.add(splat(b, col, lanes), iota), splat(b, i64(n), lanes))
        return ptr, b.select(valid, x, const(dtype, -math.inf, lanes)), valid

    def take_max(v: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
        x = load(v)[1]
        return [b.select(b.fcmp_ordered(">", x, acc[0]), x, acc[0])]

    (best,) = carried_loop(b, 0, count, [const(dtype, -math.inf, lanes)], take_max, name="mx")
    old = b.load(at(b, run_max, r, dtype), typ=ct, align=isz)
    new = vmax(b, dtype, old, lanes_max(b, dtype, best))
    b.store(new, at(b, run_max, r, dtype), align=isz)
    # All -inf so far: shift by 0, so exp gives 0 rather than nan.
    finite = b.fcmp_ordered("!=", new, const(dtype, -math.inf))
    shift = splat(b, b.select(finite, new, const(dtype, 0.0)), lanes)

    def exp_store(v: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
        ptr, x, valid = load(v)
        p = b.select(valid, vecmath.exp(b, b.fsub(x, shift)), const(dtype, 0.0, lanes))
        b.store(p, ptr, align=isz)
        return [b.fadd(acc[0], p)]

    (total,) = carried_loop(b, 0, count, [const(dtype, 0.0, lanes)], exp_store, name="ex")
    alpha = vecmath.exp(b, b.fsub(old, b.extract_element(shift, i64(0))))
    s = b.load(at(b, run_sum, r, dtype), typ=ct, align=isz)
    b.store(b.fadd(b.fmul(s, alpha), hsum(b, dtype, total)), at(b, run_sum, r, dtype),
            align=isz)
    if o_blk is not None:
        scale_row(b, dtype, lanes, at(b, o_blk, b.mul(r, i64(o_stride)), dtype), g.dv, alpha)
