"""Callbacks for `Model.fit` (Keras' hooks): EarlyStopping, ModelCheckpoint,
LearningRateScheduler, CSVLogger.

A callback overrides any of ``on_train_begin/end(logs)``, ``on_epoch_begin/end(epoch,
logs)`` and ``on_batch_begin/end(step, logs)``; ``self.model`` is the model being trained.
Epoch logs hold ``loss``, the metrics, and ``val_*`` entries when validating; callbacks may
add entries in ``on_epoch_end`` (LearningRateScheduler adds ``lr``), which then appear in
the History. Batch hooks are only called for callbacks that override them, so the
training loop pays nothing for them otherwise.

`mode="auto"` watches for a decrease, except for monitors naming accuracy, precision,
recall, f1 or r2, which should increase.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from graphc.errors import AttrError, GraphcError
from graphc.optim.schedules import ReduceOnPlateau, Schedule

__all__ = ["CSVLogger", "Callback", "CallbackList", "EarlyStopping", "LearningRateScheduler",
           "ModelCheckpoint"]

Logs = dict[str, float]


class Callback:
    """Base class: every hook does nothing."""

    model: Any = None

    def set_model(self, model: Any) -> None:
        self.model = model

    def on_train_begin(self, logs: Logs) -> None: ...
    def on_train_end(self, logs: Logs) -> None: ...
    def on_epoch_begin(self, epoch: int, logs: Logs) -> None: ...
    def on_epoch_end(self, epoch: int, logs: Logs) -> None: ...
    def on_batch_begin(self, step: int, logs: Logs) -> None: ...
    def on_batch_end(self, step: int, logs: Logs) -> None: ...


class CallbackList:
    """Dispatches each hook to every callback in order."""

    def __init__(self, callbacks: Sequence[Callback], model: Any):
        for cb in callbacks:
            if not isinstance(cb, Callback):
                raise GraphcError(f"{cb!r} is not a gc.callbacks.Callback", op="fit")
            cb.set_model(model)
        self.callbacks = list(callbacks)
        self.batch_hooks = any(
            getattr(getattr(cb, hook), "__func__", None) is not getattr(Callback, hook)
            for cb in self.callbacks for hook in ("on_batch_begin", "on_batch_end"))

    def __getattr__(self, hook: str) -> Callable[..., None]:
        if not hook.startswith("on_"):
            raise AttributeError(hook)

        def dispatch(*args: Any) -> None:
            for cb in self.callbacks:
                getattr(cb, hook)(*args)

        return dispatch


def _mode(monitor: str, mode: str) -> str:
    if mode not in ("auto", "min", "max"):
        raise AttrError(f"mode must be 'auto', 'min' or 'max', got {mode!r}", op="callback")
    if mode != "auto":
        return mode
    grows = ("acc", "precision", "recall", "f1", "r2")
    return "max" if any(word in monitor for word in grows) else "min"


class _Monitor:
    """Tracks the best value of one logged quantity."""

    def __init__(self, monitor: str, mode: str, min_delta: float = 0.0):
        self.monitor = monitor
        self.mode = _mode(monitor, mode)
        self.min_delta = abs(float(min_delta))
        self.best = math.inf if self.mode == "min" else -math.inf

    def value(self, logs: Mapping[str, float], owner: str) -> float:
        if self.monitor not in logs:
            known = ", ".join(sorted(logs)) or "none"
            raise GraphcError(f"monitor {self.monitor!r} is not logged (logged: {known}); "
                              "validation values need validation_data", op=owner)
        return float(logs[self.monitor])

    def improves(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved (by more than `min_delta`) for `patience`
    epochs in a row (patience 0 acts as 1: stop at the first epoch without improvement).
    With `restore_best_weights`, the model's weights (not the optimizer state) of the best
    epoch are restored when training ends, if a later epoch was worse.

    After training: `stopped_epoch` (None if it ran to the end), `best`, `best_epoch`.
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 0, min_delta: float = 0.0,
                 mode: str = "auto", restore_best_weights: bool = False):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise AttrError(f"patience must be an int >= 0, got {patience!r}",
                            op="EarlyStopping")
        self.monitor = monitor
        self.patience = patience
        self.min_delta = min_delta
        self.mode = mode
        self.restore_best_weights = bool(restore_best_weights)
        self._reset()

    def _reset(self) -> None:
        self._tracker = _Monitor(self.monitor, self.mode, self.min_delta)
        self.wait = 0
        self.best_epoch: int | None = None
        self.last_epoch: int | None = None
        self.stopped_epoch: int | None = None
        self.best_weights: dict[str, np.ndarray] | None = None
        self.restored = False

    @property
    def best(self) -> float:
        return self._tracker.best

    def on_train_begin(self, logs: Logs) -> None:
        self._reset()

    def on_epoch_end(self, epoch: int, logs: Logs) -> None:
        value = self._tracker.value(logs, "EarlyStopping")
        self.last_epoch = epoch
        if self._tracker.improves(value):
            self._tracker.best = value
            self.best_epoch = epoch
            self.wait = 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            return
        self.wait += 1
        if self.wait >= max(self.patience, 1):
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs: Logs) -> None:
        if (self.restore_best_weights and self.best_weights is not None
                and self.best_epoch != self.last_epoch):
            self.model.set_weights(self.best_weights)
            self.restored = True


class ModelCheckpoint(Callback):
    """Save the model (`Model.save`: an atomic checkpoint write) after each epoch, or with
    `save_best_only` only when `monitor` improved. `filepath` may hold ``{epoch}`` (1-based)
    and logged names, e.g. ``"ckpt-{epoch:02d}-{val_loss:.3f}.gcc"``. A crash while
    writing leaves the previous file intact. `saved` lists (epoch, path) of each write.
    """

    def __init__(self, filepath: str | os.PathLike[str], monitor: str = "val_loss",
                 save_best_only: bool = False, mode: str = "auto"):
        self.filepath = os.fspath(filepath)
        self.monitor = monitor
        self.save_best_only = bool(save_best_only)
        self.mode = mode
        self._tracker = _Monitor(monitor, mode)
        self.saved: list[tuple[int, Path]] = []

    def on_train_begin(self, logs: Logs) -> None:
        self._tracker = _Monitor(self.monitor, self.mode)

    def on_epoch_end(self, epoch: int, logs: Logs) -> None:
        if self.save_best_only:
            value = self._tracker.value(logs, "ModelCheckpoint")
            if not self._tracker.improves(value):
                return
            self._tracker.best = value
        try:
            path = self.filepath.format(epoch=epoch + 1, **logs)
        except KeyError as exc:
            known = ", ".join(["epoch", *sorted(logs)])
            raise GraphcError(f"filepath {self.filepath!r} names {exc}, which is not logged "
                              f"(known: {known})", op="ModelCheckpoint") from None
        self.saved.append((epoch, self.model.save(path)))


class LearningRateScheduler(Callback):
    """Set the optimizer's learning rate from a schedule.

    `schedule`: a `gc.optim.schedules.Schedule` (its pure ``value(i)``), a callable
    ``i -> lr``, or a `ReduceOnPlateau` (stepped with ``logs[monitor]`` after each epoch).
    `unit="epoch"`: i is the epoch number, set before each epoch; `unit="step"`: i is the
    optimizer's step count (persisting across fits and checkpoints), set before each
    batch. The lr in effect is logged as ``lr``.
    """

    def __init__(self, schedule: Schedule | Callable[[int], float], unit: str = "epoch",
                 monitor: str = "val_loss"):
        if unit not in ("epoch", "step"):
            raise AttrError(f"unit must be 'epoch' or 'step', got {unit!r}",
                            op="LearningRateScheduler")
        if not (isinstance(schedule, Schedule) or callable(schedule)):
            raise AttrError(f"schedule must be a Schedule or a callable, got {schedule!r}",
                            op="LearningRateScheduler")
        self.schedule = schedule
        self.unit = unit
        self.monitor = monitor
        self.plateau = isinstance(schedule, ReduceOnPlateau)
        if self.unit == "step" and not self.plateau:
            self.on_batch_begin = self._on_batch_begin  # type: ignore[method-assign]

    def _lr(self, i: int) -> float:
        if isinstance(self.schedule, Schedule):
            return float(self.schedule.value(i))
        return float(self.schedule(i))

    def on_train_begin(self, logs: Logs) -> None:
        if self.plateau:
            self.model.optimizer.lr = self.schedule.current

    def on_epoch_begin(self, epoch: int, logs: Logs) -> None:
        if not self.plateau and self.unit == "epoch":
            self.model.optimizer.lr = self._lr(epoch)

    def _on_batch_begin(self, step: int, logs: Logs) -> None:
        self.model.optimizer.lr = self._lr(self.model.optimizer.iterations)

    def on_epoch_end(self, epoch: int, logs: Logs) -> None:
        logs["lr"] = float(self.model.optimizer.lr)
        if self.plateau:
            metric = _Monitor(self.monitor, "min").value(logs, "LearningRateScheduler")
            self.schedule.step(metric)
            self.model.optimizer.lr = self.schedule.current


class CSVLogger(Callback):
    """Append one row per epoch (``epoch`` then the logged values) to a CSV file, flushed
    after every row. The header comes from the first epoch's keys; `append` continues an
    existing file (without repeating its header)."""

    def __init__(self, filename: str | os.PathLike[str], separator: str = ",",
                 append: bool = False):
        self.filename = Path(filename)
        self.separator = separator
        self.append = bool(append)
        self._file: IO[str] | None = None
        self._writer: Any = None
        self._keys: list[str] | None = None

    def on_train_begin(self, logs: Logs) -> None:
        existing = self.append and self.filename.exists() and self.filename.stat().st_size > 0
        self._file = open(self.filename, "a" if self.append else "w", newline="",
                          encoding="utf-8")
        self._writer = csv.writer(self._file, delimiter=self.separator)
        self._keys = None
        if existing:
            with open(self.filename, encoding="utf-8", newline="") as f:
                header = next(csv.reader(f, delimiter=self.separator), None)
            self._keys = header[1:] if header else None

    def on_epoch_end(self, epoch: int, logs: Logs) -> None:
        assert self._file is not None and self._writer is not None
        if self._keys is None:
            self._keys = list(logs)
            self._writer.writerow(["epoch", *self._keys])
        self._writer.writerow([epoch, *(repr(float(logs[k])) if k in logs else ""
                                        for k in self._keys)])
        self._file.flush()

    def on_train_end(self, logs: Logs) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
