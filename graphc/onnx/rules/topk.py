"""ONNX's TopK as k rounds of a max (or min) reduction, unrolled (k must be known at import).

Round r finds the extreme among the elements not yet taken (taken ones are replaced by
the type's opposite extreme), then the first position holding it among those not taken
(an argmax over the boolean "hit" mask) and marks that position taken. So equal values come
out in index order, as ONNX specifies, even when they equal the replacement value. Outputs
are always sorted (`sorted=0` leaves the order open). NaN is not ordered. Cost: k passes
over the axis, fine for the small k of top-k selection.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from graphc import builder as gb
from graphc.ir import Node
from graphc.onnx.convert import Context, Value, axis_of, rule
from graphc.ops import elementwise as ew
from graphc.ops import join, reduce

Inputs = list[Value | None]


def _top_k(x: Node, k: int, axis: int, largest: bool) -> tuple[Node, Node]:
    """(values, int64 indices) of the k largest (or smallest) along `axis`."""
    if x.dtype.is_float:
        fill = -np.inf if largest else np.inf
    else:
        info = np.iinfo(x.dtype.np)
        fill = int(info.min if largest else info.max)
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    iota = gb.constant(np.arange(x.shape[axis], dtype=np.int64).reshape(shape))
    extreme = reduce.max if largest else reduce.min
    taken: Node | None = None
    values, indices = [], []
    for _ in range(k):
        if taken is None:
            best = extreme(x, axis, keepdims=True)
            hit = ew.equal(x, best)
        else:
            best = extreme(ew.where(taken, fill, x), axis, keepdims=True)
            hit = ew.logical_and(ew.equal(x, best), ew.logical_not(taken))
        index = reduce.argmax(ew.cast(hit, "int32"), axis, keepdims=True)  # the first hit
        chosen = ew.equal(iota, index)
        taken = chosen if taken is None else ew.logical_or(taken, chosen)
        values.append(best)
        indices.append(index)
    if k == 1:
        return values[0], indices[0]
    return join.concat(values, axis), join.concat(indices, axis)


@rule("TopK", 1)
def _topk(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """TopK-1 takes k as an attribute, TopK-10 on as an input; `largest` and `sorted` from
    opset 11 (before: largest, sorted)."""
    x = ctx.node(inputs[0])
    if x.ndim == 0:
        raise ctx.error("input must have rank >= 1")
    if len(inputs) > 1 and inputs[1] is not None:
        k = int(ctx.need_known(inputs[1], "K").reshape(-1)[0])
    elif "k" in attrs:
        k = int(attrs["k"])
    else:
        raise ctx.error("K is missing (an input from opset 10, an attribute before)")
    axis = axis_of(int(attrs.get("axis", -1)), x.ndim, ctx)
    if not 0 <= k <= x.shape[axis]:
        raise ctx.error(f"k={k} is outside 0..{x.shape[axis]} (the size of axis {axis})")
    if k == 0:
        raise ctx.error("k=0 gives empty outputs, which graphc does not build")
    largest = bool(int(attrs.get("largest", 1)))
    values, indices = _top_k(x, k, axis, largest)
    return [values, indices]
