"""Data-parallel training of an MLP on the bundled 8x8 digits, one process per rank.

    mpiexec -n 2 python examples/train_digits_distributed.py [--epochs 20] [--batch 64]
    python examples/train_digits_distributed.py        (a world of one: the same training)

Every rank builds the same graph; `minimize(..., distributed=True)` puts a mean-allreduce
of each gradient into the step, so each step is still one native call and all ranks apply
the same update. `broadcast_variables` starts every rank from rank 0's weights and
`shard_batches` gives each rank its part of every global batch (`--batch` is the global
batch: the result does not depend on the number of ranks, up to rounding). Rank 0 prints
the test accuracy. Across machines: ``mpiexec -n 4 -f hosts python ...`` (MPICH's hostfile
lists one host per line, ``host:ranks``).
"""

from __future__ import annotations

import argparse

import numpy as np

import graphc as gc


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()

    world = gc.distributed.init()
    data = gc.datasets.digits()
    train, test = gc.datasets.train_test_split(data, test_fraction=0.25, seed=0)
    per_rank = args.batch // world.size
    with gc.Graph("digits") as g:
        x = gc.placeholder((per_rank, 64), gc.float32, name="x")
        y = gc.placeholder((per_rank,), gc.int32, name="y")
        w1 = gc.variable(gc.init.he_normal((64, 256), seed=world.rank), name="w1")
        b1 = gc.variable(np.zeros(256, np.float32), name="b1")
        w2 = gc.variable(gc.init.he_normal((256, 10), seed=world.rank + 100), name="w2")
        b2 = gc.variable(np.zeros(10, np.float32), name="b2")
        logits = gc.relu(x @ w1 + b1) @ w2 + b2
        loss = gc.mean(gc.softmax_cross_entropy(logits, y))
        updates = gc.optim.Adam(lr=2e-3).minimize(loss, distributed=True)
        xt = gc.placeholder((len(test.labels), 64), gc.float32, name="xt")
        predicted = gc.argmax(gc.relu(xt @ w1 + b1) @ w2 + b2, axis=1)
    step = gc.compile(g, inputs=[x, y], outputs=loss, updates=updates)
    predict = gc.compile(g, inputs=[xt], outputs=predicted)
    gc.distributed.broadcast_variables(g)  # the ranks' seeds differ on purpose

    images = train.images.astype(np.float32)
    labels = train.labels.astype(np.int32)
    for epoch in range(args.epochs):
        for idx in gc.distributed.shard_batches(len(labels), args.batch, epoch=epoch, seed=0):
            step(images[idx], labels[idx])
    accuracy = float(np.mean(predict(test.images.astype(np.float32)) == test.labels))
    if world.is_root:
        print(f"{world.size} rank(s) ({world.library}): test accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
