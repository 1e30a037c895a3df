"""gc.Model: fit/evaluate/predict, the padded last batch, history, progress, save/load,
export, regularization, and the compiled steps against the reference interpreter.

One trained digits model is shared by the module (compiles are the expensive part).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

import graphc as gc
from graphc import nn

BATCH = 32


def digits_net(seed: int = 0, l2: float = 0.0) -> nn.Sequential:
    reg = nn.L2(l2) if l2 else None
    return nn.Sequential([nn.Dense(32, "relu", seed=seed, kernel_regularizer=reg),
                          nn.BatchNorm(), nn.Dropout(0.1, seed=seed), nn.Dense(10, seed=seed)])


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    data = gc.datasets.digits()
    train, test = gc.datasets.train_test_split(data, test_fraction=0.25, seed=0)
    return train.images, train.labels, test.images, test.labels


@pytest.fixture(scope="module")
def trained(digits: tuple) -> tuple[gc.Model, gc.History]:
    x, y, xt, yt = digits
    model = gc.Model(digits_net(), (64,), optimizer=gc.optim.Adam(3e-3),
                     metrics=["accuracy", "f1"])
    history = model.fit(x, y, batch_size=BATCH, epochs=4, validation_data=(xt, yt), verbose=0)
    return model, history


def np_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(labels)), labels]


def test_fit_returns_per_epoch_history(trained: tuple, digits: tuple) -> None:
    _, history = trained
    assert history.epochs == [0, 1, 2, 3]
    assert set(history.keys()) == {"loss", "accuracy", "f1", "val_loss", "val_accuracy",
                                   "val_f1"}
    assert all(len(v) == 4 for v in history.history.values())
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["val_accuracy"][-1] > 0.9
    n = len(digits[0])
    assert history.steps == 4 * -(-n // BATCH) and history.samples == 4 * n
    assert history.steps_per_second > 0 and history.compile_seconds > 0


def test_evaluate_and_predict_agree_with_numpy(trained: tuple, digits: tuple) -> None:
    model, history = trained
    _, _, xt, yt = digits
    logits = model.predict(xt)
    assert logits.shape == (len(xt), 10)  # 449 = 14 full batches + a padded one
    np.testing.assert_array_equal(model.predict(xt), logits)  # inference is deterministic
    logs = model.evaluate(xt, yt)
    np.testing.assert_allclose(logs["loss"], np_cross_entropy(logits, yt).mean(), rtol=1e-5)
    assert logs["accuracy"] == np.mean(np.argmax(logits, 1) == yt)
    assert logs["f1"] == gc.metrics.f1_score(yt, np.argmax(logits, 1), average="macro")
    # The last epoch's validation values were computed on the same (final) weights.
    np.testing.assert_allclose(history["val_loss"][-1], logs["loss"], rtol=1e-6)
    # predict of a batch that is not a multiple of the batch size equals the full run.
    np.testing.assert_allclose(model.predict(xt[:7]), logits[:7], rtol=1e-6)


def test_save_load_restores_weights_and_optimizer_state(trained: tuple, digits: tuple,
                                                        tmp_path: Path) -> None:
    model, _ = trained
    x, y, xt, _ = digits
    path = model.save(tmp_path / "digits.gcc")
    clone = gc.Model(digits_net(), (64,), optimizer=gc.optim.Adam(3e-3),
                     metrics=["accuracy", "f1"]).load(path)
    assert clone.weight_names == model.weight_names
    assert clone.optimizer.iterations == model.optimizer.iterations > 0
    np.testing.assert_array_equal(clone.predict(xt), model.predict(xt))
    # Resuming from the checkpoint continues exactly like the original.
    h1 = model.fit(x[:200], y[:200], batch_size=BATCH, epochs=1, verbose=0, seed=5)
    h2 = clone.fit(x[:200], y[:200], batch_size=BATCH, epochs=1, verbose=0, seed=5)
    np.testing.assert_allclose(h1["loss"], h2["loss"], rtol=1e-6)
    for name in model.graph.variables:
        np.testing.assert_allclose(clone.graph.variables[name], model.graph.variables[name],
                                   rtol=1e-6, atol=1e-7)


def test_padded_last_batch_equals_an_unpadded_step() -> None:
    """A short batch, zero-padded with a sample mask, takes exactly the step that a model
    with that batch size takes: the same loss, weights, and BatchNorm running stats."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 6)).astype(np.float32)
    y = rng.integers(0, 3, 5).astype(np.int32)

    def model() -> gc.Model:
        net = nn.Sequential([nn.Dense(4, "tanh", seed=1), nn.BatchNorm(), nn.Dense(3, seed=2)])
        return gc.Model(net, (6,), optimizer=gc.optim.Adam(0.1), metrics=[],
                        backend="reference")

    padded, exact = model(), model()
    h_padded = padded.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    h_exact = exact.fit(x, y, batch_size=5, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(h_padded["loss"], h_exact["loss"], rtol=1e-6)
    for name in exact.graph.variables:
        np.testing.assert_allclose(padded.graph.variables[name], exact.graph.variables[name],
                                   rtol=1e-5, atol=1e-6, err_msg=name)
    assert float(padded.graph.variables["batch_norm/running_var"][0]) != 1.0


def test_compiled_training_matches_the_reference() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)[:, None]

    def model(backend: str) -> gc.Model:
        net = nn.Sequential([nn.Dense(8, "relu", seed=3), nn.BatchNorm(), nn.Dropout(0.2),
                             nn.Dense(1, seed=4)])
        return gc.Model(net, (6,), loss="binary_crossentropy", optimizer=gc.optim.SGD(0.1, 0.9),
                        metrics=["accuracy", "precision", "recall"], backend=backend)

    ref, fast = model("reference"), model("compiled")
    h_ref = ref.fit(x, y, batch_size=16, epochs=3, verbose=0)
    h_fast = fast.fit(x, y, batch_size=16, epochs=3, verbose=0)
    for key in h_ref.keys():
        np.testing.assert_allclose(h_fast[key], h_ref[key], rtol=1e-4, atol=1e-5, err_msg=key)
    for name in ref.graph.variables:
        np.testing.assert_allclose(fast.graph.variables[name], ref.graph.variables[name],
                                   rtol=1e-4, atol=1e-5, err_msg=name)


def test_regularization_is_part_of_the_loss() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((10, 4)).astype(np.float32)
    y = rng.standard_normal((10, 2)).astype(np.float32)
    net = nn.Dense(2, kernel_regularizer=nn.L2(0.5), bias_regularizer=nn.L1(0.25))
    model = gc.Model(net, (4,), loss="mse", metrics=["mae", "r2"], backend="reference")
    model.build(4)
    g = model.graph
    g.variables["dense/bias"] = np.array([1.0, -2.0], np.float32)
    w, b = g.variables["dense/kernel"].astype(np.float64), np.array([1.0, -2.0])
    pred = x @ w + b
    logs = model.evaluate(x, y, batch_size=4)
    expected = np.mean((pred - y) ** 2) + 0.5 * np.sum(w ** 2) + 0.25 * 3.0
    np.testing.assert_allclose(logs["loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(logs["mae"], np.mean(np.abs(pred - y)), rtol=1e-5)
    np.testing.assert_allclose(logs["r2"], gc.metrics.r2_score(y, pred), rtol=1e-5)


def _fake_tty() -> io.StringIO:
    stream = io.StringIO()
    stream.isatty = lambda: True  # type: ignore[method-assign]
    return stream


def test_progress_bar_only_on_a_terminal() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 3)).astype(np.float32)
    y = rng.integers(0, 2, 40).astype(np.int32)
    model = gc.Model(nn.Dense(2), (3,), backend="reference")
    tty = _fake_tty()
    model.fit(x, y, batch_size=8, epochs=2, verbose=1, stream=tty)
    text = tty.getvalue()
    assert "\r" in text and "samples/s" in text and "ETA" in text
    assert "loss: " in text and "accuracy: " in text and "Epoch 2/2" in text
    assert "5/5 [" in text  # steps done of the epoch's steps
    pipe = io.StringIO()
    model.fit(x, y, batch_size=8, epochs=2, verbose=1, stream=pipe)
    lines = pipe.getvalue().splitlines()
    assert "\r" not in pipe.getvalue() and "ETA" not in pipe.getvalue()
    assert len(lines) == 2 and lines[1].startswith("Epoch 2/2") and "loss: " in lines[1]
    quiet = _fake_tty()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, stream=quiet)
    assert quiet.getvalue() == ""


def test_data_errors_name_expected_and_received() -> None:
    model = gc.Model(nn.Dense(2), (3,), backend="reference")
    with pytest.raises(gc.ArgumentError, match=r"x: expected shape \(n, 3\).*got \(4, 5\)"):
        model.fit(np.zeros((4, 5), np.float32), np.zeros(4, np.int32), verbose=0)
    with pytest.raises(gc.ArgumentError, match=r"y: expected shape \(4,\).*got \(4, 2\)"):
        model.fit(np.zeros((4, 3), np.float32), np.zeros((4, 2), np.int32), verbose=0)
    with pytest.raises(gc.ArgumentError, match="integer labels"):
        model.fit(np.zeros((4, 3), np.float32), np.zeros(4, np.float32), verbose=0)
    with pytest.raises(gc.AttrError, match="unknown loss"):
        gc.Model(nn.Dense(2), (3,), loss="hinge")
    with pytest.raises(gc.AttrError, match="unknown metric"):
        gc.Model(nn.Dense(2), (3,), metrics=["auc"])


def test_summary_and_weights(trained: tuple) -> None:
    model, _ = trained
    text = model.summary()
    assert "dense/kernel" in text and "batch_norm/running_mean" in text
    assert "optim" not in text  # optimizer state is not a model weight
    weights = model.get_weights()
    assert set(weights) == set(model.weight_names)
    assert all(not name.startswith("optim") for name in weights)


def test_export_runs_like_predict(trained: tuple, digits: tuple, tmp_path: Path) -> None:
    try:
        from graphc.runtime.library import load
    except ImportError:
        pytest.skip("this installation has no exporter")
    model, _ = trained
    _, _, xt, _ = digits
    try:
        model.export(tmp_path / "libdigits.so")
    except gc.GraphcError as exc:
        if "compiler" in str(exc):
            pytest.skip(f"no C toolchain: {exc}")
        raise
    lib = load(tmp_path / "libdigits.so")
    np.testing.assert_allclose(lib(xt[:BATCH]), model.predict(xt[:BATCH]), rtol=1e-5,
                               atol=1e-5)


def test_save_graph_holds_runnable_signatures(tmp_path: Path) -> None:
    net = nn.Sequential([nn.Conv2D(2, 3, padding="same", seed=0), nn.BatchNorm(),
                         nn.Dropout(0.5), nn.Flatten(), nn.Dense(3, seed=1)])
    model = gc.Model(net, (1, 5, 5), backend="reference").build(4)
    model.save_graph(tmp_path / "model.gcg")
    g = gc.load(tmp_path / "model.gcg")
    assert {"train_b4", "evaluate_b4", "predict_b4"} <= set(g.signatures)
    x = np.random.default_rng(0).random((4, 1, 5, 5)).astype(np.float32)
    (loaded,) = gc.reference(g, signature="predict_b4")(x)
    np.testing.assert_array_equal(loaded, model.predict(x, batch_size=4))
