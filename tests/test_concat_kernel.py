"""Kernels whose root is a concat: each operand gets its own loop nest over its block of the
output (kernels._emit_concat_parts). Checked against the reference on every axis, with
vector tails, and split across threads."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.passes.kernels import KernelKind


@pytest.mark.parametrize("threads", [1, 2])
def test_concat_of_expressions(threads: int) -> None:
    rng = np.random.default_rng(0)
    shapes = {"a": (300, 5), "b": (300, 16), "c": (300, 3), "d": (2, 7, 33), "e": (3, 7, 33)}
    values = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    with gc.Graph("concat_root") as g:
        ph = {k: gc.placeholder(s, gc.float32, name=k) for k, s in shapes.items()}
        # Inner axis: parts of widths 5, 16 and 3 (vector tails), each an expression.
        inner = gc.concat([gc.tanh(ph["a"]) * 2.0, ph["b"] + 1.0, gc.exp(ph["c"])], axis=1)
        outer = gc.concat([ph["d"] * ph["d"], ph["e"] - 3.0], axis=0)
        middle = gc.concat([gc.relu(ph["d"]), ph["d"] + 0.5], axis=1)
    ins, outs = list(ph.values()), [inner, outer, middle]
    exe = gc.compile(g, ins, outs, options=gc.CompileOptions(cache_dir=None, threads=threads))
    kernels = exe.report.plan.program.kernels
    assert sum(k.kind == KernelKind.ELEMENTWISE and k.root.op == "concat" for k in kernels) == 3
    got = exe(*values.values())
    want = gc.reference(g, ins, outs)(*values.values())
    for a, w in zip(got, want):
        np.testing.assert_allclose(a, w, rtol=2e-6, atol=1e-6)
