"""Native control flow: in-place carries, partial unrolling, conds as branches.

    python benchmarks/bench_loops.py [--seconds 0.5]

Three tables, medians of one call in ms (one thread, the calling thread's CPU time):

- a generation-style `while_loop` filling a (T, 256) float32 cache row by row with
  `dynamic_update_slice`, the cache carried in place vs double-buffered (then every trip
  copies the whole cache);
- an RNN `scan` (hidden 64, batch 8, T = 256) with unroll = 1, 2, 4, 8: compile seconds and
  step time;
- a `cond` whose branches hold a 256x256 GEMM, run as a branch vs as a select of both.

The "double-buffered" and "select" variants are made by switching off, in this process
only, the rule that picks the faster form (`passes.in_place.in_place_carries`,
`lower_control.branch_worthy`). A benchmark: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

import graphc as gc
from graphc.passes import lower_control, memory_plan

OPTIONS = gc.CompileOptions(cache_dir=None, threads=1)


def _time(fn: Callable[..., object], args: tuple[Any, ...], seconds: float) -> float:
    """Median CPU time of one call ``fn(*args)``, in ms."""
    fn(*args)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < seconds:
        t = time.thread_time()
        fn(*args)
        times.append(time.thread_time() - t)
    return statistics.median(times) * 1e3


@contextmanager
def _patched(module: Any, name: str, value: Any) -> Iterator[None]:
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


def _compile(g: gc.Graph) -> tuple[Callable[..., Any], float]:
    start = time.perf_counter()
    run = gc.compile(g, signature="f", options=OPTIONS)
    return run, time.perf_counter() - start


def _cache_loop(steps: int, width: int = 256) -> gc.Graph:
    with gc.Graph(f"cache{steps}") as g:
        n = gc.placeholder((), gc.int64, name="n")
        x = gc.placeholder((width,), gc.float32, name="x")

        def body(c: tuple[gc.Node, gc.Node, gc.Node]) -> tuple[gc.Node, gc.Node, gc.Node]:
            h, cache, t = c
            h2 = gc.tanh(h * 0.9 + 0.1)
            return h2, gc.dynamic_update_slice(cache, gc.reshape(h2, (1, width)), (t, 0)), t + 1

        _, cache, _ = gc.while_loop(lambda c: c[2] < n, body,
                                    (x, gc.constant(np.zeros((steps, width), np.float32)),
                                     gc.constant(np.int64(0))))
        g.add_signature("f", [n, x], [cache])
    return g


def bench_in_place(seconds: float) -> None:
    print("while_loop filling a (T, 256) f32 cache: in place vs double-buffered, ms/call")
    print(f"{'T':>6} {'in place':>10} {'2 buffers':>10} {'ratio':>7}")
    x = np.linspace(-1, 1, 256, dtype=np.float32)
    for steps in (64, 256, 1024):
        fast, _ = _compile(_cache_loop(steps))
        with _patched(memory_plan, "in_place_carries", lambda *args: {}):
            slow, _ = _compile(_cache_loop(steps))
        a = _time(fast, (np.int64(steps), x), seconds)
        b = _time(slow, (np.int64(steps), x), seconds)
        print(f"{steps:>6} {a:>10.3f} {b:>10.3f} {b / a:>6.1f}x")


def _rnn(unroll: int, steps: int = 256, hidden: int = 64, batch: int = 8) -> gc.Graph:
    rng = np.random.default_rng(0)
    with gc.Graph(f"rnn{unroll}") as g:
        xs = gc.placeholder((steps, batch, hidden), gc.float32, name="xs")
        w = gc.constant((rng.normal(size=(hidden, hidden)) / 8).astype(np.float32))
        h, ys = gc.scan(lambda h, x: (gc.tanh(h @ w + x),) * 2,
                        gc.constant(np.zeros((batch, hidden), np.float32)), xs, unroll=unroll)
        g.add_signature("f", [xs], [h, ys])
    return g


def bench_unroll(seconds: float) -> None:
    print("scan RNN (hidden 64, batch 8, T=256): unroll=k, compile s and ms/call")
    print(f"{'k':>4} {'compile':>9} {'step':>9}")
    xs = np.random.default_rng(1).normal(size=(256, 8, 64)).astype(np.float32)
    for k in (1, 2, 4, 8):
        run, compile_s = _compile(_rnn(k))
        print(f"{k:>4} {compile_s:>9.2f} {_time(run, (xs,), seconds):>9.3f}")


def _heavy_cond() -> gc.Graph:
    rng = np.random.default_rng(2)
    with gc.Graph("cond") as g:
        x = gc.placeholder((256, 256), gc.float32, name="x")
        flag = gc.placeholder((), "bool", name="flag")
        w = gc.constant((rng.normal(size=(256, 256)) / 16).astype(np.float32))
        (y,) = gc.cond(flag, lambda a: (gc.tanh(a @ w),), lambda a: (a * 0.5,), x)
        g.add_signature("f", [x, flag], [y])
    return g


def bench_cond(seconds: float) -> None:
    print("cond(flag, tanh(x @ W), x * 0.5), 256x256 f32: branch vs select, ms/call")
    print(f"{'flag':>6} {'branch':>9} {'select':>9}")
    branch, _ = _compile(_heavy_cond())
    with _patched(lower_control, "branch_worthy", lambda regions: False):
        select, _ = _compile(_heavy_cond())
    x = np.random.default_rng(3).normal(size=(256, 256)).astype(np.float32)
    for flag in (True, False):
        a = _time(branch, (x, np.bool_(flag)), seconds)
        b = _time(select, (x, np.bool_(flag)), seconds)
        print(f"{flag!s:>6} {a:>9.3f} {b:>9.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args()
    bench_in_place(args.seconds)
    print()
    bench_unroll(args.seconds)
    print()
    bench_cond(args.seconds)


if __name__ == "__main__":
    main()
