"""Attention masks of the layers: a user's `mask` and `padding_mask` checked against the
scores' shape (errors name the layer and the argument) and combined into one mask for
`gc.attention`. Booleans keep the True positions; float masks are added to the scores.
"""

from __future__ import annotations

import numpy as np

from graphc.builder import Operand
from graphc.errors import DTypeError, ShapeError
from graphc.ir import DType, Node
from graphc.ops import elementwise as ew
from graphc.ops import layout
from graphc.ops.common import as_node

__all__ = ["attention_mask"]


def _mask_operand(owner: str, what: str, mask: Operand, dtype: DType) -> Node:
    if not isinstance(mask, Node) and np.asarray(mask).dtype.kind == "f":
        mask = np.asarray(mask, dtype.np)  # a literal additive mask takes the model's dtype
    node = as_node(mask)
    if node.dtype != DType.bool and node.dtype != dtype:
        raise DTypeError(f"{what}: expected bool (True: attend) or an additive {dtype.value} "
                         f"mask, got {node.type}", op=owner)
    return node


def _additive(m: Node, dtype: DType) -> Node:
    if m.dtype != DType.bool:
        return m
    return ew.where(m, np.zeros((), dtype.np), np.array(-np.inf, dtype.np))


def attention_mask(owner: str, mask: Operand | None, padding_mask: Operand | None,
                   dtype: DType, scores: tuple[int, int, int, int]) -> Node | None:
    """One mask for `gc.attention` on scores (B, H, T, S) from a `mask` (T, S), (B, T, S) or
    (B, H, T, S) (each dim may be 1) and a `padding_mask` (B, S) (True: a real key); None if
    neither is given. Shapes are checked here, so errors name the layer and the argument."""
    batch, _, tq, tk = scores
    parts: list[Node] = []
    if mask is not None:
        m = _mask_operand(owner, "mask", mask, dtype)
        want = {2: (tq, tk), 3: (batch, tq, tk), 4: scores}.get(m.ndim)
        if want is None or any(d not in (1, w) for d, w in zip(m.shape, want)):
            raise ShapeError(f"mask: expected (T, S) = ({tq}, {tk}), (B, T, S) = ({batch}, "
                             f"{tq}, {tk}) or (B, H, T, S) = {scores}, each dim or 1; got "
                             f"{m.type}", op=owner)
        parts.append(layout.expand_dims(m, 1) if m.ndim == 3 else m)
    if padding_mask is not None:
        p = _mask_operand(owner, "padding_mask", padding_mask, dtype)
        if p.shape != (batch, tk):
            raise ShapeError(f"padding_mask: expected (B, S) = ({batch}, {tk}), got {p.type}",
                             op=owner)
        parts.append(layout.reshape(p, (batch, 1, 1, tk)))
    if len(parts) < 2:
        return parts[0] if parts else None
    if all(p.dtype == DType.bool for p in parts):
        return ew.logical_and(parts[0], parts[1])
    return ew.add(_additive(parts[0], dtype), _additive(parts[1], dtype))
