"""The nn and random op families: build-time errors, edge cases, statistics, determinism."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import graphc as gc
from graphc.ir.opdef import Fusion
from graphc.ops import registry
from tests.op_cases import random as rnd


def _line() -> int:
    """The caller's line number (to compare with err.loc.line)."""
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    return frame.f_back.f_lineno


def _run(outputs: gc.Node | list[gc.Node], inputs: list[gc.Node] | None = None,
         *args: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
    first = outputs if isinstance(outputs, gc.Node) else outputs[0]
    return gc.reference(first.graph, inputs=inputs or [], outputs=outputs)(*args)


def _assert_error(info: pytest.ExceptionInfo, op: str, line: int, *parts: str) -> None:
    err = info.value
    assert err.op == op, err
    assert err.loc is not None and err.loc.line == line and err.loc.file == __file__, err
    for part in parts:
        assert part in str(err), (part, str(err))


# --- random: the generator -----------------------------------------------------------------

@pytest.mark.parametrize("seed,key", [(0, 0), (1, 0), (0, 1), (2**32 - 1, 123456789)])
def test_uniform_is_bit_exact_with_the_documented_algorithm(seed: int, key: int) -> None:
    with gc.Graph("g"):
        u32 = gc.random_uniform((31, 17), gc.float32, seed=seed, key=key)
        u64 = gc.random_uniform((31, 17), gc.float64, seed=seed, key=key)
    a32, a64 = _run([u32, u64])
    expected = rnd.uniform((31, 17), seed, key)
    assert a32.dtype == np.float32 and a64.dtype == np.float64
    np.testing.assert_array_equal(a64, expected)
    np.testing.assert_array_equal(a32, expected.astype(np.float32))
    assert a32.min() >= 0.0 and a32.max() < 1.0


def test_normal_matches_the_documented_algorithm() -> None:
    with gc.Graph("g"):
        z = gc.random_normal((1000,), gc.float64, seed=11, mean=-1.0, std=3.0, key=4)
    np.testing.assert_array_equal(_run(z), rnd.normal((1000,), 11, 4, -1.0, 3.0))


def test_key_uses_the_low_32_bits_of_int32_and_int64_values() -> None:
    with gc.Graph("g"):
        k64 = gc.placeholder((), gc.int64, name="k64")
        k32 = gc.placeholder((), gc.int32, name="k32")
        a = gc.random_uniform((50,), seed=3, key=k64)
        b = gc.random_uniform((50,), seed=3, key=k32)
        c = gc.random_uniform((50,), seed=3, key=-1)  # Python int: same low bits as 2**32-1
    fn = gc.reference(a.graph, inputs=[k64, k32], outputs=[a, b, c])
    big, neg, same_c = fn(np.int64(2**40 + 2**32 - 1), np.int32(-1))
    np.testing.assert_array_equal(big, neg)
    np.testing.assert_array_equal(big, same_c)
    np.testing.assert_array_equal(big, rnd.uniform((50,), 3, 2**32 - 1).astype(np.float32))


def test_no_key_is_key_zero_and_each_element_depends_only_on_its_index() -> None:
    with gc.Graph("g"):
        plain = gc.random_uniform((4, 6), seed=9)
        keyed = gc.random_uniform((4, 6), seed=9, key=0)
        flat = gc.random_uniform((30,), seed=9)
    p, k, f = _run([plain, keyed, flat])
    np.testing.assert_array_equal(p, k)
    # The value of flat index i does not depend on the shape or the total size.
    np.testing.assert_array_equal(p.ravel(), f[:24])


def test_same_seed_same_stream_across_graphs_and_different_seeds_or_keys_differ() -> None:
    def sample(seed: int, key: int) -> np.ndarray:
        with gc.Graph("g"):
            u = gc.random_uniform((1000,), seed=seed, key=key)
        return _run(u)

    base = sample(5, 0)
    np.testing.assert_array_equal(base, sample(5, 0))
    for other in (sample(6, 0), sample(5, 1), sample(0, 5)):
        assert np.mean(other == base) < 0.01
        assert abs(np.corrcoef(other, base)[0, 1]) < 0.1


def test_a_step_counter_key_gives_fresh_noise_each_step() -> None:
    with gc.Graph("train") as g:
        step = gc.variable(np.int32(0), name="step", trainable=False)
        noise = gc.random_normal((64,), seed=1, key=step)
    fn = gc.reference(g, outputs=noise, updates={step: step + 1})
    first, second = fn(), fn()
    assert int(g.variables["step"]) == 2
    assert not np.array_equal(first, second)
    np.testing.assert_allclose(first, rnd.normal((64,), 1, 0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(second, rnd.normal((64,), 1, 1), rtol=1e-6, atol=1e-6)


# --- random: statistics --------------------------------------------------------------------

N = 100_000


def test_uniform_statistics() -> None:
    low, high = -2.0, 3.0
    with gc.Graph("g"):
        u = gc.random_uniform((N,), gc.float64, seed=42, low=low, high=high)
    x = _run(u)
    assert x.min() >= low and x.max() < high
    width = high - low
    # Mean and variance within ~5 standard errors of the exact moments.
    assert abs(x.mean() - (low + high) / 2) < 5 * width / np.sqrt(12 * N)
    assert abs(x.var() / (width**2 / 12) - 1) < 0.02
    counts, _ = np.histogram(x, bins=20, range=(low, high))
    expected = N / 20
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 60  # 19 degrees of freedom: p < 1e-5 beyond this
    lag1 = np.corrcoef(x[:-1], x[1:])[0, 1]
    assert abs(lag1) < 0.02


def test_normal_statistics() -> None:
    with gc.Graph("g"):
        z = gc.random_normal((N,), gc.float32, seed=7, mean=2.0, std=0.5)
    x = _run(z).astype(np.float64)
    assert abs(x.mean() - 2.0) < 5 * 0.5 / np.sqrt(N)
    assert abs(x.std() / 0.5 - 1) < 0.02
    s = (x - 2.0) / 0.5
    assert abs(np.mean(np.abs(s) < 1) - 0.6827) < 0.01
    assert abs(np.mean(np.abs(s) < 2) - 0.9545) < 0.005
    assert abs(np.mean(s**3)) < 0.05  # symmetric
    assert np.abs(s).max() <= np.sqrt(-2 * np.log(2.0**-24)) + 1e-5
    assert abs(np.corrcoef(s[:-1], s[1:])[0, 1]) < 0.02


# --- random: op definitions and errors -----------------------------------------------------

def test_random_op_definitions() -> None:
    for name in ("random_uniform", "random_normal"):
        op = registry.get(name)
        assert op.random and not op.differentiable and op.arity == 1
        assert op.fusion == Fusion.BROADCAST


def test_random_attrs_and_zero_size() -> None:
    with gc.Graph("g"):
        u = gc.random_uniform(5, seed=np.uint32(3))
        e = gc.random_normal((0, 3), gc.float64)
    assert u.type == gc.TensorType((5,), gc.float32) and u.attrs["seed"] == 3
    assert e.type == gc.TensorType((0, 3), gc.float64)
    assert _run(e).shape == (0, 3)


@pytest.mark.parametrize(
    "kwargs,error,parts",
    [
        ({"seed": -1}, gc.AttrError, ("seed", "-1")),
        ({"seed": 2**32}, gc.AttrError, ("seed", str(2**32))),
        ({"seed": 1.5}, gc.AttrError, ("seed", "1.5")),
        ({"low": 1.0, "high": 1.0}, gc.AttrError, ("low", "high")),
        ({"high": float("inf")}, gc.AttrError, ("high", "inf")),
        ({"dtype": gc.int32}, gc.DTypeError, ("dtype", "float32 or float64", "int32")),
        ({"dtype": "complex64"}, gc.DTypeError, ("complex64",)),
        ({"shape": (2, -1)}, gc.AttrError, ("shape", "(2, -1)")),
    ],
)
def test_random_uniform_attr_errors(kwargs: dict, error: type, parts: tuple[str, ...]) -> None:
    args = {"shape": (2, 3), **kwargs}
    with gc.Graph("g"):
        with pytest.raises(error) as info:
            line = _line() + 1
            gc.random_uniform(**args)
    _assert_error(info, "random_uniform", line, *parts)


def test_random_normal_rejects_negative_std() -> None:
    with gc.Graph("g"):
        with pytest.raises(gc.AttrError) as info:
            line = _line() + 1
            gc.random_normal((3,), std=-1.0)
    _assert_error(info, "random_normal", line, "std", "-1.0")


@pytest.mark.parametrize(
    "key_type,error",
    [(((), gc.float32), gc.DTypeError), (((2,), gc.int32), gc.ShapeError),
     (((), gc.bool_), gc.DTypeError)],
)
def test_key_must_be_an_integer_scalar(key_type: tuple, error: type) -> None:
    shape, dtype = key_type
    with gc.Graph("g"):
        k = gc.placeholder(shape, dtype, name="k")
        with pytest.raises(error) as info:
            line = _line() + 1
            gc.random_normal((3,), key=k)
    _assert_error(info, "random_normal", line, "key", "int32 or int64 scalar",
                  str(gc.TensorType(shape, dtype)))


# --- softmax, log_softmax, stop_gradient ---------------------------------------------------

def test_softmax_is_stable_and_normalized() -> None:
    x = np.array([[1000.0, 999.0, -1000.0], [-1000.0, -1001.0, -3000.0]], np.float32)
    with gc.Graph("g"):
        p = gc.placeholder(x.shape, gc.float32, name="x")
        s = gc.softmax(p)
        ls = gc.log_softmax(p)
    sv, lv = _run([s, ls], [p], x)
    assert np.all(np.isfinite(sv)) and np.all(np.isfinite(lv))
    np.testing.assert_allclose(sv.sum(axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(lv[:, 0] - lv[:, 1], 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.exp(lv), sv, rtol=1e-6, atol=1e-30)


def test_softmax_axis_attr_is_normalized() -> None:
    with gc.Graph("g"):
        x = gc.placeholder((2, 3, 4), name="x")
        assert gc.softmax(x).attrs["axis"] == 2
        assert gc.log_softmax(x, axis=-2).attrs["axis"] == 1
        assert gc.softmax(x, axis=0).attrs["axis"] == 0


def test_softmax_errors() -> None:
    with gc.Graph("g"):
        i = gc.placeholder((2, 3), gc.int32, name="i")
        x = gc.placeholder((2, 3), name="x")
        with pytest.raises(gc.DTypeError) as info:
            line = _line() + 1
            gc.softmax(i)
        _assert_error(info, "softmax", line, "x", "float", "i32[2,3]")
        with pytest.raises(gc.AttrError) as info:
            line = _line() + 1
            gc.log_softmax(x, axis=2)
        _assert_error(info, "log_softmax", line, "axis 2", "rank 2")


def test_softmax_gradient_of_cross_entropy_is_probabilities_minus_one_hot() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 6))
    labels = np.array([0, 5, 2, 2], np.int32)
    with gc.Graph("g"):
        x = gc.placeholder(logits.shape, gc.float64, name="x")
        y = gc.placeholder(labels.shape, gc.int32, name="y")
        loss = gc.sum(gc.softmax_cross_entropy(x, y))
        dx = gc.grad(loss, x)
        probs = gc.softmax(x)
    dv, pv = _run([dx, probs], [x, y], logits, labels)
    np.testing.assert_allclose(dv, pv - np.eye(6)[labels], rtol=1e-12, atol=1e-12)


def test_stop_gradient_is_identity_without_gradient() -> None:
    xv = np.array([1.0, -2.0, 3.0])
    with gc.Graph("g"):
        x = gc.placeholder((3,), gc.float64, name="x")
        sg = gc.stop_gradient(x)
        dx = gc.grad(gc.sum(sg * x), x)  # d/dx (c * x) with c = x held constant
        k = gc.stop_gradient(gc.placeholder((2,), gc.int32, name="k"))
    assert not registry.get("stop_gradient").differentiable
    assert registry.get("stop_gradient").fusion == Fusion.ELEMENTWISE
    assert k.type == gc.TensorType((2,), gc.int32)
    sv, dv = _run([sg, dx], [x], xv)
    np.testing.assert_array_equal(sv, xv)
    np.testing.assert_array_equal(dv, xv)


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("fn", [gc.softmax, gc.log_softmax], ids=["softmax", "log_softmax"])
def test_softmax_gradients_are_differentiable_again(fn, axis: int) -> None:
    w = np.random.default_rng(4).standard_normal((3, 4))

    def first_gradient(x: gc.Node) -> gc.Node:
        return gc.grad(gc.sum(fn(x, axis=axis) * gc.constant(w)), x)

    x0 = np.random.default_rng(5).standard_normal((3, 4))
    gc.check_grad(first_gradient, [x0], seed=1).assert_ok(1e-6)


# --- losses --------------------------------------------------------------------------------

def test_softmax_cross_entropy_label_errors_name_both_operands() -> None:
    with gc.Graph("g"):
        x = gc.placeholder((8, 10), name="logits")
        bad_shape = gc.placeholder((8, 10), gc.int32, name="y1")
        bad_dtype = gc.placeholder((8,), gc.float32, name="y2")
        with pytest.raises(gc.ShapeError) as info:
            line = _line() + 1
            gc.softmax_cross_entropy(x, bad_shape)
        _assert_error(info, "softmax_cross_entropy", line, "labels", "i32[8]", "i64[8]",
                      "f32[8,10]", "i32[8,10]")
        with pytest.raises(gc.DTypeError) as info:
            line = _line() + 1
            gc.softmax_cross_entropy(x, bad_dtype)
        _assert_error(info, "softmax_cross_entropy", line, "labels", "f32[8]", "f32[8,10]")
        with pytest.raises(gc.DTypeError) as info:
            line = _line() + 1
            gc.softmax_cross_entropy(bad_shape, bad_shape)
        _assert_error(info, "softmax_cross_entropy", line, "logits", "float", "i32[8,10]")


def test_softmax_cross_entropy_accepts_numpy_labels_and_mean_loss() -> None:
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((5, 3)).astype(np.float32)
    labels = np.array([2, 0, 1, 1, 2], np.int64)
    with gc.Graph("g"):
        x = gc.placeholder(logits.shape, name="x")
        loss = gc.mean(gc.softmax_cross_entropy(x, labels))
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    expected = -logp[np.arange(5), labels].mean()
    np.testing.assert_allclose(_run(loss, [x], logits), expected, rtol=1e-6)


def test_sigmoid_bce_is_stable_and_has_the_exact_gradient_at_zero() -> None:
    xv = np.array([0.0, 0.0, 800.0, -800.0, 3.0])
    zv = np.array([0.0, 1.0, 0.0, 1.0, 0.25])
    with gc.Graph("g"):
        x = gc.placeholder((5,), gc.float64, name="x")
        z = gc.placeholder((5,), gc.float64, name="z")
        loss = gc.sigmoid_binary_cross_entropy(x, z)
        dx, dz = gc.grad(gc.sum(loss), [x, z])
    lv, dxv, dzv = _run([loss, dx, dz], [x, z], xv, zv)
    sig = 0.5 * (1 + np.tanh(xv / 2))
    np.testing.assert_allclose(lv, np.logaddexp(0, xv) - xv * zv, rtol=1e-12)
    np.testing.assert_allclose(dxv, sig - zv, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(dzv, -xv, rtol=1e-12)


def test_sigmoid_bce_and_regression_losses_check_operand_types() -> None:
    with gc.Graph("g"):
        a = gc.placeholder((4, 3), name="a")
        b = gc.placeholder((4, 2), name="b")
        c = gc.placeholder((4, 3), gc.float64, name="c")
        cases = [
            (gc.sigmoid_binary_cross_entropy, "sigmoid_binary_cross_entropy", "targets",
             "logits"),
            (gc.mse, "mse", "target", "pred"),
            (gc.mae, "mae", "target", "pred"),
        ]
        for fn, op, second, first in cases:
            with pytest.raises(gc.ShapeError) as info:
                line = _line() + 1
                fn(a, b)
            _assert_error(info, op, line, second, first, "f32[4,3]", "f32[4,2]")
            with pytest.raises(gc.DTypeError) as info:
                line = _line() + 1
                fn(a, c)
            _assert_error(info, op, line, second, "f32[4,3]", "f64[4,3]")


def test_regression_losses_are_per_example() -> None:
    rng = np.random.default_rng(2)
    pv, tv = rng.standard_normal((2, 6, 3)), rng.standard_normal((2, 6, 3))
    with gc.Graph("g"):
        p = gc.placeholder(pv.shape, gc.float64, name="p")
        t = gc.placeholder(tv.shape, gc.float64, name="t")
        m, a = gc.mse(p, t, name="mse_loss"), gc.mae(p, t)
    assert m.shape == (2,) and a.shape == (2,) and m.name == "mse_loss"
    mv, av = _run([m, a], [p, t], pv, tv)
    for i in range(2):
        assert mv[i] == pytest.approx(np.mean((pv[i] - tv[i]) ** 2), rel=1e-12)
        assert av[i] == pytest.approx(np.mean(np.abs(pv[i] - tv[i])), rel=1e-12)


# --- normalization -------------------------------------------------------------------------

def test_batch_norm_errors() -> None:
    with gc.Graph("g"):
        x = gc.placeholder((2, 3, 4), name="x")
        v3 = gc.placeholder((3,), name="v3")
        v4 = gc.placeholder((4,), name="v4")
        v3d = gc.placeholder((3,), gc.float64, name="v3d")
        with pytest.raises(gc.ShapeError) as info:
            line = _line() + 1
            gc.batch_norm(x, v4, v3)
        _assert_error(info, "batch_norm", line, "mean", "f32[3]", "f32[4]", "f32[2,3,4]")
        with pytest.raises(gc.DTypeError) as info:
            line = _line() + 1
            gc.batch_norm(x, v3, v3, gamma=v3d)
        _assert_error(info, "batch_norm", line, "gamma", "f32[3]", "f64[3]")
        with pytest.raises(gc.AttrError) as info:
            line = _line() + 1
            gc.batch_norm(x, v3, v3, eps=-1.0)
        _assert_error(info, "batch_norm", line, "eps", "-1.0")
        with pytest.raises(gc.AttrError) as info:
            line = _line() + 1
            gc.batch_norm(x, v3, v3, axis=3)
        _assert_error(info, "batch_norm", line, "axis 3", "rank 3")
        assert gc.batch_norm(x, v4, v4, axis=2).shape == (2, 3, 4)


def test_layer_norm_normalizes_rows_and_checks_axes() -> None:
    rng = np.random.default_rng(3)
    xv = (rng.standard_normal((4, 2, 8)) * 5 + 3).astype(np.float32)
    with gc.Graph("g"):
        x = gc.placeholder(xv.shape, name="x")
        y = gc.layer_norm(x, axis=(1, 2), eps=0.0)
        with pytest.raises(gc.AttrError) as info:
            line = _line() + 1
            gc.layer_norm(x, axis=0)
        _assert_error(info, "layer_norm", line, "trailing", "f32[4,2,8]", "0")
        with pytest.raises(gc.AttrError) as info:
            line = _line() + 1
            gc.layer_norm(x, axis=())
        _assert_error(info, "layer_norm", line, "trailing")
        with pytest.raises(gc.ShapeError) as info:
            line = _line() + 1
            gc.layer_norm(x, gamma=np.ones(8, np.float32), axis=(-2, -1))
        _assert_error(info, "layer_norm", line, "gamma", "f32[2,8]", "f32[8]")
    yv = _run(y, [x], xv).reshape(4, -1)
    np.testing.assert_allclose(yv.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(yv.var(axis=1), 1.0, rtol=1e-4)


# --- dropout -------------------------------------------------------------------------------

def test_dropout_keeps_the_right_fraction_and_scales() -> None:
    rate = 0.3
    xv = np.full((400, 250), 2.0, np.float32)
    with gc.Graph("g"):
        x = gc.placeholder(xv.shape, name="x")
        y = gc.dropout(x, rate, seed=17)
    yv = _run(y, [x], xv)
    kept = yv != 0
    n = kept.size
    assert abs(kept.mean() - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / n)
    np.testing.assert_allclose(yv[kept], 2.0 / (1 - rate), rtol=1e-6)
    # Reproducible: the mask is exactly the documented uniform stream compared with rate.
    np.testing.assert_array_equal(kept, rnd.uniform(xv.shape, 17) >= np.float32(rate))


def test_dropout_identity_cases_and_determinism() -> None:
    with gc.Graph("g"):
        x = gc.placeholder((100,), name="x")
        x64 = gc.placeholder((100,), gc.float64, name="x64")
        step = gc.placeholder((), gc.int32, name="step")
        assert gc.dropout(x, 0.5, seed=1, training=False) is x
        assert gc.dropout(x, 0.0, seed=1) is x
        a = gc.dropout(x, 0.5, seed=1)
        b = gc.dropout(x, 0.5, seed=1)
        c = gc.dropout(x64, 0.5, seed=1)
        d = gc.dropout(x, 0.5, seed=2)
        e = gc.dropout(x, 0.5, seed=1, key=step)
    fn = gc.reference(x.graph, inputs=[x, x64, step], outputs=[a, b, c, d, e])
    ones = np.ones(100, np.float32)
    av, bv, cv, dv, ev0 = fn(ones, ones.astype(np.float64), np.int32(0))
    ev1 = fn(ones, ones.astype(np.float64), np.int32(1))[4]
    np.testing.assert_array_equal(av, bv)
    np.testing.assert_array_equal(av != 0, cv != 0)  # mask independent of x's dtype
    np.testing.assert_array_equal(av, ev0)  # key 0 is the unkeyed stream
    assert not np.array_equal(av, dv) and not np.array_equal(ev0, ev1)


def test_dropout_gradient_is_mask_times_scale() -> None:
    xv = np.linspace(-1, 1, 60).reshape(6, 10)
    with gc.Graph("g"):
        x = gc.placeholder(xv.shape, gc.float64, name="x")
        y = gc.dropout(x, 0.25, seed=3)
        dx = gc.grad(gc.sum(y), x)
    yv, dv = _run([y, dx], [x], xv)
    mask = rnd.uniform(xv.shape, 3) >= np.float32(0.25)
    np.testing.assert_array_equal(dv, mask / 0.75)
    np.testing.assert_allclose(yv, xv * mask / 0.75, rtol=1e-15)


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5, float("nan"), "0.5", True])
def test_dropout_rejects_rates_outside_0_1(rate: object) -> None:
    with gc.Graph("g"):
        x = gc.placeholder((3,), name="x")
        with pytest.raises(gc.AttrError) as info:
            line = _line() + 1
            gc.dropout(x, rate, seed=0)
    _assert_error(info, "dropout", line, "rate", "[0, 1)", repr(rate))


def test_dropout_rejects_integer_input() -> None:
    with gc.Graph("g"):
        x = gc.placeholder((3,), gc.int32, name="x")
        with pytest.raises(gc.DTypeError) as info:
            line = _line() + 1
            gc.dropout(x, 0.5, seed=0)
    _assert_error(info, "dropout", line, "x", "float", "i32[3]")
