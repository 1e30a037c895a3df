"""ONNX's Det: the determinant of (batches of) square matrices by Gaussian elimination with
partial pivoting, unrolled over the static size n (n steps of a pivot search, a row swap
as a gather, and one rank-1 elimination update); the determinant is the product of the
pivots, its sign flipped per swap. A zero pivot column gives 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from graphc import builder as gb
from graphc.ir import Node
from graphc.onnx.convert import Context, Value, rule
from graphc.ops import elementwise as ew
from graphc.ops import gather, layout, reduce, slicing

Inputs = list[Value | None]


def _det(a: Node) -> Node:
    """det of a (..., n, n), float."""
    n = a.shape[-1]
    batch = list(a.shape[:-2])
    rank = a.ndim
    rows = gb.constant(np.arange(n, dtype=np.int64))
    det: Node | None = None
    for k in range(n):
        column = layout.squeeze(slicing.slice(a, [k, k], [n, k + 1], axes=[rank - 2, rank - 1]),
                                rank - 1)  # (..., n - k)
        pivot_row = ew.add(reduce.argmax(ew.abs(column), -1, keepdims=True), k)  # (..., 1)
        if k < n - 1:  # swap rows k and pivot_row
            order = ew.where(ew.equal(rows, k), pivot_row,
                             ew.where(ew.equal(rows, pivot_row), k, rows))  # (..., n)
            a = gather.take_along_axis(a, layout.broadcast_to(
                layout.reshape(order, [*batch, n, 1]), [*batch, n, n]), rank - 2)
        row_k = slicing.slice(a, [k], [k + 1], axes=[rank - 2])  # (..., 1, n)
        pivot = layout.reshape(slicing.slice(row_k, [k], [k + 1], axes=[rank - 1]), [*batch, 1])
        swapped = ew.not_equal(pivot_row, k)
        factor = ew.where(swapped, ew.neg(pivot), pivot)
        det = factor if det is None else ew.mul(det, factor)
        if k < n - 1:
            below = gb.constant((np.arange(n) > k).astype(a.dtype.np))
            col_k = layout.squeeze(slicing.slice(a, [k], [k + 1], axes=[rank - 1]), rank - 1)
            safe = ew.where(ew.equal(pivot, 0.0), 1.0, pivot)
            f = ew.mul(ew.div(col_k, safe), below)  # (..., n): multipliers of rows below k
            f = ew.where(ew.equal(pivot, 0.0), ew.mul(f, 0.0), f)
            a = ew.sub(a, ew.mul(layout.reshape(f, [*batch, n, 1]), row_k))
    assert det is not None
    return layout.reshape(det, batch)


@rule("Det", 11)
def _det_rule(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x = ctx.node(inputs[0])
    if x.ndim < 2 or x.shape[-1] != x.shape[-2] or not x.dtype.is_float:
        raise ctx.error(f"input {x.dtype}{list(x.shape)}: expected float square matrices "
                        "(..., n, n)")
    if x.shape[-1] == 0:
        return [np.ones(x.shape[:-2], x.dtype.np)]
    return [_det(x)]
