"""gc.nn layers: forward against independent numpy code (and PyTorch with copied weights
when it is installed), gradients with check_grad in float64, training vs inference modes,
naming, seeding and errors.

Forward passes run on the reference interpreter (the oracle the compiler is tested
against); `test_compiled_layers_match_the_reference` compiles one network that uses every
layer family, in both modes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import graphc as gc
from graphc import nn

RNG = np.random.default_rng(1234)


def run_layer(layer: Callable[..., gc.Node], *arrays: np.ndarray, training: bool = False,
              mask: np.ndarray | None = None) -> tuple[np.ndarray, gc.Graph, nn.Scope]:
    """Call `layer` on placeholders for `arrays` inside a scope; run it on the reference."""
    with gc.Graph("layer") as g:
        phs = [gc.placeholder(a.shape, gc.DType.of(a.dtype), name=f"in{i}")
               for i, a in enumerate(arrays)]
        mask_node = None if mask is None else gc.placeholder(mask.shape, gc.float32, name="m")
        with nn.Scope(training=training, sample_mask=mask_node) as scope:
            out = layer(phs if len(phs) > 1 else phs[0])
    feeds = [*phs, mask_node] if mask_node is not None else phs
    values = [*arrays, mask] if mask is not None else list(arrays)
    fn = gc.reference(g, inputs=feeds, outputs=out)
    return fn(*values), g, scope


def weights(g: gc.Graph, layer: nn.Layer) -> dict[str, np.ndarray]:
    return {short: g.variables[node.name].copy() for short, node in layer.weights.items()}


def rand(*shape: int, dtype: Any = np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


# --- independent numpy implementations ------------------------------------------------------

def np_sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def np_same_pad(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    out = -(-size // s)
    total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def np_conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: tuple[int, int],
              pad: tuple[tuple[int, int], tuple[int, int]], dilation: tuple[int, int],
              groups: int) -> np.ndarray:
    n = x.shape[0]
    o, cg, kh, kw = w.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), pad[0], pad[1]))
    (sh, sw), (dh, dw) = stride, dilation
    ho = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, o, ho, wo))
    per_group = o // groups
    for oc in range(o):
        g = oc // per_group
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, g * cg:(g + 1) * cg, i * dh:i * dh + sh * (ho - 1) + 1:sh,
                           j * dw:j * dw + sw * (wo - 1) + 1:sw]
                out[:, oc] += np.einsum("nchw,c->nhw", patch, w[oc, :, i, j])
    if b is not None:
        out += b[None, :, None, None]
    return out


def np_pool(x: np.ndarray, k: int, s: int, reduce: Callable[..., np.ndarray]) -> np.ndarray:
    n, c, h, w = x.shape
    ho, wo = (h - k) // s + 1, (w - k) // s + 1
    out = np.empty((n, c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            out[:, :, i, j] = reduce(x[:, :, i * s:i * s + k, j * s:j * s + k], axis=(2, 3))
    return out


def np_rnn(kind: str, x: np.ndarray, w: dict[str, np.ndarray], units: int) -> np.ndarray:
    """All hidden states (B, T, U) of SimpleRNN/LSTM/GRU, step by step in float64."""
    batch, steps, _ = x.shape
    h = np.zeros((batch, units))
    c = np.zeros((batch, units))
    k, r, b = w["kernel"], w["recurrent_kernel"], w["bias"]
    hs = []
    for t in range(steps):
        xt = x[:, t, :].astype(np.float64)
        if kind == "rnn":
            h = np.tanh(xt @ k + b + h @ r)
        elif kind == "lstm":
            z = xt @ k + b + h @ r
            i, f, g, o = (z[:, q * units:(q + 1) * units] for q in range(4))
            c = np_sigmoid(f) * c + np_sigmoid(i) * np.tanh(g)
            h = np_sigmoid(o) * np.tanh(c)
        else:
            xz, hz = xt @ k + b, h @ r + w["recurrent_bias"]
            gate = [slice(q * units, (q + 1) * units) for q in range(3)]
            rr = np_sigmoid(xz[:, gate[0]] + hz[:, gate[0]])
            zz = np_sigmoid(xz[:, gate[1]] + hz[:, gate[1]])
            nn_ = np.tanh(xz[:, gate[2]] + rr * hz[:, gate[2]])
            h = (1 - zz) * nn_ + zz * h
        hs.append(h)
    return np.stack(hs, axis=1)


# --- forward against numpy -------------------------------------------------------------------

def test_dense_matches_numpy_on_2d_and_3d_inputs() -> None:
    x = rand(5, 7)
    layer = nn.Dense(4, "relu")
    out, g, _ = run_layer(layer, x)
    w = weights(g, layer)
    np.testing.assert_allclose(out, np.maximum(x @ w["kernel"] + w["bias"], 0), rtol=1e-5,
                               atol=1e-6)
    x3 = rand(2, 3, 7)
    layer3 = nn.Dense(4, use_bias=False)
    out3, g3, _ = run_layer(layer3, x3)
    expected = np.einsum("btf,fu->btu", x3, weights(g3, layer3)["kernel"])
    np.testing.assert_allclose(out3, expected, rtol=1e-5, atol=1e-6)


def test_flatten_activation_add_embedding() -> None:
    x = rand(2, 3, 4, 5)
    out, _, _ = run_layer(nn.Flatten(), x)
    np.testing.assert_array_equal(out, x.reshape(2, 60))
    out, _, _ = run_layer(nn.Activation("tanh"), x)
    np.testing.assert_allclose(out, np.tanh(x), rtol=1e-5, atol=1e-6)
    a, b, c = rand(3, 4), rand(3, 4), rand(3, 4)
    out, _, _ = run_layer(nn.Add(), a, b, c)
    np.testing.assert_allclose(out, a + b + c, rtol=1e-6)
    ids = np.array([[0, 5, 9], [9, 1, 1]], np.int32)
    emb = nn.Embedding(10, 6)
    out, g, _ = run_layer(emb, ids)
    table = weights(g, emb)["embeddings"]
    np.testing.assert_array_equal(out, table[ids])
    assert np.abs(table).max() <= 0.05  # Keras' U(-0.05, 0.05)


@pytest.mark.parametrize("cfg", [
    dict(filters=4, kernel_size=3, strides=1, padding="same", dilation=1, groups=1),
    dict(filters=6, kernel_size=(3, 2), strides=2, padding="valid", dilation=1, groups=1),
    dict(filters=4, kernel_size=3, strides=(2, 1), padding="same", dilation=2, groups=2),
    dict(filters=4, kernel_size=2, strides=1, padding=1, dilation=1, groups=2),
])
def test_conv2d_matches_numpy(cfg: dict) -> None:
    x = rand(2, 4, 7, 6)
    layer = nn.Conv2D(activation=None, **cfg)
    out, g, _ = run_layer(layer, x)
    w = weights(g, layer)
    kh, kw = layer.kernel_size
    (sh, sw), (dh, dw) = layer.strides, layer.dilation
    if cfg["padding"] == "same":
        pad = (np_same_pad(7, kh, sh, dh), np_same_pad(6, kw, sw, dw))
    elif cfg["padding"] == "valid":
        pad = ((0, 0), (0, 0))
    else:
        pad = ((cfg["padding"],) * 2,) * 2
    expected = np_conv2d(x, w["kernel"], w["bias"], (sh, sw), pad, (dh, dw), cfg["groups"])
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_depthwise_conv_is_one_group_per_channel() -> None:
    x = rand(2, 3, 5, 5)
    layer = nn.DepthwiseConv2D(3, depth_multiplier=2, padding="same")
    out, g, _ = run_layer(layer, x)
    w = weights(g, layer)
    assert w["kernel"].shape == (6, 1, 3, 3) and layer.groups == 3
    expected = np_conv2d(x, w["kernel"], w["bias"], (1, 1), ((1, 1), (1, 1)), (1, 1), 3)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_pools_match_numpy() -> None:
    x = rand(2, 3, 6, 6)
    out, _, _ = run_layer(nn.MaxPool2D(2), x)
    np.testing.assert_allclose(out, np_pool(x, 2, 2, np.max), rtol=1e-6)
    out, _, _ = run_layer(nn.AvgPool2D(3, strides=1), x)
    np.testing.assert_allclose(out, np_pool(x, 3, 1, np.mean), rtol=1e-5, atol=1e-6)
    out, _, _ = run_layer(nn.GlobalAvgPool2D(), x)
    np.testing.assert_allclose(out, x.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)


def test_layer_norm_matches_numpy() -> None:
    x = rand(3, 4, 5)
    layer = nn.LayerNorm(axis=(-2, -1))
    out, g, _ = run_layer(layer, x)
    mean = x.mean(axis=(1, 2), keepdims=True)
    var = x.var(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(out, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)
    assert weights(g, layer)["gamma"].shape == (4, 5)


def test_batch_norm_training_uses_batch_statistics_and_updates_running_ones() -> None:
    x = rand(4, 3, 2, 2) * 2 + 1
    layer = nn.BatchNorm(momentum=0.9)
    out, g, scope = run_layer(layer, x, training=True)
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3))
    expected = (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    # The running statistics are updated through `updates`, with the unbiased variance.
    updates = scope.updates
    rm, rv = layer.weights["running_mean"], layer.weights["running_var"]
    assert set(updates) == {rm, rv} and layer.state_updates.keys() == updates.keys()
    step = gc.reference(g, inputs=[g["in0"]], outputs=[], updates=updates)
    step(x)
    n = x.size // 3
    np.testing.assert_allclose(g.variables[rm.name], 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g.variables[rv.name], 0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)


def test_batch_norm_inference_uses_running_statistics() -> None:
    x = rand(4, 3)
    layer = nn.BatchNorm()
    with gc.Graph("bn") as g:
        xp = gc.placeholder(x.shape, gc.float32, name="x")
        out_train = layer(xp, training=True)
        out_infer = layer(xp, training=False)
    rm, rv = np.array([0.5, -1.0, 2.0], np.float32), np.array([4.0, 0.25, 1.0], np.float32)
    g.variables[layer.weights["running_mean"].name] = rm
    g.variables[layer.weights["running_var"].name] = rv
    g.variables[layer.weights["gamma"].name] = np.array([1.0, 2.0, 3.0], np.float32)
    g.variables[layer.weights["beta"].name] = np.array([0.0, 1.0, -1.0], np.float32)
    train, infer = gc.reference(g, inputs=[xp], outputs=[out_train, out_infer])(x)
    gamma, beta = np.array([1.0, 2.0, 3.0]), np.array([0.0, 1.0, -1.0])
    np.testing.assert_allclose(infer, (x - rm) / np.sqrt(rv + 1e-5) * gamma + beta, rtol=1e-5)
    batch = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5) * gamma + beta
    np.testing.assert_allclose(train, batch, rtol=1e-4, atol=1e-5)
    assert not np.allclose(train, infer)  # the two modes really differ


def test_batch_norm_sample_mask_ignores_padding() -> None:
    real = rand(3, 2, 2, 2)
    padded = np.concatenate([real, 100 + rand(2, 2, 2, 2)])  # garbage rows
    mask = np.array([1, 1, 1, 0, 0], np.float32)
    layer_a, layer_b = nn.BatchNorm(), nn.BatchNorm()
    out_masked, g, scope = run_layer(layer_a, padded, training=True, mask=mask)
    out_real, g2, scope2 = run_layer(layer_b, real, training=True)
    np.testing.assert_allclose(out_masked[:3], out_real, rtol=1e-4, atol=1e-5)
    gc.reference(g, inputs=[g["in0"], g["m"]], outputs=[], updates=scope.updates)(padded, mask)
    gc.reference(g2, inputs=[g2["in0"]], outputs=[], updates=scope2.updates)(real)
    for name in ("running_mean", "running_var"):
        np.testing.assert_allclose(g.variables[f"batch_norm/{name}"],
                                   g2.variables[f"batch_norm/{name}"], rtol=1e-5, atol=1e-6)


def test_dropout_training_masks_and_scales_inference_is_identity() -> None:
    x = np.ones((64, 50), np.float32)
    layer = nn.Dropout(0.25, seed=3)
    with gc.Graph("drop") as g:
        xp = gc.placeholder(x.shape, gc.float32, name="x")
        with nn.Scope(training=True) as scope:
            train = layer(xp)
        infer = layer(xp, training=False)
    assert infer is xp
    step = gc.reference(g, inputs=[xp], outputs=[train], updates=scope.updates)
    (first,), (second,) = step(x), step(x)
    for out in (first, second):
        kept = out != 0
        np.testing.assert_allclose(out[kept], 1 / 0.75, rtol=1e-6)
        assert abs(kept.mean() - 0.75) < 0.03
    assert not np.array_equal(first != 0, second != 0)  # a fresh mask each step
    assert int(g.variables["dropout/step"]) == 2


@pytest.mark.parametrize("kind,cls", [("rnn", nn.SimpleRNN), ("lstm", nn.LSTM),
                                      ("gru", nn.GRU)])
def test_recurrent_layers_match_numpy(kind: str, cls: type) -> None:
    x = rand(3, 5, 4)
    seq = cls(6, return_sequences=True)
    out, g, _ = run_layer(seq, x)
    expected = np_rnn(kind, x, weights(g, seq), 6)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    last = cls(6)
    out_last, g2, _ = run_layer(last, x)
    np.testing.assert_allclose(out_last, np_rnn(kind, x, weights(g2, last), 6)[:, -1],
                               rtol=1e-4, atol=1e-5)


def test_lstm_initialization_follows_keras() -> None:
    layer = nn.LSTM(4)
    _, g, _ = run_layer(layer, rand(2, 3, 5))
    w = weights(g, layer)
    np.testing.assert_array_equal(w["bias"], np.r_[np.zeros(4), np.ones(4), np.zeros(8)])
    for q in range(4):  # each gate's recurrent block is orthogonal
        block = w["recurrent_kernel"][:, 4 * q:4 * q + 4].astype(np.float64)
        np.testing.assert_allclose(block.T @ block, np.eye(4), atol=1e-5)


def test_sequential_names_seeds_and_sharing() -> None:
    def build() -> tuple[gc.Graph, nn.Sequential]:
        net = nn.Sequential([nn.Dense(8, "relu"), nn.Dense(8), nn.Dense(2)])
        with gc.Graph("seq") as g:
            x = gc.placeholder((2, 3), gc.float32, name="x")
            net(x)
            net(x, training=True)  # a second call reuses the variables
        return g, net

    g1, net = build()
    assert list(g1.variables) == ["dense/kernel", "dense/bias", "dense_1/kernel",
                                  "dense_1/bias", "dense_2/kernel", "dense_2/bias"]
    assert [layer.name for layer in net] == ["dense", "dense_1", "dense_2"]
    assert net.count_params() == 3 * 8 + 8 + 8 * 8 + 8 + 8 * 2 + 2
    g2, _ = build()
    for name in g1.variables:  # seeds come from the names: rebuilding is reproducible
        np.testing.assert_array_equal(g1.variables[name], g2.variables[name])
    assert not np.allclose(g1.variables["dense_1/kernel"][:3], g1.variables["dense/kernel"])


def test_regularizers_add_terms() -> None:
    layer = nn.Dense(3, kernel_regularizer=nn.L1L2(l1=0.1, l2=0.01), bias_regularizer="l2")
    with gc.Graph("reg") as g:
        x = gc.placeholder((2, 4), gc.float32, name="x")
        with nn.Scope() as scope:
            layer(x)
    terms = scope.regularization_losses()
    assert len(terms) == 2
    g.variables["dense/bias"] = np.array([1.0, -2.0, 0.5], np.float32)
    values = gc.reference(g, inputs=[], outputs=terms)()
    k = g.variables["dense/kernel"].astype(np.float64)
    np.testing.assert_allclose(values[0], 0.1 * np.abs(k).sum() + 0.01 * (k ** 2).sum(),
                               rtol=1e-5)
    np.testing.assert_allclose(values[1], 0.01 * (1 + 4 + 0.25), rtol=1e-6)


# --- gradients ---------------------------------------------------------------------------------

GRAD_CASES: dict[str, tuple[Callable[[], Any], list[np.ndarray], bool]] = {
    "dense": (lambda: nn.Dense(3, "tanh"), [rand(4, 5)], False),
    "conv2d": (lambda: nn.Conv2D(3, 3, strides=2, padding="same", groups=1), [rand(2, 2, 5, 5)],
               False),
    "conv2d_groups": (lambda: nn.Conv2D(4, 2, dilation=2, groups=2), [rand(1, 4, 5, 5)], False),
    "max_pool": (lambda: nn.MaxPool2D(2), [rand(2, 2, 4, 4)], False),
    "avg_pool": (lambda: nn.AvgPool2D(2, strides=1, padding="same"), [rand(1, 2, 3, 3)], False),
    "global_avg_pool": (lambda: nn.GlobalAvgPool2D(), [rand(2, 3, 2, 2)], False),
    "batch_norm_train": (lambda: nn.BatchNorm(), [rand(4, 3, 2, 2)], True),
    "batch_norm_dense": (lambda: nn.BatchNorm(), [rand(6, 3)], True),
    "layer_norm": (lambda: nn.LayerNorm(), [rand(3, 5)], False),
    "dropout_train": (lambda: nn.Dropout(0.3, seed=1), [rand(4, 6)], True),
    "simple_rnn": (lambda: nn.SimpleRNN(3, return_sequences=True), [rand(2, 3, 2)], False),
    "lstm": (lambda: nn.LSTM(3, return_sequences=True), [rand(2, 3, 2)], False),
    "gru": (lambda: nn.GRU(3), [rand(2, 3, 2)], False),
    "sequential": (lambda: nn.Sequential([nn.Dense(4, "relu"), nn.LayerNorm(), nn.Dense(2)]),
                   [rand(3, 5)], True),
}


@pytest.mark.parametrize("case", sorted(GRAD_CASES))
def test_gradients_pass_check_grad(case: str) -> None:
    make, args, training = GRAD_CASES[case]
    layer = make()
    result = gc.check_grad(lambda *xs: layer(*xs, training=training), args)
    assert result.rel_errors, "nothing was checked"
    if layer.trainable_variables:
        assert any(v.name in result.rel_errors for v in layer.trainable_variables)
    result.assert_ok(1e-6)


def test_embedding_gradient() -> None:
    ids = np.array([[1, 3], [3, 0]], np.int32)
    layer = nn.Embedding(4, 3, dtype=gc.float64)
    result = gc.check_grad(lambda i: layer(i), [ids])
    assert "embedding/embeddings" in result.rel_errors
    result.assert_ok(1e-6)


def test_float64_inputs_give_float64_weights() -> None:
    with gc.Graph("f64"):
        x = gc.placeholder((2, 3, 4), gc.float64, name="x")
        for layer in (nn.Dense(2), nn.LSTM(2), nn.LayerNorm()):
            layer(x)
            assert all(v.dtype == gc.float64 for v in layer.variables)


# --- errors --------------------------------------------------------------------------------------

def test_layer_errors_name_the_problem() -> None:
    layer = nn.Dense(2)
    with gc.Graph("a"):
        layer(gc.placeholder((2, 3), gc.float32, name="x"))
    with gc.Graph("b"), pytest.raises(gc.GraphcError, match="belongs to graph 'a'"):
        layer(gc.placeholder((2, 3), gc.float32, name="x"))
    with gc.Graph("c"):
        x = gc.placeholder((2, 4, 4, 4), gc.float32, name="x")
        nn.Dense(2, name="head")(gc.placeholder((2, 3), gc.float32, name="v"))
        with pytest.raises(gc.GraphNameError, match="'head' already exists"):
            nn.Dense(2, name="head")(gc.placeholder((2, 3), gc.float32, name="w"))
        with pytest.raises(gc.ShapeError, match=r"4 input channels.*groups \(3\)"):
            nn.Conv2D(3, 3, groups=3)(x)
        with pytest.raises(gc.ShapeError, match=r"expected f32\[2,4,4,4\].*got f32\[2,4\]"):
            nn.Add()([x, gc.placeholder((2, 4), gc.float32, name="y")])
        with pytest.raises(gc.ShapeError, match="batch axis"):
            nn.BatchNorm(axis=0)(x)
        with pytest.raises(gc.ShapeError, match=r"\(batch, time, features\)"):
            nn.LSTM(3)(x)
    with pytest.raises(gc.AttrError, match="rate must be"):
        nn.Dropout(1.0)
    with pytest.raises(gc.AttrError, match="unknown activation 'relux'"):
        nn.Dense(2, "relux")


# --- compiled ------------------------------------------------------------------------------------

def test_compiled_layers_match_the_reference() -> None:
    """One network using every layer family, compiled, in both modes, against the oracle."""
    conv = nn.Sequential([nn.Conv2D(4, 3, padding="same"), nn.BatchNorm(), nn.Activation("relu"),
                          nn.MaxPool2D(2), nn.AvgPool2D(2, strides=1, padding="same"),
                          nn.Flatten(), nn.Dropout(0.2), nn.Dense(6)])
    seq = nn.Sequential([nn.GRU(5, return_sequences=True), nn.LSTM(5, return_sequences=True),
                         nn.SimpleRNN(6), nn.LayerNorm()])
    emb = nn.Embedding(7, 3)
    add = nn.Add()
    with gc.Graph("all") as g:
        img = gc.placeholder((4, 2, 4, 4), gc.float32, name="img")
        ids = gc.placeholder((4, 3), gc.int32, name="ids")
        mask = gc.placeholder((4,), gc.float32, name="mask")
        outs = []
        for training in (True, False):
            with nn.Scope(training=training, sample_mask=mask if training else None) as scope:
                outs.append(add([conv(img), seq(emb(ids))]))
                if training:
                    updates = dict(scope.updates)
    args = (RNG.standard_normal((4, 2, 4, 4)).astype(np.float32),
            RNG.integers(0, 7, (4, 3)).astype(np.int32), np.array([1, 1, 1, 0], np.float32))
    before = {n: v.copy() for n, v in g.variables.items()}
    expected = gc.reference(g, [img, ids, mask], outs, updates=updates)(*args)
    after_ref = {n: v.copy() for n, v in g.variables.items()}
    for n, v in before.items():
        g.variables[n] = v
    got = gc.compile(g, [img, ids, mask], outs, updates=updates)(*args)
    for e, o in zip(expected, got):
        np.testing.assert_allclose(o, e, rtol=1e-4, atol=1e-5)
    for n, v in after_ref.items():
        np.testing.assert_allclose(g.variables[n], v, rtol=1e-5, atol=1e-6)
    assert int(g.variables["dropout/step"]) == 1


# --- PyTorch with copied weights ----------------------------------------------------------------

def _torch() -> Any:
    return pytest.importorskip("torch")


def test_against_torch_dense_conv_pools_norms_embedding() -> None:
    torch = _torch()
    tnn = torch.nn
    x = rand(2, 4, 6, 6)
    t = torch.from_numpy(x)

    dense = nn.Dense(5)
    out, g, _ = run_layer(dense, x.reshape(2, -1))
    lin = tnn.Linear(144, 5)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(weights(g, dense)["kernel"].T.copy()))
        lin.bias.copy_(torch.from_numpy(weights(g, dense)["bias"]))
    np.testing.assert_allclose(out, lin(t.reshape(2, -1)).detach().numpy(), rtol=1e-4,
                               atol=1e-5)

    conv = nn.Conv2D(6, 3, strides=2, padding=1, dilation=1, groups=2)
    out, g, _ = run_layer(conv, x)
    tconv = tnn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    with torch.no_grad():
        tconv.weight.copy_(torch.from_numpy(weights(g, conv)["kernel"]))
        tconv.bias.copy_(torch.from_numpy(weights(g, conv)["bias"]))
    np.testing.assert_allclose(out, tconv(t).detach().numpy(), rtol=1e-4, atol=1e-5)

    for layer, tlayer in ((nn.MaxPool2D(3, strides=2), tnn.MaxPool2d(3, 2)),
                          (nn.AvgPool2D(2, padding=1), tnn.AvgPool2d(2, padding=1))):
        out, _, _ = run_layer(layer, x)
        np.testing.assert_allclose(out, tlayer(t).numpy(), rtol=1e-5, atol=1e-6)

    bn = nn.BatchNorm(momentum=0.9)
    out, g, scope = run_layer(bn, x, training=True)
    tbn = tnn.BatchNorm2d(4, momentum=0.1).train()
    np.testing.assert_allclose(out, tbn(t).detach().numpy(), rtol=1e-4, atol=1e-5)
    gc.reference(g, inputs=[g["in0"]], outputs=[], updates=scope.updates)(x)
    np.testing.assert_allclose(g.variables["batch_norm/running_var"],
                               tbn.running_var.numpy(), rtol=1e-5)
    np.testing.assert_allclose(g.variables["batch_norm/running_mean"],
                               tbn.running_mean.numpy(), rtol=1e-5, atol=1e-6)

    ln = nn.LayerNorm(axis=(-2, -1))
    out, _, _ = run_layer(ln, x)
    np.testing.assert_allclose(out, tnn.LayerNorm([6, 6])(t).detach().numpy(), rtol=1e-4,
                               atol=1e-5)

    ids = np.array([[1, 2, 0], [4, 4, 3]], np.int32)
    emb = nn.Embedding(5, 3)
    out, g, _ = run_layer(emb, ids)
    temb = tnn.Embedding(5, 3)
    with torch.no_grad():
        temb.weight.copy_(torch.from_numpy(weights(g, emb)["embeddings"]))
    np.testing.assert_allclose(out, temb(torch.from_numpy(ids).long()).detach().numpy())


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_against_torch_recurrent(kind: str) -> None:
    torch = _torch()
    x = rand(3, 4, 5)
    cls = {"rnn": nn.SimpleRNN, "lstm": nn.LSTM, "gru": nn.GRU}[kind]
    layer = cls(6, return_sequences=True)
    out, g, _ = run_layer(layer, x)
    w = weights(g, layer)
    tcls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind]
    module = tcls(5, 6, batch_first=True)
    with torch.no_grad():
        module.weight_ih_l0.copy_(torch.from_numpy(w["kernel"].T.copy()))
        module.weight_hh_l0.copy_(torch.from_numpy(w["recurrent_kernel"].T.copy()))
        if kind == "gru":
            module.bias_ih_l0.copy_(torch.from_numpy(w["bias"]))
            module.bias_hh_l0.copy_(torch.from_numpy(w["recurrent_bias"]))
        else:  # one bias here is PyTorch's b_ih + b_hh
            module.bias_ih_l0.copy_(torch.from_numpy(w["bias"]))
            module.bias_hh_l0.zero_()
    expected = module(torch.from_numpy(x))[0].detach().numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
