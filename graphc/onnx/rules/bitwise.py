"""ONNX's bitwise ops (BitwiseAnd, BitwiseOr, BitwiseXor, BitwiseNot) in the declared width,
and BitCast.

graphc has no bit operations, so And/Or/Xor take each operand apart into its bits in the
declared type's two's complement (in int64: the value modulo 2^width, then one comparison
and subtraction per bit from the top), combine the bits as booleans and add the weights of
the bits that are set back up (the top bit weighs -2^(width-1) for signed types). Exact for
every value graphc holds; uint64, held in int64 with the same bits, is taken as int64. Not
is arithmetic: -x - 1 (signed, and uint64 as int64), 2^width - 1 - x (unsigned).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from graphc import builder as gb
from graphc.ir import Node
from graphc.onnx.convert import Context, Value, rule
from graphc.onnx.model import graphc_dtype
from graphc.ops import elementwise as ew

Inputs = list[Value | None]
# ONNX integer element type -> (bits, signed).
INT_BITS: dict[int, tuple[int, bool]] = {
    2: (8, False), 3: (8, True), 4: (16, False), 5: (16, True), 6: (32, True), 7: (64, True),
    12: (32, False), 13: (64, False), 21: (4, False), 22: (4, True), 25: (2, False),
    26: (2, True)}
_INT64_MIN = -(2 ** 63)


def _width(ctx: Context, x: Node) -> tuple[int, bool]:
    declared = ctx.input_types[0] if ctx.input_types else None
    if x.dtype.is_float or x.dtype.name == "bool" or declared not in INT_BITS:
        raise ctx.error(f"expected integer inputs of a declared integer type, got {x.dtype}")
    return INT_BITS[declared]


def _bits(x: Node, width: int) -> list[Node]:
    """The bits of `x`'s two's complement in `width` bits, top bit first, as bools."""
    x64 = ew.cast(x, "int64") if x.dtype.name != "int64" else x
    if width == 64:
        top = ew.less(x64, 0)
        low = ew.where(top, ew.sub(x64, _INT64_MIN), x64)  # x + 2^63 for negative x
    else:
        u = ew.mod(x64, 2 ** width)
        top = ew.greater_equal(u, 2 ** (width - 1))
        low = ew.where(top, ew.sub(u, 2 ** (width - 1)), u)
    bits = [top]
    for b in range(width - 2, -1, -1):
        bit = ew.greater_equal(low, 2 ** b)
        if b:
            low = ew.where(bit, ew.sub(low, 2 ** b), low)
        bits.append(bit)
    return bits


def _binary(op: str, combine: Callable[[Node, Node], Node]) -> None:
    def convert(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
        a, b = ctx.node(inputs[0]), ctx.node(inputs[1])
        if a.dtype != b.dtype:
            raise ctx.error(f"inputs of different dtypes ({a.dtype} and {b.dtype})")
        width, signed = _width(ctx, a)
        top_weight = -(2 ** (width - 1)) if signed or width == 64 else 2 ** (width - 1)
        out: Node | None = None
        for k, (bit_a, bit_b) in enumerate(zip(_bits(a, width), _bits(b, width))):
            weight = top_weight if k == 0 else 2 ** (width - 1 - k)
            term = ew.where(combine(bit_a, bit_b), gb.constant(np.int64(weight)),
                            gb.constant(np.int64(0)))
            out = term if out is None else ew.add(out, term)
        assert out is not None
        return [out if a.dtype.name == "int64" else ew.cast(out, a.dtype)]
    rule(op, 18)(convert)


_binary("BitwiseAnd", ew.logical_and)
_binary("BitwiseOr", ew.logical_or)
_binary("BitwiseXor", ew.not_equal)


@rule("BitwiseNot", 18)
def _bitwise_not(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x = ctx.node(inputs[0])
    width, signed = _width(ctx, x)
    if signed or width == 64:  # uint64 is held in int64: -x - 1 is its complement there
        return [ew.sub(ew.neg(x), 1)]
    return [ew.sub(2 ** width - 1, x)]


# --- BitCast -----------------------------------------------------------------------------------

# IEEE floats: ONNX element type -> (bits, exponent bits, mantissa bits).
FLOAT_BITS: dict[int, tuple[int, int, int]] = {10: (16, 5, 10), 16: (16, 8, 7), 1: (32, 8, 23),
                                               11: (64, 11, 52)}


def pow2(k: Node, lo: int, hi: int) -> Node:
    """2^k exactly, for an integer-valued float64 k in lo..hi: a product of the powers of
    two that k's binary digits select (its positive and negative parts apart, so that no
    partial product overflows or underflows)."""
    out: Node | None = None
    one = gb.constant(np.float64(1.0))
    for part, limit, sign in ((ew.maximum(k, 0.0), hi, 1), (ew.neg(ew.minimum(k, 0.0)), -lo, -1)):
        rest = part
        for j in range(max(limit, 1).bit_length() - 1, -1, -1):
            bit = ew.greater_equal(rest, float(2 ** j))
            rest = ew.where(bit, ew.sub(rest, float(2 ** j)), rest)
            with np.errstate(over="ignore"):  # 2^1024 is inf, beyond every k asked for
                step = np.ldexp(1.0, sign * 2 ** j)
            factor = ew.where(bit, float(step), one)
            out = factor if out is None else ew.mul(out, factor)
    assert out is not None
    return out


def float_bits(x: Node, width: int, exp_bits: int, man_bits: int) -> Node:
    """The bits of float x (held in any float dtype, its value exact in the format) as an
    unsigned int64 below 2^width; for width 64, as int64 with the same bits."""
    bias = 2 ** (exp_bits - 1) - 1
    xd = ew.cast(x, "float64") if x.dtype.name != "float64" else x
    negative = ew.logical_or(ew.less(xd, 0.0), ew.logical_and(
        ew.equal(xd, 0.0), ew.less(ew.reciprocal(xd), 0.0)))  # -0.0 has the sign bit
    a = ew.abs(xd)
    tiny = 2.0 ** (1 - bias)
    normal = ew.greater_equal(a, tiny)
    safe = ew.where(ew.logical_and(normal, ew.less(a, np.inf)), a, 1.0)
    e = ew.floor(ew.div(ew.log(safe), float(np.log(2.0))))
    # log's rounding can put e one off either way (near powers of two): check against 2^e.
    e = ew.where(ew.greater(pow2(e, -bias - 1, bias + 1), safe), ew.sub(e, 1.0), e)
    e = ew.where(ew.less_equal(pow2(ew.add(e, 1.0), -bias - 1, bias + 1), safe),
                 ew.add(e, 1.0), e)
    significand = ew.mul(safe, pow2(ew.neg(e), -bias, bias))  # in [1, 2)
    man = ew.sub(ew.mul(significand, float(2 ** man_bits)), float(2 ** man_bits))
    exp = ew.add(e, float(bias))
    half = (bias - 1 + man_bits) // 2  # subnormals: E = 0, mantissa a·2^(bias-1+man_bits)
    sub = ew.mul(ew.mul(a, 2.0 ** half), 2.0 ** (bias - 1 + man_bits - half))
    special = ew.logical_not(ew.less(a, np.inf))  # inf or NaN: E all ones
    man = ew.where(normal, man, sub)
    exp = ew.where(normal, exp, 0.0)
    top = float(2 ** exp_bits - 1)
    quiet = gb.constant(np.float64(2 ** (man_bits - 1)))
    man = ew.where(special, ew.where(ew.equal(a, np.inf), 0.0, quiet), man)
    exp = ew.where(special, top, exp)
    bits = ew.add(ew.mul(ew.cast(exp, "int64"), 2 ** man_bits), ew.cast(man, "int64"))
    sign = _INT64_MIN if width == 64 else 2 ** (width - 1)
    return ew.where(negative, ew.add(bits, sign), bits)


def _bits_float(u: Node, width: int, exp_bits: int, man_bits: int) -> Node:
    """The float64 value of the bits u (int64: unsigned below 2^width, or for width 64 the
    int64 with those bits)."""
    bias = 2 ** (exp_bits - 1) - 1
    if width == 64:
        negative = ew.less(u, 0)
        rest = ew.where(negative, ew.sub(u, _INT64_MIN), u)
    else:
        negative = ew.greater_equal(u, 2 ** (width - 1))
        rest = ew.where(negative, ew.sub(u, 2 ** (width - 1)), u)
    man_i = ew.mod(rest, 2 ** man_bits)
    man = ew.cast(man_i, "float64")
    exp = ew.div(ew.cast(ew.sub(rest, man_i), "float64"), float(2 ** man_bits))
    top = float(2 ** exp_bits - 1)
    scale = pow2(ew.sub(ew.maximum(exp, 1.0), float(bias + man_bits)),
                  1 - bias - man_bits, bias - man_bits)
    value = ew.mul(ew.where(ew.equal(exp, 0.0), man, ew.add(man, float(2 ** man_bits))), scale)
    special = ew.where(ew.equal(man, 0.0), np.inf, gb.constant(np.float64(np.nan)))
    value = ew.where(ew.equal(exp, top), special, value)
    return ew.where(negative, ew.neg(value), value)


@rule("BitCast", 26)
def _bitcast(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """The same bits read as element type `to` (of the same width): integers wrap between
    signed and unsigned; floats are taken apart into sign, exponent and mantissa (and put
    together) arithmetically, exactly, subnormals, infinities and signed zeros included
    (a NaN becomes the quiet NaN)."""
    x = ctx.node(inputs[0])
    source = ctx.input_types[0] if ctx.input_types else None
    target = int(attrs.get("to", 0))
    widths = {**{t: w for t, (w, _) in INT_BITS.items()}, 9: 8,
              **{t: w for t, (w, _, _) in FLOAT_BITS.items()}}
    if source not in widths or target not in widths or widths[source] != widths[target]:
        raise ctx.error(f"element types {source} -> {target}: expected integer, bool or "
                        "IEEE float types of one width")
    width = widths[source]
    if source in FLOAT_BITS:
        u = float_bits(x, *FLOAT_BITS[source])
    else:
        u = ew.cast(x, "int64") if x.dtype.name != "int64" else x
        if width < 64:
            u = ew.mod(u, 2 ** width)
    holder = graphc_dtype(target, f"BitCast node '{ctx.node_name}'")
    if target in FLOAT_BITS:
        return [ew.cast(_bits_float(u, *FLOAT_BITS[target]), holder)]
    if target == 9:
        return [ew.not_equal(u, 0)]
    if width < 64 and INT_BITS[target][1]:
        u = ew.where(ew.greater_equal(u, 2 ** (width - 1)), ew.sub(u, 2 ** width), u)
    return [u if holder.name == "int64" else ew.cast(u, holder)]
