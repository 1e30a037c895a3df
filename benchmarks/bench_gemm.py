"""GFLOP/s of graphc's GEMM against numpy's OpenBLAS, single-threaded. Not a test.

    python benchmarks/bench_gemm.py [--runs 9] [--dtype float32]

Each numpy variant runs in a worker subprocess with its own environment, because OpenBLAS
reads its variables when it loads:
  "as is":   the environment as given (OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE kept, if set);
  "avx512":  OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed, so OpenBLAS picks its kernel for
             this CPU (SkylakeX, AVX-512, on an AVX-512 machine).
Both use OPENBLAS_NUM_THREADS=1. Inside a worker, our kernel and numpy's are timed in
alternation on the same operands (so load from other processes hits both alike) and the
median of `runs` timings is reported. Timings are the thread's CPU time (both kernels run in
the calling thread), which ignores time the thread spent preempted on a busy machine;
--wall uses wall-clock time instead. The kernel OpenBLAS used is named from threadpoolctl
when it is installed (`pip install threadpoolctl`).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

# (name, m, n, k, trans_a, trans_b): C[m x n] = op(A) @ op(B)
SHAPES: list[tuple[str, int, int, int, bool, bool]] = [
    ("square 256", 256, 256, 256, False, False),
    ("square 512", 512, 512, 512, False, False),
    ("square 1024", 1024, 1024, 1024, False, False),
    ("fwd X@W1 128x784@784x512", 128, 512, 784, False, False),
    ("fwd H@W2 128x512@512x512", 128, 512, 512, False, False),
    ("fwd H@W3 128x512@512x10", 128, 10, 512, False, False),
    ("bwd dY@W3^T 128x10@10x512", 128, 512, 10, False, True),
    ("bwd H^T@dY 512x128@128x10", 512, 10, 128, True, False),
    ("bwd dH@W2^T 128x512@512x512", 128, 512, 512, False, True),
    ("bwd H^T@dH 512x128@128x512", 512, 512, 128, True, False),
    ("bwd dH@W1^T 128x512@512x784", 128, 784, 512, False, True),
    ("bwd X^T@dH 784x128@128x512", 784, 512, 128, True, False),
]
MLP = SHAPES[3:]


@dataclass
class Row:
    name: str
    ours: float
    numpy: float


def _worker(runs: int, dtype_name: str, wall: bool) -> None:
    """Time every shape (ours and numpy, alternating); print one JSON object."""
    clock = time.perf_counter if wall else time.thread_time
    import llvmlite.ir as ir
    import numpy as np

    from graphc.codegen.gemm.emit import GemmSpec, emit_gemm
    from graphc.codegen.llvm_types import PTR, VOID
    from graphc.codegen.target import host_target
    from graphc.ir import DType
    from graphc.runtime.jit import jit_compile

    dtype = DType.of(dtype_name)
    target = host_target()
    module = ir.Module("bench_gemm")
    module.triple = target.triple
    specs = []
    for j, (_, m, n, k, ta, tb) in enumerate(SHAPES):
        spec = GemmSpec(m, n, k, dtype, ta, tb, lda=m if ta else k, ldb=k if tb else n, ldc=n)
        specs.append(spec)
        fn = ir.Function(module, ir.FunctionType(VOID, [PTR] * 4), name=f"g{j}")
        for arg in fn.args[:3]:
            arg.add_attribute("noalias")
        builder = ir.IRBuilder(fn.append_basic_block("entry"))
        emit_gemm(builder, spec, *fn.args, target)
        builder.ret_void()
    t0 = time.perf_counter()
    jit = jit_compile(str(module))
    compile_s = time.perf_counter() - t0

    rng = np.random.default_rng(0)
    rows = []
    for j, spec in enumerate(specs):
        a = rng.standard_normal((spec.k, spec.m) if spec.trans_a else (spec.m, spec.k))
        b = rng.standard_normal((spec.n, spec.k) if spec.trans_b else (spec.k, spec.n))
        a, b = a.astype(dtype.np), b.astype(dtype.np)
        c = np.empty((spec.m, spec.n), dtype.np)
        scratch = np.empty(spec.scratch_bytes(target) + 64, np.uint8)
        sp = scratch.ctypes.data + (-scratch.ctypes.data) % 64
        fn = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 4)(jit.address(f"g{j}"))
        args = (a.ctypes.data, b.ctypes.data, c.ctypes.data, sp)
        la = a.T if spec.trans_a else a  # views: numpy passes the transpose flag to BLAS
        lb = b.T if spec.trans_b else b
        out = np.empty_like(c)
        fn(*args)
        np.matmul(la, lb, out=out)
        err = float(np.abs(c - out).max() / (np.abs(la) @ np.abs(lb)).max())
        flops = 2.0 * spec.m * spec.n * spec.k
        reps = max(3, int(0.05 / (flops / 80e9)))  # about 50 ms per timing
        ours, theirs = [], []
        for _ in range(runs):
            t = clock()
            for _ in range(reps):
                fn(*args)
            ours.append((clock() - t) / reps)
            t = clock()
            for _ in range(reps):
                np.matmul(la, lb, out=out)
            theirs.append((clock() - t) / reps)
        rows.append({"name": SHAPES[j][0], "ours": flops / statistics.median(ours) / 1e9,
                     "numpy": flops / statistics.median(theirs) / 1e9, "err": err})
    print(json.dumps({"kernel": _openblas_kernel(), "compile_s": compile_s, "rows": rows}))


def _openblas_kernel() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl not installed)"
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    if not blas:
        return "no BLAS found"
    return ", ".join(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} "
                     f"threads={i.get('num_threads')}" for i in blas)


def _run_variant(name: str, drop: tuple[str, ...], runs: int, dtype: str, wall: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["OPENBLAS_NUM_THREADS"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, __file__, "--worker", "--runs", str(runs), "--dtype", dtype]
    proc = subprocess.run(cmd + (["--wall"] if wall else []), env=env, capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{name} worker failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mlp_compile_seconds(dtype_name: str) -> float:
    """Cold compile (no cache) of a module holding the six MLP training-step GEMMs."""
    import llvmlite.ir as ir

    from graphc.codegen.gemm.emit import GemmSpec, emit_gemm
    from graphc.codegen.llvm_types import PTR, VOID
    from graphc.codegen.target import host_target
    from graphc.ir import DType
    from graphc.runtime.jit import jit_compile

    target = host_target()
    module = ir.Module("mlp_gemms")
    module.triple = target.triple
    for j, (_, m, n, k, ta, tb) in enumerate(MLP):
        spec = GemmSpec(m, n, k, DType.of(dtype_name), ta, tb, lda=m if ta else k,
                        ldb=k if tb else n, ldc=n)
        fn = ir.Function(module, ir.FunctionType(VOID, [PTR] * 4), name=f"g{j}")
        builder = ir.IRBuilder(fn.append_basic_block("entry"))
        emit_gemm(builder, spec, *fn.args, target)
        builder.ret_void()
    t0 = time.perf_counter()
    jit_compile(str(module))
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--wall", action="store_true", help="time with the wall clock")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.runs, args.dtype, args.wall)
        return
    as_is = _run_variant("as is", (), args.runs, args.dtype, args.wall)
    avx512 = _run_variant("avx512", ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"), args.runs,
                          args.dtype, args.wall)
    clock = "wall-clock" if args.wall else "thread CPU"
    print(f"{args.dtype} GEMM, 1 thread, GFLOP/s (median of {args.runs} runs each, "
          f"{clock} time); load average {os.getloadavg()[0]:.1f}")
    print(f"numpy as is:  {as_is['kernel']}  (OPENBLAS_CORETYPE="
          f"{os.environ.get('OPENBLAS_CORETYPE', 'unset')})")
    print(f"numpy avx512: {avx512['kernel']}")
    head = (f"{'shape':32} {'ours':>7} {'np':>7} {'ratio':>6} | {'ours':>7} {'np-512':>7} "
            f"{'ratio':>6} {'max rel err':>11}")
    print(head)
    print("-" * len(head))
    for r1, r2 in zip(as_is["rows"], avx512["rows"], strict=True):
        print(f"{r1['name']:32} {r1['ours']:7.1f} {r1['numpy']:7.1f} "
              f"{r1['ours'] / r1['numpy']:6.2f} | {r2['ours']:7.1f} {r2['numpy']:7.1f} "
              f"{r2['ours'] / r2['numpy']:6.2f} {r1['err']:11.1e}")
    mlp_s = _mlp_compile_seconds(args.dtype)
    print(f"compile of all {len(SHAPES)} GEMMs in one module: {as_is['compile_s']:.2f} s; "
          f"cold compile of the {len(MLP)} MLP-step GEMMs: {mlp_s:.2f} s")


if __name__ == "__main__":
    main()
