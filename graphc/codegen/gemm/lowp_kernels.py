"""The pieces of the low-precision GEMMs: packing into k-groups and the dot-product step.

Both kinds multiply operands whose k axis is cut into groups of `g` elements that fill one
32-bit lane (bf16: g = 2 elements of 2 bytes; u8 x s8: g = 4 elements of 1 byte), the
layout `vdpbf16ps` and `vpdpbusd` consume: lane j of a B vector holds the g values
B[q*g .. q*g+g-1, j] of column j, and one A element group, broadcast to every lane, holds
A[i, q*g .. q*g+g-1]. One instruction then adds the g products of each lane into a float32
(bf16) or int32 (u8 x s8) accumulator.

Packed layouts (zero-padded, so every micro-kernel step is full; `kg` = ceil(K / g); a
group is a word of `word_bytes` = g * esize bytes, 4 except for `S8_PAIRS`' 2):
  B: panels of NR columns, panel p at p*kg*NR*word_bytes bytes, group q of column j at
     + (q*NR + j)*word_bytes, element t of the group at + t*esize;
  A: panels of MR rows, panel at r0/MR * kg*MR*4 bytes, group q of row r at + q*MR*4 + r*4.
Reads of the operands clamp every index into the operand and select zero outside it, so
packing never reads out of bounds and needs no branches; only group-aligned runs inside
the operand are read as whole 32-bit words (unaligned loads: numpy buffers are aligned
to their element only).

Without VNNI, u8 x s8 runs on `pmaddwd`, whose operands are two 16-bit elements per lane:
A is packed as `U8S8_PAIRS` (each byte zero-extended to 16 bits), B as `S8_PAIRS` (pairs of
bytes, sign-extended to 16 bits when loaded). Its pairs of 16-bit products add into int32
exactly (|255 * -128| * 2 < 2^31). `pmaddubsw`, which ONNX Runtime uses
there, multiplies the bytes as they are but saturates its 16-bit pair sums (255 * 127 * 2
> 2^15), so its results depend on the values; graphc's integer GEMM stays exact: it runs
k-quads on `pmaddubsw` (then `pmaddwd` by ones, two pair sums into int32: 3 instructions
per 4 products per lane, against 4 for widened pairs) only for a constant B whose every
k-pair provably fits int16 whatever A holds (`byte_pairs_fit`: 7-bit weights, as
`quantize_dynamic(reduce_range=True)` writes, always do).
"""

from __future__ import annotations

from dataclasses import dataclass

import llvmlite.ir as ir
import numpy as np

from graphc.codegen.gemm.helpers import elem_ptr, for_range
from graphc.codegen.llvm_types import BF16, F32, I8, I16, I32, i64, intrinsic, shuffle_mask


@dataclass(frozen=True)
class GroupKind:
    """What one 32-bit lane holds: `g` elements of `esize` bytes; `acc` the accumulator type
    ("f32" or "i32"); `native` the target feature of the one-instruction dot product."""

    name: str
    g: int
    esize: int
    acc: str
    native: str
    src_esize: int = 0  # bytes of an operand element when packing widens it (0: esize)

    @property
    def etype(self) -> ir.IntType:
        """The packed element's type."""
        return I16 if self.esize == 2 else I8

    @property
    def src_type(self) -> ir.IntType:
        """The operand element's type, which packing reads."""
        return I8 if (self.src_esize or self.esize) == 1 else I16

    @property
    def widens(self) -> bool:
        return self.src_esize not in (0, self.esize)

    @property
    def word_bytes(self) -> int:
        """Bytes of one packed group (4: a 32-bit lane; 2: `S8_PAIRS`, widened on load)."""
        return self.g * self.esize

    @property
    def word_type(self) -> ir.IntType:
        return ir.IntType(8 * self.word_bytes)

    @property
    def ones(self) -> int:
        """The 32-bit word of g elements equal to 1 (a column sum's A)."""
        return sum(1 << (8 * self.esize * t) for t in range(self.g))


BF16_PAIRS = GroupKind("bf16", 2, 2, "f32", "avx512bf16")
U8S8_QUADS = GroupKind("u8s8", 4, 1, "i32", "avx512vnni")
# u8 x s8 on a target without VNNI: pairs of bytes widened to int16, for `pmaddwd`.
U8S8_PAIRS = GroupKind("u8s8w", 2, 2, "i32", "", src_esize=1)
# B of those GEMMs: the pairs packed as bytes (2-byte groups), sign-extended to int16 pairs
# when the micro-kernel loads them: half the bytes in cache, and the layout constant weights
# are stored in once at compile time (`graphc.ops.panels.pack_groups`).
S8_PAIRS = GroupKind("s8pairs", 2, 1, "i32", "")


@dataclass(frozen=True)
class Operand:
    """How to read element (x, p) of an operand (x: row of A / column of B, p: along k):
    at x*sx + p*sp elements from `ptr`, inside `xs` x `k` elements; `signed`: whether a
    widening pack sign-extends its elements (B of u8 x s8) or zero-extends them."""

    ptr: ir.Value
    sx: int
    sp: int
    xs: int
    k: int
    signed: bool = False


def _widen(b: ir.IRBuilder, kind: GroupKind, op: Operand, value: ir.Value) -> ir.Value:
    """An operand element (or vector of them) as packed elements."""
    if not kind.widens:
        return value
    to = kind.etype
    if isinstance(value.type, ir.VectorType):
        to = ir.VectorType(to, value.type.count)
    return b.sext(value, to) if op.signed else b.zext(value, to)


def _word_at(b: ir.IRBuilder, kind: GroupKind, op: Operand, x: ir.Value, q: ir.Value,
             full_group: bool) -> ir.Value:
    """The word (`kind.word_type`) holding the group q of row/column x (zero outside the
    operand)."""
    wt = kind.word_type
    inside_x = b.icmp_signed("<", x, i64(op.xs))
    xc = b.select(inside_x, x, i64(op.xs - 1))
    p0 = b.mul(q, i64(kind.g))
    src, src_size = kind.src_type, kind.src_esize or kind.esize
    if full_group and op.sp == 1:
        # A whole group in the operand, contiguous: one unaligned load of g elements.
        addr = elem_ptr(b, op.ptr, b.add(b.mul(xc, i64(op.sx)), p0), src)
        group = b.load(addr, typ=ir.VectorType(src, kind.g), align=src_size)
        word = b.bitcast(_widen(b, kind, op, group), wt)
        return b.select(inside_x, word, ir.Constant(wt, 0))
    word: ir.Value = ir.Constant(wt, 0)
    for t in range(kind.g):
        p = b.add(p0, i64(t))
        inside = b.and_(inside_x, b.icmp_signed("<", p, i64(op.k)))
        pc = b.select(b.icmp_signed("<", p, i64(op.k)), p, i64(op.k - 1))
        addr = elem_ptr(b, op.ptr, b.add(b.mul(xc, i64(op.sx)), b.mul(pc, i64(op.sp))), src)
        e = _widen(b, kind, op, b.load(addr, typ=src, align=src_size))
        e = b.zext(e, wt)
        e = b.select(inside, e, ir.Constant(wt, 0))
        word = b.or_(word, b.shl(e, ir.Constant(wt, 8 * kind.esize * t)))
    return word


def pack_panels(b: ir.IRBuilder, kind: GroupKind, op: Operand, dst: ir.Value, x0: ir.Value,
                panels: int, r: int) -> None:
    """Pack `panels` panels of `r` rows/columns starting at x0 into dst (layout above).

    A row-major B (columns contiguous: sx == 1) whose panel lies inside the operand is
    packed with vector loads of g rows and an interleaving shuffle; everything else a word
    per (x, group)."""
    kg = -(-op.k // kind.g)
    full_groups = op.k // kind.g
    with for_range(b, 0, panels, name="pk.p") as pnl:
        xp = b.add(x0, b.mul(pnl, i64(r)))
        base = elem_ptr(b, dst, b.mul(pnl, i64(kg * r * kind.word_bytes)), I8)
        vector_ok = op.sx == 1 and r * kind.esize * 8 <= 2048
        if vector_ok:
            whole = b.icmp_signed("<=", b.add(xp, i64(r)), i64(op.xs))
            with b.if_else(whole) as (then, otherwise):
                with then:
                    _pack_rows_vector(b, kind, op, base, xp, r, full_groups)
                    _pack_words(b, kind, op, base, xp, r, full_groups, kg)
                with otherwise:
                    _pack_words(b, kind, op, base, xp, r, 0, kg)
        else:
            _pack_words(b, kind, op, base, xp, r, 0, kg)


def _pack_words(b: ir.IRBuilder, kind: GroupKind, op: Operand, base: ir.Value,
                xp: ir.Value, r: int, q0: int, q1: int) -> None:
    """Groups q0..q1 of the panel at xp, one 32-bit word per (x, group): the groups below
    K // g whole, the partial last one element by element (so nothing past K is read)."""
    split = min(max(q0, op.k // kind.g), q1)
    for lo, hi, whole in ((q0, split, True), (split, q1, False)):
        if lo >= hi:
            continue
        with for_range(b, lo, hi, name="pk.q") as q:
            row = elem_ptr(b, base, b.mul(q, i64(r * kind.word_bytes)), I8)
            for x in range(r):
                word = _word_at(b, kind, op, b.add(xp, i64(x)), q, whole)
                b.store(word, elem_ptr(b, row, x, kind.word_type), align=kind.word_bytes)


def _pack_rows_vector(b: ir.IRBuilder, kind: GroupKind, op: Operand, base: ir.Value,
                      xp: ir.Value, r: int, full_groups: int) -> None:
    """Full groups of a row-major panel inside the operand: load the g rows of the group
    (r contiguous elements each), interleave them element-wise, store r words."""
    g, src = kind.g, kind.src_type
    vt = ir.VectorType(src, r)
    with for_range(b, 0, full_groups, name="pk.v") as q:
        rows = []
        for t in range(g):
            p = b.add(b.mul(q, i64(g)), i64(t))
            addr = elem_ptr(b, op.ptr, b.add(b.mul(p, i64(op.sp)), xp), src)
            rows.append(_widen(b, kind, op, b.load(addr, typ=vt,
                                                   align=kind.src_esize or kind.esize)))
        # Concatenate the rows pairwise, then pick element j of row t for output j*g + t.
        while len(rows) > 1:
            n = rows[0].type.count
            rows = [b.shuffle_vector(rows[i], rows[i + 1], shuffle_mask(tuple(range(2 * n))))
                    for i in range(0, len(rows), 2)]
        order = tuple(t * r + j for j in range(r) for t in range(g))
        inter = b.shuffle_vector(rows[0], ir.Constant(rows[0].type, ir.Undefined),
                                 shuffle_mask(order))
        wb = kind.word_bytes
        addr = elem_ptr(b, base, b.mul(q, i64(r * wb)), I8)
        b.store(inter, addr, align=64 if (r * wb) % 64 == 0 else wb)


def dot_step(b: ir.IRBuilder, kind: GroupKind, native: bool, acc: ir.Value, a_word: ir.Value,
             b_words: ir.Value) -> ir.Value:
    """acc + the group dot products: per lane, sum_t A_t * B_t over the g elements of the
    lane's 32-bit word (`a_word` an i32 broadcast to every lane, `b_words` <W x i32>)."""
    lanes = b_words.type.count
    a_vec = b.bitcast(_splat(b, a_word, lanes), b_words.type)
    if kind is BF16_PAIRS:
        if native and lanes in (4, 8, 16):
            pt = ir.VectorType(BF16, 2 * lanes)
            fn = intrinsic(b.module, f"llvm.x86.avx512bf16.dpbf16ps.{lanes * 32}",
                           acc.type, [acc.type, pt, pt], [])
            return b.call(fn, [acc, b.bitcast(a_vec, pt), b.bitcast(b_words, pt)])
        ft = ir.VectorType(F32, lanes)
        hi_mask = ir.Constant(b_words.type, [ir.Constant(I32, 0xFFFF0000)] * lanes)
        sixteen = ir.Constant(b_words.type, [ir.Constant(I32, 16)] * lanes)
        a_lo = b.bitcast(b.shl(a_vec, sixteen), ft)
        a_hi = b.bitcast(b.and_(a_vec, hi_mask), ft)
        b_lo = b.bitcast(b.shl(b_words, sixteen), ft)
        b_hi = b.bitcast(b.and_(b_words, hi_mask), ft)
        fma = intrinsic(b.module, "llvm.fma", ft, [ft, ft, ft])
        acc = b.call(fma, [a_lo, b_lo, acc])
        return b.call(fma, [a_hi, b_hi, acc])
    if kind is U8S8_PAIRS:
        return b.add(acc, pair_products(b, a_vec, b_words, native))
    return u8s8_dot(b, native, acc, a_vec, b_words)


# `pmaddwd` by vector width (lanes of 32 bits): the LLVM feature that has it, its intrinsic.
PMADDWD = {4: ("sse2", "llvm.x86.sse2.pmadd.wd"), 8: ("avx2", "llvm.x86.avx2.pmadd.wd"),
           16: ("avx512bw", "llvm.x86.avx512.pmaddw.d.512")}


def pair_products(b: ir.IRBuilder, a_words: ir.Value, b_words: ir.Value,
                  native: bool) -> ir.Value:
    """Per 32-bit lane, a0*b0 + a1*b1 of its two signed 16-bit halves, in int32 (exact for
    widened bytes): the `pmaddwd` intrinsic if `native` (the target has `PMADDWD`'s feature
    for this width)."""
    wt = a_words.type
    lanes = wt.count
    ht = ir.VectorType(I16, 2 * lanes)
    a16, b16 = b.bitcast(a_words, ht), b.bitcast(b_words, ht)
    if native and lanes in PMADDWD:
        fn = intrinsic(b.module, PMADDWD[lanes][1], wt, [ht, ht], [])
        return b.call(fn, [a16, b16])
    # Other widths: the same in plain IR (x86 selects pmaddwd for this pattern).
    t32 = ir.VectorType(I32, 2 * lanes)
    prod = b.mul(b.sext(a16, t32), b.sext(b16, t32))
    undef = ir.Constant(t32, ir.Undefined)
    even = b.shuffle_vector(prod, undef, shuffle_mask(tuple(range(0, 2 * lanes, 2))))
    odd = b.shuffle_vector(prod, undef, shuffle_mask(tuple(range(1, 2 * lanes, 2))))
    return b.add(even, odd)


# `pmaddubsw` by vector width (lanes of 32 bits): the LLVM feature that has it, its intrinsic.
PMADDUBSW = {4: ("ssse3", "llvm.x86.ssse3.pmadd.ub.sw.128"),
             8: ("avx2", "llvm.x86.avx2.pmadd.ub.sw"),
             16: ("avx512bw", "llvm.x86.avx512.pmaddubs.w.512")}


def u8s8_dot(b: ir.IRBuilder, native: bool, acc: ir.Value, a_words: ir.Value,
             b_words: ir.Value) -> ir.Value:
    """acc + per lane the 4 products of the unsigned bytes of `a_words` and the signed
    bytes of `b_words` (<W x i32> each): `vpdpbusd` if `native`, else `pmaddubsw` and
    `pmaddwd` by ones, exact only for a B whose k-pairs fit int16 (`byte_pairs_fit`; the
    plan picks this only for such a constant B on a target with `PMADDUBSW`)."""
    lanes = acc.type.count
    if lanes not in (4, 8, 16):
        raise ValueError(f"u8 x s8 k-quads need 4, 8 or 16 lanes, got {lanes}")
    if native:
        fn = intrinsic(b.module, f"llvm.x86.avx512.vpdpbusd.{lanes * 32}", acc.type,
                       [acc.type, acc.type, acc.type], [])
        return b.call(fn, [acc, a_words, b_words])
    bt, ht = ir.VectorType(I8, 4 * lanes), ir.VectorType(I16, 2 * lanes)
    maddubs = intrinsic(b.module, PMADDUBSW[lanes][1], ht, [bt, bt], [])
    pairs = b.call(maddubs, [b.bitcast(a_words, bt), b.bitcast(b_words, bt)])
    ones = ir.Constant(ht, [ir.Constant(I16, 1)] * (2 * lanes))
    return b.add(acc, pair_products(b, b.bitcast(pairs, acc.type),
                                    b.bitcast(ones, acc.type), True))


def byte_pairs_fit(b: np.ndarray) -> bool:
    """Whether every k-pair (rows 2p, 2p+1) of the int8 matrix `b` (k x n, k even) keeps
    `pmaddubsw`'s sum a0*b0 + a1*b1 inside int16 for every pair of bytes a0, a1 in [0, 255]:
    its positive parts add to at most 128 (255 * 128 <= 2^15 - 1) and its negative parts to
    at most 128 (255 * -128 >= -2^15). Holds for every B in [-64, 64]."""
    b = np.asarray(b, np.int8)
    if b.size == 0 or (b.min() >= -64 and b.max() <= 64):
        return True  # 7-bit weights: the common case, without the pairs' temporaries
    pairs = b.reshape(b.shape[0] // 2, 2, b.shape[1])
    step = max(1, (1 << 16) // max(b.shape[1], 1))  # pair rows per block: stop early
    for p0 in range(0, pairs.shape[0], step):
        first = pairs[p0:p0 + step, 0].astype(np.int16)
        second = pairs[p0:p0 + step, 1].astype(np.int16)
        if (np.maximum(first, 0) + np.maximum(second, 0)).max() > 128:
            return False
        if (np.minimum(first, 0) + np.minimum(second, 0)).min() < -128:
            return False
    return True


def _splat(b: ir.IRBuilder, scalar: ir.Value, lanes: int) -> ir.Value:
    vt = ir.VectorType(scalar.type, lanes)
    one = b.insert_element(ir.Constant(vt, ir.Undefined), scalar, ir.Constant(I32, 0))
    return b.shuffle_vector(one, ir.Constant(vt, ir.Undefined), shuffle_mask((0,) * lanes))


__all__ = ["BF16_PAIRS", "PMADDUBSW", "PMADDWD", "S8_PAIRS", "U8S8_PAIRS", "U8S8_QUADS",
           "GroupKind", "Operand", "byte_pairs_fit", "dot_step", "pack_panels", "pair_products"]
