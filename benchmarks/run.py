"""Run the benchmark suite: every workload x peer in its own process, side by side.

    python benchmarks/run.py [--only ew,mlp_train] [--threads 1] [--repeat-seconds 1.0]
                             [--rounds 10] [--write benchmarks/RESULTS.md] [--mpi]

Peers: graphc; numpy as is (here OpenBLAS is pinned to its Haswell/AVX2 kernel by
OPENBLAS_CORETYPE) and `numpy-avx512`, the same with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE
unset in that child process only; and, each when installed: torch (eager), `torch-compile`
(the same torch functions under torch.compile, default mode, compiled and warmed up in setup;
workloads_torch_compile.py), jax (workloads_jax.py) and `ort`, ONNX Runtime's CPU execution
provider on the inference workloads (workloads_ort.py). Threads: torch.set_num_threads, ORT's
intra_op_num_threads, XLA flags for jax at 1 thread, OMP/OpenBLAS/MKL_NUM_THREADS for all. Each
peer's child sets up and warms up once; the peers of a row then take turns in `--rounds`
bursts that together last about `--repeat-seconds` per peer (benchmarks/alternate.py says
why), and each reports the median, min and max of its pooled calls. The table gives each
peer's median and graphc's ratio to the fastest other peer (< 1 means graphc is faster).
This is a benchmark: it prints figures, it asserts nothing (the ort and torch-compile setups
do check their result against numpy/torch eager, and such a child fails, leaving its cell
empty, rather than time a wrong peer).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmarks.workloads import Workload

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: the package lives next to this folder
    sys.path.insert(0, str(ROOT))

from benchmarks.alternate import (  # noqa: E402
    GAP_ONE_THREAD_S,
    GAP_S,
    WARM_S,
    PeerProcess,
    alternate,
    child_command,
    serve,
)

PEERS = ("graphc", "numpy", "numpy-avx512", "torch", "torch-compile", "jax", "ort")
# Peers implemented in their own module (a PEERS dict: workload key -> setup), and the
# modules each peer needs installed to be run at all.
PEER_MODULES = {"jax": "benchmarks.workloads_jax", "ort": "benchmarks.workloads_ort",
                "torch-compile": "benchmarks.workloads_torch_compile"}
REQUIRES = {"torch": ("torch",), "torch-compile": ("torch",), "jax": ("jax",),
            "ort": ("onnxruntime", "onnx")}
# What makes XLA's CPU backend use one thread (JAX has no set_num_threads).
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _peer_setups(peer: str, workload: Workload) -> dict[str, Callable[[int], Callable]]:
    """The setups of `peer` by workload key: its own module's PEERS, or the workload's."""
    if peer in PEER_MODULES:
        return importlib.import_module(PEER_MODULES[peer]).PEERS
    setup = workload.peers.get("numpy" if peer == "numpy-avx512" else peer)
    return {} if setup is None else {workload.key: setup}


def _setup(workload_key: str, peer: str, threads: int) -> tuple[Callable[[], object], dict]:
    """`peer`'s runner of the workload (set up, not yet warmed up) and its info record: the
    BLAS kernel of numpy, ORT's provider, the setup time."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.workloads import WORKLOADS

    workload = next(w for w in WORKLOADS if w.key == workload_key)
    impl = _peer_setups(peer, workload)[workload_key]
    info: dict = {}
    if peer.startswith("numpy"):
        try:
            from threadpoolctl import threadpool_info

            blas = [p for p in threadpool_info() if p.get("user_api") == "blas"]
            if blas:
                info["kernel"] = f"{blas[0].get('internal_api')} {blas[0].get('architecture')}"
        except ImportError:
            info["kernel"] = "unknown (pip install threadpoolctl)"
    t0 = time.perf_counter()
    run = impl(threads)
    info["setup_s"] = time.perf_counter() - t0
    if peer == "ort" and hasattr(run, "sess"):
        info["provider"] = ",".join(run.sess.get_providers())
    return run, info


def _compile_child(workload_key: str, peer: str, threads: int, seconds: float) -> dict:
    """A compile row, in a process of its own: every call is a compile, no warm-up."""
    run, info = _setup(workload_key, peer, threads)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < seconds and len(times) < 500):
        t = time.perf_counter()
        result = run()
        elapsed = time.perf_counter() - t
        # compile_cold's torch and jax runners time their own first call and return the seconds.
        times.append(result if isinstance(result, float) else elapsed)
    return {"median": statistics.median(times), "min": min(times), "max": max(times),
            "calls": len(times), **info}


def _child_env(peer: str, threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    if peer == "numpy-avx512":
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)
    if peer == "jax" and threads == 1:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + XLA_ONE_THREAD).strip()
    return env


def _run_compile_child(workload: str, peer: str, threads: int, seconds: float) -> dict | None:
    cmd = child_command(Path(__file__).resolve(),
                        ["--child", workload, peer, str(threads), str(seconds)], threads)
    proc = subprocess.run(cmd, env=_child_env(peer, threads), capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        sys.stderr.write(f"[{workload}/{peer}] failed:\n{proc.stderr[-2000:]}\n")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _measure(workload: str, peers: list[str], threads: int, rounds: int,
             seconds: float) -> dict[str, dict]:
    """Every peer's result on one row: compile rows one peer after the other, all other rows
    in alternated bursts (benchmarks/alternate.py)."""
    if "compile" in workload:
        results = {p: _run_compile_child(workload, p, threads, seconds) for p in peers}
        return {p: r for p, r in results.items() if r is not None}
    script = Path(__file__).resolve()
    procs = [PeerProcess(f"{workload}/{p}",
                         child_command(script, ["--serve", workload, p, str(threads)], threads),
                         _child_env(p, threads)) for p in peers]
    results = alternate(procs, rounds, seconds, threads)
    return {p: results[f"{workload}/{p}"] for p in peers if f"{workload}/{p}" in results}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _round_spread(results: dict[str, dict]) -> str:
    """ " (lo-hi)": the range of graphc's ratio to the fastest other peer, round by round
    (alternated rows only), which shows how far the host's drift moves the ratio."""
    rounds = [r.get("rounds", []) for r in results.values()]
    n = min(len(r) for r in rounds)
    if n < 2:
        return ""
    ratios = [results["graphc"]["rounds"][i] /
              min(r["rounds"][i] for p, r in results.items() if p != "graphc")
              for i in range(n)]
    return f" ({min(ratios):.2f}-{max(ratios):.2f})"


def _measure_peak() -> float | None:
    """The fp32 FMA peak of one core (GFLOP/s), measured in a child pinned to core 0."""
    cmd = [sys.executable, str(Path(__file__).resolve().parent / "peak.py")]
    taskset = shutil.which("taskset")
    if taskset:
        cmd = [taskset, "-c", "0", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        sys.stderr.write(f"[peak] failed:\n{proc.stderr[-2000:]}\n")
        return None
    return float(proc.stdout.strip().splitlines()[-1])


def _fmt_time(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


def _versions() -> list[str]:
    import importlib.metadata as md

    out = []
    for pkg in ("graphc", "numpy", "llvmlite", "torch", "jax", "onnxruntime", "onnx"):
        try:
            out.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            continue
    return out


def _cpu() -> str:
    """The host's LLVM CPU name and vector width, as graphc targets it (machines differ
    between runs: a znver3 has no AVX-512, VNNI or BF16)."""
    from graphc.codegen.target import host_target

    target = host_target()
    return f"LLVM {target.cpu}, {target.vector_bits}-bit vectors"


def _available(peer: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in REQUIRES.get(peer, ()))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "--child":
        print(json.dumps(_compile_child(args[1], args[2], int(args[3]), float(args[4]))))
        return 0
    if args and args[0] == "--serve":
        serve(lambda: _setup(args[1], args[2], int(args[3])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated workload keys")
    parser.add_argument("--threads", default="1", help="comma-separated thread counts")
    parser.add_argument("--repeat-seconds", type=float, default=1.0,
                        help="timed seconds per peer and row, over all rounds")
    parser.add_argument("--rounds", type=_positive, default=10,
                        help="bursts per peer and row, alternated between the peers")
    parser.add_argument("--write", default="", help="also write the table to this file")
    parser.add_argument("--mpi", action="store_true",
                        help="then run the data-parallel scaling table (bench_mpi.py)")
    opts = parser.parse_args(args)
    sys.path.insert(0, str(ROOT))
    from benchmarks.workloads import WORKLOADS

    only = {k for k in opts.only.split(",") if k}
    peers = [p for p in PEERS if _available(p)]
    peak = _measure_peak()
    lines = ["| workload | threads | " + " | ".join(peers) +
             " | graphc / fastest peer (per round) | graphc rate | of peak |",
             "|---|---|" + "---|" * (len(peers) + 3)]
    notes: dict[str, str] = {}
    providers: set[str] = set()
    for w in WORKLOADS:
        if only and w.key not in only:
            continue
        for threads in (int(t) for t in opts.threads.split(",")):
            row_peers = [p for p in peers if w.key in _peer_setups(p, w)]
            results = _measure(w.key, row_peers, threads, opts.rounds, opts.repeat_seconds)
            for peer, r in results.items():
                if "kernel" in r:
                    notes[peer] = r["kernel"]
                if "provider" in r:
                    providers.add(r["provider"])
            cells = []
            for peer in peers:
                r = results.get(peer)
                cells.append("-" if r is None else
                             f"{_fmt_time(r['median'])} ({_fmt_time(r['min'])}..."
                             f"{_fmt_time(r['max'])})")
            ratio, rate, share = "-", "-", "-"
            if "graphc" in results:
                g = results["graphc"]["median"]
                others = [r["median"] for p, r in results.items() if p != "graphc"]
                if others:
                    ratio = f"{g / min(others):.2f}" + _round_spread(results)
                if w.flops:
                    rate = f"{w.flops / g / 1e9:.1f} GFLOP/s"
                    if peak:
                        share = f"{100 * w.flops / g / 1e9 / (peak * threads):.0f} %"
                elif w.bytes:
                    rate = f"{w.bytes / g / 1e9:.1f} GB/s"
            lines.append(f"| {w.title} | {threads} | " + " | ".join(cells) +
                         f" | {ratio} | {rate} | {share} |")
            print(lines[-1], flush=True)
    header = [
        f"Machine: {platform.processor() or platform.machine()} ({_cpu()}), "
        f"{os.cpu_count()} cores, "
        f"Python {platform.python_version()}, "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        "Times: median (min...max) of repeated calls. Each peer runs in its own process, "
        "pinned with taskset to as many cores as threads, set up and warmed up once; the "
        f"peers of a row then take turns, {opts.rounds} bursts each in a rotating order with "
        f"{GAP_S} s idle before each burst at 2 threads "
        f"({GAP_ONE_THREAD_S} s at 1) and {WARM_S * 1e3:g} ms "
        "of untimed calls to start each burst, and a peer's calls are pooled "
        "(benchmarks/alternate.py), so that this host's drift lands on every peer alike. "
        "The ratio's range is over the rounds: graphc's burst median over the fastest other "
        "peer's in the same round. Compile rows run each peer once, one after the other.",
    ]
    if peak:
        header.append(f"fp32 FMA peak measured in this run (benchmarks/peak.py, one core): "
                      f"{peak:.1f} GFLOP/s per core; 'of peak' divides graphc's rate by it "
                      "times the threads.")
    header.append("graphc's float32 MLP, LeNet and GPT inference rows compile gc.freeze(g): "
                  "the trained weights as constants, stored in the kernels' layouts once (as "
                  "ONNX Runtime's initializers are); training, decode and quantization rows "
                  "read variables or their own snapshots.")
    header += [f"BLAS kernel of {p}: {k}" for p, k in notes.items()]
    header.append("Versions: " + ", ".join(_versions()))
    header.append("OPENBLAS_CORETYPE=" + os.environ.get("OPENBLAS_CORETYPE", "(unset)") +
                  " in this run; peers not installed are left out.")
    if "torch-compile" in peers:
        header.append("torch-compile: the torch eager functions under torch.compile, default "
                      "mode (inductor, C++ kernels); training rows compile the whole step "
                      "(dynamo breaks the graph at zero_grad and backward; the backward is "
                      "AOTAutograd's compiled one); compiled and warmed up before timing.")
    if "ort" in peers:
        header.append("ort: ONNX Runtime, execution provider "
                      f"{', '.join(sorted(providers)) or 'CPUExecutionProvider'}, "
                      "ORT_ENABLE_ALL, intra_op_num_threads = threads, 1 inter-op thread, "
                      "sequential; weights as initializers; timed run_with_iobinding with "
                      "input and output bound to preallocated arrays.")
    header.append("Compile rows: graphc empties its cache before each call (empty cache) or "
                  "compiles with it warm (warm cache); torch times torch.compile's first call "
                  "after torch._dynamo.reset(), with inductor's caches emptied before each "
                  "call (empty cache: torch._inductor.utils.fresh_cache) or warm from the "
                  "earlier calls (warm cache; max = its first, cold call); jax times "
                  "jax.jit's first call of a fresh function (no persistent cache).")
    text = "\n".join(header) + "\n\n" + "\n".join(lines) + "\n"
    print()
    print(text)
    if opts.write:
        Path(opts.write).write_text(text)
    if opts.mpi:  # its own mpiexec jobs: see benchmarks/bench_mpi.py
        subprocess.run([sys.executable, "-m", "benchmarks.bench_mpi"], check=False,
                       cwd=Path(__file__).resolve().parent.parent)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
