"""Every op: reference vs numpy (float32, float64) and gradient vs finite differences."""

from __future__ import annotations

import importlib
import pkgutil

import numpy as np
import pytest

import graphc as gc
from graphc.ops import registry
from tests import op_cases
from tests.op_table import OpCase, make_args, run_reference

CASES: list[OpCase] = []
for _info in pkgutil.iter_modules(op_cases.__path__):
    CASES.extend(importlib.import_module(f"tests.op_cases.{_info.name}").CASES)

_IDS = [c.id for c in CASES]
assert len(set(_IDS)) == len(_IDS), "duplicate op case ids"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=_IDS)
def test_reference_matches_numpy(case: OpCase, dtype: str) -> None:
    if dtype not in case.dtypes:
        pytest.skip(f"{case.id} is not defined for {dtype}")
    arrays = make_args(case, dtype)
    actual = run_reference(case, arrays)
    with np.errstate(all="ignore"):
        expected = np.asarray(case.numpy(*[a.astype(np.float64) if a.dtype.kind == "f" else a
                                           for a in arrays]))
    assert actual.shape == expected.shape
    if expected.dtype.kind == "f":
        rtol, atol = (case.rtol32, case.atol32) if dtype == "float32" else (1e-12, 1e-12)
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)
    else:
        np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("case", [c for c in CASES if c.grad], ids=[c.id for c in CASES if c.grad])
def test_gradient_matches_finite_differences(case: OpCase) -> None:
    arrays = make_args(case, "float64")
    result = gc.check_grad(case.build, arrays)
    result.assert_ok(case.grad_tol)


def test_every_op_has_a_row() -> None:
    covered = {op for c in CASES for op in c.ops}
    missing = sorted(set(registry.OPS) - covered - {"placeholder", "variable", "constant"})
    assert not missing, f"ops without an op-table row: {missing}"


def test_every_differentiable_op_is_gradient_checked() -> None:
    checked = {op for c in CASES if c.grad for op in c.ops}
    # attention's two gradient ops refuse second derivatives (tests/test_attention.py).
    refused = {"attention_lse", "attention_grad", "attention_with_lse"}
    missing = sorted(n for n, op in registry.OPS.items()
                     if op.differentiable and n not in checked and n not in refused)
    assert not missing, f"differentiable ops without a gradient row: {missing}"
