"""Helpers of the shape ops' builders, shared with reduce.py (re-exported by `shape`).

Builders resolve user conventions (-1 in shapes, negative axes, Python slices) before a node
exists; these helpers give such checks the same error context (`op`, the user's line) that
`builder.apply` gives type rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import numpy as np

from graphc.builder import Operand, constant, user_location
from graphc.errors import AttrError, GraphcError
from graphc.ir import Node
from graphc.ir.opdef import Fusion, OpDef

_T = TypeVar("_T")


def as_node(x: Operand) -> Node:
    """`x` itself if it is a Node, else a constant holding it (a builder needs its type)."""
    return x if isinstance(x, Node) else constant(x)


def resolve(op: str, fn: Callable[[], _T]) -> _T:
    """Run a builder's argument resolution; a GraphcError gets `op` and the user's line.

    Type rules get op/loc from `builder.apply`; this does the same for the checks builders
    make before a node exists (an axis out of range, a -1 that cannot be resolved).
    """
    try:
        return fn()
    except GraphcError as exc:
        raise exc.with_context(op=op, loc=user_location()) from None


def fail(op: str, exc: GraphcError) -> NoReturn:
    """Raise `exc` from a builder, with `op` and the user's line."""
    raise exc.with_context(op=op, loc=user_location())


def int_tuple(value: Any, what: str, length: int | None = None) -> tuple[int, ...]:
    """An int or a sequence of ints as a tuple, or an AttrError (bools are not ints)."""
    if isinstance(value, Node):  # iterating a Node would build getitem nodes
        raise AttrError(f"{what} must be static ints, got node %{value.name}")
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        value = (value,)
    try:
        items = tuple(value)
    except TypeError:
        raise AttrError(f"{what} must be a sequence of ints, got {value!r}") from None
    for v in items:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise AttrError(f"{what} must be a sequence of ints, got {value!r}")
    if length is not None and len(items) != length:
        raise AttrError(f"{what} must have {length} entries (one per axis), got {items}")
    return tuple(int(v) for v in items)


def shape_op(ops: list[OpDef], name: str, arity: int | None, infer: Any, reference: Any,
             grad: Any, fusion: Fusion = Fusion.INJECTIVE, doc: str = "") -> OpDef:
    """An OpDef of the "shape" family, appended to `ops` (the defining submodule's `OPS`)."""
    op = OpDef(name, "shape", arity, infer, reference, fusion, grad, doc=doc)
    ops.append(op)
    return op
