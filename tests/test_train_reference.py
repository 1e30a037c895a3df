"""End to end: a 2-layer MLP trained with gc.reference separates a synthetic problem."""

from __future__ import annotations

import time

import numpy as np

import graphc as gc


def _separable(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes on either side of a curved boundary (not linearly separable), with a
    margin so that 100% training accuracy is attainable."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (4 * n, 2))
    score = x[:, 1] - 0.7 * np.sin(3.5 * x[:, 0])
    keep = np.abs(score) > 0.15
    x, score = x[keep][:n], score[keep][:n]
    return x.astype(np.float32), (score > 0).astype(np.int32)


def test_mlp_reaches_99_percent_training_accuracy() -> None:
    start = time.perf_counter()
    n, hidden = 256, 32
    xs, ys = _separable(n)
    assert 0.3 < ys.mean() < 0.7  # both classes present
    with gc.Graph("mlp") as g:
        x = gc.placeholder((n, 2), "float32", name="x")
        y = gc.placeholder((n,), "int32", name="y")
        w1 = gc.variable(gc.init.he_normal((2, hidden), seed=1), name="w1")
        b1 = gc.variable(np.zeros(hidden, np.float32), name="b1")
        w2 = gc.variable(gc.init.glorot_uniform((hidden, 2), seed=2), name="w2")
        b2 = gc.variable(np.zeros(2, np.float32), name="b2")
        logits = gc.tanh(x @ w1 + b1) @ w2 + b2
        loss = gc.mean(gc.softmax_cross_entropy(logits, y))
        opt = gc.optim.Adam(0.05)
        updates = opt.minimize(loss)
    train = gc.reference(g, [x, y], loss, updates)
    predict = gc.reference(g, [x], logits)
    schedule = gc.optim.CosineAnnealing(opt, T_max=400, eta_min=0.005)

    first = float(train(xs, ys))
    for _ in range(399):
        last = float(train(xs, ys))
        schedule.step()
    accuracy = float(np.mean(np.argmax(predict(xs), axis=1) == ys))
    elapsed = time.perf_counter() - start
    assert last < first * 0.2
    assert accuracy >= 0.99, f"training accuracy {accuracy:.3f}"
    assert elapsed < 10.0, f"took {elapsed:.1f} s"
