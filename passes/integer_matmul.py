"""integer_matmul: int32 matmuls of 8-bit values onto the u8 x s8 GEMM (`matmul_integer`).

ONNX holds 8-bit tensors widened to int32 once imported (`graphc.onnx.rules.qlinear`), so
ONNX's MatMulInteger -- what ONNX Runtime's `quantize_dynamic` writes for every MatMul:
DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul -- and QLinearMatMul arrive as int32
``matmul``s of widened operands, which the compiler would run as a generic integer GEMM
(2.2x the time of the int8 kernel on a quantized MLP). This pass rewrites

    matmul(A, B)  or  matmul(A - Z, B)                                          int32
 -> matmul_integer(cast(A, uint8), int8(B) [, cast(Z, uint8)])

where every value of A and of the scalar Z provably lies in [0, 255] (`byte_bounds`:
uint8 tensors, clips into that range and the roundings and integer casts of such values,
constants) and B is a 2-D constant within int8's range; int8 activations (both in
[-128, 127], as ONNX Runtime's static QOperator models have) are shifted into uint8,
A - Z = (A + 128) - (Z + 128), Z = 0 without a zero point. The sums are the same int32
sums, exactly: A's values are integers in [0, 255] both ways (a float in [0, 255]
truncates to the same integer as int32 and as uint8). The dequantization that follows
(cast to float, scales) then fuses into the GEMM's epilogue, and a constant B is stored
in the GEMM's panels (`codegen/gemm/prepack.py`). NaN activations, which ONNX leaves
undefined, give unspecified integers either way.

Runs after `constant_fold`, which turns B (an initializer minus its zero point) into the
constant this pass needs. Idempotent: what it rewrites is no longer an int32 matmul.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from graphc.ir import DType, Graph, Node, Signature

from .rewrite import PassContext, PassDef, Pending, Rebuilder

__all__ = ["byte_bounds", "integer_matmul"]

Bounds = tuple[float, float]
_INT_RANGES: dict[DType, Bounds] = {
    DType.uint8: (0, 255), DType.int8: (-128, 127), DType.bool: (0, 1),
    DType.int32: (-2.0**31, 2.0**31 - 1), DType.int64: (-2.0**63, 2.0**63 - 1)}
# Casts to these keep every integer in [0, 255] as it is.
_WIDE = frozenset({DType.uint8, DType.int32, DType.int64, DType.float32, DType.float64})
_ROUNDING = frozenset({"round", "floor", "ceil"})
_THROUGH = _ROUNDING | {"minimum", "maximum", "cast"}
_DEPTH = 16  # how far up a chain of clips and casts the bounds are looked for


def byte_bounds(node: Node, rb: Rebuilder) -> Bounds:
    """An interval holding every value of `node` (infinite ends where nothing is known):
    from its dtype, a constant's values, and through minimum / maximum (the clip of a
    quantize), rounding, and casts that keep the interval representable."""
    memo: dict[int, Bounds] = {}  # by id: a Node's == builds an op

    def bounds(n: Node, depth: int) -> Bounds:
        key = id(n)
        if key not in memo:
            memo[key] = _bounds(n, rb, depth, bounds)
        return memo[key]

    return bounds(node, _DEPTH)


def _bounds(node: Node, rb: Rebuilder, depth: int,
            inner_bounds: Callable[[Node, int], Bounds]) -> Bounds:
    lo, hi = _INT_RANGES.get(node.dtype, (-math.inf, math.inf))
    value = rb.value(node)
    if value is not None:
        if value.size == 0 or (value.dtype.kind == "f" and not np.isfinite(value).all()):
            return lo, hi
        return float(value.min()), float(value.max())
    if depth == 0 or node.op not in _THROUGH:
        return lo, hi
    inner = [inner_bounds(i, depth - 1) for i in node.inputs]
    if node.op == "minimum":
        return max(lo, min(b[0] for b in inner)), min(hi, min(b[1] for b in inner))
    if node.op == "maximum":
        return max(lo, max(b[0] for b in inner)), min(hi, max(b[1] for b in inner))
    if node.op in _ROUNDING:
        return _outward(*inner[0])
    if node.dtype in _WIDE:  # a cast
        src_lo, src_hi = inner[0]
        if lo <= src_lo and src_hi <= hi:  # no wrap-around: truncation stays inside
            return _outward(src_lo, src_hi)
    return lo, hi


def _outward(lo: float, hi: float) -> Bounds:
    """[lo, hi] widened to whole numbers (infinite ends stay)."""
    return (math.floor(lo) if math.isfinite(lo) else lo,
            math.ceil(hi) if math.isfinite(hi) else hi)


def _offset(nodes: list[Node], rb: Rebuilder) -> int | None:
    """What to add to every node of `nodes` to put all their values in [0, 255]: 0 (uint8
    values), 128 (int8 values: A - Z = (A + 128) - (Z + 128) exactly), else None."""
    bounds = [byte_bounds(n, rb) for n in nodes]
    if all(0 <= lo and hi <= 255 for lo, hi in bounds):
        return 0
    if all(-128 <= lo and hi <= 127 for lo, hi in bounds):
        return 128
    return None


def _as_uint8(node: Node, offset: int, rb: Rebuilder, at: Pending) -> Node:
    """`node` + `offset` (values in [0, 255]) as uint8. A float cast to an integer type
    is cast to uint8 straight away (the same truncation; a float -> int32 -> uint8 chain
    costs 6x the vectorized float -> uint8 conversion in the quantize's kernel on AVX2)."""
    if node.dtype == DType.uint8 and not offset:
        return node
    if node.op == "cast" and node.inputs[0].dtype in (DType.float32, DType.float64):
        node = node.inputs[0]
    if offset:
        if node.dtype in (DType.int8, DType.uint8, DType.bool):  # + 128 would wrap
            node = rb.emit("cast", (node,), {"dtype": DType.int32}, at=at)
        shift = rb.constant(np.array(offset, node.dtype.np), at=at)
        node = rb.emit("add", (node, shift), at=at)
    return rb.emit("cast", (node,), {"dtype": DType.uint8}, at=at)


def _rewrite(p: Pending, rb: Rebuilder) -> Node | None:
    """The matmul_integer form of int32 matmul `p`, or None if it has none."""
    a, b = p.inputs
    weights = rb.value(b)
    if (weights is None or b.ndim != 2 or a.ndim < 2 or weights.size == 0
            or weights.min() < -128 or weights.max() > 127
            or (p.attrs["transpose_a"] and a.ndim > 2)):
        return None
    act, zero = a, None
    if a.op == "sub" and _offset([a], rb) is None:
        act, zero = a.inputs
        if act.shape != a.shape or (zero.ndim > 0 and zero.size != 1):
            return None  # a zero point per row (ONNX allows it): not the GEMM's scalar
    offset = _offset([act] if zero is None else [act, zero], rb)
    if offset is None:
        return None
    operands = [_as_uint8(act, offset, rb, p),
                rb.constant(np.ascontiguousarray(weights, np.int8), at=p)]
    if zero is not None and zero.ndim > 0:
        zero = rb.emit("reshape", (zero,), {"shape": ()}, at=p)
    if zero is not None:
        operands.append(_as_uint8(zero, offset, rb, p))
    elif offset:
        operands.append(rb.constant(np.array(offset, np.uint8), at=p))
    return rb.emit("matmul_integer", operands,
                   {"transpose_a": p.attrs["transpose_a"],
                    "transpose_b": p.attrs["transpose_b"]}, at=p, name=p.name)


def integer_matmul(graph: Graph, sig: Signature, ctx: PassContext) -> tuple[Graph, Signature]:
    """Rewrite every int32 matmul whose operands qualify (module docstring)."""

    def visit(p: Pending, rb: Rebuilder) -> Node:
        if p.op == "matmul" and p.dtype == DType.int32 and not p.attrs["b_panels"]:
            node = _rewrite(p, rb)
            if node is not None:
                ctx.hit(integer_matmul)
                return node
        return rb.keep(p)

    return Rebuilder(graph, visit).run().finish(sig)


PASS = PassDef("integer_matmul", integer_matmul,
               "int32 matmuls of 8-bit values (imported MatMulInteger) as the int8 GEMM",
               enabled_by=frozenset({"constant_fold"}))
