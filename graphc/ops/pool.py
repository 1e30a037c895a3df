"""2-D max and average pooling over NCHW tensors, and their gradient primitives.

    max_pool2d(x)               y = max over each window (padding counts as -inf)
    max_pool2d_grad(x, g)       dL/dx: g routed to the argmax of each window (first max in
                                row-major window order on ties, like PyTorch)
    max_pool2d_gather(x, h)     h read at the argmax of each window of x (pooled shape)
    avg_pool2d(x)               y = mean over each window (count_include_pad: divide by kh*kw,
                                else by the number of non-padding elements)
    avg_pool2d_grad(g)          dL/dx: g spread evenly over each window (needs `input_shape`)
    global_avg_pool2d(x)        composite: mean over H and W

Attributes: kernel (kh, kw), strides (sh, sw), pads ((top, bottom), (left, right)); no
dilation. Each pad must be smaller than the kernel, so that every window covers at least one
input element (a window of padding alone has no max and no mean).

Gradient closure: max_pool2d_grad and max_pool2d_gather are, for a fixed x, linear maps
adjoint to each other, and both are piecewise constant in x (their x-gradient is zero), so
each one's gradient is the other. avg_pool2d and avg_pool2d_grad are linear and adjoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from graphc.builder import Operand, apply, user_location
from graphc.errors import AttrError, GraphcError, ShapeError
from graphc.ir import Attrs, Node, TensorType
from graphc.ir.attrs import AttrSpec, Kind
from graphc.ir.opdef import Fusion, OpDef
from graphc.ops import reduce as _reduce
from graphc.ops.common import FLOATS, check_dtype, same_dtype
from graphc.ops.geometry import (
    Pair,
    Window,
    check_rank4,
    cropped,
    normalize_padding,
    padded,
    pair,
    shape_arg,
    shape_attr,
    shape_of,
    tap,
    windows,
)

__all__ = [
    "avg_pool2d",
    "avg_pool2d_grad",
    "global_avg_pool2d",
    "max_pool2d",
    "max_pool2d_gather",
    "max_pool2d_grad",
]


# --- type rules -----------------------------------------------------------------------------

def _pool_window(attrs: Attrs) -> Window:
    win = Window.from_attrs(attrs, dilated=False)
    (t, b), (left, r) = win.pads
    kh, kw = win.kernel
    if max(t, b) >= kh or max(left, r) >= kw:
        raise AttrError(f"pads {win.pads}: each pad must be smaller than the kernel "
                        f"{win.kernel}, so that every window covers some input")
    return win


def _pooled(x: TensorType, operand: str, attrs: Attrs) -> TensorType:
    """The pooled type of an input `x`, after checking rank, dtype and window."""
    check_rank4(x, operand, "NCHW")
    check_dtype(x, FLOATS, operand)
    ho, wo = _pool_window(attrs).out_size(x.shape[2:], operand, x)
    return TensorType((x.shape[0], x.shape[1], ho, wo), x.dtype)


def _pool_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    return _pooled(types[0], "x", attrs)


def _avg_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    if not isinstance(attrs.get("count_include_pad"), bool):
        raise AttrError(f"count_include_pad: expected a bool, got "
                        f"{attrs.get('count_include_pad')!r}")
    return _pooled(types[0], "x", attrs)


def _max_grad_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    x, g = types
    out = _pooled(x, "x", attrs)
    same_dtype(types, ("x", "g"))
    if g.shape != out.shape:
        raise ShapeError(f"g: expected {out} (the max_pool2d output for x {x}), got {g}")
    return x


def _gather_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    x, h = types
    out = _pooled(x, "x", attrs)
    same_dtype(types, ("x", "h"))
    if h.shape != x.shape:
        raise ShapeError(f"h: expected {TensorType(x.shape, h.dtype)} (the shape of x), got {h}")
    return out


def _avg_grad_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    g = types[0]
    x = TensorType(shape_attr(attrs, "input_shape"), g.dtype)
    out = _avg_infer([x], attrs)
    if g.shape != out.shape:
        raise ShapeError(f"g: expected {out} (the avg_pool2d output for input_shape {x}), "
                         f"got {g}")
    return x


# --- numpy references -----------------------------------------------------------------------

def _argmax(x: np.ndarray, attrs: Attrs) -> tuple[Window, Pair, np.ndarray]:
    """Window, (Ho, Wo), and the flat index i*kw+j of the first max of each window."""
    win = _pool_window(attrs)
    out = win.out_size(x.shape[2:])
    v = windows(padded(x, win.pads, -np.inf), win, out)
    # kh*kw, not -1: numpy cannot infer -1 when a batch or channel count is 0.
    flat = v.reshape(*v.shape[:4], win.kernel[0] * win.kernel[1])
    if flat.size == 0:
        return win, out, np.zeros(flat.shape[:4], np.int64)
    return win, out, np.argmax(flat, axis=-1)


def _max_ref(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    x = arrays[0]
    win = _pool_window(attrs)
    out = win.out_size(x.shape[2:])
    return windows(padded(x, win.pads, -np.inf), win, out).max(axis=(4, 5))


def _max_grad_ref(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    x, g = arrays
    win, out, arg = _argmax(x, attrs)
    zero = np.zeros((), g.dtype)
    dxp = np.zeros_like(padded(x, win.pads))
    for k in range(win.kernel[0] * win.kernel[1]):
        i, j = divmod(k, win.kernel[1])
        dxp[tap(win, i, j, out)] += np.where(arg == k, g, zero)
    return np.ascontiguousarray(cropped(dxp, win.pads))


def _gather_ref(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    x, h = arrays
    win, out, arg = _argmax(x, attrs)
    v = windows(padded(h, win.pads), win, out)
    flat = v.reshape(*v.shape[:4], win.kernel[0] * win.kernel[1])
    return np.take_along_axis(flat, arg[..., None], axis=-1)[..., 0]


def _divisor(shape: Sequence[int], win: Window, out: Pair, include_pad: bool,
             dtype: np.dtype) -> np.ndarray:
    """What each window's sum is divided by: kh*kw, or its count of real elements."""
    if include_pad:
        return np.asarray(win.kernel[0] * win.kernel[1], dtype)
    ones = np.ones((1, 1, shape[2], shape[3]), dtype)
    return windows(padded(ones, win.pads), win, out).sum(axis=(4, 5))[0, 0]


def _avg_ref(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    x = arrays[0]
    win = _pool_window(attrs)
    out = win.out_size(x.shape[2:])
    total = windows(padded(x, win.pads), win, out).sum(axis=(4, 5))
    return total / _divisor(x.shape, win, out, attrs["count_include_pad"], x.dtype)


def _avg_grad_ref(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    g = arrays[0]
    shape = attrs["input_shape"]
    win = _pool_window(attrs)
    out = win.out_size(shape[2:])
    share = g / _divisor(shape, win, out, attrs["count_include_pad"], g.dtype)
    (t, b), (left, r) = win.pads
    dxp = np.zeros((shape[0], shape[1], shape[2] + t + b, shape[3] + left + r), g.dtype)
    for i in range(win.kernel[0]):
        for j in range(win.kernel[1]):
            dxp[tap(win, i, j, out)] += share
    return np.ascontiguousarray(cropped(dxp, win.pads))


# --- gradient rules (see the module docstring) -------------------------------------------

def _window_attrs(attrs: Attrs) -> dict[str, Any]:
    return {k: attrs[k] for k in ("kernel", "strides", "pads")}


def _avg_attrs(attrs: Attrs) -> dict[str, Any]:
    return {**_window_attrs(attrs), "count_include_pad": attrs["count_include_pad"]}


def _max_grad(n: Node, g: Node) -> list[Node | None]:
    return [apply(MAX_POOL2D_GRAD, [n.inputs[0], g], _window_attrs(n.attrs))]


def _max_grad_grad(n: Node, h: Node) -> list[Node | None]:
    return [None, apply(MAX_POOL2D_GATHER, [n.inputs[0], h], _window_attrs(n.attrs))]


def _gather_grad(n: Node, k: Node) -> list[Node | None]:
    return [None, apply(MAX_POOL2D_GRAD, [n.inputs[0], k], _window_attrs(n.attrs))]


def _avg_grad(n: Node, g: Node) -> list[Node | None]:
    attrs = {**_avg_attrs(n.attrs), "input_shape": n.inputs[0].shape}
    return [apply(AVG_POOL2D_GRAD, [g], attrs)]


def _avg_grad_grad(n: Node, h: Node) -> list[Node | None]:
    return [apply(AVG_POOL2D, [h], _avg_attrs(n.attrs))]


# A pooling window: pairs (height, width); pads ((top, bottom), (left, right)).
POOL_ATTRS = (
    AttrSpec("kernel", Kind.INTS, low=1, length=2),
    AttrSpec("strides", Kind.INTS, low=1, length=2),
    AttrSpec("pads", Kind.INT_ROWS, low=0, length=2, width=2),
)
AVG_ATTRS = (*POOL_ATTRS, AttrSpec("count_include_pad", Kind.BOOL))
MAX_POOL2D = OpDef("max_pool2d", "conv", 1, _pool_infer, _max_ref, Fusion.OPAQUE, _max_grad,
                   doc="max over kh x kw windows (padding is -inf)", attrs=POOL_ATTRS)
MAX_POOL2D_GRAD = OpDef(
    "max_pool2d_grad", "conv", 2, _max_grad_infer, _max_grad_ref, Fusion.OPAQUE,
    _max_grad_grad, doc="gradient of max_pool2d: g routed to each window's first argmax",
    attrs=POOL_ATTRS)
MAX_POOL2D_GATHER = OpDef(
    "max_pool2d_gather", "conv", 2, _gather_infer, _gather_ref, Fusion.OPAQUE, _gather_grad,
    doc="h read at each window's first argmax of x (the adjoint of max_pool2d_grad)",
    attrs=POOL_ATTRS)
AVG_POOL2D = OpDef("avg_pool2d", "conv", 1, _avg_infer, _avg_ref, Fusion.OPAQUE, _avg_grad,
                   doc="mean over kh x kw windows", attrs=AVG_ATTRS)
AVG_POOL2D_GRAD = OpDef(
    "avg_pool2d_grad", "conv", 1, _avg_grad_infer, _avg_grad_ref, Fusion.OPAQUE,
    _avg_grad_grad, doc="gradient of avg_pool2d: g spread evenly over each window",
    attrs=(*AVG_ATTRS, AttrSpec("input_shape", Kind.INTS, low=0, length=4)))
OPS: list[OpDef] = [MAX_POOL2D, MAX_POOL2D_GRAD, MAX_POOL2D_GATHER, AVG_POOL2D,
                    AVG_POOL2D_GRAD]


# --- builders -------------------------------------------------------------------------------

def pool_attrs(spatial: Sequence[int], kernel_size: Any, stride: Any, padding: Any
               ) -> dict[str, Any]:
    """Node attributes from builder arguments (AttrError without op/loc on bad ones)."""
    kernel = pair(kernel_size, "kernel_size")
    strides = kernel if stride is None else pair(stride, "stride")
    sp = (int(spatial[0]), int(spatial[1])) if len(spatial) == 2 else (1, 1)
    pads = normalize_padding(padding, sp, kernel, strides, (1, 1))
    return {"kernel": kernel, "strides": strides, "pads": pads}


def _build(op: OpDef, inputs: list[Operand], spatial: Sequence[int], kernel_size: Any,
           stride: Any, padding: Any, extra: dict[str, Any], name: str | None) -> Node:
    try:
        attrs = pool_attrs(spatial, kernel_size, stride, padding)
    except GraphcError as exc:
        raise exc.with_context(op=op.name, loc=user_location()) from None
    return apply(op, inputs, {**attrs, **extra}, name=name)


def max_pool2d(x: Operand, kernel_size: int | Sequence[int], stride: Any = None,
               padding: Any = 0, name: str | None = None) -> Node:
    """Max over kh x kw windows of x (N, C, H, W). `stride` defaults to the kernel size;
    `padding` is as for `conv2d` (an int, a pair, ((t, b), (l, r)), "same" or "valid") and
    padding never wins the max."""
    return _build(MAX_POOL2D, [x], shape_of(x)[2:], kernel_size, stride, padding, {}, name)


def max_pool2d_grad(x: Operand, g: Operand, kernel_size: int | Sequence[int],
                    stride: Any = None, padding: Any = 0, name: str | None = None) -> Node:
    """The gradient of `max_pool2d(x, ...)` for the output gradient g: each g element goes
    to the first maximal element of its window of x."""
    return _build(MAX_POOL2D_GRAD, [x, g], shape_of(x)[2:], kernel_size, stride, padding, {},
                  name)


def max_pool2d_gather(x: Operand, h: Operand, kernel_size: int | Sequence[int],
                      stride: Any = None, padding: Any = 0, name: str | None = None) -> Node:
    """h (shape of x) read at the first maximal element of each max_pool2d window of x."""
    return _build(MAX_POOL2D_GATHER, [x, h], shape_of(x)[2:], kernel_size, stride, padding,
                  {}, name)


def avg_pool2d(x: Operand, kernel_size: int | Sequence[int], stride: Any = None,
               padding: Any = 0, count_include_pad: bool = True, name: str | None = None
               ) -> Node:
    """Mean over kh x kw windows of x (N, C, H, W); arguments as for `max_pool2d`. With
    `count_include_pad` (the default, like PyTorch) padding counts as zeros in the mean;
    otherwise each window is divided by its number of real elements."""
    return _build(AVG_POOL2D, [x], shape_of(x)[2:], kernel_size, stride, padding,
                  {"count_include_pad": bool(count_include_pad)}, name)


def avg_pool2d_grad(g: Operand, input_shape: Sequence[int], kernel_size: int | Sequence[int],
                    stride: Any = None, padding: Any = 0, count_include_pad: bool = True,
                    name: str | None = None) -> Node:
    """The gradient of `avg_pool2d(x, ...)` w.r.t. x of shape `input_shape`, for the output
    gradient g ("same" padding refers to `input_shape`)."""
    in_shape = shape_arg("avg_pool2d_grad", user_location(), input_shape, "input_shape")
    return _build(AVG_POOL2D_GRAD, [g], in_shape[2:], kernel_size, stride, padding,
                  {"count_include_pad": bool(count_include_pad), "input_shape": in_shape},
                  name)


def global_avg_pool2d(x: Node, keepdims: bool = False, name: str | None = None) -> Node:
    """Mean over H and W of x (N, C, H, W): (N, C), or (N, C, 1, 1) with `keepdims`
    (a composite: one mean reduction)."""
    if not isinstance(x, Node) or x.ndim != 4:
        shown = x.type if isinstance(x, Node) else repr(x)
        raise ShapeError(f"x: expected a rank-4 NCHW tensor node, got {shown}",
                         op="global_avg_pool2d", loc=user_location())
    return _reduce.mean(x, axis=(2, 3), keepdims=keepdims, name=name)
