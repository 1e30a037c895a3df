"""The conv family beyond the op table: build-time errors, "same" sizes, ties, second order,
and a small CNN that trains on the reference interpreter."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import graphc as gc
from graphc.builder import apply
from graphc.ops import registry
from tests.op_cases.conv import np_max_pool2d_grad


def _next_line() -> int:
    """The line after the caller's: where the node under test is built."""
    return sys._getframe(1).f_lineno + 1


def _check(info: pytest.ExceptionInfo, op: str, line: int, *fragments: str) -> None:
    err = info.value
    assert err.op == op
    assert err.loc is not None and err.loc.line == line and err.loc.file == __file__
    for fragment in fragments:
        assert fragment in str(err), f"{fragment!r} not in {str(err)!r}"


# --- build-time errors ----------------------------------------------------------------------

def test_conv2d_rejects_wrong_ranks() -> None:
    with gc.Graph():
        x3 = gc.placeholder((2, 3, 5))
        x = gc.placeholder((2, 3, 5, 5))
        w2 = gc.placeholder((4, 27))
        with pytest.raises(gc.ShapeError) as info:
            line = _next_line()
            gc.conv2d(x3, gc.placeholder((4, 3, 3, 3)))
        _check(info, "conv2d", line, "x:", "rank-4 NCHW", "f32[2,3,5]")
        with pytest.raises(gc.ShapeError) as info:
            line = _next_line()
            gc.conv2d(x, w2)
        _check(info, "conv2d", line, "w:", "rank-4 OIHW", "f32[4,27]")


def test_conv2d_channel_mismatch_names_both_counts() -> None:
    with gc.Graph():
        x = gc.placeholder((2, 4, 5, 5))
        w = gc.placeholder((6, 3, 3, 3))
        with pytest.raises(gc.ShapeError) as info:
            line = _next_line()
            gc.conv2d(x, w)
        _check(info, "conv2d", line, "x f32[2,4,5,5]", "C=4", "w f32[6,3,3,3]",
                "C/groups*groups = 3*1 = 3")
        with pytest.raises(gc.ShapeError) as info:
            line = _next_line()
            gc.conv2d(x, gc.placeholder((6, 1, 3, 3)), groups=2)
        _check(info, "conv2d", line, "C=4", "1*2 = 2")


def test_conv2d_rejects_bad_groups() -> None:
    with gc.Graph():
        x = gc.placeholder((1, 4, 5, 5))
        with pytest.raises(gc.ShapeError) as info:
            line = _next_line()
            gc.conv2d(x, gc.placeholder((6, 1, 3, 3)), groups=3)
        _check(info, "conv2d", line, "C=4", "not divisible by groups=3")
        with pytest.raises(gc.ShapeError) as info:
            line = _next_line()
            gc.conv2d(x, gc.placeholder((5, 2, 3, 3)), groups=2)
        _check(info, "conv2d", line, "O=5", "not divisible by groups=2", "f32[5,2,3,3]")
        with pytest.raises(gc.AttrError) as info:
            line = _next_line()
            gc.conv2d(x, gc.placeholder((4, 4, 3, 3)), groups=0)
        _check(info, "conv2d", line, "groups", "positive int", "0")


def test_conv2d_non_positive_output_names_the_computed_size() -> None:
    with gc.Graph():
        x = gc.placeholder((1, 1, 3, 8))
        with pytest.raises(gc.ShapeError) as info:
            line = _next_line()
            gc.conv2d(x, gc.placeholder((1, 1, 5, 3)))
        # (3 + 0 + 0 - 1*(5-1) - 1)//1 + 1 = -1
        _check(info, "conv2d", line, "output height", "= -1 is not positive", "f32[1,1,3,8]")
        with pytest.raises(gc.ShapeError) as info:
            line = _next_line()
            gc.conv2d(x, gc.placeholder((1, 1, 1, 3)), dilation=(1, 4))
        # effective width 4*(3-1)+1 = 9 > 8: (8 - 8 - 1)//1 + 1 = 0
        _check(info, "conv2d", line, "output width", "= 0 is not positive", "extent 9")


def test_conv2d_rejects_dtypes() -> None:
    with gc.Graph():
        x = gc.placeholder((1, 2, 4, 4), gc.float32)
        with pytest.raises(gc.DTypeError) as info:
            line = _next_line()
            gc.conv2d(x, gc.placeholder((3, 2, 3, 3), gc.float64))
        _check(info, "conv2d", line, "w:", "f64[3,2,3,3]", "float32", "gc.cast")
        with pytest.raises(gc.DTypeError) as info:
            line = _next_line()
            gc.conv2d(gc.placeholder((1, 2, 4, 4), gc.int32), gc.placeholder((3, 2, 3, 3),
                                                                             gc.int32))
        _check(info, "conv2d", line, "x:", "float", "i32[1,2,4,4]")


def test_conv2d_rejects_bad_arguments_at_the_user_line() -> None:
    with gc.Graph():
        x = gc.placeholder((1, 2, 4, 4))
        w = gc.placeholder((3, 2, 3, 3))
        with pytest.raises(gc.AttrError) as info:
            line = _next_line()
            gc.conv2d(x, w, padding="full")
        _check(info, "conv2d", line, "padding", "'same'", "'full'")
        with pytest.raises(gc.AttrError) as info:
            line = _next_line()
            gc.conv2d(x, w, stride=(1, 0))
        _check(info, "conv2d", line, "stride", "positive", "(1, 0)")
        with pytest.raises(gc.AttrError) as info:
            line = _next_line()
            gc.conv2d(x, w, padding=-1)
        _check(info, "conv2d", line, "padding", "-1")
        with pytest.raises(gc.ShapeError) as info:
            line = _next_line()
            gc.conv2d(x, w, bias=gc.placeholder((2,)))
        _check(info, "conv2d", line, "bias", "(3,)", "f32[2]")


def test_type_rule_validates_attributes_not_only_builders() -> None:
    """Attributes can come from a parsed file: the type rule checks them itself."""
    conv = registry.get("conv2d")
    good = {"strides": (1, 1), "pads": ((0, 0), (0, 0)), "dilation": (1, 1), "groups": 1}
    with gc.Graph():
        x = gc.placeholder((1, 2, 4, 4))
        w = gc.placeholder((3, 2, 3, 3))
        assert apply(conv, [x, w], good).shape == (1, 3, 2, 2)
        for key, bad in [("strides", (0, 1)), ("pads", ((0, -1), (0, 0))), ("dilation", 2),
                         ("groups", True)]:
            with pytest.raises(gc.AttrError, match=key):
                apply(conv, [x, w], {**good, key: bad})
        with pytest.raises(gc.AttrError, match="missing attribute 'pads'"):
            apply(conv, [x, w], {k: v for k, v in good.items() if k != "pads"})


def test_grad_ops_check_g_against_the_forward_shape() -> None:
    with gc.Graph():
        w = gc.placeholder((4, 3, 3, 3))
        g = gc.placeholder((2, 4, 2, 3))
        with pytest.raises(gc.ShapeError) as info:
            line = _next_line()
            gc.conv2d_grad_input(g, w, (2, 3, 5, 5))
        _check(info, "conv2d_grad_input", line, "g:", "expected f32[2,4,3,3]", "f32[2,4,2,3]")
        with pytest.raises(gc.ShapeError) as info:
            line = _next_line()
            gc.conv2d_grad_weight(gc.placeholder((2, 3, 5, 5)), g, (4, 3, 3, 3))
        _check(info, "conv2d_grad_weight", line, "expected f32[2,4,3,3]", "f32[2,4,2,3]")
        with pytest.raises(gc.AttrError) as info:
            line = _next_line()
            gc.conv2d_grad_input(g, w, (2, 3, 5))
        _check(info, "conv2d_grad_input", line, "input_shape", "4 non-negative ints")


def test_pool_errors() -> None:
    with gc.Graph():
        x = gc.placeholder((1, 2, 4, 4))
        with pytest.raises(gc.AttrError) as info:
            line = _next_line()
            gc.max_pool2d(x, 2, padding=2)
        _check(info, "max_pool2d", line, "pads ((2, 2), (2, 2))", "smaller than the kernel")
        with pytest.raises(gc.ShapeError) as info:
            line = _next_line()
            gc.avg_pool2d(x, (5, 2))
        _check(info, "avg_pool2d", line, "output height", "= 0 is not positive")
        with pytest.raises(gc.ShapeError) as info:
            line = _next_line()
            gc.max_pool2d_grad(x, gc.placeholder((1, 2, 3, 3)), 2)
        _check(info, "max_pool2d_grad", line, "g:", "expected f32[1,2,2,2]", "f32[1,2,3,3]")
        with pytest.raises(gc.ShapeError) as info:
            line = _next_line()
            gc.max_pool2d(gc.placeholder((2, 4, 4)), 2)
        _check(info, "max_pool2d", line, "x:", "rank-4", "f32[2,4,4]")
        with pytest.raises(gc.DTypeError) as info:
            line = _next_line()
            gc.avg_pool2d(gc.placeholder((1, 1, 4, 4), gc.int64), 2)
        _check(info, "avg_pool2d", line, "x:", "float", "i64[1,1,4,4]")
        with pytest.raises(gc.ShapeError) as info:
            line = _next_line()
            gc.global_avg_pool2d(gc.placeholder((2, 4)))
        _check(info, "global_avg_pool2d", line, "rank-4", "f32[2,4]")


# --- "same" padding -------------------------------------------------------------------------

@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("kernel", [1, 2, 3, 4])
@pytest.mark.parametrize("dilation", [1, 2])
def test_same_padding_output_is_ceil_of_input_over_stride(stride: int, kernel: int,
                                                          dilation: int) -> None:
    with gc.Graph():
        for h in range(1, 9):
            x = gc.placeholder((1, 1, h, h + 3))
            w = gc.placeholder((1, 1, kernel, kernel))
            y = gc.conv2d(x, w, stride=stride, padding="same", dilation=dilation)
            assert y.shape[2:] == (-(-h // stride), -(-(h + 3) // stride))
            # The pads add up to exactly what the last window needs; the odd one goes last.
            for size, (lo, hi) in zip((h, h + 3), y.attrs["pads"]):
                need = (-(-size // stride) - 1) * stride + dilation * (kernel - 1) + 1 - size
                assert lo + hi == max(need, 0) and hi - lo in (0, 1)
            if dilation == 1:
                p = gc.max_pool2d(x, kernel, stride, "same")
                assert p.shape == y.shape and p.attrs["pads"] == y.attrs["pads"]


def test_padding_spellings_are_equivalent() -> None:
    with gc.Graph():
        x = gc.placeholder((1, 1, 6, 6))
        w = gc.placeholder((1, 1, 3, 3))
        pads = [gc.conv2d(x, w, padding=p).attrs["pads"]
                for p in (1, (1, 1), [[1, 1], [1, 1]], "same")]
        assert all(p == ((1, 1), (1, 1)) for p in pads)
        assert gc.conv2d(x, w, padding="valid").attrs["pads"] == ((0, 0), (0, 0))
        assert gc.max_pool2d(x, 3).attrs["strides"] == (3, 3)  # stride defaults to the kernel


# --- values beyond the op table -------------------------------------------------------------

def test_max_pool_gradient_breaks_ties_at_the_first_maximum() -> None:
    """Like PyTorch: within a window scanned row by row, the first maximum gets g."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 2, (2, 3, 7, 6)).astype(np.float64)  # many ties
    x[0, 0] = 1.0  # a whole plane of ties
    with gc.Graph() as g:
        xs = gc.placeholder(x.shape, gc.float64, name="x")
        y = gc.max_pool2d(xs, 3, 2, 1)
        gy = gc.placeholder(y.shape, gc.float64, name="gy")
        dx = gc.grad(y, xs, grad_y=gy)
    assert dx.op == "max_pool2d_grad"
    g_value = rng.standard_normal(y.shape)
    actual = gc.reference(g, inputs=[xs, gy], outputs=dx)(x, g_value)
    expected = np_max_pool2d_grad(x, g_value, (3, 3), (2, 2), ((1, 1), (1, 1)))
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12)
    # On the all-ties plane every window's g lands on its first real element.
    first = np.zeros((7, 6))
    for oy in range(y.shape[2]):
        for ox in range(y.shape[3]):
            first[max(2 * oy - 1, 0), max(2 * ox - 1, 0)] += g_value[0, 0, oy, ox]
    np.testing.assert_allclose(actual[0, 0], first, rtol=1e-12, atol=1e-12)


def test_conv_gradient_is_built_from_the_grad_primitives() -> None:
    with gc.Graph() as g:
        x = gc.placeholder((2, 4, 6, 6), gc.float64, name="x")
        w = gc.placeholder((6, 2, 3, 3), gc.float64, name="w")
        loss = gc.sum(gc.conv2d(x, w, stride=2, padding="same", groups=2))
        dx, dw = gc.grad(loss, [x, w])
    assert (dx.op, dw.op) == ("conv2d_grad_input", "conv2d_grad_weight")
    assert dx.attrs["input_shape"] == x.shape and dw.attrs["weight_shape"] == w.shape
    gc.verify(g)


def _flat_grads(loss: gc.Node, wrt: list[gc.Node]) -> gc.Node:
    return gc.concat([gc.reshape(d, (-1,)) for d in gc.grad(loss, wrt)])


def test_second_order_through_conv_and_pools() -> None:
    """Gradients of gradients (Hessian-vector products) against finite differences."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 7, 6))
    w = rng.standard_normal((6, 2, 3, 2))

    def conv_hvp(xs: gc.Node, ws: gc.Node) -> gc.Node:
        y = gc.conv2d(xs, ws, stride=2, padding="same", dilation=(1, 2), groups=2)
        return _flat_grads(gc.sum(gc.tanh(y)), [xs, ws])

    gc.check_grad(conv_hvp, [x, w]).assert_ok()
    xd = rng.permutation(x.size).reshape(x.shape) / x.size  # distinct: no ties

    def pool_hvp(xs: gc.Node) -> gc.Node:
        m = gc.max_pool2d(xs, 3, 2, "same")
        a = gc.avg_pool2d(xs, 2, 1, 1, count_include_pad=False)
        return _flat_grads(gc.sum(m * m * m) + gc.sum(gc.sin(a)), [xs])

    gc.check_grad(pool_hvp, [xd]).assert_ok()


def test_small_cnn_trains_on_the_reference_interpreter() -> None:
    """conv -> relu -> max pool -> conv -> avg pool -> global pool, plain SGD: the loss on a
    translation-invariant synthetic task (vertical or horizontal bar?) must drop a lot."""
    rng = np.random.default_rng(3)
    n = 32
    images = rng.normal(0.0, 0.1, (n, 1, 8, 8)).astype(np.float32)
    vertical = rng.random(n) < 0.5
    for k in range(n):
        r, c = rng.integers(0, 5, 2)
        if vertical[k]:
            images[k, 0, r:r + 3, c] += 1.0
        else:
            images[k, 0, r, c:c + 3] += 1.0
    target = np.where(vertical, 1.0, -1.0).astype(np.float32)
    with gc.Graph() as g:
        x = gc.placeholder(images.shape, gc.float32, name="x")
        t = gc.placeholder((n,), gc.float32, name="t")
        w1 = gc.variable(rng.normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32), name="w1")
        b1 = gc.variable(np.zeros(4, np.float32), name="b1")
        w2 = gc.variable(rng.normal(0, 0.3, (2, 4, 3, 3)).astype(np.float32), name="w2")
        h = gc.max_pool2d(gc.relu(gc.conv2d(x, w1, padding="same", bias=b1)), 2)
        h = gc.avg_pool2d(gc.conv2d(h, w2, padding=1), 3, 1, 1, count_include_pad=False)
        pooled = gc.global_avg_pool2d(h)  # (n, 2): evidence for each class
        score = gc.sum(pooled * np.array([1.0, -1.0], np.float32), axis=1)
        loss = gc.mean(gc.square(score - t))
        params = [w1, b1, w2]
        updates = {p: p - 0.2 * d for p, d in zip(params, gc.grad(loss, params))}
    step = gc.reference(g, inputs=[x, t], outputs=loss, updates=updates)
    losses = [float(step(images, target)) for _ in range(80)]
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.3 * losses[0], losses
