"""The op table harness: one `OpCase` row per user-facing op, checked three ways.

Rows live in `tests/op_cases/<family>.py` (a `CASES` list each). `tests/test_op_table.py`
runs every row: the reference interpreter against an independent numpy expression (float32
and float64), the gradient against finite differences (`gc.check_grad`, float64), and, once
the backend exists, compiled code against the reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

import graphc as gc


@dataclass(frozen=True)
class Arg:
    """How to generate one input.

    kind: "normal" (standard normal), "positive" (uniform [0.5, 2]), "unit" (uniform
    (-0.9, 0.9)), "away0" (|x| in [0.3, 2] with random sign: away from kinks at 0),
    "int" (integers in [lo, hi)), "bool", "distinct" (a permutation: no ties, for max/sort).
    Float args take the row's dtype; others use `dtype`.
    """

    shape: tuple[int, ...]
    kind: str = "normal"
    lo: int = 0
    hi: int = 10
    dtype: str | None = None


@dataclass(frozen=True)
class OpCase:
    """One row: `build(*nodes)` in graphc must equal `numpy(*arrays)`.

    `ops` names the registry ops the row covers (for the coverage test). `grad` says whether
    the row is gradient-checked (float64). `rtol32`/`atol32` bound the float32 reference
    against the float64 numpy value.
    """

    id: str
    ops: tuple[str, ...]
    build: Callable[..., gc.Node]
    numpy: Callable[..., np.ndarray]
    args: tuple[Arg, ...]
    dtypes: tuple[str, ...] = ("float32", "float64")
    grad: bool = True
    grad_tol: float = 1e-6
    rtol32: float = 1e-5
    atol32: float = 1e-6
    compiled_rtol32: float = 1e-5  # compiled float32 vs the float32 reference
    compiled_atol32: float = 1e-6
    compiled: bool = True  # False: compiled code refuses the row (while_loop, for now)


def make_args(case: OpCase, dtype: str, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = []
    for a in case.args:
        if a.kind == "normal":
            x = rng.standard_normal(a.shape)
        elif a.kind == "positive":
            x = rng.uniform(0.5, 2.0, a.shape)
        elif a.kind == "unit":
            x = rng.uniform(-0.9, 0.9, a.shape)
        elif a.kind == "away0":
            x = rng.uniform(0.3, 2.0, a.shape) * rng.choice([-1.0, 1.0], a.shape)
        elif a.kind == "distinct":
            n = int(np.prod(a.shape))
            x = (rng.permutation(n).reshape(a.shape) - n / 2) / max(n, 1) * 4.0
        elif a.kind == "int":
            arrays.append(rng.integers(a.lo, a.hi, a.shape).astype(a.dtype or "int32"))
            continue
        elif a.kind == "bool":
            arrays.append(rng.random(a.shape) < 0.5)
            continue
        else:
            raise ValueError(a.kind)
        arrays.append(x.astype(a.dtype or dtype))
    return arrays


def run_reference(case: OpCase, arrays: list[np.ndarray]) -> np.ndarray:
    with gc.Graph(case.id) as g:
        phs = [gc.placeholder(a.shape, a.dtype.name, name=f"arg{i}") for i, a in enumerate(arrays)]
        out = case.build(*phs)
    value = gc.reference(g, inputs=phs, outputs=out)(*arrays)
    assert value.shape == out.shape and value.dtype == out.dtype.np, (
        f"{case.id}: reference gave {value.dtype}{list(value.shape)} for node type {out.type}")
    return value
