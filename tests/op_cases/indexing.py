"""Op-table rows for the indexing family: basic indexing, gathers, scatter-adds, one_hot.

The numpy side uses numpy's own indexing (basic and fancy); the scatter-adds are checked
against a contraction with a one-hot matrix (independent of the np.add.at the reference
uses). Index args include negative values and duplicates.
"""

from __future__ import annotations

import numpy as np

import graphc as gc
from graphc.ops import gather
from tests.op_table import Arg, OpCase

X3 = (4, 5, 6)
_GETITEM_OPS = ("slice", "reverse", "reshape")


def _gi(id_: str, index: object, shape: tuple[int, ...] = X3, **kw) -> OpCase:
    """A getitem row: the same index applied to a node (graphc) and to an array (numpy)."""
    return OpCase(f"getitem:{id_}", _GETITEM_OPS, lambda x: x[index], lambda x: x[index],
                  (Arg(shape),), **kw)


def _onehot(i: np.ndarray, depth: int) -> np.ndarray:
    """(..., depth) indicator of i (negatives wrapped like numpy)."""
    return (np.mod(i, depth)[..., None] == np.arange(depth)).astype(np.float64)


def _sum_rows(x: gc.Node) -> gc.Node:
    """Iterating a node yields x[0], x[1], ... (Node.__iter__ goes through getitem)."""
    first, *rest = list(x)
    for row in rest:
        first = first + row
    return first


def _along_fancy(x: np.ndarray, i: np.ndarray, axis: int) -> np.ndarray:
    """x gathered along `axis` with numpy fancy indexing and broadcasting aranges."""
    index = [np.arange(d).reshape([-1 if k == j else 1 for k in range(x.ndim)])
             for j, d in enumerate(x.shape)]
    index[axis] = i
    return x[tuple(index)]


CASES: list[OpCase] = [
    _gi("int", 1),
    _gi("negative_int", (-1, -5)),
    _gi("scalar", (3, 0, -6)),
    _gi("slices_newaxis", (slice(1, None), slice(None, None, -2), None)),
    _gi("ellipsis", (Ellipsis, 2)),
    _gi("ellipsis_middle", (None, slice(1, 3), Ellipsis, slice(None, None, -1))),
    _gi("negative_steps", (slice(None, None, -3), -2, slice(4, 0, -2))),
    _gi("negative_step_bounds", (slice(-1, -4, -1), slice(-2, None, -2))),
    _gi("step_positive", (slice(0, 4, 3), slice(None), slice(1, 6, 2))),
    _gi("clamped", (slice(-10, 10), slice(3, 99, 2))),
    _gi("empty", (slice(2, 2),), grad=False),
    _gi("newaxis_only", (None, Ellipsis, None)),
    _gi("vector", slice(None, None, -1), shape=(7,)),
    OpCase("getitem:lambda", _GETITEM_OPS, lambda x: x[1:, ::-2, None],
           lambda x: x[1:, ::-2, None], (Arg(X3),)),
    OpCase("getitem:iterate", _GETITEM_OPS, _sum_rows,
           lambda x: x.sum(axis=0), (Arg((3, 4)),)),
    # take
    OpCase("take:axis0", ("take",), lambda x, i: gc.take(x, i, axis=0),
           lambda x, i: x[i], (Arg((5, 4)), Arg((3, 2), "int", -5, 5))),
    OpCase("take:axis1_duplicates", ("take",), lambda x, i: gc.take(x, i, axis=1),
           lambda x, i: x[:, i], (Arg((3, 4, 2)), Arg((8,), "int", -4, 3))),
    OpCase("take:last_axis_int64", ("take",), lambda x, i: gc.take(x, i, axis=-1),
           lambda x, i: x[..., i], (Arg((2, 3, 4)), Arg((2, 3), "int", -4, 4, "int64"))),
    OpCase("take:scalar_index", ("take",), lambda x: gc.take(x, -2, axis=1),
           lambda x: x[:, -2], (Arg((3, 4)),)),
    OpCase("take:constant_indices", ("take",),
           lambda x: gc.take(x, np.array([[2, 0], [2, -3]]), axis=0),
           lambda x: np.stack([np.stack([x[2], x[0]]), np.stack([x[2], x[0]])]),
           (Arg((3, 4)),)),
    OpCase("take:int_values", ("take",), lambda x, i: gc.take(x, i, axis=0),
           lambda x, i: x[i], (Arg((5, 3), "int", -9, 9), Arg((4,), "int", 0, 5)), grad=False),
    # take_along_axis
    OpCase("take_along_axis:axis1", ("take_along_axis",),
           lambda x, i: gc.take_along_axis(x, i, axis=1),
           lambda x, i: x[np.arange(3)[:, None], i],
           (Arg((3, 5)), Arg((3, 4), "int", -5, 5))),
    OpCase("take_along_axis:axis0", ("take_along_axis",),
           lambda x, i: gc.take_along_axis(x, i, axis=0),
           lambda x, i: x[i, np.arange(3)], (Arg((4, 3)), Arg((6, 3), "int", -4, 4))),
    OpCase("take_along_axis:broadcast_indices", ("take_along_axis",),
           lambda x, i: gc.take_along_axis(x, i, axis=-1),
           lambda x, i: _along_fancy(x, i, 2), (Arg((2, 3, 5)), Arg((2, 1, 4), "int", 0, 5))),
    OpCase("take_along_axis:broadcast_x", ("take_along_axis",),
           lambda x, i: gc.take_along_axis(x, i, axis=1),
           lambda x, i: x[np.zeros((3, 1), np.int64), i], (Arg((1, 5)), Arg((3, 2), "int", 0, 5))),
    OpCase("take_along_axis:argmax_pick", ("take_along_axis",),
           lambda x, i: gc.take_along_axis(x, i, axis=1),
           lambda x, i: x[np.arange(4), i[:, 0]][:, None],
           (Arg((4, 6)), Arg((4, 1), "int", 0, 6, "int64"))),
    # the scatter-adds (adjoints of the gathers), compared with one-hot contractions
    OpCase("take_grad", ("take_grad",), lambda g, i: gather.take_grad(g, i, axis=1, size=4),
           lambda g, i: np.einsum("aib,ik->akb", g, _onehot(i, 4)),
           (Arg((3, 6, 2)), Arg((6,), "int", -4, 4))),
    OpCase("take_grad:2d_indices", ("take_grad",),
           lambda g, i: gather.take_grad(g, i, axis=0, size=3),
           lambda g, i: np.einsum("ijb,ijk->kb", g, _onehot(i, 3)),
           (Arg((2, 4, 5)), Arg((2, 4), "int", -3, 3, "int64"))),
    OpCase("take_along_axis_grad", ("take_along_axis_grad",),
           lambda g, i: gather.take_along_axis_grad(g, i, axis=1, shape=(3, 5)),
           lambda g, i: np.einsum("ij,ijk->ik", g, _onehot(i, 5)),
           (Arg((3, 4)), Arg((3, 4), "int", -5, 5))),
    OpCase("take_along_axis_grad:broadcast", ("take_along_axis_grad",),
           lambda g, i: gather.take_along_axis_grad(g, i, axis=1, shape=(1, 5)),
           lambda g, i: np.einsum("ij,ijk->k", g, _onehot(i, 5))[None],
           (Arg((3, 2)), Arg((3, 2), "int", 0, 5))),
    # one_hot (non-differentiable composite)
    OpCase("one_hot", ("reshape", "equal", "cast"), lambda i: gc.one_hot(i, 5),
           lambda i: (i[..., None] == np.arange(5)).astype(np.float32),
           (Arg((3, 4), "int", -1, 6),), grad=False),
    OpCase("one_hot:axis0_int64", ("reshape", "equal", "cast"),
           lambda i: gc.one_hot(i, 3, dtype=gc.int64, axis=0),
           lambda i: np.stack([(i == k) for k in range(3)]).astype(np.int64),
           (Arg((4,), "int", 0, 3),), grad=False),
    OpCase("one_hot:middle_axis", ("reshape", "equal", "cast"),
           lambda x, i: gc.one_hot(i, 4, dtype=x.dtype, axis=1) * x,
           lambda x, i: np.moveaxis(np.eye(4)[i], -1, 1) * x,
           (Arg((2, 4, 3)), Arg((2, 3), "int", 0, 4))),
]
