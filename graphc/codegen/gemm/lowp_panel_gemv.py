"""The u8 x s8 GEMV over prepacked weights: int32 C[m x n] = A @ B for a few rows of A whose
B is stored in the integer GEMM's packed panels (`LowpSpec.b_panels`, constant weights:
`gemm/prepack.py`).

A token of a quantized transformer's decode step multiplies one row by every weight matrix,
so it streams B once and its speed is how many products each byte of B costs. B read in place
row-major (`lowp_gemv`) has to be regrouped in registers: byte quads against a quarter-used
`vpdpbusd`, or, without VNNI, two rows sign-extended and interleaved into pairs per step
(shuffles that the multiplies wait on). Stored in panels, every load already is the
instruction's operand: per k-group and panel, NR/W vectors of B (without VNNI byte pairs
sign-extended on load, `lowp.load_b_words`, or quads whose pairs fit `pmaddubsw`), one
broadcast word of A, NR/W dot products (one instruction each with VNNI, `pmaddwd` for
pairs, `pmaddubsw` + `pmaddwd` for quads without VNNI) whose products are all useful.

Per row of A: its groups as words (k-pairs widened to int16 in a table in the scratch; k-quads
are A's own bytes, read as unaligned 32-bit words), then blocks of up to `_PANELS` panels run
over the whole K with one accumulator per vector, and the epilogue runs once per element on
the complete sum (`lowp._store_tile`). No runtime zero point (quantized layers fold theirs
into the epilogue; a `matmul_integer` with one takes the packed GEMM, which reads the same
panels). Sums are exact int32, as the GEMM's.
"""

from __future__ import annotations

import llvmlite.ir as ir

from graphc.codegen.gemm.helpers import carried_loop, elem_ptr, for_range
from graphc.codegen.gemm.lowp import (
    LowpPlan,
    LowpSpec,
    _store_tile,
    check_b_panels,
    load_b_words,
    plan_lowp,
)
from graphc.codegen.gemm.lowp_kernels import U8S8_PAIRS, U8S8_QUADS, dot_step
from graphc.codegen.gemm.spec import Epilogue
from graphc.codegen.llvm_types import I8, I32, i64
from graphc.codegen.target import Target

__all__ = ["MAX_ROWS", "applies", "emit_panel_gemv"]

# Rows of A up to which each row streams B (as `lowp_gemv.MAX_ROWS`).
MAX_ROWS = 4
# Panels per block: 4 x NR/W accumulators (8 with AVX2's 16 registers, as the row-major
# GEMV), that many sequential streams of B.
_PANELS = 4


def applies(spec: LowpSpec) -> bool:
    """u8 x s8 with B in panels, few rows, no runtime zero point."""
    return (spec.kind is U8S8_QUADS and bool(spec.b_panels) and 0 < spec.m <= MAX_ROWS
            and not spec.zero_point and spec.k > 0)


def emit_panel_gemv(b: ir.IRBuilder, spec: LowpSpec, a: ir.Value, bm: ir.Value, c: ir.Value,
                    scratch: ir.Value, target: Target, epilogue: Epilogue | None) -> None:
    """Emit C = epilogue(op(A) @ B) for `applies(spec)` (contract of `lowp.emit_lowp_gemm`);
    `scratch`: the GEMM's (`spec.scratch_bytes`), which holds a row's word table."""
    plan = plan_lowp(spec, target)
    check_b_panels(spec, plan)
    assert plan.kind in (U8S8_PAIRS, U8S8_QUADS) and plan.kg * 4 <= plan.scratch_bytes
    panels = spec.n // plan.nr
    full, rest = divmod(panels, _PANELS)
    with for_range(b, 0, spec.m, name="pg.m") as row:
        words = _words(b, spec, plan, a, row, scratch)
        if full:
            with for_range(b, 0, full, name="pg.j") as jb:
                _block(b, spec, plan, bm, c, words, epilogue, row,
                       b.mul(jb, i64(_PANELS)), _PANELS)
        if rest:
            _block(b, spec, plan, bm, c, words, epilogue, row, i64(full * _PANELS), rest)


def _words(b: ir.IRBuilder, spec: LowpSpec, plan: LowpPlan, a: ir.Value, row: ir.Value,
           table: ir.Value) -> ir.Value:
    """A pointer to the row's k-groups as 32-bit words (kg of them, in the A group layout):
    quads are A's bytes themselves (a row-major A), pairs a table of zero-extended pairs."""
    step_k = spec.lda if spec.trans_a else 1
    base = row if spec.trans_a else b.mul(row, i64(spec.lda))
    if plan.kind is U8S8_QUADS and not spec.trans_a:
        return elem_ptr(b, a, base, I8)
    g, esize = plan.kind.g, plan.kind.esize
    with for_range(b, 0, plan.kg, name="pg.t") as q:
        word: ir.Value = ir.Constant(I32, 0)
        for t in range(g):
            at = elem_ptr(b, a, b.add(base, b.mul(b.add(b.mul(q, i64(g)), i64(t)),
                                                  i64(step_k))), I8)
            byte = b.zext(b.load(at, typ=I8, align=1), I32)
            word = b.or_(word, b.shl(byte, ir.Constant(I32, 8 * esize * t)))
        b.store(word, elem_ptr(b, table, b.mul(q, i64(4)), I8), align=4)
    return table


def _block(b: ir.IRBuilder, spec: LowpSpec, plan: LowpPlan, bm: ir.Value, c: ir.Value,
           words: ir.Value, epilogue: Epilogue | None, row: ir.Value, p0: ir.Value,
           count: int) -> None:
    """Panels p0 .. p0 + count of one row over the whole K, then their epilogue and store."""
    w, nr, kg = plan.lanes, plan.nr, plan.kg
    nv = nr // w
    panel_bytes = kg * nr * plan.b_kind.word_bytes
    row_bytes = nr * plan.b_kind.word_bytes
    first = elem_ptr(b, bm, b.mul(p0, i64(panel_bytes)), I8)

    def step(q: ir.Value, accs: list[ir.Value]) -> list[ir.Value]:
        # A scalar load the splat in dot_step turns into a broadcast from memory.
        aw = b.load(elem_ptr(b, words, b.mul(q, i64(4)), I8), typ=I32, align=1)
        out = list(accs)
        for p in range(count):
            brow = elem_ptr(b, first, b.add(b.mul(q, i64(row_bytes)), i64(p * panel_bytes)),
                            I8)
            for v in range(nv):
                words_v = load_b_words(b, plan, brow, v, in_scratch=False)
                out[p * nv + v] = dot_step(b, plan.kind, plan.native, out[p * nv + v], aw,
                                           words_v)
        return out

    zero = ir.Constant(ir.VectorType(I32, w), None)
    accs = carried_loop(b, 0, kg, [zero] * (count * nv), step, name="pg.k")
    _store_tile(b, spec, c, epilogue, accs, row, b.mul(p0, i64(nr)), 1, count * nv, w)
