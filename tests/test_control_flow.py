"""scan, cond and while_loop: semantics against Python loops over the same ops (unrolled
graphs, float64 to 1e-12), gradients (finite differences and the unrolled graph's),
closure conversion, errors, and compiled code (lowered by `lower_control`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import graphc as gc
from graphc.errors import CompileError, GraphcError, ShapeError
from graphc.ir import TupleType
from graphc.passes.lower_control import unroll_control

RNG = np.random.default_rng(7)
W = RNG.uniform(-0.8, 0.8, (3, 3))
H0 = RNG.standard_normal(3)
XS = RNG.standard_normal((5, 3))


def _cell(w: gc.Node) -> Callable[[Any, gc.Node], tuple[Any, gc.Node]]:
    """A cell with two carries and one output, reading `w` from outside (captured)."""

    def cell(carry: tuple[gc.Node, gc.Node], x: gc.Node) -> tuple[Any, gc.Node]:
        h, s = carry
        h2 = gc.tanh(h @ w + x * 2.0)
        return (h2, s + gc.sum(h2 * x)), gc.sin(h) * x

    return cell


def _loop(cell: Callable[..., Any], init: Any, xs: gc.Node, reverse: bool) -> tuple[Any, Any]:
    """The Python loop `scan` means, building one copy of the cell per step."""
    carry, ys = init, [None] * xs.shape[0]
    for t in (reversed(range(xs.shape[0])) if reverse else range(xs.shape[0])):
        carry, ys[t] = cell(carry, xs[t])
    return carry, gc.stack(ys)


def _scan_graph(use_scan: bool, reverse: bool) -> list[np.ndarray]:
    with gc.Graph("g") as g:
        w = gc.placeholder((3, 3), gc.float64, name="w")
        h0 = gc.placeholder((3,), gc.float64, name="h0")
        xs = gc.placeholder((5, 3), gc.float64, name="xs")
        init = (h0, gc.constant(0.0, gc.float64))
        run = gc.scan if use_scan else _loop
        (h_t, s_t), ys = run(_cell(w), init, xs, reverse=reverse)
        loss = gc.sum(h_t * h_t) + s_t * 0.5 + gc.sum(ys * ys)
        grads = gc.grad(loss, [w, h0, xs])
    return gc.reference(g, [w, h0, xs], [h_t, s_t, ys, loss, *grads])(W, H0, XS)


@pytest.mark.parametrize("reverse", [False, True])
def test_scan_equals_the_unrolled_loop_forward_and_gradients(reverse: bool) -> None:
    scanned = _scan_graph(True, reverse)
    unrolled = _scan_graph(False, reverse)
    for a, b in zip(scanned, unrolled):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert np.abs(scanned[4]).max() > 1e-3  # the gradient of w is not trivially zero


def test_scan_builds_one_body_whatever_the_length() -> None:
    sizes = []
    for length in (4, 64):
        with gc.Graph("g") as g:
            xs = gc.placeholder((length, 3), gc.float64)
            gc.scan(lambda c, x: (c * x + 1.0, c), gc.constant(np.ones(3)), xs)
        sizes.append((len(g.nodes), len(g.nodes[2].regions[0].graph.nodes)))
    assert sizes[0] == sizes[1]


@pytest.mark.parametrize("reverse", [False, True])
def test_check_grad_scan_carry_and_stacked_outputs(reverse: bool) -> None:
    def fn(w: gc.Node, h0: gc.Node, xs: gc.Node) -> gc.Node:
        (h_t, s_t), ys = gc.scan(_cell(w), (h0, gc.constant(0.0, gc.float64)), xs,
                                 reverse=reverse)
        return gc.concat([h_t, gc.reshape(s_t, (1,)), gc.reshape(ys, (15,))])

    gc.check_grad(fn, [W, H0, XS]).assert_ok(1e-6)


def test_check_grad_nested_scan_reading_an_outer_value() -> None:
    def fn(w: gc.Node, xs: gc.Node) -> gc.Node:
        def outer(c: gc.Node, x: gc.Node) -> tuple[gc.Node, gc.Node]:
            inner, _ = gc.scan(lambda d, z: (gc.tanh(d @ w + z), None), c,
                               gc.stack([x, x * 0.5]))
            return inner, inner * c
        h, ys = gc.scan(outer, xs[0], xs)
        return h + gc.sum(ys, axis=0)

    gc.check_grad(fn, [W, XS]).assert_ok(1e-6)


def _cond_fn(x: gc.Node, y: gc.Node) -> gc.Node:
    out = gc.cond(gc.sum(x) > 0.0, lambda a, b: (a * b, gc.exp(b)),
                  lambda a, b: (a - b, a * gc.tanh(b) * y), x, y)
    return out[0] + out[1]


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_cond_takes_one_branch_and_its_gradient(sign: float) -> None:
    x = np.abs(RNG.standard_normal(3)) * sign
    y = RNG.standard_normal(3)
    with gc.Graph("g") as g:
        px, py = gc.placeholder((3,), gc.float64), gc.placeholder((3,), gc.float64)
        out = _cond_fn(px, py)
        grads = gc.grad(gc.sum(out), [px, py])
    got = gc.reference(g, [px, py], [out, *grads])(x, y)
    if sign > 0:
        expected = [x * y + np.exp(y), y, x + np.exp(y)]
    else:
        t = np.tanh(y)
        expected = [x - y + x * t * y, 1 + t * y, -1 + x * (1 - t * t) * y + x * t]
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    gc.check_grad(_cond_fn, [x, y]).assert_ok(1e-6)


def test_while_loop_runs_to_a_data_dependent_count() -> None:
    with gc.Graph("g") as g:
        limit = gc.placeholder((), gc.float64, name="limit")
        i, v = gc.while_loop(lambda c: c[1] < limit,
                             lambda c: (c[0] + 1, c[1] * 2.0), (gc.constant(0), limit * 0 + 1))
    run = gc.reference(g, [limit], [i, v])
    for bound in (1.0, 5.0, 100.0):
        count, value = run(np.array(bound))
        expected = int(np.ceil(np.log2(bound))) if bound > 1 else 0
        assert int(count) == expected and float(value) == 2.0 ** expected


def test_while_loop_is_not_differentiable_but_compiled() -> None:
    with gc.Graph("g") as g:
        x = gc.placeholder((), gc.float64, name="x")
        (v,) = gc.while_loop(lambda c: c[0] < 10.0, lambda c: (c[0] * 2.0,), (x,))
        with pytest.raises(GraphcError, match=r"not differentiable.*use scan"):
            gc.grad(v, x)
    run, ref = gc.compile(g, [x], [v]), gc.reference(g, [x], [v])
    for start in (0.6, 1.0, 20.0):  # 5, 4 and 0 trips
        assert float(run(np.array(start))[0]) == float(ref(np.array(start))[0])
    with pytest.raises(CompileError, match=r"while_loop.*cannot be unrolled"):
        unroll_control(g, g.add_signature("s", [x], [v]))


def test_compiled_scan_and_cond_equal_the_reference() -> None:
    with gc.Graph("g") as g:
        w = gc.placeholder((3, 3), gc.float64, name="w")
        h0 = gc.placeholder((3,), gc.float64, name="h0")
        xs = gc.placeholder((5, 3), gc.float64, name="xs")
        (h_t, s_t), ys = gc.scan(_cell(w), (h0, gc.constant(0.0, gc.float64)), xs)
        picked = _cond_fn(h_t, h0)
        loss = gc.sum(picked) + s_t + gc.sum(ys)
        grads = gc.grad(loss, [w, h0, xs])
    outputs = [picked, loss, *grads]
    expected = gc.reference(g, [w, h0, xs], outputs)(W, H0, XS)
    for sign in (1.0, -1.0):
        expected = gc.reference(g, [w, h0, xs], outputs)(W, H0 * sign, XS)
        actual = gc.compile(g, [w, h0, xs], outputs)(W, H0 * sign, XS)
        for a, b in zip(actual, expected):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_region_node_is_a_tuple_read_by_get() -> None:
    with gc.Graph("g") as g:
        xs = gc.placeholder((4, 2))
        c, ys = gc.scan(lambda c, x: (c + x, c * x), gc.constant(np.zeros(2, np.float32)), xs)
    scan = c.inputs[0]
    assert c.op == "get" and ys.inputs[0] is scan and isinstance(scan.type, TupleType)
    assert str(scan.type) == "(f32[2], f32[4,2])"
    body = scan.regions[0]
    assert [p.op for p in body.params] == ["placeholder", "placeholder"]
    with pytest.raises(GraphcError, match="several results"):
        _ = scan.shape
    with pytest.raises(GraphcError, match="get"):
        gc.add(scan, scan)
    with pytest.raises(GraphcError, match="several results"):
        g.add_signature("bad", [xs], [scan])


def test_errors_name_the_op_and_what_changed() -> None:
    with gc.Graph("g"):
        xs = gc.placeholder((4, 2))
        init = gc.constant(np.zeros(2, np.float32))
        with pytest.raises(GraphcError, match=r"scan.*carry 0.*f32\[2\].*f32\[1,2\]"):
            gc.scan(lambda c, x: (gc.reshape(c, (1, 2)), x), init, xs)
        with pytest.raises(GraphcError, match=r"scan.*structure"):
            gc.scan(lambda c, x: ((c, c), x), init, xs)
        with pytest.raises(ShapeError, match=r"leading axes.*disagree"):
            gc.scan(lambda c, x: (c, x), init, xs, length=3)
        with pytest.raises(GraphcError, match="pair"):
            gc.scan(lambda c, x: c, init, xs)
        with pytest.raises(GraphcError, match=r"cond.*pred.*bool"):
            gc.cond(gc.sum(xs), lambda a: a, lambda a: a, init)
        with pytest.raises(GraphcError, match=r"cond.*result 0.*f32\[2\].*f32\[\]"):
            gc.cond(gc.sum(xs) > 0.0, lambda a: a, lambda a: gc.sum(a), init)
        with pytest.raises(GraphcError, match=r"while_loop.*cond_fn.*bool"):
            gc.while_loop(lambda c: c, lambda c: c, init)


def test_scan_without_xs_needs_a_length() -> None:
    with gc.Graph("g") as g:
        init = gc.placeholder((), gc.float64, name="x")
        with pytest.raises(ShapeError, match="length is required"):
            gc.scan(lambda c, x: (c, c), init, None)
        c, ys = gc.scan(lambda c, _: (c * 2.0, c), init, None, length=4)
    got = gc.reference(g, [init], [c, ys])(np.array(1.5))
    np.testing.assert_array_equal(got[1], [1.5, 3.0, 6.0, 12.0])
    assert float(got[0]) == 24.0


def test_zero_length_scan() -> None:
    with gc.Graph("g") as g:
        xs = gc.placeholder((0, 3), gc.float64, name="xs")
        h0 = gc.placeholder((3,), gc.float64, name="h0")
        h, ys = gc.scan(lambda c, x: (c + x, c * x), h0, xs)
        dh = gc.grad(gc.sum(h) + gc.sum(ys), h0)
    for run in (gc.reference, gc.compile):
        h_v, ys_v, dh_v = run(g, [xs, h0], [h, ys, dh])(np.zeros((0, 3)), H0)
        np.testing.assert_array_equal(h_v, H0)
        assert ys_v.shape == (0, 3)
        np.testing.assert_array_equal(dh_v, np.ones(3))
