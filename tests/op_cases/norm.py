"""Op-table rows for the norm family: layer_norm and rms_norm with and without gamma/beta,
over one or two trailing axes, a long row (accuracy of the kernel's statistics), and their
gradient ops (numpy from the textbook: the forward as written, dx as the explicit Jacobian
J = rstd·(I - 1/N - x̂ x̂ᵀ/N) applied to dy·gamma rather than the kernel's row formula).

x is "unit", not "normal": check_grad's weights W are the first standard-normal draw of
seed 0, i.e. equal to a "normal" first arg, and a normalizer's VJP of x itself is ~eps
(scale invariance), which would leave the x-gradient untested.
"""

from __future__ import annotations

import numpy as np

import graphc as gc
from graphc.builder import apply
from graphc.ops import norm
from tests.op_table import Arg, OpCase

S = (3, 5)
LN_EPS = 1e-5
RMS_EPS = 1e-6


def _ln(x: np.ndarray, axes: tuple[int, ...] = (-1,), eps: float = LN_EPS) -> np.ndarray:
    mu = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    return (x - mu) / np.sqrt(var + eps)


def _rms(x: np.ndarray, axes: tuple[int, ...] = (-1,), eps: float = RMS_EPS) -> np.ndarray:
    return x / np.sqrt(np.mean(x ** 2, axis=axes, keepdims=True) + eps)


def _jacobian_dx(x: np.ndarray, dy: np.ndarray, k: int, centered: bool,
                 eps: float) -> np.ndarray:
    """dx = Jᵀ dy per row of the last k axes, J the Jacobian of the plain norm."""
    lead, n = x.shape[:x.ndim - k], int(np.prod(x.shape[x.ndim - k:]))
    rows, grads = x.reshape(-1, n), dy.reshape(-1, n)
    out = np.empty_like(rows)
    for r, (row, g) in enumerate(zip(rows, grads)):
        xc = row - row.mean() if centered else row
        rstd = 1.0 / np.sqrt(np.mean(xc ** 2) + eps)
        xh = xc * rstd
        jac = rstd * (np.eye(n) - (1.0 / n if centered else 0.0) - np.outer(xh, xh) / n)
        out[r] = jac.T @ g
    return out.reshape(*lead, *x.shape[x.ndim - k:])


def _grad_op(op: str, x: gc.Node, dy: gc.Node, gamma: gc.Node | None = None,
             k: int = 1) -> gc.Node:
    opdef = norm.LAYER_NORM_GRAD if op == "layer_norm" else norm.RMS_NORM_GRAD
    eps = LN_EPS if op == "layer_norm" else RMS_EPS
    attrs = {"axes": tuple(range(x.ndim - k, x.ndim)), "eps": eps}
    return apply(opdef, [x, dy, *([gamma] if gamma is not None else [])], attrs)


X, V = Arg(S, "unit"), Arg((5,))
X3, V34 = Arg((2, 3, 4), "unit"), Arg((3, 4))
BIG = Arg((6, 1024))

CASES: list[OpCase] = [
    OpCase("layer_norm", ("layer_norm",), lambda x, g, b: gc.layer_norm(x, g, b),
           lambda x, g, b: _ln(x) * g + b, (X, V, V)),
    OpCase("layer_norm:gamma_only", ("layer_norm",), lambda x, g: gc.layer_norm(x, g),
           lambda x, g: _ln(x) * g, (X, V)),
    OpCase("layer_norm:beta_only", ("layer_norm",), lambda x, b: gc.layer_norm(x, beta=b),
           lambda x, b: _ln(x) + b, (X, V)),
    OpCase("layer_norm:plain_eps", ("layer_norm",), lambda x: gc.layer_norm(x, eps=0.1),
           lambda x: _ln(x, eps=0.1), (X,)),
    OpCase("layer_norm:2axes", ("layer_norm",), lambda x: gc.layer_norm(x, axis=(-2, -1)),
           lambda x: _ln(x, (1, 2)), (X3,)),
    OpCase("layer_norm:2axes_affine", ("layer_norm",),
           lambda x, g, b: gc.layer_norm(x, g, b, axis=(1, 2)),
           lambda x, g, b: _ln(x, (1, 2)) * g + b, (X3, V34, V34)),
    # A row of 1024 (several of the kernel's vectors and a partial block): the statistics
    # of the compiled float32 kernel are within a few units in the last place.
    OpCase("layer_norm:long_row", ("layer_norm",), lambda x, g, b: gc.layer_norm(x, g, b),
           lambda x, g, b: _ln(x) * g + b, (BIG, Arg((1024,)), Arg((1024,))), grad=False,
           rtol32=1e-6, atol32=1e-6, compiled_rtol32=2e-6, compiled_atol32=1e-6),
    OpCase("rms_norm", ("rms_norm",), lambda x, g: gc.rms_norm(x, g),
           lambda x, g: _rms(x) * g, (X, V)),
    OpCase("rms_norm:plain", ("rms_norm",), gc.rms_norm, _rms, (X,)),
    OpCase("rms_norm:2axes_eps", ("rms_norm",),
           lambda x, g: gc.rms_norm(x, g, axis=(-2, -1), eps=0.5),
           lambda x, g: _rms(x, (1, 2), 0.5) * g, (X3, V34)),
    OpCase("rms_norm:long_row", ("rms_norm",), lambda x, g: gc.rms_norm(x, g),
           lambda x, g: _rms(x) * g, (BIG, Arg((1024,))), grad=False,
           rtol32=1e-6, atol32=1e-6, compiled_rtol32=2e-6, compiled_atol32=1e-6),
    # The gradient ops, gradient-checked too (second derivatives of the norms).
    OpCase("layer_norm_grad", ("layer_norm_grad",),
           lambda x, dy, g: _grad_op("layer_norm", x, dy, g),
           lambda x, dy, g: _jacobian_dx(x, dy * g, 1, True, LN_EPS), (X, Arg(S), V)),
    OpCase("layer_norm_grad:2axes_plain", ("layer_norm_grad",),
           lambda x, dy: _grad_op("layer_norm", x, dy, k=2),
           lambda x, dy: _jacobian_dx(x, dy, 2, True, LN_EPS), (X3, Arg((2, 3, 4)))),
    OpCase("layer_norm_grad:long_row", ("layer_norm_grad",),
           lambda x, dy, g: _grad_op("layer_norm", x, dy, g),
           lambda x, dy, g: _jacobian_dx(x, dy * g, 1, True, LN_EPS),
           (BIG, BIG, Arg((1024,))), grad=False, rtol32=1e-5, atol32=1e-6,
           compiled_rtol32=1e-5, compiled_atol32=1e-6),
    OpCase("rms_norm_grad", ("rms_norm_grad",),
           lambda x, dy, g: _grad_op("rms_norm", x, dy, g),
           lambda x, dy, g: _jacobian_dx(x, dy * g, 1, False, RMS_EPS), (X, Arg(S), V)),
    OpCase("rms_norm_grad:2axes_plain", ("rms_norm_grad",),
           lambda x, dy: _grad_op("rms_norm", x, dy, k=2),
           lambda x, dy: _jacobian_dx(x, dy, 2, False, RMS_EPS), (X3, Arg((2, 3, 4)))),
]
