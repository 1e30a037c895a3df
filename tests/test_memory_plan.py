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
