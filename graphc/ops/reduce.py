"""Reductions: sum, max, min, prod, argmax, argmin, and the composites mean, var, std,
logsumexp.

Primitives carry two attributes: `axes`, a sorted tuple of non-negative axes (the builders
normalize numpy's ``axis=None | int | sequence``; an empty tuple reduces nothing), and
`keepdims`. Gradients reshape the upstream gradient to the keepdims shape and broadcast it
back over the reduced axes.
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from graphc.builder import Operand, apply
from graphc.errors import AttrError, ShapeError
from graphc.ir import Attrs, DType, Node, TensorType
from graphc.ir.attrs import AttrSpec, Kind
from graphc.ir.opdef import Anchor, Fusion, GradRule, OpDef
from graphc.ops import elementwise as _ew
from graphc.ops.common import (
    BF16,
    FLOATS,
    NUMERIC,
    as_node,
    check_dtype,
    fail,
    int_tuple,
    normalize_axes,
    reduced_shape,
    resolve,
)
from graphc.ops.layout import broadcast_to, reshape

__all__ = [
    "argmax",
    "argmin",
    "logsumexp",
    "max",
    "mean",
    "min",
    "prod",
    "std",
    "sum",
    "var",
]

OPS: list[OpDef] = []

Axis = int | Sequence[int] | None


def _axes_of(x: TensorType, attrs: Attrs) -> tuple[int, ...]:
    axes = int_tuple(attrs["axes"], "axes")
    if normalize_axes(axes, x.ndim) != axes:
        raise AttrError(f"axes attribute {axes} must be sorted non-negative axes of x {x}")
    if not isinstance(attrs["keepdims"], bool):
        raise AttrError(f"keepdims must be a bool, got {attrs['keepdims']!r}")
    return axes


def _check_nonempty(x: TensorType, axes: tuple[int, ...]) -> None:
    for a in axes:
        if x.shape[a] == 0:
            raise ShapeError(f"x: cannot reduce {x} over axis {a} of size 0 (no identity)")


def _reduce_infer(allowed: frozenset[DType], nonempty: bool) -> Callable[..., TensorType]:
    def infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
        x = types[0]
        check_dtype(x, allowed, "x")
        axes = _axes_of(x, attrs)
        if nonempty:
            _check_nonempty(x, axes)
        return TensorType(reduced_shape(x.shape, axes, attrs["keepdims"]), x.dtype)

    return infer


# Resolved axes (sorted, non-negative: the builders normalize them) and keepdims.
AXES_ATTRS = (AttrSpec("axes", Kind.INTS, low=0), AttrSpec("keepdims", Kind.BOOL))


def _reduction(name: str, fn: Callable[..., np.ndarray], grad: GradRule | None,
               nonempty: bool = False, doc: str = "",
               lowp: frozenset[DType] = frozenset()) -> OpDef:
    def reference(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
        x, axes = arrays[0], attrs["axes"]
        result = np.asarray(fn(x, axis=axes, keepdims=attrs["keepdims"]), dtype=x.dtype)
        # numpy gives 0-d inputs with keepdims a shape of (1,); the type says ().
        return result.reshape(reduced_shape(x.shape, axes, attrs["keepdims"]))

    op = OpDef(name, "reduce", 1, _reduce_infer(NUMERIC, nonempty), reference,
               Fusion.REDUCTION, grad, doc=doc, anchor=Anchor.REDUCTION, attrs=AXES_ATTRS,
               lowp=lowp)
    OPS.append(op)
    return op


# --- gradient rules -------------------------------------------------------------------------

def _keep(v: Node, n: Node) -> Node:
    """`v` (shaped like reduction `n`) reshaped to n's keepdims shape, for broadcasting."""
    shape = reduced_shape(n.inputs[0].shape, n.attrs["axes"], True)
    return v if v.shape == shape else reshape(v, shape)


def _spread(v: Node, shape: tuple[int, ...]) -> Node:
    return v if v.shape == shape else broadcast_to(v, shape)


def _sum_grad(n: Node, g: Node) -> list[Node | None]:
    return [_spread(_keep(g, n), n.inputs[0].shape)]


def _extremum_grad(n: Node, g: Node) -> list[Node | None]:
    # Tied extrema share the gradient equally (like TensorFlow), so the rule is symmetric
    # in the ties and the gradients of a tied block sum to g.
    x = n.inputs[0]
    axes = n.attrs["axes"]
    mask = _ew.cast(_ew.equal(x, _keep(n, n)), x.dtype)
    count = sum(mask, axes, keepdims=True)
    return [_spread(_ew.mul(mask, _ew.div(_keep(g, n), count)), x.shape)]


def _prod_grad(n: Node, g: Node) -> list[Node | None]:
    # d prod / d x_i is the product of the other elements. g*prod/x divides by zero, so:
    # with no zero in the group it is p/x_i (p = product of all); with exactly one zero it is
    # p' (product of the non-zero elements) at the zero and 0 elsewhere; with two or more
    # zeros it is 0 everywhere. This first derivative is exact; its own derivative
    # (grad-of-grad) is exact where the group has no zeros.
    x = n.inputs[0]
    axes = n.attrs["axes"]
    zero = _ew.equal(x, 0.0)
    zeros = sum(_ew.cast(zero, x.dtype), axes, keepdims=True)
    safe = _ew.where(zero, 1.0, x)
    p = prod(safe, axes, keepdims=True)
    local = _ew.where(_ew.equal(zeros, 0.0), _ew.div(p, safe),
                      _ew.where(_ew.logical_and(zero, _ew.equal(zeros, 1.0)), p, 0.0))
    return [_spread(_ew.mul(local, _keep(g, n)), x.shape)]


def _np_sum(x: np.ndarray, axis: tuple[int, ...], keepdims: bool) -> np.ndarray:
    return np.sum(x, axis=axis, keepdims=keepdims, dtype=x.dtype)


def _np_prod(x: np.ndarray, axis: tuple[int, ...], keepdims: bool) -> np.ndarray:
    return np.prod(x, axis=axis, keepdims=keepdims, dtype=x.dtype)


SUM = _reduction("sum", _np_sum, _sum_grad, doc="sum over axes")
# max and min of bf16 values are exact in any order; sums are not: a bf16 sum would round
# at every partial sum the column-reduction kernel keeps in its output, so bf16 sums and
# products are refused (cast to float32 first: the accurate choice anyway).
MAX = _reduction("max", np.max, _extremum_grad, nonempty=True, lowp=BF16,
                 doc="maximum over axes (ties share the gradient)")
MIN = _reduction("min", np.min, _extremum_grad, nonempty=True, lowp=BF16,
                 doc="minimum over axes (ties share the gradient)")
PROD = _reduction("prod", _np_prod, _prod_grad, doc="product over axes (zero-safe gradient)")


# --- argmax / argmin ----------------------------------------------------------------------

def _arg_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    x = types[0]
    check_dtype(x, NUMERIC, "x")
    axes = _axes_of(x, attrs)
    if len(axes) != 1 and len(axes) != x.ndim:
        raise AttrError(f"axes {axes}: expected one axis or all axes of x {x} (flattened)")
    _check_nonempty(x, axes)
    return TensorType(reduced_shape(x.shape, axes, attrs["keepdims"]), DType.int64)


def _arg_op(name: str, fn: Callable[..., np.ndarray], doc: str) -> OpDef:
    def reference(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
        x, axes = arrays[0], attrs["axes"]
        if len(axes) == x.ndim:  # over all axes: an index into the flattened x
            result = np.asarray(fn(x.reshape(-1)))
        else:
            result = np.asarray(fn(x, axis=axes[0]))
        shape = reduced_shape(x.shape, axes, attrs["keepdims"])
        return result.astype(np.int64).reshape(shape)

    op = OpDef(name, "reduce", 1, _arg_infer, reference, Fusion.REDUCTION, None, doc=doc,
               attrs=AXES_ATTRS)
    OPS.append(op)
    return op


ARGMAX = _arg_op("argmax", np.argmax, "index of the maximum (first on ties), int64")
ARGMIN = _arg_op("argmin", np.argmin, "index of the minimum (first on ties), int64")


# --- builders -----------------------------------------------------------------------------

def _axes(op: str, x: Node, axis: Any) -> tuple[int, ...]:
    def normalize() -> tuple[int, ...]:
        if axis is None:
            return normalize_axes(None, x.ndim)
        return normalize_axes(int_tuple(axis, "axis"), x.ndim)

    return resolve(op, normalize)


def _build(op: OpDef, x: Operand, axis: Axis, keepdims: bool, name: str | None) -> Node:
    x = as_node(x)
    attrs = {"axes": _axes(op.name, x, axis), "keepdims": bool(keepdims)}
    return apply(op, [x], attrs, name=name)


def sum(x: Operand, axis: Axis = None, keepdims: bool = False,  # numpy's name
        name: str | None = None) -> Node:
    """Sum over `axis` (None: all axes; () : none), like numpy.sum (same dtype as x)."""
    return _build(SUM, x, axis, keepdims, name)


def max(x: Operand, axis: Axis = None, keepdims: bool = False,  # numpy's name
        name: str | None = None) -> Node:
    """Maximum over `axis`; reduced axes must not be empty."""
    return _build(MAX, x, axis, keepdims, name)


def min(x: Operand, axis: Axis = None, keepdims: bool = False,  # numpy's name
        name: str | None = None) -> Node:
    """Minimum over `axis`; reduced axes must not be empty."""
    return _build(MIN, x, axis, keepdims, name)


def prod(x: Operand, axis: Axis = None, keepdims: bool = False, name: str | None = None) -> Node:
    """Product over `axis` (same dtype as x)."""
    return _build(PROD, x, axis, keepdims, name)


def _arg_build(op: OpDef, x: Operand, axis: int | None, keepdims: bool,
               name: str | None) -> Node:
    x = as_node(x)
    if axis is not None and (isinstance(axis, bool) or not isinstance(axis, (int, np.integer))):
        fail(op.name, AttrError(
            f"axis must be None (flattened) or one int, got {axis!r}"))
    return _build(op, x, axis, keepdims, name)


def argmax(x: Operand, axis: int | None = None, keepdims: bool = False,
           name: str | None = None) -> Node:
    """Index (int64) of the maximum along `axis`, or into the flattened x if axis is None."""
    return _arg_build(ARGMAX, x, axis, keepdims, name)


def argmin(x: Operand, axis: int | None = None, keepdims: bool = False,
           name: str | None = None) -> Node:
    """Index (int64) of the minimum along `axis`, or into the flattened x if axis is None."""
    return _arg_build(ARGMIN, x, axis, keepdims, name)


# --- composites ---------------------------------------------------------------------------

def _float_axes(op: str, x: Operand, axis: Axis) -> tuple[Node, tuple[int, ...], int]:
    """(x as a node, normalized axes, number of elements reduced) for float-only composites."""
    node = as_node(x)
    resolve(op, lambda: check_dtype(node.type, FLOATS, "x"))
    axes = _axes(op, node, axis)
    return node, axes, math.prod(node.shape[a] for a in axes)


def mean(x: Operand, axis: Axis = None, keepdims: bool = False, name: str | None = None
         ) -> Node:
    """Arithmetic mean over `axis` (float): sum(x) * (1/n); NaN over an empty axis, like
    numpy."""
    x, axes, n = _float_axes("mean", x, axis)
    return _ew.mul(sum(x, axes, keepdims), 1.0 / n if n else math.nan, name=name)


def var(x: Operand, axis: Axis = None, keepdims: bool = False, ddof: int = 0,
        name: str | None = None) -> Node:
    """Variance ``sum((x - mean)**2) / (n - ddof)`` (two-pass, so no cancellation)."""
    x, axes, n = _float_axes("var", x, axis)
    centered = _ew.sub(x, mean(x, axes, keepdims=True))
    squares = sum(_ew.square(centered), axes, keepdims)
    return _ew.div(squares, float(builtins.max(n - ddof, 0)), name=name)


def std(x: Operand, axis: Axis = None, keepdims: bool = False, ddof: int = 0,
        name: str | None = None) -> Node:
    """Standard deviation, sqrt(var) (its gradient is infinite where var is 0)."""
    x, axes, _ = _float_axes("std", x, axis)
    return _ew.sqrt(var(x, axes, keepdims, ddof), name=name)


def logsumexp(x: Operand, axis: Axis = None, keepdims: bool = False,
              name: str | None = None) -> Node:
    """log(sum(exp(x))) computed as m + log(sum(exp(x - m))) with m the max, so exp never
    overflows. An infinite m (all -inf, or some +inf) is replaced by 0 in the shift, giving
    -inf / +inf like scipy. The gradient needs no stop_gradient on m: the contributions
    through m cancel exactly, leaving softmax(x)."""
    x, axes, _ = _float_axes("logsumexp", x, axis)
    m = max(x, axes, keepdims=True)
    m = _ew.where(_ew.equal(_ew.abs(m), math.inf), 0.0, m)
    total = sum(_ew.exp(_ew.sub(x, m)), axes, keepdims=True)
    if keepdims:
        return _ew.add(m, _ew.log(total), name=name)
    out = _ew.add(m, _ew.log(total))
    return reshape(out, reduced_shape(x.shape, axes, False), name=name)
