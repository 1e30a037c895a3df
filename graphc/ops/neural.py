"""Neural-network ops: softmax, log_softmax, stop_gradient, and composite losses/normalizers.

Primitives (one `OpDef` each): `softmax` and `log_softmax` over one axis (numerically stable
max-shifted references; OPAQUE, because codegen lowers them as one row-wise kernel), and
`stop_gradient` (the identity with no gradient rule, so autodiff cuts it).

Composites (built from other ops, so their gradients come for free): `softmax_cross_entropy`,
`sigmoid_binary_cross_entropy`, `mse`, `mae`, `batch_norm` (inference form) and `dropout`.
They check their operands themselves and raise errors naming the composite, the operand, and
the user's line, instead of letting a failing inner op report it. (`layer_norm` and
`rms_norm` are fused ops of their own: `graphc.ops.norm`.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from graphc.builder import Operand, apply, constant, user_location
from graphc.errors import AttrError, DTypeError, GraphcError, ShapeError
from graphc.ir import Attrs, DType, Node, TensorType
from graphc.ir.attrs import AttrSpec, Kind
from graphc.ir.opdef import Fusion, OpDef
from graphc.ops import elementwise as _ew
from graphc.ops import random as _random
from graphc.ops import reduce as _reduce
from graphc.ops.common import ALL, FLOATS, INTS, check_dtype, normalize_axis
from graphc.ops.gather import take_along_axis
from graphc.ops.layout import expand_dims, reshape

__all__ = [
    "batch_norm",
    "dropout",
    "log_softmax",
    "mae",
    "mse",
    "sigmoid_binary_cross_entropy",
    "softmax",
    "softmax_cross_entropy",
    "stop_gradient",
]

OPS: list[OpDef] = []


# --- softmax, log_softmax -------------------------------------------------------------------

def _softmax_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    (x,) = types
    check_dtype(x, FLOATS, "x")
    axis = attrs["axis"]
    if isinstance(axis, bool) or not isinstance(axis, int) or not 0 <= axis < x.ndim:
        raise AttrError(f"axis must be a non-negative axis of x ({x}), got {axis!r}")
    return x


def _shifted(x: np.ndarray, axis: int) -> np.ndarray:
    """x minus its max along `axis` (the max of an all -inf row counts as 0, not nan)."""
    m = np.max(x, axis=axis, keepdims=True, initial=-np.inf)
    return x - np.where(np.isfinite(m), m, 0).astype(x.dtype)


def _softmax_ref(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    e = np.exp(_shifted(arrays[0], attrs["axis"]))
    return (e / np.sum(e, axis=attrs["axis"], keepdims=True)).astype(arrays[0].dtype)


def _log_softmax_ref(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    z = _shifted(arrays[0], attrs["axis"])
    lse = np.log(np.sum(np.exp(z), axis=attrs["axis"], keepdims=True))
    return (z - lse).astype(arrays[0].dtype)


def _softmax_grad(n: Node, g: Node) -> list[Node | None]:
    # dx = y * (g - sum(g * y)) along the axis: the Jacobian diag(y) - y y^T applied to g.
    dot = _reduce.sum(g * n, axis=n.attrs["axis"], keepdims=True)
    return [n * (g - dot)]


def _log_softmax_grad(n: Node, g: Node) -> list[Node | None]:
    # dx = g - softmax(x) * sum(g); softmax(x) = exp(log_softmax(x)).
    total = _reduce.sum(g, axis=n.attrs["axis"], keepdims=True)
    return [g - _ew.exp(n) * total]


AXIS = AttrSpec("axis", Kind.INT, low=0)  # resolved: non-negative
SOFTMAX = OpDef("softmax", "nn", 1, _softmax_infer, _softmax_ref, Fusion.OPAQUE, _softmax_grad,
                doc="exp(x) / sum(exp(x)) along axis (max-shifted)", attrs=(AXIS,))
LOG_SOFTMAX = OpDef("log_softmax", "nn", 1, _softmax_infer, _log_softmax_ref, Fusion.OPAQUE,
                    _log_softmax_grad, doc="x - logsumexp(x) along axis (max-shifted)",
                    attrs=(AXIS,))


def _stop_gradient_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    check_dtype(types[0], ALL, "x")
    return types[0]


STOP_GRADIENT = OpDef("stop_gradient", "nn", 1, _stop_gradient_infer,
                      lambda arrays, attrs: np.array(arrays[0], copy=True), Fusion.ELEMENTWISE,
                      None, doc="identity whose gradient is zero")
OPS.extend([SOFTMAX, LOG_SOFTMAX, STOP_GRADIENT])


def _fail(cls: type[GraphcError], message: str, op: str) -> GraphcError:
    """An error of a composite: named after it and located at the user's line."""
    return cls(message, op=op, loc=user_location())


def _axis_attr(x: Operand, axis: int, op: str) -> int:
    ndim = x.ndim if isinstance(x, Node) else np.ndim(x)
    try:
        return normalize_axis(axis, ndim)
    except GraphcError as exc:
        raise exc.with_context(op=op, loc=user_location()) from None


def softmax(x: Operand, axis: int = -1, name: str | None = None) -> Node:
    """exp(x) / sum(exp(x)) along `axis` (float x), computed stably."""
    return apply(SOFTMAX, [x], {"axis": _axis_attr(x, axis, "softmax")}, name=name)


def log_softmax(x: Operand, axis: int = -1, name: str | None = None) -> Node:
    """x - log(sum(exp(x))) along `axis` (float x), computed stably."""
    return apply(LOG_SOFTMAX, [x], {"axis": _axis_attr(x, axis, "log_softmax")}, name=name)


def stop_gradient(x: Operand, name: str | None = None) -> Node:
    """The identity in the forward pass; gradients do not flow through it."""
    return apply(STOP_GRADIENT, [x], name=name)


# --- composite helpers ----------------------------------------------------------------------

def _node(x: Operand) -> Node:
    return x if isinstance(x, Node) else constant(x)


def _float_operand(x: Operand, what: str, op: str) -> Node:
    node = _node(x)
    if node.dtype not in FLOATS:
        raise _fail(DTypeError, f"{what}: expected a float dtype, got {node.type}", op)
    return node


def _like(x: Operand, ref: Node, what: str, ref_what: str, op: str) -> Node:
    """`x` as a node of exactly `ref`'s type, or an error naming both operands."""
    node = _node(x)
    if node.type != ref.type:
        cls = DTypeError if node.dtype != ref.dtype else ShapeError
        raise _fail(cls, f"{what}: expected {ref.type} like {ref_what}, got {node.type}", op)
    return node


def _vector(x: Operand | None, want: TensorType, what: str, why: str, op: str) -> Node | None:
    if x is None:
        return None
    node = _node(x)
    if node.type != want:
        cls = DTypeError if node.dtype != want.dtype else ShapeError
        raise _fail(cls, f"{what}: expected {want} ({why}), got {node.type}", op)
    return node


def _eps(eps: float, op: str) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (
        math.isfinite(eps) and eps >= 0
    ):
        raise _fail(AttrError, f"eps must be a finite number >= 0, got {eps!r}", op)
    return float(eps)


# --- losses ---------------------------------------------------------------------------------

def softmax_cross_entropy(
    logits: Operand, labels: Operand, axis: int = -1, name: str | None = None
) -> Node:
    """Per-example ``-log_softmax(logits)[label]``; the result has the shape of `labels`.

    `labels` are int32/int64 class indices shaped like `logits` without the class `axis`
    (e.g. logits f32[N,C], labels i32[N]). A label outside [-C, C) is a `GraphcError` at
    run time, in the reference and in compiled code alike (the compiled call stops at the
    gather that finds it, before any variable update).
    """
    op = "softmax_cross_entropy"
    logits = _float_operand(logits, "logits", op)
    labels = _node(labels)
    axis = _axis_attr(logits, axis, op)
    want = logits.shape[:axis] + logits.shape[axis + 1:]
    if labels.dtype not in INTS or labels.shape != want:
        cls = DTypeError if labels.dtype not in INTS else ShapeError
        shown = ",".join(str(d) for d in want)
        raise _fail(cls, f"labels: expected i32[{shown}] or i64[{shown}] (logits {logits.type} "
                         f"without class axis {axis}), got {labels.type}", op)
    logp = log_softmax(logits, axis=axis)
    picked = take_along_axis(logp, expand_dims(labels, axis), axis=axis)
    return _ew.neg(reshape(picked, want), name=name)


def sigmoid_binary_cross_entropy(
    logits: Operand, targets: Operand, name: str | None = None
) -> Node:
    """Elementwise ``-(z log sigmoid(x) + (1-z) log(1-sigmoid(x)))`` for logits x, targets z.

    Computed as ``softplus(x) - x*z``; softplus is the stable
    ``max(x, 0) + log1p(exp(-|x|))`` with gradient sigmoid(x), so d/dx = sigmoid(x) - z
    holds exactly even at x == 0 (the max/abs spelling would get the kink's subgradient).
    `targets` must have the type of `logits`.
    """
    op = "sigmoid_binary_cross_entropy"
    x = _float_operand(logits, "logits", op)
    z = _like(targets, x, "targets", "logits", op)
    return _ew.sub(_ew.softplus(x), x * z, name=name)


def _batch_axes(x: Node) -> tuple[int, ...]:
    """The non-batch axes a per-example loss averages over (none for rank <= 1)."""
    return tuple(range(1, x.ndim))


def mse(pred: Operand, target: Operand, name: str | None = None) -> Node:
    """Per-example mean squared error: shape (N,) for inputs (N, ...); elementwise for 1-D."""
    pred = _float_operand(pred, "pred", "mse")
    target = _like(target, pred, "target", "pred", "mse")
    if pred.ndim <= 1:
        return _ew.square(pred - target, name=name)
    return _reduce.mean(_ew.square(pred - target), axis=_batch_axes(pred), name=name)


def mae(pred: Operand, target: Operand, name: str | None = None) -> Node:
    """Per-example mean absolute error: shape (N,) for inputs (N, ...); elementwise for 1-D."""
    pred = _float_operand(pred, "pred", "mae")
    target = _like(target, pred, "target", "pred", "mae")
    if pred.ndim <= 1:
        return _ew.abs(pred - target, name=name)
    return _reduce.mean(_ew.abs(pred - target), axis=_batch_axes(pred), name=name)


# --- normalization --------------------------------------------------------------------------

def batch_norm(
    x: Operand,
    mean: Operand,
    var: Operand,
    gamma: Operand | None = None,
    beta: Operand | None = None,
    eps: float = 1e-5,
    axis: int = 1,
    name: str | None = None,
) -> Node:
    """Inference batch norm: ``(x - mean) / sqrt(var + eps) * gamma + beta``.

    `mean`, `var`, `gamma`, `beta` are per-channel vectors of shape (C,), C = x.shape[axis],
    with x's dtype; they broadcast along `axis` (1: NCHW; -1: NHWC). gamma/beta None mean
    1 and 0.
    """
    op = "batch_norm"
    x = _float_operand(x, "x", op)
    axis = _axis_attr(x, axis, op)
    eps = _eps(eps, op)
    want = TensorType((x.shape[axis],), x.dtype)
    why = f"x.shape[{axis}] channels of x {x.type}"
    mean_n = _vector(mean, want, "mean", why, op)
    var_n = _vector(var, want, "var", why, op)
    gamma_n = _vector(gamma, want, "gamma", why, op)
    beta_n = _vector(beta, want, "beta", why, op)
    assert mean_n is not None and var_n is not None
    # Fold everything per-channel first: a (C,) rsqrt and multiply instead of full-size ones.
    scale = _ew.rsqrt(var_n + eps)
    if gamma_n is not None:
        scale = scale * gamma_n
    channel_shape = tuple(d if i == axis else 1 for i, d in enumerate(x.shape))

    def along_axis(v: Node) -> Node:
        return v if axis == x.ndim - 1 else reshape(v, channel_shape)

    centered = x - along_axis(mean_n)
    if beta_n is None:
        return _ew.mul(centered, along_axis(scale), name=name)
    return _ew.add(centered * along_axis(scale), along_axis(beta_n), name=name)


# --- dropout --------------------------------------------------------------------------------

def dropout(
    x: Operand,
    rate: float,
    seed: int,
    key: Node | int | None = None,
    training: bool = True,
    name: str | None = None,
) -> Node:
    """Inverted dropout: keep each element with probability 1 - rate, scaled by 1/(1 - rate).

    The mask is ``random_uniform(x.shape, float32, seed, key=key) >= rate``, so it depends
    only on (shape, seed, key, rate), not on x's dtype; pass a step-counter `key` for fresh
    masks each training step. ``training=False`` or ``rate == 0`` return `x` itself.
    """
    op = "dropout"
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise _fail(AttrError, f"rate must be a number in [0, 1), got {rate!r}", op)
    x = _float_operand(x, "x", op)
    if not training or rate == 0:
        return x
    u = _random.random_uniform(x.shape, DType.float32, seed=seed, key=key)
    keep = _ew.greater_equal(u, float(rate))
    return _ew.where(keep, x * (1.0 / (1.0 - rate)), 0.0, name=name)
