"""Shape ops: reshape, transpose, broadcast_to, concat, slice, reverse, pad, and composites.

Every primitive moves data without computing on it: each output element is one input
element (or the pad value), so all are `Fusion.INJECTIVE` except `broadcast_to`
(`Fusion.BROADCAST`). Attributes are stored fully resolved (no -1 in shapes, no negative
axes, no None or negative steps in slices) so passes and codegen never re-derive them: the
builders resolve user conventions, and the type rules re-check the resolved form (`verify`
runs them on graphs loaded from files too).
"""

from __future__ import annotations

import builtins
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import numpy as np

from graphc.builder import Operand, apply, constant, user_location
from graphc.errors import AttrError, GraphcError, ShapeError
from graphc.ir import Attrs, DType, Node, TensorType
from graphc.ops import elementwise as _ew
from graphc.ops.opdef import Fusion, OpDef
from graphc.ops.typecheck import normalize_axes, normalize_axis, same_dtype

__all__ = [
    "broadcast_to",
    "concat",
    "expand_dims",
    "flatten",
    "pad",
    "reshape",
    "reverse",
    "slice",
    "split",
    "squeeze",
    "stack",
    "transpose",
]

OPS: list[OpDef] = []

_pyslice = builtins.slice  # `slice` below is the op builder
_T = TypeVar("_T")


# --- helpers shared with reduce.py (not exported) --------------------------------------------

def as_node(x: Operand) -> Node:
    """`x` itself if it is a Node, else a constant holding it (a builder needs its type)."""
    return x if isinstance(x, Node) else constant(x)


def resolve(op: str, fn: Callable[[], _T]) -> _T:
    """Run a builder's argument resolution; a GraphcError gets `op` and the user's line.

    Type rules get op/loc from `builder.apply`; this does the same for the checks builders
    make before a node exists (an axis out of range, a -1 that cannot be resolved).
    """
    try:
        return fn()
    except GraphcError as exc:
        raise exc.with_context(op=op, loc=user_location()) from None


def fail(op: str, exc: GraphcError) -> NoReturn:
    """Raise `exc` from a builder, with `op` and the user's line."""
    raise exc.with_context(op=op, loc=user_location())


def int_tuple(value: Any, what: str, length: int | None = None) -> tuple[int, ...]:
    """An int or a sequence of ints as a tuple, or an AttrError (bools are not ints)."""
    if isinstance(value, Node):  # iterating a Node would build getitem nodes
        raise AttrError(f"{what} must be static ints, got node %{value.name}")
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        value = (value,)
    try:
        items = tuple(value)
    except TypeError:
        raise AttrError(f"{what} must be a sequence of ints, got {value!r}") from None
    for v in items:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise AttrError(f"{what} must be a sequence of ints, got {value!r}")
    if length is not None and len(items) != length:
        raise AttrError(f"{what} must have {length} entries (one per axis), got {items}")
    return tuple(int(v) for v in items)


def _canonical_axes(value: Any, x: TensorType, what: str = "axes") -> tuple[int, ...]:
    axes = int_tuple(value, what)
    if normalize_axes(axes, x.ndim) != axes:
        raise AttrError(f"{what} attribute {axes} must be sorted non-negative axes of x {x}")
    return axes


def _op(name: str, arity: int | None, infer: Any, reference: Any, grad: Any,
        fusion: Fusion = Fusion.INJECTIVE, doc: str = "") -> OpDef:
    op = OpDef(name, "shape", arity, infer, reference, fusion, grad, doc=doc)
    OPS.append(op)
    return op


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
              lambda n, g: [reshape(g, n.inputs[0].shape)],
              doc="same elements in row-major order, new shape")


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
                doc="permute axes: out.shape[i] = x.shape[perm[i]]")


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
                   doc="repeat size-1 and missing leading axes to `shape` (numpy rules)")


def broadcast_to(x: Operand, shape: Sequence[int] | int, name: str | None = None) -> Node:
    """`x` broadcast to `shape` by numpy rules."""
    x = as_node(x)
    dims = resolve("broadcast_to", lambda: int_tuple(shape, "shape"))
    return apply(BROADCAST_TO, [x], {"shape": dims}, name=name)


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
             doc="join operands along `axis` (same dtype, same shape elsewhere)")


def concat(xs: Sequence[Operand], axis: int = 0, name: str | None = None) -> Node:
    """Join `xs` along an existing `axis` (numpy.concatenate)."""
    if isinstance(xs, Node) or not isinstance(xs, Sequence) or not xs:
        fail("concat", AttrError(f"xs must be a non-empty list of nodes, got {xs!r}"))
    nodes = [as_node(x) for x in xs]
    ax = resolve("concat", lambda: normalize_axis(axis, builtins.max(nodes[0].ndim, 1)))
    return apply(CONCAT, nodes, {"axis": ax}, name=name)


# --- slice --------------------------------------------------------------------------------

def _slice_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    x = types[0]
    starts = int_tuple(attrs["starts"], "starts", x.ndim)
    stops = int_tuple(attrs["stops"], "stops", x.ndim)
    steps = int_tuple(attrs["steps"], "steps", x.ndim)
    shape = []
    for axis, (a, b, s, d) in enumerate(zip(starts, stops, steps, x.shape)):
        if not (0 <= a <= b <= d and s >= 1):
            raise AttrError(f"axis {axis} of x {x}: need 0 <= start <= stop <= {d} and "
                            f"step >= 1, got start {a}, stop {b}, step {s}")
        shape.append((b - a + s - 1) // s)
    return TensorType(tuple(shape), x.dtype)


def _slice_ref(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    index = tuple(_pyslice(*t) for t in zip(attrs["starts"], attrs["stops"], attrs["steps"]))
    return arrays[0][index]


def _slice_grad(n: Node, g: Node) -> list[Node | None]:
    # Scatter g back: `start` zeros before, step-1 zeros between, the remainder after.
    pads = []
    for a, s, d, c in zip(n.attrs["starts"], n.attrs["steps"], n.inputs[0].shape, n.shape):
        used = c + builtins.max(c - 1, 0) * (s - 1)
        pads.append((a, d - a - used, s - 1))
    return [_pad(g, tuple(pads), 0.0)]


SLICE = _op("slice", 1, _slice_infer, _slice_ref, _slice_grad,
            doc="x[start:stop:step] per axis (resolved: 0 <= start <= stop <= dim, step >= 1)")


def _slice(x: Node, starts: tuple[int, ...], stops: tuple[int, ...],
           steps: tuple[int, ...]) -> Node:
    """A slice node from resolved full-rank attributes (for gradient rules)."""
    return apply(SLICE, [x], {"starts": starts, "stops": stops, "steps": steps})


def _int_or_none(v: Any, what: str) -> int | None:
    if v is None:
        return None
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise AttrError(f"{what} entries must be ints or None, got {v!r}")
    return int(v)


def _entries(v: Any, what: str) -> list[Any]:
    if isinstance(v, np.ndarray) and v.ndim == 1:
        return v.tolist()
    if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
        raise AttrError(f"{what} must be a sequence (one entry per sliced axis), got {v!r}")
    return list(v)


def _resolve_slice(x: TensorType, starts: Any, stops: Any, steps: Any, axes: Any
                   ) -> tuple[list[list[int]], tuple[int, ...]]:
    """Per-axis (start, stop, step) with Python slice clamping, and the axes to reverse first.

    A negative step is rewritten as a positive step on the reversed axis: element
    ``start - k*|step|`` of x is element ``dim-1-start + k*|step|`` of reverse(x).
    """
    starts, stops = _entries(starts, "starts"), _entries(stops, "stops")
    steps = [1] * len(starts) if steps is None else _entries(steps, "steps")
    axes_t = tuple(range(len(starts))) if axes is None else tuple(
        normalize_axis(a, x.ndim) for a in int_tuple(axes, "axes"))
    if not len(starts) == len(stops) == len(steps) == len(axes_t):
        raise AttrError(f"starts, stops, steps and axes must have equal lengths, got "
                        f"{len(starts)}, {len(stops)}, {len(steps)}, {len(axes_t)}")
    if len(set(axes_t)) != len(axes_t) or len(axes_t) > x.ndim:
        raise AttrError(f"axes {axes_t} repeat an axis or exceed the rank of x {x}")
    resolved = [[0, d, 1] for d in x.shape]
    flips = []
    for a, b, s, axis in zip(starts, stops, steps, axes_t):
        step = _int_or_none(s, "steps")
        if step == 0:
            raise AttrError(f"axis {axis}: slice step cannot be zero")
        d = x.shape[axis]
        start, stop, step = _pyslice(_int_or_none(a, "starts"), _int_or_none(b, "stops"),
                                     step).indices(d)
        count = len(range(start, stop, step))
        if step < 0:
            flips.append(axis)
            start, step = d - 1 - start, -step
        resolved[axis] = [start, start + (count - 1) * step + 1 if count else start, step]
    return resolved, tuple(sorted(flips))


def slice(  # the op's name (shadows the builtin)
    x: Operand,
    starts: Sequence[int | None],
    stops: Sequence[int | None],
    steps: Sequence[int | None] | None = None,
    axes: Sequence[int] | None = None,
    name: str | None = None,
) -> Node:
    """``x[starts[i]:stops[i]:steps[i]]`` on `axes` (default: the first len(starts) axes).

    Entries follow Python slice semantics (None, negative indices, clamping to the axis).
    A negative step reverses the axis first (a `reverse` node), then slices with a positive
    step; the stored attributes are always resolved and full-rank.
    """
    x = as_node(x)
    resolved, flips = resolve("slice", lambda: _resolve_slice(x.type, starts, stops, steps,
                                                                axes))
    if flips:
        x = reverse(x, flips)
    attrs = {k: tuple(r[i] for r in resolved) for i, k in enumerate(("starts", "stops", "steps"))}
    return apply(SLICE, [x], attrs, name=name)


# --- reverse ------------------------------------------------------------------------------

def _reverse_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    _canonical_axes(attrs["axes"], types[0])
    return types[0]


REVERSE = _op("reverse", 1, _reverse_infer,
              lambda a, attrs: np.flip(a[0], attrs["axes"]).copy(),
              lambda n, g: [reverse(g, n.attrs["axes"])],
              doc="flip the order of elements along `axes`")


def reverse(x: Operand, axis: int | Sequence[int] | None = None, name: str | None = None
            ) -> Node:
    """Flip `x` along `axis` (an int, a sequence, or None for all axes), like numpy.flip."""
    x = as_node(x)
    axes = resolve("reverse", lambda: normalize_axes(
        axis if axis is None else int_tuple(axis, "axis"), x.ndim))
    return apply(REVERSE, [x], {"axes": axes}, name=name)


# --- pad ----------------------------------------------------------------------------------

def _pad_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    x = types[0]
    pads = attrs["pads"]
    if not isinstance(pads, tuple) or len(pads) != x.ndim:
        raise AttrError(f"pads must have one (low, high, interior) per axis of x {x}, "
                        f"got {pads!r}")
    shape = []
    for axis, (p, d) in enumerate(zip(pads, x.shape)):
        lo, hi, interior = int_tuple(p, f"pads[{axis}]", 3)
        if min(lo, hi, interior) < 0:
            raise AttrError(f"pads[{axis}] = {p}: padding must be >= 0")
        shape.append(lo + hi + d + builtins.max(d - 1, 0) * interior)
    value = attrs["value"]
    if not isinstance(value, float):
        raise AttrError(f"value must be a float, got {value!r}")
    if not x.dtype.is_float and not value.is_integer():
        raise AttrError(f"value {value!r} is not representable in x {x}")
    if x.dtype == DType.bool and value not in (0.0, 1.0):
        raise AttrError(f"value {value!r} must be 0.0 or 1.0 for x {x}")
    return TensorType(tuple(shape), x.dtype)


def _pad_ref(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    x = arrays[0]
    shape = tuple(lo + hi + d + builtins.max(d - 1, 0) * i
                  for (lo, hi, i), d in zip(attrs["pads"], x.shape))
    out = np.full(shape, attrs["value"], dtype=x.dtype)
    out[tuple(_pyslice(lo, lo + d + builtins.max(d - 1, 0) * i, i + 1)
              for (lo, hi, i), d in zip(attrs["pads"], x.shape))] = x
    return out


def _pad_grad(n: Node, g: Node) -> list[Node | None]:
    pads, shape = n.attrs["pads"], n.inputs[0].shape
    starts = tuple(lo for lo, _, _ in pads)
    stops = tuple(lo + d + builtins.max(d - 1, 0) * i for (lo, _, i), d in zip(pads, shape))
    return [_slice(g, starts, stops, tuple(i + 1 for _, _, i in pads))]


PAD = _op("pad", 1, _pad_infer, _pad_ref, _pad_grad,
          doc="pad each axis with (low, high, interior) copies of `value`")


def _pad(x: Node, pads: tuple[tuple[int, int, int], ...], value: float) -> Node:
    return apply(PAD, [x], {"pads": pads, "value": float(value)})


def _resolve_pad_width(x: TensorType, pad_width: Any) -> tuple[tuple[int, int, int], ...]:
    try:
        if isinstance(pad_width, Node):
            raise ValueError
        width = np.asarray(pad_width)
        if width.dtype.kind not in "iu" or width.ndim > 2:
            raise ValueError
        width = np.broadcast_to(width, (x.ndim, 2))
    except ValueError:
        raise AttrError(f"pad_width must be an int, a (low, high) pair or one pair per axis "
                        f"of x {x}, got {pad_width!r}") from None
    if (width < 0).any():
        raise AttrError(f"pad_width {pad_width!r} must be >= 0")
    return tuple((int(lo), int(hi), 0) for lo, hi in width)


def pad(x: Operand, pad_width: Any, value: float = 0.0, name: str | None = None) -> Node:
    """Constant padding with numpy.pad's `pad_width` (an int, (low, high), or per-axis pairs)."""
    x = as_node(x)
    pads = resolve("pad", lambda: _resolve_pad_width(x.type, pad_width))
    return apply(PAD, [x], {"pads": pads, "value": float(value)}, name=name)


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
