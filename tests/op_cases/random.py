"""Op-table rows for the random family, against an independent implementation of the
documented generator (graphc/ops/random.py docstring).

The independent version works on uint64 arrays and masks to 32 bits after every step
(graphc's uses wrapping uint32 arithmetic), so a mistake in either shows up as a mismatch.
"""

from __future__ import annotations

import numpy as np

import graphc as gc
from tests.op_table import Arg, OpCase

M32 = np.uint64(0xFFFFFFFF)


def mix32(x: np.ndarray) -> np.ndarray:
    """lowbias32 on uint64 values below 2**32 (products masked back to 32 bits)."""
    x = x.astype(np.uint64)
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x7FEB352D)) & M32
    x = x ^ (x >> np.uint64(15))
    x = (x * np.uint64(0x846CA68B)) & M32
    return x ^ (x >> np.uint64(16))


def bits(counters: np.ndarray, seed: int, key: int) -> np.ndarray:
    k = np.array([key % 2**32], dtype=np.uint64)
    stream = mix32(np.uint64(seed) ^ mix32((k + np.uint64(0x632BE5AB)) & M32))
    c = counters.astype(np.uint64) & M32
    return mix32((c * np.uint64(0x9E3779B9) + stream) & M32)


def uniform(shape: tuple[int, ...], seed: int, key: int = 0, low: float = 0.0,
            high: float = 1.0) -> np.ndarray:
    """float64 values (the float32 op rounds these once)."""
    n = int(np.prod(shape))
    u = (bits(np.arange(n), seed, key) >> np.uint64(8)).astype(np.float64) / 2.0**24
    return (low + (high - low) * u).reshape(shape)


def normal(shape: tuple[int, ...], seed: int, key: int = 0, mean: float = 0.0,
           std: float = 1.0) -> np.ndarray:
    n = int(np.prod(shape))
    i = np.arange(n, dtype=np.uint64)
    h1 = bits(2 * i, seed, key)
    h2 = bits(2 * i + 1, seed, key)
    u1 = ((h1 >> np.uint64(8)) + np.uint64(1)).astype(np.float64) / 2.0**24
    u2 = (h2 >> np.uint64(8)).astype(np.float64) / 2.0**24
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return (mean + std * z).reshape(shape)


def _key(k: np.ndarray) -> int:
    return int(np.asarray(k).item())


CASES: list[OpCase] = [
    OpCase("random_uniform:f32", ("random_uniform",),
           lambda: gc.random_uniform((7, 9), gc.float32, seed=123, low=-2.0, high=3.0),
           lambda: uniform((7, 9), 123, 0, -2.0, 3.0), (), dtypes=("float32",), grad=False),
    OpCase("random_uniform:f64_key", ("random_uniform",),
           lambda k: gc.random_uniform((5, 6), gc.float64, seed=7, key=k),
           lambda k: uniform((5, 6), 7, _key(k)),
           (Arg((), "int", 0, 1000, dtype="int64"),), dtypes=("float64",), grad=False),
    OpCase("random_uniform:negative_key", ("random_uniform",),
           lambda k: gc.random_uniform((3, 4), gc.float32, seed=2**32 - 1, key=k),
           lambda k: uniform((3, 4), 2**32 - 1, _key(k)),
           (Arg((), "int", -1000, -1, dtype="int32"),), dtypes=("float32",), grad=False),
    OpCase("random_normal:f32", ("random_normal",),
           lambda: gc.random_normal((8, 5), gc.float32, seed=99, mean=1.5, std=0.5),
           lambda: normal((8, 5), 99, 0, 1.5, 0.5), (), dtypes=("float32",), grad=False),
    OpCase("random_normal:f64_key", ("random_normal",),
           lambda k: gc.random_normal((4, 3, 2), gc.float64, seed=5, key=k),
           lambda k: normal((4, 3, 2), 5, _key(k)),
           (Arg((), "int", 0, 10**6, dtype="int32"),), dtypes=("float64",), grad=False),
]
