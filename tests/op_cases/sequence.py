"""Op-table rows for the sequence family: iota (and arange, triu, tril built on it), the
runtime-start block ops, and rope. The numpy sides are written independently: np.arange /
np.triu / np.tril, plain slicing and assignment, and rope as a rotation of complex numbers
(pair (a, b) is a + ib, multiplied by e^{i·angle})."""

from __future__ import annotations

import numpy as np

import graphc as gc
from tests.op_table import Arg, OpCase

X = (4, 6, 5)
BIG = 260  # 260 * 260 > CompileOptions.fold_max_elements: the mask is computed, not folded


def _iota(shape: tuple[int, ...], axis: int) -> np.ndarray:
    return np.indices(shape)[axis]


def _updated(x: np.ndarray, u: np.ndarray, at: tuple[int, ...]) -> np.ndarray:
    out = x.copy()
    out[tuple(slice(s, s + n) for s, n in zip(at, u.shape))] = u
    return out


def _rope(x: np.ndarray, positions: np.ndarray | None = None, interleaved: bool = False,
          base: float = 10000.0) -> np.ndarray:
    """Rotary embedding: pair i rotated by p / base^(2i/D), as a complex product."""
    t, d = x.shape[-2:]
    p = np.arange(t) if positions is None else np.broadcast_to(positions, x.shape[:-1])
    angle = p[..., None] / base ** (np.arange(d // 2) * 2 / d)
    if interleaved:
        z = (x[..., 0::2] + 1j * x[..., 1::2]) * np.exp(1j * angle)
        return np.stack([z.real, z.imag], axis=-1).reshape(x.shape)
    z = (x[..., :d // 2] + 1j * x[..., d // 2:]) * np.exp(1j * angle)
    return np.concatenate([z.real, z.imag], axis=-1)


def _ds(x: gc.Node, a: gc.Node, b: gc.Node) -> gc.Node:
    return gc.dynamic_slice(x, (a, 1, b), (2, 3, 2))


def _dus(x: gc.Node, u: gc.Node, a: gc.Node, p: gc.Node) -> gc.Node:
    return gc.dynamic_update_slice(x, u, (a, p, 0))


CASES: list[OpCase] = [
    OpCase("iota", ("iota",), lambda: gc.iota((3, 4), 1),
           lambda: np.broadcast_to(np.arange(4), (3, 4)), (), dtypes=("float32",), grad=False),
    OpCase("iota:float_plus_x", ("iota", "add"), lambda x: x + gc.iota(x.shape, 1, x.dtype),
           lambda x: x + _iota(x.shape, 1), (Arg((4, 3, 2)),)),
    OpCase("iota:causal_mask_computed", ("iota", "greater_equal", "where"),
           lambda x: gc.where(gc.iota(x.shape, 0, "int32") >= gc.iota(x.shape, 1, "int32"),
                              x, 0.0),
           lambda x: np.tril(x), (Arg((BIG, BIG)),), grad=False),
    OpCase("arange:int", ("iota", "mul", "add"), lambda: gc.arange(2, 11, 3),
           lambda: np.arange(2, 11, 3), (), dtypes=("float32",), grad=False),
    OpCase("arange:float_times_x", ("iota", "mul", "add"),
           lambda x: x * gc.arange(0.5, 2.0, 0.25, dtype=x.dtype),
           lambda x: x * np.arange(0.5, 2.0, 0.25), (Arg((3, 6)),)),
    OpCase("arange:negative_step", ("iota", "mul", "add"), lambda: gc.arange(5, -4, -2),
           lambda: np.arange(5, -4, -2), (), dtypes=("float32",), grad=False),
    OpCase("triu", ("iota", "where"), gc.triu, np.triu, (Arg((2, 4, 5)),)),
    OpCase("triu:k1", ("iota", "where"), lambda x: gc.triu(x, 1), lambda x: np.triu(x, 1),
           (Arg((4, 5)),)),
    OpCase("tril", ("iota", "where"), gc.tril, np.tril, (Arg((2, 5, 4)),)),
    OpCase("tril:k-2", ("iota", "where"), lambda x: gc.tril(x, -2),
           lambda x: np.tril(x, -2), (Arg((3, 5, 4)),)),
    OpCase("tril:computed", ("iota", "where"), lambda x: gc.tril(x, 3),
           lambda x: np.tril(x, 3), (Arg((2, BIG, BIG)),), grad=False),
    OpCase("dynamic_slice", ("dynamic_slice",), _ds,
           lambda x, a, b: x[a:a + 2, 1:4, b:b + 2],
           (Arg(X), Arg((), "int", 0, 3, "int64"), Arg((), "int", 0, 4, "int32"))),
    OpCase("dynamic_slice:vector_start", ("dynamic_slice",),
           lambda x, s: gc.dynamic_slice(x, s, (3, 4, 5)),
           lambda x, s: x[s[0]:s[0] + 3, s[1]:s[1] + 4, s[2]:s[2] + 5],
           (Arg(X), Arg((3,), "int", 0, 1, "int32"))),
    OpCase("dynamic_update_slice", ("dynamic_update_slice", "dynamic_slice"), _dus,
           lambda x, u, a, p: _updated(x, u, (a, p, 0)),
           (Arg(X), Arg((2, 1, 5)), Arg((), "int", 0, 3, "int64"),
            Arg((), "int", 0, 6, "int64"))),
    OpCase("dynamic_update_slice:vector_start", ("dynamic_update_slice", "dynamic_slice"),
           lambda x, u, s: gc.dynamic_update_slice(x, u, s),
           lambda x, u, s: _updated(x, u, tuple(s)),
           (Arg(X), Arg((3, 2, 4)), Arg((3,), "int", 0, 2, "int32"))),
    OpCase("rope", ("sin", "cos", "concat"), gc.rope, _rope, (Arg((2, 3, 5, 8)),),
           rtol32=1e-5, atol32=1e-5),
    OpCase("rope:interleaved", ("sin", "cos", "concat"),
           lambda x: gc.rope(x, interleaved=True), lambda x: _rope(x, interleaved=True),
           (Arg((3, 7, 6)),), rtol32=1e-5, atol32=1e-5),
    OpCase("rope:positions", ("sin", "cos", "concat", "cast"),
           lambda x, p: gc.rope(x, p, base=500.0), lambda x, p: _rope(x, p, base=500.0),
           (Arg((2, 4, 3, 8)), Arg((2, 1, 3), "int", 0, 100, "int64")),
           rtol32=1e-4, atol32=1e-5),
    OpCase("rope:decode_step", ("sin", "cos", "concat", "cast"),
           lambda x, p: gc.rope(x, p, interleaved=True),
           lambda x, p: _rope(x, p, interleaved=True),
           (Arg((2, 4, 1, 6)), Arg((), "int", 0, 50, "int32")), rtol32=1e-4, atol32=1e-5),
]
