"""Normalization layers: BatchNorm, LayerNorm and RMSNorm.

BatchNorm follows PyTorch's definitions (which the tests compare against):

- training: normalize with the batch statistics over every axis but `axis` (mean and the
  *biased* variance), and update ``running = momentum * running + (1 - momentum) * batch``
  with the *unbiased* batch variance (n / (n - 1) times the biased one) for running_var.
  Our ``momentum=0.9`` is PyTorch's ``momentum=0.1`` (Keras' convention for the number).
- inference: normalize with the running statistics (`gc.batch_norm`).

LayerNorm and RMSNorm normalize each example over its trailing axes with the fused ops
`gc.layer_norm` and `gc.rms_norm` (one row kernel forward, one backward), the same in
training and inference, as PyTorch's `nn.LayerNorm` and `nn.RMSNorm`.

With a scope sample mask (a padded last batch, see `graphc.training`), the batch statistics
count only the real examples, so padding changes neither the normalization nor the running
statistics.
"""

from __future__ import annotations

from collections.abc import Sequence

from graphc.errors import AttrError, ShapeError
from graphc.ir import DType, Node
from graphc.nn.initializers import InitializerLike
from graphc.nn.layer import Layer, Scope
from graphc.ops import elementwise as ew
from graphc.ops import layout
from graphc.ops import neural as nn_ops
from graphc.ops import norm as norm_ops
from graphc.ops import reduce as rd

__all__ = ["BatchNorm", "LayerNorm", "RMSNorm"]


def _check_eps(owner: str, eps: float) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise AttrError(f"eps must be a number > 0, got {eps!r}", op=owner)
    return float(eps)


class BatchNorm(Layer):
    """Batch normalization over channel `axis` (1: NCHW or (N, features); -1: channels last).

    Variables: ``gamma`` (ones) and ``beta`` (zeros) when `scale`/`center`; ``running_mean``
    (zeros) and ``running_var`` (ones), trainable=False, updated in training mode.
    """

    def __init__(self, axis: int = 1, momentum: float = 0.9, eps: float = 1e-5, *,
                 center: bool = True, scale: bool = True,
                 gamma_initializer: InitializerLike = "ones",
                 beta_initializer: InitializerLike = "zeros",
                 name: str | None = None, dtype: DType | str | None = None):
        super().__init__(name, dtype)
        if not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            raise AttrError(f"momentum must be a number in [0, 1), got {momentum!r}",
                            op="BatchNorm")
        self.axis = axis
        self.momentum = float(momentum)
        self.eps = _check_eps("BatchNorm", eps)
        self.center = bool(center)
        self.scale = bool(scale)
        self.gamma_initializer = gamma_initializer
        self.beta_initializer = beta_initializer

    def _axis(self, x: Node) -> int:
        if x.ndim < 2 or not -x.ndim <= self.axis < x.ndim:
            raise ShapeError(f"x: axis {self.axis} is not a channel axis of {x.type} (rank >= 2 "
                             "with a batch axis 0)", op="BatchNorm")
        axis = self.axis % x.ndim
        if axis == 0:
            raise ShapeError("axis 0 is the batch axis; normalize over another", op="BatchNorm")
        return axis

    def build(self, x: Node) -> None:
        channels = x.shape[self._axis(x)]
        dtype = self.weight_dtype(x)
        if self.scale:
            self.add_weight("gamma", (channels,), self.gamma_initializer, dtype)
        if self.center:
            self.add_weight("beta", (channels,), self.beta_initializer, dtype)
        self.add_weight("running_mean", (channels,), "zeros", dtype, trainable=False)
        self.add_weight("running_var", (channels,), "ones", dtype, trainable=False)

    def forward(self, x: Node, training: bool, scope: Scope | None) -> Node:
        axis = self._axis(x)
        gamma, beta = self.weights.get("gamma"), self.weights.get("beta")
        running_mean, running_var = self.weights["running_mean"], self.weights["running_var"]
        if not training:
            return nn_ops.batch_norm(x, running_mean, running_var, gamma, beta, self.eps, axis)
        mean, var, count = self._batch_stats(x, axis, self.mask_for(x, scope))
        momentum = self.momentum
        if isinstance(count, Node):
            unbiased = var * (count / ew.maximum(count - 1.0, 1.0))
        else:
            unbiased = var * (count / max(count - 1.0, 1.0))
        self.add_state_update(scope, running_mean,
                              running_mean * momentum + mean * (1.0 - momentum))
        self.add_state_update(scope, running_var,
                              running_var * momentum + unbiased * (1.0 - momentum))
        return nn_ops.batch_norm(x, mean, var, gamma, beta, self.eps, axis)

    @staticmethod
    def _batch_stats(x: Node, axis: int, mask: Node | None
                     ) -> tuple[Node, Node, Node | float]:
        """Per-channel mean, biased variance, and the count of values behind them (a node
        when a sample mask makes it data-dependent)."""
        axes = tuple(i for i in range(x.ndim) if i != axis)
        per_example = x.size // (x.shape[0] * x.shape[axis])
        if mask is None:
            mean = rd.mean(x, axis=axes)
            centered = x - _along(mean, x, axis)
            var = rd.mean(ew.square(centered), axis=axes)
            return mean, var, float(x.size // x.shape[axis])
        weights = layout.reshape(mask, (x.shape[0],) + (1,) * (x.ndim - 1))
        count = rd.sum(mask) * float(per_example)
        mean = rd.sum(x * weights, axis=axes) / count
        centered = x - _along(mean, x, axis)
        var = rd.sum(ew.square(centered) * weights, axis=axes) / count
        return mean, var, count


def _along(v: Node, x: Node, axis: int) -> Node:
    """A (C,) vector shaped to broadcast along `axis` of x."""
    if axis == x.ndim - 1:
        return v
    return layout.reshape(v, tuple(d if i == axis else 1 for i, d in enumerate(x.shape)))


def _trailing_shape(owner: str, axis: int | Sequence[int], x: Node) -> tuple[int, ...]:
    """x's trailing shape that `axis` (an int or the last k axes) names; ShapeError if not."""
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    normalized = sorted(a % x.ndim for a in axes) if x.ndim else []
    k = len(normalized)
    if x.ndim == 0 or k == 0 or normalized != list(range(x.ndim - k, x.ndim)):
        raise ShapeError(f"axis {axis!r} must name the trailing axes of x {x.type}", op=owner)
    return x.shape[x.ndim - k:]


def _axis_arg(shape: tuple[int, ...]) -> int | tuple[int, ...]:
    """The `axis` argument of the norm ops for a normalized trailing `shape`."""
    k = len(shape)
    return tuple(range(-k, 0)) if k > 1 else -1


class LayerNorm(Layer):
    """Normalize each example over its trailing `axis` (an int or the last k axes), then
    ``* gamma + beta`` (shape x.shape[-k:]); the same in training and inference."""

    def __init__(self, axis: int | Sequence[int] = -1, eps: float = 1e-5, *,
                 center: bool = True, scale: bool = True, name: str | None = None,
                 dtype: DType | str | None = None):
        super().__init__(name, dtype)
        self.axis = axis
        self.eps = _check_eps("LayerNorm", eps)
        self.center = bool(center)
        self.scale = bool(scale)

    def build(self, x: Node) -> None:
        shape = _trailing_shape("LayerNorm", self.axis, x)
        dtype = self.weight_dtype(x)
        if self.scale:
            self.add_weight("gamma", shape, "ones", dtype)
        if self.center:
            self.add_weight("beta", shape, "zeros", dtype)

    def forward(self, x: Node, training: bool, scope: Scope | None) -> Node:
        shape = _trailing_shape("LayerNorm", self.axis, x)
        return norm_ops.layer_norm(x, self.weights.get("gamma"), self.weights.get("beta"),
                                   axis=_axis_arg(shape), eps=self.eps)


class RMSNorm(Layer):
    """Root-mean-square normalization (Llama's, PyTorch's `nn.RMSNorm`): each example over
    its trailing `axis` (an int or the last k axes), ``x / sqrt(mean(x²) + eps) * gamma``
    with a learned gamma (shape x.shape[-k:], initialized to ones) when `scale`; the same
    in training and inference."""

    def __init__(self, axis: int | Sequence[int] = -1, eps: float = 1e-6, *,
                 scale: bool = True, name: str | None = None,
                 dtype: DType | str | None = None):
        super().__init__(name, dtype)
        self.axis = axis
        self.eps = _check_eps("RMSNorm", eps)
        self.scale = bool(scale)

    def build(self, x: Node) -> None:
        shape = _trailing_shape("RMSNorm", self.axis, x)
        if self.scale:
            self.add_weight("gamma", shape, "ones", self.weight_dtype(x))

    def forward(self, x: Node, training: bool, scope: Scope | None) -> Node:
        shape = _trailing_shape("RMSNorm", self.axis, x)
        return norm_ops.rms_norm(x, self.weights.get("gamma"), axis=_axis_arg(shape),
                                 eps=self.eps)
