"""gc.grad: disconnected inputs, stop_gradient, integer paths, fan-out, VJPs, Hessian-vector
products and error messages. Expected values are numpy formulas or finite differences."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import graphc as gc

RNG = np.random.default_rng(0)


def _line() -> int:
    """The caller's current line (to check that errors point at the user's line)."""
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    return frame.f_back.f_lineno


def test_disconnected_variables_get_zeros_of_their_shape() -> None:
    with gc.Graph("d") as g:
        x = gc.placeholder((3,), "float64", name="x")
        used = gc.variable(np.ones(3), name="used")
        unused = gc.variable(np.full((2, 5), 4.0), name="unused")
        unused32 = gc.variable(np.full((4,), 4.0, np.float32), name="unused32")
        y = gc.sum(x * used)
        g_used, g_unused, g_unused32 = gc.grad(y, [used, unused, unused32])
    assert g_unused.type == unused.type and g_unused32.type == unused32.type
    xv = RNG.standard_normal(3)
    a, b, c = gc.reference(g, [x], [g_used, g_unused, g_unused32])(xv)
    np.testing.assert_array_equal(a, xv)
    np.testing.assert_array_equal(b, np.zeros((2, 5)))
    np.testing.assert_array_equal(c, np.zeros(4, np.float32))


def test_disconnected_raise_names_the_variable() -> None:
    with gc.Graph("d") as g:
        x = gc.placeholder((3,), "float64", name="x")
        unused = gc.variable(np.ones(3), name="unused")
        line = _line() + 1
        unused2 = gc.variable(np.ones(2), name="unused2")
        y = gc.sum(x * unused)
        assert gc.grad(y, unused, disconnected="raise").type == unused.type
        with pytest.raises(gc.GraphcError) as info:
            gc.grad(y, [unused, unused2], disconnected="raise")
    assert info.value.op == "grad"
    assert "%unused2" in str(info.value) and "does not depend" in str(info.value)
    assert info.value.loc is not None and info.value.loc.line == line
    with g, pytest.raises(gc.GraphcError, match="disconnected must be 'zero' or 'raise'"):
        gc.grad(y, unused, disconnected="ignore")


def test_stop_gradient_blocks_flow() -> None:
    with gc.Graph("s") as g:
        x = gc.placeholder((4,), "float64", name="x")
        y = gc.sum(x * gc.stop_gradient(x))  # d/dx = stop(x), not 2x
        gx = gc.grad(y, x)
        only_stopped = gc.sum(gc.stop_gradient(x) * 3.0)
        g_zero = gc.grad(only_stopped, x)
    xv = RNG.standard_normal(4)
    a, b = gc.reference(g, [x], [gx, g_zero])(xv)
    np.testing.assert_allclose(a, xv, rtol=1e-15)
    np.testing.assert_array_equal(b, np.zeros(4))


def test_integer_paths_give_no_gradient() -> None:
    with gc.Graph("i") as g:
        x = gc.placeholder((5,), "float64", name="x")
        rounded = gc.cast(gc.cast(x * 3.0, "int32"), "float64")  # through an int tensor
        picked = gc.cast(gc.argmax(x), "float64")  # an index
        y = gc.sum(x * x) + gc.sum(rounded) + picked * gc.sum(x)
        gx = gc.grad(y, x)
        gr = gc.grad(gc.sum(rounded), x)
    xv = np.array([0.3, -1.2, 2.1, 0.7, -0.4])
    a, b = gc.reference(g, [x], [gx, gr])(xv)
    np.testing.assert_allclose(a, 2 * xv + np.argmax(xv), rtol=1e-14)
    np.testing.assert_array_equal(b, np.zeros(5))


def test_integer_x_or_y_is_refused_by_name() -> None:
    with gc.Graph("i") as g:
        line = _line() + 1
        k = gc.placeholder((3,), "int32", name="k")
        x = gc.placeholder((3,), "float32", name="x")
        with pytest.raises(gc.GraphcError) as info:
            gc.grad(gc.sum(x), k)
        assert info.value.op == "grad" and "%k" in str(info.value) and "i32[3]" in str(info.value)
        assert info.value.loc is not None and info.value.loc.line == line
        with pytest.raises(gc.GraphcError, match=r"y .* must be a float tensor, got i32\[\]"):
            gc.grad(gc.sum(k), x)
    with gc.Graph("other"):
        foreign = gc.placeholder((3,), "float32", name="foreign")
    with g, pytest.raises(gc.GraphcError, match="not a node of graph 'i'"):
        gc.grad(gc.sum(x), foreign)


def test_a_node_used_many_times_accumulates() -> None:
    with gc.Graph("m") as g:
        x = gc.placeholder((6,), "float64", name="x")
        h = gc.tanh(x)
        y = gc.sum(x * x * x + x) + gc.sum(h * h) + gc.sum(h)  # x used 4x, h used 3x
        gx = gc.grad(y, x)
    xv = RNG.standard_normal(6)
    t = np.tanh(xv)
    expected = 3 * xv**2 + 1 + (2 * t + 1) * (1 - t * t)
    np.testing.assert_allclose(gc.reference(g, [x], gx)(xv), expected, rtol=1e-13)


def test_broadcast_operands_get_gradients_of_their_own_shape() -> None:
    with gc.Graph("b") as g:
        x = gc.placeholder((3, 4), "float64", name="x")
        row = gc.variable(RNG.standard_normal(4), name="row")
        col = gc.variable(RNG.standard_normal((3, 1)), name="col")
        y = gc.sum(gc.square(x * row + col))
        g_row, g_col = gc.grad(y, [row, col])
    xv = RNG.standard_normal((3, 4))
    r, c = g.variables["row"], g.variables["col"]
    a, b = gc.reference(g, [x], [g_row, g_col])(xv)
    inner = 2 * (xv * r + c)
    np.testing.assert_allclose(a, (inner * xv).sum(0), rtol=1e-13)
    np.testing.assert_allclose(b, inner.sum(1, keepdims=True), rtol=1e-13)


def test_non_scalar_y_needs_grad_y() -> None:
    with gc.Graph("n"):
        x = gc.placeholder((2, 3), "float32", name="x")
        line = _line() + 1
        y = gc.tanh(x)
        with pytest.raises(gc.ShapeError) as info:
            gc.grad(y, x)
        with pytest.raises(gc.ShapeError) as bad:
            gc.grad(y, x, grad_y=gc.placeholder((3, 2), "float32", name="u"))
    err = info.value
    assert err.op == "grad" and "grad_y" in str(err) and "(2, 3)" in str(err)
    assert err.loc is not None and err.loc.line == line
    assert bad.value.op == "grad"
    assert "grad_y: expected f32[2,3], got f32[3,2]" in str(bad.value)


def test_grad_y_gives_the_vector_jacobian_product() -> None:
    with gc.Graph("v") as g:
        x = gc.placeholder((3, 5), "float64", name="x")
        w = gc.variable(RNG.standard_normal((5, 4)), name="w")
        u = gc.placeholder((3, 4), "float64", name="u")
        y = gc.tanh(x @ w)
        gx, gw = gc.grad(y, [x, w], grad_y=u)
    xv, uv = RNG.standard_normal((3, 5)), RNG.standard_normal((3, 4))
    wv = g.variables["w"]
    a, b = gc.reference(g, [x, u], [gx, gw])(xv, uv)
    delta = uv * (1 - np.tanh(xv @ wv) ** 2)
    np.testing.assert_allclose(a, delta @ wv.T, rtol=1e-13)
    np.testing.assert_allclose(b, xv.T @ delta, rtol=1e-13)


def test_hessian_vector_product_matches_finite_differences() -> None:
    """H v = grad(<grad f, v>) on a tanh MLP, against central differences of grad f."""
    with gc.Graph("hvp") as g:
        x = gc.placeholder((6, 3), "float64", name="x")
        t = gc.placeholder((6, 2), "float64", name="t")
        w1 = gc.variable(RNG.standard_normal((3, 5)) * 0.8, name="w1")
        b1 = gc.variable(RNG.standard_normal(5) * 0.2, name="b1")
        w2 = gc.variable(RNG.standard_normal((5, 2)) * 0.8, name="w2")
        params = [w1, b1, w2]
        f = gc.mean(gc.square(gc.tanh(x @ w1 + b1) @ w2 - t))
        grads = gc.grad(f, params)
        vs = [gc.placeholder(p.shape, "float64", name=f"v_{p.name}") for p in params]
        directional = gc.sum(grads[0] * vs[0])
        for gp, v in zip(grads[1:], vs[1:]):
            directional = directional + gc.sum(gp * v)
        hv = gc.grad(directional, params)
    xv, tv = RNG.standard_normal((6, 3)), RNG.standard_normal((6, 2))
    vvals = [RNG.standard_normal(p.shape) for p in params]
    symbolic = gc.reference(g, [x, t, *vs], hv)(xv, tv, *vvals)
    gradient = gc.reference(g, [x, t], grads)

    eps = 1e-5
    saved = {p.name: g.variables[p.name].copy() for p in params}

    def grad_at(sign: float) -> list[np.ndarray]:
        for p, v in zip(params, vvals):
            g.variables[p.name] = saved[p.name] + sign * eps * v
        return list(gradient(xv, tv))

    plus, minus = grad_at(1.0), grad_at(-1.0)
    for p in params:
        g.variables[p.name] = saved[p.name]
    for p, s, gp, gm in zip(params, symbolic, plus, minus):
        fd = (gp - gm) / (2 * eps)
        assert np.abs(fd).max() > 1e-3, p.name  # a non-trivial curvature
        np.testing.assert_allclose(s, fd, rtol=1e-6, atol=1e-8, err_msg=p.name)
