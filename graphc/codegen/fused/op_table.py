"""Lowering of elementwise ops to LLVM instructions: the table `LOWER`, keyed by op name.

Each entry maps (builder, node, operand values) to the result value; operands are already
evaluated at the right index, as scalars or `<lanes x T>` vectors (booleans as `i1`).
Semantics follow numpy: NaN propagates through maximum/minimum (llvm.maximum/minimum),
`mod` takes the sign of the divisor, integer arithmetic wraps, float->int casts truncate
(saturating, so out-of-range values are defined rather than poison).

Transcendental functions use graphc's own vectorized polynomials (`codegen.vecmath`); `pow`
calls libm per lane (it is rare after `simplify` rewrites x**2 and x**0.5). A float `mul` of
two tanh/sigmoid results computed in the same kernel becomes one division
(`vecmath.fraction_product`) instead of two.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import llvmlite.ir as ir

from graphc.codegen import bf16
from graphc.codegen.llvm_types import (
    binary_intrinsic,
    compute_type,
    const,
    intrinsic,
    unary_intrinsic,
)
from graphc.codegen.vecmath import functions as vecmath
from graphc.errors import CompileError
from graphc.ir import DType, Node
from graphc.ops.elementwise import SELU_ALPHA, SELU_SCALE

Lowering = Callable[[ir.IRBuilder, Node, list[ir.Value]], ir.Value]
LOWER: dict[str, Lowering] = {}

# Floating-point math flags: `contract` lets LLVM form FMAs; nothing that changes results
# beyond that (no reassociation, no approximations: `fast` also made division slower here).
FLAGS = ("contract",)


def lower(b: ir.IRBuilder, node: Node, args: list[ir.Value]) -> ir.Value:
    """`node` applied to its operands' values `args` (already at the right index)."""
    try:
        rule = LOWER[node.op]
    except KeyError:
        raise CompileError(f"no elementwise lowering for op {node.op!r}", op=node.op,
                           loc=node.loc) from None
    return rule(b, node, args)


def _lanes(v: ir.Value) -> int:
    return v.type.count if isinstance(v.type, ir.VectorType) else 1


def _c(node_or_dtype: Node | DType, value: float, like: ir.Value) -> ir.Constant:
    dtype = node_or_dtype.dtype if isinstance(node_or_dtype, Node) else node_or_dtype
    return const(dtype, value, _lanes(like))


def _intrinsic(b: ir.IRBuilder, name: str, args: list[ir.Value]) -> ir.Value:
    if len(args) == 1:
        return unary_intrinsic(b, name, args[0])
    return binary_intrinsic(b, name, args[0], args[1])


def _rule(*names: str) -> Callable[[Lowering], Lowering]:
    def register(fn: Lowering) -> Lowering:
        for n in names:
            LOWER[n] = fn
        return fn

    return register


def _unary_float(name: str, fn: Callable[[ir.IRBuilder, ir.Value], ir.Value]) -> None:
    LOWER[name] = lambda b, n, a: fn(b, a[0])


for _name in ("exp", "log", "log1p", "expm1", "tanh", "sigmoid", "erf", "sin", "cos"):
    _unary_float(_name, vecmath.FUNCTIONS[_name])


@_rule("neg")
def _neg(b: ir.IRBuilder, n: Node, a: list[ir.Value]) -> ir.Value:
    if n.dtype.is_float:
        return b.fneg(a[0])
    return b.sub(_c(n, 0, a[0]), a[0])


@_rule("abs")
def _abs(b: ir.IRBuilder, n: Node, a: list[ir.Value]) -> ir.Value:
    if n.dtype.is_float:
        return _intrinsic(b, "llvm.fabs", [a[0]])
    neg = b.icmp_signed("<", a[0], _c(n, 0, a[0]))
    return b.select(neg, b.sub(_c(n, 0, a[0]), a[0]), a[0])


@_rule("sign")
def _sign(b: ir.IRBuilder, n: Node, a: list[ir.Value]) -> ir.Value:
    x = a[0]
    zero, one, minus = _c(n, 0, x), _c(n, 1, x), _c(n, -1, x)
    if n.dtype.is_float:  # sign(0) = 0 and sign(nan) = nan: both return x itself
        return b.select(b.fcmp_ordered(">", x, zero), one,
                        b.select(b.fcmp_ordered("<", x, zero), minus, x))
    return b.select(b.icmp_signed(">", x, zero), one,
                    b.select(b.icmp_signed("<", x, zero), minus, zero))


@_rule("sqrt")
def _sqrt(b: ir.IRBuilder, n: Node, a: list[ir.Value]) -> ir.Value:
    return _intrinsic(b, "llvm.sqrt", [a[0]])


@_rule("rsqrt")
def _rsqrt(b: ir.IRBuilder, n: Node, a: list[ir.Value]) -> ir.Value:
    return b.fdiv(_c(n, 1, a[0]), _intrinsic(b, "llvm.sqrt", [a[0]]))


@_rule("square")
def _square(b: ir.IRBuilder, n: Node, a: list[ir.Value]) -> ir.Value:
    return b.fmul(a[0], a[0], flags=FLAGS) if n.dtype.is_float else b.mul(a[0], a[0])


@_rule("reciprocal")
def _reciprocal(b: ir.IRBuilder, n: Node, a: list[ir.Value]) -> ir.Value:
    return b.fdiv(_c(n, 1, a[0]), a[0])


@_rule("relu")
def _relu(b: ir.IRBuilder, n: Node, a: list[ir.Value]) -> ir.Value:
    return _max(b, n.dtype, a[0], _c(n, 0, a[0]))


@_rule("leaky_relu")
def _leaky_relu(b: ir.IRBuilder, n: Node, a: list[ir.Value]) -> ir.Value:
    x = a[0]
    scaled = b.fmul(x, _c(n, n.attrs["alpha"], x))
    return b.select(b.fcmp_ordered(">", x, _c(n, 0, x)), x, scaled)


def _neg_part_expm1(b: ir.IRBuilder, n: Node, x: ir.Value) -> ir.Value:
    """expm1(min(x, 0))."""
    return vecmath.expm1(b, _min(b, n.dtype, x, _c(n, 0, x)))


@_rule("elu")
def _elu(b: ir.IRBuilder, n: Node, a: list[ir.Value]) -> ir.Value:
    x = a[0]
    neg = b.fmul(_c(n, n.attrs["alpha"], x), _neg_part_expm1(b, n, x))
    return b.select(b.fcmp_ordered(">", x, _c(n, 0, x)), x, neg)


@_rule("selu")
def _selu(b: ir.IRBuilder, n: Node, a: list[ir.Value]) -> ir.Value:
    x = a[0]
    neg = b.fmul(_c(n, SELU_ALPHA, x), _neg_part_expm1(b, n, x))
    inner = b.select(b.fcmp_ordered(">", x, _c(n, 0, x)), x, neg)
    return b.fmul(_c(n, SELU_SCALE, x), inner)


@_rule("gelu")
def _gelu(b: ir.IRBuilder, n: Node, a: list[ir.Value]) -> ir.Value:
    x = a[0]
    if n.attrs["approximate"] != "tanh":
        return b.fmul(x, vecmath.normal_cdf(b, x), flags=FLAGS)
    half_x = b.fmul(_c(n, 0.5, x), x)
    cube = b.fmul(b.fmul(x, x), x)
    u = b.fmul(_c(n, math.sqrt(2 / math.pi), x),
               b.fadd(x, b.fmul(_c(n, 0.044715, x), cube), flags=FLAGS), flags=FLAGS)
    t = vecmath.tanh(b, u)
    return b.fmul(half_x, b.fadd(_c(n, 1, x), t), flags=FLAGS)


@_rule("softplus")
def _softplus(b: ir.IRBuilder, n: Node, a: list[ir.Value]) -> ir.Value:
    x = a[0]
    minus_abs = b.fneg(_intrinsic(b, "llvm.fabs", [x]))
    return b.fadd(vecmath.log1p(b, vecmath.exp(b, minus_abs)), _max(b, n.dtype, x, _c(n, 0, x)))


@_rule("floor")
def _floor(b: ir.IRBuilder, n: Node, a: list[ir.Value]) -> ir.Value:
    return _intrinsic(b, "llvm.floor", [a[0]])


@_rule("ceil")
def _ceil(b: ir.IRBuilder, n: Node, a: list[ir.Value]) -> ir.Value:
    return _intrinsic(b, "llvm.ceil", [a[0]])


@_rule("round")
def _round(b: ir.IRBuilder, n: Node, a: list[ir.Value]) -> ir.Value:
    return _intrinsic(b, "llvm.roundeven", [a[0]])  # numpy rounds half to even


@_rule("logical_not")
def _logical_not(b: ir.IRBuilder, n: Node, a: list[ir.Value]) -> ir.Value:
    return b.not_(a[0])


@_rule("stop_gradient")
def _identity(b: ir.IRBuilder, n: Node, a: list[ir.Value]) -> ir.Value:
    return a[0]


@_rule("cast")
def _cast(b: ir.IRBuilder, n: Node, a: list[ir.Value]) -> ir.Value:
    return convert(b, a[0], n.inputs[0].dtype, n.dtype)


def convert(b: ir.IRBuilder, x: ir.Value, src: DType, dst: DType) -> ir.Value:
    """numpy's astype between graphc dtypes, on compute types (float->int truncates,
    saturating; uint8 extends and converts unsigned; a bf16 result is rounded to bf16)."""
    lanes = _lanes(x)
    to = compute_type(dst, lanes)
    if src == dst:
        return x
    if dst == DType.bool:
        zero = const(src, 0, lanes)
        return b.fcmp_unordered("!=", x, zero) if src.is_float else b.icmp_signed("!=", x, zero)
    if src == DType.bool:
        return b.uitofp(x, to) if dst.is_float else b.zext(x, to)
    unsigned = src == DType.uint8
    if src.is_float and dst.is_float:
        if x.type != to:
            x = b.fpext(x, to) if _bits(to) > _bits(x.type) else b.fptrunc(x, to)
        return bf16.round_float(b, x) if dst == DType.bfloat16 else x
    if src.is_float and dst.is_quantized:
        return _to_byte(b, x, dst, lanes)
    if src.is_float:
        sat = "llvm.fptoui.sat" if dst == DType.uint8 else "llvm.fptosi.sat"
        return b.call(intrinsic(b.module, sat, to, [x.type], [to, x.type]), [x])
    if dst.is_float:
        value = b.uitofp(x, to) if unsigned else b.sitofp(x, to)
        return bf16.round_float(b, value) if dst == DType.bfloat16 else value
    if _bits(to) > _bits(x.type):
        return b.zext(x, to) if unsigned else b.sext(x, to)
    return b.trunc(x, to) if _bits(to) < _bits(x.type) else x


def _to_byte(b: ir.IRBuilder, x: ir.Value, dst: DType, lanes: int) -> ir.Value:
    """fptoui.sat / fptosi.sat to 8 bits (NaN -> 0), as clamp + convert + truncate: LLVM
    scalarizes the vector saturating conversions to i8 (16 cvttss2si per vector)."""
    lo, hi = (0.0, 255.0) if dst == DType.uint8 else (-128.0, 127.0)
    ft = x.type
    x = b.select(b.fcmp_ordered("ord", x, x), x, ir.Constant(ft, None))
    x = b.call(intrinsic(b.module, "llvm.maxnum", ft, [ft, ft]), [x, _splat_f(ft, lo, lanes)])
    x = b.call(intrinsic(b.module, "llvm.minnum", ft, [ft, ft]), [x, _splat_f(ft, hi, lanes)])
    wide = compute_type(DType.int32, lanes)
    return b.trunc(b.fptosi(x, wide), compute_type(dst, lanes))


def _splat_f(ft: ir.Type, value: float, lanes: int) -> ir.Constant:
    if isinstance(ft, ir.VectorType):
        return ir.Constant(ft, [ir.Constant(ft.element, value)] * lanes)
    return ir.Constant(ft, value)


def _bits(t: ir.Type) -> int:
    """The width of a scalar or vector element type (float 32, double 64, iN N)."""
    e = t.element if isinstance(t, ir.VectorType) else t
    if isinstance(e, ir.IntType):
        return e.width
    return 64 if isinstance(e, ir.DoubleType) else 32


# --- binary ---------------------------------------------------------------------------------

def _max(b: ir.IRBuilder, dtype: DType, x: ir.Value, y: ir.Value) -> ir.Value:
    if dtype.is_float:
        return binary_intrinsic(b, "llvm.maximum", x, y)
    return binary_intrinsic(b, "llvm.smax", x, y)


def _min(b: ir.IRBuilder, dtype: DType, x: ir.Value, y: ir.Value) -> ir.Value:
    if dtype.is_float:
        return binary_intrinsic(b, "llvm.minimum", x, y)
    return binary_intrinsic(b, "llvm.smin", x, y)


@_rule("add")
def _add(b: ir.IRBuilder, n: Node, a: list[ir.Value]) -> ir.Value:
    return b.fadd(a[0], a[1], flags=FLAGS) if n.dtype.is_float else b.add(a[0], a[1])


@_rule("sub")
def _sub(b: ir.IRBuilder, n: Node, a: list[ir.Value]) -> ir.Value:
    return b.fsub(a[0], a[1], flags=FLAGS) if n.dtype.is_float else b.sub(a[0], a[1])


@_rule("mul")
def _mul(b: ir.IRBuilder, n: Node, a: list[ir.Value]) -> ir.Value:
    if n.dtype == DType.bool:
        return b.and_(a[0], a[1])
    if not n.dtype.is_float:
        return b.mul(a[0], a[1])
    # tanh * sigmoid (gates: LSTM, GLU variants): one division instead of two.
    fused = vecmath.fraction_product(b, a[0], a[1])
    return fused if fused is not None else b.fmul(a[0], a[1], flags=FLAGS)


@_rule("div")
def _div(b: ir.IRBuilder, n: Node, a: list[ir.Value]) -> ir.Value:
    return b.fdiv(a[0], a[1])


@_rule("maximum")
def _maximum(b: ir.IRBuilder, n: Node, a: list[ir.Value]) -> ir.Value:
    return _max(b, n.dtype, a[0], a[1])


@_rule("minimum")
def _minimum(b: ir.IRBuilder, n: Node, a: list[ir.Value]) -> ir.Value:
    return _min(b, n.dtype, a[0], a[1])


@_rule("mod")
def _mod(b: ir.IRBuilder, n: Node, a: list[ir.Value]) -> ir.Value:
    x, y = a
    zero = _c(n, 0, x)
    if n.dtype.is_float:
        r = b.frem(x, y)
        fix = b.and_(b.fcmp_unordered("!=", r, zero),
                     b.xor(b.fcmp_ordered("<", r, zero), b.fcmp_ordered("<", y, zero)))
        return b.select(fix, b.fadd(r, y), r)
    # numpy: x % 0 == 0 for integers; srem by zero would be undefined behaviour.
    is_zero = b.icmp_signed("==", y, zero)
    safe_y = b.select(is_zero, _c(n, 1, x), y)
    r = b.srem(x, safe_y)
    fix = b.and_(b.icmp_signed("!=", r, zero),
                 b.xor(b.icmp_signed("<", r, zero), b.icmp_signed("<", safe_y, zero)))
    return b.select(is_zero, zero, b.select(fix, b.add(r, safe_y), r))


@_rule("pow")
def _pow(b: ir.IRBuilder, n: Node, a: list[ir.Value]) -> ir.Value:
    return vecmath.per_lane_libm(b, "pow", a, n.dtype)


_CMP = {"equal": "==", "not_equal": "!=", "less": "<", "less_equal": "<=", "greater": ">",
        "greater_equal": ">="}


def _comparison(op: str) -> Lowering:
    pred = _CMP[op]

    def rule(b: ir.IRBuilder, n: Node, a: list[ir.Value]) -> ir.Value:
        dtype = n.inputs[0].dtype
        if dtype.is_float:
            # numpy: every comparison with NaN is False except !=, which is True.
            return (b.fcmp_unordered(pred, a[0], a[1]) if pred == "!="
                    else b.fcmp_ordered(pred, a[0], a[1]))
        if dtype == DType.bool:
            return b.icmp_unsigned(pred, a[0], a[1])
        return b.icmp_signed(pred, a[0], a[1])

    return rule


for _op in _CMP:
    LOWER[_op] = _comparison(_op)


@_rule("logical_and")
def _and(b: ir.IRBuilder, n: Node, a: list[ir.Value]) -> ir.Value:
    return b.and_(a[0], a[1])


@_rule("logical_or")
def _or(b: ir.IRBuilder, n: Node, a: list[ir.Value]) -> ir.Value:
    return b.or_(a[0], a[1])


@_rule("where")
def _where(b: ir.IRBuilder, n: Node, a: list[ir.Value]) -> ir.Value:
    return b.select(a[0], a[1], a[2])
