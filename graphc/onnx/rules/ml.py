"""Ops of the ai.onnx.ml domain that act on plain tensors: Binarizer and
ArrayFeatureExtractor (the string and tree ops are not supported).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from graphc.onnx.convert import Context, Value, rule
from graphc.ops import elementwise as ew
from graphc.ops import gather, layout

Inputs = list[Value | None]


@rule("ai.onnx.ml.Binarizer", 1)
def _binarizer(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """1 where x > threshold, else 0, in x's type."""
    x = ctx.node(inputs[0])
    threshold = float(attrs.get("threshold", 0.0))
    zero = ew.mul(x, 0.0) if x.dtype.is_float else ew.sub(x, x)
    return [ew.where(ew.greater(x, threshold), ew.add(zero, 1), zero)]


@rule("ai.onnx.ml.ArrayFeatureExtractor", 1)
def _array_feature_extractor(ctx: Context, inputs: Inputs, attrs: dict[str, Any]
                             ) -> list[Value]:
    """The elements of x's last axis that the (flattened) indices select, as ONNX's
    reference shapes them: (..., count), a 1-D x giving (1, count)."""
    x, idx = ctx.node(inputs[0]), ctx.node(inputs[1])
    if x.ndim == 0:
        raise ctx.error("X must have rank >= 1")
    count = int(np.prod(idx.shape, dtype=np.int64))
    picked = gather.take(x, layout.reshape(idx, [count]), x.ndim - 1)
    return [picked if x.ndim > 1 else layout.reshape(picked, [1, count])]
