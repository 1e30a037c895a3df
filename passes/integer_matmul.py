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

ONNX's ConvInteger (`quantize_dynamic` of a CNN) imports as a float64 convolution of the
centered operands cast to int32 (exact below 2^53), about 3.4x the time of the float
model on ResNet-18. The same proof makes it the int8 GEMM on im2col rows (`im2col.py`):

    cast(conv2d(f64(A) [- f64(Z)], W), int32)               W a constant of int8 integers
 -> transpose(matmul_integer(taps(u8(pad(A - Z) + Z)), W (kh*kw*C, O) [, u8(Z)]), NCHW)

padding A - Z with zeros, as the float convolution pads its centered input, then adding Z
back: the padded taps hold Z and contribute nothing.

Runs after `constant_fold`, which turns B (an initializer minus its zero point) into the
constant this pass needs. Idempotent: what it rewrites is no longer an int32 matmul or a
float64 convolution.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from graphc.ir import DType, Graph, Node, Signature
from graphc.ops import registry

from . import im2col
from .rewrite import PassContext, PassDef, Pending, Rebuilder

__all__ = ["byte_bounds", "integer_matmul", "weight_value"]

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


# Ops a weight's value is computed through (an initializer widened and centered, above
# constant_fold's size limit: ResNet-18's 3x3 weights have up to 2.4M elements).
_WEIGHT_OPS = frozenset({"cast", "sub", "add", "reshape", "broadcast_to", "transpose"})


def weight_value(node: Node, rb: Rebuilder, depth: int = 6) -> np.ndarray | None:
    """The value of a weight computed from constants through `_WEIGHT_OPS` (references of
    the ops, as constant_fold computes them), else None."""
    value = rb.value(node)
    if value is not None or depth == 0 or node.op not in _WEIGHT_OPS:
        return value
    inputs = [weight_value(i, rb, depth - 1) for i in node.inputs]
    if any(v is None for v in inputs):
        return None
    result = registry.get(node.op).evaluate_reference(inputs, node.attrs, node.type)
    return np.asarray(result).astype(node.dtype.np, copy=False)


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
    weights = weight_value(b, rb)
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


def _integer_source(x: Node) -> tuple[Node, Node | None] | None:
    """(A, Z) of a float convolution input f64(A) - f64(Z) or f64(A), A and Z integers."""
    def uncast(n: Node) -> Node | None:
        widened = n.op == "cast" and n.inputs[0].dtype in _INT_RANGES
        return n.inputs[0] if widened else None

    if x.op == "sub":
        act, zero = (uncast(i) for i in x.inputs)
        return (act, zero) if act is not None and zero is not None else None
    act = uncast(x)
    return None if act is None else (act, None)


def _as_int32(node: Node, rb: Rebuilder, at: Pending) -> Node:
    return node if node.dtype == DType.int32 else rb.emit("cast", (node,),
                                                            {"dtype": DType.int32}, at=at)


def _conv_rewrite(p: Pending, rb: Rebuilder) -> Node | None:
    """The int8 GEMM form of cast(conv2d(...), int32) `p` (module docstring), or None."""
    conv = p.inputs[0]
    if (conv.op != "conv2d" or conv.dtype != DType.float64 or conv.attrs["groups"] != 1
            or conv.attrs["weight_panels"]):
        return None
    x, w = conv.inputs
    weights = weight_value(w, rb)
    if (weights is None or weights.size == 0 or weights.min() < -128 or weights.max() > 127
            or not np.array_equal(weights, np.round(weights))):
        return None
    source = _integer_source(x)
    if source is None:
        return None
    act, zero = source
    if act.shape != x.shape or (zero is not None and zero.size != 1):
        return None
    offset = _offset([act] if zero is None else [act, zero], rb)
    if offset is None:
        return None

    def emit(op: str, inputs: Sequence[Node], attrs: dict[str, Any]) -> Node:
        return rb.emit(op, inputs, attrs, at=p)

    act = _as_int32(act, rb, p)
    if zero is not None:
        zero = _as_int32(zero if zero.ndim == 0 else emit("reshape", (zero,), {"shape": ()}),
                         rb, p)
        act = emit("sub", (act, zero), {})
        shift = emit("add", (zero, rb.constant(np.int32(offset), at=p)), {}) if offset else zero
    else:
        shift = rb.constant(np.int32(offset), at=p)
    # Centered, padded with zeros as the float convolution pads, then back in [0, 255].
    padded = im2col.channels_last_padded(emit, act, w.shape, conv.attrs)
    if zero is not None or offset:
        padded = emit("add", (padded, shift), {})
    rows = im2col.gather_taps(emit, emit("cast", (padded,), {"dtype": DType.uint8}), w.shape,
                              conv.attrs, conv.shape)
    operands = [rows, rb.constant(im2col.weight_matrix(weights.astype(np.int8)), at=p)]
    if zero is not None or offset:
        operands.append(emit("cast", (shift,), {"dtype": DType.uint8}))
    acc = emit("matmul_integer", operands, {"transpose_a": False, "transpose_b": False})
    return rb.emit("transpose", (acc,), {"perm": (0, 3, 1, 2)}, at=p, name=p.name)


def integer_matmul(graph: Graph, sig: Signature, ctx: PassContext) -> tuple[Graph, Signature]:
    """Rewrite every int32 matmul and int32 cast of a float64 convolution whose operands
    qualify (module docstring)."""

    def visit(p: Pending, rb: Rebuilder) -> Node:
        node = None
        if p.op == "matmul" and p.dtype == DType.int32 and not p.attrs["b_panels"]:
            node = _rewrite(p, rb)
        elif p.op == "cast" and p.dtype == DType.int32:
            node = _conv_rewrite(p, rb)
        if node is not None:
            ctx.hit(integer_matmul)
            return node
        return rb.keep(p)

    return Rebuilder(graph, visit).run().finish(sig)


PASS = PassDef("integer_matmul", integer_matmul,
               "int32 matmuls and convolutions of 8-bit values (imported MatMulInteger, "
               "ConvInteger) as the int8 GEMM",
               enabled_by=frozenset({"constant_fold"}))
