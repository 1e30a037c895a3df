"""Recurrent layers on `gc.scan` (the default) against their unrolled form (`unroll=True`):
forward, gradients and five Adam steps equal in float64 to 1e-12, with and without
`return_sequences`, one way and `Bidirectional`; the backward half against numpy; the
scan path's graph holds one cell whatever the length."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc import nn
from tests.test_nn_layers import np_rnn

OPTIONS = gc.CompileOptions(cache_dir=None)
X = np.random.default_rng(0).normal(size=(3, 5, 4))


def _train(cls: type, unroll: bool, sequences: bool, bidirectional: bool
           ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(outputs and gradients, the weights after 5 Adam steps) of a layer on X."""
    with gc.Graph("g") as g:
        x = gc.placeholder(X.shape, gc.float64, name="x")
        layer = cls(5, return_sequences=sequences, unroll=unroll, seed=1)
        out = (nn.Bidirectional(layer) if bidirectional else layer)(x)
        loss = gc.sum(out * out)
        grads = gc.grad(loss, g.trainable_variables)
        updates = gc.optim.Adam(1e-2).minimize(loss)
    values = gc.compile(g, [x], [out, loss, *grads], options=OPTIONS)(X)
    step = gc.compile(g, [x], [loss], updates=updates, options=OPTIONS)
    for _ in range(5):
        step(X)
    return list(values), [np.array(g.variables[v.name]) for v in g.trainable_variables]


@pytest.mark.parametrize("cls", [nn.SimpleRNN, nn.LSTM, nn.GRU])
@pytest.mark.parametrize("sequences,bidirectional", [(False, False), (True, True)])
def test_scan_layers_equal_the_unrolled_ones(cls: type, sequences: bool,
                                             bidirectional: bool) -> None:
    scanned = _train(cls, False, sequences, bidirectional)
    unrolled = _train(cls, True, sequences, bidirectional)
    for got, want in zip([*scanned[0], *scanned[1]], [*unrolled[0], *unrolled[1]]):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("unroll", [False, True])
@pytest.mark.parametrize("merge", ["concat", "ave"])
def test_bidirectional_halves_match_numpy(unroll: bool, merge: str) -> None:
    with gc.Graph("g") as g:
        x = gc.placeholder(X.shape, gc.float64, name="x")
        bi = nn.Bidirectional(nn.LSTM(3, return_sequences=True, unroll=unroll), merge)
        out = bi(x)
    got = gc.compile(g, [x], out, options=OPTIONS)(X)
    w = {layer: {s: g.variables[v.name] for s, v in layer.weights.items()}
         for layer in (bi.forward_layer, bi.backward_layer)}
    fwd = np_rnn("lstm", X, w[bi.forward_layer], 3)
    bwd = np_rnn("lstm", X[:, ::-1], w[bi.backward_layer], 3)[:, ::-1]
    want = np.concatenate([fwd, bwd], -1) if merge == "concat" else (fwd + bwd) / 2
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert len(bi.variables) == 6 and bi.backward_layer.reverse


def test_scan_layer_graph_does_not_grow_with_the_length() -> None:
    def nodes(steps: int, unroll: bool) -> int:
        with gc.Graph("g") as g:
            nn.GRU(4, unroll=unroll)(gc.placeholder((2, steps, 3), name="x"))
        return len(g.nodes)

    assert nodes(4, False) == nodes(64, False)
    assert nodes(64, True) > 10 * nodes(64, False)


def test_bidirectional_checks_its_layer() -> None:
    with pytest.raises(gc.GraphcError, match="merge_mode"):
        nn.Bidirectional(nn.GRU(2), "max")
    with pytest.raises(gc.GraphcError, match="unbuilt"):
        nn.Bidirectional(nn.Dense(2))  # type: ignore[arg-type]
