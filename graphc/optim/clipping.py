"""Gradient clipping, built as graph nodes.

All functions take lists of float nodes  of any shapes and possibly
mixed float dtypes. Reductions across tensors of different dtypes accumulate in the widest
dtype present (float64 if any input is float64), so no precision is lost silently.
"""

from __future__ import annotations

from collections.abc import Sequence

from graphc.errors import AttrError, GraphcError
from graphc.ir import DType, Node
from graphc.ops import elementwise as ew
from graphc.ops import reduce as rd

__all__ = ["clip_by_global_norm", "clip_by_value", "global_norm"]


def as_float_list(tensors: Node | Sequence[Node], what: str) -> list[Node]:
    items = [tensors] if isinstance(tensors, Node) else list(tensors)
    if not items:
        raise GraphcError("expected at least one tensor", op=what)
    for i, t in enumerate(items):
        if not isinstance(t, Node):
            raise GraphcError(f"item {i} is not a node: {t!r}", op=what)
        if not t.dtype.is_float:
            raise GraphcError(f"item {i} (%{t.name}) must be a float tensor, got {t.type}",
                              op=what, loc=t.loc)
    return items


def widest(tensors: Sequence[Node]) -> DType:
    return DType.float64 if any(t.dtype == DType.float64 for t in tensors) else DType.float32


def _to(x: Node, dtype: DType) -> Node:
    return x if x.dtype == dtype else ew.cast(x, dtype)


def sum_all(terms: Sequence[Node], dtype: DType) -> Node:
    total = _to(terms[0], dtype)
    for t in terms[1:]:
        total = ew.add(total, _to(t, dtype))
    return total


def clip_by_value(grads: Sequence[Node], clip_min: float, clip_max: float) -> list[Node]:
    """Each element clamped to [clip_min, clip_max]: ``min(max(g, clip_min), clip_max)``."""
    items = as_float_list(grads, "clip_by_value")
    lo, hi = float(clip_min), float(clip_max)
    if not lo <= hi:
        raise AttrError(f"clip_min ({lo}) must be <= clip_max ({hi})", op="clip_by_value")
    return [ew.clip(g, lo, hi) for g in items]


def global_norm(tensors: Sequence[Node]) -> Node:
    """``sqrt(sum_i sum(t_i ** 2))`` over all tensors, a scalar of the widest dtype."""
    items = as_float_list(tensors, "global_norm")
    dtype = widest(items)
    return ew.sqrt(sum_all([rd.sum(ew.square(t)) for t in items], dtype))


def clip_by_global_norm(grads: Sequence[Node], clip_norm: float) -> tuple[list[Node], Node]:
    """Scale all gradients together so that their global norm is at most `clip_norm`.

    ``g_i * clip_norm / max(global_norm, clip_norm)`` (tf.clip_by_global_norm, Keras
    ``global_clipnorm``); returns the scaled list and the global norm before clipping.
    Unlike torch.nn.utils.clip_grad_norm_ there is no epsilon in the denominator.
    """
    items = as_float_list(grads, "clip_by_global_norm")
    c = float(clip_norm)
    if not c > 0:
        raise AttrError(f"clip_norm must be > 0, got {clip_norm!r}", op="clip_by_global_norm")
    norm = global_norm(items)
    scale = ew.div(c, ew.maximum(norm, c))
    return [ew.mul(g, _to(scale, g.dtype)) for g in items], norm
