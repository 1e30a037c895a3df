"""`Model.fit(distributed=True)` on every rank; rank 0 saves what the test compares.

Run as ``mpiexec -n N python -m tests.mpi_workers.fit_model --out r.npz --model mlp ...``.
Every rank builds the model with a rank-dependent initialization seed (so the broadcast of
rank 0's variables has something to fix). After every step each rank's variables are
gathered and compared byte for byte. Options:

- `--model` mlp | cnn | gpt | bn (a BatchNorm MLP) | drop (an MLP with dropout);
- `--load CKPT --initial-epoch E` resume from a checkpoint; `--checkpoint PATH` save one
  (ModelCheckpoint on rank 0) after every epoch;
- `--early-stop` EarlyStopping(patience=0) monitoring a loss that rank 0 sees rising;
- `--lr-schedule epoch|step` a LearningRateScheduler (on rank 0) decaying the rate;
- `--kill-at-step K` SIGKILLs rank 1 at step K.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from typing import Any

import numpy as np

import graphc as gc
from graphc import nn

FEATURES, CLASSES, VOCAB, STEPS = 6, 3, 11, 8


def net_of(kind: str, dtype: str, seed: int) -> tuple[Any, tuple[int, ...], str]:
    """(net, input shape, input dtype)."""
    if kind in ("mlp", "bn", "drop"):
        middle = {"mlp": [], "bn": [nn.BatchNorm()], "drop": [nn.Dropout(0.5, seed=seed)]}
        return nn.Sequential([nn.Dense(16, activation="tanh", seed=seed), *middle[kind],
                              nn.Dense(CLASSES, seed=seed + 1)]), (FEATURES,), dtype
    if kind == "cnn":
        return nn.Sequential([
            nn.Conv2D(4, 3, padding="same", activation="relu", seed=seed),
            nn.MaxPool2D(2), nn.Flatten(), nn.Dense(CLASSES, seed=seed + 1)]), (1, 6, 6), dtype
    assert kind == "gpt"
    return nn.GPT(VOCAB, 16, 2, 2, 32, STEPS, dtype=dtype, seed=seed), (STEPS,), "int32"


def data_of(kind: str, n: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1234)
    if kind == "gpt":
        x = rng.integers(0, VOCAB, (n, STEPS)).astype(np.int32)
        y = np.roll(x, 1, axis=1)
        y[:, 0] = 0
        return x, y
    shape = (n, 1, 6, 6) if kind == "cnn" else (n, FEATURES)
    return rng.normal(size=shape).astype(dtype), rng.integers(0, CLASSES, n).astype(np.int32)


class Checked(gc.Model):
    """A Model whose training step checks, after each call, that all ranks hold the same
    variables (and can kill rank 1 at a given step)."""

    identical = True
    taken = 0
    kill_at = -1

    def train_step_fn(self, batch_size: int, distributed: bool = False) -> Any:
        step = super().train_step_fn(batch_size, distributed)
        world = gc.distributed.world()

        def checked(*args: np.ndarray) -> Any:
            if Checked.taken == Checked.kill_at and world.rank == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            result = step(*args)
            Checked.taken += 1
            if world.comm is not None and world.size > 1:
                mine = b"".join(self.graph.variables[k].tobytes()
                                for k in sorted(self.graph.variables))
                Checked.identical &= len(set(world.comm.allgather(mine))) == 1
            return result
        return checked


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="mlp")
    p.add_argument("--dtype", default="float64")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps-per-epoch", type=int, default=5)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--initial-epoch", type=int, default=0)
    p.add_argument("--short", type=int, default=0, help="examples in a last short batch")
    p.add_argument("--load", default="")
    p.add_argument("--checkpoint", default="")
    p.add_argument("--clipnorm", type=float, default=0.0)
    p.add_argument("--early-stop", action="store_true")
    p.add_argument("--lr-schedule", choices=("", "epoch", "step"), default="")
    p.add_argument("--validate", type=int, default=0, help="validation examples")
    p.add_argument("--kill-at-step", type=int, default=-1)
    a = p.parse_args()

    world = gc.distributed.init()
    net, shape, in_dtype = net_of(a.model, a.dtype, seed=10 + world.rank)
    clip = {"clipnorm": a.clipnorm} if a.clipnorm else {}
    opt = (gc.optim.SGD(0.05, momentum=0.9, **clip) if a.optimizer == "sgd"
           else gc.optim.Adam(1e-3, **clip))
    model = Checked(net, input_shape=shape, input_dtype=in_dtype, optimizer=opt,
                    metrics=["accuracy"] if a.model != "gpt" else [])
    Checked.kill_at = a.kill_at_step
    if a.load:
        model.train_graph(a.batch // world.size, True)
        model.load(a.load)
    n = a.batch * a.steps_per_epoch + a.short
    x, y = data_of(a.model, n, a.dtype)
    callbacks: list[gc.callbacks.Callback] = []
    if a.checkpoint:
        callbacks.append(gc.callbacks.ModelCheckpoint(a.checkpoint, monitor="loss"))
    if a.lr_schedule:  # runs on rank 0 only; the new rate must reach every rank
        callbacks.append(gc.callbacks.LearningRateScheduler(
            lambda i: 0.05 / (1 + i), unit=a.lr_schedule))
    if a.early_stop:
        callbacks.append(gc.callbacks.EarlyStopping(monitor="loss", patience=0,
                                                    min_delta=1e9))
    validation = None
    if a.validate:
        xv, yv = data_of(a.model, a.batch * a.steps_per_epoch + a.validate, a.dtype)
        validation = (xv[-a.validate:], yv[-a.validate:])
    start = time.perf_counter()
    try:
        history = model.fit(x, y, batch_size=a.batch, epochs=a.epochs, seed=3,
                            initial_epoch=a.initial_epoch, callbacks=callbacks, verbose=0,
                            distributed=True, validation_data=validation)
    except gc.GraphcError as exc:
        print(f"rank {world.rank}: {exc}", flush=True)
        raise
    elapsed = time.perf_counter() - start
    if world.rank == 0:
        np.savez(a.out, identical=Checked.identical, size=world.size, steps=Checked.taken,
                 epochs=len(history.history.get("loss", [])),
                 loss=np.array(history.history.get("loss", [])),
                 val_loss=np.array(history.history.get("val_loss", [])),
                 val_accuracy=np.array(history.history.get("val_accuracy", [])),
                 accuracy=np.array(history.history.get("accuracy", [])),
                 elapsed=elapsed, waited=history.allreduce_wait_per_step,
                 **{"v__" + k.replace("/", "__"): model.graph.variables[k]
                    for k in model.graph.variables})


if __name__ == "__main__":
    main()
