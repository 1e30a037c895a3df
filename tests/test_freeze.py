"""gc.freeze: weights no kept signature updates become constants holding a snapshot.

A frozen graph computes what its source computed at the moment of freezing (compiled and in
the reference), its matmuls then read prepacked constant weights, later training of the
source does not reach it, and variables a kept signature updates stay shared variables.
"""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.errors import GraphcError, GraphNameError

OPTIONS = gc.CompileOptions(threads=1, cache_dir=None)


def _mlp() -> tuple[gc.Graph, gc.Node, gc.Node, gc.Node]:
    """A two-layer MLP with "predict" and "train" (SGD) signatures."""
    rng = np.random.default_rng(0)
    with gc.Graph("mlp") as g:
        x = gc.placeholder((64, 48), name="x")
        labels = gc.placeholder((64,), gc.int32, name="labels")
        w1 = gc.variable(rng.standard_normal((48, 96)).astype(np.float32) * 0.2, name="w1")
        b1 = gc.variable(np.zeros(96, np.float32), name="b1")
        w2 = gc.variable(rng.standard_normal((96, 32)).astype(np.float32) * 0.2, name="w2")
        logits = gc.relu(x @ w1 + b1) @ w2
        loss = gc.mean(gc.softmax_cross_entropy(logits, labels))
        updates = gc.optim.SGD(lr=0.1).minimize(loss)
    g.add_signature("predict", [x], [logits])
    g.add_signature("train", [x, labels], [loss], updates=updates)
    return g, x, labels, logits


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return (rng.standard_normal((64, 48)).astype(np.float32),
            rng.integers(0, 10, 64).astype(np.int32))


def test_a_frozen_graph_computes_the_snapshot_and_ignores_later_training() -> None:
    g, x, _, logits = _mlp()
    xv, yv = _data()
    served = gc.freeze(g, signatures=["predict"])
    assert list(served.signatures) == ["predict"]
    assert [served[n].op for n in ("w1", "b1", "w2")] == ["constant"] * 3
    assert not {"w1", "b1", "w2"} & set(served.variables)
    before = gc.compile(g, signature="predict", options=OPTIONS)(xv)[0]
    frozen = gc.compile(served, signature="predict", options=OPTIONS)
    np.testing.assert_allclose(frozen(xv)[0], before, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gc.reference(served, [served[x.name]],
                                            [served[logits.name]])(xv)[0],
                               before, rtol=1e-5, atol=1e-5)
    train = gc.compile(g, signature="train", options=OPTIONS)
    for _ in range(3):
        train(xv, yv)
    g.variables["b1"] = np.full(96, 5.0, np.float32)
    after = gc.compile(g, signature="predict", options=OPTIONS)(xv)[0]
    assert np.max(np.abs(after - before)) > 1e-2  # the source did change ...
    np.testing.assert_allclose(frozen(xv)[0], before, rtol=1e-5, atol=1e-5)  # ... not this


def test_frozen_matmul_weights_are_prepacked() -> None:
    g, _, _, _ = _mlp()
    plain = gc.compile(g, signature="predict", options=OPTIONS)
    frozen = gc.compile(gc.freeze(g, signatures=["predict"]), signature="predict",
                        options=OPTIONS)

    def panels(exe: gc.Executable) -> list[int]:
        return [n.attrs["b_panels"] for n in exe.compiled_graph.nodes if n.op == "matmul"]

    assert panels(plain) and not any(panels(plain))
    assert all(panels(frozen))


def test_variables_a_kept_signature_updates_stay_shared_variables() -> None:
    g, _, _, _ = _mlp()
    xv, yv = _data()
    assert gc.frozen_variables(g) == []  # "train" updates every weight
    assert g["optim/lr"].op == "variable"  # not trainable: a schedule assigns it
    both = gc.freeze(g)
    assert sorted(both.signatures) == ["predict", "train"]
    assert all(both[n].op == "variable" for n in ("w1", "b1", "w2"))
    assert both.variables["w1"] is g.variables["w1"]
    gc.compile(both, signature="train", options=OPTIONS)(xv, yv)
    np.testing.assert_array_equal(both.variables["w1"], g.variables["w1"])
    assert both["optim/lr"].op == "variable"  # not trainable: state, not a weight
    part = gc.freeze(g, signatures=["predict"], keep=["b1"])
    assert part["b1"].op == "variable" and part["w1"].op == "constant"
    assert part.variables["b1"] is g.variables["b1"]
    assert "optim/lr" not in part  # only "train" reads it


def test_freeze_errors_name_what_is_wrong() -> None:
    g, _, _, _ = _mlp()
    with pytest.raises(GraphNameError, match="no signature 'serve'"):
        gc.freeze(g, signatures=["serve"])
    with pytest.raises(GraphcError, match=r"list of names.*\['predict'\]"):
        gc.freeze(g, signatures="predict")  # type: ignore[arg-type]
    with pytest.raises(GraphNameError, match="'w9'"):
        gc.freeze(g, keep=["w9"])
    with pytest.raises(GraphcError, match="placeholder, not a variable"):
        gc.freeze(g, keep=["x"])


def test_updating_a_frozen_weight_is_a_clean_error() -> None:
    g, x, _, logits = _mlp()
    served = gc.freeze(g, signatures=["predict"])
    with pytest.raises(GraphcError, match="w1"):
        gc.compile(served, [served[x.name]], [served[logits.name]],
                   updates={served["w1"]: served["w1"] * 0.5}, options=OPTIONS)


def test_signatures_prune_and_state_stays_variable() -> None:
    """With `signatures`, only what they compute is copied (a weight only a dropped
    signature reads is not frozen into the new graph); integer and non-trainable variables
    are state and stay variables."""
    rng = np.random.default_rng(4)
    with gc.Graph("state") as g:
        x = gc.placeholder((2, 8), name="x")
        w = gc.variable(rng.standard_normal((8, 8)).astype(np.float32), name="w")
        stats_w = gc.variable(np.ones((8, 8), np.float32), name="stats_w")
        step = gc.variable(np.int32(3), name="step")
        scale = gc.variable(np.float32(2.0), name="scale", trainable=False)
        y = (x @ w) * scale + gc.cast(step, gc.float32)
        stats = gc.sum(x @ stats_w)
    g.add_signature("predict", [x], [y])
    g.add_signature("stats", [x], [stats])
    assert gc.frozen_variables(g) == ["w", "stats_w"]
    assert gc.frozen_variables(g, signatures=["predict"]) == ["w"]
    served = gc.freeze(g, signatures=["predict"])
    assert "stats_w" not in served and "stats" not in served.signatures
    assert served["w"].op == "constant"
    assert served["step"].op == "variable" and served["scale"].op == "variable"
    f = gc.compile(served, signature="predict", options=OPTIONS)
    xv = rng.standard_normal((2, 8)).astype(np.float32)
    before = f(xv)[0]
    g.variables["step"] = np.int32(5)  # state set between calls reaches the frozen graph
    np.testing.assert_allclose(f(xv)[0], before + 2, rtol=1e-5, atol=1e-5)
    with pytest.raises(GraphcError, match=r"keep must be a list.*\['w'\]"):
        gc.freeze(g, keep="w")  # type: ignore[arg-type]


def test_a_frozen_convolution_and_a_kv_cache_decode_step() -> None:
    """Frozen conv filters (prepacked) match, and a generator-style graph keeps its cache."""
    rng = np.random.default_rng(2)
    with gc.Graph("cache") as g:
        x = gc.placeholder((2, 3, 12, 12), name="x")
        k = gc.variable(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), name="k")
        cache = gc.variable(np.zeros((4,), np.float32), name="cache", trainable=False)
        y = gc.relu(gc.conv2d(x, k, padding=1))
        total = gc.sum(y)
        new_cache = cache + gc.reshape(total, (1,))
    g.add_signature("step", [x], [y], updates={cache: new_cache})
    served = gc.freeze(g)
    assert served["k"].op == "constant" and served["cache"].op == "variable"
    xv = rng.standard_normal((2, 3, 12, 12)).astype(np.float32)
    want = gc.reference(g, [x], [y])(xv)[0]
    f = gc.compile(served, signature="step", options=OPTIONS)
    np.testing.assert_allclose(f(xv)[0], want, rtol=1e-4, atol=1e-4)
    f(xv)
    np.testing.assert_allclose(g.variables["cache"], 2 * want.sum(), rtol=1e-4)
