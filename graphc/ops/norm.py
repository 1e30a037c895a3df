"""Fused normalizations over the trailing axes: `layer_norm`, `rms_norm` and their gradients.

    layer_norm(x[, gamma][, beta])    (x - mean) * rstd * gamma + beta, rstd = 1/sqrt(var + eps)
    rms_norm(x[, gamma])              x * rstd * gamma,       rstd = 1/sqrt(mean(x²) + eps)
    layer_norm_grad(x, dy[, gamma])   dx of layer_norm: rstd·(g - mean(g) - x̂·mean(g·x̂)),
                                      g = dy·gamma, x̂ = (x - mean)·rstd
    rms_norm_grad(x, dy[, gamma])     dx of rms_norm: rstd·(g - x̂·mean(g·x̂)), x̂ = x·rstd

Statistics are over the last k axes (`axes`, resolved: the trailing k axes of x), the
variance is the biased one (PyTorch's and ONNX's). gamma and beta have shape x.shape[-k:]
and x's dtype; layer_norm says which of them it has in `has_gamma` / `has_beta` (two
operands are ambiguous otherwise).

Each op is OPAQUE: codegen gives it one row kernel (graphc.codegen.opaque.norms) that reads
a row once for each statistic (it is in L1 by then) and writes it once. The gradient of a
norm recomputes mean and rstd from x in `*_grad`'s kernel rather than saving them; dgamma
and dbeta are column sums of dy·x̂ and dy (reductions the column-sum fusion handles). The
`*_grad` ops are self-adjoint in g, so their own gradient (second order) is the same op
plus composites for d/dx.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from graphc.builder import Operand, apply
from graphc.errors import AttrError, DTypeError, GraphcError, ShapeError
from graphc.ir import Attrs, Node, TensorType
from graphc.ir.attrs import AttrSpec, Kind
from graphc.ir.opdef import Fusion, OpDef
from graphc.ops import elementwise as _ew
from graphc.ops import reduce as _reduce
from graphc.ops.common import FLOATS, as_node, check_dtype, fail, normalize_axes

__all__ = ["layer_norm", "rms_norm"]

OPS: list[OpDef] = []

AXES = AttrSpec("axes", Kind.INTS, low=0)  # resolved: the trailing axes of x, ascending
EPS = AttrSpec("eps", Kind.FLOAT, low=0.0, finite=True)
LN_ATTRS = (AXES, EPS, AttrSpec("has_gamma", Kind.BOOL), AttrSpec("has_beta", Kind.BOOL))
RMS_ATTRS = (AXES, EPS)


# --- type rules -----------------------------------------------------------------------------

def _check_axes(x: TensorType, axes: Sequence[int]) -> int:
    """k, the number of normalized axes, when `axes` are x's trailing axes; else AttrError."""
    k = len(axes)
    if k == 0 or tuple(axes) != tuple(range(x.ndim - k, x.ndim)):
        raise AttrError(f"axes must be the trailing axes of x ({x}), e.g. -1 or (-2, -1); "
                        f"got {tuple(axes)!r}")
    return k


def param_type(x: TensorType, axes: Sequence[int]) -> TensorType:
    """The type of gamma and beta: x's normalized trailing shape and dtype."""
    return TensorType(x.shape[x.ndim - len(axes):], x.dtype)


def _check_params(x: TensorType, axes: Sequence[int], params: Sequence[TensorType],
                  names: Sequence[str]) -> None:
    want = param_type(x, axes)
    for name, t in zip(names, params):
        if t != want:
            cls = DTypeError if t.dtype != want.dtype else ShapeError
            raise cls(f"{name}: expected {want} (the normalized trailing shape of x {x}), "
                      f"got {t}")


def _param_names(op: str, attrs: Attrs) -> list[str]:
    """The names of a forward op's operands after x, in order."""
    if op == "rms_norm":
        return ["gamma"]
    return [n for n, on in (("gamma", attrs["has_gamma"]), ("beta", attrs["has_beta"])) if on]


def _forward_infer(op: str, types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    x, *params = types
    check_dtype(x, FLOATS, "x")
    _check_axes(x, attrs["axes"])
    names = _param_names(op, attrs)
    if op == "layer_norm" and len(params) != len(names):
        raise GraphcError(f"expected {1 + len(names)} operands (x, {', '.join(names)}) for "
                          f"has_gamma={attrs['has_gamma']}, has_beta={attrs['has_beta']}; "
                          f"got {len(types)}")
    if len(params) > len(names):
        raise GraphcError(f"expected x and at most an optional gamma, got {len(types)} operands")
    _check_params(x, attrs["axes"], params, names)
    return x


def _grad_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    if len(types) not in (2, 3):
        raise GraphcError(f"expected x, dy and an optional gamma, got {len(types)} operands")
    x, dy, *gamma = types
    check_dtype(x, FLOATS, "x")
    _check_axes(x, attrs["axes"])
    if dy != x:
        cls = DTypeError if dy.dtype != x.dtype else ShapeError
        raise cls(f"dy: expected {x} like x, got {dy}")
    _check_params(x, attrs["axes"], gamma, ["gamma"])
    return x


# --- references (float64 inside) ------------------------------------------------------------

def _normalized(x: np.ndarray, attrs: Attrs, centered: bool) -> tuple[np.ndarray, np.ndarray]:
    """(x̂, rstd) in float64; rstd keeps the reduced axes (size 1)."""
    axes = tuple(attrs["axes"])
    x64 = x.astype(np.float64)
    xc = x64 - x64.mean(axis=axes, keepdims=True) if centered else x64
    rstd = 1.0 / np.sqrt(np.mean(xc * xc, axis=axes, keepdims=True) + attrs["eps"])
    return xc * rstd, rstd


def _forward_ref(op: str, arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    x, *params = arrays
    y, _ = _normalized(x, attrs, op == "layer_norm")
    for name, p in zip(_param_names(op, attrs), params):
        y = y * p if name == "gamma" else y + p
    return y.astype(x.dtype)


def _grad_ref(op: str, arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    x, dy, *gamma = arrays
    axes = tuple(attrs["axes"])
    xh, rstd = _normalized(x, attrs, op == "layer_norm_grad")
    g = dy.astype(np.float64) * (gamma[0] if gamma else 1.0)
    inner = g - xh * np.mean(g * xh, axis=axes, keepdims=True)
    if op == "layer_norm_grad":
        inner = inner - np.mean(g, axis=axes, keepdims=True)
    return (rstd * inner).astype(x.dtype)


# --- gradients ------------------------------------------------------------------------------

def _lead_sum(t: Node, k: int) -> Node:
    """`t` summed over its leading axes (all but the last k): a parameter's gradient."""
    lead = tuple(range(t.ndim - k))
    return _reduce.sum(t, axis=lead) if lead else t


def _forward_grad(n: Node, g: Node) -> list[Node | None]:
    x, *params = n.inputs
    axes = n.attrs["axes"]
    layer = n.op == "layer_norm"
    named = dict(zip(_param_names(n.op, n.attrs), params))
    gamma = named.get("gamma")
    stats = {"axes": axes, "eps": n.attrs["eps"]}
    dx = apply(LAYER_NORM_GRAD if layer else RMS_NORM_GRAD,
               [x, g, *([gamma] if gamma is not None else [])], stats)
    grads: list[Node | None] = [dx]
    if gamma is not None:
        # x̂ recomputed by a plain forward kernel: (y - beta) / gamma loses x̂ where gamma ~ 0.
        xhat = _plain(n.op, x, stats)
        grads.append(_lead_sum(g * xhat, len(axes)))
    if "beta" in named:
        grads.append(_lead_sum(g, len(axes)))
    return grads


def _plain(op: str, x: Node, stats: Attrs) -> Node:
    """x̂: the norm `op` of x without gamma and beta."""
    if op in ("layer_norm", "layer_norm_grad"):
        return apply(LAYER_NORM, [x], {**stats, "has_gamma": False, "has_beta": False})
    return apply(RMS_NORM, [x], stats)


def _grad_grad(n: Node, v: Node) -> list[Node | None]:
    """The gradient of dx = G(x, dy, gamma) with cotangent v.

    G is linear and self-adjoint in g = dy·gamma (G(x, g)·v = g·G(x, v)), so d/ddy and
    d/dgamma use the same op on v. For x, with a = v, b = g centered (layer_norm) or not
    (rms_norm), mA = mean(v·x̂), mB = mean(g·x̂), r = rstd:
    d/dx = r²·(x̂·(3·mA·mB - mean(a·b)) - a·mB - b·mA)."""
    x, dy, *gamma = n.inputs
    axes = n.attrs["axes"]
    layer = n.op == "layer_norm_grad"

    def mean(t: Node) -> Node:
        return _reduce.mean(t, axis=axes, keepdims=True)

    stats = {"axes": axes, "eps": n.attrs["eps"]}
    xc = x - mean(x) if layer else x
    r2 = _ew.reciprocal(mean(_ew.square(xc)) + n.attrs["eps"])
    xhat = _plain(n.op, x, stats)
    g = dy * gamma[0] if gamma else dy
    a = v - mean(v) if layer else v
    b = g - mean(g) if layer else g
    m_a, m_b = mean(v * xhat), mean(g * xhat)
    d_x = r2 * (xhat * (3.0 * m_a * m_b - mean(a * b)) - a * m_b - b * m_a)
    w = apply(_GRADS[n.op], [x, v], stats)
    grads: list[Node | None] = [d_x, w * gamma[0] if gamma else w]
    if gamma:
        grads.append(_lead_sum(dy * w, len(axes)))
    return grads


LAYER_NORM = OpDef(
    "layer_norm", "norm", None, lambda t, a: _forward_infer("layer_norm", t, a),
    lambda x, a: _forward_ref("layer_norm", x, a), Fusion.OPAQUE, _forward_grad,
    attrs=LN_ATTRS, doc="(x - mean) / sqrt(var + eps) * gamma + beta over trailing axes, fused")
RMS_NORM = OpDef(
    "rms_norm", "norm", None, lambda t, a: _forward_infer("rms_norm", t, a),
    lambda x, a: _forward_ref("rms_norm", x, a), Fusion.OPAQUE, _forward_grad,
    attrs=RMS_ATTRS, doc="x / sqrt(mean(x²) + eps) * gamma over trailing axes, fused")
LAYER_NORM_GRAD = OpDef(
    "layer_norm_grad", "norm", None, _grad_infer,
    lambda x, a: _grad_ref("layer_norm_grad", x, a), Fusion.OPAQUE, _grad_grad,
    attrs=RMS_ATTRS, doc="dx of layer_norm from x, dy (and gamma), statistics recomputed")
RMS_NORM_GRAD = OpDef(
    "rms_norm_grad", "norm", None, _grad_infer,
    lambda x, a: _grad_ref("rms_norm_grad", x, a), Fusion.OPAQUE, _grad_grad,
    attrs=RMS_ATTRS, doc="dx of rms_norm from x, dy (and gamma), statistics recomputed")
_GRADS = {"layer_norm_grad": LAYER_NORM_GRAD, "rms_norm_grad": RMS_NORM_GRAD}
OPS.extend([LAYER_NORM, RMS_NORM, LAYER_NORM_GRAD, RMS_NORM_GRAD])


# --- builders -------------------------------------------------------------------------------

def _float_x(x: Operand, op: str) -> Node:
    node = as_node(x)
    if node.dtype not in FLOATS:
        fail(op, DTypeError(f"x: expected a float dtype, got {node.type}"))
    return node


def _resolve_axes(x: Node, axis: int | Sequence[int], op: str) -> tuple[int, ...]:
    try:
        axes = normalize_axes(axis, x.ndim)
    except GraphcError as exc:
        fail(op, exc)
    k = len(axes)
    if k == 0 or axes != tuple(range(x.ndim - k, x.ndim)):
        fail(op, AttrError(f"axis must name the trailing axes of x ({x.type}), e.g. -1 or "
                           f"(-2, -1); got {axis!r}"))
    return axes


def _eps(eps: float, op: str) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (
            math.isfinite(eps) and eps >= 0):
        fail(op, AttrError(f"eps must be a finite number >= 0, got {eps!r}"))
    return float(eps)


def _param(p: Operand | None, x: Node, axes: tuple[int, ...], what: str, op: str
           ) -> list[Node]:
    """[p] as a node of the parameter type, [] for None; an error naming `what` otherwise."""
    if p is None:
        return []
    node = as_node(p)
    want = param_type(x.type, axes)
    if node.type != want:
        cls = DTypeError if node.dtype != want.dtype else ShapeError
        fail(op, cls(f"{what}: expected {want} (the normalized trailing shape of x {x.type}), "
                     f"got {node.type}"))
    return [node]


def layer_norm(
    x: Operand,
    gamma: Operand | None = None,
    beta: Operand | None = None,
    axis: int | Sequence[int] = -1,
    eps: float = 1e-5,
    name: str | None = None,
) -> Node:
    """``(x - mean) / sqrt(var + eps) * gamma + beta`` over the trailing `axis` (biased var).

    `axis` is one axis or a tuple of axes that must be the last k axes of x (e.g. -1 or
    (-2, -1)); gamma/beta have shape x.shape[-k:] and x's dtype (None: 1 and 0). One fused
    row kernel forward, one backward (plus column sums for gamma and beta).
    """
    op = "layer_norm"
    xn = _float_x(x, op)
    axes = _resolve_axes(xn, axis, op)
    attrs = {"axes": axes, "eps": _eps(eps, op), "has_gamma": gamma is not None,
             "has_beta": beta is not None}
    params = _param(gamma, xn, axes, "gamma", op) + _param(beta, xn, axes, "beta", op)
    return apply(LAYER_NORM, [xn, *params], attrs, name=name)


def rms_norm(
    x: Operand,
    gamma: Operand | None = None,
    axis: int | Sequence[int] = -1,
    eps: float = 1e-6,
    name: str | None = None,
) -> Node:
    """``x / sqrt(mean(x², trailing axes) + eps) * gamma`` (RMSNorm, as in Llama and
    PyTorch's ``rms_norm``).

    `axis` names the last k axes of x (e.g. -1 or (-2, -1)); gamma has shape x.shape[-k:]
    and x's dtype (None: 1). One fused row kernel forward, one backward.
    """
    op = "rms_norm"
    xn = _float_x(x, op)
    axes = _resolve_axes(xn, axis, op)
    params = _param(gamma, xn, axes, "gamma", op)
    return apply(RMS_NORM, [xn, *params], {"axes": axes, "eps": _eps(eps, op)}, name=name)
