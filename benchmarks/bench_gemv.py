"""Matrix-vector GEMMs (batch 1) of graphc against numpy, side by side in one process.

    python benchmarks/bench_gemv.py [--rounds 300] [--reps 20] [--threads 1] [--wall]

Times, as medians (and 10th percentiles) over rounds of the mean of `reps` consecutive
calls, in microseconds of the calling thread's CPU time (which leaves out time the thread
spent preempted on a busy machine; --wall: wall-clock time):
  - an empty call: a compiled graph of one tiny elementwise op (the Python call overhead
    that every graphc row below includes);
  - each layer of the MLP 784-512-512-10 alone at batch 1: relu(x @ W + b) (the last one
    without relu), as a compiled graph and as the numpy expression a user would write;
  - the whole MLP at batch 1 (the `mlp_infer_1` workload of benchmarks/workloads.py).
All runners are timed in alternation within every round, so load from other processes on a
busy machine hits them alike: compare the ratios. OpenBLAS is pinned to one thread. Not a
test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # after the thread variables, which OpenBLAS reads when it loads

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.workloads import (
    SIZES,
    _mlp_params,
    mlp_infer_graphc,
    mlp_infer_numpy,
)

Runner = Callable[[], object]


def _layer(i: int, threads: int) -> tuple[Runner, Runner]:
    """(graphc, numpy) runners of layer i alone at batch 1 on the workload's weights."""
    import graphc as gc

    params = _mlp_params()
    w, bias = params[2 * i], params[2 * i + 1]
    relu = i + 2 < len(SIZES)
    x_val = np.random.default_rng(3).standard_normal((1, SIZES[i])).astype(np.float32)
    with gc.Graph(f"layer{i}") as g:
        x = gc.placeholder((1, SIZES[i]), gc.float32, name="x")
        y = x @ gc.variable(w, name="w") + gc.variable(bias, name="b")
        if relu:
            y = gc.relu(y)
    f = gc.compile(g, [x], y, options=gc.CompileOptions(threads=threads))
    got = f(x_val)
    want = x_val @ w + bias
    if relu:
        want = np.maximum(want, 0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

    def np_run() -> object:
        z = x_val @ w + bias
        return np.maximum(z, 0) if relu else z

    return (lambda: f(x_val)), np_run


def _empty(threads: int) -> Runner:
    import graphc as gc

    with gc.Graph("empty") as g:
        x = gc.placeholder((1, 4), gc.float32, name="x")
        y = x + 1.0
    f = gc.compile(g, [x], y, options=gc.CompileOptions(threads=threads))
    xv = np.zeros((1, 4), np.float32)
    return lambda: f(xv)


def _time(runners: dict[str, Runner], rounds: int, reps: int,
          clock: Callable[[], float]) -> dict[str, tuple[float, float]]:
    """(median, 10th percentile) over rounds of the mean time per call (us), the runners
    alternating within each round."""
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for fn in runners.values():  # warm up
        for _ in range(reps):
            fn()
    for _ in range(rounds):
        for name, fn in runners.items():
            t = clock()
            for _ in range(reps):
                fn()
            samples[name].append((clock() - t) / reps * 1e6)
    return {name: (statistics.median(s), sorted(s)[len(s) // 10])
            for name, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--wall", action="store_true", help="time with the wall clock")
    args = parser.parse_args()
    runners: dict[str, Runner] = {"empty call": _empty(args.threads)}
    for i in range(len(SIZES) - 1):
        ours, theirs = _layer(i, args.threads)
        runners[f"layer{i + 1} graphc"] = ours
        runners[f"layer{i + 1} numpy"] = theirs
    runners["mlp b1 graphc"] = mlp_infer_graphc(1)(args.threads)
    runners["mlp b1 numpy"] = mlp_infer_numpy(1)(args.threads)
    clock = time.perf_counter if args.wall else time.thread_time
    t = _time(runners, args.rounds, args.reps, clock)
    print(f"threads={args.threads}, {'wall-clock' if args.wall else 'thread CPU'} time, "
          f"median (p10) of {args.rounds} rounds x {args.reps} calls, "
          f"load average {os.getloadavg()[0]:.1f}")
    med, p10 = t["empty call"]
    print(f"empty graphc call: {med:.2f} ({p10:.2f}) us")
    print(f"{'':14} {'graphc us':>16} {'numpy us':>16} {'ratio':>6}")
    rows = [(f"layer{i + 1} {SIZES[i]}x{SIZES[i + 1]}", f"layer{i + 1}")
            for i in range(len(SIZES) - 1)] + [("mlp b1", "mlp b1")]
    for label, key in rows:
        (om, op), (nm, npc) = t[f"{key} graphc"], t[f"{key} numpy"]
        print(f"{label:14} {om:8.2f} ({op:5.2f}) {nm:8.2f} ({npc:5.2f}) {om / nm:6.2f}")


if __name__ == "__main__":
    main()
