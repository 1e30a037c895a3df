"""Train a small CNN (Conv2D, BatchNorm, MaxPool, Dropout, Dense) on the 8x8 digits.

    python examples/train_digits_cnn.py [--epochs 12] [--batch 32]

Images are NCHW (1, 8, 8). Two 3x3 "same" convolutions with batch normalization and ReLU,
a 2x2 max pool, dropout and a dense classifier. In training, BatchNorm normalizes with the
batch statistics and updates its running statistics, and dropout is active; evaluation
and prediction use the running statistics and no dropout -- both modes come from the one
definition below. 10% of the training split is held out for validation (a seeded split).
Prints the test loss and accuracy (>= 97%) and the training speed in steps/s.
"""

from __future__ import annotations

import argparse
from typing import Any

import graphc as gc
from graphc import nn


def build_model(seed: int = 0, lr: float = 2e-3) -> gc.Model:
    net = nn.Sequential([
        nn.Conv2D(16, 3, padding="same", kernel_initializer="he_normal", seed=seed),
        nn.BatchNorm(),
        nn.Activation("relu"),
        nn.Conv2D(32, 3, padding="same", kernel_initializer="he_normal", seed=seed + 1),
        nn.BatchNorm(),
        nn.Activation("relu"),
        nn.MaxPool2D(2),
        nn.Flatten(),
        nn.Dropout(0.3, seed=seed),
        nn.Dense(10, seed=seed + 2),
    ])
    return gc.Model(net, input_shape=(1, 8, 8), loss="sparse_categorical_crossentropy",
                    optimizer=gc.optim.Adam(lr), metrics=["accuracy"], name="digits_cnn")


def run(epochs: int = 12, batch_size: int = 32, seed: int = 0, verbose: int = 1
        ) -> dict[str, Any]:
    """Train and evaluate; return the test metrics, speed and the History."""
    data = gc.datasets.digits(flatten=False)
    train, test = gc.datasets.train_test_split(data, test_fraction=0.25, seed=0)
    (x_train, y_train), (x_val, y_val) = gc.data.train_val_split(
        train.images, train.labels, val_fraction=0.1, seed=seed, stratify=True)
    lr = 2e-3
    model = build_model(seed, lr)
    schedule = gc.callbacks.LearningRateScheduler(
        gc.optim.CosineAnnealing(base_lr=lr, T_max=epochs))
    history = model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, seed=seed,
                        validation_data=(x_val, y_val), callbacks=[schedule], verbose=verbose)
    test_logs = model.evaluate(test.images, test.labels)
    return {"test_loss": test_logs["loss"], "test_accuracy": test_logs["accuracy"],
            "val_accuracy": history["val_accuracy"][-1],
            "steps_per_second": history.steps_per_second,
            "compile_seconds": history.compile_seconds, "steps": history.steps,
            "history": history}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = run(args.epochs, args.batch, args.seed)
    print(f"graphs built and compiled in {result['compile_seconds']:.2f} s")
    print(f"validation accuracy {result['val_accuracy']:.4f}")
    print(f"test loss {result['test_loss']:.4f}  test accuracy {result['test_accuracy']:.4f}")
    print(f"{result['steps']} steps: {result['steps_per_second']:.0f} steps/s")


if __name__ == "__main__":
    main()
