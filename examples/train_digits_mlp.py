"""Train an MLP on the bundled 8x8 digits with one compiled native call per training step.

    python examples/train_digits_mlp.py [--epochs 30] [--reference]

Builds the graph of DESIGN.md section 4 (forward, gc.grad, SGD with momentum as `updates`),
compiles the training step and the prediction with gc.compile, trains, and reports loss,
accuracy and steps per second. `--reference` runs the same graph on the numpy reference
interpreter instead, for comparison.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import graphc as gc


def build(batch: int, hidden: int = 128, seed: int = 0) -> tuple[gc.Graph, dict]:
    with gc.Graph("digits_mlp") as g:
        x = gc.placeholder((batch, 64), gc.float32, name="x")
        y = gc.placeholder((batch,), gc.int32, name="y")
        xe = gc.placeholder((batch, 64), gc.float32, name="x_eval")
        w1 = gc.variable(gc.init.he_normal((64, hidden), seed=seed), name="w1")
        b1 = gc.variable(np.zeros(hidden, np.float32), name="b1")
        w2 = gc.variable(gc.init.glorot_uniform((hidden, 10), seed=seed + 1), name="w2")
        b2 = gc.variable(np.zeros(10, np.float32), name="b2")

        def forward(inp: gc.Node) -> gc.Node:
            return gc.relu(inp @ w1 + b1) @ w2 + b2

        logits = forward(x)
        loss = gc.mean(gc.softmax_cross_entropy(logits, y))
        opt = gc.optim.SGD(lr=0.1, momentum=0.9)
        updates = opt.minimize(loss)
        predicted = gc.argmax(forward(xe), axis=1)
    g.add_signature("train", inputs=[x, y], outputs=[loss], updates=updates)
    g.add_signature("predict", inputs=[xe], outputs=[predicted])
    return g, {"loss": loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reference", action="store_true",
                        help="run on the numpy reference interpreter instead of compiling")
    args = parser.parse_args()

    data = gc.datasets.digits()
    train, test = gc.datasets.train_test_split(data, test_fraction=0.25, seed=0)
    g, _ = build(args.batch)
    t0 = time.perf_counter()
    if args.reference:
        step = gc.reference(g, signature="train")
        predict = gc.reference(g, signature="predict")
    else:
        step = gc.compile(g, signature="train")
        predict = gc.compile(g, signature="predict")
    compile_s = time.perf_counter() - t0
    print(f"{'reference' if args.reference else 'compiled'} in {compile_s:.2f} s")

    rng = np.random.default_rng(0)
    n_batches = len(train) // args.batch
    steps = 0
    start = time.perf_counter()
    for epoch in range(args.epochs):
        order = rng.permutation(len(train))
        losses = []
        for i in range(n_batches):
            idx = order[i * args.batch:(i + 1) * args.batch]
            (loss,) = step(train.images[idx], train.labels[idx])
            losses.append(float(loss))
            steps += 1
        if epoch % 5 == 4 or epoch == args.epochs - 1:
            print(f"epoch {epoch + 1:3d}  loss {np.mean(losses):.4f}")
    train_s = time.perf_counter() - start

    def accuracy(images: np.ndarray, labels: np.ndarray) -> float:
        correct = 0
        n = len(labels) // args.batch * args.batch
        for i in range(0, n, args.batch):
            (pred,) = predict(images[i:i + args.batch])
            correct += int(np.sum(pred == labels[i:i + args.batch]))
        return correct / n

    print(f"train accuracy {accuracy(train.images, train.labels):.4f}")
    print(f"test accuracy  {accuracy(test.images, test.labels):.4f}")
    print(f"{steps} steps in {train_s:.2f} s: {steps / train_s:.0f} steps/s")


if __name__ == "__main__":
    main()
