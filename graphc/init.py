"""Seeded initializers: each returns a new numpy array (pass it to `gc.variable`).

Fan-in/fan-out follow the Keras/PyTorch conventions: for a 2-D (in, out) matrix, fan_in is
shape[0] and fan_out shape[1]; for a convolution kernel (O, I, kh, kw), fan_in = I*kh*kw and
fan_out = O*kh*kw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from graphc.ir import DType

Shape = Sequence[int]


def _fans(shape: Shape) -> tuple[int, int]:
    shape = tuple(shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _out(x: np.ndarray, dtype: DType | str) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=DType.of(dtype).np)


def zeros(shape: Shape, dtype: DType | str = "float32") -> np.ndarray:
    return np.zeros(tuple(shape), DType.of(dtype).np)


def ones(shape: Shape, dtype: DType | str = "float32") -> np.ndarray:
    return np.ones(tuple(shape), DType.of(dtype).np)


def uniform(shape: Shape, low: float = -0.05, high: float = 0.05, *, seed: int = 0,
            dtype: DType | str = "float32") -> np.ndarray:
    return _out(np.random.default_rng(seed).uniform(low, high, tuple(shape)), dtype)


def normal(shape: Shape, mean: float = 0.0, std: float = 0.05, *, seed: int = 0,
           dtype: DType | str = "float32") -> np.ndarray:
    return _out(np.random.default_rng(seed).normal(mean, std, tuple(shape)), dtype)


def glorot_uniform(shape: Shape, *, seed: int = 0, dtype: DType | str = "float32") -> np.ndarray:
    """U(-a, a) with a = sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010)."""
    fan_in, fan_out = _fans(shape)
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return uniform(shape, -limit, limit, seed=seed, dtype=dtype)


def glorot_normal(shape: Shape, *, seed: int = 0, dtype: DType | str = "float32") -> np.ndarray:
    """N(0, 2 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans(shape)
    return normal(shape, 0.0, math.sqrt(2.0 / (fan_in + fan_out)), seed=seed, dtype=dtype)


def he_uniform(shape: Shape, *, seed: int = 0, dtype: DType | str = "float32") -> np.ndarray:
    """U(-a, a) with a = sqrt(6 / fan_in) (He et al. 2015, for ReLU)."""
    fan_in, _ = _fans(shape)
    limit = math.sqrt(6.0 / fan_in)
    return uniform(shape, -limit, limit, seed=seed, dtype=dtype)


def he_normal(shape: Shape, *, seed: int = 0, dtype: DType | str = "float32") -> np.ndarray:
    """N(0, 2 / fan_in)."""
    fan_in, _ = _fans(shape)
    return normal(shape, 0.0, math.sqrt(2.0 / fan_in), seed=seed, dtype=dtype)


xavier_uniform = glorot_uniform
xavier_normal = glorot_normal
kaiming_uniform = he_uniform
kaiming_normal = he_normal
