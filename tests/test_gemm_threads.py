"""Compiled matmuls big enough to be split across threads (codegen.matmul.split and
batch_split), on a grid of shapes with primes and block sizes +-1, float32 and float64, at 1
and 2 threads: against numpy, and bit-identical between thread counts."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.codegen.gemm import matmul

# (batch, m, n, k, transpose_a, transpose_b): splits by columns, by rows, by batch, and none
# (odd sizes that do not divide evenly).
SHAPES = [
    ((), 64, 96, 129, False, False),
    ((), 33, 128, 257, False, True),
    ((), 128, 31, 97, True, False),
    ((), 97, 95, 64, True, True),
    ((), 256, 8, 512, False, False),
    ((3,), 33, 65, 127, False, False),
    ((2, 2), 31, 32, 129, True, False),
]


def _build(dtype: str) -> tuple[gc.Graph, list[gc.Node], list[gc.Node], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    arrays, ins, outs = [], [], []
    with gc.Graph("gemm_threads") as g:
        for i, (batch, m, n, k, ta, tb) in enumerate(SHAPES):
            a_shape = (*batch, *((k, m) if ta else (m, k)))
            b_shape = (*batch, *((n, k) if tb else (k, n)))
            a = rng.standard_normal(a_shape).astype(dtype)
            b = rng.standard_normal(b_shape).astype(dtype)
            pa = gc.placeholder(a.shape, dtype, name=f"a{i}")
            pb = gc.placeholder(b.shape, dtype, name=f"b{i}")
            arrays += [a, b]
            ins += [pa, pb]
            # An epilogue too: it sees each block's own rows and columns.
            outs.append(gc.relu(gc.matmul(pa, pb, transpose_a=ta, transpose_b=tb) - 0.5))
    return g, ins, outs, arrays


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_split_gemms_match_numpy_and_each_other(dtype: str) -> None:
    g, ins, outs, arrays = _build(dtype)
    results = []
    for threads in (1, 2):
        opts = gc.CompileOptions(cache_dir=None, threads=threads)
        exe = gc.compile(g, ins, outs, options=opts)
        results.append(exe(*arrays))
        if threads == 2:
            kernels = [k for k in exe.report.plan.program.kernels if k.anchor is not None]
            split = [matmul.split(k, 2) is not None or matmul.batch_split(k, 2) is not None
                     for k in kernels]
            assert sum(split) >= 5, "the grid should exercise the threaded splits"
    rtol = 1e-4 if dtype == "float32" else 1e-12
    for i, (*_, k, ta, tb) in enumerate(SHAPES):
        a, b = arrays[2 * i], arrays[2 * i + 1]
        a2 = np.swapaxes(a, -1, -2) if ta else a
        b2 = np.swapaxes(b, -1, -2) if tb else b
        want = np.maximum(a2 @ b2 - 0.5, 0)
        np.testing.assert_array_equal(results[0][i], results[1][i])
        np.testing.assert_allclose(results[1][i], want, rtol=rtol, atol=rtol * np.sqrt(k))


@pytest.mark.parametrize("threads", [1, 2])
def test_batched_matmul_with_a_2d_b_runs_as_one_gemm(threads: int) -> None:
    """(T, B, k) @ (k, n) is one GEMM of T*B rows; the epilogue still sees each element's
    (t, b, row, col) index: a residual varying over every batch dimension is added right."""
    rng = np.random.default_rng(4)
    av = rng.standard_normal((6, 2, 3, 40)).astype(np.float32)
    rv = rng.standard_normal((6, 2, 3, 72)).astype(np.float32)
    with gc.Graph("merged") as g:
        a = gc.placeholder(av.shape, "float32", name="a")
        r = gc.placeholder(rv.shape, "float32", name="r")
        m = gc.matmul(a, gc.constant(rng.standard_normal((40, 72)).astype(np.float32)))
        y = gc.relu(m + r)
    assert matmul.merged_batch(m)
    got = gc.compile(g, [a, r], [y], options=gc.CompileOptions(threads=threads,
                                                              cache_dir=None))(av, rv)
    np.testing.assert_allclose(got, gc.reference(g, [a, r], [y])(av, rv), rtol=1e-5,
                               atol=1e-5)


# (k, n, dtype, split at 2 threads): few-row GEMMs split by the bytes of B they read (or the
# multiply-adds of an int8 one), not by the multiply-adds that decide for bigger GEMMs.
FEW_ROW_CASES = [
    (256, 256, "float32", True),  # 256 KiB of B: a decode step's output projection
    (256, 1000, "float32", True),  # a vocabulary projection: under PARALLEL_MACS, split
    (400, 120, "float32", False),  # 188 KiB: read from L2 at batch 1, not worth a region
    (256, 768, "int8", True),  # 196 K multiply-adds of int8 (13 per cycle without VNNI)
    (256, 256, "int8", False),
]


@pytest.mark.parametrize("k,n,dtype,splits", FEW_ROW_CASES)
def test_few_row_gemms_split_by_the_bytes_they_read(k: int, n: int, dtype: str,
                                                    splits: bool) -> None:
    rng = np.random.default_rng(k + n)
    w = rng.standard_normal((k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    with gc.Graph("few_rows") as g:
        x = gc.placeholder((1, k), "float32", name="x")
        y = gc.relu(x @ gc.constant(w) + gc.constant(bias))
    if dtype == "int8":
        q = gc.quant.quantize(g)
        g, y, x = q.graph, q.graph[y.name], q.graph[x.name]
    xv = rng.standard_normal((1, k)).astype(np.float32)
    results = []
    for threads in (1, 2):
        exe = gc.compile(g, [x], [y], options=gc.CompileOptions(cache_dir=None,
                                                                threads=threads))
        results.append(exe(xv)[0])
        gemms = [kern for kern in exe.report.plan.program.kernels if kern.kind.name == "MATMUL"]
        assert len(gemms) == 1
        assert (matmul.split(gemms[0], threads) is not None) == (splits and threads == 2)
    np.testing.assert_array_equal(results[0], results[1])
    want = gc.reference(g, [x], [y])(xv)[0]
    np.testing.assert_allclose(results[1], want, rtol=1e-5, atol=1e-4)
