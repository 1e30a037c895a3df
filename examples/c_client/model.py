"""The model of the C client example: an MLP trained briefly on the bundled 8x8 digits.

    graphc compile examples/c_client/model.py:mlp -o build/libmlp.so
    python examples/c_client/model.py --write-input build/digits.npy

`mlp()` builds the graph, trains it for a few epochs with gc.compile (about a second), and
returns it with one signature, ``predict``: x (16 images of 64 pixels, float32) -> logits
(16 x 10, float32). `--write-input` writes 16 test images as .npy and prints their labels.
"""

from __future__ import annotations

import argparse

import numpy as np

import graphc as gc

BATCH = 16


def mlp(epochs: int = 8, hidden: int = 64, seed: int = 0) -> gc.Graph:
    with gc.Graph("digits_mlp") as g:
        x = gc.placeholder((BATCH, 64), gc.float32, name="x")
        y = gc.placeholder((BATCH,), gc.int32, name="y")
        w1 = gc.variable(gc.init.he_normal((64, hidden), seed=seed), name="w1")
        b1 = gc.variable(np.zeros(hidden, np.float32), name="b1")
        w2 = gc.variable(gc.init.glorot_uniform((hidden, 10), seed=seed + 1), name="w2")
        b2 = gc.variable(np.zeros(10, np.float32), name="b2")
        logits = gc.add(gc.relu(x @ w1 + b1) @ w2, b2, name="logits")
        loss = gc.mean(gc.softmax_cross_entropy(logits, y))
        updates = gc.optim.SGD(lr=0.05, momentum=0.9).minimize(loss)
    train, _ = _split()
    step = gc.compile(g, [x, y], [loss], updates=updates)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(train))
        for i in range(len(train) // BATCH):
            idx = order[i * BATCH:(i + 1) * BATCH]
            step(train.images[idx], train.labels[idx])
    g.add_signature("predict", inputs=[x], outputs=[logits])
    return g


def _split() -> tuple:
    return gc.datasets.train_test_split(gc.datasets.digits(), test_fraction=0.25, seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-input", metavar="FILE.npy", required=True,
                        help="write 16 test images here and print their labels")
    args = parser.parse_args()
    _, test = _split()
    np.save(args.write_input, test.images[:BATCH].astype(np.float32))
    print("labels:", " ".join(str(int(v)) for v in test.labels[:BATCH]))


if __name__ == "__main__":
    main()
