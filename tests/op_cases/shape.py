"""Op-table rows for the shape family (numpy expressions written independently)."""

from __future__ import annotations

import numpy as np

import graphc as gc
from graphc.ops import slicing
from tests.op_table import Arg, OpCase


def _s(id: str, build, ref, *shapes, kind: str = "normal", grad: bool = True, ops=None,
       **kw) -> OpCase:
    return OpCase(id, ops or (id.split(":")[0],), build, ref,
                  tuple(Arg(s, kind) for s in shapes), grad=grad, **kw)


def _interior(x: np.ndarray) -> np.ndarray:
    """Rows 1+2 zero rows before, 1 between, 0 after; cols 0 before, 2 between, 1 after."""
    out = np.full((2 + 3 + 2 * 1, 1 + 4 + 3 * 2), 0.5)
    for i in range(3):
        for j in range(4):
            out[2 + 2 * i, 3 * j] = x[i, j]
    return out


CASES: list[OpCase] = [
    _s("reshape", lambda x: gc.reshape(x, (4, -1, 2)), lambda x: x.ravel().reshape(4, 3, 2),
       (2, 3, 4)),
    _s("reshape:scalar_to_11", lambda x: gc.reshape(x, (1, 1)), lambda x: np.array([[x]]), ()),
    _s("reshape:to_scalar", lambda x: gc.reshape(x, ()), lambda x: x.ravel()[0], (1, 1)),
    _s("transpose", gc.transpose, lambda x: np.einsum("ijk->kji", x), (2, 3, 4)),
    _s("transpose:perm", lambda x: gc.transpose(x, (-2, 0, -1)),
       lambda x: np.einsum("ijk->jik", x), (2, 3, 4)),
    _s("transpose:method", lambda x: x.T, lambda x: np.einsum("ij->ji", x), (2, 3)),
    _s("broadcast_to", lambda x: gc.broadcast_to(x, (2, 3, 4)),
       lambda x: x + np.zeros((2, 3, 4)), (3, 1)),
    _s("broadcast_to:scalar", lambda x: gc.broadcast_to(x, (2, 2)),
       lambda x: np.full((2, 2), x), ()),
    _s("concat", lambda a, b, c: gc.concat([a, b, c], axis=1),
       lambda a, b, c: np.block([a, b, c]), (2, 1), (2, 3), (2, 2)),
    _s("concat:neg_axis", lambda a, b: gc.concat([a, b], axis=-2),
       lambda a, b: np.array([np.vstack([a[i], b[i]]) for i in range(2)]),
       (2, 2, 2), (2, 2, 2)),
    _s("concat:single", lambda a: gc.concat([a]), lambda a: a + 0, (3,)),
    _s("slice", lambda x: gc.slice(x, [1, 0], [3, -1]), lambda x: x[1:3, 0:4], (4, 5)),
    _s("slice:strided", lambda x: gc.slice(x, [None, 1], [None, None], [2, 3]),
       lambda x: x[[0, 2, 4]][:, [1, 4]], (5, 6)),
    _s("slice:clamped_axes", lambda x: gc.slice(x, [-100, 2], [100, 3], axes=[2, 0]),
       lambda x: x[2:3, :, :], (4, 2, 3)),
    _s("slice:negative_step", lambda x: gc.slice(x, [-2], [None], [-2], axes=[1]),
       lambda x: x[:, [3, 1]], (2, 5), ops=("slice", "reverse")),
    _s("slice:empty", lambda x: gc.slice(x, [3], [1]), lambda x: np.zeros((0, 3)), (4, 3)),
    _s("reverse", lambda x: gc.reverse(x, (0, -1)), lambda x: x[::-1, :, ::-1], (2, 3, 4)),
    _s("reverse:all", gc.reverse, lambda x: x.ravel()[::-1].reshape(3, 2), (3, 2)),
    _s("pad", lambda x: gc.pad(x, 1), lambda x: np.block([
        [np.zeros((1, 5))], [np.zeros((2, 1)), x, np.zeros((2, 1))], [np.zeros((1, 5))]]),
       (2, 3)),
    _s("pad:pairs_value", lambda x: gc.pad(x, [(0, 2), (1, 0)], value=-1.5),
       lambda x: np.vstack([np.hstack([np.full((2, 1), -1.5), x]), np.full((2, 4), -1.5)]),
       (2, 3)),
    _s("pad:interior", lambda x: slicing._pad(x, ((2, 0, 1), (0, 1, 2)), 0.5),
       _interior, (3, 4)),
]

CASES += [
    _s("expand_dims", lambda x: gc.expand_dims(x, (0, -1)), lambda x: x[None, :, :, None],
       (2, 3), ops=("reshape",)),
    _s("squeeze", gc.squeeze, lambda x: x.reshape(2, 3), (1, 2, 1, 3, 1), ops=("reshape",)),
    _s("squeeze:axis", lambda x: gc.squeeze(x, -1), lambda x: x[..., 0], (1, 2, 1),
       ops=("reshape",)),
    _s("flatten", gc.flatten, lambda x: x.reshape(2, 12), (2, 3, 4), ops=("reshape",)),
    _s("flatten:start0", lambda x: gc.flatten(x, 0), np.ravel, (2, 3, 4), ops=("reshape",)),
    _s("stack", lambda a, b: gc.stack([a, b], axis=1),
       lambda a, b: np.concatenate([a[:, None], b[:, None]], axis=1), (3, 2), (3, 2),
       ops=("reshape", "concat")),
    _s("split", lambda x: gc.split(x, 3, axis=1)[1], lambda x: x[:, 2:4], (2, 6),
       ops=("slice",)),
    _s("split:indices", lambda x: gc.concat(gc.split(x, [1, 3])[::-1]),
       lambda x: np.concatenate([x[3:], x[1:3], x[:1]]), (5, 2), ops=("slice", "concat")),
]
