"""The attention forward's query block at many queries, on the GEMM's register blocks.

`emit_gemm` would pack a block's operands of S = Q Kᵀ and O += P V again for every (query
block, key block) pair, and compute every score of a causal diagonal block although half
of them are masked: at a transformer's small shapes (T = 128: a third of the blocks are
diagonal, each product only 64 x 64 x 64) that was a third of the time. Here the kernel
drives the packed GEMM's micro-kernel (`graphc.codegen.gemm.kernels`) itself:

- Kᵀ is packed into NR-wide key panels once per key/value head and task; V is read in
  place (or packed likewise when Dv is not whole panels); whole MR-row tiles of Q are
  read in place, only a block's partial last tile packed; S goes straight into the score
  tile, whose softmax applies scale, mask and the causal cut, and P is read from it in
  place (the micro-kernel specialised for its row stride); O accumulates in place;
- in a block that the causal mask cuts (`j0 + n > i0 + 1`), each MR-row tile of queries
  computes only the key panels that hold a key it sees (the last one half wide when
  that covers them), the softmax covers only those keys, and P V runs over only those
  keys (the micro-kernel's k is a runtime count). Blocks wholly below the diagonal have
  no causal select and static widths.

Contract as in `attention_forward`: same results up to rounding order; per-task scratch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import llvmlite.ir as ir

from graphc.codegen.gemm.helpers import for_range, hsum, smin
from graphc.codegen.gemm.kernels import (
    micro_kernel,
    pack_function,
    store_tile_function,
)
from graphc.codegen.gemm.spec import kernel_shape
from graphc.codegen.index import splat
from graphc.codegen.llvm_types import compute_type, const
from graphc.codegen.opaque.attention import (
    FEW_QUERIES,
    Geometry,
    Scores,
    aligned,
    at,
    i64,
    lanes_max,
    scale_row,
    vector_loop,
    vmax,
    zero_fill,
)
from graphc.codegen.target import Target
from graphc.codegen.vecmath import functions as vecmath
from graphc.ir import DType


def use_tiles(g: Geometry) -> bool:
    """Whether the forward uses this path: many queries (a decode step's few rows are
    cheaper through `emit_gemm`'s unpacked paths than packing all of K and V)."""
    return g.tq > FEW_QUERIES


@dataclass(frozen=True)
class Blocking:
    """The register block (mr x nr of `lanes`-wide vectors) and a score tile's shape: rows
    (BR padded to a multiple of mr, so in-place reads of a last partial row tile stay
    inside) and row stride ld (BC padded to whole register blocks)."""

    mr: int
    nr: int
    lanes: int
    rows: int
    ld: int

    def in_place(self, width: int) -> bool:
        """Whether a row-major operand `width` columns wide is read in place as B (whole
        nr-wide panels: no column past a row's end) rather than packed."""
        return width % self.nr == 0


def blocking(g: Geometry, target: Target) -> Blocking:
    mr, nr, lanes = kernel_shape(g.dtype, target, 1 << 30)
    return Blocking(mr, nr, lanes, -(-g.br // mr) * mr, -(-g.bc // nr) * nr)


@dataclass(frozen=True)
class TileLayout(Blocking):
    """One forward task's scratch regions (byte offsets): packed K (and V unless read in
    place) of a head, the packed last partial row tile of a Q block (whole ones are read
    in place), score tile, running max and sum, the micro-kernel's output tile."""

    k_pack: int
    v_pack: int
    q_pack: int
    tile: int
    stats: int
    acc: int
    total: int


def tile_layout(g: Geometry, target: Target, with_v: bool) -> TileLayout:
    k = blocking(g, target)
    isz = g.dtype.itemsize
    sizes = [aligned(-(-g.tk // k.nr) * k.nr * g.dk * isz),
             aligned(-(-g.dv // k.nr) * k.nr * g.tk * isz)
             if with_v and not k.in_place(g.dv) else 0,
             aligned(k.mr * g.dk * isz), aligned(k.rows * k.ld * isz),
             aligned(2 * g.br * isz), aligned(k.mr * k.nr * isz)]
    offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    return TileLayout(k.mr, k.nr, k.lanes, k.rows, k.ld, *offsets)


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
    zero_fill(b, g.dtype, lay.lanes, r.tile, lay.rows * lay.ld)


def pack_head(b: ir.IRBuilder, g: Geometry, lay: TileLayout, r: Regions, k_mat: ir.Value,
              v_mat: ir.Value | None) -> None:
    """Kᵀ into NR-wide key panels (k = Dk) and V into NR-wide Dv panels (k = Tk)."""
    module = b.module
    pack_k = pack_function(module, g.dtype, lay.nr, lay.lanes, transposed=True)
    b.call(pack_k, [k_mat, i64(g.dk), i64(g.tk), i64(g.dk), r.k_pack])
    if v_mat is not None and not lay.in_place(g.dv):
        pack_v = pack_function(module, g.dtype, lay.nr, lay.lanes, transposed=False)
        b.call(pack_v, [v_mat, i64(g.dv), i64(g.dv), i64(g.tk), r.v_pack])


def pack_tail(b: ir.IRBuilder, g: Geometry, lay: Blocking, src: ir.Value, width: int, m: int,
              dst: ir.Value) -> None:
    """The last, partial mr-row tile of an m-row block (rows `width` apart) into an
    mr-row panel, zero-padded (whole row tiles are read in place)."""
    full = m - m % lay.mr
    if full < m:
        pack = pack_function(b.module, g.dtype, lay.mr, lay.lanes, transposed=True)
        b.call(pack, [at(b, src, full * width, g.dtype), i64(width), i64(m - full),
                      i64(width), dst])


def row_operand(b: ir.IRBuilder, g: Geometry, lay: Blocking, src: ir.Value, width: int,
                tail: ir.Value, t: ir.Value, rows: int) -> tuple[ir.Value, tuple[int, int] | None]:
    """(A, its strides) of row tile t of a row-major block: in place when whole, else
    the packed tail (`pack_tail`)."""
    if rows == lay.mr:
        return at(b, src, b.mul(t, i64(width)), g.dtype), (width, 1)
    return tail, None


@dataclass(frozen=True)
class BlockPtrs:
    """A query block's operands: its Q rows, its head's V, its O (or None: only the
    log-sum-exp is wanted), rows `o_stride` apart, and the mask."""

    q_blk: ir.Value
    v_mat: ir.Value
    o_blk: ir.Value | None
    o_stride: int
    mask: ir.Value | None
    mask_base: ir.Value


def key_block(b: ir.IRBuilder, g: Geometry, lay: TileLayout, r: Regions, p: BlockPtrs,
              m: int, n: int, i0: ir.Value, j0: ir.Value) -> None:
    """Key block [j0, j0 + n) of the query block [i0, i0 + m) (its tail packed): scores,
    the online softmax update (which rescales O's rows) and O += P V. A block the causal
    mask cuts takes the trimmed variant."""
    causal_cut(b, g, n, i0, j0, lambda diag: _block(b, g, lay, r, p, m, n, i0, j0, diag),
               split=True)


def causal_cut(b: ir.IRBuilder, g: Geometry, n: int, i0: ir.Value, j0: ir.Value,
               emit: Callable[[ir.Value | None], None], split: bool) -> None:
    """emit(diag) for the block of n keys at j0 and queries at i0: diag = i0 - j0 when the
    causal mask cuts it, None when nothing is masked (no causal select, static widths).

    split=False emits one copy for both, with diag = n for an uncut block (every row then
    sees all n keys): half the code, for the backward, whose uncut pairs gain little from
    static widths (the forward's softmax rows gain ~3%, measured at T = 128)."""
    if not g.causal:
        emit(None)
        return
    cut = b.icmp_signed(">", b.add(j0, i64(n)), b.add(i0, i64(1)))
    if not split:
        emit(b.select(cut, b.sub(i0, j0), i64(n)))
        return
    with b.if_else(cut) as (then, otherwise):
        with then:
            emit(b.sub(i0, j0))
        with otherwise:
            emit(None)


def seen_keys(b: ir.IRBuilder, n: int, mr: int, diag: ir.Value | None,
              t: ir.Value) -> ir.Value | int:
    """How many keys of an n-key block the row tile [t, t + mr) sees (a prefix): all n, or
    with the causal cut at `diag` = i0 - j0, those up to its last row's diagonal."""
    if diag is None:
        return n
    end = b.add(b.add(t, i64(mr)), diag)
    end = b.select(b.icmp_signed("<", end, i64(0)), i64(0), end)
    return smin(b, n, end)


def call_micro_kernel(b: ir.IRBuilder, dtype: DType, mr: int, nr: int, lanes: int,
                      a_strides: tuple[int, int] | None, b_stride: int | None,
                      args: list[ir.Value], c_stride: int | None = None,
                      accumulate: bool = False) -> None:
    """Call the GEMM micro-kernel on (kc, A, B, C) = `args`: A an mr-row packed panel
    (a_strides None) or read in place with (row, k) strides, B an nr-wide packed panel
    (b_stride None) or nr columns of rows b_stride apart."""
    rs, a_step = a_strides if a_strides is not None else (1, mr)
    uk = micro_kernel(b.module, dtype, mr, nr, lanes, row_stride=rs, c_stride=c_stride,
                      accumulate=accumulate)
    b.call(uk, [*args, i64(a_step), i64(b_stride if b_stride is not None else nr)])


def tile_product(b: ir.IRBuilder, g: Geometry, lay: Blocking, acc: ir.Value, a: ir.Value,
                 a_strides: tuple[int, int] | None, bp: ir.Value, b_stride: int | None,
                 kc: ir.Value | int, c: ir.Value, ldc: int, rows: int, cols: int,
                 accumulate: bool) -> None:
    """C[:rows, :cols] (+)= A · B for one mr x nr register block (k = kc): A an mr-row
    packed panel (a_strides None) or read in place, B an nr-wide packed panel (b_stride
    None) or nr columns of a row-major operand. A whole block goes straight into C; a
    partial one through the `acc` tile."""
    dtype = g.dtype
    module = b.module
    kc_v = kc if isinstance(kc, ir.Value) else i64(kc)
    if rows == lay.mr and cols == lay.nr:
        call_micro_kernel(b, dtype, lay.mr, lay.nr, lay.lanes, a_strides, b_stride,
                          [kc_v, a, bp, c], c_stride=ldc, accumulate=accumulate)
        return
    call_micro_kernel(b, dtype, lay.mr, lay.nr, lay.lanes, a_strides, b_stride,
                      [kc_v, a, bp, acc])
    b.call(store_tile_function(module, dtype, lay.lanes, lay.nr),
           [acc, c, i64(ldc), i64(rows), i64(cols), ir.Constant(ir.IntType(1), accumulate)])


def row_tiles(b: ir.IRBuilder, m: int, mr: int,
              body: Callable[[ir.Value, int], None]) -> None:
    """body(t, rows) for each mr-row tile of m rows: the full ones in a loop, then the
    partial one (rows < mr)."""
    full = m - m % mr
    with for_range(b, 0, full, mr, name="rt") as t:
        body(t, mr)
    if full < m:
        body(i64(full), m - full)


def key_panels(b: ir.IRBuilder, g: Geometry, lay: Blocking, acc: ir.Value,
               a: tuple[ir.Value, tuple[int, int] | None], k: int, packed_t: ir.Value,
               j0: ir.Value, cols: ir.Value | int, c_row: ir.Value) -> None:
    """Row tile of a score-like tile: C[:, jr:jr + nr] = A · Bᵀ panel for the key panels
    jr < cols of the block at j0 (`packed_t`: a head's keys in nr-wide panels, k long).
    The tile has room for whole register blocks, so every store is direct. When `cols`
    (a causal cut) ends in the first half of a two-vector panel, that panel is computed
    half wide (the same throughput per FMA; the other half would be masked anyway)."""
    dtype = g.dtype
    half = lay.nr // 2
    if isinstance(cols, int) or half != lay.lanes:
        with for_range(b, 0, cols, lay.nr, name="jr") as jr:
            bp = at(b, packed_t, b.mul(b.add(j0, jr), i64(k)), dtype)
            tile_product(b, g, lay, acc, a[0], a[1], bp, None, k, at(b, c_row, jr, dtype),
                         lay.ld, lay.mr, lay.nr, False)
        return
    whole = b.sub(cols, b.urem(cols, i64(lay.nr)))
    with for_range(b, 0, whole, lay.nr, name="jr") as jr:
        bp = at(b, packed_t, b.mul(b.add(j0, jr), i64(k)), dtype)
        tile_product(b, g, lay, acc, a[0], a[1], bp, None, k, at(b, c_row, jr, dtype),
                     lay.ld, lay.mr, lay.nr, False)
    rest = b.sub(cols, whole)
    bp = at(b, packed_t, b.mul(b.add(j0, whole), i64(k)), dtype)
    c = at(b, c_row, whole, dtype)
    with b.if_then(b.icmp_signed(">", rest, i64(0))):
        with b.if_else(b.icmp_signed("<=", rest, i64(half))) as (narrow, wide):
            with narrow:  # the first `half` columns of the packed panel (row stride nr)
                call_micro_kernel(b, dtype, lay.mr, half, lay.lanes, a[1], lay.nr,
                                  [i64(k), a[0], bp, c], c_stride=lay.ld)
            with wide:
                tile_product(b, g, lay, acc, a[0], a[1], bp, None, k, c, lay.ld, lay.mr,
                             lay.nr, False)


def _block(b: ir.IRBuilder, g: Geometry, lay: TileLayout, r: Regions, p: BlockPtrs, m: int,
           n: int, i0: ir.Value, j0: ir.Value, diag: ir.Value | None) -> None:
    """`key_block` with `diag` = i0 - j0 when the causal mask cuts the block (row tile
    [t, t + mr) then sees keys [0, clamp(t + mr + diag, 0, n)) of it), None when it does
    not (every row sees all n keys: no causal select)."""
    dtype = g.dtype
    mr = lay.mr
    o_blk, o_stride = p.o_blk, p.o_stride

    # S = Q Kᵀ (raw sums: the softmax scales and masks), only the key panels a tile sees.
    def scores_of(t: ir.Value, rows: int) -> None:
        key_panels(b, g, lay, r.acc, row_operand(b, g, lay, p.q_blk, g.dk, r.q_pack, t, rows),
                   g.dk, r.k_pack, j0, seen_keys(b, n, mr, diag, t),
                   at(b, r.tile, b.mul(t, i64(lay.ld)), dtype))

    row_tiles(b, m, mr, scores_of)

    # The online softmax, row by row, over the keys each row's tile sees.
    scores = Scores(g, lay.ld, lay.lanes, n, p.mask, p.mask_base, i0, j0, diag)
    with for_range(b, 0, m, name="row") as row:
        tile_start = b.mul(b.udiv(row, i64(mr)), i64(mr))
        _softmax_row(b, scores, seen_keys(b, n, mr, diag, tile_start), o_stride, r.tile, row,
                     r.run_max, r.run_sum, o_blk)
    if o_blk is None:
        return

    # O += P V over the keys each row tile sees; P read in place from the score tile.
    def values(t: ir.Value, rows: int) -> None:
        kc = seen_keys(b, n, mr, diag, t)
        a_rows = at(b, r.tile, b.mul(t, i64(lay.ld)), dtype)
        for jq in range(0, g.dv, lay.nr):
            if lay.in_place(g.dv):
                vp, vs = at(b, p.v_mat, b.add(b.mul(j0, i64(g.dv)), i64(jq)), dtype), g.dv
            else:
                vp = at(b, r.v_pack, b.add(i64(jq * g.tk), b.mul(j0, i64(lay.nr))), dtype)
                vs = None
            c = at(b, o_blk, b.add(b.mul(t, i64(o_stride)), i64(jq)), dtype)
            tile_product(b, g, lay, r.acc, a_rows, (lay.ld, 1), vp, vs, kc, c, o_stride, rows,
                         min(lay.nr, g.dv - jq), True)

    row_tiles(b, m, mr, values)


def _softmax_row(b: ir.IRBuilder, sc: Scores, width: ir.Value | int, o_stride: int,
                 tile: ir.Value, r: ir.Value, run_max: ir.Value, run_sum: ir.Value,
                 o_blk: ir.Value | None) -> None:
    """Row r of the score tile, keys [0, width) (width <= n; later keys of the row are not
    read by P V): raw sums -> scores -> exp(s - m'); update the running max and sum;
    rescale the row of O by exp(m - m'). Lanes past `width` in its last vector get P = 0."""
    g = sc.g
    dtype = g.dtype
    lanes = sc.lanes
    ct = compute_type(dtype)
    isz = dtype.itemsize
    count = (-(-width // lanes) if isinstance(width, int)
             else b.udiv(b.add(width, i64(lanes - 1)), i64(lanes)))

    def take_max(v: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
        x = sc.vector(b, tile, r, v)[1]
        return [b.select(b.fcmp_ordered(">", x, acc[0]), x, acc[0])]

    (best,) = vector_loop(b, count, [const(dtype, -math.inf, lanes)], take_max, "mx")
    old = b.load(at(b, run_max, r, dtype), typ=ct, align=isz)
    new = vmax(b, dtype, old, lanes_max(b, dtype, best))
    b.store(new, at(b, run_max, r, dtype), align=isz)
    # All -inf so far: shift by 0, so exp gives 0 rather than nan.
    finite = b.fcmp_ordered("!=", new, const(dtype, -math.inf))
    shift = b.select(finite, new, const(dtype, 0.0))
    shifts = splat(b, shift, lanes)

    def exp_store(v: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
        ptr, x, valid = sc.vector(b, tile, r, v)
        p = b.select(valid, vecmath.exp(b, b.fsub(x, shifts)), const(dtype, 0.0, lanes))
        b.store(p, ptr, align=isz)
        return [b.fadd(acc[0], p)]

    (total,) = vector_loop(b, count, [const(dtype, 0.0, lanes)], exp_store, "ex")
    alpha = vecmath.exp(b, b.fsub(old, shift))
    s = b.load(at(b, run_sum, r, dtype), typ=ct, align=isz)
    b.store(b.fadd(b.fmul(s, alpha), hsum(b, dtype, total)), at(b, run_sum, r, dtype),
            align=isz)
    if o_blk is not None:  # (O is still 0 at the first key block)
        with b.if_then(b.icmp_signed("!=", sc.j0, i64(0))):
            scale_row(b, dtype, lanes, at(b, o_blk, b.mul(r, i64(o_stride)), dtype), g.dv,
                      alpha)
