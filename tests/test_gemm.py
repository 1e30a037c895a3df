"""The GEMM emitter (graphc.codegen.gemm) against numpy.

One module holds every case (each LLVM compile costs 0.1-0.4 s), compiled once per test
session. Each case is a function gN(a, b, c, scratch, bias, rbias) wrapping one emit_gemm.
Operands carry NaN in their row padding and in a guard row past their end, so reading
anything outside the logical matrices poisons the result; C's padding and guard row must
come back unchanged (no stray writes).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, replace

import llvmlite.ir as ir
import numpy as np
import pytest

from graphc.codegen.gemm.emit import GemmSpec, emit_gemm, kernel_shape, plan_gemm
from graphc.codegen.gemm.helpers import elem_ptr, splat
from graphc.codegen.llvm_types import PTR, VOID, compute_type, storage_type
from graphc.codegen.target import Target, host_target
from graphc.ir import DType
from graphc.ops.panels import pack_panels
from graphc.runtime.jit import JitModule, jit_compile

F32, F64, I32, I64 = DType.float32, DType.float64, DType.int32, DType.int64
SIZES = [1, 2, 7, 8, 9, 31, 32, 33, 95, 97, 128, 257]
TRANSPOSES = [(False, False), (False, True), (True, False), (True, True)]


@dataclass(frozen=True)
class Case:
    spec: GemmSpec
    epilogue: bool = False
    accumulate: bool = False

    @property
    def id(self) -> str:
        s = self.spec
        t = ("T" if s.trans_a else "N") + ("T" if s.trans_b else "N")
        pad = "-pad" if s.ldc > s.n else ""
        extra = ("-epi" if self.epilogue else "") + ("-acc" if self.accumulate else "")
        return f"{s.dtype.short}-{s.m}x{s.n}x{s.k}-{t}{pad}{extra}"


def _spec(m: int, n: int, k: int, dtype: DType, ta: bool, tb: bool, pad: int = 0) -> GemmSpec:
    return GemmSpec(m, n, k, dtype, ta, tb, lda=(m if ta else k) + pad,
                    ldb=(k if tb else n) + 2 * pad, ldc=n + 3 * pad)


def _cases() -> list[Case]:
    cases: list[Case] = []
    # A covering subset of SIZES^3: every size in every position under five rotations (60
    # shapes), each with a rotating dtype, transpose pair, padding, epilogue and accumulate.
    idx = 0
    for d_n, d_k in [(0, 0), (1, 3), (4, 7), (6, 2), (9, 5)]:
        for i, m in enumerate(SIZES):
            n, k = SIZES[(i + d_n) % 12], SIZES[(i + d_k) % 12]
            ta, tb = TRANSPOSES[idx % 4]
            spec = _spec(m, n, k, F32 if idx % 2 == 0 else F64, ta, tb, pad=idx % 3)
            cases.append(Case(spec, epilogue=idx % 5 in (1, 3), accumulate=idx % 7 in (2, 5)))
            idx += 1
    # Every path under every transpose pair, both float dtypes: direct small-M, direct
    # small-N, narrow-N packed kernel, and packed edges in M and N.
    for dtype in (F32, F64):
        for j, (ta, tb) in enumerate(TRANSPOSES):
            for m, n, k in [(3, 70, 45), (1, 300, 20), (70, 3, 45), (37, 1, 19), (29, 6, 33),
                            (29, 4, 33), (45, 70, 50)]:
                cases.append(Case(_spec(m, n, k, dtype, ta, tb, pad=j % 2),
                                  epilogue=(m + j) % 2 == 0, accumulate=(n + j) % 3 == 0))
    # Row counts that a register block of 7 or 6 rows fits with less padding than 8
    # (`fitted_rows`): 49 = 7 x 7, 13 -> 14, 9 -> 12.
    for j, (ta, tb) in enumerate(TRANSPOSES):
        for m, n, k, dtype in [(49, 70, 45, F32), (13, 40, 30, F64), (9, 50, 33, F32)]:
            cases.append(Case(_spec(m, n, k, dtype, ta, tb, pad=j % 2),
                              epilogue=j % 2 == 0, accumulate=j == 3))
    # Several KC blocks (first / middle / last store modes), with epilogue and accumulate.
    for dtype, k in ((F32, 1100), (F64, 600)):
        for ta, tb in TRANSPOSES:
            cases.append(Case(_spec(19, 45, k, dtype, ta, tb, pad=1), epilogue=True,
                              accumulate=ta))
    # B read in place with many rows (whole short rows: ldb == n): several MC and KC blocks,
    # with and without a partial last panel; A read in place over several column panels.
    cases.append(Case(_spec(200, 70, 1100, F32, False, False), epilogue=True, accumulate=True))
    # (Both only from spec._IN_PLACE_MACS multiply-adds.)
    cases.append(Case(_spec(100, 64, 700, F64, False, False), epilogue=True))
    cases.append(Case(_spec(97, 100, 500, F32, False, True), epilogue=True))
    # Whole tiles (straight-line stores) over several KC blocks: the epilogue on the last
    # block only, with and without accumulating into C.
    cases.append(Case(_spec(64, 64, 1100, F32, False, False), epilogue=True, accumulate=True))
    cases.append(Case(_spec(32, 32, 600, F64, True, False, pad=1), epilogue=True))
    # Several MC blocks, and several NC blocks.
    cases.append(Case(_spec(200, 40, 30, F32, False, False), epilogue=True))
    cases.append(Case(_spec(9, 4100, 5, F32, True, False, pad=1), epilogue=True))  # B in place
    cases.append(Case(_spec(40, 4100, 5, F32, True, False, pad=1), epilogue=True))
    # K == 0: C = epilogue(0), C unchanged, C = epilogue(C).
    for epi, acc in ((False, False), (True, False), (False, True), (True, True)):
        cases.append(Case(_spec(7, 37, 0, F32, acc, epi), epilogue=epi, accumulate=acc))
    # N == 1 with B a contiguous column, and M == 1 with A a contiguous row (transposed).
    cases.append(Case(GemmSpec(33, 1, 70, F64, False, False, 70, 1, 1), epilogue=True))
    cases.append(Case(GemmSpec(1, 33, 70, F32, True, True, 1, 70, 33), accumulate=True))
    # Integers: forward only, exact.
    for j, (ta, tb) in enumerate(TRANSPOSES):
        for m, n, k in [(2, 40, 9), (33, 50, 17), (20, 3, 31)]:
            cases.append(Case(_spec(m, n, k, I32, ta, tb, pad=j % 2), epilogue=j == 1))
    cases.append(Case(_spec(13, 21, 10, I64, False, True), epilogue=True))
    cases.append(Case(_spec(13, 21, 10, I64, True, False), accumulate=True))
    cases += _panel_cases(host_target())
    return cases


def _panels(spec: GemmSpec, target: Target) -> GemmSpec:
    """`spec` with B stored in the panels its plan reads (`GemmSpec.b_panels`)."""
    nr = kernel_shape(spec.dtype, target, spec.n)[1]
    return replace(spec, trans_b=False, ldb=spec.n, b_panels=nr)


def _panel_cases(target: Target) -> list[Case]:
    """B prepacked in panels (a constant conv weight): whole panels only, a narrower last
    panel, the narrow-N block (NR = one vector), several KC and MC blocks, A transposed
    or not, with and without the epilogue and accumulation."""
    shapes = [(49, 96, 45, F32, True), (49, 80, 320, F32, True), (13, 16, 40, F32, False),
              (97, 40, 1100, F32, True), (30, 24, 600, F64, False), (196, 70, 33, F64, True),
              (9, 5, 7, F32, False)]
    return [Case(_panels(_spec(m, n, k, dt, ta, False, pad=j % 2), target),
                 epilogue=j % 2 == 0, accumulate=j % 3 == 1)
            for j, (m, n, k, dt, ta) in enumerate(shapes)]


CASES = _cases()


def _bias_relu(dtype: DType, bias: ir.Value, rbias: ir.Value):
    """The test epilogue: relu(acc + bias[col] + rbias[row]) (checks both indices)."""
    ety = storage_type(dtype)

    def epilogue(b: ir.IRBuilder, row: ir.Value, col: ir.Value, acc: ir.Value,
                 lanes: int) -> ir.Value:
        t = compute_type(dtype, lanes)
        bv = b.load(elem_ptr(b, bias, col, ety), typ=t, align=dtype.itemsize)
        rv = splat(b, b.load(elem_ptr(b, rbias, row, ety), typ=ety), lanes)
        zero = ir.Constant(t, None)
        if dtype.is_float:
            x = b.fadd(b.fadd(acc, bv), rv)
            return b.select(b.fcmp_ordered(">", x, zero), x, zero)
        x = b.add(b.add(acc, bv), rv)
        return b.select(b.icmp_signed(">", x, zero), x, zero)

    return epilogue


@dataclass
class Compiled:
    jit: JitModule
    module: ir.Module


@pytest.fixture(scope="module")
def compiled() -> Compiled:
    target = host_target()
    module = ir.Module("test_gemm")
    module.triple = target.triple
    for n, case in enumerate(CASES):
        fn = ir.Function(module, ir.FunctionType(VOID, [PTR] * 6), name=f"g{n}")
        for arg in fn.args:
            arg.add_attribute("noalias")
        a, b, c, scratch, bias, rbias = fn.args
        builder = ir.IRBuilder(fn.append_basic_block("entry"))
        epi = _bias_relu(case.spec.dtype, bias, rbias) if case.epilogue else None
        emit_gemm(builder, case.spec, a, b, c, scratch, target, epi, case.accumulate)
        builder.ret_void()
    return Compiled(jit_compile(str(module)), module)


def _operand(rng: np.random.Generator, rows: int, cols: int, ld: int,
             dtype: DType) -> np.ndarray:
    """rows x ld storage plus a guard row; the logical rows x cols part is random, the rest
    NaN (floats) or a huge value (integers)."""
    if dtype.is_float:
        buf = np.full((rows + 1, ld), np.nan, dtype=dtype.np)
        buf[:rows, :cols] = rng.standard_normal((rows, cols))
    else:
        buf = np.full((rows + 1, ld), 1 << 20, dtype=dtype.np)
        buf[:rows, :cols] = rng.integers(-9, 10, (rows, cols))
    return buf


def _run(compiled: Compiled, n: int, case: Case, target: Target | None = None) -> None:
    s = case.spec
    dt = s.dtype
    rng = np.random.default_rng(n)
    a = _operand(rng, s.k if s.trans_a else s.m, s.m if s.trans_a else s.k, s.lda, dt)
    b = _operand(rng, s.n if s.trans_b else s.k, s.k if s.trans_b else s.n, s.ldb, dt)
    b_arg = b
    if s.b_panels:  # the same B in panels, then a NaN guard
        b_arg = np.concatenate([pack_panels(b[:s.k, :s.n], s.b_panels),
                                np.full(s.n + 1, np.nan, dt.np)])
    c = _operand(rng, s.m, s.n, s.ldc, dt)
    bias = _operand(rng, 1, s.n, max(s.n, 1), dt)[0]
    rbias = _operand(rng, 1, s.m, max(s.m, 1), dt)[0]
    c_before = c.copy()
    nbytes = s.scratch_bytes(target or host_target())
    scratch = np.full(nbytes + 128, 0xFF, dtype=np.uint8)  # garbage: must not leak into C
    at = scratch.ctypes.data + (-scratch.ctypes.data) % 64
    fn = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 6)(compiled.jit.address(f"g{n}"))
    fn(a.ctypes.data, b_arg.ctypes.data, c.ctypes.data, at, bias.ctypes.data,
       rbias.ctypes.data)

    la = a[:s.k, :s.m].T if s.trans_a else a[:s.m, :s.k]
    lb = b[:s.n, :s.k].T if s.trans_b else b[:s.k, :s.n]
    wide = np.float64 if dt.is_float else np.int64
    want = la.astype(wide) @ lb.astype(wide)
    scale = np.abs(la).astype(wide) @ np.abs(lb).astype(wide)
    if case.accumulate:
        want = want + c_before[:s.m, :s.n]
        scale = scale + np.abs(c_before[:s.m, :s.n])
    if case.epilogue:
        want = np.maximum(want + bias[:s.n] + rbias[:s.m, None], 0)
        scale = scale + np.abs(bias[:s.n]) + np.abs(rbias[:s.m, None])
    got = c[:s.m, :s.n]
    if dt.is_float:
        tol = 1e-12 if dt == F64 else 1e-5
        bad = ~(np.abs(got - want) <= tol * (scale + 1e-30))
        assert not bad.any(), (f"{bad.sum()} wrong elements, first at "
                               f"{np.argwhere(bad)[0]}: got {got[bad][0]}, want {want[bad][0]}")
    else:
        np.testing.assert_array_equal(got, want.astype(dt.np))
    # No writes outside C's logical part: row padding and the guard row are untouched.
    np.testing.assert_array_equal(c[:s.m, s.n:], c_before[:s.m, s.n:])
    np.testing.assert_array_equal(c[s.m:], c_before[s.m:])


@pytest.mark.parametrize("n", range(len(CASES)), ids=[c.id for c in CASES])
def test_gemm_matches_numpy(compiled: Compiled, n: int) -> None:
    _run(compiled, n, CASES[n])


def test_cases_cover_every_path() -> None:
    target = host_target()
    plans = [plan_gemm(c.spec, target) for c in CASES]
    assert {p.path for p in plans} == {"zero_k", "kdot", "nvec", "packed"}
    packed = [(c.spec, p) for c, p in zip(CASES, plans) if p.path == "packed"]
    for dtype in (F32, F64):
        for ta, tb in TRANSPOSES:
            mine = [(s, p) for s, p in packed if (s.dtype, s.trans_a, s.trans_b) == (dtype, ta, tb)]
            assert any(s.m % p.mr and s.n % p.nr for s, p in mine), (dtype, ta, tb)
            assert any(s.k > p.kc for s, p in mine), (dtype, ta, tb)  # several KC blocks
            # The wide and the narrow-N kernel (NR one vector, for N up to a vector; with
            # 4-lane float64 (AVX2), N <= 4 with K contiguous takes `kdot` instead).
            lanes = target.lanes(dtype.itemsize)
            narrow = any(s.n <= lanes for s, _ in mine)
            assert narrow or dtype == F64, (dtype, ta, tb)
            assert {p.nr for _, p in mine} == ({lanes, 2 * lanes} if narrow else {2 * lanes})
            assert any(not p.pack_a and s.m % p.mr for s, p in mine)  # A in place + edge
    assert any(s.m > p.mc for s, p in packed) and any(s.n > p.nc for s, p in packed)
    # Whole tiles over several KC blocks, with the epilogue (straight-line stores).
    assert any(s.m % p.mr == 0 and s.n % p.nr == 0 and s.k > p.kc and c.epilogue
               for c, p in zip(CASES, plans) if p.path == "packed" for s in [c.spec])
    # B read in place (few rows, or whole short rows), with and without a partial last
    # panel to pack; with many rows over several MC and KC blocks.
    assert any(not p.pack_b and s.n % p.nr for s, p in packed)
    assert any(not p.pack_b and s.n % p.nr == 0 for s, p in packed)
    # With 32 registers also big GEMMs read B (whole short rows) and A in place; with 16
    # (AVX2) they pack both (`plan_gemm`).
    wide = target.registers == 32
    assert any(not p.pack_b and s.m > p.mc and s.k > p.kc and not s.b_panels
               for s, p in packed) == wide
    # Register blocks of 8, 7 and 6 rows.
    assert {p.mr for _, p in packed} >= {6, 7, 8}
    # A read in place over several column panels (row-major A, one KC block).
    assert any(not p.pack_a and s.n > p.nr and s.m % p.mr for s, p in packed) == wide
    # B in panels: with and without a narrower last panel, over several KC and MC blocks,
    # with both register blocks.
    panels = [(s, p) for s, p in packed if s.b_panels]
    assert any(s.n % p.nr for s, p in panels) and any(s.n % p.nr == 0 for s, p in panels)
    assert any(s.k > p.kc for s, p in panels) and any(s.m > p.mc for s, p in panels)
    assert len({p.nr for _, p in panels}) == 2 and all(not p.pack_b for _, p in panels)
    # A transposed is read in place beside them, with a packed partial row block, over
    # several KC blocks; a row-major A is packed.
    in_place = [(s, p) for s, p in panels if not p.pack_a]
    assert all(s.trans_a for s, _ in in_place) and any(p.pack_a for _, p in panels)
    if wide:
        assert any(s.m % p.mr for s, p in in_place) and any(s.k > p.kc for s, p in in_place)
    else:  # 6-row blocks pack A (`spec._plan_panels`)
        assert not in_place


def test_kernels_are_shared_and_module_has_no_state(compiled: Compiled) -> None:
    """One micro-kernel per (dtype, MR, NR, A's row stride) for the whole module: packed
    panels, B read in place and a transposed A read in place share the row stride 1 one
    (their other strides are runtime arguments). And no global variables (the code is
    re-entrant)."""
    target = host_target()
    shapes = set()
    for case in CASES:
        plan = plan_gemm(case.spec, target)
        if plan.path != "packed":
            continue
        s = case.spec
        if plan.pack_a or s.m % plan.mr:  # packed A panels (or A's partial last one)
            shapes.add((s.dtype, plan.mr, plan.nr, 1))
        if not plan.pack_a:  # the kernel reading A in place, one per A row stride
            shapes.add((s.dtype, plan.mr, plan.nr, s.a_strides[0]))
    kernels = [g for name, g in compiled.module.globals.items() if ".uk." in name]
    assert len(kernels) == len(shapes) < len(CASES) // 2
    assert all(isinstance(g, ir.Function) for g in compiled.module.globals.values())


def test_scratch_bytes() -> None:
    target = host_target()
    assert _spec(3, 500, 40, F32, False, False).scratch_bytes(target) == 0  # direct
    assert _spec(5, 9, 0, F32, False, False).scratch_bytes(target) == 0  # K == 0
    spec = _spec(100, 100, 100, F32, False, False)
    plan = plan_gemm(spec, target)
    need = (plan.mc * plan.kc + plan.kc * plan.nc + plan.mr * plan.nr) * 4
    assert need <= spec.scratch_bytes(target) <= need + 3 * 64
    assert spec.scratch_bytes(target) % 64 == 0


def test_missing_scratch_and_bad_strides_are_rejected() -> None:
    target = host_target()
    module = ir.Module("bad")
    fn = ir.Function(module, ir.FunctionType(VOID, [PTR] * 3), name="f")
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    with pytest.raises(ValueError, match="scratch"):
        emit_gemm(builder, _spec(64, 64, 64, F32, False, False), *fn.args, None, target)
    with pytest.raises(ValueError, match="lda=3"):
        GemmSpec(4, 4, 5, F32, False, False, lda=3, ldb=4, ldc=4)
    with pytest.raises(ValueError, match="bool"):
        GemmSpec(4, 4, 5, DType.bool, False, False, lda=5, ldb=4, ldc=4)
    with pytest.raises(ValueError, match="not transposed"):
        GemmSpec(4, 4, 5, F32, False, True, lda=5, ldb=5, ldc=4, b_panels=32)
    wrong = GemmSpec(40, 64, 5, F32, False, False, 5, 64, 64, b_panels=48)
    with pytest.raises(ValueError, match="register block"):
        plan_gemm(wrong, target)


def test_avx2_target() -> None:
    """The same emitter for a 256-bit target (16 registers: the 6 x 2-vector kernel) runs
    correctly on this machine, packed and direct paths alike."""
    host = host_target()
    if not host.has("avx2") or not host.has("fma"):
        pytest.skip("needs an AVX2+FMA host")
    features = ",".join(f"-{f[1:]}" if f.startswith("+avx512") else f
                        for f in host.features.split(","))
    target = Target(host.triple, "haswell", features, 256)
    cases = [Case(_spec(45, 70, 50, F32, False, False, pad=1), epilogue=True),
             Case(_spec(29, 6, 33, F32, True, True), accumulate=True),
             Case(_spec(37, 41, 300, F64, False, True, pad=1), epilogue=True, accumulate=True),
             Case(_spec(3, 70, 45, F64, True, False)),
             Case(_spec(70, 3, 45, F32, False, True), epilogue=True),
             # 7-row float64 blocks on 4 lanes pack one lane at a time (`lane_mask`).
             Case(_spec(13, 4, 33, F64, False, False), epilogue=True),
             # 49 rows in 5-row blocks (`fitted_rows`), float32 and float64.
             Case(_spec(49, 37, 40, F32, False, False), epilogue=True, accumulate=True),
             Case(_spec(49, 20, 9, F64, True, False), epilogue=True)]
    assert plan_gemm(cases[5].spec, target).mr == 7
    assert [plan_gemm(c.spec, target).mr for c in cases[6:]] == [5, 5]
    module = ir.Module("test_gemm_avx2")
    module.triple = target.triple
    for n, case in enumerate(cases):
        fn = ir.Function(module, ir.FunctionType(VOID, [PTR] * 6), name=f"g{n}")
        a, b, c, scratch, bias, rbias = fn.args
        builder = ir.IRBuilder(fn.append_basic_block("entry"))
        epi = _bias_relu(case.spec.dtype, bias, rbias) if case.epilogue else None
        emit_gemm(builder, case.spec, a, b, c, scratch, target, epi, case.accumulate)
        builder.ret_void()
    from graphc.codegen.gemm.spec import kernel_shape

    assert kernel_shape(F32, target, 50) == (6, 16, 8)  # the 6 x 2-vector block
    plan = plan_gemm(cases[0].spec, target)
    assert (plan.lanes, plan.mr, plan.nr) == (8, 5, 16)  # 45 rows: 9 blocks of 5
    compiled = Compiled(jit_compile(str(module), target=target), module)
    for n, case in enumerate(cases):
        _run(compiled, n, case, target)


def test_fitted_rows_pads_least() -> None:
    """The register block's rows: 8 unless 7 or 6 compute at least 2% fewer padded rows."""
    from graphc.codegen.gemm.spec import fitted_rows

    assert [fitted_rows(m, 8) for m in (1024, 49, 196, 100, 13, 9, 12544)] == [
        8, 7, 7, 8, 7, 6, 8]
    assert fitted_rows(49, 16) == 16  # only the 8- and 6-row blocks are refitted
    # 16 registers: 6 rows, or 5 (49 rows in 50, not 54); never 4.
    assert [fitted_rows(m, 6) for m in (49, 196, 784, 7, 8, 12)] == [5, 6, 6, 5, 5, 6]
