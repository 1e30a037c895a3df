"""Low-precision GEMMs: bf16 x bf16 -> f32 on `vdpbf16ps`, u8 x s8 -> s32 on `vpdpbusd`.

C[m x n] = op(A) @ op(B) for operands whose k axis is read in 32-bit groups (see
`lowp_kernels`: 2 bf16 or 4 bytes per lane). The structure is GotoBLAS's with one cache
level: B is packed whole into NR-column panels of k-groups (the instruction's layout, zero
padded), then for each block of MC rows A is packed into MR-row panels of k-groups, and an
MR x NR register block (MR x NR/W vector accumulators, W = 16 lanes with AVX-512) runs over
the whole K: each step loads NR/W words of B and, per row, broadcasts one A group and
issues NR/W dot-product instructions. So every accumulator holds the complete sum when it
is stored, and the epilogue (bias, activation, dequantization, rounding to bf16) runs
exactly once per element, on it, in the epilogue's own dtype; the stored dtype may
therefore differ from the accumulator's (`passes/fuse.py` relies on it).

u8 x s8 with an activation zero point za: C = (A - za) @ B = A @ B - za * colsum(B); the
column sums are computed from the packed B with the same instruction (A = all ones), so
the result is the exact integer sum (int32 wraps only past 2^31: K < 65536 is safe).

On a target without the instruction (`avx512bf16` / `avx512vnni`) the bf16 step is
emulated (pairs widened to float, two FMAs per lane), and u8 x s8 runs on `pmaddwd` over
k-pairs (still exact; half the products of `vpdpbusd` per instruction, 3-4x those of
unpacking bytes into int32 lanes): A packed as pairs widened to int16
(`lowp_kernels.U8S8_PAIRS`), B as pairs of bytes (`S8_PAIRS`) that the micro-kernel
sign-extends as it loads them (half the bytes to pack and keep in L1). Every operand is
read with element alignment only.

A constant B (quantized weights) is stored in exactly that packed layout once, at compile
time (`matmul_integer`'s b_groups, `LowpSpec.b_panels`: `gemm/prepack.py`), and read in
place: no B packing per call, no scratch for it. Without VNNI, a constant B whose k-pairs
fit `pmaddubsw`'s int16 sums for every A (`lowp_kernels.byte_pairs_fit`; 7-bit weights)
is stored as k-quads instead (b_groups group 4, `LowpSpec.b_group`), and the GEMM runs
the quads layout with `vpdpbusd` emulated by `pmaddubsw` + `pmaddwd` (3 instructions per
32 products per 256 bits against 4: 0.76x the time of a quantized MLP at batch 256 on Zen
3), still exact. The values are what makes it exact, so the lowering checks them on every
B stored so (`matmul.check_panels`), not only where `gemm/prepack.py` chose the layout.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import llvmlite.ir as ir

from graphc.codegen.gemm.helpers import carried_loop, elem_ptr, for_range
from graphc.codegen.gemm.lowp_kernels import (
    BF16_PAIRS,
    PMADDUBSW,
    PMADDWD,
    S8_PAIRS,
    U8S8_PAIRS,
    U8S8_QUADS,
    GroupKind,
    Operand,
    dot_step,
    pack_panels,
)
from graphc.codegen.gemm.spec import Epilogue
from graphc.codegen.index import Idx, IndexBuilder
from graphc.codegen.llvm_types import F32, I8, I16, I32, i64
from graphc.codegen.target import Target
from graphc.ir import DType

# Rows of A packed per block: 64 rows x K bf16 (128 KiB at K = 1024) stay in L2 while the
# B panels stream past them.
_MC_ROWS = 64


@dataclass(frozen=True)
class LowpSpec:
    """C[m x n] = op(A) @ op(B) of low-precision operands, strides in elements (as
    `GemmSpec`); `kind` the operand pair, `out` the dtype stored into C (the epilogue's),
    `zero_point` whether A has a runtime zero point (u8 x s8 only)."""

    m: int
    n: int
    k: int
    kind: GroupKind
    trans_a: bool
    trans_b: bool
    lda: int
    ldb: int
    ldc: int
    out: DType
    zero_point: bool = False
    # >0: B (not transposed) is stored in the packed layout of panels of this many columns
    # (`matmul_integer`'s b_groups, constant weights packed at compile time): read in place.
    b_panels: int = 0
    # The k-group of a B stored packed (b_groups' second number): 4 on a target without
    # VNNI selects quads on `pmaddubsw` (a B whose pairs fit, checked where it is lowered).
    b_group: int = 0

    def scratch_bytes(self, target: Target) -> int:
        return plan_lowp(self, target).scratch_bytes


@dataclass(frozen=True)
class LowpPlan:
    """Register block (mr rows x nr columns, `lanes`-wide vectors), A block rows, the
    packed groups (`kind`: A's, the spec's, or without VNNI u8 x s8 as widened pairs, or
    quads for a B stored as quads; `b_kind`: B's, `b_group_kind`), whether the target has
    their dot-product instruction (`native`; u8 x s8 quads without it run on `pmaddubsw`,
    `group_kind`), and the scratch layout: packed B at 0 (none if B is stored packed),
    packed A at `a_offset`, column sums at `sum_offset`."""

    kind: GroupKind
    b_kind: GroupKind
    native: bool
    lanes: int
    mr: int
    nr: int
    mc: int
    kg: int
    a_offset: int
    sum_offset: int
    scratch_bytes: int


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def plan_lowp(spec: LowpSpec, target: Target) -> LowpPlan:
    """MR x NR = 8 x 2 vectors (16 accumulators) with 32 registers, 6 x 2 with 16."""
    lanes = target.lanes(4)
    wide = target.vector_bits >= 512
    kind, native = group_kind(spec.kind, target, bool(spec.b_panels) and spec.b_group == 4)
    mr, nr = (8 if wide else 6), 2 * lanes
    mc = min(_round_up(max(spec.m, 1), mr), (_MC_ROWS // mr) * mr)
    b_kind = b_group_kind(kind)
    kg = -(-spec.k // kind.g)
    b_bytes = 0 if spec.b_panels else _round_up(_round_up(spec.n, nr) * kg * b_kind.word_bytes,
                                                64)
    a_bytes = _round_up(mc * kg * 4, 64)
    sums = _round_up(_round_up(spec.n, nr) * 4, 64) if spec.zero_point else 0
    return LowpPlan(kind, b_kind, native, lanes, mr, nr, mc, kg, b_bytes, b_bytes + a_bytes,
                    b_bytes + a_bytes + sums)


def b_group_kind(kind: GroupKind) -> GroupKind:
    """How B is packed for A's groups `kind`: as they are, except widened u8 x s8 pairs,
    whose B stays bytes (`S8_PAIRS`, sign-extended as the micro-kernel loads it)."""
    return S8_PAIRS if kind is U8S8_PAIRS else kind


def load_b_words(b: ir.IRBuilder, plan: LowpPlan, row: ir.Value, v: int,
                 in_scratch: bool) -> ir.Value:
    """Vector v (`plan.lanes` groups) of the packed B row at `row` as <W x i32> words of
    A's group kind. `in_scratch`: B was packed into the (64-byte aligned) scratch; else it
    is a constant stored packed (`LowpSpec.b_panels`), a numpy buffer aligned to its
    element only."""
    w = plan.lanes
    wb = plan.b_kind.word_bytes
    at = elem_ptr(b, row, v * w * wb, I8)
    align = _align(v, w, wb) if in_scratch else 1
    if plan.b_kind is S8_PAIRS:
        bytes_ = b.load(at, typ=ir.VectorType(I8, 2 * w), align=align)
        return b.bitcast(b.sext(bytes_, ir.VectorType(I16, 2 * w)), ir.VectorType(I32, w))
    return b.load(at, typ=ir.VectorType(I32, w), align=align)


def group_kind(kind: GroupKind, target: Target, fitting_quads: bool = False
               ) -> tuple[GroupKind, bool]:
    """The groups a GEMM of operand pair `kind` packs on `target`, and whether the target
    has their one-instruction dot product: u8 x s8 without 512-bit VNNI becomes widened
    pairs, whose `pmaddwd` every x86 vector width has, except for a B stored as quads
    (`fitting_quads`: b_groups' group 4), which stays quads on `pmaddubsw` where the
    target has it (`emulates_quads`; native False). Only B whose k-pairs fit int16 may be
    stored so: `matmul.check_panels` refuses any other before this kernel is emitted."""
    native = target.has(kind.native) and target.vector_bits >= 512
    if kind is U8S8_QUADS and not native:
        if fitting_quads and emulates_quads(target):
            return U8S8_QUADS, False
        lanes = target.lanes(4)
        return U8S8_PAIRS, lanes in PMADDWD and target.has(PMADDWD[lanes][0])
    return kind, native


def emulates_quads(target: Target) -> bool:
    """Whether u8 x s8 k-quads run on `pmaddubsw` on `target` (no 512-bit VNNI, but the
    instruction at its vector width)."""
    lanes = target.lanes(4)
    return (not (target.has("avx512vnni") and target.vector_bits >= 512)
            and lanes in PMADDUBSW and target.has(PMADDUBSW[lanes][0]))


def emit_lowp_gemm(b: ir.IRBuilder, spec: LowpSpec, a: ir.Value, bm: ir.Value, c: ir.Value,
                   scratch: ir.Value, target: Target, epilogue: Epilogue | None,
                   zero_point: ir.Value | None = None) -> None:
    """Emit C = epilogue(op(A) @ op(B)) at the builder's position (contract of
    `gemm.emit.emit_gemm`: complete sums, epilogue once per in-bounds element). `zero_point`
    points to A's uint8 zero point when `spec.zero_point`."""
    if spec.m == 0 or spec.n == 0:
        return
    from graphc.codegen.gemm.gemv_bf16 import emit_bf16_gemv, uses_gemv  # uses LowpSpec

    if uses_gemv(spec):  # a few rows of A: stream B once, unpacked (gemm/gemv_bf16.py)
        emit_bf16_gemv(b, spec, a, bm, c, target, epilogue)
        return
    plan = plan_lowp(spec, target)
    kind, native = plan.kind, plan.native
    w, mr, nr, kg = plan.lanes, plan.mr, plan.nr, plan.kg
    bwb = plan.b_kind.word_bytes
    nv = nr // w
    acc_elem = F32 if kind.acc == "f32" else I32
    vt = ir.VectorType(acc_elem, w)
    wt = ir.VectorType(I32, w)
    b_panels = -(-spec.n // nr)
    apack = elem_ptr(b, scratch, plan.a_offset, I8)
    a_op = Operand(a, *((1, spec.lda) if spec.trans_a else (spec.lda, 1)), spec.m, spec.k)
    if spec.b_panels:  # stored packed at compile time (`check_b_panels`)
        check_b_panels(spec, plan)
        bpack = bm
    else:
        bpack = scratch
        b_op = Operand(bm, *((spec.ldb, 1) if spec.trans_b else (1, spec.ldb)), spec.n,
                       spec.k, signed=True)
        pack_panels(b, plan.b_kind, b_op, bpack, i64(0), b_panels, nr)
    sums = None
    if spec.zero_point:
        assert zero_point is not None
        sums = elem_ptr(b, scratch, plan.sum_offset, I8)
        _column_sums(b, plan, bpack, sums, b_panels, not spec.b_panels)
        za = b.zext(b.load(zero_point, typ=I8, align=1), I32)
    zero = ir.Constant(vt, None)
    with for_range(b, 0, -(-spec.m // plan.mc), name="lp.ic") as ic:
        i0 = b.mul(ic, i64(plan.mc))
        rows = b.sub(i64(spec.m), i0)
        rows = b.select(b.icmp_signed("<", rows, i64(plan.mc)), rows, i64(plan.mc))
        a_panels = b.sdiv(b.add(rows, i64(mr - 1)), i64(mr))
        pack_panels(b, kind, a_op, apack, i0, a_panels, mr)
        with for_range(b, 0, b_panels, name="lp.jr") as jr:
            bp = elem_ptr(b, bpack, b.mul(jr, i64(kg * nr * bwb)), I8)
            with for_range(b, 0, a_panels, name="lp.ir") as ir_:
                ap = elem_ptr(b, apack, b.mul(ir_, i64(kg * mr * 4)), I8)

                def step(q: ir.Value, accs: list[ir.Value], ap: ir.Value = ap,
                         bp: ir.Value = bp) -> list[ir.Value]:
                    brow = elem_ptr(b, bp, b.mul(q, i64(nr * bwb)), I8)
                    bws = [load_b_words(b, plan, brow, v, not spec.b_panels)
                           for v in range(nv)]
                    arow = elem_ptr(b, ap, b.mul(q, i64(mr * 4)), I8)
                    out = list(accs)
                    for r in range(mr):
                        aw = b.load(elem_ptr(b, arow, r, I32), typ=I32, align=4)
                        for v in range(nv):
                            out[r * nv + v] = dot_step(b, kind, native, out[r * nv + v],
                                                       aw, bws[v])
                    return out

                accs = carried_loop(b, 0, kg, [zero] * (mr * nv), step, name="lp.k")
                row0 = b.add(i0, b.mul(ir_, i64(mr)))
                col0 = b.mul(jr, i64(nr))
                if sums is not None:
                    zv = _splat(b, za, w)
                    for v in range(nv):
                        s = b.load(elem_ptr(b, sums, b.add(col0, i64(v * w)), I32), typ=wt,
                                   align=_align(v, w))
                        for r in range(mr):
                            accs[r * nv + v] = b.sub(accs[r * nv + v], b.mul(zv, s))
                _store_tile(b, spec, c, epilogue, accs, row0, col0, mr, nv, w)


def b_groups(spec: LowpSpec, target: Target) -> tuple[int, int]:
    """(panel, group): how the GEMM of `spec` on `target` packs B, the layout of
    `matmul_integer`'s b_groups (`graphc.ops.panels.pack_groups`)."""
    plan = plan_lowp(spec, target)
    return plan.nr, plan.b_kind.g


def check_b_panels(spec: LowpSpec, plan: LowpPlan) -> None:
    """ValueError unless a prepacked B (`spec.b_panels`) is exactly the plan's packed B:
    panels of NR whole groups of whole columns, one byte per element."""
    if (spec.b_panels != plan.nr or spec.trans_b or plan.b_kind.esize != 1
            or spec.k % plan.b_kind.g or spec.n % plan.nr):
        raise ValueError(f"b in panels of {spec.b_panels} columns, but the GEMM {spec} packs "
                         f"panels of {plan.nr} columns in groups of {plan.b_kind.g} rows")


def _column_sums(b: ir.IRBuilder, plan: LowpPlan, bpack: ir.Value, sums: ir.Value,
                 panels: int, in_scratch: bool) -> None:
    """sums[j] = sum over k of B[k, j], from the packed panels (dot with all-ones A);
    `in_scratch` as for `load_b_words`."""
    w, nr, kg = plan.lanes, plan.nr, plan.kg
    wt = ir.VectorType(I32, w)
    ones = ir.Constant(I32, plan.kind.ones)
    with for_range(b, 0, panels, name="cs.p") as p:
        bp = elem_ptr(b, bpack, b.mul(p, i64(kg * nr * plan.b_kind.word_bytes)), I8)
        for v in range(nr // w):
            def step(q: ir.Value, acc: list[ir.Value], v: int = v) -> list[ir.Value]:
                row = elem_ptr(b, bp, b.mul(q, i64(nr * plan.b_kind.word_bytes)), I8)
                words = load_b_words(b, plan, row, v, in_scratch)
                return [dot_step(b, plan.kind, plan.native, acc[0], ones, words)]

            total = carried_loop(b, 0, kg, [ir.Constant(wt, None)], step, name="cs.k")[0]
            dst = elem_ptr(b, sums, b.add(b.mul(p, i64(nr)), i64(v * w)), I32)
            b.store(total, dst, align=_align(v, w))


def _align(v: int, w: int, word_bytes: int = 4) -> int:
    """The alignment of vector v of a packed row of 2 vectors of w words (NR = 2w columns),
    rows back to back from a 64-byte aligned start (the scratch; not a B stored packed)."""
    return math.gcd(64, 2 * w * word_bytes, v * w * word_bytes)


def _store_tile(b: ir.IRBuilder, spec: LowpSpec, c: ir.Value, epilogue: Epilogue | None,
                accs: list[ir.Value], row0: ir.Value, col0: ir.Value, mr: int, nv: int,
                w: int) -> None:
    """Apply the epilogue to the in-bounds rows and columns of the block and store them
    (full vectors where all w columns are in bounds, else lane by lane)."""
    def put(row: ir.Value, col: ir.Value, value: ir.Value, lanes: int) -> None:
        if epilogue is not None:
            value = epilogue(b, row, col, value, lanes)
        at = b.add(b.mul(row, i64(spec.ldc)), col)
        IndexBuilder(b, lanes).store(c, spec.out, Idx(at, 1 if lanes > 1 else 0), value)

    for r in range(mr):
        row = b.add(row0, i64(r))
        guard = spec.m % mr != 0
        inside = b.icmp_signed("<", row, i64(spec.m))
        with b.if_then(inside) if guard else contextlib.nullcontext():
            _store_row(b, spec, put, accs[r * nv:(r + 1) * nv], row, col0, w)


def _store_row(b: ir.IRBuilder, spec: LowpSpec,
               put: Callable[[ir.Value, ir.Value, ir.Value, int], None],
               accs: list[ir.Value], row: ir.Value, col0: ir.Value, w: int) -> None:
    nv = len(accs)
    for v in range(nv):
        col = b.add(col0, i64(v * w))
        acc = accs[v]
        if spec.n % (nv * w) == 0:
            put(row, col, acc, w)
            continue
        left = b.sub(i64(spec.n), col)
        with b.if_else(b.icmp_signed(">=", left, i64(w))) as (full, part):
            with full:
                put(row, col, acc, w)
            with part:
                with for_range(b, 0, left, name="st.l") as lane:
                    one = b.extract_element(acc, lane)
                    put(row, b.add(col, lane), one, 1)


def _splat(b: ir.IRBuilder, scalar: ir.Value, lanes: int) -> ir.Value:
    vt = ir.VectorType(scalar.type, lanes)
    undef = ir.Constant(vt, ir.Undefined)
    one = b.insert_element(undef, scalar, ir.Constant(I32, 0))
    return b.shuffle_vector(one, undef, ir.Constant(ir.VectorType(I32, lanes), [0] * lanes))


def spec_kind(dtype: DType) -> GroupKind | None:
    """The operand pair a matmul's first operand dtype selects (None: not low precision)."""
    return {DType.bfloat16: BF16_PAIRS, DType.uint8: U8S8_QUADS}.get(dtype)
