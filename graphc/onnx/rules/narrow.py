"""Element types narrower than graphc's: Cast, CastLike, QuantizeLinear, DequantizeLinear.

graphc computes ONNX's narrow types in a wider one (`model.WIDENED`): float8 (e4m3fn,
e4m3fnuz, e5m2, e5m2fnuz) and float4e2m1 in float32, int4/uint4/int2/uint2 in int32. A
value of such a type is held exactly; what makes it narrow is the conversion *into* it,
which these rules write with graphc's elementwise ops so that the graph holds exactly the
values ONNX would (the backend then converts outputs to the declared type losslessly):

- to a narrow float: round to nearest even at the format's spacing (found by comparing |x|
  with each power of two of the format's exponent range), then handle overflow as ONNX's
  `saturate` says: the largest finite value (saturate=1, and always for float4e2m1), else
  infinity (e5m2) or NaN (the formats without infinity);
- to a narrow integer: from a float, truncation toward zero with out-of-range values 0 (as
  ONNX's reference, through ml_dtypes, converts); from an integer, wrap-around.

Known values (shape arithmetic, constants) convert with the same rules in numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from graphc import builder as gb
from graphc.ir import Node
from graphc.onnx.convert import Context, Value, axis_of, dtype_of, rule
from graphc.onnx.model import NUMPY_DTYPES, OnnxError, graphc_dtype, onnx_numpy, require_onnx
from graphc.onnx.rules.bitwise import float_bits, pow2
from graphc.ops import elementwise as ew
from graphc.ops import layout, slicing

Inputs = list[Value | None]


@dataclass(frozen=True)
class FloatFormat:
    """A narrow float: `mantissa` stored bits, normal exponents `min_exp`..`max_exp`, the
    largest finite value, whether overflow without saturation gives infinity (else NaN),
    and whether it has no NaN at all (then overflow always saturates and NaN converts to
    -0, as ml_dtypes converts)."""

    mantissa: int
    min_exp: int
    max_exp: int
    largest: float
    has_inf: bool = False
    no_nan: bool = False


FLOATS: dict[int, FloatFormat] = {
    17: FloatFormat(3, -6, 8, 448.0),
    18: FloatFormat(3, -7, 7, 240.0),
    19: FloatFormat(2, -14, 15, 57344.0, has_inf=True),
    20: FloatFormat(2, -15, 15, 57344.0),
    23: FloatFormat(1, 0, 2, 6.0, no_nan=True),
}
# Narrow integers: (lowest, highest). uint8..int16 are wider than these but narrower than
# graphc's int32; QuantizeLinear clips into all of them.
INTS: dict[int, tuple[int, int]] = {21: (0, 15), 22: (-8, 7), 25: (0, 3), 26: (-2, 1)}
QUANT_INTS: dict[int, tuple[int, int]] = {2: (0, 255), 3: (-128, 127), 4: (0, 65535),
                                          5: (-32768, 32767), **INTS}


def round_float(x: Node, fmt: FloatFormat, saturate: bool) -> Node:
    """`x` (a float node) rounded to `fmt`'s values, as ONNX's Cast to it does."""
    ax = ew.abs(x)
    # The spacing of fmt's values around |x|: 2^(e - mantissa) for |x| in [2^e, 2^(e+1)),
    # the subnormal spacing below 2^min_exp; every step is a power of two, so x / spacing
    # and the product back are exact.
    spacing = gb.constant(np.asarray(2.0 ** (fmt.min_exp - fmt.mantissa), x.dtype.np))
    for e in range(fmt.min_exp + 1, fmt.max_exp + 1):
        spacing = ew.where(ew.greater_equal(ax, 2.0 ** e), 2.0 ** (e - fmt.mantissa), spacing)
    r = ew.mul(ew.round(ew.div(x, spacing)), spacing)
    if saturate or fmt.no_nan:
        over_hi, over_lo = fmt.largest, -fmt.largest
    elif fmt.has_inf:
        over_hi, over_lo = float("inf"), float("-inf")
    else:
        over_hi = over_lo = float("nan")
    r = ew.where(ew.greater(r, fmt.largest), over_hi, r)
    r = ew.where(ew.less(r, -fmt.largest), over_lo, r)
    if fmt.no_nan:
        r = ew.where(ew.not_equal(x, x), -0.0, r)
    return r


def round_float_np(x: np.ndarray, code: int, saturate: bool) -> np.ndarray:
    """`round_float` of a known array, to the format of ONNX element type `code`."""
    fmt = FLOATS[code]
    work = x.astype(np.float32)
    if saturate:
        work = np.clip(work, -fmt.largest, fmt.largest)  # NaN stays NaN
    target = onnx_numpy(code)
    if target is None:  # an ml_dtypes without this format: refuse rather than not round
        raise OnnxError(f"rounding to ONNX element type {code} needs ml_dtypes with that "
                        "type (pip install -U ml_dtypes)")
    with np.errstate(invalid="ignore", over="ignore"):
        return work.astype(target).astype(x.dtype)


def to_int(x: Node, lo: int, hi: int) -> Node:
    """`x` converted to the integers lo..hi (held in int32)."""
    if x.dtype.is_float:
        inside = ew.logical_and(ew.greater(x, lo - 1.0), ew.less(x, hi + 1.0))
        return ew.cast(ew.where(inside, x, 0.0), "int32")
    n = ew.cast(x, "int32") if x.dtype.name != "int32" else x
    return ew.add(ew.mod(ew.sub(n, lo), hi - lo + 1), lo)


def to_int_np(x: np.ndarray, lo: int, hi: int) -> np.ndarray:
    if x.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            inside = (x > lo - 1.0) & (x < hi + 1.0)
            return np.where(inside, x, 0.0).astype(np.int32)
    return ((x.astype(np.int64) - lo) % (hi - lo + 1) + lo).astype(np.int32)


def round_e8m0(x: Node, saturate: bool, mode: str) -> Node:
    """`x` as FLOAT8E8M0 (a power of two, 2^-127..2^127, no sign) the way ONNX's reference
    converts: float32's exponent field of |x| (zero and subnormals: 2^-127), moved up by
    the mantissa as `mode` (up, down, nearest) says; infinities and NaN, and without
    `saturate` a rounding past 2^127, give NaN."""
    bits = float_bits(ew.cast(x, "float32") if x.dtype.name != "float32" else x, 32, 8, 23)
    bits = ew.mod(bits, 2 ** 31)  # the sign is dropped
    man = ew.mod(bits, 2 ** 23)
    exp = ew.div(ew.cast(ew.sub(bits, man), "float64"), float(2 ** 23))
    if mode != "down":  # down truncates: the exponent field as it is
        if mode == "up":
            bump = ew.greater(man, 0)
        else:  # nearest: the guard bit, and round, sticky or the exponent's low bit
            low = ew.mod(man, 2 ** 22)
            rest = ew.logical_or(ew.greater_equal(low, 2 ** 21),
                                 ew.greater(ew.mod(low, 2 ** 21), 0))
            bump = ew.logical_and(ew.greater_equal(man, 2 ** 22),
                                  ew.logical_or(rest, ew.greater(exp, 0.0)))
        bump = ew.logical_and(bump, ew.less(exp, 254.0 if saturate else 255.0))
        exp = ew.where(bump, ew.add(exp, 1.0), exp)
    value = pow2(ew.sub(exp, 127.0), -127, 128)
    value = ew.where(ew.equal(exp, 255.0), gb.constant(np.float64(np.nan)), value)
    return ew.cast(value, x.dtype)


def cast_to(ctx: Context, x: Value | None, elem_type: int, saturate: bool = True,
            round_mode: str = "up") -> Value:
    """`x` converted to ONNX element type `elem_type`, in the graphc dtype that holds it."""
    if x is None:
        raise ctx.error("input 'input' is missing")
    if elem_type == 24:
        if round_mode not in ("up", "down", "nearest"):
            raise ctx.error(f"round_mode '{round_mode}' is not up, down or nearest")
        if isinstance(x, np.ndarray):
            helper = require_onnx().numpy_helper
            return np.asarray(helper.to_float8e8m0(x, saturate, round_mode), np.float32)
        n = ctx.node(x)
        return round_e8m0(n if n.dtype.is_float else ew.cast(n, "float32"), saturate,
                          round_mode)
    dtype = graphc_dtype(elem_type, f"{ctx.op_type} node '{ctx.node_name}'")
    fmt, span = FLOATS.get(elem_type), INTS.get(elem_type)
    if isinstance(x, np.ndarray):
        if fmt is not None:
            return round_float_np(x.astype(NUMPY_DTYPES[dtype]), elem_type, saturate)
        if span is not None:
            return to_int_np(x, *span)
        return x.astype(NUMPY_DTYPES[dtype])
    n = ctx.node(x)
    if fmt is not None:
        if not n.dtype.is_float:
            n = ew.cast(n, dtype)
        return round_float(n, fmt, saturate)
    if span is not None:
        return to_int(ew.cast(n, "int32") if n.dtype.name == "bool" else n, *span)
    return n if n.dtype == dtype else ew.cast(n, dtype)


@rule("Cast", 6)
def _cast(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    if "to" not in attrs:
        raise ctx.error("attribute 'to' is missing")
    return [cast_to(ctx, inputs[0], int(attrs["to"]), bool(attrs.get("saturate", 1)),
                    str(attrs.get("round_mode", "up")))]


@rule("CastLike", 15)
def _cast_like(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    target = inputs[1]
    if target is None:
        raise ctx.error("input 'target_type' is missing")
    # The declared type of `target_type` (a narrow type is held in a wider graphc dtype).
    declared = ctx.input_types[1] if len(ctx.input_types) > 1 else None
    if declared is not None:
        return [cast_to(ctx, inputs[0], declared, bool(attrs.get("saturate", 1)),
                        str(attrs.get("round_mode", "up")))]
    dtype = dtype_of(target)
    x = inputs[0]
    if isinstance(x, np.ndarray):
        return [x.astype(NUMPY_DTYPES[dtype])]
    n = ctx.node(x)
    return [n if n.dtype == dtype else ew.cast(n, dtype)]


# --- quantization ----------------------------------------------------------------------------

def _per_axis(ctx: Context, x: Node, p: Node, axis: int, block: int = 0) -> Node:
    """A quantization parameter shaped to broadcast against x: a scalar, one value per
    index of `axis` (1-D), or with `block` > 0 one per block of `block` indices along axis
    (p has x's rank, ceil(x.shape[axis] / block) there), repeated over its block."""
    if block:
        ax = axis_of(axis, x.ndim, ctx)
        blocks = -(-x.shape[ax] // block)
        want = [d if i != ax else blocks for i, d in enumerate(x.shape)]
        if list(p.shape) != want:
            raise ctx.error(f"blocked parameter {tuple(p.shape)}; expected {tuple(want)} "
                            f"(blocks of {block} along axis {ax})")
        lead, tail = want[:ax + 1], want[ax + 1:]
        p = layout.broadcast_to(layout.reshape(p, [*lead, 1, *tail]), [*lead, block, *tail])
        p = layout.reshape(p, [*want[:ax], blocks * block, *tail])
        if blocks * block != x.shape[ax]:
            p = slicing.slice(p, [0], [x.shape[ax]], axes=[ax])
        return p
    if p.ndim != 1 or p.shape[0] == 1:
        return p
    shape = [1] * x.ndim
    shape[axis_of(axis, x.ndim, ctx)] = p.shape[0]
    return layout.reshape(p, shape)


@rule("DequantizeLinear", 10)
def _dequantize(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """(x - zero_point) * scale, per tensor, per axis or per block; x of any integer or
    narrow float type (float8 zero points are 0 by ONNX's definition)."""
    x = ctx.node(inputs[0])
    scale = ctx.node(inputs[1])
    block = int(attrs.get("block_size", 0))
    axis = int(attrs.get("axis", 1))
    xf = ew.cast(x, scale.dtype)
    if len(inputs) > 2 and inputs[2] is not None:
        zp = _per_axis(ctx, x, ctx.node(inputs[2]), axis, block)
        xf = ew.sub(xf, ew.cast(zp, scale.dtype))
    return [ew.mul(xf, _per_axis(ctx, x, scale, axis, block))]


@rule("QuantizeLinear", 10)
def _quantize(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """Integers: round(x / scale) + zero_point, clipped to the type's range. Narrow floats:
    x / scale (+ zero_point for float4e2m1) rounded to the format, saturating as asked."""
    x, scale = ctx.node(inputs[0]), ctx.node(inputs[1])
    block = int(attrs.get("block_size", 0))
    saturate = bool(attrs.get("saturate", 1))
    axis = int(attrs.get("axis", 1))
    zp = inputs[2] if len(inputs) > 2 else None
    # The output type: the zero point's declared type, else output_dtype, else uint8.
    zp_type = ctx.input_types[2] if zp is not None and len(ctx.input_types) > 2 else None
    out_type = zp_type or int(attrs.get("output_dtype", 0)) or 2
    q = ew.div(x, _per_axis(ctx, x, scale, axis, block))
    zpn = (ew.cast(_per_axis(ctx, x, ctx.node(zp), axis, block), x.dtype) if zp is not None
           else None)
    if out_type in FLOATS:
        if zpn is not None and out_type == 23:
            q = ew.add(q, zpn)  # float8 zero points must be 0; ONNX ignores them
        return [round_float(q, FLOATS[out_type], saturate)]
    if out_type not in QUANT_INTS:
        raise ctx.error(f"output element type {out_type} is not one of the quantized types "
                        "(8/16/4/2-bit integers, float8, float4e2m1)")
    lo, hi = QUANT_INTS[out_type]
    q = ew.round(q)
    if zpn is not None:
        q = ew.add(q, zpn)
    return [ew.cast(ew.clip(q, float(lo), float(hi)), "int32")]
