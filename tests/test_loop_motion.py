"""Work moved out of kept scan bodies: loop_hoist (carry-independent work before the loop)
and loop_sink (accumulated products after it).

Checked on the optimized graph (what moved: invariants once before the loop, x_t @ W as one
GEMM over every step, weight-gradient accumulations as one GEMM after the backward loop;
results, random ops and carries read elsewhere left inside; the size bound) and on numbers:
compiled against the reference interpreter in float64 (1e-12) with gradients, forward and
reverse, nested loops, and against the same graph compiled without either pass."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import graphc as gc
from graphc.ir import Graph, Node
from graphc.passes import loop_hoist
from graphc.passes.manager import DEFAULT_PIPELINE, run_pipeline

OPTIONS = gc.CompileOptions(cache_dir=None)
NO_HOIST = dataclasses.replace(
    OPTIONS, pipeline=DEFAULT_PIPELINE.replace("loop_hoist,", "").replace("loop_sink,", ""))
T, B, F, H = 7, 3, 5, 4


def _optimized(g: Graph, sig: str = "f") -> Graph:
    return run_pipeline(g, sig, OPTIONS).graph


def _scans(g: Graph) -> list[Node]:
    return [n for n in g.nodes if n.op == "scan"]


def _body_ops(scan: Node) -> list[str]:
    return [n.op for n in scan.regions[0].needed_nodes() if n.op != "placeholder"]


def _check(g: Graph, args: list[np.ndarray], sig: str = "f", rtol: float = 1e-12) -> None:
    expected = gc.reference(g, signature=sig)(*args)
    got = gc.compile(g, signature=sig, options=OPTIONS)(*args)
    unhoisted = gc.compile(g, signature=sig, options=NO_HOIST)(*args)
    for a, b, c in zip(got, expected, unhoisted):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol)
        np.testing.assert_allclose(a, c, rtol=rtol, atol=rtol)


def _rnn(reverse: bool = False, dtype: gc.DType = gc.float64) -> Graph:
    """h' = tanh(x_t @ w + h @ (u * 0.5)): a mapped GEMM and an invariant product."""
    rng = np.random.default_rng(0)
    with gc.Graph("rnn") as g:
        xs = gc.placeholder((T, B, F), dtype, name="xs")
        w = gc.variable(rng.normal(size=(F, H)).astype(dtype.np), name="w")
        u = gc.variable(rng.normal(size=(H, H)).astype(dtype.np), name="u")

        def step(h: Node, x: Node) -> tuple[Node, Node]:
            h2 = gc.tanh(x @ w + h @ (u * 0.5))
            return h2, h2 * 2.0

        h, ys = gc.scan(step, gc.constant(np.zeros((B, H), dtype.np)), xs, reverse=reverse)
        loss = gc.sum(ys * ys) + gc.sum(h)
        g.add_signature("f", [xs], [h, ys, loss, *gc.grad(loss, [w, u, xs])])
    return g


def _xs(dtype: type = np.float64) -> list[np.ndarray]:
    return [np.random.default_rng(1).normal(size=(T, B, F)).astype(dtype)]


def test_the_input_projection_becomes_one_gemm_before_the_loop() -> None:
    g = _optimized(_rnn())
    forward = next(s for s in _scans(g) if not s.attrs["reverse"])
    body = forward.regions[0]
    assert _body_ops(forward).count("matmul") == 1  # only h @ u' is left
    (product,) = [n for n in body.needed_nodes() if n.op == "matmul"]
    assert product.inputs[1] in body.params[:forward.attrs["num_consts"]]  # u * 0.5, hoisted
    assert "mul" in _body_ops(forward)  # h2 * 2.0 is a result: it stays
    big = [n for n in g.nodes if n.op == "matmul" and n.shape == (T * B, H)]
    assert len(big) == 1 and big[0].inputs[0].shape == (T * B, F)
    scaled = [n for n in g.nodes if n.op == "mul" and n.shape == (H, H)]
    assert scaled, "u * 0.5 should be computed once, outside the loop"


@pytest.mark.parametrize("reverse", [False, True])
def test_hoisted_scan_equals_the_reference_with_gradients(reverse: bool) -> None:
    _check(_rnn(reverse), _xs())


def test_float32() -> None:
    g = _rnn(dtype=gc.float32)
    args = _xs(np.float32)
    expected = gc.reference(g, signature="f")(*args)
    got = gc.compile(g, signature="f", options=OPTIONS)(*args)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


def test_mapped_values_of_lower_rank_broadcast_against_invariants() -> None:
    """x_t (F,) * c (B, F) @ w: the stacked x gets a unit axis to line up with c."""
    rng = np.random.default_rng(2)
    with gc.Graph("bcast") as g:
        xs = gc.placeholder((T, F), gc.float64, name="xs")
        c = gc.placeholder((B, F), gc.float64, name="c")
        w = gc.variable(rng.normal(size=(F, H)), name="w")

        def step(h: Node, x: Node) -> tuple[Node, Node]:
            z = gc.transpose(gc.reshape((x * c) @ w, (B, H)), (0, 1))
            return h + gc.sigmoid(z), None

        h, _ = gc.scan(step, gc.constant(np.zeros((B, H))), xs)
        g.add_signature("f", [xs, c], [h, gc.grad(gc.sum(h * h), [w])[0]])
    forward = next(s for s in _scans(_optimized(g)) if not s.attrs["reverse"])
    assert "matmul" not in _body_ops(forward)
    _check(g, [rng.normal(size=(T, F)), rng.normal(size=(B, F))])


def test_results_random_ops_and_carry_work_stay_in_the_body() -> None:
    rng = np.random.default_rng(3)
    with gc.Graph("stay") as g:
        xs = gc.placeholder((T, B, F), gc.float64, name="xs")
        w = gc.variable(rng.normal(size=(F, H)), name="w")

        def step(h: Node, x: Node) -> tuple[Node, Node]:
            noise = gc.random_uniform((B, H), gc.float64, seed=4)
            return h * noise + 1.0, x @ w  # the product is a result: it stays

        h, ys = gc.scan(step, gc.constant(np.ones((B, H))), xs)
        g.add_signature("f", [xs], [h, ys])
    (scan,) = _scans(_optimized(g))
    assert {"matmul", "random_uniform"} <= set(_body_ops(scan))
    got = gc.compile(g, signature="f", options=OPTIONS)(*_xs())
    np.testing.assert_allclose(got[1], _xs()[0] @ g.variables["w"], rtol=1e-12)


def test_mapped_values_over_the_size_bound_stay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop_hoist, "MAX_HOISTED_BYTES", T * B * H * 8 - 1)
    g = _optimized(_rnn())
    forward = next(s for s in _scans(g) if not s.attrs["reverse"])
    assert _body_ops(forward).count("matmul") == 2
    _check(_rnn(), _xs())


def test_nested_loops_hoist_at_every_level() -> None:
    rng = np.random.default_rng(5)
    with gc.Graph("nested") as g:
        xs = gc.placeholder((3, T, B, F), gc.float64, name="xs")
        w = gc.variable(rng.normal(size=(F, H)), name="w")

        def inner(h: Node, x: Node) -> tuple[Node, Node]:
            return gc.tanh(h + x @ w), None

        def outer(h: Node, x: Node) -> tuple[Node, Node]:
            h2, _ = gc.scan(inner, h, x)
            return h2 * 0.5, None

        h, _ = gc.scan(outer, gc.constant(np.zeros((B, H))), xs)
        g.add_signature("f", [xs], [h, gc.grad(gc.sum(h), [w])[0]])
    _check(g, [rng.normal(size=(3, T, B, F))])


def test_the_pass_is_idempotent() -> None:
    g = _optimized(_rnn())
    for name in ("loop_hoist", "loop_sink"):
        again = run_pipeline(g, "f", dataclasses.replace(OPTIONS, pipeline=name))
        assert not again.report.passes[0].rules
        assert len(again.graph.nodes) == len(g.nodes)


# --- loop_sink ------------------------------------------------------------------------------

def _backward(g: Graph) -> Node:
    return next(s for s in _scans(g) if s.attrs["reverse"])


def test_weight_gradients_finish_after_the_backward_loop() -> None:
    """dW += h_{t-1}^T dz_t and dw += x_t^T dz_t: each one GEMM of depth T*B after the loop."""
    before = run_pipeline(_rnn(), "f", NO_HOIST).graph
    g = _optimized(_rnn())
    old, new = _backward(before), _backward(g)
    assert new.attrs["num_carry"] == old.attrs["num_carry"] - 2
    assert not [n for n in new.regions[0].needed_nodes()
                if n.op == "matmul" and n.attrs["transpose_a"]]
    deep = [n for n in g.nodes if n.op == "matmul" and n.attrs["transpose_a"]
            and n.inputs[0].shape[0] == T * B]
    assert {n.shape for n in deep} == {(F, H), (H, H)}


def test_sums_and_products_accumulated_over_steps() -> None:
    rng = np.random.default_rng(6)
    with gc.Graph("acc") as g:
        xs = gc.placeholder((T, B, F), gc.float64, name="xs")
        c = gc.placeholder((B, H), gc.float64, name="c")
        w = gc.variable(rng.normal(size=(F, H)), name="w")

        def step(carry: tuple, x: Node) -> tuple:
            h, s, m = carry
            z = gc.tanh(x @ w + h)
            return (z, s + gc.sum(z * c, axis=0), gc.matmul(x, z, transpose_a=True) + m), z

        init = (gc.constant(np.zeros((B, H))), gc.constant(np.ones(H)),
                gc.constant(np.full((F, H), 2.0)))
        (h, s, m), zs = gc.scan(step, init, xs)
        g.add_signature("f", [xs, c], [h, s, m, zs])
    (scan,) = _scans(_optimized(g))
    assert scan.attrs["num_carry"] == 1
    assert not {"sum", "matmul"} & set(_body_ops(scan))
    _check(g, [rng.normal(size=(T, B, F)), rng.normal(size=(B, H))])


def test_accumulations_read_inside_the_loop_stay() -> None:
    rng = np.random.default_rng(7)
    with gc.Graph("read") as g:
        xs = gc.placeholder((T, B, F), gc.float64, name="xs")

        def step(m: Node, x: Node) -> tuple[Node, Node]:
            return m + gc.matmul(x, x, transpose_a=True), m * 2.0  # m is read by a result

        m, ys = gc.scan(step, gc.constant(np.zeros((F, F))), xs)
        g.add_signature("f", [xs], [m, ys])
    (scan,) = _scans(_optimized(g))
    assert scan.attrs["num_carry"] == 1 and "matmul" in _body_ops(scan)
    _check(g, [rng.normal(size=(T, B, F))])


def test_new_stacked_factors_over_the_size_bound_stay(monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    monkeypatch.setattr(loop_hoist, "MAX_HOISTED_BYTES", 8)
    g = _optimized(_rnn())
    assert [n for n in _backward(g).regions[0].needed_nodes()
            if n.op == "matmul" and n.attrs["transpose_a"]]
