"""scan(..., remat=True): the gradient saves each step's carry and recomputes the body's
intermediates in the backward loop (JAX's checkpointed scan body). Checked: the same
values and gradients as without remat (reference and compiled, float64, both directions,
two carries), fewer stacked residuals, finite differences, and the attribute's round trip
through the text IR."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.io.textir import format_graph, parse_graph

T, B, F, H = 6, 3, 4, 5
RNG = np.random.default_rng(11)
W, U = RNG.normal(size=(F, H)) / 2, RNG.normal(size=(H, H)) / 3
XS = RNG.normal(size=(T, B, F))
OPTIONS = gc.CompileOptions(cache_dir=None)


def _lstm_like(remat: bool, reverse: bool = False) -> gc.Graph:
    """Two carries (h, c) and intermediates the backward reads (gates, tanh(c))."""
    with gc.Graph("cell") as g:
        xs = gc.placeholder((T, B, F), gc.float64, name="xs")
        w = gc.variable(W.copy(), name="w")
        u = gc.variable(U.copy(), name="u")

        def step(state: tuple, x: gc.Node) -> tuple:
            h, c = state
            z = x @ w + h @ u
            c2 = gc.sigmoid(z) * c + gc.tanh(z * 0.5)
            h2 = gc.sigmoid(z * 2.0) * gc.tanh(c2)
            return (h2, c2), h2 * 2.0

        zero = gc.constant(np.zeros((B, H)))
        (h, c), ys = gc.scan(step, (zero, zero + 0.1), xs, reverse=reverse, remat=remat)
        loss = gc.sum(h * h) + gc.sum(c) + gc.sum(ys * ys)
        g.add_signature("f", [xs], [h, c, ys, loss, *gc.grad(loss, [w, u, xs])])
    return g


@pytest.mark.parametrize("reverse", [False, True])
def test_remat_gives_the_same_values_and_gradients(reverse: bool) -> None:
    want = gc.reference(_lstm_like(False, reverse), signature="f")(XS)
    ref = gc.reference(_lstm_like(True, reverse), signature="f")(XS)
    got = gc.compile(_lstm_like(True, reverse), signature="f", options=OPTIONS)(XS)
    for a, b, c in zip(want, ref, got):
        np.testing.assert_array_equal(b, a)  # the same ops on the same values
        np.testing.assert_allclose(c, a, rtol=1e-12, atol=1e-12)


def _saved(g: gc.Graph) -> int:
    """Results of the forward scans beyond the carries and ys: the stacked residuals."""
    scans = [n for n in g.nodes if n.op == "scan" and not n.attrs["reverse"]]
    return max(len(n.regions[0].results) for n in scans) - 3  # h, c and ys


def test_remat_saves_only_the_carries() -> None:
    assert _saved(_lstm_like(True)) == 2  # h and c before every step
    assert _saved(_lstm_like(False)) > 2


def test_remat_passes_check_grad() -> None:
    def fn(w: gc.Node, xs: gc.Node) -> gc.Node:
        def step(h: gc.Node, x: gc.Node) -> tuple[gc.Node, gc.Node]:
            h2 = gc.tanh(x @ w + h)
            return h2, gc.sigmoid(h2)

        h, ys = gc.scan(step, gc.constant(np.zeros((B, H))), xs, remat=True)
        return gc.sum(h * h) + gc.sum(ys)

    gc.check_grad(fn, [W, XS]).assert_ok(1e-6)


def test_remat_round_trips_through_the_text_ir() -> None:
    g = _lstm_like(True)
    text = format_graph(g)
    assert "remat=true" in text
    assert format_graph(parse_graph(text)) == text
