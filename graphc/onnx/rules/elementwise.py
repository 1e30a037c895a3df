"""Elementwise ONNX ops: arithmetic, comparisons, logic, activations (casts are in `narrow`).

Each folds with numpy when every input is known at import (shape arithmetic), else builds
graphc ops. Composite activations (HardSigmoid, Mish, Celu, ...) are written with graphc's
elementwise ops, which fuse into one kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from graphc.ir import Node
from graphc.onnx.convert import Context, Value, all_known, dtype_of, rule
from graphc.ops import elementwise as ew
from graphc.ops import layout

Inputs = list[Value | None]


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer division truncating toward zero, as ONNX Runtime's C++ does."""
    q = np.trunc(a.astype(np.float64) / b)
    return q.astype(np.result_type(a, b))


def _np_binary(fn: Callable[..., np.ndarray]) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    def apply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = fn(a, b)
        return np.asarray(out, dtype=np.bool_ if out.dtype == np.bool_ else a.dtype)
    return apply


def _legacy_broadcast(ctx: Context, a: Value, b: Value, attrs: dict[str, Any]) -> Value:
    """`b` aligned with `a` as opsets before 7 broadcast: only with `broadcast=1`, `b`'s dims
    placed at `axis` of `a` (default: its trailing dims); otherwise the shapes must match."""
    if not int(attrs.get("broadcast", 0)):
        if tuple(a.shape) != tuple(b.shape):
            raise ctx.error(f"inputs of shapes {tuple(a.shape)} and {tuple(b.shape)} without "
                            "broadcast=1 (opset < 7 broadcasts only when asked)")
        return b
    rank_a, rank_b = len(a.shape), len(b.shape)
    axis = int(attrs.get("axis", rank_a - rank_b))
    if axis < 0:
        axis += rank_a
    if not 0 <= axis <= rank_a - rank_b:
        raise ctx.error(f"broadcast axis {attrs.get('axis')} does not fit shapes "
                        f"{tuple(a.shape)} and {tuple(b.shape)}")
    shape = (1,) * axis + tuple(b.shape) + (1,) * (rank_a - axis - rank_b)
    if isinstance(b, np.ndarray):
        return b.reshape(shape)
    return layout.reshape(b, shape)


def _binary(op: str, numpy_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
            graphc_fn: Callable[[Node, Node], Node], since: tuple[int, ...] = (6, 7)) -> None:
    def convert(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
        a, b = inputs[0], inputs[1]
        if a is None or b is None:
            raise ctx.error("needs two inputs")
        if ctx.opset < 7:
            b = _legacy_broadcast(ctx, a, b, attrs)
        if dtype_of(a) != dtype_of(b):
            raise ctx.error(f"inputs of different dtypes ({dtype_of(a)} and {dtype_of(b)})")
        if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
            return [numpy_fn(a, b)]
        return [graphc_fn(ctx.node(a), ctx.node(b))]
    for v in since:
        rule(op, v)(convert)


def _div_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu":
        return _int_div(a, b)
    return np.asarray(a / b, dtype=a.dtype)


def _mod_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(np.mod(a, b), dtype=a.dtype)


_binary("Add", _np_binary(np.add), ew.add)
_binary("Sub", _np_binary(np.subtract), ew.sub)
_binary("Mul", _np_binary(np.multiply), ew.mul)
def _div(a: Node, b: Node) -> Node:
    """Division; integers truncate toward zero (as ONNX Runtime does), computed in float64:
    exact for magnitudes below 2^53."""
    if a.dtype.is_float:
        return ew.div(a, b)
    q = ew.div(ew.cast(a, "float64"), ew.cast(b, "float64"))
    return ew.cast(ew.where(ew.less(q, 0.0), ew.ceil(q), ew.floor(q)), a.dtype)


_binary("Div", _div_np, _div)
def _pow(a: Node, b: Node) -> Node:
    """a ** b in a's dtype. An integer base is raised in float64 and converted back as ONNX's
    reference converts numpy's float power: truncated toward zero, except that a power
    within 1e-12 (relative) of an integer is that integer (pow's last-bit error in 3 ** 4
    must not truncate 81 to 80). Exact for results below 2^53."""
    if a.dtype.is_float:
        return ew.pow(a, b if b.dtype == a.dtype else ew.cast(b, a.dtype))
    r = ew.pow(ew.cast(a, "float64"), ew.cast(b, "float64"))
    near = ew.round(r)
    whole = ew.less_equal(ew.abs(ew.sub(r, near)), ew.mul(ew.maximum(ew.abs(r), 1.0), 1e-12))
    trunc = ew.where(ew.less(r, 0.0), ew.ceil(r), ew.floor(r))
    return ew.cast(ew.where(whole, near, trunc), a.dtype)


def _pow_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(np.power(a, b), dtype=a.dtype)


_binary("Pow", _pow_np, _pow)
_binary("Equal", _np_binary(np.equal), ew.equal)
_binary("Less", _np_binary(np.less), ew.less)
_binary("LessOrEqual", _np_binary(np.less_equal), ew.less_equal, (12,))
_binary("Greater", _np_binary(np.greater), ew.greater)
_binary("GreaterOrEqual", _np_binary(np.greater_equal), ew.greater_equal, (12,))
_binary("And", _np_binary(np.logical_and), ew.logical_and)
_binary("Or", _np_binary(np.logical_or), ew.logical_or)
_binary("Xor", _np_binary(np.logical_xor), ew.not_equal)


@rule("Pow", 12)
def _pow12(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """Pow from opset 12: the exponent may have another dtype; the result has the base's."""
    a, b = inputs[0], inputs[1]
    if a is None or b is None:
        raise ctx.error("needs two inputs")
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return [_pow_np(a, b)]
    return [_pow(ctx.node(a), ctx.node(b))]


@rule("Mod", 10)
def _mod(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    a, b = inputs[0], inputs[1]
    if attrs.get("fmod", 0):
        if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
            return [np.asarray(np.fmod(a, b), dtype=a.dtype)]
        an, bn = ctx.node(a), ctx.node(b)
        # fmod: the remainder with the dividend's sign, a - b * trunc(a / b).
        if an.dtype.is_float:
            q = ew.div(an, bn)
            trunc = ew.where(ew.less(q, 0.0), ew.ceil(q), ew.floor(q))
            return [ew.sub(an, ew.mul(bn, trunc))]
        m = ew.mod(an, bn)
        fix = ew.logical_and(ew.not_equal(m, 0), ew.not_equal(ew.less(an, 0), ew.less(bn, 0)))
        return [ew.where(fix, ew.sub(m, bn), m)]
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return [_mod_np(a, b)]
    return [ew.mod(ctx.node(a), ctx.node(b))]


def _unary(op: str, numpy_fn: Callable[[np.ndarray], np.ndarray] | None,
           graphc_fn: Callable[[Node], Node], since: int = 6) -> None:
    def convert(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
        x = inputs[0]
        if isinstance(x, np.ndarray) and numpy_fn is not None:
            return [np.asarray(numpy_fn(x), dtype=x.dtype)]
        return [graphc_fn(ctx.node(x))]
    rule(op, since)(convert)


_unary("Abs", np.abs, ew.abs)
_unary("Neg", np.negative, ew.neg)
_unary("Exp", None, ew.exp)
_unary("Log", None, ew.log)
_unary("Sqrt", None, ew.sqrt)
_unary("Reciprocal", None, ew.reciprocal)
_unary("Sin", None, ew.sin, 7)
_unary("Cos", None, ew.cos, 7)
_unary("Tan", None, lambda x: ew.div(ew.sin(x), ew.cos(x)), 7)
_unary("Tanh", None, ew.tanh)
_unary("Sigmoid", None, ew.sigmoid)
_unary("Relu", lambda x: np.maximum(x, 0), ew.relu)
_unary("Floor", np.floor, ew.floor)
_unary("Ceil", np.ceil, ew.ceil)
_unary("Round", np.round, ew.round, 11)
_unary("Sign", np.sign, ew.sign, 9)
_unary("Erf", None, ew.erf, 9)
_unary("Softplus", None, ew.softplus, 1)
_unary("Softsign", None, lambda x: ew.div(x, ew.add(ew.abs(x), 1.0)), 1)
_unary("Not", np.logical_not, ew.logical_not, 1)
_unary("Identity", lambda x: x, lambda x: x, 1)
_unary("IsNaN", np.isnan, lambda x: ew.not_equal(x, x), 9)
_unary("Mish", None, lambda x: ew.mul(x, ew.tanh(ew.softplus(x))), 18)


def _attr_unary(op: str, since: int, build: Callable[[Node, dict[str, Any]], Node]) -> None:
    def convert(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
        return [build(ctx.node(inputs[0]), attrs)]
    rule(op, since)(convert)


def _hard_sigmoid(x: Node, alpha: float, beta: float) -> Node:
    return ew.clip(ew.add(ew.mul(x, alpha), beta), 0.0, 1.0)


def _selu(x: Node, attrs: dict[str, Any]) -> Node:
    alpha = float(attrs.get("alpha", 1.67326319217681884765625))
    gamma = float(attrs.get("gamma", 1.05070102214813232421875))
    neg = ew.mul(ew.sub(ew.exp(ew.minimum(x, 0.0)), 1.0), alpha)
    return ew.mul(ew.where(ew.greater(x, 0.0), x, neg), gamma)


def _celu(x: Node, attrs: dict[str, Any]) -> Node:
    alpha = float(attrs.get("alpha", 1.0))
    neg = ew.mul(ew.sub(ew.exp(ew.div(ew.minimum(x, 0.0), alpha)), 1.0), alpha)
    return ew.add(ew.relu(x), ew.minimum(neg, 0.0))


_attr_unary("LeakyRelu", 6, lambda x, a: ew.leaky_relu(x, float(a.get("alpha", 0.01))))
_attr_unary("Elu", 6, lambda x, a: ew.elu(x, float(a.get("alpha", 1.0))))
_attr_unary("Selu", 6, _selu)
_attr_unary("Celu", 12, _celu)
_attr_unary("HardSigmoid", 6, lambda x, a: _hard_sigmoid(x, float(a.get("alpha", 0.2)),
                                                         float(a.get("beta", 0.5))))
_attr_unary("HardSwish", 14, lambda x, a: ew.mul(x, _hard_sigmoid(x, 1.0 / 6.0, 0.5)))
_attr_unary("ThresholdedRelu", 10, lambda x, a: ew.where(
    ew.greater(x, float(a.get("alpha", 1.0))), x, ew.mul(x, 0.0)))
_attr_unary("Gelu", 20, lambda x, a: ew.gelu(x, "tanh" if a.get("approximate", "none") == "tanh"
                                             else "none"))
_attr_unary("Swish", 24, lambda x, a: ew.mul(x, ew.sigmoid(ew.mul(x, float(a.get("alpha",
                                                                                   1.0))))))


@rule("SwiGLU", 28)
def _swiglu(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """a * sigmoid(alpha * a) * b, for a and b of one shape (ONNX does not broadcast)."""
    a, b = ctx.node(inputs[0]), ctx.node(inputs[1])
    if a.shape != b.shape:
        raise ctx.error(f"A {a.shape} and B {b.shape} must have one shape")
    alpha = float(attrs.get("alpha", 1.0))
    return [ew.mul(ew.mul(a, ew.sigmoid(ew.mul(a, alpha))), b)]


@rule("Shrink", 9)
def _shrink(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x = ctx.node(inputs[0])
    lambd, bias = float(attrs.get("lambd", 0.5)), float(attrs.get("bias", 0.0))
    zero = ew.mul(x, 0.0) if x.dtype.is_float else ew.sub(x, x)
    return [ew.where(ew.less(x, -lambd), ew.add(x, bias),
                     ew.where(ew.greater(x, lambd), ew.sub(x, bias), zero))]


@rule("PRelu", 6)
@rule("PRelu", 7)
def _prelu(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x, slope = ctx.node(inputs[0]), ctx.node(inputs[1])
    if ctx.opset < 7 and slope.ndim == 1 and x.ndim > 2 and slope.shape[0] == x.shape[1]:
        # PRelu-6: a slope per channel (axis 1), as PyTorch exported nn.PReLU(C).
        slope = layout.reshape(slope, (slope.shape[0],) + (1,) * (x.ndim - 2))
    return [ew.where(ew.less(x, 0.0), ew.mul(x, slope), x)]


@rule("IsInf", 10)
def _isinf(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x = ctx.node(inputs[0])
    pos = ew.equal(x, np.inf)
    neg = ew.equal(x, -np.inf)
    want_pos, want_neg = attrs.get("detect_positive", 1), attrs.get("detect_negative", 1)
    if want_pos and want_neg:
        return [ew.logical_or(pos, neg)]
    if want_pos:
        return [pos]
    if want_neg:
        return [neg]
    return [ew.logical_and(pos, neg)]  # all false


@rule("Where", 9)
def _where(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    c, a, b = inputs[0], inputs[1], inputs[2]
    if all_known([c, a, b]):
        assert isinstance(a, np.ndarray)
        return [np.asarray(np.where(c, a, b), dtype=a.dtype)]
    return [ew.where(ctx.node(c), ctx.node(a), ctx.node(b))]


@rule("Clip", 6)
def _clip6(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x = ctx.node(inputs[0])
    lo = float(attrs.get("min", -3.4028234663852886e38))
    hi = float(attrs.get("max", 3.4028234663852886e38))
    return [ew.minimum(ew.maximum(x, lo), hi)]


@rule("Clip", 11)
def _clip11(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x = inputs[0]
    lo = inputs[1] if len(inputs) > 1 else None
    hi = inputs[2] if len(inputs) > 2 else None
    if all_known([x, lo, hi]):
        assert isinstance(x, np.ndarray)
        out = x
        if lo is not None:
            out = np.maximum(out, lo)
        if hi is not None:
            out = np.minimum(out, hi)
        return [np.asarray(out, dtype=x.dtype)]
    out = ctx.node(x)
    if lo is not None:
        out = ew.maximum(out, ctx.node(lo))
    if hi is not None:
        out = ew.minimum(out, ctx.node(hi))
    return [out]


def _variadic(op: str, numpy_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
              graphc_fn: Callable[[Node, Node], Node], mean: bool = False) -> None:
    def convert(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
        xs = [x for x in inputs if x is not None]
        if not xs:
            raise ctx.error("needs at least one input")
        if all_known(xs):
            acc = xs[0]
            assert isinstance(acc, np.ndarray)
            for x in xs[1:]:
                acc = numpy_fn(acc, x)
            if mean:
                acc = acc / len(xs)
            return [np.asarray(acc, dtype=xs[0].dtype)]
        out = ctx.node(xs[0])
        for x in xs[1:]:
            out = graphc_fn(out, ctx.node(x))
        if mean:
            out = ew.div(out, float(len(xs)))
        return [out]
    rule(op, 6)(convert)  # opset 6 requires equal shapes, which broadcasting keeps
    rule(op, 8)(convert)


_variadic("Max", np.maximum, ew.maximum)
_variadic("Min", np.minimum, ew.minimum)
_variadic("Sum", np.add, ew.add)
_variadic("Mean", np.add, ew.add, mean=True)


@rule("Dropout", 6)
@rule("Dropout", 7)
def _dropout(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """The identity, with an all-true mask: in inference (training_mode, an input from
    opset 12, false or absent) and in training with ratio 0; training with a ratio above 0
    draws random numbers, which an imported graph does not."""
    if len(inputs) > 2 and inputs[2] is not None:
        training = bool(ctx.need_known(inputs[2], "training_mode").reshape(-1)[0])
        ratio = 0.5
        if training and len(inputs) > 1 and inputs[1] is not None:
            ratio = float(ctx.need_known(inputs[1], "ratio").reshape(-1)[0])
        if training and ratio != 0.0:
            raise ctx.error(f"training_mode=True with ratio {ratio} is not supported (graphc "
                            "imports models for inference and fine-tuning with its own "
                            "dropout)")
    x = inputs[0]
    if x is None:
        raise ctx.error("input 'data' is missing")
    shape = tuple(x.shape)
    return [x, np.ones(shape, dtype=np.bool_)]
