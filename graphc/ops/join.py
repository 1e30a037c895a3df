"""Joining and splitting: the concat op, and the composites stack and split.

    concat(xs, axis)           join along an existing axis (gradient: one slice per operand)
    stack(xs, axis)            composite: expand_dims of each operand, then concat
    split(x, sections, axis)   composite: one slice per part (numpy.split)
"""

from __future__ import annotations

import builtins
import functools
import itertools
from collections.abc import Sequence

import numpy as np

from graphc.builder import Operand, apply
from graphc.errors import AttrError, ShapeError
from graphc.ir import Attrs, Node, TensorType
from graphc.ir.attrs import AttrSpec, Kind
from graphc.ir.opdef import OpDef
from graphc.ops.common import (
    as_node,
    fail,
    int_tuple,
    normalize_axis,
    resolve,
    same_dtype,
    shape_op,
)
from graphc.ops.layout import expand_dims
from graphc.ops.slicing import _slice, slice

__all__ = ["concat", "split", "stack"]

OPS: list[OpDef] = []
_op = functools.partial(shape_op, OPS)


# --- concat -------------------------------------------------------------------------------

def _concat_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    first = types[0]
    if first.ndim == 0:
        raise ShapeError(f"operand 0: cannot concatenate scalars ({first}); use gc.stack")
    axis = attrs["axis"]
    if normalize_axis(axis, first.ndim) != axis:
        raise AttrError(f"axis attribute {axis} must be a non-negative axis of {first}")
    dtype = same_dtype(types)
    pattern = ",".join("*" if i == axis else str(d) for i, d in enumerate(first.shape))
    for i, t in enumerate(types[1:], start=1):
        if t.ndim != first.ndim or any(
                a != b for k, (a, b) in enumerate(zip(t.shape, first.shape)) if k != axis):
            raise ShapeError(f"operand {i}: expected {dtype.short}[{pattern}] (the shape of "
                             f"operand 0, {first}, except on axis {axis}), got {t}")
    total = builtins.sum(t.shape[axis] for t in types)
    return TensorType((*first.shape[:axis], total, *first.shape[axis + 1:]), dtype)


def _concat_grad(n: Node, g: Node) -> list[Node | None]:
    axis = n.attrs["axis"]
    grads: list[Node | None] = []
    offset = 0
    for x in n.inputs:
        starts = tuple(offset if i == axis else 0 for i in range(g.ndim))
        stops = tuple(offset + x.shape[axis] if i == axis else d for i, d in enumerate(g.shape))
        grads.append(_slice(g, starts, stops, (1,) * g.ndim))
        offset += x.shape[axis]
    return grads


CONCAT = _op("concat", None, _concat_infer,
             lambda a, attrs: np.concatenate(a, axis=attrs["axis"]), _concat_grad,
             doc="join operands along `axis` (same dtype, same shape elsewhere)",
             attrs=(AttrSpec("axis", Kind.INT, low=0),))


def concat(xs: Sequence[Operand], axis: int = 0, name: str | None = None) -> Node:
    """Join `xs` along an existing `axis` (numpy.concatenate)."""
    if isinstance(xs, Node) or not isinstance(xs, Sequence) or not xs:
        fail("concat", AttrError(f"xs must be a non-empty list of nodes, got {xs!r}"))
    nodes = [as_node(x) for x in xs]
    ax = resolve("concat", lambda: normalize_axis(axis, builtins.max(nodes[0].ndim, 1)))
    return apply(CONCAT, nodes, {"axis": ax}, name=name)


# --- composites ---------------------------------------------------------------------------

def stack(xs: Sequence[Operand], axis: int = 0, name: str | None = None) -> Node:
    """Join same-shape `xs` along a new `axis` (numpy.stack): expand_dims + concat."""
    if isinstance(xs, Node) or not isinstance(xs, Sequence) or not xs:
        fail("stack", AttrError(f"xs must be a non-empty list of nodes, got {xs!r}"))
    nodes = [as_node(x) for x in xs]
    first = nodes[0].type
    for i, n in enumerate(nodes[1:], start=1):
        if n.shape != first.shape:
            fail("stack", ShapeError(
                f"operand {i}: expected shape {first.shape} like operand 0 ({first}), "
                f"got {n.type}"))
    ax = resolve("stack", lambda: normalize_axis(axis, first.ndim + 1))
    return concat([expand_dims(n, ax) for n in nodes], axis=ax, name=name)


def split(x: Operand, indices_or_sections: int | Sequence[int], axis: int = 0) -> list[Node]:
    """numpy.split: N equal parts (an error if the axis does not divide), or cut at indices."""
    x = as_node(x)
    ax = resolve("split", lambda: normalize_axis(axis, x.ndim))
    d = x.shape[ax]
    if isinstance(indices_or_sections, (int, np.integer)):
        sections = int(indices_or_sections)
        if sections <= 0 or d % sections:
            fail("split", ShapeError(
                f"x: axis {ax} of {x} (size {d}) does not split into {sections} equal parts"))
        cuts = [d // sections * k for k in range(1, sections)]
    else:
        cuts = list(resolve("split", lambda: int_tuple(indices_or_sections,
                                                        "indices_or_sections")))
    bounds = [None, *cuts, None]
    return [slice(x, [lo], [hi], axes=[ax]) for lo, hi in itertools.pairwise(bounds)]
