"""Op-table rows for control flow: scan (forward, reverse, several carries), cond (each
branch), while_loop (forward only; not compiled yet) and get, which every row reads
results through. The numpy sides are plain Python loops and `if`s."""

from __future__ import annotations

import numpy as np

import graphc as gc
from tests.op_table import Arg, OpCase

H, T = 4, 6


def _rnn_numpy(h: np.ndarray, xs: np.ndarray, w: np.ndarray) -> np.ndarray:
    ys = []
    for x in xs:
        ys.append(h * x)
        h = np.tanh(h @ w + x)
    return np.concatenate([h[None], np.stack(ys)])


def _rnn(h: gc.Node, xs: gc.Node, w: gc.Node) -> gc.Node:
    h_t, ys = gc.scan(lambda c, x: (gc.tanh(c @ w + x), c * x), h, xs)
    return gc.concat([gc.reshape(h_t, (1, H)), ys], axis=0)


def _two_carries_numpy(a: np.ndarray, b: np.ndarray, xs: np.ndarray) -> np.ndarray:
    ys = [None] * len(xs)
    for t in reversed(range(len(xs))):
        ys[t] = a - b
        a, b = a * np.sin(xs[t]) + b, b * 0.5 + xs[t]
    return np.concatenate([a[None], b[None], np.stack(ys)])


def _two_carries(a: gc.Node, b: gc.Node, xs: gc.Node) -> gc.Node:
    (a_t, b_t), ys = gc.scan(lambda c, x: ((c[0] * gc.sin(x) + c[1], c[1] * 0.5 + x),
                                           c[0] - c[1]), (a, b), xs, reverse=True)
    return gc.concat([gc.reshape(a_t, (1, H)), gc.reshape(b_t, (1, H)), ys], axis=0)


def _cond(bound: float):
    def build(x: gc.Node, y: gc.Node) -> gc.Node:
        (out,) = gc.cond(gc.sum(x) > bound, lambda a, b: (a * b + gc.exp(b),),
                         lambda a, b: (a - gc.tanh(b) * x,), x, y)
        return out

    def numpy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return x * y + np.exp(y) if x.sum() > bound else x - np.tanh(y) * x

    return build, numpy


def _while(x: gc.Node, n: gc.Node) -> gc.Node:
    def body(c):
        i, v = c
        return i + 1, v * 0.5 + gc.cast(i, v.dtype)

    _, v = gc.while_loop(lambda c: c[0] < n, body, (gc.constant(0, gc.int32), x))
    return v


def _while_numpy(x: np.ndarray, n: np.ndarray) -> np.ndarray:
    i = 0
    while i < n:
        x = x * 0.5 + i
        i += 1
    return x


_TRUE, _TRUE_NP = _cond(-1e3)
_FALSE, _FALSE_NP = _cond(1e3)

CASES = [
    OpCase("scan_rnn", ("scan", "get"), _rnn, _rnn_numpy,
           (Arg((H,)), Arg((T, H)), Arg((H, H), "unit"))),
    OpCase("scan_reverse_two_carries", ("scan", "get"), _two_carries, _two_carries_numpy,
           (Arg((H,)), Arg((H,)), Arg((T, H)))),
    OpCase("cond_true", ("cond", "get"), _TRUE, _TRUE_NP, (Arg((H,)), Arg((H,)))),
    OpCase("cond_false", ("cond", "get"), _FALSE, _FALSE_NP, (Arg((H,)), Arg((H,)))),
    OpCase("while_loop", ("while_loop", "get"), _while, _while_numpy,
           (Arg((H,)), Arg((), "int", 0, 5)), grad=False, compiled=False),
]
