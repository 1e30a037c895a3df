"""Property tests: every pass, and the whole pipeline, keep what random graphs compute.

Two sources of graphs:
- `tests.graphgen.random_graphs`: general random graphs (all available op families);
- `rewrite_prone_graphs` below: chains built from the patterns simplify, cse and
  constant_fold rewrite (x * 1, transpose pairs, log(softmax), duplicates, constant
  subgraphs, ...) mixed with ordinary ops, so that the rules actually fire on varied shapes
  and in combination.

For each graph and each single pass and the default pipeline: the result verifies (the
manager runs `verify` after every pass), the reference results agree before and after
(rtol 1e-5), and a second run of the pipeline changes nothing (it reached a fixed point).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphc as gc
from graphc.io.textir import graph_diff
from graphc.ir import Graph, Node, Signature
from graphc.options import CompileOptions
from graphc.passes import PASSES
from graphc.passes.manager import DEFAULT_PIPELINE, run_pipeline
from tests.graphgen import GeneratedGraph, random_graphs
from tests.test_passes import evaluate

PIPELINES = [*PASSES, DEFAULT_PIPELINE]
SETTINGS = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def check_pipelines(graph: Graph, sig: Signature, feeds: dict[str, np.ndarray],
                    bounds: list[float] | None = None) -> None:
    before = evaluate(sig, feeds)
    for pipeline in PIPELINES:
        result = run_pipeline(graph, sig, CompileOptions(pipeline=pipeline, verify_each=True))
        after = evaluate(result.signature, feeds)
        for i, (x, y) in enumerate(zip(before, after, strict=True)):
            assert x.shape == y.shape and x.dtype == y.dtype, pipeline
            bound = bounds[i] if bounds else float(np.max(np.abs(x), initial=1.0))
            np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-5 * bound,
                                       err_msg=f"pipeline {pipeline!r}, output {i}")
        for name in result.graph.variables:
            assert result.graph.variables[name] is graph.variables[name]
    once = run_pipeline(graph, sig)
    twice = run_pipeline(once.graph, once.signature)
    assert graph_diff(twice.graph, once.graph) is None


@SETTINGS
@given(random_graphs(max_nodes=10))
def test_passes_preserve_random_graphs(gen: GeneratedGraph) -> None:
    check_pipelines(gen.graph, gen.graph.signatures["main"], gen.feeds, gen.scales)


# --- graphs made of rewrite patterns --------------------------------------------------------

Template = Callable[[st.DrawFn, Node], Node]


def _mul_one(draw: st.DrawFn, v: Node) -> Node:
    lead = draw(st.sampled_from([(), (2,)]))
    one = np.ones(lead + v.shape, v.dtype.np) if draw(st.booleans()) else 1.0
    return v * one if draw(st.booleans()) else gc.mul(one, v)


def _identities(draw: st.DrawFn, v: Node) -> Node:
    pick = draw(st.sampled_from(["add0", "0add", "sub0", "div1", "negneg", "pow1"]))
    return {"add0": lambda: v + 0.0, "0add": lambda: gc.add(0.0, v), "sub0": lambda: v - 0.0,
            "div1": lambda: v / 1.0, "negneg": lambda: gc.neg(-v), "pow1": lambda: v ** 1.0}[pick]()


def _powers(draw: st.DrawFn, v: Node) -> Node:
    t = gc.tanh(v)
    return t ** 2.0 if draw(st.booleans()) else (t * t + 1.0) ** 0.5


def _exp_log(draw: st.DrawFn, v: Node) -> Node:
    if draw(st.booleans()):
        return gc.log(gc.exp(gc.tanh(v)))
    return gc.exp(gc.log(gc.sigmoid(v)))


def _log_softmax(draw: st.DrawFn, v: Node) -> Node:
    if v.ndim == 0:
        return gc.sigmoid(v)
    return gc.log(gc.softmax(v, axis=draw(st.integers(0, v.ndim - 1))))


def _transposes(draw: st.DrawFn, v: Node) -> Node:
    if v.ndim < 2:
        return gc.transpose(v)
    p1 = draw(st.permutations(range(v.ndim)))
    p2 = draw(st.permutations(range(v.ndim)))
    return gc.transpose(gc.transpose(v, p1), p2)


def _reshapes(draw: st.DrawFn, v: Node) -> Node:
    flat = gc.reshape(v, (v.size,))
    return gc.reshape(flat, v.shape if draw(st.booleans()) else (1, v.size))


def _noops(draw: st.DrawFn, v: Node) -> Node:
    pick = draw(st.sampled_from(["reshape", "cast", "broadcast", "slice"]))
    if pick == "slice" and v.ndim:
        return gc.slice(v, [0] * v.ndim, list(v.shape))
    if pick == "cast":
        return gc.cast(v, v.dtype)
    if pick == "broadcast":
        return gc.broadcast_to(v, v.shape)
    return gc.reshape(v, v.shape)


def _sum_broadcast(draw: st.DrawFn, v: Node) -> Node:
    k = draw(st.integers(2, 3))
    if v.ndim and v.shape[-1] == 1 and draw(st.booleans()):  # a stretched axis, keepdims
        wide = gc.broadcast_to(v, (*v.shape[:-1], k))
        return gc.sum(wide, axis=v.ndim - 1, keepdims=True) / float(k)
    return gc.sum(gc.broadcast_to(v, (k, *v.shape)), axis=0) / float(k)


def _matmul(draw: st.DrawFn, v: Node) -> Node:
    if v.ndim != 2:
        return gc.tanh(v)
    a = gc.transpose(v) if draw(st.booleans()) else v
    b = gc.transpose(v) if a is v else v
    return gc.tanh(gc.matmul(a, b))


def _duplicate(draw: st.DrawFn, v: Node) -> Node:
    return gc.tanh(v) * 0.5 + gc.tanh(v) * 0.5


def _constants(draw: st.DrawFn, v: Node) -> Node:
    c = gc.constant(np.asarray(0.25, v.dtype.np))
    return v * gc.exp(-c) + gc.sum(gc.broadcast_to(c, (2,)))


def _plain(draw: st.DrawFn, v: Node) -> Node:
    return draw(st.sampled_from([gc.tanh, gc.sigmoid, gc.sin]))(v)


TEMPLATES: list[Template] = [_mul_one, _identities, _powers, _exp_log, _log_softmax,
                             _transposes, _reshapes, _noops, _sum_broadcast, _matmul,
                             _duplicate, _constants, _plain]


@st.composite
def rewrite_prone_graphs(draw: st.DrawFn) -> tuple[Graph, Signature, dict[str, np.ndarray]]:
    dtype = draw(st.sampled_from([gc.float32, gc.float64]))
    shape = tuple(draw(st.lists(st.integers(1, 3), max_size=3)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    with gc.Graph("patterns") as g:
        x = gc.placeholder(shape, dtype, name="x")
        w = gc.variable(rng.uniform(-1, 1, shape).astype(dtype.np), name="w")
        v = gc.tanh(x + w)
        outputs = []
        for _ in range(draw(st.integers(1, 6))):
            v = draw(st.sampled_from(TEMPLATES))(draw, v)
            if draw(st.integers(0, 3)) == 0:
                outputs.append(v)
        outputs.append(v)
        sig = g.add_signature("main", [x], outputs, {w: w - gc.sum(v) * 0.01})
    feeds = {"x": rng.uniform(-1.5, 1.5, shape).astype(dtype.np)}
    return g, sig, feeds


@SETTINGS
@given(rewrite_prone_graphs())
def test_passes_preserve_rewrite_prone_graphs(
        case: tuple[Graph, Signature, dict[str, np.ndarray]]) -> None:
    check_pipelines(*case)


@settings(max_examples=5, deadline=None)
@given(st.data())
def test_every_template_makes_a_rule_fire(data: st.DataObject) -> None:
    """The strategy is not vacuous: on a 2x3 value every pattern template gets rewritten."""
    for template in TEMPLATES:
        if template is _plain:
            continue
        with gc.Graph("template") as g:
            x = gc.placeholder((2, 3), name="x")
            y = template(data.draw, gc.tanh(x))
        result = run_pipeline(g, g.add_signature("main", [x], [y]))
        hits = sum(r.hits for p in result.report.passes for r in p.rules)
        assert hits > 0, f"{template.__name__} made nothing to rewrite"
