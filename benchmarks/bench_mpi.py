"""Data-parallel scaling of the MLP training step (issue 18), on MPI.

    python benchmarks/bench_mpi.py [--seconds 3] [--batch 256] [--bucket-bytes N]

The MLP 784-512-512-10 training step (SGD with momentum, the `mlp_train` workload's model)
at `--batch` examples *per rank*, in three configurations, each in its own ``mpiexec`` job:

    1 rank  x 1 thread    the baseline
    2 ranks x 1 thread    data parallel: minimize(distributed=True), gradients bucketed
    1 rank  x 2 threads   graphc's own thread pool, for comparison

and prints throughput (examples per second over all ranks), the speed-up over the
baseline, and the time a step spent waiting on its gradient allreduces (MPI_Wait and
blocking MPI_Allreduce, `graphc.runtime.mpi.wait_seconds`), per step and as a share of the
step. Each job compiles, warms up, synchronizes its ranks, then times steps for
`--seconds` (every rank the same number of steps). The issue's targets (on a quiet 2-core
machine): 2 ranks >= 1.8x the baseline, wait <= 5 % of the step. A benchmark: it prints
figures and asserts nothing. Without mpiexec/mpi4py it says so and exits.
`benchmarks/run.py --mpi` runs it after the suite.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ((1, 1), (2, 1), (1, 2))  # (ranks, threads per rank)


def child(batch: int, threads: int, seconds: float, bucket_bytes: int) -> None:
    """One job's rank: time the step, rank 0 prints a JSON line."""
    import numpy as np

    import graphc as gc
    from benchmarks.workloads_data import SIZES, _mlp_batch, _mlp_params
    from graphc.passes import allreduce_buckets
    from graphc.runtime import mpi

    if bucket_bytes:
        allreduce_buckets.BUCKET_BYTES = bucket_bytes
    world = gc.distributed.init()
    with gc.Graph("mlp") as g:
        x = gc.placeholder((batch, SIZES[0]), gc.float32, name="x")
        y = gc.placeholder((batch,), gc.int32, name="y")
        ws = [gc.variable(p, name=f"p{i}") for i, p in enumerate(_mlp_params())]
        h = x
        for i in range(0, len(ws), 2):
            h = h @ ws[i] + ws[i + 1]
            if i + 2 < len(ws):
                h = gc.relu(h)
        loss = gc.mean(gc.softmax_cross_entropy(h, y))
        updates = gc.optim.SGD(lr=0.01, momentum=0.9).minimize(
            loss, distributed=world.size > 1)
    step = gc.compile(g, [x, y], [loss], updates=updates,
                      options=gc.CompileOptions(threads=threads))
    xb, yb = _mlp_batch(batch)
    for _ in range(5):
        step(xb, yb)
    comm = world.comm

    def agree(value: float) -> float:  # the slowest rank decides, so all take equal steps
        return comm.allreduce(value, op=__import__("mpi4py.MPI").MPI.MAX) if comm else value

    # Calibrate the step count on a short run, then time that many steps.
    start = time.perf_counter()
    for _ in range(10):
        step(xb, yb)
    per_step = agree(time.perf_counter() - start) / 10
    steps = max(10, int(seconds / per_step))
    if comm:
        comm.Barrier()
    waited = mpi.wait_seconds()
    start = time.perf_counter()
    for _ in range(steps):
        result = step(xb, yb)
    elapsed = agree(time.perf_counter() - start)
    wait = agree(mpi.wait_seconds() - waited) / steps
    if world.rank == 0:
        print(json.dumps({"ranks": world.size, "threads": threads, "steps": steps,
                          "step_ms": 1e3 * elapsed / steps, "wait_ms": 1e3 * wait,
                          "examples_per_s": steps * batch * world.size / elapsed,
                          "loss": float(np.asarray(result[0]))}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--batch", type=int, default=256, help="examples per rank")
    parser.add_argument("--bucket-bytes", type=int, default=0,
                        help="gradient bucket size (default: the compiler's)")
    parser.add_argument("--child", type=int, default=0, metavar="THREADS")
    args = parser.parse_args()
    if args.child:
        child(args.batch, args.child, args.seconds, args.bucket_bytes)
        return
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    mpiexec = shutil.which("mpiexec", path=path)
    if mpiexec is None or importlib.util.find_spec("mpi4py") is None:
        print("bench_mpi: skipped, MPI is not installed (pip install mpi4py mpich)")
        return
    rows = []
    for ranks, threads in CONFIGS:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        done = subprocess.run(
            [mpiexec, "-n", str(ranks), sys.executable, "-m", "benchmarks.bench_mpi",
             "--child", str(threads), "--batch", str(args.batch), "--seconds",
             str(args.seconds), "--bucket-bytes", str(args.bucket_bytes)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            print(f"{ranks} rank(s) x {threads} thread(s) failed:\n{done.stderr[-2000:]}")
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    if not rows:
        return
    base = rows[0]["examples_per_s"]
    print(f"MLP 784-512-512-10 training step, batch {args.batch} per rank "
          "(medians; run on a quiet machine, nothing else timing)")
    print(f"{'config':<20}{'examples/s':>12}{'speed-up':>10}{'step ms':>10}"
          f"{'wait ms':>10}{'wait %':>8}")
    for r in rows:
        share = 100 * r["wait_ms"] / r["step_ms"]
        print(f"{r['ranks']} rank(s) x {r['threads']} thr  {r['examples_per_s']:>12,.0f}"
              f"{r['examples_per_s'] / base:>9.2f}x{r['step_ms']:>10.2f}{r['wait_ms']:>10.3f}"
              f"{share:>7.1f}%")


if __name__ == "__main__":
    main()
