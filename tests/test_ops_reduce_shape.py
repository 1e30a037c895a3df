"""Reduce and shape ops: build-time errors (op, operand, types, user line) and edge cases."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np
import pytest

import graphc as gc


def _line() -> int:
    """The caller's line number (to compare with err.loc.line)."""
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    return frame.f_back.f_lineno


def _run(build: Callable[..., gc.Node | list[gc.Node]], *arrays: np.ndarray) -> list[np.ndarray]:
    """Build `build(*placeholders)` and evaluate it (and its gradient nodes) on `arrays`."""
    with gc.Graph("t") as g:
        phs = [gc.placeholder(a.shape, a.dtype.name, name=f"a{i}") for i, a in enumerate(arrays)]
        out = build(*phs)
    outs = out if isinstance(out, list) else [out]
    gc.verify(g)
    return list(gc.reference(g, inputs=phs, outputs=outs)(*arrays))


def _grad(fn: Callable[[gc.Node], gc.Node], x: np.ndarray) -> np.ndarray:
    """d sum(fn(x)) / dx evaluated with the reference interpreter."""
    return _run(lambda p: gc.grad(gc.sum(fn(p)), p), x)[0]


# --- errors -------------------------------------------------------------------------------

def _error(exc_type: type[gc.GraphcError], build: Callable[[gc.Node], object],
           shape: tuple[int, ...] = (2, 3), dtype: gc.DType = gc.float32) -> gc.GraphcError:
    with gc.Graph("g"):
        x = gc.placeholder(shape, dtype, name="x")
        with pytest.raises(exc_type) as info:
            build(x)
    return info.value


def test_bad_axis_names_op_axis_rank_and_user_line() -> None:
    with gc.Graph("g"):
        x = gc.placeholder((2, 3), name="x")
        with pytest.raises(gc.AttrError) as info:
            line = _line() + 1
            gc.sum(x, axis=2)
    err = info.value
    assert err.op == "sum" and err.loc is not None and err.loc.line == line
    assert err.loc.file == __file__
    assert "axis 2" in str(err) and "rank 2" in str(err)


@pytest.mark.parametrize("fn", [gc.max, gc.min, gc.prod, gc.mean, gc.var, gc.logsumexp])
def test_bad_axis_in_every_reduction(fn: Callable[..., gc.Node]) -> None:
    err = _error(gc.AttrError, lambda x: fn(x, axis=-3))
    assert err.op is not None and "-3" in err.message and "rank 2" in err.message


def test_repeated_axis_is_rejected() -> None:
    err = _error(gc.AttrError, lambda x: gc.sum(x, axis=(1, -1)))
    assert err.op == "sum" and "repeated axis" in err.message


def test_float_only_composites_reject_ints_naming_the_type() -> None:
    err = _error(gc.DTypeError, lambda x: gc.mean(x), dtype=gc.int32)
    assert err.op == "mean" and "i32[2,3]" in err.message and "float" in err.message


def test_argmax_takes_one_axis_or_none() -> None:
    err = _error(gc.AttrError, lambda x: gc.argmax(x, axis=(0, 1)))
    assert err.op == "argmax" and "one int" in err.message


def test_max_over_an_empty_axis_has_no_identity() -> None:
    err = _error(gc.ShapeError, lambda x: gc.max(x, axis=1), shape=(2, 0))
    assert err.op == "max" and "f32[2,0]" in err.message and "axis 1" in err.message


def test_reshape_size_mismatch_names_both_shapes_and_line() -> None:
    with gc.Graph("g"):
        x = gc.placeholder((2, 3), name="x")
        with pytest.raises(gc.ShapeError) as info:
            line = _line() + 1
            gc.reshape(x, (4, 2))
    err = info.value
    assert err.op == "reshape" and err.loc is not None and err.loc.line == line
    assert "f32[2,3]" in str(err) and "(4, 2)" in str(err)
    assert "6 elements" in str(err) and "8 elements" in str(err)


def test_reshape_unresolvable_minus_one_and_two_minus_ones() -> None:
    err = _error(gc.ShapeError, lambda x: gc.reshape(x, (4, -1)))
    assert err.op == "reshape" and "f32[2,3]" in err.message and "(4, -1)" in err.message
    err = _error(gc.AttrError, lambda x: gc.reshape(x, (-1, -1)))
    assert "at most one -1" in err.message


def test_bad_perm_names_perm_and_operand() -> None:
    with gc.Graph("g"):
        x = gc.placeholder((2, 3, 4), name="x")
        with pytest.raises(gc.AttrError) as info:
            line = _line() + 1
            gc.transpose(x, (0, 0, 1))
    err = info.value
    assert err.op == "transpose" and err.loc is not None and err.loc.line == line
    assert "(0, 0, 1)" in err.message and "f32[2,3,4]" in err.message
    err = _error(gc.AttrError, lambda x: gc.transpose(x, (0, 5)))
    assert err.op == "transpose" and "5" in err.message


def test_broadcast_to_error_names_shapes() -> None:
    err = _error(gc.ShapeError, lambda x: gc.broadcast_to(x, (2, 4)))
    assert err.op == "broadcast_to" and "f32[2,3]" in err.message and "(2, 4)" in err.message
    _error(gc.ShapeError, lambda x: gc.broadcast_to(x, (3,)))


def test_concat_mismatch_names_operand_index_and_line() -> None:
    with gc.Graph("g"):
        a = gc.placeholder((2, 3), name="a")
        b = gc.placeholder((2, 5), name="b")
        c = gc.placeholder((3, 5), name="c")
        with pytest.raises(gc.ShapeError) as info:
            line = _line() + 1
            gc.concat([a, b, c], axis=1)
    err = info.value
    assert err.op == "concat" and err.loc is not None and err.loc.line == line
    assert "operand 2" in err.message and "f32[3,5]" in err.message
    assert "f32[2,*]" in err.message


def test_concat_dtype_mismatch_and_scalars() -> None:
    with gc.Graph("g"):
        a = gc.placeholder((2,), gc.float32)
        b = gc.placeholder((2,), gc.float64)
        with pytest.raises(gc.DTypeError, match=r"operand 1.*f64\[2\]"):
            gc.concat([a, b])
        s = gc.placeholder(())
        with pytest.raises(gc.ShapeError, match=r"scalars.*gc.stack"):
            gc.concat([s, s])
        with pytest.raises(gc.AttrError, match="non-empty list"):
            gc.concat([])


def test_stack_mismatch_names_operand_index() -> None:
    with gc.Graph("g"):
        a = gc.placeholder((2, 3))
        b = gc.placeholder((3, 2))
        with pytest.raises(gc.ShapeError) as info:
            line = _line() + 1
            gc.stack([a, a, b])
    assert info.value.op == "stack" and info.value.loc.line == line
    assert "operand 2" in info.value.message and "f32[3,2]" in info.value.message


def test_slice_pad_squeeze_split_errors() -> None:
    assert "zero" in _error(gc.AttrError, lambda x: gc.slice(x, [0], [2], [0])).message
    assert _error(gc.AttrError, lambda x: gc.slice(x, [0, 0], [1])).op == "slice"
    assert ">= 0" in _error(gc.AttrError, lambda x: gc.pad(x, [(1, -1), (0, 0)])).message
    assert _error(gc.AttrError, lambda x: gc.pad(x, [1, 2, 3])).op == "pad"
    err = _error(gc.ShapeError, lambda x: gc.squeeze(x, 0))
    assert err.op == "squeeze" and "f32[2,3]" in err.message
    err = _error(gc.ShapeError, lambda x: gc.split(x, 2, axis=1))
    assert err.op == "split" and "2 equal parts" in err.message


# --- edge cases ---------------------------------------------------------------------------

def test_keepdims_negative_axes_and_empty_axes_shapes() -> None:
    with gc.Graph("g"):
        x = gc.placeholder((2, 3, 4))
        assert gc.sum(x, axis=(-1, 0), keepdims=True).shape == (1, 3, 1)
        assert gc.max(x, axis=-2).shape == (2, 4)
        assert gc.mean(x, axis=()).shape == (2, 3, 4)
        assert gc.argmin(x, axis=None, keepdims=True).shape == (1, 1, 1)
        node = gc.sum(x, axis=[2, -3])
        assert node.attrs["axes"] == (0, 2) and node.attrs["keepdims"] is False


def test_empty_axes_reduce_nothing() -> None:
    x = np.arange(6.0).reshape(2, 3) - 2.5
    outs = _run(lambda p: [gc.sum(p, ()), gc.max(p, ()), gc.prod(p, ()), gc.mean(p, ())], x)
    for out in outs:
        np.testing.assert_array_equal(out, x)
    np.testing.assert_array_equal(_grad(lambda p: gc.max(p, ()) * p, x), 2 * x)


def test_scalars_and_size1_dims() -> None:
    s = np.array(1.5)
    outs = _run(lambda p: [gc.sum(p), gc.max(p, keepdims=True), gc.reshape(p, (1, 1, 1)),
                           gc.transpose(p), gc.broadcast_to(p, (2,)), gc.reverse(p),
                           gc.argmax(p), gc.expand_dims(p, 0)], s)
    assert [o.shape for o in outs] == [(), (), (1, 1, 1), (), (2,), (), (), (1,)]
    assert outs[6] == 0 and outs[6].dtype == np.int64
    np.testing.assert_array_equal(outs[4], [1.5, 1.5])
    x = np.arange(3.0).reshape(3, 1)
    out = _run(lambda p: gc.squeeze(p), x)[0]
    np.testing.assert_array_equal(out, [0.0, 1.0, 2.0])


def test_int_reductions_keep_the_dtype() -> None:
    x = np.array([[3, -2, 7], [1, 1, -4]], dtype=np.int32)
    total, top, product = _run(lambda p: [gc.sum(p, 1), gc.max(p, 0), gc.prod(p)], x)
    assert total.dtype == top.dtype == product.dtype == np.int32
    np.testing.assert_array_equal(total, [8, -2])
    np.testing.assert_array_equal(top, [3, 1, 7])
    assert product == 3 * -2 * 7 * 1 * 1 * -4


def test_argmax_argmin_ties_take_the_first_index() -> None:
    x = np.array([[1.0, 5.0, 5.0, 0.0], [2.0, 2.0, -1.0, -1.0]])
    amax, amin, flat = _run(lambda p: [gc.argmax(p, 1), gc.argmin(p, -1), gc.argmax(p)], x)
    np.testing.assert_array_equal(amax, [1, 0])
    np.testing.assert_array_equal(amin, [3, 2])
    assert flat == 1 and flat.dtype == np.int64


def test_max_min_gradient_is_shared_among_ties() -> None:
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])
    np.testing.assert_allclose(_grad(lambda p: gc.max(p, axis=1), x),
                               [[0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_allclose(_grad(lambda p: gc.min(p) * 6.0, x),
                               [[6.0, 0, 0], [0, 0, 0]])


def _exclusive_products(x: np.ndarray, axis: int) -> np.ndarray:
    """Product of the other elements along `axis`, by brute force."""
    out = np.empty_like(x)
    for index in np.ndindex(x.shape):
        line = x[(*index[:axis], slice(None), *index[axis + 1:])]
        out[index] = np.prod(np.delete(line, index[axis]))
    return out


def test_prod_gradient_is_exact_with_zeros() -> None:
    x = np.array([[2.0, 0.0, 3.0], [0.0, 0.0, 5.0], [1.5, -2.0, 4.0]])
    got = _grad(lambda p: gc.prod(p, axis=1), x)
    np.testing.assert_allclose(got, _exclusive_products(x, 1))
    assert got[0, 1] == 6.0 and got[0, 0] == 0.0 and not got[1].any()
    np.testing.assert_allclose(_grad(lambda p: gc.prod(p, axis=0), x),
                               _exclusive_products(x, 0))


def test_logsumexp_handles_infinities() -> None:
    x = np.array([[0.0, -np.inf, 1.0], [-np.inf, -np.inf, -np.inf], [np.inf, 0.0, 1.0]])
    out = _run(lambda p: gc.logsumexp(p, axis=1), x)[0]
    np.testing.assert_allclose(out[0], np.log(1 + np.e))
    assert out[1] == -np.inf and out[2] == np.inf


def test_logsumexp_gradient_is_softmax() -> None:
    x = np.array([[0.3, -1.0, 2.0], [50.0, 49.0, 51.0]])
    e = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(_grad(lambda p: gc.logsumexp(p, axis=1), x),
                               e / e.sum(axis=1, keepdims=True), rtol=1e-12)


def test_var_std_match_numpy_with_ddof() -> None:
    x = np.random.default_rng(1).standard_normal((4, 5)) + 100.0
    var, std = _run(lambda p: [gc.var(p, 0, ddof=1), gc.std(p, axis=1, keepdims=True)], x)
    np.testing.assert_allclose(var, np.var(x, axis=0, ddof=1), rtol=1e-10)
    np.testing.assert_allclose(std, np.std(x, axis=1, keepdims=True), rtol=1e-10)


def test_builders_store_resolved_attributes() -> None:
    with gc.Graph("g"):
        x = gc.placeholder((4, 6))
        assert gc.reshape(x, (-1, 3)).attrs["shape"] == (8, 3)
        assert gc.transpose(x).attrs["perm"] == (1, 0)
        s = gc.slice(x, [-3, None], [None, -1], [1, 2])
        assert (s.attrs["starts"], s.attrs["stops"], s.attrs["steps"]) == ((1, 0), (4, 5), (1, 2))
        assert s.shape == (3, 3)
        assert gc.concat([x, x], axis=-1).attrs["axis"] == 1
        assert gc.pad(x, (1, 2)).attrs["pads"] == ((1, 2, 0), (1, 2, 0))
        assert gc.reverse(x, -1).attrs["axes"] == (1,)


def test_negative_step_slice_matches_python() -> None:
    x = np.arange(24.0).reshape(4, 6)
    cases = [(5, None, -2), (None, None, -1), (-2, 0, -3), (0, 5, -1), (10, -10, -4)]
    outs = _run(lambda p: [gc.slice(p, [a], [b], [s], axes=[1]) for a, b, s in cases], x)
    for out, (a, b, s) in zip(outs, cases):
        np.testing.assert_array_equal(out, x[:, a:b:s])


def test_split_returns_the_pieces() -> None:
    x = np.arange(12.0).reshape(6, 2)
    pieces = _run(lambda p: gc.split(p, 3), x)
    assert len(pieces) == 3
    for got, want in zip(pieces, np.split(x, 3)):
        np.testing.assert_array_equal(got, want)
    pieces = _run(lambda p: gc.split(p, [2, 9, 1], axis=0), x)
    for got, want in zip(pieces, np.split(x, [2, 9, 1])):
        np.testing.assert_array_equal(got, want)


def test_flatten_and_expand_dims_shapes() -> None:
    with gc.Graph("g"):
        x = gc.placeholder((2, 3, 4))
        assert gc.flatten(x).shape == (2, 12)
        assert gc.flatten(x, -1).shape == (2, 3, 4)
        assert gc.flatten(gc.placeholder((5,))).shape == (5, 1)
        assert gc.expand_dims(x, (1, -1)).shape == (2, 1, 3, 4, 1)
        assert gc.squeeze(gc.placeholder((1, 1))).shape == ()
        assert gc.stack([x, x], axis=-1).shape == (2, 3, 4, 2)


def test_names_are_applied_to_the_result() -> None:
    with gc.Graph("g") as g:
        x = gc.placeholder((2, 3))
        assert gc.mean(x, name="m").name == "m" and g["m"].op == "mul"
        assert gc.logsumexp(x, 1, name="lse").shape == (2,)
        assert gc.logsumexp(x, 1, keepdims=True, name="lse_k").shape == (2, 1)
        assert gc.flatten(x, name="f").op == "reshape"


# --- second derivatives (gradient rules built from ops) -------------------------------------

@pytest.mark.parametrize("fn", [
    lambda p: gc.slice(p, [1, None], [None, None], [2, 2]) ** 3.0,
    lambda p: gc.pad(p, [(1, 0), (2, 1)]) ** 3.0,
    lambda p: gc.prod(p, axis=1),
    lambda p: gc.concat([p * p, gc.transpose(p)], axis=0) ** 2.0,
    lambda p: gc.broadcast_to(gc.reshape(p, (1, 3, 3)), (2, 3, 3)) ** 3.0,
    lambda p: gc.logsumexp(p, axis=0),
    lambda p: gc.var(p, axis=1),
], ids=["slice", "pad", "prod", "concat_transpose", "broadcast_reshape", "logsumexp", "var"])
def test_grad_of_grad(fn: Callable[[gc.Node], gc.Node]) -> None:
    x = np.random.default_rng(3).uniform(0.5, 2.0, (3, 3))
    gc.check_grad(lambda p: gc.grad(gc.sum(fn(p)), p), [x]).assert_ok(1e-6)
