"""The memory planner: no overlap of live buffers, legal in-place reuse, the lower bound."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings

import graphc as gc
from graphc.passes.fuse import fuse
from graphc.passes.manager import run_pipeline
from graphc.passes.memory_plan import check_no_overlap, lower_bound, plan_memory
from tests.graphgen import GeneratedGraph, random_graphs


def _plan(g: gc.Graph, inputs: list, outputs: list):
    result = run_pipeline(g, gc.Signature("main", tuple(inputs), tuple(outputs)))
    return plan_memory(fuse(result.graph, result.signature))


def test_in_place_reuse_needs_equal_element_sizes() -> None:
    """A float64 kernel must not overwrite the bool buffer it reads (found by hypothesis)."""
    with gc.Graph("mixed") as g:
        x = gc.placeholder((3,), gc.float64, name="x")
        t = gc.placeholder((1,), gc.float64, name="t")
        sq = x * x
        mask = t <= sq
        y = gc.where(mask, gc.constant(0.0, gc.float64), 2.0) * x
        z = y + y
    plan = _plan(g, [x, t], [z, gc.sum(gc.minimum(t, sq))])
    for out, reused in plan.in_place:
        assert out.dtype.itemsize == reused.dtype.itemsize
    xa, ta = np.array([-0.09375, -0.71875, -0.21875]), np.array([0.1])
    expected = gc.reference(g, [x, t], [z])(xa, ta)
    np.testing.assert_allclose(gc.compile(g, [x, t], [z])(xa, ta), expected)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(random_graphs(max_nodes=14))
def test_random_plans_never_overlap_live_buffers(gen: GeneratedGraph) -> None:
    plan = _plan(gen.graph, gen.inputs, gen.outputs)
    check_no_overlap(plan)
    assert lower_bound(plan.slots) <= plan.arena_bytes <= plan.naive_bytes
    for out, reused in plan.in_place:
        assert out.shape == reused.shape and out.dtype.itemsize == reused.dtype.itemsize


def test_gemm_epilogue_updates_in_place_only_with_one_k_block() -> None:
    """v <- 0.9 v + a^T b: in place when the GEMM stores each element once (one k block);
    through a temporary when partial sums of earlier k blocks land in the output first."""
    rng = np.random.default_rng(0)
    for k, expect_in_place in ((128, True), (2048, False)):
        with gc.Graph(f"mom{k}") as g:
            a = gc.placeholder((k, 64), gc.float32, name="a")
            b = gc.placeholder((k, 64), gc.float32, name="b")
            v = gc.variable(rng.standard_normal((64, 64)).astype(np.float32), name="v")
            new_v = v * 0.9 + gc.matmul(a, b, transpose_a=True)
        start = g.variables["v"].copy()
        av = rng.standard_normal((k, 64)).astype(np.float32)
        bv = rng.standard_normal((k, 64)).astype(np.float32)
        step = gc.compile(g, [a, b], [], updates={v: new_v})
        kinds = {kern.kind.value for kern in step.report.plan.program.kernels}
        assert "matmul" in kinds
        assert ("v" in {x.name for x in step.report.plan.in_place_updates}) == expect_in_place
        step(av, bv)
        np.testing.assert_allclose(g.variables["v"], 0.9 * start + av.T @ bv, rtol=1e-4,
                                   atol=1e-3)
