"""ONNX's bitwise ops (BitwiseAnd, BitwiseOr, BitwiseXor, BitwiseNot) in the declared width.

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
