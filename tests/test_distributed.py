"""Data parallelism: gc.distributed, the allreduce op and minimize(distributed=True).

The first part runs in this process (a world of one). The second runs
`tests/mpi_workers/train_mlp.py` under ``mpiexec -n 2`` and ``-n 1`` and compares: it is
skipped, with the reason, where mpiexec or mpi4py is missing.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import graphc as gc
from graphc.codegen.opaque.collective import COMM_SLOT
from graphc.comm import World

ROOT = Path(__file__).resolve().parent.parent

# --- one process ----------------------------------------------------------------------------


def _mlp(distributed: bool) -> tuple[gc.Graph, dict[gc.Node, gc.Node], gc.Node]:
    with gc.Graph("mlp") as g:
        x = gc.placeholder((4, 3), gc.float64, name="x")
        w = gc.variable(np.full((3, 2), 0.5), name="w")
        b = gc.variable(np.zeros(2), name="b")
        loss = gc.mean((x @ w + b) ** 2)
        updates = gc.optim.SGD(lr=0.1).minimize(loss, distributed=distributed)
    return g, updates, x


def test_minimize_distributed_puts_a_mean_allreduce_under_every_update() -> None:
    g, updates, _ = _mlp(True)
    reduced = [n for n in g.nodes if n.op == "allreduce"]
    assert len(reduced) == 2
    assert all(n.attrs["reduction"] == "mean" for n in reduced)
    # each parameter's new value depends on its own reduced gradient
    for var, new in updates.items():
        if var.name in ("w", "b"):
            assert any(a.name == f"{var.name}/allreduce" for a in gc.ir.ancestors([new]))
    plain, _, _ = _mlp(False)
    assert not [n for n in plain.nodes if n.op == "allreduce"]


def test_distributed_step_in_a_world_of_one_is_the_plain_step() -> None:
    xb = np.arange(12, dtype=np.float64).reshape(4, 3) / 10
    results = []
    for distributed in (False, True):
        g, updates, x = _mlp(distributed)
        step = gc.compile(g, inputs=[x], outputs=[], updates=updates)
        for _ in range(3):
            step(xb)
        results.append({k: g.variables[k].copy() for k in ("w", "b")})
    for k in ("w", "b"):
        np.testing.assert_array_equal(results[0][k], results[1][k])


def test_compiled_allreduce_has_a_null_communicator_slot_alone() -> None:
    with gc.Graph("a") as g:
        x = gc.placeholder((5,), gc.float32, name="x")
        y = gc.allreduce(x, "sum")
    ex = gc.compile(g, inputs=[x], outputs=y)
    slot = ex._jit.engine.get_global_value_address(COMM_SLOT)
    assert slot  # the module defines the slot an exported library would expose
    assert ctypes.c_void_p.from_address(slot).value is None  # alone: the kernel copies
    np.testing.assert_array_equal(ex(np.arange(5, dtype=np.float32)), np.arange(5))


def test_allreduce_refuses_non_float_and_unknown_reduction() -> None:
    with gc.Graph("bad"):
        i = gc.placeholder((3,), gc.int32, name="i")
        f = gc.placeholder((3,), gc.float32, name="f")
        with pytest.raises(gc.DTypeError, match="operand 0"):
            gc.allreduce(i)
        with pytest.raises(gc.GraphcError, match="reduction"):
            gc.allreduce(f, "max")


def test_minimize_refuses_a_non_bool_distributed() -> None:
    with gc.Graph("g"):
        w = gc.variable(np.ones(2), name="w")
        with pytest.raises(gc.GraphcError, match="distributed"):
            gc.optim.SGD(lr=0.1).minimize(gc.sum(w * w), distributed="yes")  # type: ignore[arg-type]


def test_shard_batches_split_each_global_batch_between_ranks() -> None:
    one = list(gc.distributed.shard_batches(23, 6, epoch=2, seed=5, world=World(0, 1, None, "")))
    parts = [list(gc.distributed.shard_batches(23, 6, epoch=2, seed=5,
                                               world=World(r, 2, None, "")))
             for r in range(2)]
    assert len(one) == 3 and all(len(p) == 3 for p in parts)  # 23 % 6 dropped on all ranks
    for k, batch in enumerate(one):
        np.testing.assert_array_equal(np.concatenate([parts[0][k], parts[1][k]]), batch)
    other_epoch = next(gc.distributed.shard_batches(23, 6, epoch=3, seed=5,
                                                    world=World(0, 1, None, "")))
    assert not np.array_equal(other_epoch, one[0])  # reshuffled per epoch
    idx = [gc.distributed.shard_indices(7, seed=1, world=World(r, 2, None, "")) for r in (0, 1)]
    assert len(idx[0]) == len(idx[1]) == 3 and not set(idx[0]) & set(idx[1])


@pytest.mark.parametrize("kwargs, word", [
    ({"n": -1, "batch_size": 2}, "n"), ({"n": 4, "batch_size": 0}, "batch_size"),
    ({"n": 4, "batch_size": 3, "world": World(0, 2, None, "")}, "divisible"),
    ({"n": 4, "batch_size": 2, "seed": "x"}, "seed"),
    ({"n": 4, "batch_size": 2, "epoch": -1}, "epoch"),
])
def test_shard_batches_names_the_bad_argument(kwargs: dict, word: str) -> None:
    with pytest.raises(gc.GraphcError, match=word):
        list(gc.distributed.shard_batches(**kwargs))


def test_broadcast_variables_checks_its_arguments() -> None:
    g, _, _ = _mlp(False)
    with pytest.raises(gc.GraphcError, match="graph"):
        gc.distributed.broadcast_variables("g")  # type: ignore[arg-type]
    with pytest.raises(gc.GraphcError, match="root"):
        gc.distributed.broadcast_variables(g, root=5)
    before = g.variables["w"].copy()
    gc.distributed.broadcast_variables(g)  # a world of one: nothing changes
    np.testing.assert_array_equal(g.variables["w"], before)


# --- under mpiexec ----------------------------------------------------------------------------

MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                        os.environ.get("PATH", "")]))
needs_mpi = pytest.mark.skipif(
    MPIEXEC is None or importlib.util.find_spec("mpi4py") is None,
    reason="MPI is not installed (pip install mpi4py mpich, the 'distributed' extra)")


def _run(ranks: int, out: Path, *args: str, timeout: float = 120
         ) -> subprocess.CompletedProcess[str]:
    assert MPIEXEC is not None
    return subprocess.run(
        [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "tests.mpi_workers.train_mlp",
         "--out", str(out), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@needs_mpi
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-12), ("float32", 1e-6)])
def test_two_ranks_with_half_batches_equal_one_rank(tmp_path: Path, optimizer: str,
                                                    dtype: str, tol: float) -> None:
    args = ("--optimizer", optimizer, "--dtype", dtype, "--steps", "20", "--batch", "16")
    results = {}
    for ranks in (1, 2):
        done = _run(ranks, tmp_path / f"{ranks}.npz", *args)
        assert done.returncode == 0, done.stderr
        results[ranks] = np.load(tmp_path / f"{ranks}.npz")
    one, two = results[1], results[2]
    assert int(two["size"]) == 2 and int(one["size"]) == 1
    assert bool(two["identical"]), "parameters differed between ranks after some step"
    assert int(two["optim__step"]) == 20
    names = [k for k in one.files if k not in ("identical", "size", "waited")]
    assert "w1" in names and ("w1__adam_m" in names or "w1__momentum" in names)
    for k in names:
        np.testing.assert_allclose(two[k], one[k], rtol=0, atol=tol, err_msg=k)
    # the run moved the weights: an allreduce that dropped the gradient would not
    start = _run(1, tmp_path / "0.npz", *args[:4], "--steps", "0", "--batch", "16")
    assert start.returncode == 0, start.stderr
    assert np.max(np.abs(np.load(tmp_path / "0.npz")["w1"] - one["w1"])) > 100 * tol


@needs_mpi
def test_reference_interpreter_on_two_ranks_matches_compiled(tmp_path: Path) -> None:
    args = ("--optimizer", "adam", "--dtype", "float64", "--steps", "5", "--batch", "8")
    done = _run(2, tmp_path / "ref.npz", *args, "--reference")
    assert done.returncode == 0, done.stderr
    done = _run(2, tmp_path / "jit.npz", *args)
    assert done.returncode == 0, done.stderr
    ref, jit = np.load(tmp_path / "ref.npz"), np.load(tmp_path / "jit.npz")
    assert bool(ref["identical"])
    for k in ("w1", "b2", "w1__adam_v"):
        np.testing.assert_allclose(jit[k], ref[k], rtol=1e-12, atol=1e-14, err_msg=k)


@needs_mpi
def test_collectives_on_two_ranks(tmp_path: Path) -> None:
    assert MPIEXEC is not None
    out = tmp_path / "c.json"
    done = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-m",
                           "tests.mpi_workers.collectives", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    verdicts = json.loads(out.read_text())
    assert set(verdicts) == {"sum_float32", "mean_float32", "sum_float64", "mean_float64",
                             "grad", "mismatch_refused", "broadcast"}
    assert all(verdicts.values()), verdicts


@needs_mpi
def test_a_rank_that_raises_ends_the_job(tmp_path: Path) -> None:
    done = _run(2, tmp_path / "f.npz", "--fail-at-step", "3", timeout=60)
    assert done.returncode != 0
    assert "rank 1 of 2 failed" in done.stderr
    assert "fails on purpose at step 3" in done.stderr
    assert not (tmp_path / "f.npz").exists()


@needs_mpi
def test_a_killed_rank_ends_the_job(tmp_path: Path) -> None:
    # SIGKILL: no excepthook, no MPI_Abort; the launcher must still end rank 0, which would
    # otherwise wait in its next allreduce (1000 steps would outlast the timeout).
    done = _run(2, tmp_path / "k.npz", "--kill-at-step", "3", "--steps", "1000", timeout=60)
    assert done.returncode != 0
    assert "signal 9" in done.stdout + done.stderr
    assert not (tmp_path / "k.npz").exists()


@needs_mpi
def test_distributed_digits_example_learns_on_two_ranks() -> None:
    assert MPIEXEC is not None
    done = subprocess.run([MPIEXEC, "-n", "2", sys.executable,
                           "examples/train_digits_distributed.py", "--epochs", "10"],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("2 rank(s)"), done.stdout  # rank 0 only
    assert float(lines[0].rsplit(" ", 1)[1]) >= 0.95


@needs_mpi
def test_graphc_mpi_reports_the_library_and_every_rank() -> None:
    assert MPIEXEC is not None
    done = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-m", "graphc.cli", "mpi"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # The launcher forwards both ranks' stdout into one pipe and may split a line between
    # chunks of the other rank's, so count the pieces rather than the lines.
    out = done.stdout
    assert out.count("MPI: ") == 2 and "MPI: none" not in out, out
    assert "rank 0 of 2" in out and "rank 1 of 2" in out, out


def test_a_multi_rank_launch_without_mpi4py_is_an_error_not_ranks_training_alone() -> None:
    # A fresh interpreter that cannot import mpi4py, told by the environment it is rank 0
    # of 2 (what mpiexec sets): the first allreduce must refuse to run alone.
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "import numpy as np, graphc as gc\n"
            "with gc.Graph('g') as g:\n"
            "    x = gc.placeholder((2,), gc.float32, name='x')\n"
            "    y = gc.allreduce(x)\n"
            "try:\n"
            "    gc.compile(g, inputs=[x], outputs=y)(np.ones(2, np.float32))\n"
            "except gc.GraphcError as e:\n"
            "    print('refused:', e)\n")
    env = {**os.environ, "PMI_RANK": "0", "PMI_SIZE": "2"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "refused:" in done.stdout and "mpi4py" in done.stdout, done.stdout
