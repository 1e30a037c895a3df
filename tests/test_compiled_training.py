"""The MLP of DESIGN.md section 4 trained with gc.compile follows the reference trajectory.

Also checks the memory plan of the training step: arena within 1.10x of the lower bound.
"""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc


def _mlp(batch: int = 32, n_in: int = 64, hidden: int = 48) -> tuple[gc.Graph, list, gc.Node,
                                                                        dict]:
    with gc.Graph("mlp") as g:
        x = gc.placeholder((batch, n_in), gc.float32, name="x")
        y = gc.placeholder((batch,), gc.int32, name="y")
        w1 = gc.variable(gc.init.he_normal((n_in, hidden), seed=0), name="w1")
        b1 = gc.variable(np.zeros(hidden, np.float32), name="b1")
        w2 = gc.variable(gc.init.he_normal((hidden, hidden), seed=1), name="w2")
        b2 = gc.variable(np.zeros(hidden, np.float32), name="b2")
        w3 = gc.variable(gc.init.he_normal((hidden, 10), seed=2), name="w3")
        b3 = gc.variable(np.zeros(10, np.float32), name="b3")
        logits = gc.relu(gc.relu(x @ w1 + b1) @ w2 + b2) @ w3 + b3
        loss = gc.mean(gc.softmax_cross_entropy(logits, y))
        updates = gc.optim.SGD(lr=0.05, momentum=0.9).minimize(loss)
    return g, [x, y], loss, updates


def test_loss_trajectory_matches_the_reference() -> None:
    data = gc.datasets.digits()
    g, inputs, loss, updates = _mlp()
    initial = {n: g.variables[n].copy() for n in g.variables}
    rng = np.random.default_rng(0)
    batches = [rng.choice(len(data), 32, replace=False) for _ in range(50)]

    ref_step = gc.reference(g, inputs, [loss], updates=updates)
    ref_losses = [float(ref_step(data.images[b], data.labels[b])[0]) for b in batches]
    ref_state = {n: g.variables[n].copy() for n in g.variables}
    for n, v in initial.items():
        g.variables[n] = v

    step = gc.compile(g, inputs, [loss], updates=updates)
    losses = [float(step(data.images[b], data.labels[b])[0]) for b in batches]
    rel = np.abs(np.array(losses) - ref_losses) / np.abs(ref_losses)
    assert rel.max() < 1e-4, f"worst relative loss difference {rel.max():.2e}"
    assert losses[-1] < 0.5 * losses[0]  # it really trained
    for n, v in ref_state.items():
        np.testing.assert_allclose(g.variables[n], v, rtol=1e-3, atol=1e-4)


def test_training_step_memory_plan_is_near_the_lower_bound() -> None:
    g, inputs, loss, updates = _mlp(batch=128, n_in=784, hidden=512)
    step = gc.compile(g, inputs, [loss], updates=updates)
    plan = step.report.plan
    print(f"\narena {plan.arena_bytes} B, lower bound {plan.lower_bound} B, "
          f"naive {plan.naive_bytes} B, in-place updates {len(plan.in_place_updates)}")
    assert plan.arena_bytes <= 1.10 * plan.lower_bound
    assert plan.arena_bytes <= plan.naive_bytes
    # Every parameter and every momentum buffer is updated in place (no temporary, no final
    # copy): the momentum of a weight is computed in the epilogue of its gradient's GEMM,
    # which here has one k block and so reads each old value just before overwriting it.
    in_place = {v.name for v in plan.in_place_updates}
    assert {f"{p}/momentum" for p in ("w1", "w2", "w3")} <= in_place
    assert {"w1", "b1", "w2", "b2", "w3", "b3"} <= in_place


@pytest.mark.parametrize("dtype", [gc.float32, gc.float64])
def test_compiled_mlp_gradients_match_reference(dtype: gc.DType) -> None:
    rng = np.random.default_rng(1)
    with gc.Graph("mlp_grads") as g:
        x = gc.placeholder((9, 13), dtype, name="x")
        w1 = gc.variable(rng.standard_normal((13, 17)), dtype=dtype, name="w1")
        w2 = gc.variable(rng.standard_normal((17, 5)), dtype=dtype, name="w2")
        out = gc.tanh(x @ w1) @ w2
        loss = gc.sum(gc.log_softmax(out) * 0.3)
        grads = gc.grad(loss, [w1, w2, x])
    xa = rng.standard_normal((9, 13)).astype(dtype.np)
    expected = gc.reference(g, [x], [loss, *grads])(xa)
    actual = gc.compile(g, [x], [loss, *grads])(xa)
    rtol = 1e-5 if dtype == gc.float32 else 1e-12
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * 10)
