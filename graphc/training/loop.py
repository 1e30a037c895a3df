"""The training loop behind `Model.fit` and the batched inference behind evaluate/predict.

Per step the host does only what it must: gather the batch's rows (pad the last, short
batch and mark it in the sample mask), make the one native call, and keep the loss and
the training-mode outputs for the epoch's metrics. Metrics are computed in numpy at the
end of the epoch (and for the progress bar, only when it redraws).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

import numpy as np

from graphc.errors import ArgumentError
from graphc.ir import Node
from graphc.training.callbacks import CallbackList
from graphc.training.data import pad_batch, train_val_split
from graphc.training.history import History
from graphc.training.progress import ProgressBar

__all__ = ["Fittable", "fit", "run_inference"]


class TrainGraph(Protocol):
    """The nodes of a model's training graph the loop reads."""

    y: Node
    mask: Node


class Fittable(Protocol):
    """What the loop needs of a model (`graphc.training.Model` is the implementation)."""

    default_batch_size: int
    stop_training: bool
    metrics: list[tuple[str, Callable[[np.ndarray, np.ndarray], float]]]

    def train_graph(self, batch_size: int) -> TrainGraph: ...
    def train_step_fn(self, batch_size: int) -> Any: ...
    def evaluate_fn(self, batch_size: int) -> Any: ...
    def check_x(self, x: Any) -> np.ndarray: ...
    def check_y(self, y: Any, n: int, target: Node) -> np.ndarray: ...
    def evaluate(self, x: Any, y: Any, batch_size: int | None = None) -> dict[str, float]: ...


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ArgumentError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def run_inference(model: Fittable, x: np.ndarray, y: np.ndarray, batch: int
                  ) -> tuple[np.ndarray, np.ndarray, float]:
    """(outputs, per-example losses, regularization term) over all of x, in batches."""
    fn = model.evaluate_fn(batch)
    n = len(x)
    outputs: np.ndarray | None = None
    per_example = np.empty(n, np.float64)
    extra = 0.0
    for start in range(0, n, batch):
        xb, yb = x[start:start + batch], y[start:start + batch]
        r = len(xb)
        result = fn(pad_batch(xb, batch), pad_batch(yb, batch))
        if outputs is None:
            outputs = np.empty((n, *result[0].shape[1:]), result[0].dtype)
        outputs[start:start + r] = result[0][:r]
        per_example[start:start + r] = result[1][:r]
        if len(result) > 2:
            extra = float(result[2])
    assert outputs is not None
    return outputs, per_example, extra


@dataclass
class _EpochState:
    """The running totals of one epoch: loss, examples seen, training-mode outputs."""

    metrics: list[tuple[str, Callable[[np.ndarray, np.ndarray], float]]]
    targets: np.ndarray  # in the epoch's order
    loss_sum: float = 0.0
    seen: int = 0
    outputs: np.ndarray | None = None

    def add(self, loss: float, out: np.ndarray, real: int, total: int) -> None:
        """One step's mean loss and outputs, of which the first `real` rows are real."""
        self.loss_sum += loss * real
        self.seen += real
        if self.metrics:
            if self.outputs is None:
                self.outputs = np.empty((total, *out.shape[1:]), out.dtype)
            self.outputs[self.seen - real:self.seen] = out[:real]

    def logs(self) -> dict[str, float]:
        """The loss and metrics over the examples seen so far."""
        logs = {"loss": self.loss_sum / max(self.seen, 1)}
        if self.outputs is not None:
            for name, fn in self.metrics:
                logs[name] = float(fn(self.targets[:self.seen], self.outputs[:self.seen]))
        return logs


def checked_data(model: Fittable, target: Node, x: Any, y: Any,
                 validation_data: tuple[Any, Any] | None, validation_split: float, seed: int
                 ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """The training arrays and the validation pair (given, split off with `seed`, or None),
    each checked against the model's input and `target`'s per-example type."""
    xs = model.check_x(x)
    ys = model.check_y(y, len(xs), target)
    if validation_data is not None:
        xv = model.check_x(validation_data[0])
        return xs, ys, (xv, model.check_y(validation_data[1], len(xv), target))
    if validation_split > 0:
        (xs, ys), validation = train_val_split(xs, ys, validation_split, seed=seed)
        return xs, ys, validation
    return xs, ys, None


def fit(model: Fittable, x: Any, y: Any, batch_size: int, epochs: int,
        validation_data: tuple[Any, Any] | None, validation_split: float, shuffle: bool,
        seed: int, callbacks: list[Any], verbose: int, initial_epoch: int, stream: TextIO
        ) -> History:
    """See `Model.fit`."""
    batch = _positive("batch_size", batch_size)
    epochs = int(epochs)
    model.default_batch_size = batch
    graph = model.train_graph(batch)
    xs, ys, validation = checked_data(model, graph.y, x, y, validation_data,
                                      validation_split, seed)

    history = History()
    t0 = time.perf_counter()
    step = model.train_step_fn(batch)
    if validation is not None:
        model.evaluate_fn(batch)
    history.compile_seconds = time.perf_counter() - t0

    cbs = CallbackList(callbacks, model)
    model.stop_training = False
    rng = np.random.default_rng(seed)
    n = len(xs)
    steps = math.ceil(n / batch)
    full_mask = np.ones(batch, graph.mask.dtype.np)
    cbs.on_train_begin({})
    for epoch in range(initial_epoch, epochs):
        if model.stop_training:
            break
        cbs.on_epoch_begin(epoch, {})
        order = rng.permutation(n) if shuffle else np.arange(n)
        state = _EpochState(model.metrics, ys[order] if model.metrics else ys)
        bar = ProgressBar(epoch, epochs, steps, stream, verbose)
        bar.begin()
        start = time.perf_counter()
        for s in range(steps):
            idx = order[s * batch:(s + 1) * batch]
            r = len(idx)
            xb, yb, mask = xs[idx], ys[idx], full_mask
            if r < batch:
                xb, yb = pad_batch(xb, batch), pad_batch(yb, batch)
                mask = np.zeros(batch, full_mask.dtype)
                mask[:r] = 1
            if cbs.batch_hooks:
                cbs.on_batch_begin(s, {"size": r})
            loss, out = step(xb, yb, mask)
            loss_value = float(loss)
            state.add(loss_value, out, r, n)
            if cbs.batch_hooks:
                cbs.on_batch_end(s, {"loss": loss_value, "size": r})
            if bar.live:
                bar.update(s + 1, state.seen, state.logs)
        history.train_seconds += time.perf_counter() - start
        history.steps += steps
        history.samples += n
        logs = state.logs()
        if validation is not None:
            val = model.evaluate(validation[0], validation[1], batch_size=batch)
            logs.update({f"val_{k}": v for k, v in val.items()})
        cbs.on_epoch_end(epoch, logs)
        bar.finish(logs, n)
        history.append(epoch, logs)
    cbs.on_train_end({})
    return history
