"""Multi-output fusion (issue 13.12): related elementwise kernels of one iteration space
become one kernel with several outputs, results unchanged bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import graphc as gc
from graphc import pipeline
from graphc.passes import fuse as fuse_module
from graphc.passes.kernels import KernelKind
from tests.graphgen import GeneratedGraph, random_graphs


def _adam_mlp() -> tuple[gc.Graph, list[gc.Node], gc.Node, dict[gc.Node, gc.Node]]:
    rng = np.random.default_rng(0)
    with gc.Graph("adam") as g:
        x = gc.placeholder((16, 24), gc.float32, name="x")
        y = gc.placeholder((16,), gc.int32, name="y")
        w1 = gc.variable(rng.normal(0, 0.1, (24, 32)).astype(np.float32), name="w1")
        b1 = gc.variable(np.zeros(32, np.float32), name="b1")
        w2 = gc.variable(rng.normal(0, 0.1, (32, 10)).astype(np.float32), name="w2")
        loss = gc.mean(gc.softmax_cross_entropy(gc.relu(x @ w1 + b1) @ w2, y))
        updates = gc.optim.Adam(1e-2).minimize(loss)
    return g, [x, y], loss, updates


def _kernels(g: gc.Graph, inputs: list[gc.Node], loss: gc.Node,
             updates: dict[gc.Node, gc.Node], multi: bool) -> tuple[list, gc.Signature]:
    sig = gc.Signature("main", tuple(inputs), (loss,), tuple(updates.items()))
    low = pipeline.lower(g, sig, gc.CompileOptions(threads=1), "optimized")
    assert low.optimized is not None and low.optimized_signature is not None
    fused = fuse_module.fuse(low.optimized, low.optimized_signature, multi_output=multi)
    return fused.kernels, low.optimized_signature


def test_an_adam_update_is_one_kernel_per_parameter() -> None:
    g, inputs, loss, updates = _adam_mlp()
    before, _ = _kernels(g, inputs, loss, updates, multi=False)
    after, sig = _kernels(g, inputs, loss, updates, multi=True)
    merged = [k for k in after if k.kind == KernelKind.MULTI_OUTPUT]
    # w1, b1, w2: m, v and the parameter in one kernel each (3 kernels before); the step
    # counter and the two bias corrections in one (4 before).
    assert sorted(len(k.outputs) for k in merged) == [3, 3, 3, 4]
    assert len(after) == len(before) - 3 * 2 - 3
    update_of = {value: var.name for var, value in sig.updates}
    for k in merged:
        if len(k.outputs) == 3:
            targets = {update_of.get(o) for o in k.outputs}
            assert len(targets) == 3 and None not in targets


@pytest.fixture(scope="module")
def steps() -> tuple:
    """The Adam step compiled with and without multi-output fusion, from equal weights."""
    compiled = []
    for multi in (True, False):
        g, inputs, loss, updates = _adam_mlp()
        original = fuse_module.merge_outputs
        try:
            if not multi:
                fuse_module.merge_outputs = lambda program, position, max_nodes: program
            step = gc.compile(g, inputs, [loss], updates=updates,
                              options=gc.CompileOptions(threads=1))
        finally:
            fuse_module.merge_outputs = original
        compiled.append((g, step))
    return tuple(compiled)


def test_merged_kernels_give_the_same_bits(steps) -> None:
    (g1, fused), (g2, separate) = steps
    rng = np.random.default_rng(3)
    for _ in range(4):
        xb = rng.standard_normal((16, 24)).astype(np.float32)
        yb = rng.integers(0, 10, 16).astype(np.int32)
        assert fused(xb, yb)[0].tobytes() == separate(xb, yb)[0].tobytes()
    for name in g1.variables:
        assert g1.variables[name].tobytes() == g2.variables[name].tobytes(), name


def test_an_output_written_in_place_does_not_change_what_another_reads() -> None:
    """v is updated in place by the merged kernel while w's update reads the old v at the
    same index: every output is evaluated before any is stored."""
    with gc.Graph("hazard") as g:
        x = gc.placeholder((1000,), gc.float32, name="x")
        v = gc.variable(np.linspace(-1, 1, 1000, dtype=np.float32), name="v")
        w = gc.variable(np.ones(1000, np.float32), name="w")
        out = gc.sum(x)
    updates = {v: v * 0.5 + x, w: w + v * 2.0}
    step = gc.compile(g, [x], [out], updates=updates, options=gc.CompileOptions(threads=2))
    kinds = [k.kind for k in step.report.plan.program.kernels]
    assert KernelKind.MULTI_OUTPUT in kinds
    assert step.report.plan.in_place_updates  # written over the variables
    old_v, old_w = g.variables["v"].copy(), g.variables["w"].copy()
    xb = np.arange(1000, dtype=np.float32)
    step(xb)
    np.testing.assert_array_equal(g.variables["v"], old_v * np.float32(0.5) + xb)
    np.testing.assert_array_equal(g.variables["w"], old_w + old_v * np.float32(2.0))


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(random_graphs(max_nodes=10))
def test_random_graphs_with_several_outputs(gen: GeneratedGraph) -> None:
    """Random graphs with several outputs (merge candidates) against the reference, at 1 and
    2 threads, bit for bit between the two."""
    expected = gen.evaluate()
    one = gc.compile(gen.graph, gen.inputs, gen.outputs, options=gc.CompileOptions(threads=1))
    two = gc.compile(gen.graph, gen.inputs, gen.outputs, options=gc.CompileOptions(threads=2))
    got = list(one(**gen.feeds))
    rtol = 1e-5 if expected and expected[0].dtype == np.float32 else 1e-12
    gen.assert_close(got, expected, rtol=rtol)
    for a, b in zip(got, two(**gen.feeds)):
        np.testing.assert_array_equal(a, b)
