"""Layout ops: reshape, transpose, broadcast_to, and the reshape composites.

    reshape(x, shape)        same elements in row-major order (one -1 is inferred)
    transpose(x, perm)       permute axes (None reverses them)
    broadcast_to(x, shape)   numpy broadcasting (`Fusion.BROADCAST`; reshape is a `VIEW`,
                             transpose `INDEXED`)
    expand_dims, squeeze, flatten   composites: one reshape node each
"""

from __future__ import annotations

import builtins
import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from graphc.builder import Operand, apply
from graphc.errors import AttrError, ShapeError
from graphc.ir import Attrs, Node, TensorType
from graphc.ir.attrs import AttrSpec, Kind
from graphc.ir.opdef import Fusion, OpDef
from graphc.ops import elementwise as _ew
from graphc.ops.common import as_node, int_tuple, normalize_axes, normalize_axis, resolve, shape_op

__all__ = ["broadcast_to", "expand_dims", "flatten", "reshape", "squeeze", "transpose"]

OPS: list[OpDef] = []
_op = functools.partial(shape_op, OPS)


# --- reshape ------------------------------------------------------------------------------

def _reshape_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    x = types[0]
    shape = int_tuple(attrs["shape"], "shape")
    if any(d < 0 for d in shape):
        raise AttrError(f"shape {shape} has a negative dimension")
    if math.prod(shape) != x.size:
        raise ShapeError(f"x: cannot reshape {x} ({x.size} elements) to shape {shape} "
                         f"({math.prod(shape)} elements)")
    return TensorType(shape, x.dtype)


RESHAPE = _op("reshape", 1, _reshape_infer,
              lambda a, attrs: np.reshape(a[0], attrs["shape"]),
              lambda n, g: [reshape(g, n.inputs[0].shape)], Fusion.VIEW,
              doc="same elements in row-major order, new shape",
              attrs=(AttrSpec("shape", Kind.INTS, low=0),))


def _resolve_shape(x: TensorType, shape: Any) -> tuple[int, ...]:
    dims = int_tuple(shape, "shape")
    if builtins.sum(d == -1 for d in dims) > 1 or any(d < -1 for d in dims):
        raise AttrError(f"shape {dims}: dimensions must be >= 0, with at most one -1")
    if -1 in dims:
        known = math.prod(d for d in dims if d != -1)
        if known == 0 or x.size % known:
            raise ShapeError(f"x: cannot reshape {x} ({x.size} elements) to shape {dims}: "
                             f"the -1 cannot be resolved")
        dims = tuple(x.size // known if d == -1 else d for d in dims)
    return dims


def reshape(x: Operand, shape: Sequence[int] | int, name: str | None = None) -> Node:
    """`x` with a new shape of the same size; one dimension may be -1 (inferred)."""
    x = as_node(x)
    dims = resolve("reshape", lambda: _resolve_shape(x.type, shape))
    return apply(RESHAPE, [x], {"shape": dims}, name=name)


# --- transpose ----------------------------------------------------------------------------

def _transpose_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    x = types[0]
    perm = int_tuple(attrs["perm"], "perm")
    if sorted(perm) != list(range(x.ndim)):
        raise AttrError(f"perm {perm} is not a permutation of the {x.ndim} axes of x {x}")
    return TensorType(tuple(x.shape[p] for p in perm), x.dtype)


TRANSPOSE = _op("transpose", 1, _transpose_infer,
                lambda a, attrs: np.transpose(a[0], attrs["perm"]),
                lambda n, g: [transpose(g, tuple(int(i) for i in np.argsort(n.attrs["perm"])))],
                doc="permute axes: out.shape[i] = x.shape[perm[i]]",
                attrs=(AttrSpec("perm", Kind.INTS, low=0),))


def transpose(x: Operand, perm: Sequence[int] | None = None, name: str | None = None) -> Node:
    """Permute the axes of `x` (numpy semantics); `perm` None reverses them."""
    x = as_node(x)
    if perm is None:
        axes = tuple(reversed(range(x.ndim)))
    else:
        axes = resolve("transpose", lambda: tuple(
            normalize_axis(p, x.ndim, "perm entry") for p in int_tuple(perm, "perm")))
    return apply(TRANSPOSE, [x], {"perm": axes}, name=name)


# --- broadcast_to -------------------------------------------------------------------------

def _broadcast_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    x = types[0]
    shape = int_tuple(attrs["shape"], "shape")
    lead = len(shape) - x.ndim
    if any(d < 0 for d in shape) or lead < 0 or any(
            d not in (1, s) for d, s in zip(x.shape, shape[lead:])):
        raise ShapeError(f"x: cannot broadcast {x} to shape {shape} (numpy rules: trailing "
                         "dimensions must be equal or 1 in x)")
    return TensorType(shape, x.dtype)


BROADCAST_TO = _op("broadcast_to", 1, _broadcast_infer,
                   lambda a, attrs: np.broadcast_to(a[0], attrs["shape"]).copy(),
                   lambda n, g: [_ew.unbroadcast(g, n.inputs[0].shape)], Fusion.BROADCAST,
                   doc="repeat size-1 and missing leading axes to `shape` (numpy rules)",
                   attrs=(AttrSpec("shape", Kind.INTS, low=0),))


def broadcast_to(x: Operand, shape: Sequence[int] | int, name: str | None = None) -> Node:
    """`x` broadcast to `shape` by numpy rules."""
    x = as_node(x)
    dims = resolve("broadcast_to", lambda: int_tuple(shape, "shape"))
    return apply(BROADCAST_TO, [x], {"shape": dims}, name=name)


# --- composites ---------------------------------------------------------------------------

def expand_dims(x: Operand, axis: int | Sequence[int], name: str | None = None) -> Node:
    """Insert size-1 axes at `axis` (positions in the result, like numpy.expand_dims)."""
    x = as_node(x)
    axes = resolve("expand_dims", lambda: normalize_axes(
        int_tuple(axis, "axis"), x.ndim + len(int_tuple(axis, "axis"))))
    dims = iter(x.shape)
    shape = tuple(1 if i in axes else next(dims) for i in range(x.ndim + len(axes)))
    return reshape(x, shape, name=name)


def _squeeze_axes(x: TensorType, axis: Any) -> tuple[int, ...]:
    if axis is None:
        return tuple(i for i, d in enumerate(x.shape) if d == 1)
    axes = normalize_axes(int_tuple(axis, "axis"), x.ndim)
    for a in axes:
        if x.shape[a] != 1:
            raise ShapeError(f"x: cannot squeeze axis {a} of {x}: its size is not 1")
    return axes


def squeeze(x: Operand, axis: int | Sequence[int] | None = None, name: str | None = None
            ) -> Node:
    """Remove size-1 axes: all of them, or the given ones (which must have size 1)."""
    x = as_node(x)
    axes = resolve("squeeze", lambda: _squeeze_axes(x.type, axis))
    return reshape(x, tuple(d for i, d in enumerate(x.shape) if i not in axes), name=name)


def flatten(x: Operand, start_axis: int = 1, name: str | None = None) -> Node:
    """Merge the axes from `start_axis` on into one (start_axis == ndim appends a 1)."""
    x = as_node(x)
    start = resolve("flatten", lambda: start_axis if start_axis == x.ndim
                    else normalize_axis(start_axis, x.ndim, "start_axis"))
    return reshape(x, (*x.shape[:start], math.prod(x.shape[start:])), name=name)
