"""The bf16 GEMV (`codegen/gemm/gemv_bf16.py`): matmuls of bf16 operands with at most four
rows of A read B in place (row-major, or stored (N, K) for transpose_b) instead of packing
it, natively (`vdpbf16ps`) and on the fallback, at 1 and 2 threads."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc import pipeline
from graphc.codegen.target import host_target
from graphc.options import CompileOptions

TARGETS = [pytest.param((), id="native"), pytest.param(("avx512bf16",), id="fallback")]


def _graph(m: int, k: int, n: int, ta: bool, tb: bool):
    with gc.Graph("gemv") as g:
        a = gc.placeholder((k, m) if ta else (m, k), gc.bfloat16, name="a")
        b = gc.placeholder((n, k) if tb else (k, n), gc.bfloat16, name="b")
        bias = gc.placeholder((n,), gc.float32, name="bias")
        y = gc.matmul(a, b, transpose_a=ta, transpose_b=tb)
        z = gc.cast(gc.relu(y + bias), gc.bfloat16)
    return g, [a, b, bias], [y, z]


@pytest.mark.parametrize("disabled", TARGETS)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("m,k,n,ta,tb", [
    (1, 7, 3, False, False), (1, 256, 1024, False, False), (2, 301, 130, False, False),
    (3, 33, 70, True, False), (4, 64, 1000, False, False), (1, 1, 17, False, False),
    (1, 7, 3, False, True), (1, 256, 1000, False, True), (2, 65, 9, True, True),
    (3, 100, 13, False, True), (4, 301, 130, True, True), (1, 1, 17, False, True)])
def test_bf16_gemv_within_the_bf16_bound_of_f64(m, k, n, ta, tb, threads, disabled) -> None:
    """|C - A@B| <= K * 2^-24 * (|A|@|B|) against the f64 product of the bf16 operands
    (products of bf16 values are exact in float32; only the float32 sums round), and the
    fused epilogue (bias, relu, rounding to bf16) rounds the same float32 values as the
    reference: odd K (the last row paired with zeros), partial column vectors, the tails
    of dot-product blocks."""
    if not host_target().has("avx512bf16"):
        pytest.skip("needs a host with avx512bf16")
    g, ins, outs = _graph(m, k, n, ta, tb)
    rng = np.random.default_rng(m * 1000 + k + n)
    av = gc.to_bfloat16(rng.standard_normal(ins[0].shape))
    bv = gc.to_bfloat16(rng.standard_normal(ins[1].shape))
    biasv = rng.standard_normal(n).astype(np.float32)
    opts = CompileOptions(threads=threads, disable_features=disabled)
    y, z = gc.compile(g, inputs=ins, outputs=outs, options=opts)(av, bv, biasv)
    # z alone: bias, relu and the rounding run as the GEMV's epilogue (whole vectors).
    fused = gc.compile(g, inputs=ins, outputs=outs[1], options=opts)(av, bv, biasv)
    assert np.array_equal(fused, z)
    a64 = gc.from_bfloat16(av).astype(np.float64)
    b64 = gc.from_bfloat16(bv).astype(np.float64)
    a64, b64 = (a64.T if ta else a64), (b64.T if tb else b64)
    exact = a64 @ b64
    bound = k * 2.0**-24 * (np.abs(a64) @ np.abs(b64)) + 1e-30
    assert y.dtype == np.float32 and np.all(np.abs(y - exact) <= bound)
    assert np.array_equal(z, gc.to_bfloat16(np.maximum(y + biasv, 0)))


@pytest.mark.parametrize("m,tb,gemv", [(1, False, True), (4, True, True), (5, False, False)])
def test_small_m_reads_b_in_place_without_packing(m, tb, gemv) -> None:
    """Up to four rows of A the kernel is the GEMV (its loops, no packing of B); from five
    rows on, the packed GEMM."""
    g, ins, outs = _graph(m, 64, 96, False, tb)
    sig = g.add_signature("s", ins, outs[:1])
    text = pipeline.lower(g, sig, CompileOptions(threads=1), "llvm").module.ir_text
    assert (("gd.k" if tb else "gv.k") in text) == gemv
    assert ("pk.p" in text) != gemv
