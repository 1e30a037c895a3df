"""Broadcasting binary arithmetic: add, sub, mul, div, pow, maximum, minimum, mod.

Binary ops follow numpy broadcasting and never promote dtypes (both operands must have the
same dtype). Their gradients sum over broadcast axes (`unbroadcast`). The factories
`_binary` and `_binary_builder` also make the comparison and logical ops
(`elementwise_compare`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from graphc.builder import Operand, apply
from graphc.ir import Attrs, DType, Node, TensorType
from graphc.ir.opdef import Fusion, GradRule, OpDef
from graphc.ops import elementwise_select as _select_ops
from graphc.ops import elementwise_unary as _unary_ops
from graphc.ops import reduce as _reduce
from graphc.ops import shape as _shape
from graphc.ops.typecheck import FLOATS, NUMERIC, broadcast_shapes, check_dtype, same_dtype

__all__ = ["add", "div", "maximum", "minimum", "mod", "mul", "pow", "sub"]


def unbroadcast(g: Node, shape: tuple[int, ...]) -> Node:
    """Sum `g` over the axes that broadcasting added or stretched, giving `shape`."""
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, d in enumerate(shape) if d == 1 and g.shape[lead + i] != 1
    )
    summed = _reduce.sum(g, axis=axes) if axes else g
    return summed if summed.shape == shape else _shape.reshape(summed, shape)


def _binary_infer(allowed: frozenset[DType], out: DType | None = None):
    def infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
        dtype = same_dtype(types, ("a", "b"))
        check_dtype(types[0], allowed, "a")
        return TensorType(broadcast_shapes(types, ("a", "b")), out or dtype)

    return infer


def _binary(
    name: str,
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    grad: Callable[[Node, Node, Node, Node], tuple[Node | None, Node | None]] | None,
    allowed: frozenset[DType] = NUMERIC,
    out: DType | None = None,
    doc: str = "",
) -> OpDef:
    def reference(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
        return np.asarray(fn(arrays[0], arrays[1]))

    rule: GradRule | None = None
    if grad is not None:
        grad_fn = grad

        def rule(n: Node, g: Node) -> list[Node | None]:
            a, b = n.inputs
            ga, gb = grad_fn(n, g, a, b)
            return [None if ga is None else unbroadcast(ga, a.shape),
                    None if gb is None else unbroadcast(gb, b.shape)]

    return OpDef(name, "elementwise", 2, _binary_infer(allowed, out), reference,
                 Fusion.BROADCAST, rule, doc=doc)


def _div_ref(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.true_divide(a, b)


def _pow_grad(n: Node, g: Node, a: Node, b: Node) -> tuple[Node, Node]:
    ga = g * b * pow(a, b - 1.0)
    safe_log = _unary_ops.log(_select_ops.where(a > 0, a, 1.0))
    return ga, g * n * safe_log


ADD = _binary("add", np.add, lambda n, g, a, b: (g, g), doc="a + b")
SUB = _binary("sub", np.subtract, lambda n, g, a, b: (g, -g), doc="a - b")
MUL = _binary("mul", np.multiply, lambda n, g, a, b: (g * b, g * a), doc="a * b")
DIV = _binary("div", _div_ref, lambda n, g, a, b: (g / b, -(g * n / b)), FLOATS, doc="a / b")
POW = _binary("pow", np.power, _pow_grad, FLOATS, doc="a ** b (gradient in b needs a > 0)")
MAXIMUM = _binary(
    "maximum", np.maximum,
    lambda n, g, a, b: (_select_ops.where(a >= b, g, 0.0), _select_ops.where(a >= b, 0.0, g)),
    doc="elementwise max (ties send the gradient to a)",
)
MINIMUM = _binary(
    "minimum", np.minimum,
    lambda n, g, a, b: (_select_ops.where(a <= b, g, 0.0), _select_ops.where(a <= b, 0.0, g)),
    doc="elementwise min (ties send the gradient to a)",
)
MOD = _binary("mod", np.mod, lambda n, g, a, b: (g, -(g * _unary_ops.floor(a / b))),
              doc="a mod b with the sign of b (numpy/Python semantics)")
OPS: list[OpDef] = [ADD, SUB, MUL, DIV, POW, MAXIMUM, MINIMUM, MOD]


def _binary_builder(op: OpDef) -> Callable[..., Node]:
    def build(a: Operand, b: Operand, name: str | None = None) -> Node:
        return apply(op, [a, b], name=name)

    build.__name__ = op.name
    build.__doc__ = op.doc
    return build


add = _binary_builder(ADD)
sub = _binary_builder(SUB)
mul = _binary_builder(MUL)
div = _binary_builder(DIV)
pow = _binary_builder(POW)
maximum = _binary_builder(MAXIMUM)
minimum = _binary_builder(MINIMUM)
mod = _binary_builder(MOD)
