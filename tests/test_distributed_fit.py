"""`Model.fit(distributed=True)` (graphc/training/parallel.py).

In this process (a world of one): arguments, per-rank dropout streams. Under ``mpiexec``
(`tests/mpi_workers/fit_model.py`, skipped with the reason where MPI is absent): 2 ranks x
B/2 equal 1 rank x B for the MLP, the CNN and the GPT in float32 and float64 with every
variable bitwise identical across ranks after every step; a checkpoint from 2 ranks resumes
on 1; early stopping decided on rank 0 stops every rank; a killed rank ends the job.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import graphc as gc
from graphc import nn

ROOT = Path(__file__).resolve().parent.parent
MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                        os.environ.get("PATH", "")]))
needs_mpi = pytest.mark.skipif(
    MPIEXEC is None or importlib.util.find_spec("mpi4py") is None,
    reason="MPI is not installed (pip install mpi4py mpich, the 'distributed' extra)")


# --- one process ----------------------------------------------------------------------------

def _mlp_model(dropout: float = 0.0) -> gc.Model:
    layers = [nn.Dense(8, activation="tanh", seed=1)]
    if dropout:
        layers.append(nn.Dropout(dropout, seed=5))
    return gc.Model(nn.Sequential([*layers, nn.Dense(3, seed=2)]), input_shape=(4,),
                    input_dtype="float64", optimizer=gc.optim.SGD(0.1))


def test_fit_distributed_refuses_a_non_bool() -> None:
    x, y = np.zeros((8, 4)), np.zeros(8, np.int32)
    with pytest.raises(gc.GraphcError, match="distributed"):
        _mlp_model().fit(x, y, distributed="yes", verbose=0)  # type: ignore[arg-type]
    with pytest.raises(gc.ArgumentError, match="batch_size"):
        _mlp_model().fit(x, y, batch_size=0, distributed=True, verbose=0)


def test_fit_distributed_alone_trains_and_averages_nothing_away() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 4)), rng.integers(0, 3, 40)
    model = _mlp_model()
    history = model.fit(x, y, batch_size=16, epochs=3, distributed=True, verbose=0)
    assert len(history.history["loss"]) == 3 and history.steps == 9
    assert history.history["loss"][-1] < history.history["loss"][0]
    step = model.graph.signatures["train_dp_b16"]
    ops = {n.op for n in gc.ir.ancestors([new for _, new in step.updates])}
    assert "allreduce" in ops  # the step reduces, an identity in a world of one


def test_dropout_streams_differ_per_rank_and_stream_zero_is_the_plain_mask() -> None:
    masks = {}
    for stream in (None, 0, 1):
        with gc.Graph("d") as g:
            x = gc.placeholder((64,), gc.float32, name="x")
            layer = nn.Dropout(0.5, seed=9)
            if stream is None:
                y = layer(x, training=True)
            else:
                with nn.Scope(training=True, stream=stream):
                    y = layer(x)
        masks[stream] = gc.reference(g, inputs=[x], outputs=y)(np.ones(64, np.float32))
    np.testing.assert_array_equal(masks[None], masks[0])
    assert not np.array_equal(masks[0], masks[1])


# --- under mpiexec ----------------------------------------------------------------------------

def _run(ranks: int, out: Path, *args: str, timeout: float = 120
         ) -> subprocess.CompletedProcess[str]:
    assert MPIEXEC is not None
    return subprocess.run(
        [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "tests.mpi_workers.fit_model",
         "--out", str(out), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _fit(ranks: int, out: Path, *args: str) -> dict[str, np.ndarray]:
    done = _run(ranks, out, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(np.load(out))


def _assert_same_weights(one: dict, two: dict, tol: float) -> None:
    names = [k for k in one if k.startswith("v__")]
    assert names and set(names) == {k for k in two if k.startswith("v__")}
    for k in names:
        np.testing.assert_allclose(two[k], one[k], rtol=0, atol=tol, err_msg=k)


@needs_mpi
@pytest.mark.parametrize("model", ["mlp", "cnn", "gpt"])
@pytest.mark.parametrize("dtype, tol", [("float32", 1e-6), ("float64", 1e-12)])
def test_two_ranks_with_half_batches_equal_one_rank(tmp_path: Path, model: str, dtype: str,
                                                    tol: float) -> None:
    args = ("--model", model, "--dtype", dtype, "--batch", "16", "--epochs", "4")
    one = _fit(1, tmp_path / "1.npz", *args)
    two = _fit(2, tmp_path / "2.npz", *args)
    assert int(two["size"]) == 2 and int(one["size"]) == 1
    assert int(one["steps"]) == int(two["steps"]) == 20
    assert bool(two["identical"]), "variables differed between ranks after some step"
    assert float(two["waited"]) > 0 and float(one["waited"]) == 0  # reported per step
    _assert_same_weights(one, two, tol)
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)  # the averaged logs
    start = _fit(1, tmp_path / "0.npz", *args[:4], "--epochs", "0")
    moved = max(np.max(np.abs(start[k] - one[k])) for k in one if k.startswith("v__"))
    assert moved > 100 * tol  # the run trained: dropping gradients would not be caught else


@needs_mpi
def test_short_last_batch_adam_and_clipping_by_global_norm_match_one_rank(
        tmp_path: Path) -> None:
    # 5 real examples in the last global batch: 3 on rank 0, 2 on rank 1; the clip acts on
    # the reduced gradient (a per-rank clip would differ from one rank's).
    args = ("--model", "mlp", "--batch", "16", "--short", "5", "--optimizer", "adam",
            "--clipnorm", "0.05", "--epochs", "3")
    one = _fit(1, tmp_path / "1.npz", *args)
    two = _fit(2, tmp_path / "2.npz", *args)
    assert int(two["steps"]) == 18 and bool(two["identical"])
    _assert_same_weights(one, two, 1e-12)


@needs_mpi
def test_validation_and_metrics_are_combined_over_ranks(tmp_path: Path) -> None:
    # 21 validation examples: 11 on rank 0, 10 on rank 1 (weighted by their counts)
    args = ("--model", "mlp", "--epochs", "2", "--validate", "21")
    one = _fit(1, tmp_path / "1.npz", *args)
    two = _fit(2, tmp_path / "2.npz", *args)
    assert len(two["val_loss"]) == 2
    np.testing.assert_allclose(two["val_loss"], one["val_loss"], rtol=1e-9)
    np.testing.assert_allclose(two["val_accuracy"], one["val_accuracy"], rtol=1e-12)
    np.testing.assert_allclose(two["accuracy"], one["accuracy"], rtol=1e-12)


@needs_mpi
def test_batchnorm_per_rank_mode_keeps_ranks_identical(tmp_path: Path) -> None:
    args = ("--model", "bn", "--batch", "16", "--epochs", "2")
    one = _fit(1, tmp_path / "1.npz", *args)
    two = _fit(2, tmp_path / "2.npz", *args)
    assert bool(two["identical"])  # running statistics averaged over ranks every step
    # per-rank batch statistics (8 examples, not 16): documented to differ from one rank
    assert np.max(np.abs(two["v__batch_norm__running_var"]
                         - one["v__batch_norm__running_var"])) > 1e-6


@needs_mpi
def test_a_checkpoint_from_two_ranks_resumes_on_one(tmp_path: Path) -> None:
    common = ("--model", "mlp", "--optimizer", "adam", "--batch", "16")
    straight = _fit(2, tmp_path / "a.npz", *common, "--epochs", "4")
    ckpt = tmp_path / "ckpt.gcc"
    first = _fit(2, tmp_path / "b.npz", *common, "--epochs", "2", "--checkpoint", str(ckpt))
    assert int(first["epochs"]) == 2 and ckpt.exists()
    resumed = _fit(1, tmp_path / "c.npz", *common, "--epochs", "4", "--initial-epoch", "2",
                   "--load", str(ckpt))
    assert int(resumed["epochs"]) == 2 and int(resumed["v__optim__step"]) == 20
    _assert_same_weights(straight, resumed, 1e-12)


@needs_mpi
def test_early_stopping_on_rank_zero_stops_every_rank(tmp_path: Path) -> None:
    got = _fit(2, tmp_path / "e.npz", "--model", "mlp", "--epochs", "50", "--early-stop")
    # patience 0 with an impossible min_delta: epoch 2 does not improve on epoch 1; a rank
    # that did not hear of it would start epoch 3 alone and hang (the run would time out)
    assert int(got["epochs"]) == 2 and int(got["steps"]) == 10


@needs_mpi
@pytest.mark.parametrize("unit", ["epoch", "step"])
def test_a_learning_rate_set_by_rank_zeros_scheduler_reaches_every_rank(
        tmp_path: Path, unit: str) -> None:
    args = ("--model", "mlp", "--epochs", "3", "--lr-schedule", unit)
    one = _fit(1, tmp_path / "1.npz", *args)
    two = _fit(2, tmp_path / "2.npz", *args)
    assert bool(two["identical"])  # rank 1 did not keep the old rate
    assert float(two["v__optim__lr"]) < 0.05
    _assert_same_weights(one, two, 1e-12)


@needs_mpi
def test_a_killed_rank_ends_the_fit_within_30_seconds(tmp_path: Path) -> None:
    start = time.perf_counter()
    done = _run(2, tmp_path / "k.npz", "--kill-at-step", "3", "--epochs", "100000",
                timeout=60)
    elapsed = time.perf_counter() - start
    assert done.returncode != 0
    assert "signal 9" in done.stdout + done.stderr
    assert elapsed < 30, elapsed
    assert not (tmp_path / "k.npz").exists()
