"""float32 Phi(x) = (1 + erf(x / sqrt 2)) / 2, the exact GELU's factor (`vecmath.normal_cdf`),
against math.erfc in float64.

Without AVX-512 (the `portable` variant, what AVX2 hosts run) Phi is one path for every x:
0.5 erfc(|x| / sqrt 2) = exp(-x^2 / 2) P(1 / (1 + |x| / 4)), then 1 - that for x >= 0. It is
accurate relative to Phi everywhere, also far into the negative tail, where 1 + erf cancels
(the erf form loses every digit below x = -5.5). With AVX-512 Phi is 1 + erf on the table erf
(`tests/test_vecmath_erf.py`), relatively accurate only down to about x = -3.

Bounds (measured maxima, rounded up): portable 5.6e-7 of Phi relative for every x with a
normal Phi (x >= -13; the maximum is near x = 0, where the rounding of 1 / (1 + |x| / 4)
moves P by three times its relative size: about 9 ulp, against the erf form's 1 there);
native with AVX-512 (the erf form; an estimate, not measured on a Zen 3 host: the erf's
ulp plus the rounding of 1 + erf) 2e-7 absolute. Exact: Phi(+inf) = 1, Phi(-inf) = 0,
Phi(+-0) = 1/2, NaN for NaN, 0 <= Phi <= 1, every lane count agrees bit for bit.
"""

from __future__ import annotations

import math

import llvmlite.ir as ir
import numpy as np
import pytest

from graphc.codegen.vecmath import functions as vecmath
from graphc.codegen.vecmath.emitter import use_avx512
from graphc.runtime.jit import jit_compile
from tests.test_vecmath import F32, _kernel, variant_mode
from tests.test_vecmath_erf import run  # kernels named k_<variant>_<lanes>, as here

VARIANTS = ["native", "portable"]
LANES = [1, 8, 16]
REL_BOUND = 5.6e-7
ABS_BOUND = 2e-7

_erfc = np.frompyfunc(math.erfc, 1, 1)


def _one_path(variant: str) -> bool:
    return variant == "portable" or not use_avx512()


@pytest.fixture(scope="module")
def jit() -> object:
    module = ir.Module("vecmath_normal_cdf")
    for variant in VARIANTS:
        with variant_mode(variant):
            for lanes in LANES:
                _kernel(module, f"k_{variant}_{lanes}", vecmath.normal_cdf, F32, lanes)
    return jit_compile(str(module))


def _inputs() -> np.ndarray:
    rng = np.random.default_rng(7)
    x = np.concatenate([
        rng.uniform(-14.0, 14.0, 1_000_000),
        rng.uniform(-1.0, 1.0, 200_000),
        10.0 ** rng.uniform(-45, 38, 100_000),
        -(10.0 ** rng.uniform(-45, 38, 100_000)),
        np.array([12.999999, 13.0, 13.000001, -12.999999, -13.0, -13.000001, 1e-45, -1e-45]),
    ]).astype(np.float32)
    return x


def _want(x: np.ndarray) -> np.ndarray:
    return 0.5 * _erfc(-x.astype(np.float64) / math.sqrt(2.0)).astype(np.float64)


@pytest.mark.parametrize("variant", VARIANTS)
def test_float32_normal_cdf_accuracy(jit: object, variant: str) -> None:
    x = _inputs()
    got = run(jit, variant, 8, x).astype(np.float64)
    want = _want(x)
    assert np.all((got >= 0) & (got <= 1))
    err = np.abs(got - want)
    if _one_path(variant):
        normal = want >= np.finfo(np.float32).tiny
        rel = err[normal] / want[normal]
        assert rel.max() <= REL_BOUND, (rel.max(), x[normal][rel.argmax()])
        # Below the float32 range Phi is 0 or a subnormal: absolute.
        assert err[~normal].max() <= np.finfo(np.float32).tiny
    else:
        assert err.max() <= ABS_BOUND, (err.max(), x[err.argmax()])


@pytest.mark.parametrize("variant", VARIANTS)
def test_float32_normal_cdf_special_values_and_lanes(jit: object, variant: str) -> None:
    special = np.array([np.inf, -np.inf, 0.0, -0.0, np.nan, 30.0, -30.0, 3e38, -3e38],
                       dtype=np.float32)
    got = run(jit, variant, 1, special)
    np.testing.assert_array_equal(got[:4], [1.0, 0.0, 0.5, 0.5])
    assert np.isnan(got[4])
    np.testing.assert_array_equal(got[5:], [1.0, 0.0, 1.0, 0.0])
    x = _inputs()[:50_000]
    first = run(jit, variant, LANES[0], x)
    for lanes in LANES[1:]:
        np.testing.assert_array_equal(run(jit, variant, lanes, x).view(np.int32),
                                      first.view(np.int32))
