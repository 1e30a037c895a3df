"""A data-parallel training step exported for C, and the same training in Python.

    python model.py --export DIR           libdp.so + dp.h + data.bin in DIR (one process)
    mpiexec -n N python model.py --train DIR [--library]
                                           DIR/weights_py.bin (or weights_lib.bin)

The step (an MLP, SGD with momentum) is built with ``minimize(..., distributed=True)``: it
averages its gradients over the ranks through the communicator its caller provides. Each of
`STEPS` steps takes a global batch of ``PER_RANK * N`` examples from data.bin; rank r takes
the r-th contiguous part. Rank 0 writes every variable (in the library's order: by name) as
raw bytes, which `main.c` writes too, so the two files can be compared byte for byte.
`--library` runs the exported library through `gc.runtime.load` instead of `gc.compile`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import graphc as gc

FEATURES, HIDDEN, CLASSES, PER_RANK, STEPS, MAX_RANKS = 6, 16, 3, 8, 20, 4


def build() -> tuple[gc.Graph, gc.Node, gc.Node, gc.Node, dict[gc.Node, gc.Node]]:
    rng = np.random.default_rng(0)
    with gc.Graph("dp") as g:
        x = gc.placeholder((PER_RANK, FEATURES), gc.float32, name="x")
        y = gc.placeholder((PER_RANK,), gc.int32, name="y")
        w1 = gc.variable(rng.normal(0, 0.5, (FEATURES, HIDDEN)).astype(np.float32), name="w1")
        b1 = gc.variable(np.zeros(HIDDEN, np.float32), name="b1")
        w2 = gc.variable(rng.normal(0, 0.5, (HIDDEN, CLASSES)).astype(np.float32), name="w2")
        b2 = gc.variable(np.zeros(CLASSES, np.float32), name="b2")
        logits = gc.tanh(x @ w1 + b1) @ w2 + b2
        loss = gc.mean(gc.softmax_cross_entropy(logits, y))
        updates = gc.optim.SGD(lr=0.1, momentum=0.9).minimize(loss, distributed=True)
    return g, x, y, loss, updates


def data(ranks: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of every step's global batch: (STEPS, PER_RANK * ranks, ...)."""
    rng = np.random.default_rng(7)
    n = PER_RANK * ranks
    return (rng.normal(size=(STEPS, n, FEATURES)).astype(np.float32),
            rng.integers(0, CLASSES, (STEPS, n)).astype(np.int32))


def export(out: Path) -> None:
    g, x, y, loss, updates = build()
    gc.export(g, out / "libdp.so", inputs=[x, y], outputs=[loss], updates=updates)
    xs, ys = data(MAX_RANKS)  # main.c reads the first PER_RANK * N columns of each step
    with open(out / "data.bin", "wb") as f:
        f.write(xs.tobytes())
        f.write(ys.tobytes())


def train(out: Path, library: bool) -> None:
    world = gc.distributed.init()
    g, x, y, loss, updates = build()
    if library:
        step = gc.runtime.load(out / "libdp.so")
        names = [v["name"] for v in step.metadata["variables"]]

        def value(name: str) -> np.ndarray:
            return step.variables[name]
    else:
        step = gc.compile(g, inputs=[x, y], outputs=[loss], updates=updates)
        names = sorted(g.variables)

        def value(name: str) -> np.ndarray:
            return g.variables[name]
    xs, ys = data(MAX_RANKS)
    part = slice(world.rank * PER_RANK, (world.rank + 1) * PER_RANK)
    for s in range(STEPS):
        step(xs[s, part], ys[s, part])
    if world.rank == 0:
        path = out / ("weights_lib.bin" if library else "weights_py.bin")
        path.write_bytes(b"".join(np.ascontiguousarray(value(n)).tobytes() for n in names))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--export", type=Path)
    parser.add_argument("--train", type=Path)
    parser.add_argument("--library", action="store_true")
    args = parser.parse_args()
    if args.export:
        export(args.export)
    if args.train:
        train(args.train, args.library)


if __name__ == "__main__":
    main()
