"""Every op-table row compiled to native code equals the reference interpreter.

float32: rtol 1e-5 (or the row's documented `compiled_rtol32`); float64: rtol 1e-12.
Rows are compiled one graph per (row, dtype); the on-disk compile cache makes reruns cheap.
"""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.compile import compile as gc_compile
from tests.op_table import OpCase, make_args
from tests.test_op_table import CASES


def _run_both(case: OpCase, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    arrays = make_args(case, dtype, seed=1)
    with gc.Graph(case.id) as g:
        phs = [gc.placeholder(a.shape, a.dtype.name, name=f"arg{i}")
               for i, a in enumerate(arrays)]
        out = case.build(*phs)
    expected = gc.reference(g, phs, out)(*arrays)
    actual = gc_compile(g, phs, out)(*arrays)
    return actual, expected


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_compiled_matches_reference(case: OpCase, dtype: str) -> None:
    if dtype not in case.dtypes:
        pytest.skip(f"{case.id} is not defined for {dtype}")
    if not case.compiled:
        pytest.skip(f"{case.id} runs in the reference interpreter only")
    actual, expected = _run_both(case, dtype)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    if expected.dtype.kind == "f":
        if expected.dtype == np.float32:
            rtol, atol = case.compiled_rtol32, case.compiled_atol32
        else:
            rtol, atol = 1e-12, 1e-12
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)
    else:
        np.testing.assert_array_equal(actual, expected)
