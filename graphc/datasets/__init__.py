"""Small data sets shipped inside the package, so examples and tests run offline."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np


@dataclass(frozen=True)
class Dataset:
    """Images (float32, scaled to [0, 1]) and integer labels."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def digits(flatten: bool = True) -> Dataset:
    """The 1797 8x8 handwritten digits (UCI; see DIGITS_LICENSE.txt), pixels scaled to [0, 1].

    `flatten=True` gives images of shape (1797, 64); otherwise (1797, 1, 8, 8) (NCHW).
    Loaded with ``allow_pickle=False``.
    """
    path = resources.files(__package__).joinpath("digits.npz")
    with path.open("rb") as f, np.load(f, allow_pickle=False) as data:
        images = data["images"].astype(np.float32) / 16.0
        labels = data["labels"].astype(np.int32)
    images = images.reshape(len(labels), 64) if flatten else images.reshape(len(labels), 1, 8, 8)
    return Dataset(np.ascontiguousarray(images), labels)


def train_test_split(
    data: Dataset, test_fraction: float = 0.2, seed: int = 0
) -> tuple[Dataset, Dataset]:
    """A seeded random split (the same seed always gives the same split)."""
    order = np.random.default_rng(seed).permutation(len(data))
    n_test = round(len(data) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return (Dataset(data.images[train], data.labels[train]),
            Dataset(data.images[test], data.labels[test]))
