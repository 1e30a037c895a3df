"""Op-table rows for the elementwise family (numpy expressions written independently)."""

from __future__ import annotations

import math

import numpy as np

import graphc as gc
from tests.op_table import Arg, OpCase

_erf = np.vectorize(math.erf)
S = (3, 5)


def _sig(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _u(name: str, fn, ref, kind: str = "normal", grad: bool = True, shape=S, **kw) -> OpCase:
    return OpCase(name, (name,), fn, ref, (Arg(shape, kind),), grad=grad, **kw)


CASES: list[OpCase] = [
    _u("neg", gc.neg, lambda x: -x),
    _u("abs", gc.abs, np.abs, "away0"),
    _u("sign", gc.sign, np.sign, "away0", grad=False),
    _u("exp", gc.exp, np.exp),
    _u("log", gc.log, np.log, "positive"),
    _u("log1p", gc.log1p, np.log1p, "unit"),
    _u("expm1", gc.expm1, np.expm1),
    _u("sqrt", gc.sqrt, np.sqrt, "positive"),
    _u("rsqrt", gc.rsqrt, lambda x: x**-0.5, "positive"),
    _u("square", gc.square, lambda x: x * x),
    _u("reciprocal", gc.reciprocal, lambda x: 1 / x, "away0"),
    _u("sin", gc.sin, np.sin),
    _u("cos", gc.cos, np.cos),
    _u("tanh", gc.tanh, lambda x: (np.exp(2 * x) - 1) / (np.exp(2 * x) + 1)),
    _u("sigmoid", gc.sigmoid, _sig),
    _u("relu", gc.relu, lambda x: x * (x > 0), "away0"),
    OpCase("leaky_relu", ("leaky_relu",), lambda x: gc.leaky_relu(x, 0.2),
           lambda x: np.where(x > 0, x, 0.2 * x), (Arg(S, "away0"),)),
    OpCase("elu", ("elu",), lambda x: gc.elu(x, 0.7),
           lambda x: np.where(x > 0, x, 0.7 * (np.exp(x) - 1)), (Arg(S, "away0"),)),
    _u("selu", gc.selu,
       lambda x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * (np.exp(x) - 1)),
       "away0"),
    _u("gelu", gc.gelu, lambda x: x * 0.5 * (1 + _erf(x / np.sqrt(2)))),
    OpCase("gelu_tanh", ("gelu",), lambda x: gc.gelu(x, approximate="tanh"),
           lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))),
           (Arg(S),)),
    _u("softplus", gc.softplus, lambda x: np.log(1 + np.exp(x))),
    OpCase("softplus:large", ("softplus",), lambda x: gc.softplus(x * 60.0),
           lambda x: np.logaddexp(0, 60 * x), (Arg(S),), grad=False),
    _u("erf", gc.erf, _erf),
    _u("floor", gc.floor, np.floor, grad=False),
    _u("ceil", gc.ceil, np.ceil, grad=False),
    OpCase("round", ("round",), lambda x: gc.round(x * 2.0), lambda x: np.round(x * 2),
           (Arg(S),), grad=False),
    OpCase("logical_not", ("logical_not",), gc.logical_not, np.logical_not, (Arg(S, "bool"),),
           grad=False),
    OpCase("cast_f_to_i", ("cast",), lambda x: gc.cast(x * 3.0, gc.int32),
           lambda x: np.trunc(x * 3).astype(np.int32), (Arg(S),), grad=False),
    OpCase("cast_f_to_f", ("cast",), lambda x: gc.cast(x, gc.float64) * 2.0,
           lambda x: x * 2, (Arg(S),)),
    OpCase("cast_i_to_f", ("cast",), lambda i: gc.cast(i, gc.float32),
           lambda i: i.astype(np.float32), (Arg(S, "int", -5, 5),), grad=False),
    # bf16 keeps 8 significant bits, rounded half to even (normal values: frexp's mantissa
    # in [0.5, 1) scaled by 2^8 is rounded by np.round, which rounds half to even).
    OpCase("cast_f_to_bf16_and_back", ("cast",),
           lambda x: gc.cast(gc.cast(x * 3.0, gc.bfloat16), x.dtype), lambda x: _bf16(x * 3),
           (Arg(S),), grad=False),
    OpCase("bf16_arithmetic", ("cast", "mul", "add", "exp"),
           lambda x: gc.cast(gc.exp(gc.cast(x, gc.bfloat16) * 0.5) + 1.0, gc.float32),
           lambda x: _bf16(_bf16(np.exp(_bf16(_bf16(x) * 0.5))) + 1.0),
           (Arg(S),), dtypes=("float32",), grad=False, rtol32=1e-2),
    OpCase("cast_f_to_i8_saturates", ("cast",), lambda x: gc.cast(x * 100.0, gc.int8),
           lambda x: np.clip(np.trunc(x * 100), -128, 127).astype(np.int8), (Arg(S),),
           grad=False),
    OpCase("cast_f_to_u8_saturates", ("cast",), lambda x: gc.cast(x * 100.0, gc.uint8),
           lambda x: np.clip(np.trunc(x * 100), 0, 255).astype(np.uint8), (Arg(S),),
           grad=False),
    OpCase("cast_u8_to_i32", ("cast",), lambda i: gc.cast(i, gc.int32),
           lambda i: i.astype(np.int32), (Arg(S, "int", 0, 256, "uint8"),), grad=False),
]


def _bf16(x: np.ndarray) -> np.ndarray:
    """float32 x rounded to bf16 (8 significant bits, half to even), for normal values."""
    m, e = np.frexp(np.asarray(x, np.float32).astype(np.float64))
    return np.ldexp(np.round(m * 256) / 256, e).astype(x.dtype)


def _b(name: str, fn, ref, a=S, b=S, ka="normal", kb="normal", grad=True, **kw) -> OpCase:
    return OpCase(name, (name.split(":")[0],), fn, ref, (Arg(a, ka), Arg(b, kb)), grad=grad,
                  **kw)


CASES += [
    _b("add", gc.add, np.add),
    _b("add:broadcast", lambda a, b: a + b, lambda a, b: a + b, (4, 1, 3), (5, 1)),
    _b("add:scalar", lambda a, b: a + b, lambda a, b: a + b, (2, 3), ()),
    _b("sub", lambda a, b: a - b, np.subtract, (2, 3), (3,)),
    _b("mul", lambda a, b: a * b, np.multiply, (1, 3), (4, 1)),
    _b("div", lambda a, b: a / b, np.divide, (2, 3), (2, 1), kb="away0"),
    _b("pow", lambda a, b: a**b, np.power, (2, 3), (3,), ka="positive"),
    _b("maximum", gc.maximum, np.maximum, (3, 4), (4,)),
    _b("minimum", gc.minimum, np.minimum, (3, 4), (3, 1)),
    _b("mod", lambda a, b: a % b, lambda a, b: a - b * np.floor(a / b), (3, 4), (4,),
       kb="away0", grad_tol=1e-5),
    OpCase("mod:int", ("mod",), lambda a, b: a % b, lambda a, b: np.mod(a, b),
           (Arg(S, "int", -20, 20), Arg(S, "int", 1, 7)), grad=False),
    _b("equal", lambda a, b: gc.equal(gc.round(a), gc.round(b)),
       lambda a, b: np.round(a) == np.round(b), grad=False),
    _b("not_equal", lambda a, b: gc.not_equal(gc.round(a), gc.round(b)),
       lambda a, b: np.round(a) != np.round(b), grad=False),
    _b("less", lambda a, b: a < b, np.less, (3, 1), (4,), grad=False),
    _b("less_equal", lambda a, b: a <= b, np.less_equal, grad=False),
    _b("greater", lambda a, b: a > b, np.greater, grad=False),
    _b("greater_equal", lambda a, b: a >= b, np.greater_equal, grad=False),
    OpCase("logical_and", ("logical_and",), lambda a, b: a & b, np.logical_and,
           (Arg(S, "bool"), Arg((5,), "bool")), grad=False),
    OpCase("logical_or", ("logical_or",), lambda a, b: a | b, np.logical_or,
           (Arg(S, "bool"), Arg(S, "bool")), grad=False),
    OpCase("where", ("where",), lambda a, b: gc.where(a > 0.0, a * 2.0, b),
           lambda a, b: np.where(a > 0, a * 2, b), (Arg((3, 4), "away0"), Arg((4,)))),
    OpCase("where:scalar", ("where",), lambda a: gc.where(a > 0.0, a, 0.5),
           lambda a: np.where(a > 0, a, 0.5), (Arg((3, 4), "away0"),)),
    OpCase("clip", ("maximum", "minimum"), lambda a: gc.clip(a, -0.5, 0.5),
           lambda a: np.minimum(np.maximum(a, -0.5), 0.5), (Arg((4, 5), "distinct"),)),
]
