"""Data utilities: seeded batching, train/validation split, standardization.

Everything is numpy and deterministic given a seed: ``np.random.default_rng(seed)``.
Standardization is fitted on the training split only (`Standardizer.fit(x_train)`, or
`standardize(train, *others)`), so no statistic of validation or test data leaks into
training.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphc.errors import AttrError, GraphcError, ShapeError

__all__ = ["Standardizer", "batches", "pad_batch", "standardize", "train_val_split"]


def _positive_int(what: str, name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise AttrError(f"{name} must be an int >= 1, got {value!r}", op=what)
    return int(value)


def batches(n: int, batch_size: int, *, shuffle: bool = False,
            seed: int | np.random.Generator | None = None,
            drop_remainder: bool = False) -> Iterator[np.ndarray]:
    """Index arrays covering range(n) in batches of `batch_size` (the last may be smaller,
    unless `drop_remainder`). With `shuffle`, the order is a permutation drawn from `seed`
    (an int, or a Generator to continue a stream across epochs)."""
    n = int(n)
    batch_size = _positive_int("batches", "batch_size", batch_size)
    if n < 0:
        raise AttrError(f"n must be >= 0, got {n}", op="batches")
    if shuffle:
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        order = rng.permutation(n)
    else:
        order = np.arange(n)
    stop = n - n % batch_size if drop_remainder else n
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


def pad_batch(x: np.ndarray, batch_size: int) -> np.ndarray:
    """x (r, ...) with r <= batch_size, zero-padded along axis 0 to batch_size rows."""
    if len(x) == batch_size:
        return np.ascontiguousarray(x)
    if len(x) > batch_size:
        raise ShapeError(f"{len(x)} rows do not fit a batch of {batch_size}", op="pad_batch")
    out = np.zeros((batch_size, *x.shape[1:]), dtype=x.dtype)
    out[:len(x)] = x
    return out


def train_val_split(x: np.ndarray, y: np.ndarray | None = None, val_fraction: float = 0.2, *,
                    seed: int = 0, stratify: bool = False) -> tuple[Any, Any]:
    """Split examples at random (seeded) into training and validation parts.

    Returns ``((x_train, y_train), (x_val, y_val))``, or ``(x_train, x_val)`` when y is
    None. The validation part has ``round(n * val_fraction)`` examples (at least 1 when
    val_fraction > 0). `stratify` (y are class labels) draws that fraction from each class
    separately, so both parts keep the class proportions.
    """
    x = np.asarray(x)
    n = len(x)
    if y is not None and len(y) != n:
        raise ShapeError(f"x has {n} examples but y has {len(y)}", op="train_val_split")
    if not 0.0 <= val_fraction < 1.0:
        raise AttrError(f"val_fraction must be in [0, 1), got {val_fraction!r}",
                        op="train_val_split")
    rng = np.random.default_rng(seed)
    if stratify:
        if y is None:
            raise GraphcError("stratify needs labels y", op="train_val_split")
        parts = []
        for c in np.unique(y):
            members = rng.permutation(np.flatnonzero(np.asarray(y) == c))
            parts.append(members[:round(len(members) * val_fraction)])
        val = rng.permutation(np.concatenate(parts))
    else:
        count = round(n * val_fraction)
        if val_fraction > 0:
            count = max(count, 1)
        val = rng.permutation(n)[:count]
    mask = np.ones(n, dtype=bool)
    mask[val] = False
    train = np.flatnonzero(mask)
    train = rng.permutation(train)
    if y is None:
        return x[train], x[val]
    y = np.asarray(y)
    return (x[train], y[train]), (x[val], y[val])


@dataclass
class Standardizer:
    """``(x - mean) / std`` with statistics fitted on one array (the training split).

    `axis` are the axes reduced when fitting (default 0: per feature). A feature whose std
    is below `eps` (constant on the training data) is only centered: its std counts as 1,
    so it never divides by ~0.
    """

    axis: int | Sequence[int] = 0
    eps: float = 1e-8
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    def fit(self, x: np.ndarray) -> Standardizer:
        x = np.asarray(x, dtype=np.float64)
        axis = self.axis if isinstance(self.axis, int) else tuple(self.axis)
        self.mean = x.mean(axis=axis, keepdims=True)
        std = x.std(axis=axis, keepdims=True)
        self.std = np.where(std < self.eps, 1.0, std)
        return self

    def _check(self) -> tuple[np.ndarray, np.ndarray]:
        if self.mean is None or self.std is None:
            raise GraphcError("call fit(x_train) before transform", op="Standardizer")
        return self.mean, self.std

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Standardize x with the fitted statistics; keeps x's float dtype (float32 if int)."""
        mean, std = self._check()
        x = np.asarray(x)
        dtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.float32)
        return ((x - mean) / std).astype(dtype)

    def inverse_transform(self, z: np.ndarray) -> np.ndarray:
        mean, std = self._check()
        z = np.asarray(z)
        return (z * std + mean).astype(z.dtype if z.dtype.kind == "f" else np.float32)

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        return self.fit(x).transform(x)


def standardize(train: np.ndarray, *others: np.ndarray, axis: int | Sequence[int] = 0
                ) -> tuple[np.ndarray, ...]:
    """(train, *others) standardized with statistics fitted on `train` only."""
    scaler = Standardizer(axis=axis).fit(train)
    return (scaler.transform(train), *(scaler.transform(o) for o in others))
