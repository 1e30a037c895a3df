"""Exhaustive float32 accuracy of vecmath's tanh and sigmoid: all 2^32 inputs.

Opt-in (a few minutes per function and variant): GRAPHC_VECMATH_EXHAUSTIVE=1 python -m
pytest tests/test_vecmath_exhaustive.py -s. Prints the maxima the docstring of
graphc/codegen/vecmath.py quotes; asserts test_vecmath's bounds and exact special values
(NaN, +-inf, signed zeros) on every input. The default test run covers the same functions
on a strided sample of all bit patterns (test_vecmath.py).
"""

from __future__ import annotations

import os

import llvmlite.ir as ir
import numpy as np
import pytest

from graphc.codegen.vecmath import functions as vecmath
from graphc.runtime.jit import jit_compile
from tests.test_vecmath import F32, KERNEL, REFERENCE, RTOL32, VARIANTS, _kernel, variant_mode

pytestmark = pytest.mark.skipif(os.environ.get("GRAPHC_VECMATH_EXHAUSTIVE") != "1",
                                reason="set GRAPHC_VECMATH_EXHAUSTIVE=1 (takes minutes)")

NAMES = ["tanh", "sigmoid"]
CHUNK = 1 << 24


@pytest.fixture(scope="module")
def jit() -> object:
    module = ir.Module("vecmath_exhaustive")
    for variant in VARIANTS:
        with variant_mode(variant):
            for name in NAMES:
                _kernel(module, f"k_{name}_{variant}", vecmath.FUNCTIONS[name], F32, 16)
    return jit_compile(str(module))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", NAMES)
def test_all_float32_inputs(jit: object, name: str, variant: str) -> None:
    fn = KERNEL(jit.address(f"k_{name}_{variant}"))
    tiny = float(np.finfo(np.float32).tiny)
    out = np.empty(CHUNK, np.float32)
    worst_rel, worst_ulp, worst_x = 0.0, 0.0, 0.0
    for start in range(0, 1 << 32, CHUNK):
        x = np.arange(start, start + CHUNK, dtype=np.uint64).astype(np.uint32).view(np.float32)
        fn(x.ctypes.data, out.ctypes.data, CHUNK)
        with np.errstate(all="ignore"):
            ref = REFERENCE[name](x.astype(np.float64))
            ref32 = ref.astype(np.float32)
        exact = ~np.isfinite(ref32)
        same = (out == ref32) | (np.isnan(out) & np.isnan(ref32))
        assert (same | ~exact).all(), f"{name} {variant}: special values differ"
        zero = x == 0
        assert (np.signbit(out[zero]) == np.signbit(ref32[zero])).all()
        fin = ~exact
        y, r = out[fin].astype(np.float64), ref[fin]
        err = np.abs(y - r)
        rel = err / np.maximum(np.abs(r), tiny)
        ulp = err / np.spacing(np.abs(r).astype(np.float32)).astype(np.float64)
        i = int(np.argmax(rel))
        if rel[i] > worst_rel:
            worst_rel, worst_x = float(rel[i]), float(x[fin][i])
        worst_ulp = max(worst_ulp, float(ulp.max()))
    print(f"\n{name} float32 {variant}: max rel {worst_rel:.3g} (x={worst_x!r}), "
          f"max ulp {worst_ulp:.3g}")
    assert worst_rel <= RTOL32[name]
