"""Gradient buckets (passes/allreduce_buckets.py): the memory plan puts every reduced
gradient in one contiguous region in the order the step writes them, each bucket is one
non-blocking allreduce started after its last gradient and awaited before the first update
that reads it, and the per-gradient allreduce kernels are not called.

Under ``mpiexec -n 2`` (skipped without MPI): one bucket per gradient still gives the
one-rank result, and the time spent waiting is reported.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import graphc as gc
from graphc import pipeline
from graphc.passes import allreduce_buckets
from graphc.passes.memory_plan import ALIGN, Location, Space, check_no_overlap

ROOT = Path(__file__).resolve().parent.parent


def _mlp(distributed: bool, dtype: gc.DType = gc.float32) -> gc.Graph:
    rng = np.random.default_rng(0)
    with gc.Graph("mlp") as g:
        x = gc.placeholder((8, 6), dtype, name="x")
        h = x
        for i, (a, b) in enumerate([(6, 32), (32, 16), (16, 3)]):
            w = gc.variable(rng.normal(0, 0.3, (a, b)).astype(dtype.np), name=f"w{i}")
            bias = gc.variable(np.zeros(b, dtype.np), name=f"b{i}")
            h = gc.tanh(h @ w + bias)
        loss = gc.mean(h ** 2)
        updates = gc.optim.SGD(0.1, momentum=0.9).minimize(loss, distributed=distributed)
    g.add_signature("step", [x], [loss], updates)
    return g


def _plan(g: gc.Graph, until: str = "planned") -> pipeline.Lowered:
    return pipeline.lower(g, g.signatures["step"], pipeline.DEFAULT_OPTIONS, until)


@pytest.mark.parametrize("bucket_bytes", [1, 1 << 20])
def test_gradients_are_one_contiguous_region_cut_into_buckets(
        monkeypatch: pytest.MonkeyPatch, bucket_bytes: int) -> None:
    monkeypatch.setattr(allreduce_buckets, "BUCKET_BYTES", bucket_bytes)
    plan = _plan(_mlp(True)).plan
    assert plan is not None
    kernels = plan.program.kernels
    reducing = [k.index for k in kernels if k.anchor is not None and k.anchor.op == "allreduce"]
    members = [m for b in plan.buckets for m in b.members]
    assert sorted(m.kernel for m in members) == reducing and len(reducing) == 6
    assert len(plan.buckets) == (6 if bucket_bytes == 1 else 1)
    # in the order the backward writes them, back to back (64-byte aligned)
    assert [m.producer for m in members] == sorted(m.producer for m in members)
    start = plan.buckets[0].send
    for m in members:
        assert plan.location[m.grad] == Location(Space.ARENA, start + m.offset)
        assert plan.location[m.result] == Location(Space.ARENA, plan.buckets[0].recv + m.offset)
    for a, b in itertools.pairwise(members):
        assert b.offset == a.offset + (a.grad.type.nbytes + ALIGN - 1) // ALIGN * ALIGN
    for bucket in plan.buckets:
        readers = [k.index for k in kernels if any(n is m.result for m in bucket.members
                                                      for n in k.inputs)]
        assert bucket.ready < bucket.needed == min(readers)
    if bucket_bytes == 1:  # the first bucket starts while the backward still runs
        assert plan.buckets[0].ready < plan.buckets[-1].ready
    check_no_overlap(plan)
    assert "bucket float32 mean" in plan.format()


def test_bucketed_allreduce_kernels_are_not_emitted() -> None:
    lowered = _plan(_mlp(True), "llvm")
    text = lowered.ir_text
    functions = re.findall(r'define [^@]*@"?([\w.]+)', text)
    assert "graphc_entry" in functions
    assert not [f for f in functions if "allreduce" in f]  # no kernel function left
    assert 'load ptr, ptr @"graphc_comm"' in text  # the entry reads the communicator slot


def test_buckets_in_flight_are_tested_between_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allreduce_buckets, "BUCKET_BYTES", 1)
    lowered = _plan(_mlp(True), "llvm")
    assert lowered.plan is not None
    buckets = lowered.plan.buckets
    entry = lowered.ir_text.split('define i32 @"graphc_entry"')[1]
    # the communicator's `test` field (byte 40) is read after every kernel that runs while
    # a bucket is in flight (not right before its wait)
    kernels = {i for i in range(len(lowered.plan.program.kernels))
               if any(b.ready < i < b.needed - 1 for b in buckets)}
    skipped = {m.kernel for b in buckets for m in b.members}
    assert entry.count("i64 40") == len(kernels - skipped) > 0


@pytest.mark.parametrize("bucket_bytes", [1, 1 << 20])
@pytest.mark.parametrize("dtype", [gc.float32, gc.float64])
def test_bucketed_step_alone_is_the_plain_step_bitwise(monkeypatch: pytest.MonkeyPatch,
                                                       bucket_bytes: int, dtype: gc.DType
                                                       ) -> None:
    monkeypatch.setattr(allreduce_buckets, "BUCKET_BYTES", bucket_bytes)
    xb = np.random.default_rng(1).normal(size=(8, 6)).astype(dtype.np)
    results = []
    for distributed in (False, True):
        g = _mlp(distributed, dtype)
        sig = g.signatures["step"]
        step = gc.compile(g, inputs=list(sig.inputs), outputs=list(sig.outputs),
                          updates=dict(sig.updates))
        for _ in range(3):
            step(xb)
        results.append({k: v.copy() for k, v in g.variables.items()})
    for k in results[0]:
        np.testing.assert_array_equal(results[0][k], results[1][k], err_msg=k)


MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                        os.environ.get("PATH", "")]))


@pytest.mark.skipif(MPIEXEC is None or importlib.util.find_spec("mpi4py") is None,
                    reason="MPI is not installed (pip install mpi4py mpich)")
def test_one_bucket_per_gradient_on_two_ranks_equals_one_rank(tmp_path: Path) -> None:
    assert MPIEXEC is not None
    got = {}
    for ranks in (1, 2):
        done = subprocess.run(
            [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "tests.mpi_workers.train_mlp",
             "--out", str(tmp_path / f"{ranks}.npz"), "--optimizer", "adam", "--steps", "20",
             "--bucket-bytes", "64"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        got[ranks] = np.load(tmp_path / f"{ranks}.npz")
    assert bool(got[2]["identical"])
    assert float(got[2]["waited"]) > 0.0 and float(got[1]["waited"]) == 0.0
    for k in ("w1", "b1", "w2", "b2", "w1__adam_v"):
        np.testing.assert_allclose(got[2][k], got[1][k], rtol=0, atol=1e-12, err_msg=k)
