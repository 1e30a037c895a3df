"""Integer and quantized linear algebra: MatMulInteger, ConvInteger, QLinearMatMul,
QLinearConv, DynamicQuantizeLinear.

As ONNX's reference computes them: the integer inputs minus their zero points are
multiplied (matmul in int32; convolution in float64, exact for any sum below 2^53, through
the Conv rule), then the quantized ops rescale the int32 accumulator by
x_scale * w_scale / y_scale, add the output zero point, round half to even and clip to the
output type's range. A per-channel w_zero_point/w_scale (one per output channel) applies
along the weight's first axis. The 8-bit values are held in int32 (`model.WIDENED`).
"""

from __future__ import annotations

from typing import Any

from graphc.ir import Node
from graphc.onnx.convert import Context, Value, lookup, rule
from graphc.onnx.rules.narrow import QUANT_INTS
from graphc.ops import elementwise as ew
from graphc.ops import layout, linalg, reduce

Inputs = list[Value | None]


def _centered(ctx: Context, inputs: Inputs, i: int, zp_at: int, dtype: str,
              per_channel: bool = False) -> Node:
    """Input `i` minus its zero point (input `zp_at`, if given), as `dtype`. A 1-D zero
    point of one value per output channel (`per_channel`) applies along axis 0."""
    x = ctx.node(inputs[i])
    x = ew.cast(x, dtype) if x.dtype.name != dtype else x
    zp = inputs[zp_at] if len(inputs) > zp_at else None
    if zp is None:
        return x
    z = ctx.node(zp)
    z = ew.cast(z, dtype) if z.dtype.name != dtype else z
    if per_channel and z.ndim == 1 and z.shape[0] == x.shape[0] and z.shape[0] > 1:
        z = layout.reshape(z, [z.shape[0]] + [1] * (x.ndim - 1))
    return ew.sub(x, z)


def _requantize(ctx: Context, acc: Node, scale: Node, inputs: Inputs, zp_at: int,
                type_at: int) -> Node:
    """round(acc * scale + zero point (input `zp_at`)), clipped to the declared type of
    input `type_at` (the output zero point's, else the data input's)."""
    declared = ctx.input_types[type_at] if len(ctx.input_types) > type_at else None
    if declared not in QUANT_INTS:
        raise ctx.error(f"the output type must be an 8/16/4/2-bit integer; got element type "
                        f"{declared}")
    lo, hi = QUANT_INTS[declared]
    y = ew.mul(ew.cast(acc, "float64"), ew.cast(scale, "float64"))
    zp = inputs[zp_at] if len(inputs) > zp_at else None
    if zp is not None:
        y = ew.add(y, ew.cast(ctx.node(zp), "float64"))
    return ew.cast(ew.clip(ew.round(y), float(lo), float(hi)), "int32")


def _out_type_at(ctx: Context, inputs: Inputs, zp_at: int, data_at: int) -> int:
    return zp_at if len(inputs) > zp_at and inputs[zp_at] is not None else data_at


@rule("MatMulInteger", 10)
def _matmul_integer(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    a = _centered(ctx, inputs, 0, 2, "int32")
    b = _centered(ctx, inputs, 1, 3, "int32")
    return [linalg.matmul(a, b)]


@rule("QLinearMatMul", 10)
def _qlinear_matmul(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """Inputs: a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point."""
    if len(inputs) < 8:
        raise ctx.error(f"expected 8 inputs, got {len(inputs)}")
    a = _centered(ctx, inputs, 0, 2, "int32")
    b = _centered(ctx, inputs, 3, 5, "int32")
    sa, sb, sy = ctx.node(inputs[1]), ctx.node(inputs[4]), ctx.node(inputs[6])
    scale = ew.div(ew.mul(sa, sb), sy)
    return [_requantize(ctx, linalg.matmul(a, b), scale, inputs, 7,
                        _out_type_at(ctx, inputs, 7, 0))]


def _conv(ctx: Context, x: Node, w: Node, bias: Node | None, attrs: dict[str, Any]) -> Node:
    """The float64 convolution of ONNX's Conv rule (pads, strides, groups, ...)."""
    conv = lookup("Conv", ctx.opset)
    if conv is None:  # pragma: no cover - Conv has a rule from opset 1
        raise ctx.error("no Conv rule")
    out = conv(ctx, [x, w] + ([bias] if bias is not None else []), attrs)[0]
    assert isinstance(out, Node)
    return out


@rule("ConvInteger", 10)
def _conv_integer(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x = _centered(ctx, inputs, 0, 2, "float64")
    w = _centered(ctx, inputs, 1, 3, "float64", per_channel=True)
    return [ew.cast(_conv(ctx, x, w, None, attrs), "int32")]


@rule("QLinearConv", 10)
def _qlinear_conv(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """Inputs: x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point,
    and an optional int32 bias (added to the accumulator)."""
    if len(inputs) < 8:
        raise ctx.error(f"expected at least 8 inputs, got {len(inputs)}")
    x = _centered(ctx, inputs, 0, 2, "float64")
    w = _centered(ctx, inputs, 3, 5, "float64", per_channel=True)
    bias = inputs[8] if len(inputs) > 8 else None
    bias_node = ew.cast(ctx.node(bias), "float64") if bias is not None else None
    acc = _conv(ctx, x, w, bias_node, attrs)
    sw = ctx.node(inputs[4])
    if sw.ndim == 1 and sw.shape[0] > 1:  # one scale per output channel
        sw = layout.reshape(sw, [1, sw.shape[0]] + [1] * (acc.ndim - 2))
    scale = ew.div(ew.mul(ctx.node(inputs[1]), sw), ctx.node(inputs[6]))
    return [_requantize(ctx, acc, scale, inputs, 7, _out_type_at(ctx, inputs, 7, 0))]


@rule("DynamicQuantizeLinear", 11)
def _dynamic_quantize(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """uint8 quantization over x's range widened to include 0: scale = (max - min) / 255
    (1 if max == min), zero point = round(clip(-min / scale, 0, 255)); y, scale, zero point."""
    x = ctx.node(inputs[0])
    if not x.dtype.is_float:
        raise ctx.error(f"x must be float, got {x.dtype}")
    hi = ew.maximum(reduce.max(x), 0.0)
    lo = ew.minimum(reduce.min(x), 0.0)
    span = ew.sub(hi, lo)
    scale = ew.div(ew.where(ew.equal(span, 0.0), 1.0, span), 255.0)
    zp = ew.round(ew.clip(ew.neg(ew.div(lo, scale)), 0.0, 255.0))
    y = ew.clip(ew.add(ew.round(ew.div(x, scale)), zp), 0.0, 255.0)
    return [ew.cast(y, "int32"), scale, ew.cast(zp, "int32")]

