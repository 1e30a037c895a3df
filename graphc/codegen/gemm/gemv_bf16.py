"""The bf16 GEMV: C[m x n] = A @ B for a few rows of A (m <= 4: batch-1 decoding) and a
row-major bf16 B (a weight matrix, K x N) read in place, once.

Why a path of its own: the packed GEMM (`gemm/lowp.py`) packs all of B into k-pair panels
on every call, which for one row of A writes and rereads B (3x the traffic of reading it)
and does 1/8 of the arithmetic per packed byte it was designed for. A GEMV is bound by the
bandwidth at which B streams in; here each cache line of B is loaded exactly once and
consumed at once:

- columns are cut into blocks of `nv` vectors of W float32 lanes (W = 16 with AVX-512; nv
  = 8 / m per row of A, so m x nv <= 16 accumulators stay in registers with room for B);
- for each k pair q, rows 2q and 2q+1 of the block's columns are loaded (2W bf16 at a time,
  unaligned: numpy buffers are aligned to their element only) and interleaved into the
  `vdpbf16ps` layout (lane j = (B[2q, j], B[2q+1, j])) by one shuffle per vector, then
  one dot-product instruction per vector and row of A adds both products into the
  float32 accumulator of column j, the A pair (A[r, 2q], A[r, 2q+1]) broadcast;
- an odd K ends with the last row paired with zeros; the last block's partial vector
  is read with masked loads (never past B's row).

Every sum is complete when it is stored, so the epilogue (bias, activation, rounding to
bf16) runs once per element, as the packed kernel's contract says (`passes/fuse.py`
`_stores_once`). Accuracy is the packed GEMM's: float32 accumulation of exact bf16 products
(each product of two bf16 values is exact in float32), so |C - A@B| <= K * 2^-24 * (|A|@|B|)
against the exact product of the bf16 operands. Without avx512bf16 the step is two FMAs
(`lowp_kernels.dot_step`), the same bound.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import llvmlite.ir as ir

from graphc.codegen.gemm.helpers import carried_loop, elem_ptr, for_range
from graphc.codegen.gemm.lowp_kernels import BF16_PAIRS, dot_step
from graphc.codegen.index import Idx, IndexBuilder
from graphc.codegen.llvm_types import BF16, I1, I16, I32, PTR, i64, intrinsic, shuffle_mask

if TYPE_CHECKING:
    from graphc.codegen.gemm.lowp import LowpSpec
    from graphc.codegen.gemm.spec import Epilogue
    from graphc.codegen.target import Target

# Rows of A up to which the GEMV is used instead of the packed GEMM.
GEMV_MAX_ROWS = 4
# Float32 accumulator vectors the register block holds (of 32 zmm registers: the rest for
# B's loaded and interleaved words and A's broadcast pair).
_ACCUMULATORS = 16


def uses_gemv(spec: LowpSpec) -> bool:
    """Whether `spec` runs on the GEMV: bf16 operands, m <= GEMV_MAX_ROWS."""
    return spec.kind is BF16_PAIRS and 1 <= spec.m <= GEMV_MAX_ROWS and spec.k >= 1


def emit_bf16_gemv(b: ir.IRBuilder, spec: LowpSpec, a: ir.Value, bm: ir.Value, c: ir.Value,
                   target: Target, epilogue: Epilogue | None) -> None:
    """Emit C = epilogue(op(A) @ B) for `uses_gemv(spec)` (contract of
    `gemm.emit.emit_gemm`: complete sums, epilogue once per in-bounds element)."""
    w = target.lanes(4)
    native = target.has(BF16_PAIRS.native) and target.vector_bits >= 512
    if spec.trans_b:
        _emit_dot_form(b, spec, a, bm, c, w, native, epilogue)
        return
    nv = max(1, min(8, _ACCUMULATORS // spec.m))
    nb = nv * w
    blocks, rest = divmod(spec.n, nb)
    if blocks:
        with for_range(b, 0, blocks, name="gv.j") as jb:
            _block(b, spec, a, bm, c, b.mul(jb, i64(nb)), nv, 0, w, native, epilogue)
    if rest:
        whole, part = divmod(rest, w)
        _block(b, spec, a, bm, c, i64(blocks * nb), whole + (1 if part else 0), part, w,
               native, epilogue)


def _block(b: ir.IRBuilder, spec: LowpSpec, a: ir.Value, bm: ir.Value, c: ir.Value,
           col0: ir.Value, nvec: int, part: int, w: int, native: bool,
           epilogue: Epilogue | None) -> None:
    """Columns [col0, col0 + nvec*w) (the last vector `part` lanes wide when part > 0) of
    every row of C."""
    m = spec.m
    wt = ir.VectorType(I32, w)
    zero = ir.Constant(ir.VectorType(ir.FloatType(), w), None)

    def b_words(row0: ir.Value, pair: bool) -> list[ir.Value]:
        """The nvec interleaved word vectors of rows row0 and row0 + 1 (zeros when not
        `pair`: the odd K's last row)."""
        lo = elem_ptr(b, bm, b.add(b.mul(row0, i64(spec.ldb)), col0), I16)
        hi = elem_ptr(b, lo, spec.ldb, I16) if pair else None
        words: list[ir.Value] = []
        v = 0
        while v < nvec:
            last_partial = part and v == nvec - 1
            span = 2 if v + 1 < nvec and not (part and v + 1 == nvec - 1) else 1
            count = span * w
            x = _load_row(b, elem_ptr(b, lo, v * w, I16), count, part if last_partial else 0)
            y = (_load_row(b, elem_ptr(b, hi, v * w, I16), count, part if last_partial else 0)
                 if hi is not None else ir.Constant(x.type, None))
            for s in range(span):
                order = tuple(i for j in range(s * w, (s + 1) * w) for i in (j, count + j))
                words.append(b.bitcast(b.shuffle_vector(x, y, shuffle_mask(order)), wt))
            v += span
        return words

    def a_word(r: int, p0: ir.Value, pair: bool) -> ir.Value:
        """A[r, p0] | A[r, p0 + 1] << 16 (the second zero when not `pair`)."""
        if not spec.trans_a and pair:
            at = elem_ptr(b, a, b.add(i64(r * spec.lda), p0), I16)
            return b.load(at, typ=I32, align=2)
        sx, sp = (1, spec.lda) if spec.trans_a else (spec.lda, 1)
        first = elem_ptr(b, a, b.add(i64(r * sx), b.mul(p0, i64(sp))), I16)
        word = b.zext(b.load(first, typ=I16, align=2), I32)
        if pair:
            second = b.zext(b.load(elem_ptr(b, first, sp, I16), typ=I16, align=2), I32)
            word = b.or_(word, b.shl(second, ir.Constant(I32, 16)))
        return word

    def step(q: ir.Value, accs: list[ir.Value], pair: bool = True) -> list[ir.Value]:
        p0 = b.mul(q, i64(2))
        words = b_words(p0, pair)
        out = list(accs)
        for r in range(m):
            aw = a_word(r, p0, pair)
            for v in range(nvec):
                out[r * nvec + v] = dot_step(b, BF16_PAIRS, native, out[r * nvec + v], aw,
                                             words[v])
        return out

    accs = carried_loop(b, 0, spec.k // 2, [zero] * (m * nvec), step, name="gv.k")
    if spec.k % 2:
        accs = step(i64(spec.k // 2), accs, pair=False)
    for r in range(m):
        for v in range(nvec):
            col = b.add(col0, i64(v * w))
            acc = accs[r * nvec + v]
            if part and v == nvec - 1:
                for lane in range(part):
                    _put(b, spec, c, epilogue, i64(r), b.add(col, i64(lane)),
                         b.extract_element(acc, i64(lane)), 1)
            else:
                _put(b, spec, c, epilogue, i64(r), col, acc, w)


def _emit_dot_form(b: ir.IRBuilder, spec: LowpSpec, a: ir.Value, bm: ir.Value,
                   c: ir.Value, w: int, native: bool, epilogue: Epilogue | None) -> None:
    """B stored (N, K) row-major (transpose_b: a weight kept as output rows, as
    `gc.autocast` stores frozen ones): column j of C is the dot product of a row of A with
    row j of that storage, both contiguous in k, so the natural layout is already the
    `vdpbf16ps` pair layout and consecutive outputs read consecutive memory (one
    sequential stream of B). Blocks of `r` outputs keep r x m vector accumulators over k,
    then reduce them horizontally in one shuffle tree."""
    # A power of two (the reduction gives one vector of r outputs); 16 rows would be more
    # concurrent streams than the prefetchers follow (measured: half the bandwidth at K=2048).
    r = 8 if spec.m <= 2 else 4
    blocks, rest = divmod(spec.n, r)
    if blocks:
        with for_range(b, 0, blocks, name="gd.j") as jb:
            _dot_block(b, spec, a, bm, c, b.mul(jb, i64(r)), r, w, native, epilogue)
    if rest:
        _dot_block(b, spec, a, bm, c, i64(blocks * r), rest, w, native, epilogue)


def _dot_block(b: ir.IRBuilder, spec: LowpSpec, a: ir.Value, bm: ir.Value, c: ir.Value,
               col0: ir.Value, r: int, w: int, native: bool,
               epilogue: Epilogue | None) -> None:
    """Columns [col0, col0 + r) of every row of C, in the dot-product form."""
    m, k = spec.m, spec.k
    ft = ir.VectorType(ir.FloatType(), w)
    chunk = 2 * w  # bf16 elements of k per vector step
    full, tail = divmod(k, chunk)

    def rows_at(p0: ir.Value, part: int) -> tuple[list[ir.Value], list[ir.Value]]:
        bs = [_load_row(b, elem_ptr(b, bm, b.add(b.mul(b.add(col0, i64(j)), i64(spec.ldb)),
                                                 p0), I16), chunk, part) for j in range(r)]
        if spec.trans_a:
            as_ = [_gather_column(b, a, spec.lda, i, p0, chunk, part or chunk) for i in range(m)]
        else:
            as_ = [_load_row(b, elem_ptr(b, a, b.add(i64(i * spec.lda), p0), I16), chunk, part)
                   for i in range(m)]
        return as_, bs

    def step(q: ir.Value, accs: list[ir.Value], part: int = 0) -> list[ir.Value]:
        p0 = b.mul(q, i64(chunk))
        as_, bs = rows_at(p0, part)
        out = list(accs)
        for i in range(m):
            for j in range(r):
                out[i * r + j] = _dot_vectors(b, native, out[i * r + j], as_[i], bs[j], w)
        return out

    accs = carried_loop(b, 0, full, [ir.Constant(ft, None)] * (m * r), step, name="gd.k")
    if tail:
        accs = step(i64(full), accs, part=tail)
    for i in range(m):
        sums = _reduce_lanes(b, accs[i * r:(i + 1) * r], w)
        if sums.type.count == r and r > 1:
            # A whole vector of outputs: the epilogue (a GELU, say) runs vectorized.
            _put(b, spec, c, epilogue, i64(i), col0, sums, r)
            continue
        for j in range(r):
            _put(b, spec, c, epilogue, i64(i), b.add(col0, i64(j)),
                 b.extract_element(sums, i64(j)), 1)


def _gather_column(b: ir.IRBuilder, a: ir.Value, lda: int, row: int, p0: ir.Value,
                   count: int, part: int) -> ir.Value:
    """<count x i16>: A[row, p0 + t] of a transposed A (at (p0 + t) * lda + row), zero for
    t >= part."""
    vec: ir.Value = ir.Constant(ir.VectorType(I16, count), None)
    for t in range(part):
        at = elem_ptr(b, a, b.add(b.mul(b.add(p0, i64(t)), i64(lda)), i64(row)), I16)
        vec = b.insert_element(vec, b.load(at, typ=I16, align=2), i64(t))
    return vec


def _dot_vectors(b: ir.IRBuilder, native: bool, acc: ir.Value, x: ir.Value, y: ir.Value,
                 w: int) -> ir.Value:
    """acc + per lane j: x[2j]*y[2j] + x[2j+1]*y[2j+1] (x, y: <2w x i16> bf16 bits)."""
    wt = ir.VectorType(I32, w)
    return _dot_words(b, native, acc, b.bitcast(x, wt), b.bitcast(y, wt))


def _dot_words(b: ir.IRBuilder, native: bool, acc: ir.Value, x: ir.Value,
               y: ir.Value) -> ir.Value:
    lanes = x.type.count
    if native and lanes in (4, 8, 16):
        pt = ir.VectorType(BF16, 2 * lanes)
        fn = intrinsic(b.module, f"llvm.x86.avx512bf16.dpbf16ps.{lanes * 32}", acc.type,
                       [acc.type, pt, pt], [])
        return b.call(fn, [acc, b.bitcast(x, pt), b.bitcast(y, pt)])
    ft = acc.type
    hi_mask = ir.Constant(x.type, [ir.Constant(I32, 0xFFFF0000)] * lanes)
    sixteen = ir.Constant(x.type, [ir.Constant(I32, 16)] * lanes)
    fma = intrinsic(b.module, "llvm.fma", ft, [ft, ft, ft])
    for part in (lambda v: b.shl(v, sixteen), lambda v: b.and_(v, hi_mask)):
        acc = b.call(fma, [b.bitcast(part(x), ft), b.bitcast(part(y), ft), acc])
    return acc


def _reduce_lanes(b: ir.IRBuilder, vecs: list[ir.Value], w: int) -> ir.Value:
    """<r' x float> whose lane j is the sum of the lanes of vecs[j] (r' >= len(vecs), the
    next power of two), by a tree of shuffles and adds: pairs of vectors whose lanes hold
    segments of `s` lanes per output are folded into one with segments of s/2, outputs in
    order; then the vector itself is halved until each output has one lane."""
    zero = ir.Constant(vecs[0].type, None)
    level = list(vecs)
    s = w
    while len(level) > 1:
        if len(level) % 2:
            level.append(zero)
        n = w // s  # outputs per vector now
        lo = tuple(v * w + seg * s + t for v in (0, 1) for seg in range(n) for t in range(s // 2))
        hi = tuple(i + s // 2 for i in lo)
        level = [b.fadd(b.shuffle_vector(x, y, shuffle_mask(lo)),
                        b.shuffle_vector(x, y, shuffle_mask(hi)))
                 for x, y in zip(level[0::2], level[1::2], strict=True)]
        s //= 2
    v = level[0]
    count = v.type.count
    while s > 1:
        n = count // s
        lo = tuple(seg * s + t for seg in range(n) for t in range(s // 2))
        hi = tuple(i + s // 2 for i in lo)
        undef = ir.Constant(v.type, ir.Undefined)
        v = b.fadd(b.shuffle_vector(v, undef, shuffle_mask(lo)),
                   b.shuffle_vector(v, undef, shuffle_mask(hi)))
        count //= 2
        s //= 2
    return v


def _load_row(b: ir.IRBuilder, at: ir.Value, count: int, part: int) -> ir.Value:
    """<count x i16> from `at` (element-aligned); with `part` > 0 only the first `part`
    lanes are read (masked load), the others zero."""
    vt = ir.VectorType(I16, count)
    if not part:
        return b.load(at, typ=vt, align=2)
    mask_t = ir.VectorType(I1, count)
    mask = ir.Constant(mask_t, [ir.Constant(I1, int(i < part)) for i in range(count)])
    load = intrinsic(b.module, "llvm.masked.load", vt, [PTR, I32, mask_t, vt], [vt, PTR])
    return b.call(load, [at, ir.Constant(I32, 2), mask, ir.Constant(vt, None)])


def _put(b: ir.IRBuilder, spec: LowpSpec, c: ir.Value, epilogue: Epilogue | None,
         row: ir.Value, col: ir.Value, value: ir.Value, lanes: int) -> None:
    if epilogue is not None:
        value = epilogue(b, row, col, value, lanes)
    at = b.add(b.mul(row, i64(spec.ldc)), col)
    IndexBuilder(b, lanes).store(c, spec.out, Idx(at, 1 if lanes > 1 else 0), value)


__all__ = ["GEMV_MAX_ROWS", "emit_bf16_gemv", "uses_gemv"]
