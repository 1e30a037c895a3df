"""2-D convolution (NCHW activations, OIHW weights) and its two gradient primitives.

    conv2d(x, w)                 y[n,o,p,q] = sum_{c,i,j} x_pad[n, g*Cg+c, p*sh+i*dh, q*sw+j*dw]
                                                          * w[o, c, i, j]   (g = o // Og)
    conv2d_grad_input(g, w)      dL/dx: the transposed convolution of g (needs `input_shape`)
    conv2d_grad_weight(x, g)     dL/dw (needs `weight_shape`)

All three share the attributes strides (sh, sw), pads ((top, bottom), (left, right)),
dilation (dh, dw) and groups; C and O are divisible by groups, Cg = C/groups, Og = O/groups.

The three ops are one bilinear form B(x, w, g) = <conv2d(x, w), g> seen from each argument,
so the gradient of each is built from the other two (grad-of-grad works to any order):
    conv2d(x, w)            -> dx = grad_input(g, w),        dw = grad_weight(x, g)
    grad_input(g, w) = dx   -> dg = conv2d(h, w),            dw = grad_weight(h, g)
    grad_weight(x, g) = dw  -> dx = grad_input(g, k),        dg = conv2d(x, k)
where h (resp. k) is the upstream gradient of dx (resp. dw).

The references loop over the kh*kw kernel offsets only; each offset is one batched matmul
over (groups, channels) with numpy/BLAS.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from graphc.builder import Operand, apply, user_location
from graphc.errors import AttrError, GraphcError, ShapeError, SourceLoc
from graphc.ir import Attrs, Node, TensorType
from graphc.ir.attrs import AttrSpec, Kind
from graphc.ir.opdef import Anchor, Fusion, OpDef
from graphc.ops import elementwise as _ew
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
)
from graphc.ops.layout import reshape
from graphc.ops.panels import unpack_conv_weights

__all__ = ["conv2d", "conv2d_grad_input", "conv2d_grad_weight"]


# --- type rules -----------------------------------------------------------------------------

def _groups(attrs: Attrs) -> int:
    groups = attrs.get("groups", None)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise AttrError(f"groups: expected a positive int, got {groups!r}")
    return groups


def _check_channels(channels: int, what: str, w_shape: Sequence[int], w_type: TensorType,
                    groups: int) -> None:
    """`channels` input channels (of `what`) against weights (O, C/groups, kh, kw)."""
    out_ch, per_group, kh, kw = w_shape
    if kh < 1 or kw < 1 or per_group < 1 or out_ch < 1:
        raise ShapeError(f"w: expected positive O, C/groups, kh and kw, got {w_type}")
    if channels % groups:
        raise ShapeError(f"{what}: its C={channels} channels are not divisible by "
                         f"groups={groups}")
    if out_ch % groups:
        raise ShapeError(f"w {w_type}: its O={out_ch} output channels are not divisible by "
                         f"groups={groups}")
    if per_group * groups != channels:
        raise ShapeError(f"channel mismatch: {what} has C={channels} channels, w {w_type} "
                         f"expects C/groups*groups = {per_group}*{groups} = "
                         f"{per_group * groups}")


def _conv_types(types: Sequence[TensorType], names: tuple[str, str], layouts: tuple[str, str]
                ) -> None:
    for t, n, layout in zip(types, names, layouts):
        check_rank4(t, n, layout)
    check_dtype(types[0], FLOATS, names[0])
    same_dtype(types, names)


def _check_panels(attrs: Attrs, w: TensorType, groups: int) -> None:
    """`weight_panels`: () or (block, panel), block a divisor of O, one group."""
    panels = attrs.get("weight_panels", ())
    if not panels:
        return
    if len(panels) != 2:
        raise AttrError(f"weight_panels: expected () or (block, panel), got {panels!r}")
    block = panels[0]
    if groups != 1 or w.shape[0] % block:
        raise AttrError(f"weight_panels={panels!r}: needs one group and a block dividing the "
                        f"{w.shape[0]} output channels of w {w} (groups={groups})")


def _conv_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    x, w = types
    _conv_types(types, ("x", "w"), ("NCHW", "OIHW"))
    groups = _groups(attrs)
    _check_channels(x.shape[1], f"x {x}", w.shape, w, groups)
    _check_panels(attrs, w, groups)
    win = Window.from_attrs(attrs, kernel=(w.shape[2], w.shape[3]))
    ho, wo = win.out_size(x.shape[2:], "x", x)
    return TensorType((x.shape[0], w.shape[0], ho, wo), x.dtype)


def _expect_g(g: TensorType, want: tuple[int, ...], source: str) -> None:
    if g.shape != want:
        raise ShapeError(f"g: expected {TensorType(want, g.dtype)} (the conv2d output for "
                         f"{source}), got {g}")


def _grad_input_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    g, w = types
    _conv_types(types, ("g", "w"), ("NCHW", "OIHW"))
    groups = _groups(attrs)
    in_shape = shape_attr(attrs, "input_shape")
    x = TensorType(in_shape, g.dtype)
    _check_channels(in_shape[1], f"input_shape {x}", w.shape, w, groups)
    win = Window.from_attrs(attrs, kernel=(w.shape[2], w.shape[3]))
    ho, wo = win.out_size(in_shape[2:], "input_shape", x)
    _expect_g(g, (in_shape[0], w.shape[0], ho, wo), f"input {x} and w {w}")
    return x


def _grad_weight_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    x, g = types
    _conv_types(types, ("x", "g"), ("NCHW", "NCHW"))
    groups = _groups(attrs)
    w_shape = shape_attr(attrs, "weight_shape")
    w = TensorType(w_shape, x.dtype)
    _check_channels(x.shape[1], f"x {x}", w_shape, w, groups)
    win = Window.from_attrs(attrs, kernel=(w_shape[2], w_shape[3]))
    ho, wo = win.out_size(x.shape[2:], "x", x)
    _expect_g(g, (x.shape[0], w_shape[0], ho, wo), f"x {x} and weight_shape {w}")
    return w


# --- numpy references -----------------------------------------------------------------------

def _setup(attrs: Attrs, x_shape: Sequence[int], w_shape: Sequence[int]
           ) -> tuple[Window, int, Pair]:
    win = Window.from_attrs(attrs, kernel=(w_shape[2], w_shape[3]))
    return win, attrs["groups"], win.out_size(x_shape[2:])


def _padded_shape(x_shape: Sequence[int], win: Window) -> tuple[int, int, int, int]:
    (t, b), (left, r) = win.pads
    return (x_shape[0], x_shape[1], x_shape[2] + t + b, x_shape[3] + left + r)


def _conv_ref(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    x, w = arrays
    if attrs.get("weight_panels"):
        w = unpack_conv_weights(w, *attrs["weight_panels"])
    win, groups, (ho, wo) = _setup(attrs, x.shape, w.shape)
    n = x.shape[0]
    o, cg, kh, kw = w.shape
    xp = padded(x, win.pads)
    wg = w.reshape(groups, o // groups, cg, kh, kw)
    y = np.zeros((n, groups, o // groups, ho * wo), x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols = xp[tap(win, i, j, (ho, wo))].reshape(n, groups, cg, ho * wo)
            y += wg[:, :, :, i, j] @ cols  # (G, Og, Cg) @ (N, G, Cg, HoWo)
    return y.reshape(n, o, ho, wo)


def _grad_input_ref(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    g, w = arrays
    in_shape = attrs["input_shape"]
    win, groups, (ho, wo) = _setup(attrs, in_shape, w.shape)
    n, c = in_shape[:2]
    o, cg, kh, kw = w.shape
    gg = g.reshape(n, groups, o // groups, ho * wo)
    # (G, Cg, Og): the transposed weights of each group.
    wt = w.reshape(groups, o // groups, cg, kh, kw).transpose(0, 2, 1, 3, 4)
    dxp = np.zeros(_padded_shape(in_shape, win), g.dtype)
    for i in range(kh):
        for j in range(kw):
            contrib = wt[:, :, :, i, j] @ gg  # (N, G, Cg, HoWo)
            dxp[tap(win, i, j, (ho, wo))] += contrib.reshape(n, c, ho, wo)
    return np.ascontiguousarray(cropped(dxp, win.pads))


def _grad_weight_ref(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    x, g = arrays
    w_shape = attrs["weight_shape"]
    win, groups, (ho, wo) = _setup(attrs, x.shape, w_shape)
    n = x.shape[0]
    o, cg, kh, kw = w_shape
    og = o // groups
    xp = padded(x, win.pads)
    # (G, Og, N*HoWo): the batch joins the contraction so each offset is one matmul per group.
    gg = g.reshape(n, groups, og, ho * wo).transpose(1, 2, 0, 3).reshape(groups, og, -1)
    dw = np.empty((groups, og, cg, kh, kw), x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols = xp[tap(win, i, j, (ho, wo))].reshape(n, groups, cg, ho * wo)
            cols = cols.transpose(1, 0, 3, 2).reshape(groups, n * ho * wo, cg)
            dw[:, :, :, i, j] = gg @ cols
    return dw.reshape(o, cg, kh, kw)


# --- gradient rules (see the module docstring) -------------------------------------------

def _geometry(attrs: Attrs) -> dict[str, Any]:
    return {k: attrs[k] for k in ("strides", "pads", "dilation", "groups")}


def _conv_grad(n: Node, g: Node) -> list[Node | None]:
    x, w = n.inputs
    if n.attrs.get("weight_panels"):
        raise GraphcError(f"conv2d %{n.name} has prepacked weights (weight_panels="
                          f"{n.attrs['weight_panels']}, a layout the compiler gives constant "
                          "weights); it has no gradient: differentiate the graph before it "
                          "is compiled", op="conv2d", loc=n.loc)
    geo = _geometry(n.attrs)
    return [apply(CONV2D_GRAD_INPUT, [g, w], {**geo, "input_shape": x.shape}),
            apply(CONV2D_GRAD_WEIGHT, [x, g], {**geo, "weight_shape": w.shape})]


def _grad_input_grad(n: Node, h: Node) -> list[Node | None]:
    g, w = n.inputs
    geo = _geometry(n.attrs)
    return [apply(CONV2D, [h, w], geo),
            apply(CONV2D_GRAD_WEIGHT, [h, g], {**geo, "weight_shape": w.shape})]


def _grad_weight_grad(n: Node, k: Node) -> list[Node | None]:
    x, g = n.inputs
    geo = _geometry(n.attrs)
    return [apply(CONV2D_GRAD_INPUT, [g, k], {**geo, "input_shape": x.shape}),
            apply(CONV2D, [x, k], geo)]


# The window of a convolution: pairs (height, width); pads ((top, bottom), (left, right)).
CONV_ATTRS = (
    AttrSpec("strides", Kind.INTS, low=1, length=2),
    AttrSpec("pads", Kind.INT_ROWS, low=0, length=2, width=2),
    AttrSpec("dilation", Kind.INTS, low=1, length=2),
    AttrSpec("groups", Kind.INT, low=1),
)
# () or (block, panel): the weights are stored in GEMM panels (`graphc.ops.panels`), set by
# the compiler on constant weights (`graphc.codegen.conv.prepack`).
WEIGHT_PANELS = AttrSpec("weight_panels", Kind.INTS, default=(), low=1)
CONV2D = OpDef("conv2d", "conv", 2, _conv_infer, _conv_ref, Fusion.OUT_FUSABLE, _conv_grad,
               anchor=Anchor.CONV, attrs=(*CONV_ATTRS, WEIGHT_PANELS),
               doc="2-D convolution, NCHW x OIHW -> NCHW (strides, pads, dilation, groups; "
                   "weight_panels: the compiler's prepacked weight layout)")
CONV2D_GRAD_INPUT = OpDef(
    "conv2d_grad_input", "conv", 2, _grad_input_infer, _grad_input_ref, Fusion.OPAQUE,
    _grad_input_grad, doc="gradient of conv2d w.r.t. its input: a transposed convolution",
    attrs=(*CONV_ATTRS, AttrSpec("input_shape", Kind.INTS, low=0, length=4)))
CONV2D_GRAD_WEIGHT = OpDef(
    "conv2d_grad_weight", "conv", 2, _grad_weight_infer, _grad_weight_ref, Fusion.OPAQUE,
    _grad_weight_grad, doc="gradient of conv2d w.r.t. its weights",
    attrs=(*CONV_ATTRS, AttrSpec("weight_shape", Kind.INTS, low=0, length=4)))
OPS: list[OpDef] = [CONV2D, CONV2D_GRAD_INPUT, CONV2D_GRAD_WEIGHT]


# --- builders -------------------------------------------------------------------------------

def conv_attrs(spatial: Sequence[int], kernel: Sequence[int], stride: Any, padding: Any,
               dilation: Any, groups: Any) -> dict[str, Any]:
    """Node attributes from builder arguments; `spatial`/`kernel` serve padding="same".

    Raises AttrError (without op/loc). Shapes of the wrong rank give placeholder values: the
    type rule then reports the rank error.
    """
    strides = pair(stride, "stride")
    dil = pair(dilation, "dilation")
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise AttrError(f"groups: expected a positive int, got {groups!r}")
    sp = (int(spatial[0]), int(spatial[1])) if len(spatial) == 2 else (1, 1)
    kn = (int(kernel[0]), int(kernel[1])) if len(kernel) == 2 else (1, 1)
    pads = normalize_padding(padding, sp, kn, strides, dil)
    return {"strides": strides, "pads": pads, "dilation": dil, "groups": int(groups)}


def _attrs_or_raise(op: str, loc: SourceLoc | None, spatial: Sequence[int],
                    kernel: Sequence[int], *args: Any) -> dict[str, Any]:
    try:
        return conv_attrs(spatial, kernel, *args)
    except GraphcError as exc:
        raise exc.with_context(op=op, loc=loc) from None


def conv2d(
    x: Operand,
    w: Operand,
    stride: int | Sequence[int] = 1,
    padding: Any = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    bias: Operand | None = None,
    name: str | None = None,
) -> Node:
    """2-D cross-correlation of x (N, C, H, W) with w (O, C/groups, kh, kw) -> (N, O, Ho, Wo).

    `stride`, `dilation`: an int or a pair. `padding`: an int, a pair (ph, pw),
    ((top, bottom), (left, right)), "valid" (no padding) or "same" (output ceil(H/stride);
    the odd pad goes to the bottom/right, as in TensorFlow and PyTorch). `groups` splits the
    channels into independent convolutions (groups == C is a depthwise convolution).
    `bias` (O,) is added per output channel (a separate add node, fusable into the conv).
    """
    loc = user_location()
    x_shape, w_shape = shape_of(x), shape_of(w)
    attrs = _attrs_or_raise("conv2d", loc, x_shape[2:], w_shape[2:], stride, padding,
                            dilation, groups)
    y = apply(CONV2D, [x, w], attrs, name=None if bias is not None else name)
    if bias is None:
        return y
    out_ch = y.shape[1]
    if shape_of(bias) != (out_ch,):
        shown = bias.type if isinstance(bias, Node) else f"shape {np.shape(bias)}"
        raise ShapeError(f"bias: expected shape (O,) = ({out_ch},), got {shown}", op="conv2d",
                         loc=loc)
    return _ew.add(y, reshape(bias, (out_ch, 1, 1)), name=name)


def conv2d_grad_input(
    g: Operand,
    w: Operand,
    input_shape: Sequence[int],
    stride: int | Sequence[int] = 1,
    padding: Any = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    name: str | None = None,
) -> Node:
    """The gradient of `conv2d(x, w, ...)` w.r.t. x, where x has shape `input_shape` and g
    is the output gradient; equivalently a transposed convolution of g with w. The other
    arguments mean what they mean for `conv2d` ("same" refers to `input_shape`)."""
    loc = user_location()
    in_shape = shape_arg("conv2d_grad_input", loc, input_shape, "input_shape")
    attrs = _attrs_or_raise("conv2d_grad_input", loc, in_shape[2:], shape_of(w)[2:], stride,
                            padding, dilation, groups)
    return apply(CONV2D_GRAD_INPUT, [g, w], {**attrs, "input_shape": in_shape}, name=name)


def conv2d_grad_weight(
    x: Operand,
    g: Operand,
    weight_shape: Sequence[int],
    stride: int | Sequence[int] = 1,
    padding: Any = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    name: str | None = None,
) -> Node:
    """The gradient of `conv2d(x, w, ...)` w.r.t. w (of shape `weight_shape`), given the
    output gradient g. The other arguments mean what they mean for `conv2d`."""
    loc = user_location()
    w_shape = shape_arg("conv2d_grad_weight", loc, weight_shape, "weight_shape")
    attrs = _attrs_or_raise("conv2d_grad_weight", loc, shape_of(x)[2:], w_shape[2:], stride,
                            padding, dilation, groups)
    return apply(CONV2D_GRAD_WEIGHT, [x, g], {**attrs, "weight_shape": w_shape}, name=name)
