"""Convolution layers: graphc's direct kernels vs its GEMM path (im2col), side by side.

    python benchmarks/bench_conv.py [--threads 1] [--seconds 0.5]

For each layer shape it times forward (conv2d + bias + ReLU), grad_input and grad_weight
compiled with `CompileOptions(conv_algorithm="direct")` and `"gemm"`, and PyTorch's
conv2d / its two backward convolutions when torch is installed, and prints medians in ms
with GFLOP/s (with one thread, the calling thread's CPU time, which other load on a shared
machine disturbs less). The "auto" column says which path graphc picks by default. A
benchmark: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

import graphc as gc
from graphc.codegen.conv import im2col
from graphc.codegen.target import host_target

# (batch, channels in, height/width, channels out, kernel, stride, padding, groups)
LAYERS = [
    (64, 1, 28, 6, 5, 1, 2, 1),  # LeNet conv1
    (64, 6, 14, 16, 5, 1, 0, 1),  # LeNet conv2
    (8, 32, 32, 32, 3, 1, 1, 1),
    (8, 64, 16, 64, 3, 1, 1, 1),
    (8, 64, 16, 128, 3, 2, 1, 1),
    (8, 128, 8, 128, 3, 1, 1, 1),
    (8, 64, 16, 64, 1, 1, 0, 1),
    (8, 64, 16, 64, 3, 1, 1, 4),
    (1, 64, 32, 64, 3, 1, 1, 1),
    (64, 16, 10, 32, 3, 1, 1, 1),
    (8, 128, 4, 128, 3, 1, 1, 1),
    (8, 256, 4, 256, 3, 1, 1, 1),
]


def _time(fn: Callable[[], object], seconds: float, clock: Callable[[], float]) -> float:
    for _ in range(2):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < seconds:
        t = clock()
        fn()
        times.append(clock() - t)
    return statistics.median(times)


def _clock(threads: int) -> Callable[[], float]:
    """With one thread, the calling thread's CPU time: on a shared machine it leaves out
    the time other processes hold the core (with more threads, wall time)."""
    return time.thread_time if threads == 1 else time.perf_counter


def _graphc(layer: tuple[int, ...], threads: int, seconds: float) -> dict[str, dict[str, float]]:
    n, c, hw, o, k, s, p, groups = layer
    rng = np.random.default_rng(0)
    xv = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
    g = gc.Graph()
    with g:
        x = gc.placeholder(xv.shape, np.float32, name="x")
        w = gc.variable(rng.standard_normal((o, c // groups, k, k)).astype(np.float32) * 0.1,
                        name="w")
        b = gc.variable(np.zeros(o, np.float32), name="b")
        y = gc.relu(gc.conv2d(x, w, stride=s, padding=p, groups=groups)
                    + gc.reshape(b, (1, o, 1, 1)))
        dy = gc.placeholder(y.shape, np.float32, name="dy")
        gx, gw = gc.grad(gc.sum(gc.conv2d(x, w, stride=s, padding=p, groups=groups) * dy),
                         [x, w])
    dyv = rng.standard_normal(y.shape).astype(np.float32)
    clock = _clock(threads)
    out: dict[str, dict[str, float]] = {}
    for algo in ("direct", "gemm"):
        opts = gc.CompileOptions(threads=threads, conv_algorithm=algo)
        fwd = gc.compile(g, [x], [y], options=opts)
        bx = gc.compile(g, [dy], [gx], options=opts)
        bw = gc.compile(g, [x, dy], [gw], options=opts)
        out[algo] = {"forward": _time(lambda f=fwd: f(xv), seconds, clock),
                     "grad_input": _time(lambda f=bx: f(dyv), seconds, clock),
                     "grad_weight": _time(lambda f=bw: f(xv, dyv), seconds, clock)}
    return out


def _torch(layer: tuple[int, ...], threads: int, seconds: float) -> dict[str, float] | None:
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    n, c, hw, o, k, s, p, groups = layer
    x = torch.randn(n, c, hw, hw)
    w = torch.randn(o, c // groups, k, k) * 0.1
    b = torch.zeros(o)
    y = torch.nn.functional.conv2d(x, w, b, s, p, 1, groups)
    dy = torch.randn_like(y)
    grad = torch.nn.grad
    clock = _clock(threads)
    conv = torch.nn.functional.conv2d
    with torch.no_grad():
        return {
            "forward": _time(lambda: torch.relu(conv(x, w, b, s, p, 1, groups)), seconds, clock),
            "grad_input": _time(lambda: grad.conv2d_input(x.shape, w, dy, s, p, 1, groups),
                                seconds, clock),
            "grad_weight": _time(lambda: grad.conv2d_weight(x, w.shape, dy, s, p, 1, groups),
                                 seconds, clock),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=0.5)
    opts = parser.parse_args()
    print("| layer (N, C, HW, O, k, s, p, groups) | op | direct | gemm | torch | auto picks |")
    print("|---|---|---|---|---|---|")
    for layer in LAYERS:
        n, c, hw, o, k, s, p, groups = layer
        ho = (hw + 2 * p - k) // s + 1
        flops = 2 * n * o * ho * ho * (c // groups) * k * k
        res = _graphc(layer, opts.threads, opts.seconds)
        ref = _torch(layer, opts.threads, opts.seconds)
        g = gc.Graph()
        with g:
            x = gc.placeholder((n, c, hw, hw), np.float32)
            w = gc.placeholder((o, c // groups, k, k), np.float32)
            node = gc.conv2d(x, w, stride=s, padding=p, groups=groups)
        pick = "gemm" if im2col.choose(node, host_target()) else "direct"
        for op in ("forward", "grad_input", "grad_weight"):
            cells = []
            for t in (res["direct"][op], res["gemm"][op], None if ref is None else ref[op]):
                cells.append("-" if t is None else
                             f"{t * 1e3:.3f} ms ({flops / t / 1e9:.0f} GFLOP/s)")
            print(f"| {layer} | {op} | " + " | ".join(cells) + f" | {pick} |", flush=True)


if __name__ == "__main__":
    main()
