"""Elementwise ops: unary math and activations, broadcasting binary ops, `where`, `cast`.

Each op is one `OpDef` next to its builder function and its gradient rule. Binary ops follow
numpy broadcasting; their gradients sum over broadcast axes (`unbroadcast`).

The ops live in submodules; this module collects their definitions into `OPS` and their
builders into `__all__`, and re-exports each submodule's OpDefs, `unbroadcast` (used by
other families' gradients) and the SELU constants (used by codegen):
- `elementwise_unary`: unary math, activations, rounding, logical_not, cast;
- `elementwise_binary`: add, sub, mul, div, pow, maximum, minimum, mod; `unbroadcast`;
- `elementwise_compare`: equal, not_equal, less(_equal), greater(_equal), logical_and/or;
- `elementwise_select`: where; the composite clip.

Sibling submodules call each other's builders through module imports used inside functions
(as op families do), so their import order does not matter.
"""

from __future__ import annotations

from graphc.ir.opdef import OpDef
from graphc.ops import elementwise_binary as _binary_ops
from graphc.ops import elementwise_compare as _compare_ops
from graphc.ops import elementwise_select as _select_ops
from graphc.ops import elementwise_unary as _unary_ops
from graphc.ops.elementwise_binary import ADD as ADD
from graphc.ops.elementwise_binary import DIV as DIV
from graphc.ops.elementwise_binary import MAXIMUM as MAXIMUM
from graphc.ops.elementwise_binary import MINIMUM as MINIMUM
from graphc.ops.elementwise_binary import MOD as MOD
from graphc.ops.elementwise_binary import MUL as MUL
from graphc.ops.elementwise_binary import POW as POW
from graphc.ops.elementwise_binary import SUB as SUB
from graphc.ops.elementwise_binary import add, div, maximum, minimum, mod, mul, pow, sub
from graphc.ops.elementwise_binary import unbroadcast as unbroadcast
from graphc.ops.elementwise_compare import EQUAL as EQUAL
from graphc.ops.elementwise_compare import GREATER as GREATER
from graphc.ops.elementwise_compare import GREATER_EQUAL as GREATER_EQUAL
from graphc.ops.elementwise_compare import LESS as LESS
from graphc.ops.elementwise_compare import LESS_EQUAL as LESS_EQUAL
from graphc.ops.elementwise_compare import LOGICAL_AND as LOGICAL_AND
from graphc.ops.elementwise_compare import LOGICAL_OR as LOGICAL_OR
from graphc.ops.elementwise_compare import NOT_EQUAL as NOT_EQUAL
from graphc.ops.elementwise_compare import (
    equal,
    greater,
    greater_equal,
    less,
    less_equal,
    logical_and,
    logical_or,
    not_equal,
)
from graphc.ops.elementwise_select import WHERE as WHERE
from graphc.ops.elementwise_select import clip, where
from graphc.ops.elementwise_unary import ABS as ABS
from graphc.ops.elementwise_unary import CAST as CAST
from graphc.ops.elementwise_unary import CEIL as CEIL
from graphc.ops.elementwise_unary import COS as COS
from graphc.ops.elementwise_unary import ELU as ELU
from graphc.ops.elementwise_unary import ERF as ERF
from graphc.ops.elementwise_unary import EXP as EXP
from graphc.ops.elementwise_unary import EXPM1 as EXPM1
from graphc.ops.elementwise_unary import FLOOR as FLOOR
from graphc.ops.elementwise_unary import GELU as GELU
from graphc.ops.elementwise_unary import LEAKY_RELU as LEAKY_RELU
from graphc.ops.elementwise_unary import LOG as LOG
from graphc.ops.elementwise_unary import LOG1P as LOG1P
from graphc.ops.elementwise_unary import LOGICAL_NOT as LOGICAL_NOT
from graphc.ops.elementwise_unary import NEG as NEG
from graphc.ops.elementwise_unary import RECIPROCAL as RECIPROCAL
from graphc.ops.elementwise_unary import RELU as RELU
from graphc.ops.elementwise_unary import ROUND as ROUND
from graphc.ops.elementwise_unary import RSQRT as RSQRT
from graphc.ops.elementwise_unary import SELU as SELU
from graphc.ops.elementwise_unary import SELU_ALPHA as SELU_ALPHA
from graphc.ops.elementwise_unary import SELU_SCALE as SELU_SCALE
from graphc.ops.elementwise_unary import SIGMOID as SIGMOID
from graphc.ops.elementwise_unary import SIGN as SIGN
from graphc.ops.elementwise_unary import SIN as SIN
from graphc.ops.elementwise_unary import SOFTPLUS as SOFTPLUS
from graphc.ops.elementwise_unary import SQRT as SQRT
from graphc.ops.elementwise_unary import SQUARE as SQUARE
from graphc.ops.elementwise_unary import TANH as TANH
from graphc.ops.elementwise_unary import (
    abs,
    cast,
    ceil,
    cos,
    elu,
    erf,
    exp,
    expm1,
    floor,
    gelu,
    leaky_relu,
    log,
    log1p,
    logical_not,
    neg,
    reciprocal,
    relu,
    round,
    rsqrt,
    selu,
    sigmoid,
    sign,
    sin,
    softplus,
    sqrt,
    square,
    tanh,
)

__all__ = [
    "abs",
    "add",
    "cast",
    "ceil",
    "clip",
    "cos",
    "div",
    "elu",
    "equal",
    "erf",
    "exp",
    "expm1",
    "floor",
    "gelu",
    "greater",
    "greater_equal",
    "leaky_relu",
    "less",
    "less_equal",
    "log",
    "log1p",
    "logical_and",
    "logical_not",
    "logical_or",
    "maximum",
    "minimum",
    "mod",
    "mul",
    "neg",
    "not_equal",
    "pow",
    "reciprocal",
    "relu",
    "round",
    "rsqrt",
    "selu",
    "sigmoid",
    "sign",
    "sin",
    "softplus",
    "sqrt",
    "square",
    "sub",
    "tanh",
    "where",
]

# Registry order (and so `graphc ops --list`): unary ops, cast, arithmetic, comparisons and
# logical ops, where.
OPS: list[OpDef] = [*_unary_ops.OPS, *_binary_ops.OPS, *_compare_ops.OPS, *_select_ops.OPS]
