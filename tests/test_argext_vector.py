"""argmax/argmin over contiguous rows long enough for the two-pass vector scan: the first
extreme index, as numpy gives it, with ties, NaNs (the first NaN wins), signed zeros,
infinities and row tails that do not fill a vector."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc


def _rows(dtype: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype.startswith("int"):
        return rng.integers(-3, 4, (6, n)).astype(dtype)  # many ties
    x = rng.integers(-3, 4, (6, n)).astype(dtype)
    x[1, rng.integers(0, n, 2)] = np.nan
    x[2, -1] = np.nan  # a NaN in the tail
    x[3] = 0.0
    x[3, n // 2] = -0.0
    x[4, rng.integers(0, n)] = np.inf
    x[5, rng.integers(0, n)] = -np.inf
    return x


@pytest.mark.parametrize("n", [32, 33, 47, 1000])
@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64"])
@pytest.mark.parametrize("op", ["argmax", "argmin"])
def test_matches_numpy(op: str, dtype: str, n: int) -> None:
    x = _rows(dtype, n, seed=n)
    with gc.Graph("a") as g:
        p = gc.placeholder(x.shape, dtype)
        out = getattr(gc, op)(p, axis=1)
    got = gc.compile(g, [p], out)(x)
    np.testing.assert_array_equal(got, getattr(np, op)(x, axis=1))
