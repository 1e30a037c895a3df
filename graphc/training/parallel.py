"""`Model.fit(..., distributed=True)`: data-parallel training over the ranks of an MPI job.

Launch ``mpiexec -n N python train.py`` with the same script, data and model definition on
every rank. Semantics (what `tests/test_distributed_fit.py` checks):

- **Batches.** `batch_size` is the *global* batch: each step the ranks take the global batch
  a single process would take, split into `N` contiguous parts (`batch_size` must be
  divisible by `N`). The epoch's order is drawn from ``default_rng((seed, epoch))`` on every
  rank alike, so the ranks agree without communicating and a run resumed at
  `initial_epoch` (on any number of ranks) replays the order of an uninterrupted one. The
  last, short global batch is split as evenly as possible (``np.array_split``) and padded
  per rank; the loss divides by the global count of real examples, so even then the step
  equals one process's step on the same examples.
- **Gradients.** Mean over ranks (`minimize(distributed=True)`), before clipping: gradient
  clipping by global norm acts on the reduced gradient, as in one process. Learning-rate
  scaling with `N` is left to the user.
- **BatchNorm: per-rank mode.** Batch statistics are each rank's own (over its B/N
  examples, as PyTorch DDP without SyncBatchNorm); the running statistics are averaged over
  the ranks every step, so every variable stays identical on all ranks. A network with
  BatchNorm therefore trains differently on N ranks than on one (the statistics of B/N
  examples instead of B); everything else matches one process within rounding.
- **Dropout: per-rank streams.** Rank r draws its masks from stream r (`nn.Scope.stream`),
  so ranks drop different units; on one rank the masks are those of a plain `fit`.
- **State.** Rank 0's variables (weights, optimizer slots) are broadcast before the first
  step, so every rank starts from rank 0's initialization or checkpoint.
- **Rank 0 decides.** Progress, callbacks (checkpoints, early stopping, LR schedules, CSV
  logs) run on rank 0 only; after each hook rank 0 broadcasts ``model.stop_training`` and,
  when a hook may have changed variables (a schedule setting the learning rate, early
  stopping restoring weights), every variable. No rank is left waiting in an allreduce:
  every rank takes the same steps and stops after the same epoch.
- **Metrics** are each rank's over its examples, then averaged over ranks weighted by their
  example counts (the loss is exactly the global mean; accuracy-like metrics too); the
  History and the returned logs are identical on every rank.
  `History.allreduce_wait_seconds` is this rank's time spent waiting on the gradient
  allreduces (`runtime.mpi.wait_seconds`), `allreduce_wait_per_step` its mean per step.

A rank that raises calls MPI_Abort (`gc.distributed.init(abort_on_error=True)`), which ends
the job; a rank that dies is detected by the launcher, which ends the others.
"""

from __future__ import annotations

import math
import time
from typing import Any, TextIO

import numpy as np

from graphc import comm
from graphc.distributed.setup import broadcast_variables
from graphc.distributed.setup import init as init_distributed
from graphc.errors import ArgumentError
from graphc.runtime import mpi
from graphc.training.callbacks import CallbackList
from graphc.training.data import pad_batch
from graphc.training.history import History
from graphc.training.loop import checked_data
from graphc.training.progress import ProgressBar

__all__ = ["fit_distributed"]


class _Ranks:
    """The world and the few collective decisions fit needs."""

    def __init__(self, world: comm.World):
        self.world = world
        self.rank, self.size = world.rank, world.size

    @property
    def many(self) -> bool:
        return self.size > 1 and self.world.comm is not None

    def share(self, rows: np.ndarray) -> np.ndarray:
        """This rank's part of a global batch's rows (contiguous, as even as possible)."""
        return np.array_split(rows, self.size)[self.rank]

    def bcast(self, value: Any) -> Any:
        return self.world.comm.bcast(value, root=0) if self.many else value

    def gather(self, value: Any) -> list[Any]:
        return self.world.comm.allgather(value) if self.many else [value]

    def sync_state(self, model: Any) -> None:
        """Rank 0's decision to stop and its variables, on every rank."""
        model.stop_training = bool(self.bcast(model.stop_training))
        if self.many:
            broadcast_variables(model.graph)


def _order(n: int, epoch: int, seed: int, shuffle: bool) -> np.ndarray:
    return np.random.default_rng((seed, epoch)).permutation(n) if shuffle else np.arange(n)


def _combine(ranks: _Ranks, loss_sum: float, seen: int, outputs: np.ndarray | None,
             targets: np.ndarray, metrics: list[Any]) -> dict[str, float]:
    """The epoch's logs over all ranks: the loss is the global mean, each metric the mean of
    the ranks' values weighted by their example counts."""
    mine: dict[str, float] = {}
    if outputs is not None and seen:
        for name, fn in metrics:
            mine[name] = float(fn(targets[:seen], outputs[:seen]))
    parts = ranks.gather((loss_sum, seen, mine))
    total = sum(p[1] for p in parts)
    logs = {"loss": sum(p[0] for p in parts) / max(total, 1)}
    for name, _ in metrics:
        weighted = [(p[2][name], p[1]) for p in parts if name in p[2]]
        if weighted:
            logs[name] = sum(v * c for v, c in weighted) / max(sum(c for _, c in weighted), 1)
    return logs


def _evaluate(model: Any, ranks: _Ranks, xv: np.ndarray, yv: np.ndarray, batch: int
              ) -> dict[str, float]:
    """Validation logs: each rank evaluates its contiguous share, combined by counts."""
    rows = ranks.share(np.arange(len(xv)))
    mine = model.evaluate(xv[rows], yv[rows], batch_size=batch) if len(rows) else {}
    parts = ranks.gather((mine, len(rows)))
    total = sum(c for _, c in parts)
    names = next(iter(m for m, c in parts if c), {})
    return {k: sum(m[k] * c for m, c in parts if c) / total for k in names}


def fit_distributed(model: Any, x: Any, y: Any, batch_size: int, epochs: int,
                    validation_data: tuple[Any, Any] | None, validation_split: float,
                    shuffle: bool, seed: int, callbacks: list[Any], verbose: int,
                    initial_epoch: int, stream: TextIO) -> History:
    """See the module docstring and `Model.fit`."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ArgumentError(f"batch_size must be an int >= 1, got {batch_size!r}")
    ranks = _Ranks(init_distributed())
    batch = int(batch_size)
    if batch % ranks.size:
        raise ArgumentError(f"batch_size {batch} (the global batch) is not divisible by the "
                            f"{ranks.size} ranks")
    per_rank = batch // ranks.size
    model.default_batch_size = per_rank
    graph = model.train_graph(per_rank, True)
    xs, ys, validation = checked_data(model, graph.y, x, y, validation_data,
                                      validation_split, seed)

    history = History()
    t0 = time.perf_counter()
    step = model.train_step_fn(per_rank, True)
    if validation is not None:
        model.evaluate_fn(per_rank)
    history.compile_seconds = time.perf_counter() - t0
    broadcast_variables(model.graph)  # every rank starts from rank 0's state

    root = ranks.rank == 0
    cbs = CallbackList(callbacks if root else [], model)
    # Does rank 0 run batch hooks (which may change variables, e.g. a per-step LR)?
    batch_hooks = bool(ranks.bcast(cbs.batch_hooks))
    model.stop_training = False
    n = len(xs)
    steps = math.ceil(n / batch)
    cbs.on_train_begin({})
    ranks.sync_state(model)
    for epoch in range(initial_epoch, int(epochs)):
        if model.stop_training:
            break
        cbs.on_epoch_begin(epoch, {})
        ranks.sync_state(model)
        order = _order(n, epoch, seed, shuffle)
        shares = [ranks.share(order[s * batch:(s + 1) * batch]) for s in range(steps)]
        mine = np.concatenate(shares) if shares else np.zeros(0, np.int64)
        targets = ys[mine]
        outputs: np.ndarray | None = None
        loss_sum, seen = 0.0, 0
        bar = ProgressBar(epoch, int(epochs), steps, stream, verbose if root else 0)
        bar.begin()
        start, waited = time.perf_counter(), mpi.wait_seconds()
        for s, idx in enumerate(shares):
            real = min(batch, n - s * batch)  # real examples of the global batch
            r = len(idx)
            xb, yb = pad_batch(xs[idx], per_rank), pad_batch(ys[idx], per_rank)
            mask = np.zeros(per_rank, graph.mask.dtype.np)
            mask[:r] = 1
            if batch_hooks:
                cbs.on_batch_begin(s, {"size": real})
                ranks.sync_state(model)
            loss, out = step(xb, yb, mask)
            # loss is this rank's sum over the global count times the ranks: undo the scale
            loss_sum += float(loss) * real / ranks.size
            if model.metrics and r:
                if outputs is None:
                    outputs = np.empty((len(mine), *out.shape[1:]), out.dtype)
                outputs[seen:seen + r] = out[:r]
            seen += r
            if batch_hooks:
                cbs.on_batch_end(s, {"loss": float(loss), "size": real})
                ranks.sync_state(model)
            if bar.live:
                running = {"loss": loss_sum / max(seen, 1)}
                bar.update(s + 1, seen, lambda: running)  # noqa: B023 (called at once)
        history.train_seconds += time.perf_counter() - start
        history.allreduce_wait_seconds += mpi.wait_seconds() - waited
        history.steps += steps
        history.samples += n
        logs = _combine(ranks, loss_sum, seen, outputs, targets, model.metrics)
        if validation is not None:
            val = _evaluate(model, ranks, validation[0], validation[1], per_rank)
            logs.update({f"val_{k}": v for k, v in val.items()})
        cbs.on_epoch_end(epoch, logs)
        logs = ranks.bcast(logs)  # callbacks may add entries (lr)
        ranks.sync_state(model)
        bar.finish(logs, n)
        history.append(epoch, logs)
    cbs.on_train_end({})
    ranks.sync_state(model)
    return history
