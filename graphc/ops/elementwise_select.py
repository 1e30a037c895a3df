"""Selection: the ternary op `where` (broadcasting), and `clip` (a composite).

`where`'s gradient routes g to `a` or `b` by `cond` (none to `cond`), summed over broadcast
axes; `clip` is a maximum and a minimum node.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from graphc.builder import Operand, apply, constant
from graphc.errors import DTypeError
from graphc.ir import Attrs, DType, Node, TensorType
from graphc.ir.opdef import Fusion, OpDef
from graphc.ops import elementwise_binary as _binary_ops
from graphc.ops.typecheck import broadcast_shapes, same_dtype

__all__ = ["clip", "where"]


def _where_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    cond, a, b = types
    if cond.dtype != DType.bool:
        raise DTypeError(f"cond: expected bool, got {cond}")
    dtype = same_dtype((a, b), ("a", "b"))
    return TensorType(broadcast_shapes(types, ("cond", "a", "b")), dtype)


def _where_grad(n: Node, g: Node) -> list[Node | None]:
    cond, a, b = n.inputs
    return [None, _binary_ops.unbroadcast(where(cond, g, 0.0), a.shape),
            _binary_ops.unbroadcast(where(cond, 0.0, g), b.shape)]


WHERE = OpDef("where", "elementwise", 3, _where_infer,
              lambda arrays, attrs: np.where(*arrays), Fusion.BROADCAST, _where_grad,
              doc="a where cond else b (broadcasting)")
OPS: list[OpDef] = [WHERE]


def where(cond: Operand, a: Operand, b: Operand, name: str | None = None) -> Node:
    """`a` where `cond` is true, else `b`; Python scalars take the dtype of the other value."""
    like = a if isinstance(a, Node) else b if isinstance(b, Node) else None
    if like is not None:
        a = _scalar_like(a, like)
        b = _scalar_like(b, like)
    return apply(WHERE, [cond, a, b], name=name)


def _scalar_like(x: Operand, like: Node) -> Operand:
    if isinstance(x, (bool, int, float)) and like.dtype != DType.bool:
        return constant(x, dtype=like.dtype)
    return x


def clip(x: Operand, lo: Operand, hi: Operand, name: str | None = None) -> Node:
    """min(max(x, lo), hi) (composite: a maximum and a minimum node)."""
    return _binary_ops.minimum(_binary_ops.maximum(x, lo), hi, name=name)
