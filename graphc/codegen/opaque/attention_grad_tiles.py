"""The attention backward's (key block, query block) pairs on the GEMM's register blocks.

`attention_grad` computes a pair's five products with `emit_gemm`, which packs both
operands of each again for every pair, and computes a causal diagonal pair whole. At a
transformer's small shapes (T = 128: a third of the pairs are diagonal, each product
64 x 64 x 64) that is a third of the time. As in the forward (`attention_tiles`), the
kernel here drives the micro-kernel itself:

- per key/value head: Kᵀ and Vᵀ in NR-wide key panels (the B of S = Q Kᵀ, dP = dO Vᵀ);
  K, Q and dO are read in place as B (dQ += dS K, dK += dSᵀ Q, dV += Pᵀ dO) when their
  width is whole NR panels, else packed once per head; whole MR-row tiles of Q and dO are
  read in place as A (S, dP), only each query block's partial last tile packed. P and dS
  are read in place from their tiles (transposed reads for dSᵀ and Pᵀ: the micro-kernel
  specialised for those strides);
- in a pair the causal mask cuts, a row tile of queries computes S and dP only on the key
  panels it sees and dQ only over those keys, and a row tile of keys takes dK and dV only
  from the queries that see it. P and dS are exactly 0 wherever they are not computed, so
  every product still sums exactly what the untrimmed one would.

The result layout and zeroing are `attention_grad`'s; this module replaces its `_head`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import llvmlite.ir as ir

from graphc.codegen.gemm.helpers import for_range
from graphc.codegen.gemm.kernels import pack_function
from graphc.codegen.index import splat
from graphc.codegen.llvm_types import compute_type, const
from graphc.codegen.opaque.attention import (
    BLOCK_Q,
    Geometry,
    Scores,
    aligned,
    at,
    grad_block_pairs,
    i64,
    static_cases,
    vector_loop,
    zero_fill,
)
from graphc.codegen.opaque.attention_tiles import (
    Blocking,
    blocking,
    causal_cut,
    key_panels,
    pack_tail,
    row_operand,
    row_tiles,
    seen_keys,
    tile_product,
)
from graphc.codegen.target import Target
from graphc.codegen.vecmath import functions as vecmath


@dataclass(frozen=True)
class GradLayout(Blocking):
    """One backward task's scratch regions (byte offsets; see the module docstring)."""

    kt: int
    vt: int
    k_rows: int
    q_tail: int
    do_tail: int
    q_rows: int
    do_rows: int
    p_tile: int
    ds_tile: int
    d_rows: int
    acc: int
    total: int


def grad_layout(g: Geometry, target: Target) -> GradLayout:
    k = blocking(g, target)
    isz = g.dtype.itemsize
    keys = -(-g.tk // k.nr) * k.nr
    blocks = -(-g.tq // g.br) if g.tq else 0
    # A tile has one spare row: a transposed read of the last key tile runs past BC.
    tile = aligned((k.rows + 1) * k.ld * isz)

    def panels(width: int, long: int) -> int:  # a row-major operand as B: packed or not
        return 0 if k.in_place(width) else -(-width // k.nr) * k.nr * long

    sizes = [keys * g.dk, keys * g.dv, panels(g.dk, g.tk), blocks * k.mr * g.dk,
             blocks * k.mr * g.dv, panels(g.dk, g.tq), panels(g.dv, g.tq)]
    sizes = [aligned(s * isz) for s in sizes] + [tile, tile, aligned(g.tq * isz),
                                                 aligned(k.mr * k.nr * isz)]
    offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    return GradLayout(k.mr, k.nr, k.lanes, k.rows, k.ld, *offsets)


def regions(b: ir.IRBuilder, lay: GradLayout, mine: ir.Value) -> dict[str, ir.Value]:
    """Pointers to the task's regions, by `GradLayout` field name."""
    names = [f.name for f in fields(GradLayout)][len(fields(Blocking)):-1]
    return {name: b.gep(mine, [i64(getattr(lay, name))], inbounds=True,
                        source_etype=ir.IntType(8)) for name in names}


def init_task(b: ir.IRBuilder, g: Geometry, lay: GradLayout, r: dict[str, ir.Value]) -> None:
    """Zero both tiles once: in-place reads of partial register blocks load rows and
    columns past the pair (their products are discarded; stale bits could be denormals)."""
    for name in ("p_tile", "ds_tile"):
        zero_fill(b, g.dtype, lay.lanes, r[name], (lay.rows + 1) * lay.ld)


def pack_kv_head(b: ir.IRBuilder, g: Geometry, lay: GradLayout, r: dict[str, ir.Value],
                 k_mat: ir.Value, v_mat: ir.Value) -> None:
    module = b.module
    key_panels_of = pack_function(module, g.dtype, lay.nr, lay.lanes, transposed=True)
    col_panels_of = pack_function(module, g.dtype, lay.nr, lay.lanes, transposed=False)
    b.call(key_panels_of, [k_mat, i64(g.dk), i64(g.tk), i64(g.dk), r["kt"]])
    b.call(key_panels_of, [v_mat, i64(g.dv), i64(g.tk), i64(g.dv), r["vt"]])
    if not lay.in_place(g.dk):
        b.call(col_panels_of, [k_mat, i64(g.dk), i64(g.dk), i64(g.tk), r["k_rows"]])


def pack_query_head(b: ir.IRBuilder, g: Geometry, lay: GradLayout, r: dict[str, ir.Value],
                    q_mat: ir.Value, do_mat: ir.Value) -> None:
    """Each query block's last partial row tile of Q and dO (whole ones are read in
    place), and Q and dO as B panels unless read in place."""
    dtype = g.dtype
    col_panels_of = pack_function(b.module, dtype, lay.nr, lay.lanes, transposed=False)
    with for_range(b, 0, g.tq, g.br, name="qpk") as i0:
        rows = b.sub(i64(g.tq), i0)
        rows = b.select(b.icmp_signed("<", rows, i64(g.br)), rows, i64(g.br))
        blk = b.udiv(i0, i64(g.br))

        def tails(m: int) -> None:
            for src, width, dst in ((q_mat, g.dk, "q_tail"), (do_mat, g.dv, "do_tail")):
                pack_tail(b, g, lay, at(b, src, b.mul(i0, i64(width)), dtype), width, m,
                          at(b, r[dst], b.mul(blk, i64(lay.mr * width)), dtype))

        static_cases(b, rows, g.sizes(g.tq, g.br), tails)
    for src, width, dst in ((q_mat, g.dk, "q_rows"), (do_mat, g.dv, "do_rows")):
        if not lay.in_place(width):
            b.call(col_panels_of, [src, i64(width), i64(width), i64(g.tq), r[dst]])


@dataclass(frozen=True)
class HeadPtrs:
    """One query head's operands and results (`lse` rows `lse_stride` apart), and its key
    and value head's K."""

    q: ir.Value
    do: ir.Value
    k: ir.Value
    lse: ir.Value
    lse_stride: int
    dq: ir.Value
    dk: ir.Value
    dv: ir.Value
    mask: ir.Value | None
    mask_base: ir.Value


def head(b: ir.IRBuilder, g: Geometry, lay: GradLayout, r: dict[str, ir.Value],
         h: HeadPtrs) -> None:
    """Every (key block, query block) pair of one query head (its operands packed)."""
    def pair(m: int, n: int, i0: ir.Value, j0: ir.Value) -> None:
        causal_cut(b, g, n, i0, j0, lambda diag: _pair(b, g, lay, r, h, m, n, i0, j0, diag),
                   split=False)

    grad_block_pairs(b, g, pair)


def _pair(b: ir.IRBuilder, g: Geometry, lay: GradLayout, r: dict[str, ir.Value], h: HeadPtrs,
          m: int, n: int, i0: ir.Value, j0: ir.Value, diag: ir.Value | None) -> None:
    """Query block [i0, i0 + m) against key block [j0, j0 + n); `diag` = i0 - j0 when the
    causal mask cuts it (see `attention_tiles.seen_keys`), else None."""
    dtype = g.dtype
    mr, ld = lay.mr, lay.ld
    blk = b.mul(b.udiv(i0, i64(g.br)), i64(mr))
    q_tail = at(b, r["q_tail"], b.mul(blk, i64(g.dk)), dtype)
    do_tail = at(b, r["do_tail"], b.mul(blk, i64(g.dv)), dtype)
    p_tile, ds_tile = r["p_tile"], r["ds_tile"]

    def seen(t: ir.Value) -> ir.Value | int:
        return seen_keys(b, n, mr, diag, t)

    def row_seen(row: ir.Value) -> ir.Value | int:
        return seen(b.mul(b.udiv(row, i64(mr)), i64(mr)))

    def scores_like(mat: ir.Value, tail: ir.Value, k: int, packed: str,
                    tile: ir.Value) -> None:
        """tile = mat Bᵀ on the key panels each row tile sees (mat: the block's rows)."""
        src = at(b, mat, b.mul(i0, i64(k)), dtype)

        def body(t: ir.Value, rows: int) -> None:
            key_panels(b, g, lay, r["acc"], row_operand(b, g, lay, src, k, tail, t, rows), k,
                       r[packed], j0, seen(t), at(b, tile, b.mul(t, i64(ld)), dtype))

        row_tiles(b, m, mr, body)

    def b_rows(mat: ir.Value, packed: str, width: int, long: int, start: ir.Value,
               jq: int) -> tuple[ir.Value, int | None]:
        """B = rows [start, ...) of a row-major `long` x `width` operand, columns
        [jq, jq + nr): in place, or its packed panels."""
        if lay.in_place(width):
            return at(b, mat, b.add(b.mul(start, i64(width)), i64(jq)), dtype), width
        return at(b, r[packed], b.add(i64(jq * long), b.mul(start, i64(lay.nr))), dtype), None

    def by_keys(tile: ir.Value, mat: ir.Value, packed: str, out: ir.Value,
                width: int) -> None:
        """out[j0 + u, :] += tileᵀ · mat rows, for each row tile u of keys, over the
        queries that see any of its keys."""
        def body(u: ir.Value, rows: int) -> None:
            p0: ir.Value = i64(0)
            if diag is not None:
                p0 = b.sub(u, diag)
                p0 = b.select(b.icmp_signed("<", p0, i64(0)), i64(0), p0)
                p0 = b.select(b.icmp_signed(">", p0, i64(m)), i64(m), p0)
            a = at(b, tile, b.add(b.mul(p0, i64(ld)), u), dtype)
            for jq in range(0, width, lay.nr):
                bp, bs = b_rows(mat, packed, width, g.tq, b.add(i0, p0), jq)
                c = at(b, out, b.add(b.mul(b.add(j0, u), i64(width)), i64(jq)), dtype)
                tile_product(b, g, lay, r["acc"], a, (1, ld), bp, bs, b.sub(i64(m), p0), c,
                             width, rows, min(lay.nr, width - jq), True)

        row_tiles(b, n, mr, body)

    scores_like(h.q, q_tail, g.dk, "kt", p_tile)  # S = Q Kᵀ (raw sums)
    sc = Scores(g, lay.ld, lay.lanes, n, h.mask, h.mask_base, i0, j0, diag)
    with for_range(b, 0, m, name="prow") as row:
        lse_at = at(b, h.lse, b.mul(b.add(i0, row), i64(h.lse_stride)), dtype)
        _probabilities(b, sc, lay, row_seen(row), p_tile, row, lse_at)
    by_keys(p_tile, h.do, "do_rows", h.dv, g.dv)  # dV_j += Pᵀ dO_i
    scores_like(h.do, do_tail, g.dv, "vt", ds_tile)  # dP = dO Vᵀ
    with for_range(b, 0, m, name="dsrow") as row:
        _score_grads(b, g, lay, n, row_seen(row), p_tile, ds_tile, row,
                     at(b, r["d_rows"], b.add(i0, row), dtype))

    def queries(t: ir.Value, rows: int) -> None:  # dQ_i += dS K_j over the seen keys
        a = at(b, ds_tile, b.mul(t, i64(ld)), dtype)
        for jq in range(0, g.dk, lay.nr):
            bp, bs = b_rows(h.k, "k_rows", g.dk, g.tk, j0, jq)
            c = at(b, h.dq, b.add(b.mul(b.add(i0, t), i64(g.dk)), i64(jq)), dtype)
            tile_product(b, g, lay, r["acc"], a, (ld, 1), bp, bs, seen(t), c, g.dk, rows,
                         min(lay.nr, g.dk - jq), True)

    row_tiles(b, m, mr, queries)
    by_keys(ds_tile, h.q, "q_rows", h.dk, g.dk)  # dK_j += dSᵀ Q_i


def _vectors(lanes: int, width: ir.Value | int, b: ir.IRBuilder) -> ir.Value | int:
    if isinstance(width, int):
        return -(-width // lanes)
    return b.udiv(b.add(width, i64(lanes - 1)), i64(lanes))


def _zero_rest(b: ir.IRBuilder, g: Geometry, lay: Blocking, tile: ir.Value, row: ir.Value,
               count: ir.Value | int, n: int) -> None:
    """Vectors [count, ceil(n / lanes)) of a tile row become 0 (keys no query of the row
    tile sees: never computed, but read by the transposed products).

    Not needed when mr divides BLOCK_Q: the causal diagonal's offset i0 - j0 is then a
    multiple of mr (block starts are multiples of BLOCK_Q, or 0), so every row p that the
    key tile [u, u + mr) reads (p >= u - diag) is in a row tile that computed keys up to
    floor(p / mr) * mr + mr + diag >= u + mr: past the keys it reads."""
    if isinstance(count, int) or BLOCK_Q % lay.mr == 0:
        return  # the whole row was computed, or no product reads past what was
    vt = compute_type(g.dtype, lay.lanes)
    base = b.mul(row, i64(lay.ld))
    with for_range(b, count, -(-n // lay.lanes), name="z") as v:
        ptr = at(b, tile, b.add(base, b.mul(v, i64(lay.lanes))), g.dtype)
        b.store(ir.Constant(vt, None), ptr, align=g.dtype.itemsize)


def _probabilities(b: ir.IRBuilder, sc: Scores, lay: Blocking, width: ir.Value | int,
                   tile: ir.Value, row: ir.Value, lse_ptr: ir.Value) -> None:
    """Row `row` of the score tile becomes P = exp(s - lse) over keys [0, width), 0 past
    it (and 0 for a fully masked row)."""
    g = sc.g
    dtype = g.dtype
    lse = b.load(lse_ptr, typ=compute_type(dtype), align=dtype.itemsize)
    finite = b.fcmp_ordered("!=", lse, const(dtype, float("-inf")))
    shift = b.select(finite, lse, const(dtype, 0.0))
    shifts = splat(b, shift, lay.lanes)
    count = _vectors(lay.lanes, width, b)

    def visit(v: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
        ptr, x, valid = sc.vector(b, tile, row, v)
        p = b.select(valid, vecmath.exp(b, b.fsub(x, shifts)), const(dtype, 0.0, lay.lanes))
        b.store(p, ptr, align=dtype.itemsize)
        return acc

    vector_loop(b, count, [], visit, "pv")
    _zero_rest(b, g, lay, tile, row, count, sc.n)


def _score_grads(b: ir.IRBuilder, g: Geometry, lay: Blocking, n: int, width: ir.Value | int,
                 p_tile: ir.Value, ds_tile: ir.Value, row: ir.Value, d_ptr: ir.Value) -> None:
    """Row `row` of the dP tile becomes dS = scale · P ⊙ (dP - D[row]) over keys
    [0, width) (P is 0 past n there, and dP finite), 0 past it."""
    dtype = g.dtype
    isz = dtype.itemsize
    lanes = lay.lanes
    vt = compute_type(dtype, lanes)
    d = b.load(d_ptr, typ=compute_type(dtype), align=isz)
    ds = splat(b, d, lanes)
    scale = const(dtype, g.scale, lanes)
    base = b.mul(row, i64(lay.ld))
    count = _vectors(lanes, width, b)

    def visit(v: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
        off = b.add(base, b.mul(v, i64(lanes)))
        p = b.load(at(b, p_tile, off, dtype), typ=vt, align=isz)
        dp_ptr = at(b, ds_tile, off, dtype)
        dp = b.load(dp_ptr, typ=vt, align=isz)
        b.store(b.fmul(scale, b.fmul(p, b.fsub(dp, ds))), dp_ptr, align=isz)
        return acc

    vector_loop(b, count, [], visit, "dsv")
    _zero_rest(b, g, lay, ds_tile, row, count, n)
