"""Train a small MLP data-parallel for a few steps and save what the test compares.

Run as ``mpiexec -n N python -m tests.mpi_workers.train_mlp --out result.npz ...``. Every rank
builds the MLP from a rank-dependent seed (so `broadcast_variables` has something to fix),
broadcasts rank 0's variables, then takes `--steps` steps of `--batch` samples in all (batch
// N per rank, from `shard_batches`). After every step each rank's parameters are gathered
and compared byte for byte. Rank 0 writes the final variables and the comparison's verdict.
`--fail-at-step K` makes rank 1 raise at step K (the job must then end, not hang);
`--kill-at-step K` kills rank 1 with SIGKILL there; `--reference` runs the step on the
numpy interpreter (its allreduce goes through mpi4py). `--bucket-bytes N` sets the gradient
bucket size of the compiled step (`passes/allreduce_buckets.py`: small values make one
bucket per gradient).
"""

from __future__ import annotations

import argparse
import os
import signal
from collections.abc import Callable

import numpy as np

import graphc as gc

FEATURES, HIDDEN, CLASSES = 6, 16, 3


def build(per_rank: int, dtype: gc.DType, optimizer: str, seed: int, reference: bool
          ) -> tuple[gc.Graph, Callable[..., object]]:
    np_dtype = dtype.np
    rng = np.random.default_rng(seed)
    with gc.Graph("mlp") as g:
        x = gc.placeholder((per_rank, FEATURES), dtype, name="x")
        y = gc.placeholder((per_rank,), gc.int32, name="y")
        w1 = gc.variable(rng.normal(0, 0.5, (FEATURES, HIDDEN)).astype(np_dtype), name="w1")
        b1 = gc.variable(np.zeros(HIDDEN, np_dtype), name="b1")
        w2 = gc.variable(rng.normal(0, 0.5, (HIDDEN, CLASSES)).astype(np_dtype), name="w2")
        b2 = gc.variable(np.zeros(CLASSES, np_dtype), name="b2")
        logits = gc.tanh(x @ w1 + b1) @ w2 + b2
        loss = gc.mean(gc.softmax_cross_entropy(logits, y))
        opt = (gc.optim.SGD(lr=0.1, momentum=0.9) if optimizer == "sgd"
               else gc.optim.Adam(lr=0.01))
        updates = opt.minimize(loss, distributed=True)
    run = gc.reference if reference else gc.compile
    return g, run(g, inputs=[x, y], outputs=[loss], updates=updates)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--fail-at-step", type=int, default=-1)
    parser.add_argument("--kill-at-step", type=int, default=-1)
    parser.add_argument("--reference", action="store_true", help="numpy interpreter")
    parser.add_argument("--bucket-bytes", type=int, default=0)
    args = parser.parse_args()
    if args.bucket_bytes:
        from graphc.passes import allreduce_buckets
        allreduce_buckets.BUCKET_BYTES = args.bucket_bytes

    world = gc.distributed.init()
    dtype = gc.DType(args.dtype)
    graph, step = build(args.batch // world.size, dtype, args.optimizer, seed=world.rank,
                        reference=args.reference)
    gc.distributed.broadcast_variables(graph)

    data = np.random.default_rng(1234)
    n = 4 * args.batch + 3  # an incomplete last batch, which shard_batches drops
    xs = data.normal(size=(n, FEATURES)).astype(dtype.np)
    ys = data.integers(0, CLASSES, n).astype(np.int32)
    identical = True
    taken = 0
    epoch = 0
    while taken < args.steps:
        for idx in gc.distributed.shard_batches(n, args.batch, epoch=epoch, seed=7):
            if taken == args.steps:
                break
            if taken == args.fail_at_step and world.rank == 1:
                raise RuntimeError(f"rank 1 fails on purpose at step {taken}")
            if taken == args.kill_at_step and world.rank == 1:
                os.kill(os.getpid(), signal.SIGKILL)  # no Python cleanup, no MPI_Abort
            step(xs[idx], ys[idx])
            taken += 1
            if world.comm is not None and world.size > 1:
                mine = b"".join(graph.variables[k].tobytes() for k in sorted(graph.variables))
                identical &= len(set(world.comm.allgather(mine))) == 1
        epoch += 1
    if world.rank == 0:
        from graphc.runtime import mpi
        np.savez(args.out, identical=identical, size=world.size, waited=mpi.wait_seconds(),
                 **{k.replace("/", "__"): graph.variables[k] for k in graph.variables})


if __name__ == "__main__":
    main()
