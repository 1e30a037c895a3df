"""What a pass can prove about a node's values without running the graph.

`value_bounds(node, value)` (`value(n)`: a constant node's array, else None): an interval
holding every value of `node`, from its dtype, a constant's values, and through the ops of
a quantize (minimum / maximum: its clip; round / floor / ceil; casts that cannot wrap) and
layout ops that keep values (reshape, broadcast_to). Unknown ends are infinite. NaN is not
an interval's value: a NaN input of a clip propagates as it does, which is what ONNX leaves
undefined.

`weight_value(node, value)`: the array of a weight computed from constants through casts,
adds, subtractions and layout ops (an ONNX initializer widened and centered by its zero
point), with the ops' references, above `constant_fold`'s size limit (ResNet-18's 3x3
weights have up to 2.4M elements) but never a broadcast that would materialize much more
than its input.

Both are helpers of `integer_matmul` (not passes).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from graphc.ir import DType, Node

from .constant_fold import reference_value

__all__ = ["Bounds", "Known", "value_bounds", "weight_value"]

Bounds = tuple[float, float]
Known = Callable[[Node], "np.ndarray | None"]  # a constant node's array, else None
_INT_RANGES: dict[DType, Bounds] = {
    DType.uint8: (0, 255), DType.int8: (-128, 127), DType.bool: (0, 1),
    DType.int32: (-2.0**31, 2.0**31 - 1), DType.int64: (-2.0**63, 2.0**63 - 1)}
INTEGER_DTYPES = frozenset(_INT_RANGES)
# Casts to these keep every integer of [-2^24, 2^24] as it is (bf16 does not).
_WIDE = frozenset({DType.uint8, DType.int8, DType.int32, DType.int64, DType.float32,
                   DType.float64})
_ROUNDING = frozenset({"round", "floor", "ceil"})
_SAME_VALUES = frozenset({"reshape", "broadcast_to"})
_THROUGH = _ROUNDING | _SAME_VALUES | {"minimum", "maximum", "cast"}
_DEPTH = 16  # how far up a chain of clips and casts the bounds are looked for


def value_bounds(node: Node, value: Known) -> Bounds:
    """An interval holding every value of `node` (module docstring)."""
    memo: dict[int, Bounds] = {}  # by id: a Node's == builds an op

    def bounds(n: Node, depth: int) -> Bounds:
        key = id(n)
        if key not in memo:
            memo[key] = _bounds(n, value, depth, bounds)
        return memo[key]

    return bounds(node, _DEPTH)


def _bounds(node: Node, known: Known, depth: int,
            inner_bounds: Callable[[Node, int], Bounds]) -> Bounds:
    lo, hi = _INT_RANGES.get(node.dtype, (-math.inf, math.inf))
    if node.dtype == DType.bfloat16:
        return lo, hi  # its constants are stored as bit patterns
    value = known(node)
    if value is not None:
        if value.size == 0 or (value.dtype.kind == "f" and not np.isfinite(value).all()):
            return lo, hi
        return float(value.min()), float(value.max())
    if depth == 0 or node.op not in _THROUGH:
        return lo, hi
    inner = [inner_bounds(i, depth - 1) for i in node.inputs]
    if node.op in _SAME_VALUES:
        return inner[0]
    if node.op == "minimum":
        return max(lo, min(b[0] for b in inner)), min(hi, min(b[1] for b in inner))
    if node.op == "maximum":
        return max(lo, max(b[0] for b in inner)), min(hi, max(b[1] for b in inner))
    if node.op in _ROUNDING:
        return _outward(*inner[0])
    if node.dtype in _WIDE:  # a cast
        src_lo, src_hi = inner[0]
        if lo <= src_lo and src_hi <= hi and max(-src_lo, src_hi) <= 2**24:
            return _outward(src_lo, src_hi)  # no wrap-around, no rounding to another integer
    return lo, hi


def _outward(lo: float, hi: float) -> Bounds:
    """[lo, hi] widened to whole numbers (infinite ends stay)."""
    return (math.floor(lo) if math.isfinite(lo) else lo,
            math.ceil(hi) if math.isfinite(hi) else hi)


# Ops a weight's value is computed through.
_WEIGHT_OPS = frozenset({"cast", "sub", "add", "reshape", "broadcast_to", "transpose"})
_MAX_GROWTH = 4  # a broadcast_to may make at most this many times its input's elements


def weight_value(node: Node, known: Known, depth: int = 6) -> np.ndarray | None:
    """The array of a weight computed from constants (module docstring), else None."""
    value = known(node)
    if value is not None or depth == 0 or node.op not in _WEIGHT_OPS:
        return value
    if node.op == "broadcast_to" and node.size > _MAX_GROWTH * max(node.inputs[0].size, 1):
        return None
    inputs = [weight_value(i, known, depth - 1) for i in node.inputs]
    if any(v is None for v in inputs):
        return None
    return reference_value(node, inputs)  # as constant_fold computes a value
