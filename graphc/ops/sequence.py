"""Sequence ops: positions and masks, reads and writes at a runtime position, rotary
position embedding.

    iota(shape, axis, dtype)             the index along `axis` at every element (no inputs;
                                         INDEXED: codegen computes it inside its user's loop,
                                         so a causal mask ``iota(s, 0) >= iota(s, 1)`` is
                                         never a buffer); arange, triu, tril are composites
    dynamic_slice(x, *start)             x[start_0 : start_0 + sizes_0, ...], start at run time
    dynamic_update_slice(x, update, *start)
                                         x with `update` written at `start` (XLA's shapes);
                                         the result may take over x's buffer (`overwrites`):
                                         a KV cache update writes only the update's elements
    rope(x, positions)                   rotary position embedding (a composite)

Starts: one int32/int64 scalar operand per axis of x, or a single 1-D int operand of length
rank. Unlike XLA, a start is never clamped: one outside ``0 <= start <= dim - size`` is an
error (a `GraphcError` naming the op, raised by the reference and by compiled code at the
call, `codegen.opaque.sequence`): a cache written past its end must not overwrite its last
slot. Constant starts are checked when the graph is built.

A decode step with a KV cache (compiled once for a fixed Tmax; `pos` a runtime scalar):

    k_cache = gc.variable(np.zeros((1, heads, tmax, dh), np.float32))    # v_cache alike
    pos = gc.placeholder((), gc.int64)
    k = gc.dynamic_update_slice(k_cache, k_new, (0, 0, pos, 0))          # k_new: (1, heads, 1, dh)
    mask = gc.iota((tmax,)) <= pos          # bool: True attends; slots after pos are hidden
    out = gc.attention(q, k, v, mask=mask)  # q: (1, heads, 1, dh), over [0, Tmax)
    g.add_signature("decode", ..., updates={k_cache: k, v_cache: v})

Each update is planned into its variable and attention reads the variable's buffer: nothing
is copied per token. One cache of shape (layers, 2, heads, Tmax, dh) is updated in place
too, but reading a layer from it (``cache_new[l, 0]``) is a slice, which is a kernel that
copies that layer today (tests/test_sequence_ops.py runs both patterns).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from graphc.builder import Operand, apply, constant
from graphc.errors import AttrError, DTypeError, GraphcError, ShapeError
from graphc.ir import Attrs, DType, Node, TensorType
from graphc.ir.attrs import AttrSpec, Kind
from graphc.ir.opdef import Fusion, OpDef
from graphc.ops import elementwise as _ew
from graphc.ops.common import ALL, INTS, NUMERIC, as_node, check_dtype, fail, int_tuple, resolve
from graphc.ops.join import concat
from graphc.ops.layout import broadcast_to, expand_dims, reshape
from graphc.ops.slicing import slice as _slice

__all__ = ["arange", "dynamic_slice", "dynamic_update_slice", "iota", "rope", "tril", "triu"]

OPS: list[OpDef] = []

# Where a start may come from: a node (int scalar, or 1-D of length rank), a Python int, or a
# sequence of those (one per axis).
StartOperand = Node | int | np.integer | np.ndarray | Sequence[Node | int | np.integer]


# --- iota ------------------------------------------------------------------------------------

def _iota_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    shape, axis, dtype = attrs["shape"], attrs["axis"], attrs["dtype"]
    if not shape:
        raise ShapeError("shape: iota needs rank >= 1, got ()")
    if axis >= len(shape):
        raise AttrError(f"axis {axis} is out of range for shape {list(shape)}")
    if dtype not in NUMERIC:
        raise DTypeError(f"dtype: expected a numeric dtype, got {dtype.value}")
    return TensorType(shape, dtype)


def _iota_ref(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    shape, axis = attrs["shape"], attrs["axis"]
    along = np.arange(shape[axis]).reshape([-1 if d == axis else 1 for d in range(len(shape))])
    return np.ascontiguousarray(np.broadcast_to(along, shape).astype(attrs["dtype"].np))


IOTA = OpDef(
    "iota", "sequence", 0, _iota_infer, _iota_ref, Fusion.INDEXED,
    doc="the index along `axis` at every element of `shape` (computed in its user's loop)",
    attrs=(AttrSpec("shape", Kind.INTS, low=0), AttrSpec("axis", Kind.INT, low=0),
           AttrSpec("dtype", Kind.DTYPE, default=DType.int64)))
OPS.append(IOTA)


def iota(shape: Sequence[int] | int, axis: int = 0, dtype: DType | str = "int64",
         name: str | None = None) -> Node:
    """The index along `axis` at every element of `shape` (numeric `dtype`): for shape
    (2, 3), axis 1 is [[0, 1, 2], [0, 1, 2]]. Computed by index in its user's loop nest, so
    masks built from it are not stored unless they are outputs or have several users."""
    dims = resolve("iota", lambda: int_tuple(shape, "shape"))
    if isinstance(axis, int) and not isinstance(axis, bool) and -len(dims) <= axis < 0:
        axis += len(dims)
    the_dtype = resolve("iota", lambda: DType.of(dtype))
    return apply(IOTA, [], {"shape": dims, "axis": axis, "dtype": the_dtype}, name=name)


def arange(start: float, stop: float | None = None, step: float = 1,
           dtype: DType | str | None = None) -> Node:
    """numpy.arange of static numbers: ``start + i * step`` for i in
    [0, ceil((stop - start) / step)). `dtype` defaults to int64 when all three are ints,
    else float32 (graphc's float; pass "float64" for numpy's). Float values are computed in
    float64 and then rounded to `dtype`."""
    if stop is None:
        start, stop = 0, start
    numbers = (start, stop, step)
    if any(isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating))
           for v in numbers) or not all(math.isfinite(v) for v in numbers):
        fail("arange", AttrError(f"start, stop, step must be finite numbers, got {numbers}"))
    if step == 0:
        fail("arange", AttrError("step must not be 0"))
    integral = all(isinstance(v, (int, np.integer)) for v in numbers)
    the_dtype = resolve("arange", lambda: DType.of(
        dtype if dtype is not None else ("int64" if integral else "float32")))
    if the_dtype == DType.bool:
        fail("arange", DTypeError("dtype: expected a numeric dtype, got bool"))
    # Ints count exactly (a float quotient rounds past 2**53).
    count = max(0, -((int(start) - int(stop)) // int(step)) if integral
                else math.ceil((stop - start) / step))
    if integral and the_dtype.is_int:
        # Exact integer arithmetic, then narrowed (numpy wraps int32 the same way).
        values = _ew.add(_ew.mul(iota((count,), 0, "int64"), int(step)), int(start))
    else:
        values = _ew.add(_ew.mul(iota((count,), 0, "float64"), float(step)), float(start))
    return values if values.dtype == the_dtype else _ew.cast(values, the_dtype)


def _band(x: Operand, k: int, op: str, upper: bool) -> Node:
    x = as_node(x)
    if x.ndim < 2:
        fail(op, ShapeError(f"x: expected rank >= 2 (the last two axes are the matrix), "
                            f"got {x.type}"))
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        fail(op, AttrError(f"k must be an int, got {k!r}"))
    shape = x.shape[-2:]
    offset = _ew.sub(iota(shape, 1), iota(shape, 0))  # j - i: the diagonal it lies on
    keep = _ew.greater_equal(offset, int(k)) if upper else _ew.less_equal(offset, int(k))
    return _ew.where(keep, x, False if x.dtype == DType.bool else 0)


def triu(x: Operand, k: int = 0) -> Node:
    """numpy.triu on the last two axes: x where j - i >= k, else 0 (composite: iota, where)."""
    return _band(x, k, "triu", upper=True)


def tril(x: Operand, k: int = 0) -> Node:
    """numpy.tril on the last two axes: x where j - i <= k, else 0 (composite: iota, where)."""
    return _band(x, k, "tril", upper=False)


# --- starts ----------------------------------------------------------------------------------

def _split_starts(starts: Sequence[TensorType], rank: int) -> None:
    """Raise unless `starts` is one int scalar per axis or one 1-D int of length `rank`."""
    for i, t in enumerate(starts):
        check_dtype(t, INTS, f"start {i}")
    if len(starts) == 1 and starts[0].ndim == 1:
        if starts[0].shape != (rank,):
            raise ShapeError(f"start: expected a 1-D int of length {rank} (x's rank), "
                             f"got {starts[0]}")
        return
    if len(starts) != rank or any(t.ndim != 0 for t in starts):
        got = ", ".join(str(t) for t in starts) or "none"
        raise ShapeError(f"start: expected {rank} int scalars (one per axis of x) or one 1-D "
                         f"int of length {rank}, got {got}")


def start_values(starts: Sequence[np.ndarray], rank: int) -> list[int]:
    """The start of each axis from the start operands' values."""
    if len(starts) == 1 and starts[0].ndim == 1:
        return [int(v) for v in starts[0]]
    return [int(s.item()) for s in starts]


def check_starts(starts: Sequence[int], dims: Sequence[int], sizes: Sequence[int]) -> None:
    """GraphcError unless 0 <= start <= dim - size on every axis (never clamped)."""
    for axis, (s, d, n) in enumerate(zip(starts, dims, sizes)):
        if not 0 <= s <= d - n:
            raise GraphcError(f"start {s} is out of range for axis {axis}: a block of {n} in "
                              f"a dim of {d} needs 0 <= start <= {d - n}")


def _start_operands(start: StartOperand, x: Node, op: str) -> list[Node]:
    """The start operands for x: a 1-D int node as is, anything else one scalar per axis
    (Python ints become int64 constants)."""
    if isinstance(start, np.ndarray):
        start = [int(v) for v in start.reshape(-1)] if start.ndim else [int(start)]
    if isinstance(start, Node) and start.ndim == 1:
        return [start]
    items = [start] if isinstance(start, (Node, int, np.integer)) else list(start)
    out: list[Node] = []
    for s in items:
        if isinstance(s, Node):
            out.append(s)
        elif isinstance(s, (int, np.integer)) and not isinstance(s, bool):
            out.append(constant(np.int64(s)))
        else:
            fail(op, AttrError(f"start must hold int nodes or ints, got {s!r}"))
    return out


def _check_constant_starts(n: Node, x: Node, sizes: Sequence[int], first: int) -> None:
    """Constant starts are checked when the graph is built, as constant gather indices are."""
    operands = n.inputs[first:]
    if not all(s.op == "constant" for s in operands):
        return
    values = [x.graph.constants[s.name] for s in operands]
    try:
        check_starts(start_values(values, x.ndim), x.shape, sizes)
    except GraphcError as exc:
        fail(n.op, exc)


# --- dynamic_slice ---------------------------------------------------------------------------

def _dynamic_slice_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    x, *starts = types
    check_dtype(x, ALL, "x")
    if x.ndim == 0:
        raise ShapeError(f"x: expected rank >= 1, got {x}")
    _split_starts(starts, x.ndim)
    sizes = int_tuple(attrs["sizes"], "sizes", x.ndim)
    if any(not 0 <= n <= d for n, d in zip(sizes, x.shape)):
        raise AttrError(f"sizes {list(sizes)} must fit x {x} (0 <= size <= dim per axis)")
    return TensorType(sizes, x.dtype)


def _dynamic_slice_ref(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    x, *starts = arrays
    at = start_values(starts, x.ndim)
    check_starts(at, x.shape, attrs["sizes"])
    return x[tuple(slice(s, s + n) for s, n in zip(at, attrs["sizes"]))].copy()


def _dynamic_slice_grad(n: Node, g: Node) -> list[Node | None]:
    x, *starts = n.inputs
    return [_dus(zeros(x.type), g, starts), *([None] * len(starts))]


DYNAMIC_SLICE = OpDef(
    "dynamic_slice", "sequence", None, _dynamic_slice_infer, _dynamic_slice_ref, Fusion.OPAQUE,
    _dynamic_slice_grad,
    doc="the block of `sizes` at runtime `start` of x (an error if it does not fit)",
    attrs=(AttrSpec("sizes", Kind.INTS, low=0),))
OPS.append(DYNAMIC_SLICE)


def dynamic_slice(x: Operand, start: StartOperand, sizes: Sequence[int],
                  name: str | None = None) -> Node:
    """The block of shape `sizes` of x at `start`, which may be known only at run time (int
    scalar nodes per axis, one 1-D int node of length rank, or ints mixed in). A start
    outside ``0 <= start <= dim - size`` raises a GraphcError (never clamped)."""
    x = as_node(x)
    dims = resolve("dynamic_slice", lambda: int_tuple(sizes, "sizes"))
    node = apply(DYNAMIC_SLICE, [x, *_start_operands(start, x, "dynamic_slice")],
                 {"sizes": dims}, name=name)
    _check_constant_starts(node, x, dims, 1)
    return node


# --- dynamic_update_slice --------------------------------------------------------------------

def _dus_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    if len(types) < 3:
        raise GraphcError(f"expected x, update and start operands, got {len(types)} operands")
    x, update, *starts = types
    check_dtype(x, ALL, "x")
    if update.dtype != x.dtype:
        raise DTypeError(f"update: expected x's dtype {x.dtype.value}, got {update}")
    if x.ndim == 0:
        raise ShapeError(f"x: expected rank >= 1, got {x}")
    if update.ndim != x.ndim or any(u > d for u, d in zip(update.shape, x.shape)):
        raise ShapeError(f"update: expected x's rank {x.ndim} and no dim larger than x's "
                         f"(x {x}), got {update}")
    _split_starts(starts, x.ndim)
    return x


def _dus_ref(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    x, update, *starts = arrays
    at = start_values(starts, x.ndim)
    check_starts(at, x.shape, update.shape)
    out = x.copy()
    out[tuple(slice(s, s + n) for s, n in zip(at, update.shape))] = update
    return out


def _dus_grad(n: Node, g: Node) -> list[Node | None]:
    _x, update, *starts = n.inputs
    dx = _dus(g, zeros(update.type), starts)
    dupdate = apply(DYNAMIC_SLICE, [g, *starts], {"sizes": update.shape})
    return [dx, dupdate, *([None] * len(starts))]


DYNAMIC_UPDATE_SLICE = OpDef(
    "dynamic_update_slice", "sequence", None, _dus_infer, _dus_ref, Fusion.OPAQUE, _dus_grad,
    doc="x with `update` written at runtime `start` (in place when x is dead after it)",
    overwrites=0)
OPS.append(DYNAMIC_UPDATE_SLICE)


def _dus(x: Node, update: Node, starts: Sequence[Node]) -> Node:
    return apply(DYNAMIC_UPDATE_SLICE, [x, update, *starts])


def zeros(t: TensorType) -> Node:
    """Zeros of type `t` (a broadcast scalar: one number stored)."""
    return broadcast_to(constant(np.zeros((), t.dtype.np)), t.shape)


def dynamic_update_slice(x: Operand, update: Operand, start: StartOperand,
                         name: str | None = None) -> Node:
    """x with `update` (x's rank and dtype) written at `start`, which may be known only at
    run time (int scalar nodes per axis, one 1-D int node of length rank, or ints mixed in).

    A start outside ``0 <= start <= dim - size`` raises a GraphcError naming the op, from
    the reference and from compiled code at the call; nothing is written then. When x is
    dead after this node, or is the variable this node's value updates
    (``updates={cache: dynamic_update_slice(cache, kv, (0, 0, 0, pos, 0))}``), compiled code
    writes only the update's elements into x's own buffer (`memory_plan`)."""
    x = as_node(x)
    node = apply(DYNAMIC_UPDATE_SLICE,
                 [x, update, *_start_operands(start, x, "dynamic_update_slice")], name=name)
    _check_constant_starts(node, x, node.inputs[1].shape, 2)
    return node


# --- rope ------------------------------------------------------------------------------------

def rope(x: Operand, positions: Operand | None = None, *, base: float = 10000.0,
         interleaved: bool = False) -> Node:
    """Rotary position embedding of x (..., T, D), D even, float.

    Pair i of the D/2 pairs is rotated by the angle ``p * base**(-2i / D)`` at position p.
    `positions` is None (0..T-1) or an int node broadcastable to (..., T) (a scalar `pos`:
    every row at position `pos`, the one token of a decode step). `interleaved` False pairs
    x[i] with x[i + D/2] (rotate-half: HF Llama, GPT-NeoX); True pairs x[2i] with x[2i+1]
    (GPT-J, Meta's Llama). A composite: cos/sin of the angles times x and its rotation."""
    x = as_node(x)
    if not x.dtype.is_float or x.ndim < 2 or x.shape[-1] % 2:
        fail("rope", ShapeError(f"x: expected a float (..., T, D) with D even, got {x.type}"))
    if not (isinstance(base, (int, float)) and not isinstance(base, bool) and base > 0):
        fail("rope", AttrError(f"base must be a positive number, got {base!r}"))
    t, d = x.shape[-2], x.shape[-1]
    half = d // 2
    inv_freq = constant((np.float64(base) ** (-np.arange(half) * 2.0 / d)).astype(x.dtype.np))
    if positions is None:
        # (T, 1) * (D/2,): an iota, so the graph holds D/2 numbers, not a (T, D/2) table.
        angles = _ew.mul(iota((t, 1), 0, x.dtype), inv_freq)
    else:
        pos = as_node(positions)
        lead = x.shape[:-1]
        if pos.dtype not in INTS or pos.ndim > len(lead) or any(
                p not in (1, s) for p, s in zip(pos.shape[::-1], lead[::-1])):
            fail("rope", ShapeError(f"positions: expected an int node broadcastable to "
                                    f"{list(lead)} (x {x.type}), got {pos.type}"))
        angles = _ew.mul(expand_dims(_ew.cast(pos, x.dtype), -1), inv_freq)
    cos, sin = _ew.cos(angles), _ew.sin(angles)
    last = [x.ndim - 1]
    if interleaved:
        first, second = _slice(x, [0], [d], [2], last), _slice(x, [1], [d], [2], last)
    else:
        first, second = _slice(x, [0], [half], None, last), _slice(x, [half], [d], None, last)
    rotated = [_ew.sub(_ew.mul(first, cos), _ew.mul(second, sin)),
               _ew.add(_ew.mul(second, cos), _ew.mul(first, sin))]
    if not interleaved:
        return concat(rotated, axis=-1)
    # Pair i back at (2i, 2i+1): side by side on a new last axis, then that axis flattened.
    return reshape(concat([expand_dims(r, -1) for r in rotated], axis=-1), x.shape)
