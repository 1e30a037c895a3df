"""The default pipeline on the MLP training graph of DESIGN.md §4.

Forward pass, softmax cross-entropy, gradients (gc.grad inside the optimizer) and SGD with
momentum updates: the pipeline must shrink the graph, keep every result (loss and each new
variable value) and keep the variables bound to the user's arrays. The per-pass table is
printed into the test output.
"""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.ir import Graph, Signature
from graphc.options import CompileOptions
from graphc.passes.manager import run_pipeline
from tests.test_passes import evaluate


def build_mlp(batch: int = 16, features: int = 32, hidden: int = 24,
              classes: int = 10) -> tuple[Graph, Signature]:
    with gc.Graph("mlp") as g:
        x = gc.placeholder((batch, features), gc.float32, name="x")
        y = gc.placeholder((batch,), gc.int32, name="y")
        w1 = gc.variable(gc.init.he_normal((features, hidden), seed=0), name="w1")
        b1 = gc.variable(np.zeros(hidden, np.float32), name="b1")
        w2 = gc.variable(gc.init.he_normal((hidden, classes), seed=1), name="w2")
        b2 = gc.variable(np.zeros(classes, np.float32), name="b2")
        logits = gc.relu(x @ w1 + b1) @ w2 + b2
        loss = gc.mean(gc.softmax_cross_entropy(logits, y))
        updates = gc.optim.SGD(lr=0.01, momentum=0.9).minimize(loss)
    return g, g.add_signature("train", inputs=[x, y], outputs=[loss], updates=updates)


def test_default_pipeline_shrinks_the_mlp_training_graph(capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    g, sig = build_mlp()
    result = run_pipeline(g, sig, CompileOptions(verify_each=True))
    table = result.report.format_table()
    with capsys.disabled():
        print(f"\nMLP training graph, default pipeline:\n{table}")

    report = result.report
    assert report.passes[-1].nodes_after < report.passes[0].nodes_before
    assert len(result.graph.nodes) < len(g.nodes)
    assert sum(p.nodes_before - p.nodes_after for p in report.passes) == (
        len(g.nodes) - len(result.graph.nodes))

    new_sig = result.signature
    assert [(v.name, v.op) for v, _ in new_sig.updates] == [(v.name, "variable")
                                                            for v, _ in sig.updates]
    for name in g.variables:
        if name in result.graph.variables:
            assert result.graph.variables[name] is g.variables[name]

    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((16, 32)).astype(np.float32),
             "y": rng.integers(0, 10, 16).astype(np.int32)}
    for before, after in zip(evaluate(sig, feeds), evaluate(new_sig, feeds), strict=True):
        assert before.dtype == after.dtype
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)


def test_optimized_train_step_trains_like_the_original() -> None:
    """Three reference steps of each graph, from the same initial state, agree."""
    g, sig = build_mlp()
    initial = {k: v.copy() for k, v in g.variables.items()}
    optimized = run_pipeline(g, sig).signature
    rng = np.random.default_rng(1)
    batch = (rng.standard_normal((16, 32)).astype(np.float32),
             rng.integers(0, 10, 16).astype(np.int32))
    batches = [batch] * 3  # the same batch: the loss must go down

    def train(s: Signature) -> tuple[list[float], dict[str, np.ndarray]]:
        for k, v in initial.items():
            g.variables[k] = v
        step = gc.reference(s.outputs[0].graph, s.inputs, s.outputs[0], s.updates)
        losses = [float(step(xb, yb)) for xb, yb in batches]
        return losses, {k: v.copy() for k, v in g.variables.items()}

    losses_a, weights_a = train(sig)
    losses_b, weights_b = train(optimized)
    np.testing.assert_allclose(losses_b, losses_a, rtol=1e-5)
    assert losses_a[-1] < losses_a[0]
    for k in ("w1", "b1", "w2", "b2"):
        np.testing.assert_allclose(weights_b[k], weights_a[k], rtol=1e-5, atol=1e-7)
