"""Accuracy of compiled float reductions over long axes (issue 13, item 10).

A float sum accumulated in one (vector) accumulator has an error that grows like n·eps;
`graphc/codegen/fused/reduction.py` sums blocks of at most S = 32 terms per accumulator and
combines the block sums pairwise, so the error grows like (S + log2 n)·eps. Its module
docstring derives the bound; here:

- float32 data x = 1 + 0.01·U[0, 1) (all positive, so sum(|x|) = |sum(x)|, and mean/std ≈
  350, so var's sum of squares follows a mean computed in float32) and 10**7 elements,
  reduced whole and along each axis of (10, 10**6) and (10**6, 10): every kernel structure
  (innermost axis reduced: flat and by rows; innermost axis kept: narrow rows in registers
  and wide rows swept). Worst-case bound: at most 52 additions per term, 52·2**-24 ≈ 3.1e-6
  (plus one rounding for mean's 1/n). With rounding errors of random sign (the usual model,
  and what the data give: 2e-8 to 2e-7 measured) the error is ~ sqrt(52)·2**-24 ≈ 4e-7 at
  most, so the tests ask for ≤ 1e-6; the code before the fix was off by 7e-5 to 3 (var)
  on the long cases.
- var: the centered values x - mean are exact (Sterbenz), so var's relative error is that
  of a sum of squares plus (mean error / std)**2 (≈ 1e-9 here): the same 1e-6.
- float64 (≤ 1e-14, bound about 50·2**-53 ≈ 6e-15), softmax / log_softmax / logsumexp over
  rows of 10**6, identical results at 1 and 2 or 3 threads (bit for bit), odd sizes
  (1, 7, 31, 1000003: vector tails, partial blocks), empty reductions, and max/min (exact)
  and integer sums (exact) on long axes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import graphc as gc

N = 10**7
LAYOUTS: tuple[tuple[int, ...], ...] = ((N,), (10, N // 10), (N // 10, 10))
REDUCERS = ("sum", "mean", "var")
FLOAT32_TOL = 1e-6
FLOAT64_TOL = 1e-14


def _options(threads: int = 1) -> gc.CompileOptions:
    return gc.CompileOptions(cache_dir=None, threads=threads)  # always run LLVM


def _cases(shape: tuple[int, ...]) -> list[int | None]:
    return [None] if len(shape) == 1 else [None, 0, 1]


def _compile_reductions(x: np.ndarray, layouts: tuple[tuple[int, ...], ...],
                        reducers: tuple[str, ...], threads: int = 1
                        ) -> tuple[list[tuple[tuple[int, ...], int | None, str]], list]:
    """One executable computing every reducer along every axis of every layout of x."""
    labels = []
    with gc.Graph("acc") as g:
        p = gc.placeholder(x.shape, x.dtype.name, name="x")
        outs = []
        for shape in layouts:
            view = gc.reshape(p, shape)
            for axis in _cases(shape):
                for name in reducers:
                    outs.append(getattr(gc, name)(view, axis=axis))
                    labels.append((shape, axis, name))
    exe = gc.compile(g, [p], outs, options=_options(threads))
    return labels, list(exe(x))


def _reference(x: np.ndarray, shape: tuple[int, ...], axis: int | None, name: str
               ) -> np.ndarray:
    """name(x) along `axis`, nearly exact: in float64 for float32 data; in long double for
    float64 data (80-bit on x86), with the reduced axis moved last so numpy sums it
    pairwise (numpy adds the rows of a reduction over a leading axis one by one: 1e-14
    relative at 10**6 float64 rows, more than the compiled code's error)."""
    wide = np.float64 if x.dtype == np.float32 else np.longdouble
    v = x.astype(wide).reshape(shape)
    if axis is not None:
        v = np.ascontiguousarray(np.moveaxis(v, axis, -1))
        axis = -1
    return getattr(np, name)(v, axis=axis)


def _relative_error(actual: np.ndarray, x: np.ndarray, shape: tuple[int, ...],
                    axis: int | None, name: str) -> float:
    expected = _reference(x, shape, axis, name)
    assert np.shape(actual) == np.shape(expected)
    return float(np.max(np.abs(actual - expected) / np.abs(expected)))


@pytest.fixture(scope="module")
def long_float32() -> tuple[np.ndarray, list, list]:
    x = (1 + 0.01 * np.random.default_rng(13).random(N)).astype(np.float32)
    labels, results = _compile_reductions(x, LAYOUTS, REDUCERS)
    return x, labels, results


@pytest.mark.parametrize("index", range(sum(len(_cases(s)) for s in LAYOUTS) * 3))
def test_float32_long_reductions_within_bound(long_float32, index: int) -> None:
    x, labels, results = long_float32
    shape, axis, name = labels[index]
    err = _relative_error(results[index], x, shape, axis, name)
    assert err <= FLOAT32_TOL, f"{name} over axis {axis} of {shape}: relative error {err:.2e}"


def test_float64_long_reductions_within_bound() -> None:
    n = 2 * 10**6
    x = 1 + 0.01 * np.random.default_rng(14).random(n)
    layouts = ((n,), (4, n // 4), (n // 4, 4))
    labels, results = _compile_reductions(x, layouts, REDUCERS)
    for (shape, axis, name), actual in zip(labels, results):
        err = _relative_error(actual, x, shape, axis, name)
        assert err <= FLOAT64_TOL, f"{name} over axis {axis} of {shape}: {err:.2e}"


def _row_ops(x: gc.Node) -> list[gc.Node]:
    return [gc.softmax(x, axis=1), gc.log_softmax(x, axis=1), gc.logsumexp(x, axis=1),
            gc.softmax(gc.transpose(x), axis=0)]


def test_softmax_rows_of_a_million() -> None:
    """Row sums of exp: the same blocked sum (rows.py), vectorized and strided."""
    x = (0.01 * np.random.default_rng(15).random((2, 10**6))).astype(np.float32)
    with gc.Graph("rows") as g:
        p = gc.placeholder(x.shape, "float32", name="x")
        outs = _row_ops(p)
    soft, log_soft, lse, soft_t = gc.compile(g, [p], outs, options=_options())(x)
    x64 = x.astype(np.float64)
    shifted = x64 - x64.max(axis=1, keepdims=True)
    log_total = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    expected = np.exp(shifted - log_total)
    # exp is accurate to a few ulp: 1e-6 relative is the sum's share plus exp's.
    assert np.max(np.abs(soft - expected) / expected) <= 1e-6
    assert np.max(np.abs(soft_t - expected.T) / expected.T) <= 1e-6
    assert np.max(np.abs(log_soft - (shifted - log_total))) <= 1e-6 * np.abs(log_total).max()
    expected_lse = (x64.max(axis=1, keepdims=True) + log_total)[:, 0]
    assert np.max(np.abs(lse - expected_lse) / expected_lse) <= 1e-6


@pytest.mark.parametrize("threads", [2, 3])
def test_identical_results_for_any_thread_count(threads: int) -> None:
    """Every output is summed in the same order whatever the split (columns split into
    chunks, kept rows split, narrow rows in registers)."""
    rng = np.random.default_rng(16)
    x = (1 + 0.01 * rng.random(4096 * 1000)).astype(np.float32)
    layouts = ((1000, 4096), (4096, 1000), (64000, 64), (64, 64000), (64, 6400, 10))
    mixed = (32, 1000, 4, 4, 8)
    results = {}
    for t in (1, threads):
        labels, results[t] = _compile_reductions(x, layouts, REDUCERS, threads=t)
        with gc.Graph("mixed") as g:
            p = gc.placeholder(x.shape, "float32", name="x")
            v = gc.reshape(p, mixed)
            # Reduced dims between kept ones, on both paths.
            outs = [gc.sum(v, axis=(0, 2)), gc.var(v, axis=(1, 3)), gc.sum(v, axis=(1, 4)),
                    gc.mean(v, axis=(0, 1, 3, 4))]
        results[t] += list(gc.compile(g, [p], outs, options=_options(t))(x))
    for a, b in zip(results[1], results[threads], strict=True):
        np.testing.assert_array_equal(a, b)
    for (shape, axis, name), actual in zip(labels, results[1]):
        assert _relative_error(actual, x, shape, axis, name) <= FLOAT32_TOL
    v64 = x.astype(np.float64).reshape(mixed)
    expected = [v64.sum(axis=(0, 2)), v64.var(axis=(1, 3)), v64.sum(axis=(1, 4)),
                v64.mean(axis=(0, 1, 3, 4))]
    for actual, e in zip(results[1][len(labels):], expected, strict=True):
        assert np.max(np.abs(actual - e) / np.abs(e)) <= FLOAT32_TOL


@pytest.mark.parametrize("threads", [2, 3])
def test_var_rounds_alike_at_any_thread_count(threads: int) -> None:
    """var over axis 0 of (3000, 1000) differed in 3-5 of its last (scalar) columns between
    1 and 2 threads while LLVM could contract `x - sum·(1/3000)` into an FMA in one kernel
    (a thread's task) and not in the other (the single-threaded loop, unrolled over the
    tail columns, hoists the product): reductions now fuse into FMAs on the code as emitted
    (`contract.contract_explicitly`), not where LLVM happens to find both halves."""
    x = (1 + 0.01 * np.random.default_rng(0).random((3000, 1000))).astype(np.float32)
    results = {}
    for t in (1, threads):
        with gc.Graph("var") as g:
            p = gc.placeholder(x.shape, "float32", name="x")
            outs = [gc.var(p, axis=0), gc.std(p, axis=0)]
        results[t] = gc.compile(g, [p], outs, options=_options(t))(x)
    for a, b in zip(results[1], results[threads], strict=True):
        np.testing.assert_array_equal(a, b)


ODD = (1, 7, 31, 1000003)


def _odd_layouts(n: int) -> list[tuple[tuple[int, ...], int | None]]:
    cases: list[tuple[tuple[int, ...], int | None]] = [((n,), None), ((3, n), 1), ((n, 3), 0),
                                                       ((3, n), None), ((n, 3), 1), ((n, 1), 0)]
    if n < 10**6:
        cases += [((n, 33), 0), ((2, n, 17), 1), ((n, 2, 17), (0, 2))]
    return cases


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_small_and_odd_sizes(dtype: str) -> None:
    rng = np.random.default_rng(17)
    checks: list[tuple[np.ndarray, tuple[int, ...], int | tuple[int, ...] | None, str]] = []
    arrays = []
    with gc.Graph("odd") as g:
        for n in ODD:
            for shape, axis in _odd_layouts(n):
                a = rng.standard_normal(shape).astype(dtype)
                p = gc.placeholder(shape, dtype, name=f"x{len(arrays)}")
                arrays.append((p, a))
                for name in ("sum", "mean", "max", "min"):
                    checks.append((a, shape, axis, name))
        outs = [getattr(gc, name)(arrays[i // 4][0], axis=axis)
                for i, (_, _, axis, name) in enumerate(checks)]
    exe = gc.compile(g, [p for p, _ in arrays], outs, options=_options())
    results = exe(*[a for _, a in arrays])
    eps = float(np.finfo(dtype).eps)
    for (a, shape, axis, name), actual in zip(checks, results, strict=True):
        a64 = a.astype(np.float64)
        expected = getattr(np, name)(a64, axis=axis)
        if name in ("max", "min"):
            np.testing.assert_array_equal(actual, expected.astype(dtype))
            continue
        # Normal data cancel: bound the error by the sum of magnitudes (the bound's form).
        scale = np.abs(a64).sum(axis=axis) / (a.size / np.size(expected) if name == "mean"
                                              else 1)
        err = np.abs(actual - expected)
        assert np.all(err <= 64 * eps * scale + 1e-300), (shape, axis, name)


def _run(build: Callable[[gc.Node], list[gc.Node]], a: np.ndarray) -> list[np.ndarray]:
    with gc.Graph("t") as g:
        p = gc.placeholder(a.shape, a.dtype.name, name="x")
        outs = build(p)
    return list(gc.compile(g, [p], outs, options=_options())(a))


def test_empty_reductions() -> None:
    zero_rows = np.zeros((0, 5), np.float32)
    s0, s1, m1, sall = _run(lambda p: [gc.sum(p, axis=0), gc.sum(p, axis=1),
                                       gc.max(p, axis=1), gc.sum(p)], zero_rows)
    np.testing.assert_array_equal(s0, np.zeros(5, np.float32))
    assert s1.shape == (0,) and m1.shape == (0,) and sall == 0
    (wide,) = _run(lambda p: [gc.sum(p, axis=0)], np.zeros((40, 0), np.float32))
    assert wide.shape == (0,)
    zero_cols = np.zeros((5, 0), np.float64)
    s1, mean1, var1 = _run(lambda p: [gc.sum(p, axis=1), gc.mean(p, axis=1),
                                      gc.var(p, axis=1)], zero_cols)
    np.testing.assert_array_equal(s1, np.zeros(5))
    assert np.isnan(mean1).all() and np.isnan(var1).all()


@pytest.mark.parametrize("shape,axis", [((N,), None), ((10, N // 10), 1), ((N // 10, 10), 0)])
def test_exact_reductions_on_long_axes(shape: tuple[int, ...], axis: int | None) -> None:
    """max/min are exact in any order; integer sums are exact (wrapping) in any order."""
    rng = np.random.default_rng(18)
    x = rng.standard_normal(shape).astype(np.float32)
    k = rng.integers(-1000, 1000, shape).astype(np.int32)
    hi, lo = _run(lambda p: [gc.max(p, axis=axis), gc.min(p, axis=axis)], x)
    np.testing.assert_array_equal(hi, x.max(axis=axis))
    np.testing.assert_array_equal(lo, x.min(axis=axis))
    (total,) = _run(lambda p: [gc.sum(p, axis=axis)], k)
    np.testing.assert_array_equal(total, k.sum(axis=axis, dtype=np.int32))
