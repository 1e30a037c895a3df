"""Elementwise ops: unary math and activations, broadcasting binary arithmetic, comparisons
and bool ops, `where`, `cast`, and the composite `clip`.

Each op is one `OpDef` next to its builder function and its gradient rule. Unary ops keep
their operand's shape (and dtype, unless `out` is given); binary ops follow numpy
broadcasting and never promote dtypes (both operands must have the same dtype), and their
gradients sum over the broadcast axes (`unbroadcast`, also used by other families'
gradients). Comparisons and logical_and/or have a bool result and no gradient. References
are numerically stable (sigmoid and softplus never exponentiate a large positive argument).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from graphc.builder import Operand, apply, constant
from graphc.errors import DTypeError
from graphc.ir import Attrs, DType, Node, TensorType
from graphc.ir.attrs import AttrSpec, Kind
from graphc.ir.opdef import Fusion, GradRule, OpDef
from graphc.ops.common import (
    ALL,
    BF16,
    FLOATS,
    LOWP,
    NUMERIC,
    broadcast_shapes,
    check_dtype,
    same_dtype,
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

OPS: list[OpDef] = []

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715
_erf_scalar = np.frompyfunc(math.erf, 1, 1)


def _np_erf(x: np.ndarray) -> np.ndarray:
    """erf via math.erf (correctly rounded in float64); numpy has none."""
    return np.asarray(_erf_scalar(x.astype(np.float64)), dtype=np.float64).astype(x.dtype)


# --- unary -----------------------------------------------------------------------------------

def _unary_infer(allowed: frozenset[DType], out: DType | None = None):
    def infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
        check_dtype(types[0], allowed, "x")
        return TensorType(types[0].shape, out or types[0].dtype)

    return infer


def _unary(
    name: str,
    fn: Callable[..., np.ndarray],
    grad: GradRule | None,
    allowed: frozenset[DType] = FLOATS,
    out: DType | None = None,
    doc: str = "",
    attrs: tuple[AttrSpec, ...] = (),
) -> OpDef:
    def reference(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
        return np.asarray(fn(arrays[0], **dict(attrs)))

    op = OpDef(name, "elementwise", 1, _unary_infer(allowed, out), reference,
               Fusion.ELEMENTWISE, grad, doc=doc, attrs=attrs, lowp=BF16)
    OPS.append(op)
    return op


def _relu_ref(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, np.zeros((), x.dtype))


def _elu_ref(x: np.ndarray, alpha: float) -> np.ndarray:
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))).astype(x.dtype)


def _selu_ref(x: np.ndarray) -> np.ndarray:
    neg = SELU_ALPHA * np.expm1(np.minimum(x, 0))
    return (SELU_SCALE * np.where(x > 0, x, neg)).astype(x.dtype)


def _gelu_ref(x: np.ndarray, approximate: str) -> np.ndarray:
    if approximate == "tanh":
        u = _SQRT_2_OVER_PI * (x + _GELU_C * x**3)
        return (0.5 * x * (1 + np.tanh(u))).astype(x.dtype)
    return (0.5 * x * (1 + _np_erf(x / math.sqrt(2.0)))).astype(x.dtype)


def _softplus_ref(x: np.ndarray) -> np.ndarray:
    return (np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)).astype(x.dtype)


def _sigmoid_ref(x: np.ndarray) -> np.ndarray:
    # Stable for both signs: exp never sees a large positive argument.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


def _rsqrt_ref(x: np.ndarray) -> np.ndarray:
    return (1 / np.sqrt(x)).astype(x.dtype)


def _reciprocal_ref(x: np.ndarray) -> np.ndarray:
    return (1 / x).astype(x.dtype)


NEG = _unary("neg", np.negative, lambda n, g: [neg(g)], NUMERIC, doc="-x")
ABS = _unary("abs", np.abs, lambda n, g: [g * sign(n.inputs[0])], NUMERIC, doc="|x|")
SIGN = _unary("sign", np.sign, None, NUMERIC, doc="-1, 0 or 1")
EXP = _unary("exp", np.exp, lambda n, g: [g * n], doc="e**x")
LOG = _unary("log", np.log, lambda n, g: [g / n.inputs[0]], doc="natural logarithm")
LOG1P = _unary("log1p", np.log1p, lambda n, g: [g / (n.inputs[0] + 1.0)], doc="log(1+x)")
EXPM1 = _unary("expm1", np.expm1, lambda n, g: [g * (n + 1.0)], doc="exp(x)-1")
SQRT = _unary("sqrt", np.sqrt, lambda n, g: [g / (n * 2.0)], doc="square root")
RSQRT = _unary("rsqrt", _rsqrt_ref, lambda n, g: [g * (n * n * n) * -0.5], doc="1/sqrt(x)")
SQUARE = _unary("square", np.square, lambda n, g: [g * n.inputs[0] * 2.0], NUMERIC, doc="x*x")
RECIPROCAL = _unary("reciprocal", _reciprocal_ref, lambda n, g: [-(g * n * n)], doc="1/x")
SIN = _unary("sin", np.sin, lambda n, g: [g * cos(n.inputs[0])], doc="sine")
COS = _unary("cos", np.cos, lambda n, g: [-(g * sin(n.inputs[0]))], doc="cosine")
TANH = _unary("tanh", np.tanh, lambda n, g: [g * (1.0 - n * n)], doc="hyperbolic tangent")
SIGMOID = _unary("sigmoid", _sigmoid_ref, lambda n, g: [g * n * (1.0 - n)],
                 doc="1/(1+exp(-x)), computed stably")
# The mask reads relu's output, not its input (x > 0 exactly where relu(x) > 0, NaN
# included): then only relu reads x, so x's producer (a matmul, a conv) can take relu into
# its epilogue instead of storing x for the backward pass.
RELU = _unary("relu", _relu_ref, lambda n, g: [where(n > 0, g, 0.0)],
              doc="max(x, 0)")
LEAKY_RELU = _unary(
    "leaky_relu",
    lambda x, alpha: np.where(x > 0, x, x * x.dtype.type(alpha)).astype(x.dtype),
    lambda n, g: [where(n.inputs[0] > 0, g, g * n.attrs["alpha"])],
    doc="x if x > 0 else alpha*x",
    attrs=(AttrSpec("alpha", Kind.FLOAT, finite=True),),
)
ELU = _unary(
    "elu", _elu_ref,
    lambda n, g: [where(n.inputs[0] > 0, g, g * (n + n.attrs["alpha"]))],
    doc="x if x > 0 else alpha*(exp(x)-1)",
    attrs=(AttrSpec("alpha", Kind.FLOAT, finite=True),),
)
SELU = _unary(
    "selu", _selu_ref,
    lambda n, g: [where(n.inputs[0] > 0, g * SELU_SCALE,
                                    g * (n + SELU_SCALE * SELU_ALPHA))],
    doc="scale*elu(x, alpha) with the self-normalizing constants",
)


def _gelu_grad(n: Node, g: Node) -> list[Node]:
    x = n.inputs[0]
    if n.attrs["approximate"] == "tanh":
        t = tanh((x + x * x * x * _GELU_C) * _SQRT_2_OVER_PI)
        du = (x * x * (3.0 * _GELU_C) + 1.0) * _SQRT_2_OVER_PI
        return [g * ((t + 1.0) * 0.5 + x * 0.5 * (1.0 - t * t) * du)]
    from graphc.ops.neural import stop_gradient  # (neural builds on this module)

    # Phi(x) = gelu(x) / x: the forward's value, which the backward holds anyway (it is the
    # next layer's input), divided instead of a second erf (the costliest op of a
    # transformer's backward epilogue). Below |x| = 1e-20, Phi(x) rounds to 1/2; above it
    # the quotient is exact to an ulp or two wherever gelu(x) is a normal float, and where
    # it is not (x below -13 in float32, -37 in float64) both Phi and x phi(x) vanish. The
    # quotient is a value only: Phi's derivative is phi, carried by (x - stop_gradient(x))
    # * phi (0 in value), so second derivatives are exact too (the quotient's own would
    # cancel near 0 and be 0/0 at it).
    pdf = exp(x * x * -0.5) * (1 / math.sqrt(2 * math.pi))
    small = abs(x) < 1e-20
    quotient = stop_gradient(where(small, 0.5, n / where(small, 1.0, x)))
    cdf = quotient + (x - stop_gradient(x)) * pdf
    return [g * (cdf + x * pdf)]


GELU = _unary("gelu", _gelu_ref, _gelu_grad,
              doc="x*Phi(x); approximate='tanh' uses the tanh formula",
              attrs=(AttrSpec("approximate", Kind.STR, choices=("none", "tanh")),))
SOFTPLUS = _unary("softplus", _softplus_ref, lambda n, g: [g * sigmoid(n.inputs[0])],
                  doc="log(1+exp(x)), computed stably")
ERF = _unary("erf", _np_erf,
             lambda n, g: [g * exp(-(n.inputs[0] * n.inputs[0])) * (2 / math.sqrt(math.pi))],
             doc="the error function")
FLOOR = _unary("floor", np.floor, None, doc="round toward -inf (zero gradient)")
CEIL = _unary("ceil", np.ceil, None, doc="round toward +inf (zero gradient)")
ROUND = _unary("round", np.round, None, doc="round half to even (zero gradient)")
LOGICAL_NOT = _unary("logical_not", np.logical_not, None, frozenset({DType.bool}),
                     doc="not x (bool)")


def _cast_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    return TensorType(types[0].shape, attrs["dtype"])


def _cast_grad(n: Node, g: Node) -> list[Node | None]:
    source = n.inputs[0].dtype
    return [cast(g, source)] if source.is_float and n.dtype.is_float else [None]


def _cast_reference(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    x, dtype = arrays[0], attrs["dtype"]
    if x.dtype.kind == "f" and dtype.is_quantized:
        # Saturating, as the generated code's fptosi.sat/fptoui.sat (NaN -> 0); numpy's
        # astype leaves out-of-range values undefined.
        info = np.iinfo(dtype.np)
        return np.nan_to_num(np.clip(np.trunc(x), info.min, info.max)).astype(dtype.np)
    return x.astype(dtype.compute_np)  # a bf16 result is rounded by the caller


CAST = OpDef("cast", "elementwise", 1, _cast_infer, _cast_reference, Fusion.ELEMENTWISE,
             _cast_grad,
             doc="convert to dtype (float->int truncates toward zero; to int8/uint8 it "
                 "saturates; to bfloat16 it rounds to nearest-even)",
             attrs=(AttrSpec("dtype", Kind.DTYPE),), lowp=LOWP)
OPS.append(CAST)


def neg(x: Operand, name: str | None = None) -> Node:
    return apply(NEG, [x], name=name)


def abs(x: Operand, name: str | None = None) -> Node:
    return apply(ABS, [x], name=name)


def sign(x: Operand, name: str | None = None) -> Node:
    return apply(SIGN, [x], name=name)


def exp(x: Operand, name: str | None = None) -> Node:
    return apply(EXP, [x], name=name)


def log(x: Operand, name: str | None = None) -> Node:
    return apply(LOG, [x], name=name)


def log1p(x: Operand, name: str | None = None) -> Node:
    return apply(LOG1P, [x], name=name)


def expm1(x: Operand, name: str | None = None) -> Node:
    return apply(EXPM1, [x], name=name)


def sqrt(x: Operand, name: str | None = None) -> Node:
    return apply(SQRT, [x], name=name)


def rsqrt(x: Operand, name: str | None = None) -> Node:
    return apply(RSQRT, [x], name=name)


def square(x: Operand, name: str | None = None) -> Node:
    return apply(SQUARE, [x], name=name)


def reciprocal(x: Operand, name: str | None = None) -> Node:
    return apply(RECIPROCAL, [x], name=name)


def sin(x: Operand, name: str | None = None) -> Node:
    return apply(SIN, [x], name=name)


def cos(x: Operand, name: str | None = None) -> Node:
    return apply(COS, [x], name=name)


def tanh(x: Operand, name: str | None = None) -> Node:
    return apply(TANH, [x], name=name)


def sigmoid(x: Operand, name: str | None = None) -> Node:
    return apply(SIGMOID, [x], name=name)


def relu(x: Operand, name: str | None = None) -> Node:
    return apply(RELU, [x], name=name)


def leaky_relu(x: Operand, alpha: float = 0.01, name: str | None = None) -> Node:
    return apply(LEAKY_RELU, [x], {"alpha": float(alpha)}, name=name)


def elu(x: Operand, alpha: float = 1.0, name: str | None = None) -> Node:
    return apply(ELU, [x], {"alpha": float(alpha)}, name=name)


def selu(x: Operand, name: str | None = None) -> Node:
    return apply(SELU, [x], name=name)


def gelu(x: Operand, approximate: str = "none", name: str | None = None) -> Node:
    """GELU; `approximate` is "none" (erf form, the default) or "tanh"."""
    return apply(GELU, [x], {"approximate": approximate}, name=name)


def softplus(x: Operand, name: str | None = None) -> Node:
    return apply(SOFTPLUS, [x], name=name)


def erf(x: Operand, name: str | None = None) -> Node:
    return apply(ERF, [x], name=name)


def floor(x: Operand, name: str | None = None) -> Node:
    return apply(FLOOR, [x], name=name)


def ceil(x: Operand, name: str | None = None) -> Node:
    return apply(CEIL, [x], name=name)


def round(x: Operand, name: str | None = None) -> Node:
    return apply(ROUND, [x], name=name)


def logical_not(x: Operand, name: str | None = None) -> Node:
    return apply(LOGICAL_NOT, [x], name=name)


def cast(x: Operand, dtype: DType | str, name: str | None = None) -> Node:
    return apply(CAST, [x], {"dtype": DType.of(dtype)}, name=name)


# --- binary ----------------------------------------------------------------------------

def unbroadcast(g: Node, shape: tuple[int, ...]) -> Node:
    """Sum `g` over the axes that broadcasting added or stretched, giving `shape`."""
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, d in enumerate(shape) if d == 1 and g.shape[lead + i] != 1
    )
    # Through Node methods (filled by the registry): reduce and layout sit above this family.
    summed = g.sum(axis=axes) if axes else g
    return summed if summed.shape == shape else summed.reshape(shape)


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

    op = OpDef(name, "elementwise", 2, _binary_infer(allowed, out), reference,
               Fusion.BROADCAST, rule, doc=doc, lowp=BF16)
    OPS.append(op)
    return op


def _div_ref(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.true_divide(a, b)


def _pow_grad(n: Node, g: Node, a: Node, b: Node) -> tuple[Node, Node]:
    ga = g * b * pow(a, b - 1.0)
    safe_log = log(where(a > 0, a, 1.0))
    return ga, g * n * safe_log


ADD = _binary("add", np.add, lambda n, g, a, b: (g, g), doc="a + b")
SUB = _binary("sub", np.subtract, lambda n, g, a, b: (g, -g), doc="a - b")
MUL = _binary("mul", np.multiply, lambda n, g, a, b: (g * b, g * a), doc="a * b")
DIV = _binary("div", _div_ref, lambda n, g, a, b: (g / b, -(g * n / b)), FLOATS, doc="a / b")
POW = _binary("pow", np.power, _pow_grad, FLOATS, doc="a ** b (gradient in b needs a > 0)")
MAXIMUM = _binary(
    "maximum", np.maximum,
    lambda n, g, a, b: (where(a >= b, g, 0.0), where(a >= b, 0.0, g)),
    doc="elementwise max (ties send the gradient to a)",
)
MINIMUM = _binary(
    "minimum", np.minimum,
    lambda n, g, a, b: (where(a <= b, g, 0.0), where(a <= b, 0.0, g)),
    doc="elementwise min (ties send the gradient to a)",
)
MOD = _binary("mod", np.mod, lambda n, g, a, b: (g, -(g * floor(a / b))),
              doc="a mod b with the sign of b (numpy/Python semantics)")


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


# --- comparisons and bool ops ------------------------------------------------------------

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

equal = _binary_builder(EQUAL)
not_equal = _binary_builder(NOT_EQUAL)
less = _binary_builder(LESS)
less_equal = _binary_builder(LESS_EQUAL)
greater = _binary_builder(GREATER)
greater_equal = _binary_builder(GREATER_EQUAL)
logical_and = _binary_builder(LOGICAL_AND)
logical_or = _binary_builder(LOGICAL_OR)


# --- selection ---------------------------------------------------------------------------

def _where_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    cond, a, b = types
    if cond.dtype != DType.bool:
        raise DTypeError(f"cond: expected bool, got {cond}")
    dtype = same_dtype((a, b), ("a", "b"))
    return TensorType(broadcast_shapes(types, ("cond", "a", "b")), dtype)


def _where_grad(n: Node, g: Node) -> list[Node | None]:
    cond, a, b = n.inputs
    return [None, unbroadcast(where(cond, g, 0.0), a.shape),
            unbroadcast(where(cond, 0.0, g), b.shape)]


WHERE = OpDef("where", "elementwise", 3, _where_infer,
              lambda arrays, attrs: np.where(*arrays), Fusion.BROADCAST, _where_grad,
              doc="a where cond else b (broadcasting)", lowp=BF16)
OPS.append(WHERE)


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
    return minimum(maximum(x, lo), hi, name=name)
