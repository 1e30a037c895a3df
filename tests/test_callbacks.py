"""Callbacks: EarlyStopping (stop + restore best weights on a rising validation loss),
ModelCheckpoint (best only; a crash mid-write keeps the previous file loadable),
LearningRateScheduler, CSVLogger, batch hooks and stop_training.

The scenario with a validation loss that first falls and then rises: a linear model
learns y = x·w from zero weights, while the validation targets are 0.5·x·w. Its
validation loss is smallest when the weights pass 0.5·w and grows after that.
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

import graphc as gc
from graphc import nn
from graphc.io import checkpoint
from graphc.training.callbacks import (
    Callback,
    CSVLogger,
    EarlyStopping,
    LearningRateScheduler,
    ModelCheckpoint,
)

W_TRUE = np.array([[1.0], [-2.0], [0.5], [3.0]])


def regression_data() -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    xv = rng.standard_normal((32, 4)).astype(np.float32)
    return x, (x @ W_TRUE).astype(np.float32), xv, (0.5 * xv @ W_TRUE).astype(np.float32)


def linear_model(backend: str = "reference", lr: float = 0.01) -> gc.Model:
    net = nn.Dense(1, use_bias=False, kernel_initializer="zeros")
    return gc.Model(net, (4,), loss="mse", optimizer=gc.optim.SGD(lr), metrics=[],
                    backend=backend)


def test_early_stopping_stops_and_restores_the_best_weights(tmp_path: Path) -> None:
    x, y, xv, yv = regression_data()
    model = linear_model("compiled")
    stop = EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    best_file = tmp_path / "best.gcc"
    keep = ModelCheckpoint(best_file, monitor="val_loss", save_best_only=True)
    history = model.fit(x, y, batch_size=16, epochs=100, validation_data=(xv, yv),
                        callbacks=[stop, keep], verbose=0)
    val = history["val_loss"]
    best = int(np.argmin(val))
    # The validation loss fell, then rose; training stopped `patience` epochs after the best.
    assert 0 < best < len(val) - 1 and val[-1] > val[best] and val[0] > val[best]
    assert stop.best_epoch == best and stop.stopped_epoch == best + 2 == len(val) - 1
    assert len(val) < 100 and stop.restored
    # The weights now are the best epoch's: evaluating gives that epoch's validation loss.
    np.testing.assert_allclose(model.evaluate(xv, yv)["loss"], val[best], rtol=1e-6)
    # ModelCheckpoint(save_best_only) saved on every improvement, the last at the best epoch.
    assert [e for e, _ in keep.saved] == [e for e in range(len(val))
                                          if val[e] < min(val[:e], default=np.inf)]
    assert keep.saved[-1][0] == best
    saved = checkpoint.read_checkpoint(best_file)
    np.testing.assert_array_equal(saved["dense/kernel"], model.graph.variables["dense/kernel"])


def test_early_stopping_without_restore_keeps_the_last_weights() -> None:
    x, y, xv, yv = regression_data()
    model = linear_model()
    stop = EarlyStopping(patience=1)
    history = model.fit(x, y, batch_size=16, epochs=100, validation_data=(xv, yv),
                        callbacks=[stop], verbose=0)
    assert not stop.restored and stop.stopped_epoch == len(history["val_loss"]) - 1
    np.testing.assert_allclose(model.evaluate(xv, yv)["loss"], history["val_loss"][-1],
                               rtol=1e-6)
    with pytest.raises(gc.GraphcError, match="monitor 'val_acc' is not logged"):
        model.fit(x, y, epochs=1, callbacks=[EarlyStopping("val_acc")], verbose=0)


def _trained_checkpoint(tmp_path: Path) -> tuple[gc.Model, ModelCheckpoint, Path, dict]:
    x, y, _, _ = regression_data()
    model = linear_model()
    path = tmp_path / "model.gcc"
    cb = ModelCheckpoint(path, monitor="loss")
    model.fit(x, y, batch_size=16, epochs=1, callbacks=[cb], verbose=0)
    first = checkpoint.read_checkpoint(path)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)  # the weights move on
    assert not np.array_equal(first["dense/kernel"], model.graph.variables["dense/kernel"])
    return model, cb, path, first


def _assert_previous_checkpoint_intact(path: Path, first: dict) -> None:
    again = checkpoint.read_checkpoint(path)
    assert again.keys() == first.keys()
    for name, value in first.items():
        np.testing.assert_array_equal(again[name], value)
    fresh = linear_model().load(path)  # and a model loads it
    np.testing.assert_array_equal(fresh.graph.variables["dense/kernel"], first["dense/kernel"])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_model_checkpoint_survives_a_process_dying_mid_write(tmp_path: Path) -> None:
    _, cb, path, first = _trained_checkpoint(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork of a threaded process
        pid = os.fork()
    if pid == 0:  # the child dies abruptly (no cleanup) in the middle of the next save
        try:
            def die(zf: object, member: str, array: np.ndarray) -> None:
                zf.writestr(member, array.tobytes()[: array.nbytes // 2])  # type: ignore
                os._exit(17)

            checkpoint._write_array = die  # type: ignore[assignment]
            cb.on_epoch_end(1, {"loss": 0.0})
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 17
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != path.name]
    assert leftovers and all(name.endswith(".tmp") for name in leftovers)  # it did write
    _assert_previous_checkpoint_intact(path, first)


def test_model_checkpoint_failed_write_keeps_the_previous_file(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    _, cb, path, first = _trained_checkpoint(tmp_path)

    def fail(zf: object, member: str, array: np.ndarray) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "_write_array", fail)
    with pytest.raises(gc.SerializationError, match="disk full"):
        cb.on_epoch_end(1, {"loss": 0.0})
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # the temp file is gone
    monkeypatch.undo()
    _assert_previous_checkpoint_intact(path, first)


def test_model_checkpoint_path_template(tmp_path: Path) -> None:
    x, y, _, _ = regression_data()
    model = linear_model()
    cb = ModelCheckpoint(tmp_path / "ckpt-{epoch:02d}-{loss:.3f}.gcc", monitor="loss")
    history = model.fit(x, y, batch_size=16, epochs=2, callbacks=[cb], verbose=0)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"ckpt-{e + 1:02d}-{history['loss'][e]:.3f}.gcc" for e in range(2)]


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.kernels: list[np.ndarray] = []

    def on_batch_end(self, step: int, logs: dict) -> None:
        self.events.append(("batch", step, logs["size"]))

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        self.events.append(("epoch", epoch))
        self.kernels.append(self.model.graph.variables["dense/kernel"].copy())


def test_learning_rate_scheduler_sets_lr_per_epoch() -> None:
    x, y, _, _ = regression_data()
    model = linear_model(lr=0.5)
    rec = Recorder()
    schedule = gc.optim.StepDecay(base_lr=0.02, step_size=2, gamma=0.5)
    zero_in_epoch_2 = LearningRateScheduler(lambda e: 0.0 if e == 2 else schedule.value(e))
    history = model.fit(x, y, batch_size=24, epochs=4, callbacks=[zero_in_epoch_2, rec],
                        verbose=0)
    assert history["lr"] == [0.02, 0.02, 0.0, 0.01]
    np.testing.assert_array_equal(rec.kernels[2], rec.kernels[1])  # lr 0: no change
    assert not np.array_equal(rec.kernels[3], rec.kernels[2])
    # Batch hooks ran once per step, with the real size of the last (padded) batch.
    batches = [e for e in rec.events if e[0] == "batch"]
    assert len(batches) == 4 * 3 and [b[2] for b in batches[:3]] == [24, 24, 16]


def test_learning_rate_scheduler_per_step_and_on_plateau() -> None:
    x, y, xv, yv = regression_data()
    model = linear_model()
    per_step = LearningRateScheduler(lambda i: 0.001 * (i + 1), unit="step")
    history = model.fit(x, y, batch_size=16, epochs=2, callbacks=[per_step], verbose=0)
    assert model.optimizer.iterations == 8
    np.testing.assert_allclose(history["lr"], [0.004, 0.008])

    model = linear_model()
    plateau = gc.optim.ReduceOnPlateau(base_lr=0.01, factor=0.5, patience=0)
    history = model.fit(x, y, batch_size=16, epochs=30, validation_data=(xv, yv),
                        callbacks=[LearningRateScheduler(plateau, monitor="val_loss")],
                        verbose=0)
    lrs, val = history["lr"], history["val_loss"]
    best = int(np.argmin(val))
    assert lrs[0] == 0.01 and lrs[best] == 0.01 and lrs[best + 2] == 0.005
    assert model.optimizer.lr < 0.01


def test_csv_logger_writes_one_row_per_epoch(tmp_path: Path) -> None:
    x, y, xv, yv = regression_data()
    model = linear_model()
    path = tmp_path / "log.csv"
    history = model.fit(x, y, batch_size=16, epochs=3, validation_data=(xv, yv),
                        callbacks=[CSVLogger(path)], verbose=0)
    model.fit(x, y, batch_size=16, epochs=5, initial_epoch=3, validation_data=(xv, yv),
              callbacks=[CSVLogger(path, append=True)], verbose=0)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", "loss", "val_loss"]
    assert [int(r[0]) for r in rows[1:]] == [0, 1, 2, 3, 4]
    for r, loss, val_loss in zip(rows[1:4], history["loss"], history["val_loss"]):
        assert float(r[1]) == loss and float(r[2]) == val_loss


def test_a_callback_can_stop_training() -> None:
    x, y, _, _ = regression_data()

    class StopAfterTwo(Callback):
        def on_epoch_end(self, epoch: int, logs: dict) -> None:
            if epoch == 1:
                self.model.stop_training = True

    history = linear_model().fit(x, y, epochs=10, callbacks=[StopAfterTwo()], verbose=0)
    assert history.epochs == [0, 1]
    with pytest.raises(gc.GraphcError, match=r"not a gc\.callbacks\.Callback"):
        linear_model().fit(x, y, epochs=1, callbacks=[object()], verbose=0)
