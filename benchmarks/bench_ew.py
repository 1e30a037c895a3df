"""Side-by-side timing of code-generation variants of the elementwise benchmark chain.

    python -m benchmarks.bench_ew [--calls 200] [--threads 1]

Compiles workload (a)'s chain tanh(x*a+b)*sigmoid(x) + 0.5*x*x (4096x1024 float32) once per
variant in this process and times the variants interleaved call by call, so a noisy machine
slows them alike; prints each variant's median and minimum and its median ratio to the
first. Variants (each a way vecmath can emit the chain):

- previous:   the algorithms before the rational tanh: tanh = m/(m+2) with m = expm1(2|x|),
              sigmoid from the polynomial exp, no AVX-512 intrinsics, two divisions
- portable:   what hosts without AVX-512 get now (rational tanh, exp-based sigmoid, fused)
- unfused:    the AVX-512 code with tanh * sigmoid as two divisions
- current:    the default (table sigmoid, tanh * sigmoid fused into one division)

Also times a memory-bound chain (0.5*x*x) as the floor, and JAX when installed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import time
from collections.abc import Callable, Iterator

import numpy as np

import graphc as gc
from benchmarks import workloads as w
from benchmarks.run import XLA_ONE_THREAD
from graphc.codegen.vecmath import act as vecmath_act
from graphc.codegen.vecmath import functions as vecmath


@contextlib.contextmanager
def _previous_tanh() -> Iterator[None]:
    """float32 tanh by the expm1 formula (what vecmath_act uses for float64)."""
    saved = vecmath.tanh_body

    def body(e: object, x: object) -> object:
        m, d = vecmath_act._tanh_expm1(e, x)
        return e.copysign(e.div(m, d), x)

    vecmath.tanh_body = body
    try:
        yield
    finally:
        vecmath.tanh_body = saved


@contextlib.contextmanager
def _unfused() -> Iterator[None]:
    saved = vecmath.fraction_product
    vecmath.fraction_product = lambda b, x, y: None
    try:
        yield
    finally:
        vecmath.fraction_product = saved


def _compile(expr: Callable[[object], object], threads: int,
             modes: tuple[Callable[[], contextlib.AbstractContextManager[None]], ...] = ()
             ) -> Callable[[], object]:
    x_val, _, _ = w._ew_data()
    with contextlib.ExitStack() as stack:
        for mode in modes:
            stack.enter_context(mode())
        with gc.Graph("ew") as g:
            x = gc.placeholder(w.EW_SHAPE, gc.float32, name="x")
            y = expr(x)
        # No cache_dir: every variant is really compiled under its mode.
        f = gc.compile(g, [x], y, options=gc.CompileOptions(threads=threads))
    return lambda: f(x_val)


def _chain(x: object) -> object:
    _, a, b = w._ew_data()
    return gc.tanh(x * float(a) + float(b)) * gc.sigmoid(x) + 0.5 * x * x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    t = args.threads
    runners: dict[str, Callable[[], object]] = {
        "previous": _compile(_chain, t, (vecmath.portable, _previous_tanh, _unfused)),
        "portable": _compile(_chain, t, (vecmath.portable,)),
        "unfused": _compile(_chain, t, (_unfused,)),
        "current": _compile(_chain, t),
        "floor 0.5*x*x": _compile(lambda x: 0.5 * x * x, t),
    }
    if importlib.util.find_spec("jax") is not None:
        if t == 1:
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " "
                                       + XLA_ONE_THREAD).strip()
        from benchmarks import workloads_jax

        runners["jax"] = workloads_jax.ew(t)
    # Error against float64, relative to the size of the two terms (the sum crosses zero).
    x64, a, b = (v.astype(np.float64) for v in map(np.asarray, w._ew_data()))
    prod = np.tanh(x64 * a + b) / (1 + np.exp(-x64))
    scale = np.abs(prod) + 0.5 * x64 * x64
    for name in ("previous", "portable", "unfused", "current"):
        err = np.abs(runners[name]() - (prod + 0.5 * x64 * x64)) / scale
        print(f"{name}: max error {err.max():.2g} (relative to |tanh*sigmoid| + 0.5 x^2)")
    times: dict[str, list[float]] = {k: [] for k in runners}
    for fn in runners.values():
        fn()
    for _ in range(args.calls):
        for name, fn in runners.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    base = float(np.median(times["previous"]))
    print(f"threads={t}, {args.calls} interleaved calls each: median (min), ratio to previous")
    for name, ts in times.items():
        med = float(np.median(ts))
        print(f"  {name:14s} {med * 1e3:7.3f} ms ({min(ts) * 1e3:.3f})  {med / base:5.2f}")


if __name__ == "__main__":
    main()
