"""Op-table rows for the nn family: softmax, log_softmax, stop_gradient and the composite
losses and batch_norm (numpy expressions written independently, from the textbook formulas
rather than the stable forms the references use; layer_norm: `tests/op_cases/norm.py`)."""

from __future__ import annotations

import numpy as np

import graphc as gc
from tests.op_cases import random as rnd
from tests.op_table import Arg, OpCase

S = (3, 5)
EPS = 1e-5


def _lse(x: np.ndarray, axis: int) -> np.ndarray:
    return np.logaddexp.reduce(x, axis=axis, keepdims=True)


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def _xent(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """-log(softmax(x)[label]) for logits (N, C), labels (N,)."""
    p = _softmax(x)
    return -np.log(p[np.arange(len(y)), y])


def _xent_axis1(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Logits (B, C, T), labels (B, T): classes along axis 1."""
    p = _softmax(x, axis=1)
    b, _, t = x.shape
    return -np.log(p[np.arange(b)[:, None], y, np.arange(t)[None, :]])


def _bce(x: np.ndarray, z: np.ndarray) -> np.ndarray:
    s = 1.0 / (1.0 + np.exp(-x))
    return -(z * np.log(s) + (1 - z) * np.log(1 - s))


def _dropout(x: np.ndarray, rate: float, seed: int) -> np.ndarray:
    u = rnd.uniform(x.shape, seed)
    keep = u >= float(np.float32(rate))  # the op compares float32 samples with f32(rate)
    return np.where(keep, x / (1 - rate), 0.0)


def _sce(x: gc.Node, y: gc.Node) -> gc.Node:
    return gc.softmax_cross_entropy(x, y)


CASES: list[OpCase] = [
    OpCase("softmax", ("softmax",), gc.softmax, _softmax, (Arg(S),)),
    OpCase("softmax:axis1", ("softmax",), lambda x: gc.softmax(x, axis=1),
           lambda x: _softmax(x, 1), (Arg((4, 3, 2)),)),
    OpCase("softmax:large", ("softmax",), lambda x: gc.softmax(x * 300.0),
           lambda x: np.exp(300 * x - _lse(300 * x, -1)), (Arg(S),), grad=False),
    OpCase("log_softmax", ("log_softmax",), gc.log_softmax,
           lambda x: np.log(_softmax(x)), (Arg(S),)),
    OpCase("log_softmax:axis0", ("log_softmax",), lambda x: gc.log_softmax(x, axis=0),
           lambda x: np.log(_softmax(x, 0)), (Arg((4, 3)),)),
    OpCase("log_softmax:large", ("log_softmax",), lambda x: gc.log_softmax(x * 300.0),
           lambda x: 300 * x - _lse(300 * x, -1), (Arg(S),), grad=False, rtol32=1e-4),
    OpCase("stop_gradient", ("stop_gradient",), gc.stop_gradient, lambda x: x, (Arg(S),),
           grad=False),
    OpCase("softmax_cross_entropy", ("log_softmax", "take_along_axis"), _sce, _xent,
           (Arg((6, 5)), Arg((6,), "int", 0, 5))),
    OpCase("softmax_cross_entropy:axis1_int64", ("log_softmax", "take_along_axis"),
           lambda x, y: gc.softmax_cross_entropy(x, y, axis=1), _xent_axis1,
           (Arg((2, 4, 3)), Arg((2, 3), "int", 0, 4, dtype="int64"))),
    OpCase("sigmoid_binary_cross_entropy", ("softplus",), gc.sigmoid_binary_cross_entropy,
           _bce, (Arg(S), Arg(S, "unit"))),
    OpCase("sigmoid_binary_cross_entropy:large", ("softplus",),
           lambda x, z: gc.sigmoid_binary_cross_entropy(x * 50.0, z),
           lambda x, z: np.logaddexp(0, 50 * x) - 50 * x * z, (Arg(S), Arg(S, "unit")),
           grad=False),
    OpCase("mse", ("square", "mean"), gc.mse,
           lambda p, t: ((p - t) ** 2).mean(axis=(1, 2)), (Arg((4, 3, 2)), Arg((4, 3, 2)))),
    OpCase("mse:1d", ("square",), gc.mse, lambda p, t: (p - t) ** 2, (Arg((5,)), Arg((5,)))),
    # pred = target + d with |d| >= 0.3, so the |.| kink is never near.
    OpCase("mae", ("abs", "mean"), lambda d, t: gc.mae(t + d, t),
           lambda d, t: np.abs(d).mean(axis=1), (Arg((4, 6), "away0"), Arg((4, 6)))),
    OpCase("mae:1d", ("abs",), lambda d, t: gc.mae(t + d, t), lambda d, t: np.abs(d),
           (Arg((5,), "away0"), Arg((5,)))),
    OpCase("batch_norm", ("rsqrt",),
           lambda x, m, v, g, b: gc.batch_norm(x, m, v, g, b),
           lambda x, m, v, g, b: (x - m[:, None, None]) / np.sqrt(v[:, None, None] + EPS)
           * g[:, None, None] + b[:, None, None],
           (Arg((2, 3, 4, 2)), Arg((3,)), Arg((3,), "positive"), Arg((3,)), Arg((3,)))),
    OpCase("batch_norm:channels_last", ("rsqrt",),
           lambda x, m, v: gc.batch_norm(x, m, v, axis=-1, eps=0.1),
           lambda x, m, v: (x - m) / np.sqrt(v + 0.1),
           (Arg((4, 3)), Arg((3,)), Arg((3,), "positive"))),
    OpCase("dropout", ("random_uniform", "where"), lambda x: gc.dropout(x, 0.3, seed=5),
           lambda x: _dropout(x, 0.3, 5), (Arg((20, 30)),)),
]
