"""Partial unrolling of scans (`unroll=k`, 1 < k < length; `passes/lower_control.py`):
a loop of length // k trips whose body holds k steps, the remainder after it (before it in
the rows of a reverse scan), as JAX does. Results, gradients and compiled training equal
unroll=1's bit for bit; the loop's shape is checked on the optimized graph."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.passes.kernels import KernelKind
from graphc.pipeline import lower

OPTIONS = gc.CompileOptions(cache_dir=None)
REF_TOL = {"float32": 3e-5, "float64": 1e-12}  # sums of 10 steps' f32 gradients


def _rnn(steps: int, unroll: int, reverse: bool, dtype: str) -> gc.Graph:
    """Two carries (one an int counter), two stacked outputs, gradients of w, xs, h0."""
    rng = np.random.default_rng(0)
    with gc.Graph("rnn") as g:
        xs = gc.placeholder((steps, 3, 4), dtype, name="xs")
        h0 = gc.placeholder((3, 4), dtype, name="h0")
        w = gc.variable((rng.normal(size=(4, 4)) / 4).astype(dtype), name="w")

        def step(c: tuple[gc.Node, gc.Node], x: gc.Node) -> tuple[tuple[gc.Node, gc.Node],
                                                                  tuple[gc.Node, gc.Node]]:
            h, i = c
            h2 = gc.tanh(h @ w + x)
            return (h2, i + 1), (h2 * 2.0, gc.sum(x, axis=1))

        (h_t, count), (ys, sums) = gc.scan(step, (h0, gc.constant(np.int32(0))), xs,
                                          reverse=reverse, unroll=unroll)
        loss = gc.sum(ys * ys) + gc.sum(h_t) + gc.sum(sums)
        dw, dxs, dh0 = gc.grad(loss, [w, xs, h0])
        g.add_signature("f", [xs, h0], [h_t, count, ys, sums, loss, dw, dxs, dh0])
    return g


def _args(steps: int, dtype: str) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.normal(size=(steps, 3, 4)).astype(dtype),
            rng.normal(size=(3, 4)).astype(dtype)]


def _scans(g: gc.Graph) -> list[tuple[int, int]]:
    """(length, unroll) of each scan of the optimized graph, and the number of loop
    kernels must match."""
    lowered = lower(g, g.signatures["f"], OPTIONS, "fused")
    assert lowered.optimized is not None and lowered.fused is not None
    scans = [(n.attrs["length"], n.attrs["unroll"]) for n in lowered.optimized.nodes
             if n.op == "scan"]
    assert len(scans) == sum(k.kind == KernelKind.LOOP for k in lowered.fused.kernels)
    return scans


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("steps,unroll", [(10, 2), (10, 3), (10, 4), (9, 3), (7, 6)])
def test_partial_unroll_equals_unroll_1(steps: int, unroll: int, reverse: bool,
                                        dtype: str) -> None:
    args = _args(steps, dtype)
    base = gc.compile(_rnn(steps, 1, reverse, dtype), signature="f", options=OPTIONS)(*args)
    g = _rnn(steps, unroll, reverse, dtype)
    got = gc.compile(g, signature="f", options=OPTIONS)(*args)
    ref = gc.reference(g, signature="f")(*args)
    trips = steps // unroll
    for a, b, r in zip(got, base, ref):
        assert a.shape == b.shape and a.dtype == b.dtype
        if trips > 1:  # the same steps in the same loop structure: the same bits
            np.testing.assert_array_equal(a, b)
        else:  # fully unrolled: fused across steps, rounded differently
            np.testing.assert_allclose(a, b, rtol=REF_TOL[dtype], atol=REF_TOL[dtype])
        np.testing.assert_allclose(a, r, rtol=REF_TOL[dtype], atol=REF_TOL[dtype])
    assert int(got[1]) == steps
    if trips > 1:  # forward and backward loops of `trips` trips, k steps per body
        assert _scans(g) == [(trips, 1), (trips, 1)]
    else:  # one trip is no loop: fully unrolled
        assert _scans(g) == []


def test_chunk_body_holds_k_steps() -> None:
    g = _rnn(12, 4, False, "float64")
    lowered = lower(g, g.signatures["f"], OPTIONS, "optimized")
    assert lowered.optimized is not None
    forward = next(n for n in lowered.optimized.nodes if n.op == "scan")
    body = forward.regions[0]
    assert sum(n.op == "matmul" for n in body.graph.nodes) == 4
    assert body.params[-1].shape == (4, 3, 4)  # x chunks of k rows


def test_partial_unroll_in_training_equals_unroll_1() -> None:
    def build(unroll: int) -> tuple[gc.Graph, object]:
        rng = np.random.default_rng(2)
        with gc.Graph("t") as g:
            xs = gc.placeholder((11, 2, 3), gc.float64, name="xs")
            w = gc.variable(rng.normal(size=(3, 3)) / 3, name="w")
            _, ys = gc.scan(lambda h, x: (gc.tanh(h @ w + x),) * 2,
                            gc.constant(np.zeros((2, 3))), xs, unroll=unroll)
            loss = gc.mean(ys * ys)
            updates = gc.optim.Adam(0.05).minimize(loss)
        return g, gc.compile(g, [xs], loss, updates, options=OPTIONS)

    (g1, step1), (g4, step4) = build(1), build(4)
    rng = np.random.default_rng(3)
    for _ in range(5):
        xv = rng.normal(size=(11, 2, 3))
        np.testing.assert_array_equal(step4(xv), step1(xv))
    np.testing.assert_array_equal(g4.variables["w"], g1.variables["w"])


def test_partial_unroll_of_a_nested_scan_and_without_xs() -> None:
    with gc.Graph("g") as g:
        xs = gc.placeholder((6, 5, 3), gc.float64, name="xs")

        def outer(h: gc.Node, row: gc.Node) -> tuple[gc.Node, gc.Node]:
            inner, zs = gc.scan(lambda d, z: (gc.sin(d) + z, d * 2.0), h, row, unroll=2)
            return inner, zs

        h, ys = gc.scan(outer, gc.constant(np.full(3, 0.1)), xs, unroll=4)
        c, powers = gc.scan(lambda c, _: (c * 1.5, c), h, None, length=7, unroll=3,
                            reverse=True)
        g.add_signature("f", [xs], [h, ys, c, powers])
    xv = np.random.default_rng(4).normal(size=(6, 5, 3))
    got = gc.compile(g, signature="f", options=OPTIONS)(xv)
    for a, b in zip(got, gc.reference(g, signature="f")(xv)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
