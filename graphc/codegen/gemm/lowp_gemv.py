"""The u8 x s8 GEMV: int32 C[m x n] = A @ B for a few rows of A (batch-1 inference).

The packed GEMM (`lowp.py`) repacks all of B into k-quads on every call: for one row of A
that costs more than the product. Here a row-major B (K x N int8, a quantized layer's
weight) is read in place, one row of B at a time, with no shuffles: a vector of W 32-bit
lanes holds the 4 bytes B[k, 4j .. 4j+3] in lane j, and `vpdpbusd` against the broadcast
word ``a[k] << 8t`` (a[k] in byte t, zeros elsewhere) adds a[k] * B[k, 4j + t] into lane
j of accumulator t. Four instructions per 4W columns and k (a quarter of the
instruction's products are useful, but a batch-1 product is bound by reading B, which
stays 4x smaller than float32 weights), then the four accumulators are interleaved once
into column order. The words ``a[k] << 8t`` are tabulated in the scratch per row (K x 4
words), so the k loop only broadcasts them from memory.

Blocks of CB chunks of 4W columns run over the whole K (4 x CB accumulators); the last,
partial block reads B with masked loads (no byte past column N is touched). Sums are exact
int32 (as the GEMM; K < 65536 cannot wrap), and the epilogue runs once per element on
the complete sum through `lowp._store_tile`, as in the GEMM.

Without VNNI (`lowp.group_kind`: widened pairs) each k step takes two rows of B: 2W
columns of each are sign-extended to int16 and interleaved, so lane j holds the pair
(B[k, j], B[k+1, j]), and `pmaddwd` against the broadcast pair (a[k], a[k+1]) adds both
products into column j's int32 lane; the table then holds one pair word per two k. A B
stored (N, K) sums 2W products of two contiguous rows per `pmaddwd` on their widened
halves. Both stay exact (no 16-bit sum: `pmaddubsw` would saturate).
"""

from __future__ import annotations

from collections.abc import Callable

import llvmlite.ir as ir

from graphc.codegen.gemm.helpers import (
    carried_loop,
    elem_ptr,
    for_range,
    lane_mask,
    masked_load,
    splat,
)
from graphc.codegen.gemm.lowp import LowpSpec, _store_tile, group_kind
from graphc.codegen.gemm.lowp_kernels import (
    U8S8_PAIRS,
    U8S8_QUADS,
    dot_step,
    pair_products,
    u8s8_dot,
)
from graphc.codegen.gemm.spec import Epilogue
from graphc.codegen.llvm_types import I8, I16, I32, i64, shuffle_mask
from graphc.codegen.target import Target

__all__ = ["MAX_ROWS", "applies", "emit_lowp_gemv", "scratch_bytes"]

# Rows of A up to which the GEMV beats packing B (each row reads all of B once).
MAX_ROWS = 4


def applies(spec: LowpSpec) -> bool:
    """u8 x s8, few rows, row-major B, no runtime zero point (quantized layers fold it into
    the epilogue; `matmul_integer` with one goes to the packed GEMM)."""
    return (spec.kind is U8S8_QUADS and 0 < spec.m <= MAX_ROWS and not spec.zero_point
            and spec.k > 0 and (not spec.trans_a or spec.m == 1) and not spec.b_panels)


def scratch_bytes(spec: LowpSpec) -> int:
    """The word table of one row of A (K x 4 int32)."""
    return spec.k * 16


def emit_lowp_gemv(b: ir.IRBuilder, spec: LowpSpec, a: ir.Value, bm: ir.Value,
                   c: ir.Value, scratch: ir.Value, target: Target,
                   epilogue: Epilogue | None) -> None:
    """Emit C = epilogue(A @ B) (`applies(spec)` holds); the contract of `emit_lowp_gemm`."""
    # The word table lives in the GEMM's scratch (its packed B alone is >= 32 K bytes).
    assert scratch_bytes(spec) <= spec.scratch_bytes(target)
    w = target.lanes(4)
    kind, native = group_kind(U8S8_QUADS, target)
    if kind is U8S8_PAIRS:
        _emit_pairs(b, spec, a, bm, c, scratch, w, native, epilogue)
        return
    cb = 4 if target.vector_bits >= 512 else 2  # 4 x cb accumulators
    chunk = 4 * w  # columns (bytes of B) per vector
    block = cb * chunk
    full = spec.n // block
    rest = spec.n - full * block
    if spec.trans_b:
        emit_dot_gemv(b, spec, a, bm, c, w, native, epilogue)
        return
    with for_range(b, 0, spec.m, name="gv.m") as row:
        _table(b, spec, a, row, scratch)
        if full:
            with for_range(b, 0, full, name="gv.j") as jb:
                j0 = b.mul(jb, i64(block))
                _block(b, spec, bm, c, scratch, epilogue, row, j0, cb, w, native, None)
        if rest:
            chunks = -(-rest // chunk)
            _block(b, spec, bm, c, scratch, epilogue, row, i64(full * block), chunks, w,
                   native, rest)


def _table(b: ir.IRBuilder, spec: LowpSpec, a: ir.Value, row: ir.Value,
           table: ir.Value) -> None:
    """table[4k + t] = a[row, k] << 8t."""
    step_k = spec.lda if spec.trans_a else 1
    base = row if spec.trans_a else b.mul(row, i64(spec.lda))
    with for_range(b, 0, spec.k, name="gv.t") as k:
        at = elem_ptr(b, a, b.add(base, b.mul(k, i64(step_k))), I8)
        byte = b.zext(b.load(at, typ=I8, align=1), I32)
        for t in range(4):
            word = b.shl(byte, ir.Constant(I32, 8 * t))
            b.store(word, elem_ptr(b, table, b.add(b.mul(k, i64(4)), i64(t)), I32), align=4)


def _block(b: ir.IRBuilder, spec: LowpSpec, bm: ir.Value, c: ir.Value, table: ir.Value,
           epilogue: Epilogue | None, row: ir.Value, j0: ir.Value, chunks: int, w: int,
           native: bool, valid: int | None) -> None:
    """Columns j0 .. j0 + chunks*4w of one row; `valid` columns only (masked) if given."""
    chunk = 4 * w
    wt = ir.VectorType(I32, w)
    load = _chunk_loader(b, chunk, chunks, valid)

    def step(k: ir.Value, accs: list[ir.Value]) -> list[ir.Value]:
        brow = elem_ptr(b, bm, b.add(b.mul(k, i64(spec.ldb)), j0), I8)
        # Scalar loads the splat turns into broadcasts from memory (load ports, no shuffles).
        words = elem_ptr(b, table, b.mul(k, i64(4)), I32)
        aw = [b.load(elem_ptr(b, words, t, I32), typ=I32, align=4) for t in range(4)]
        out = list(accs)
        for ch in range(chunks):
            v = b.bitcast(load(brow, ch), wt)
            for t in range(4):
                out[ch * 4 + t] = dot_step(b, U8S8_QUADS, native, out[ch * 4 + t], aw[t], v)
        return out

    zero = ir.Constant(wt, None)
    accs = carried_loop(b, 0, spec.k, [zero] * (4 * chunks), step, name="gv.k")
    vecs: list[ir.Value] = []
    for ch in range(chunks):
        vecs.extend(_columns(b, accs[ch * 4:ch * 4 + 4], w))
    _store_tile(b, spec, c, epilogue, vecs, row, j0, 1, len(vecs), w)


def _chunk_loader(b: ir.IRBuilder, chunk: int, chunks: int, valid: int | None
                  ) -> Callable[[ir.Value, int], ir.Value]:
    """load(row, ch): chunk `ch` (`chunk` bytes) of a row of B; with `valid`, only the bytes
    of the first `valid` columns of the block are read (masked loads, zeros past them)."""
    bt = ir.VectorType(I8, chunk)
    masks = None
    if valid is not None:
        masks = [lane_mask(b, chunk, 0, max(0, min(chunk, valid - ch * chunk)))
                 for ch in range(chunks)]

    def load(row: ir.Value, ch: int) -> ir.Value:
        at = elem_ptr(b, row, ch * chunk, I8)
        if masks is None:
            return b.load(at, typ=bt, align=1)
        return masked_load(b, at, bt, masks[ch], 1)

    return load


def _columns(b: ir.IRBuilder, accs: list[ir.Value], w: int) -> list[ir.Value]:
    """The four accumulators (lane j of accumulator t: column 4j + t) as four vectors of w
    consecutive columns."""
    lo = b.shuffle_vector(accs[0], accs[1], shuffle_mask(tuple(range(2 * w))))
    hi = b.shuffle_vector(accs[2], accs[3], shuffle_mask(tuple(range(2 * w))))
    # In the concatenation [acc0 | acc1 | acc2 | acc3], column i sits at (i % 4) * w + i // 4.
    out = []
    for v in range(4):
        order = tuple((i % 4) * w + i // 4 for i in range(v * w, (v + 1) * w))
        out.append(b.shuffle_vector(lo, hi, shuffle_mask(order)))
    return out


def emit_dot_gemv(b: ir.IRBuilder, spec: LowpSpec, a: ir.Value, bm: ir.Value, c: ir.Value,
                  w: int, native: bool, epilogue: Epilogue | None, *,
                  pairs: bool = False) -> None:
    """B stored (N, K) (`trans_b`: a weight's rows are output channels): every column of C
    is a dot product of two contiguous byte rows, 4w bytes per `vpdpbusd` with all its
    products useful (or, with `pairs`, per two `pmaddwd` on their widened halves: only an
    accumulator's total matters). w columns at a time (one accumulator each) run over the
    whole K, then `_lane_sums` folds the w accumulators into one vector of w consecutive
    columns."""
    chunk = 4 * w
    bt = ir.VectorType(I8, chunk)
    wt = ir.VectorType(I32, w)
    full_k, tail_k = divmod(spec.k, chunk)
    blocks = -(-spec.n // w)
    with for_range(b, 0, spec.m, name="gd.m") as row:
        arow = elem_ptr(b, a, b.mul(row, i64(spec.lda)), I8)
        with for_range(b, 0, blocks, name="gd.j") as jb:
            j0 = b.mul(jb, i64(w))
            rows = []
            for r in range(w):
                # Columns past N read row N - 1 (in bounds); their sums are not stored.
                col = b.add(j0, i64(r))
                col = b.select(b.icmp_signed("<", col, i64(spec.n)), col, i64(spec.n - 1))
                rows.append(elem_ptr(b, bm, b.mul(col, i64(spec.ldb)), I8))

            def step(q: ir.Value, accs: list[ir.Value], mask: ir.Value | None = None,
                     rows: list[ir.Value] = rows) -> list[ir.Value]:
                off = b.mul(q, i64(chunk))

                def load(ptr: ir.Value) -> ir.Value:
                    at = elem_ptr(b, ptr, off, I8)
                    v = (b.load(at, typ=bt, align=1) if mask is None
                         else masked_load(b, at, bt, mask, 1))
                    return b.bitcast(v, wt)

                av = load(arow)
                if pairs:
                    halves = _widened_halves(b, av, w, signed=False)
                    return [_pairs_dot(b, native, acc, halves, load(r), w)
                            for acc, r in zip(accs, rows)]
                return [u8s8_dot(b, native, acc, av, load(r)) for acc, r in zip(accs, rows)]

            accs = carried_loop(b, 0, full_k, [ir.Constant(wt, None)] * w, step, name="gd.k")
            if tail_k:
                accs = step(i64(full_k), accs, lane_mask(b, chunk, 0, tail_k))
            _store_tile(b, spec, c, epilogue, [_lane_sums(b, accs)], row, j0, 1, 1, w)


def _widened_halves(b: ir.IRBuilder, words: ir.Value, w: int, *,
                    signed: bool) -> tuple[ir.Value, ir.Value]:
    """The 4w bytes of `words` (<w x i32>) extended to int16, as two <w x i32> halves."""
    bytes_ = b.bitcast(words, ir.VectorType(I8, 4 * w))
    wide = ir.VectorType(I16, 4 * w)
    ext = b.sext(bytes_, wide) if signed else b.zext(bytes_, wide)
    as_words = b.bitcast(ext, ir.VectorType(I32, 2 * w))
    undef = ir.Constant(as_words.type, ir.Undefined)
    return (b.shuffle_vector(as_words, undef, shuffle_mask(tuple(range(w)))),
            b.shuffle_vector(as_words, undef, shuffle_mask(tuple(range(w, 2 * w)))))


def _pairs_dot(b: ir.IRBuilder, native: bool, acc: ir.Value,
               a_halves: tuple[ir.Value, ir.Value], b_words: ir.Value, w: int) -> ir.Value:
    """acc + the 4w products of A's and B's bytes, spread over the lanes (their total is
    the dot product's): `pmaddwd` on each widened half."""
    b_halves = _widened_halves(b, b_words, w, signed=True)
    for ah, bh in zip(a_halves, b_halves):
        acc = b.add(acc, pair_products(b, ah, bh, native))
    return acc


def _lane_sums(b: ir.IRBuilder, vecs: list[ir.Value]) -> ir.Value:
    """One vector whose lane i is the sum of the lanes of vecs[i] (len(vecs) == lanes, a
    power of two): pairs are halved and added level by level, each vector's partial sums
    kept in a group of lanes that halves with the level (so the order is preserved)."""
    n = vecs[0].type.count
    g = n
    while len(vecs) > 1:
        half = g // 2
        groups = n // g
        lo = tuple(i * g + t for i in range(groups) for t in range(half))
        lo = lo + tuple(n + x for x in lo)
        hi = tuple(x + half for x in lo)
        vecs = [b.add(b.shuffle_vector(x, y, shuffle_mask(lo)),
                      b.shuffle_vector(x, y, shuffle_mask(hi)))
                for x, y in zip(vecs[0::2], vecs[1::2])]
        g = half
    return vecs[0]


# Chunks of 2W columns per block of the pairs GEMV (2 accumulators each): 64 columns and
# 8 accumulators with AVX2, as the quads' 2 chunks of 4W.
_PAIR_CHUNKS = 4


def _emit_pairs(b: ir.IRBuilder, spec: LowpSpec, a: ir.Value, bm: ir.Value, c: ir.Value,
                scratch: ir.Value, w: int, native: bool, epilogue: Epilogue | None) -> None:
    """The GEMV on widened pairs (module docstring): B (K, N) by pairs of rows, or (N, K)
    by dot products."""
    if spec.trans_b:
        emit_dot_gemv(b, spec, a, bm, c, w, native, epilogue, pairs=True)
        return
    chunk = 2 * w
    block = _PAIR_CHUNKS * chunk
    full, rest = divmod(spec.n, block)
    with for_range(b, 0, spec.m, name="gp.m") as row:
        _pair_table(b, spec, a, row, scratch)
        if full:
            with for_range(b, 0, full, name="gp.j") as jb:
                j0 = b.mul(jb, i64(block))
                _pair_block(b, spec, bm, c, scratch, epilogue, row, j0, _PAIR_CHUNKS, w,
                            native, None)
        if rest:
            _pair_block(b, spec, bm, c, scratch, epilogue, row, i64(full * block),
                        -(-rest // chunk), w, native, rest)


def _pair_table(b: ir.IRBuilder, spec: LowpSpec, a: ir.Value, row: ir.Value,
                table: ir.Value) -> None:
    """table[q] = a[row, 2q] | a[row, 2q + 1] << 16 (zero past K)."""
    step_k = spec.lda if spec.trans_a else 1
    base = row if spec.trans_a else b.mul(row, i64(spec.lda))

    def byte(k: ir.Value) -> ir.Value:
        at = elem_ptr(b, a, b.add(base, b.mul(k, i64(step_k))), I8)
        return b.zext(b.load(at, typ=I8, align=1), I32)

    with for_range(b, 0, spec.k // 2, name="gp.t") as q:
        k = b.mul(q, i64(2))
        word = b.or_(byte(k), b.shl(byte(b.add(k, i64(1))), ir.Constant(I32, 16)))
        b.store(word, elem_ptr(b, table, q, I32), align=4)
    if spec.k % 2:
        b.store(byte(i64(spec.k - 1)), elem_ptr(b, table, spec.k // 2, I32), align=4)


def _pair_block(b: ir.IRBuilder, spec: LowpSpec, bm: ir.Value, c: ir.Value,
                table: ir.Value, epilogue: Epilogue | None, row: ir.Value, j0: ir.Value,
                chunks: int, w: int, native: bool, valid: int | None) -> None:
    """Columns j0 .. j0 + chunks*2w of one row; `valid` columns only (masked) if given."""
    chunk = 2 * w
    ht = ir.VectorType(I16, chunk)
    wt = ir.VectorType(I32, w)
    load = _chunk_loader(b, chunk, chunks, valid)
    lo = shuffle_mask(tuple(x for j in range(w) for x in (j, chunk + j)))
    hi = shuffle_mask(tuple(x for j in range(w, chunk) for x in (j, chunk + j)))

    def step(q: ir.Value, accs: list[ir.Value], last: bool = False) -> list[ir.Value]:
        k = b.mul(q, i64(2))
        rows = [elem_ptr(b, bm, b.add(b.mul(k, i64(spec.ldb)), j0), I8)]
        # An odd K's last step pairs row K-1 with itself; the table's high half is zero.
        rows.append(rows[0] if last else elem_ptr(b, rows[0], spec.ldb, I8))
        aw = b.load(elem_ptr(b, table, q, I32), typ=I32, align=4)
        av = splat(b, aw, w)
        out = list(accs)
        for ch in range(chunks):
            vs = [b.sext(load(r, ch), ht) for r in rows]
            for h, order in enumerate((lo, hi)):
                pairs = b.bitcast(b.shuffle_vector(vs[0], vs[1], order), wt)
                out[2 * ch + h] = b.add(out[2 * ch + h], pair_products(b, av, pairs, native))
        return out

    zero = ir.Constant(wt, None)
    accs = carried_loop(b, 0, spec.k // 2, [zero] * (2 * chunks), step, name="gp.k")
    if spec.k % 2:
        accs = step(i64(spec.k // 2), accs, last=True)
    _store_tile(b, spec, c, epilogue, accs, row, j0, 1, len(accs), w)
