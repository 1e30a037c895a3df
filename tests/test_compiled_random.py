"""Differential tests: randomly generated graphs compiled == the reference interpreter.

Forward values, gradients (of a random projection of the outputs, with respect to every
float input and variable) and variable updates (an SGD step) are all compared. Each example
is one LLVM compile, so the example count is kept small; the compile cache makes reruns
cheap.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings

import graphc as gc
from tests.graphgen import GeneratedGraph, random_graphs

_SETTINGS = settings(max_examples=25, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _tolerance(dtype: np.dtype) -> float:
    return 1e-5 if dtype == np.float32 else 1e-12


@_SETTINGS
@given(random_graphs(max_nodes=10))
def test_forward(gen: GeneratedGraph) -> None:
    expected = gen.evaluate()
    compiled = gc.compile(gen.graph, inputs=gen.inputs, outputs=gen.outputs)
    actual = compiled(**gen.feeds)
    rtol = _tolerance(expected[0].dtype) if expected else 1e-5
    gen.assert_close(list(actual), expected, rtol=rtol)


# Sizes large enough that kernels split across the native thread pool (elementwise kernels
# from 2**15 elements, GEMMs, reductions and concats by their own thresholds).
LARGE_DIMS = (96, 48, 3, 1)


@settings(max_examples=16, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(random_graphs(max_nodes=8, dims=LARGE_DIMS, min_rank=3))
def test_forward_at_two_threads(gen: GeneratedGraph) -> None:
    """Large random graphs compiled at 2 threads == the reference, and == 1 thread bit for
    bit (no split changes any element's order of summation)."""
    expected = gen.evaluate()
    two = gc.compile(gen.graph, gen.inputs, gen.outputs, options=gc.CompileOptions(threads=2))
    one = gc.compile(gen.graph, gen.inputs, gen.outputs, options=gc.CompileOptions(threads=1))
    actual = list(two(**gen.feeds))
    gen.assert_close(actual, expected, rtol=_tolerance(expected[0].dtype))
    for a, b in zip(actual, one(**gen.feeds)):
        np.testing.assert_array_equal(a, b)


@_SETTINGS
@given(random_graphs(max_nodes=8, dtypes=(gc.float64,)))
def test_gradients_and_updates(gen: GeneratedGraph) -> None:
    g = gen.graph
    float_outputs = [o for o in gen.outputs if o.dtype.is_float]
    if not float_outputs:
        return
    rng = np.random.default_rng(0)
    with g:
        loss = sum((gc.sum(o * gc.constant(rng.standard_normal(o.shape), o.dtype))
                    for o in float_outputs), start=gc.constant(0.0, gc.float64))
        wrt = [n for n in (*gen.inputs, *g.variable_nodes) if n.dtype.is_float]
        grads = gc.grad(loss, wrt)
        variables = [v for v in g.variable_nodes if v.dtype.is_float]
        updates = {v: v - 0.1 * d for v, d in zip(wrt, grads) if v.op == "variable"}
    saved = {v.name: g.variables[v.name].copy() for v in variables}

    ref = gc.reference(g, gen.inputs, [loss, *grads], updates=updates)
    expected = ref(**gen.feeds)
    expected_state = {n: g.variables[n].copy() for n in saved}
    for n, value in saved.items():
        g.variables[n] = value

    step = gc.compile(g, gen.inputs, [loss, *grads], updates=updates)
    actual = step(**gen.feeds)
    scale = max(1.0, *(float(np.max(np.abs(e), initial=0.0)) for e in expected))
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-10 * scale)
    for n, value in expected_state.items():
        np.testing.assert_allclose(g.variables[n], value, rtol=1e-10, atol=1e-10 * scale)
