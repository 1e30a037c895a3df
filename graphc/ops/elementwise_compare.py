"""Comparisons (equal, not_equal, less, less_equal, greater, greater_equal) and the bool ops
logical_and, logical_or: broadcasting binary ops with a bool result and no gradient.

Comparisons take two operands of one dtype (equal/not_equal any dtype, the orderings numeric
ones); logical_and/logical_or take bool operands.
"""

from __future__ import annotations

import numpy as np

from graphc.ir import DType
from graphc.ir.opdef import OpDef
from graphc.ops.elementwise_binary import _binary, _binary_builder
from graphc.ops.typecheck import ALL, NUMERIC

__all__ = [
    "equal",
    "greater",
    "greater_equal",
    "less",
    "less_equal",
    "logical_and",
    "logical_or",
    "not_equal",
]

_BOOL = frozenset({DType.bool})
EQUAL = _binary("equal", np.equal, None, frozenset(ALL), DType.bool, doc="a == b")
NOT_EQUAL = _binary("not_equal", np.not_equal, None, frozenset(ALL), DType.bool, doc="a != b")
LESS = _binary("less", np.less, None, NUMERIC, DType.bool, doc="a < b")
LESS_EQUAL = _binary("less_equal", np.less_equal, None, NUMERIC, DType.bool, doc="a <= b")
GREATER = _binary("greater", np.greater, None, NUMERIC, DType.bool, doc="a > b")
GREATER_EQUAL = _binary("greater_equal", np.greater_equal, None, NUMERIC, DType.bool,
                        doc="a >= b")
LOGICAL_AND = _binary("logical_and", np.logical_and, None, _BOOL, doc="a and b (bool)")
LOGICAL_OR = _binary("logical_or", np.logical_or, None, _BOOL, doc="a or b (bool)")
OPS: list[OpDef] = [EQUAL, NOT_EQUAL, LESS, LESS_EQUAL, GREATER, GREATER_EQUAL, LOGICAL_AND,
                    LOGICAL_OR]

equal = _binary_builder(EQUAL)
not_equal = _binary_builder(NOT_EQUAL)
less = _binary_builder(LESS)
less_equal = _binary_builder(LESS_EQUAL)
greater = _binary_builder(GREATER)
greater_equal = _binary_builder(GREATER_EQUAL)
logical_and = _binary_builder(LOGICAL_AND)
logical_or = _binary_builder(LOGICAL_OR)
