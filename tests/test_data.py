"""Data utilities: seeded batching, train/validation split, standardization fitted on the
training split only."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.training import data


def test_batches_cover_every_index_once() -> None:
    parts = list(data.batches(10, 4))
    assert [len(p) for p in parts] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(parts), np.arange(10))
    shuffled = list(data.batches(10, 4, shuffle=True, seed=3))
    assert sorted(np.concatenate(shuffled).tolist()) == list(range(10))
    assert not np.array_equal(np.concatenate(shuffled), np.arange(10))
    again = list(data.batches(10, 4, shuffle=True, seed=3))
    assert all(np.array_equal(a, b) for a, b in zip(shuffled, again))  # seeded
    other = np.concatenate(list(data.batches(10, 4, shuffle=True, seed=4)))
    assert not np.array_equal(other, np.concatenate(shuffled))
    assert [len(p) for p in data.batches(10, 4, drop_remainder=True)] == [4, 4]
    rng = np.random.default_rng(0)  # a Generator continues its stream across epochs
    e1 = np.concatenate(list(data.batches(10, 5, shuffle=True, seed=rng)))
    e2 = np.concatenate(list(data.batches(10, 5, shuffle=True, seed=rng)))
    assert not np.array_equal(e1, e2)
    with pytest.raises(gc.AttrError, match="batch_size must be an int >= 1"):
        list(data.batches(10, 0))


def test_pad_batch() -> None:
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    padded = data.pad_batch(x, 5)
    assert padded.shape == (5, 2) and padded.dtype == x.dtype
    np.testing.assert_array_equal(padded[:3], x)
    assert not padded[3:].any()
    with pytest.raises(gc.ShapeError, match="do not fit"):
        data.pad_batch(x, 2)


def test_train_val_split() -> None:
    x = np.arange(100).reshape(50, 2)
    y = np.arange(50) % 5
    (xt, yt), (xv, _) = data.train_val_split(x, y, val_fraction=0.2, seed=1)
    assert len(xv) == 10 and len(xt) == 40
    ids = np.concatenate([xt[:, 0], xv[:, 0]]) // 2
    assert sorted(ids.tolist()) == list(range(50))  # disjoint, complete
    np.testing.assert_array_equal(yt, (xt[:, 0] // 2) % 5)  # rows stay paired
    _, (xv2, _) = data.train_val_split(x, y, val_fraction=0.2, seed=1)
    np.testing.assert_array_equal(xv, xv2)
    (_, ys), (_, yvs) = data.train_val_split(x, y, val_fraction=0.2, seed=2, stratify=True)
    assert np.bincount(yvs).tolist() == [2] * 5 and np.bincount(ys).tolist() == [8] * 5
    xt_only, xv_only = data.train_val_split(x, val_fraction=0.1, seed=0)
    assert len(xv_only) == 5 and len(xt_only) == 45
    with pytest.raises(gc.ShapeError, match="50 examples but y has 3"):
        data.train_val_split(x, y[:3])


def test_standardizer_is_fitted_on_the_training_split_only() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(5.0, 2.0, (200, 3)).astype(np.float32)
    train[:, 2] = 7.0  # a constant feature
    test = rng.normal(-3.0, 0.5, (50, 3)).astype(np.float32)
    scaler = data.Standardizer().fit(train)
    np.testing.assert_allclose(scaler.mean.ravel(), train.mean(0), rtol=1e-5)
    z = scaler.transform(train)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z[:, :2].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z[:, :2].std(0), 1, rtol=1e-4)
    np.testing.assert_array_equal(z[:, 2], 0)  # centered, never divided by ~0
    zt = scaler.transform(test)
    # The test data uses the training statistics, not its own.
    np.testing.assert_allclose(zt, (test - train.mean(0)) / np.where(train.std(0) > 0,
                                                                     train.std(0), 1),
                               rtol=1e-4, atol=1e-5)
    assert zt[:, 0].mean() < -2
    np.testing.assert_allclose(scaler.inverse_transform(zt), test, rtol=1e-5, atol=1e-5)
    a, b = data.standardize(train, test)
    np.testing.assert_array_equal(a, z)
    np.testing.assert_array_equal(b, zt)
    with pytest.raises(gc.GraphcError, match="call fit"):
        data.Standardizer().transform(test)
