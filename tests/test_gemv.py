"""Matrix-vector GEMMs (M <= 4 rows, or few columns): the unpacked paths of gemm/unpacked.py.

tests/test_gemm.py covers every GEMM path on a grid of sizes; this file fills its gaps on
the direct paths, whose code depends on the exact column count (vectors held in registers,
partial sums in a stack buffer, column chunks, masked partial vectors, independent
accumulator sets for short rows): M = 1..4 x N in `NS` x K in `KS`, float32 and float64,
every transpose pair, with the bias + relu epilogue (and accumulation on some), through the
same harness as test_gemm (operands poisoned with NaN around them, C's padding checked
unchanged). One LLVM module per target holds every case. Then the same shapes through
`gc.compile`, where the epilogue is a fused graph (bias, relu) rather than the test's.
"""

from __future__ import annotations

import llvmlite.ir as ir
import numpy as np
import pytest

import graphc as gc
from graphc.codegen.gemm.emit import emit_gemm, plan_gemm
from graphc.codegen.gemm.unpacked import emit_nvec, plan_nvec
from graphc.codegen.llvm_types import PTR, VOID
from graphc.codegen.target import Target, host_target
from graphc.ir import DType
from graphc.runtime.jit import jit_compile
from tests.test_gemm import TRANSPOSES, Case, Compiled, _bias_relu, _run, _spec

F32, F64, I32, I64 = DType.float32, DType.float64, DType.int32, DType.int64
NS = [1, 3, 15, 16, 17, 31, 32, 33, 255, 256, 257, 512, 1000]
KS = [1, 7, 784]


def _grid() -> list[Case]:
    cases: list[Case] = []
    # Every (M, N) in both float dtypes; K, the transpose pair, padding and accumulation
    # rotate so that each N meets every K and every transpose pair.
    idx = 0
    for dtype in (F32, F64):
        for m in range(1, 5):
            for j, n in enumerate(NS):
                k = KS[(m + j + (dtype == F64)) % 3]
                ta, tb = TRANSPOSES[idx % 4]
                cases.append(Case(_spec(m, n, k, dtype, ta, tb, pad=idx % 2), epilogue=True,
                                  accumulate=idx % 5 == 2))
                idx += 1
    # Partial sums over several column chunks (the rolled chunk loop and a remainder).
    cases.append(Case(_spec(4, 1100, 9, F64, False, False, pad=1), epilogue=True))
    cases.append(Case(_spec(1, 9000, 5, F32, True, False), epilogue=True, accumulate=True))
    # The MLP's layers at batch 1, and K not a multiple of the accumulator sets.
    for k, n in ((784, 512), (512, 512), (512, 10), (13, 40)):
        cases.append(Case(_spec(1, n, k, F32, False, False), epilogue=True))
    # Integers on both modes and on the dot products.
    for m, n, k, tb in ((1, 100, 9, False), (3, 257, 5, False), (2, 33, 17, True),
                        (4, 3, 40, False)):
        cases.append(Case(_spec(m, n, k, I32, False, tb), epilogue=True))
    cases.append(Case(_spec(2, 300, 6, I64, True, False), accumulate=True))
    return cases


CASES = _grid()

# A 256-bit target (16 registers): the other register budgets of both modes and of kdot.
AVX2_CASES = [Case(_spec(1, 120, 33, F32, False, False), epilogue=True),  # regs, 15 vectors
              Case(_spec(1, 257, 20, F32, True, False), epilogue=True),  # rows
              Case(_spec(2, 15, 9, F64, False, False, pad=1), epilogue=True, accumulate=True),
              Case(_spec(1, 40, 70, F32, False, True), epilogue=True),  # kdot, 4 columns
              Case(_spec(3, 10, 19, F64, True, True), accumulate=True)]


def _compile(cases: list[Case], target: Target, direct: bool = False) -> Compiled:
    """One function per case; `direct` calls emit_nvec itself instead of emit_gemm (whose
    plan sends M > 4 to the packed path)."""
    module = ir.Module("test_gemv")
    module.triple = target.triple
    for n, case in enumerate(cases):
        fn = ir.Function(module, ir.FunctionType(VOID, [PTR] * 6), name=f"g{n}")
        for arg in fn.args:
            arg.add_attribute("noalias")
        a, b, c, scratch, bias, rbias = fn.args
        builder = ir.IRBuilder(fn.append_basic_block("entry"))
        epi = _bias_relu(case.spec.dtype, bias, rbias) if case.epilogue else None
        if direct:
            lanes = target.lanes(case.spec.dtype.itemsize)
            emit_nvec(builder, case.spec, lanes, a, b, c, epi, case.accumulate)
        else:
            emit_gemm(builder, case.spec, a, b, c, scratch, target, epi, case.accumulate)
        builder.ret_void()
    return Compiled(jit_compile(str(module), target=target), module)


@pytest.fixture(scope="module")
def compiled() -> Compiled:
    return _compile(CASES, host_target())


@pytest.mark.parametrize("n", range(len(CASES)), ids=[c.id for c in CASES])
def test_gemv_matches_numpy(compiled: Compiled, n: int) -> None:
    _run(compiled, n, CASES[n])


def _avx2_target() -> Target:
    host = host_target()
    if not host.has("avx2") or not host.has("fma"):
        pytest.skip("needs an AVX2+FMA host")
    features = ",".join(f"-{f[1:]}" if f.startswith("+avx512") else f
                        for f in host.features.split(","))
    return Target(host.triple, "haswell", features, 256)


def test_gemv_avx2_target() -> None:
    target = _avx2_target()
    modes = [plan_nvec(c.spec, 32 // c.spec.dtype.itemsize).mode for c in AVX2_CASES[:3]]
    assert modes == ["regs", "rows", "regs"]
    compiled = _compile(AVX2_CASES, target)
    for n, case in enumerate(AVX2_CASES):
        _run(compiled, n, case, target)


# M = 5..8 through emit_nvec directly: not planned there today, but both modes must stay
# correct for more rows (fewer rows of B per step, broadcasts of A for every row).
MORE_ROWS = [Case(_spec(5, 33, 7, F32, False, False, pad=1), epilogue=True),
             Case(_spec(6, 257, 13, F64, True, False), epilogue=True, accumulate=True),
             Case(_spec(8, 10, 512, F32, False, False), epilogue=True),
             Case(_spec(7, 100, 9, I32, False, False), accumulate=True),
             Case(_spec(8, 17, 3, F64, False, False, pad=1), epilogue=True)]


def test_more_rows_direct() -> None:
    target = host_target()
    compiled = _compile(MORE_ROWS, target, direct=True)
    for n, case in enumerate(MORE_ROWS):
        _run(compiled, n, case, target)


def test_grid_covers_every_mode() -> None:
    """The grid reaches both nvec modes (with one and several column chunks, several
    accumulator sets) and the dot products, in both float dtypes, on a 512-bit target."""
    seen = set()
    for case in CASES:
        s = case.spec
        lanes = 64 // s.dtype.itemsize
        plan = plan_gemm(s, host_target())
        if plan.path == "nvec":
            p = plan_nvec(s, lanes)
            chunks = -(-s.n // (p.chunk * lanes)) if p.mode == "rows" else 1
            seen.add((s.dtype, p.mode, chunks > 1, p.sets > 1))
        else:
            seen.add((s.dtype, plan.path, s.m > 1, False))
    for dtype in (F32, F64):
        assert {(dtype, "regs", False, True), (dtype, "regs", False, False),
                (dtype, "rows", False, False), (dtype, "kdot", True, False),
                (dtype, "kdot", False, False)} <= seen, dtype
    assert (F64, "rows", True, False) in seen and (F32, "rows", True, False) in seen


def test_plan_nvec_modes() -> None:
    """The batch-1 MLP layers keep every accumulator in registers (B streamed once, front to
    back); wider rows or more rows of A keep partial sums in the stack buffer."""
    spec = _spec(1, 512, 784, F32, False, False)
    assert plan_nvec(spec, 16).mode == "regs" and plan_nvec(spec, 16).sets == 1
    assert plan_nvec(_spec(1, 10, 512, F32, False, False), 16).sets == 8
    assert plan_nvec(_spec(1, 513, 784, F32, False, False), 16).mode == "rows"
    assert plan_nvec(_spec(2, 512, 784, F32, False, False), 16).mode == "rows"
    assert plan_nvec(_spec(4, 64, 784, F32, False, False), 16).mode == "regs"
    assert plan_nvec(_spec(1, 256, 784, F64, False, False), 8).mode == "regs"
    assert plan_nvec(_spec(1, 512, 784, F32, False, False), 8).mode == "rows"  # AVX2
    # Partial sums of one chunk stay within 16 KiB (L1).
    p = plan_nvec(_spec(4, 5000, 7, F64, False, False), 8)
    assert p.mode == "rows" and p.chunk * 4 * 64 <= 16 * 1024


GRAPH_SHAPES = [(1, 784, 512, False, False), (1, 512, 10, False, False),
                (2, 512, 33, False, False), (3, 7, 257, True, False),
                (4, 31, 1000, False, False), (1, 512, 784, False, True),
                (4, 33, 17, True, True), (2, 784, 3, False, True)]


def test_compiled_layers_match_numpy() -> None:
    """relu(op(x) @ op(W) + b) as graphs, all in one compiled signature, float32 and float64:
    the matmul kernels with their fused bias + relu epilogue."""
    rng = np.random.default_rng(7)
    feeds, want, outs, inputs = [], [], [], []
    with gc.Graph("gemv") as g:
        for i, (m, k, n, ta, tb) in enumerate(GRAPH_SHAPES):
            dtype = gc.float64 if i % 2 else gc.float32
            npd = np.float64 if i % 2 else np.float32
            xv = rng.standard_normal((k, m) if ta else (m, k)).astype(npd)
            wv = rng.standard_normal((n, k) if tb else (k, n)).astype(npd)
            bv = rng.standard_normal(n).astype(npd)
            x = gc.placeholder(xv.shape, dtype, name=f"x{i}")
            y = gc.matmul(x, gc.variable(wv, name=f"w{i}"), transpose_a=ta, transpose_b=tb)
            outs.append(gc.relu(y + gc.variable(bv, name=f"b{i}")))
            inputs.append(x)
            feeds.append(xv)
            lx = (xv.T if ta else xv).astype(np.float64)
            lw = (wv.T if tb else wv).astype(np.float64)
            want.append((np.maximum(lx @ lw + bv, 0), np.abs(lx) @ np.abs(lw) + np.abs(bv)))
    f = gc.compile(g, inputs, outs, options=gc.CompileOptions(threads=1))
    got = f(*feeds)
    for i, (g_i, (w_i, scale)) in enumerate(zip(got, want, strict=True)):
        assert g_i.shape == w_i.shape
        tol = 1e-12 if i % 2 else 1e-5
        assert (np.abs(g_i - w_i) <= tol * scale).all(), GRAPH_SHAPES[i]
