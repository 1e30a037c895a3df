"""Basic indexing: `getitem`, numpy *basic* indexing (``x[1:, ::-2, None]``), the
implementation of ``node[...]``.

It is a composite of `slice`, `reverse` and `reshape` (so it defines no op and needs no
gradient rule of its own). Advanced indexing (nodes, arrays, lists, bool masks) is rejected
with an AttrError pointing to `take` / `take_along_axis`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from graphc.builder import user_location
from graphc.errors import AttrError, GraphcError, ShapeError
from graphc.ir import Node
from graphc.ops import slicing
from graphc.ops.layout import reshape

__all__ = ["getitem"]


# --- getitem: numpy basic indexing --------------------------------------------------------

def getitem(x: Node, index: Any) -> Node:
    """``x[index]`` with numpy *basic* indexing semantics (what ``node[...]`` calls).

    `index` is an int (negative counts from the end), a slice of ints with any non-zero step,
    None (np.newaxis), Ellipsis, or a tuple of these. The result is built from `slice` (with
    positive steps), `reverse` (for negative steps) and `reshape` (dropping int-indexed axes,
    inserting new ones); an identity index returns `x` itself. A node, array, list or bool
    index is advanced indexing: AttrError pointing to `take`. An int out of range is a
    ShapeError naming the axis, its size and the index.
    """
    loc = user_location()
    try:
        return _basic_index(x, index if isinstance(index, tuple) else (index,))
    except GraphcError as exc:
        raise exc.with_context(op="getitem", loc=loc) from None


def _basic_index(x: Node, items: tuple[Any, ...]) -> Node:
    for item in items:
        _check_item(item)
    if sum(item is Ellipsis for item in items) > 1:
        raise AttrError("an index can only have a single Ellipsis (...)")
    consumed = sum(item is not None and item is not Ellipsis for item in items)
    if consumed > x.ndim:
        raise ShapeError(f"too many indices for x {x.type}: {consumed} indexed, rank {x.ndim}")
    if Ellipsis not in items:
        items = (*items, Ellipsis)
    at = next(i for i, item in enumerate(items) if item is Ellipsis)
    items = (*items[:at], *(slice(None),) * (x.ndim - consumed), *items[at + 1:])

    axes: list[int] = []
    starts: list[int] = []
    stops: list[int] = []
    steps: list[int] = []
    reversed_axes: list[int] = []
    out_shape: list[int] = []
    axis = 0
    for item in items:
        if item is None:
            out_shape.append(1)
            continue
        size = x.shape[axis]
        if isinstance(item, slice):
            r = range(*item.indices(size))
            if len(r) == 0:
                start, stop, step = 0, 0, 1
            elif r.step > 0:
                start, stop, step = r.start, r[-1] + 1, r.step
            else:
                # Negative step: take the same elements with a positive step, then reverse.
                start, stop, step = r[-1], r.start + 1, -r.step
                if len(r) > 1:
                    reversed_axes.append(axis)
            out_shape.append(len(r))
        else:
            i = int(item)
            if not -size <= i < size:
                raise ShapeError(f"index {i} is out of range for axis {axis} with size {size}")
            start, stop, step = i % size, i % size + 1, 1
        if (start, stop, step) != (0, size, 1):
            axes.append(axis)
            starts.append(start)
            stops.append(stop)
            steps.append(step)
        axis += 1

    y = x
    if axes:
        y = slicing.slice(y, starts, stops, steps, axes)
    if reversed_axes:
        y = slicing.reverse(y, tuple(reversed_axes))
    if y.shape != tuple(out_shape):
        y = reshape(y, tuple(out_shape))
    return y


def _check_item(item: Any) -> None:
    """Accept the basic-index forms; name `take` for advanced ones, reject anything else."""
    if item is None or item is Ellipsis:
        return
    if isinstance(item, (bool, np.bool_)):
        raise AttrError(f"a bool index ({item!r}) is advanced (mask) indexing, which x[...] "
                        "does not support; use gc.where(...) or gc.take(x, indices, axis)")
    if isinstance(item, (int, np.integer)):
        return
    if isinstance(item, np.ndarray) and item.ndim == 0 and item.dtype.kind in "iu":
        return
    if isinstance(item, slice):
        for part in ("start", "stop", "step"):
            value = getattr(item, part)
            if value is not None and (isinstance(value, (bool, np.bool_))
                                      or not isinstance(value, (int, np.integer))):
                raise AttrError(f"slice {part} must be a Python int or None (slices are "
                                f"static), got {value!r}")
        if item.step is not None and int(item.step) == 0:
            raise AttrError("slice step cannot be zero")
        return
    if isinstance(item, (Node, np.ndarray, list, tuple)):
        what = f"node %{item.name}" if isinstance(item, Node) else type(item).__name__
        raise AttrError(f"indexing with a {what} is advanced indexing, which x[...] does not "
                        "support (only ints, slices, None and ...); use "
                        "gc.take(x, indices, axis) or gc.take_along_axis(x, indices, axis)")
    raise AttrError(f"invalid index {item!r} of type {type(item).__name__}: expected an int, "
                    "a slice, None or ...")
