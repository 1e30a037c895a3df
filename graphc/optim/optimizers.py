"""SGD, Adagrad, RMSProp, Adadelta: PyTorch's update rules, built as graph nodes (the Adam
family is in `adam.py`).

Notation of the docstrings: ``p`` a parameter, ``g`` its gradient (after clipping, see
`graphc.optim.base`), ``t`` the step number after this step's increment (1 on the first
step), ``lr`` the learning-rate variable's value, ``wd`` weight_decay. Slots start at zero
unless stated. Every rule matches ``torch.optim.<Name>`` (PyTorch 2.x, single-tensor,
``maximize=False``) up to floating-point rounding; scalars (``lr``, bias corrections) are
computed in float64 and cast to the parameter's dtype.
"""

from __future__ import annotations

from graphc.errors import AttrError
from graphc.ir import Node
from graphc.ops import elementwise as ew
from graphc.optim.base import Optimizer, StepContext, check_hyper

__all__ = ["SGD", "Adadelta", "Adagrad", "RMSProp", "RMSprop", "check_betas"]


def check_betas(owner: str, betas: tuple[float, float]) -> tuple[float, float]:
    """`betas` as a pair of floats, each in [0, 1); otherwise an AttrError naming it."""
    try:
        b1, b2 = betas
    except (TypeError, ValueError):
        raise AttrError(f"betas must be a pair (beta1, beta2), got {betas!r}",
                        op=owner) from None
    return (check_hyper(owner, "beta1", b1, high=1.0, high_open=True),
            check_hyper(owner, "beta2", b2, high=1.0, high_open=True))


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum (``torch.optim.SGD``).

    ::

        g ← g + wd·p
        if momentum μ > 0:
            b ← g                              on the first step (t = 1)
            b ← μ·b + (1 − dampening)·g        afterwards
            g ← g + μ·b   if nesterov   else   b
        p ← p − lr·g

    Slot: ``<p>/momentum`` (only when μ > 0). With dampening = 0 the first-step case equals
    the general one (b starts at zero), so no step test is built.
    """

    def __init__(
        self,
        lr: float = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        *,
        dampening: float = 0.0,
        clipvalue: float | None = None,
        clipnorm: float | None = None,
        name: str = "optim",
    ):
        super().__init__(lr, weight_decay=weight_decay, clipvalue=clipvalue, clipnorm=clipnorm,
                         name=name)
        self.momentum = check_hyper("SGD", "momentum", momentum)
        self.dampening = check_hyper("SGD", "dampening", dampening, high=1.0)
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise AttrError("nesterov needs momentum > 0 and dampening = 0", op="SGD")

    def _rule(self, var: Node, g: Node, ctx: StepContext) -> dict[Node, Node]:
        if self.weight_decay:
            g = g + var * self.weight_decay
        updates: dict[Node, Node] = {}
        if self.momentum > 0:
            buf = self._make_slot(var, "momentum")
            mu = self.momentum
            if self.dampening == 0:
                new_buf = buf * mu + g
            else:
                later = buf * mu + g * (1.0 - self.dampening)
                new_buf = ew.where(ew.equal(ctx.step_new, 1), g, later)
            updates[buf] = new_buf
            g = g + new_buf * mu if self.nesterov else new_buf
        updates[var] = var - ctx.lr(var.dtype) * g
        return updates


class Adagrad(Optimizer):
    """Adagrad (``torch.optim.Adagrad``).

    ::

        clr ← lr / (1 + (t − 1)·lr_decay)
        g   ← g + wd·p
        s   ← s + g²                               (s starts at initial_accumulator_value)
        p   ← p − clr · g / (√s + eps)

    Slot: ``<p>/adagrad_sum``.
    """

    def __init__(
        self,
        lr: float = 0.01,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
        *,
        clipvalue: float | None = None,
        clipnorm: float | None = None,
        name: str = "optim",
    ):
        super().__init__(lr, weight_decay=weight_decay, clipvalue=clipvalue, clipnorm=clipnorm,
                         name=name)
        self.lr_decay = check_hyper("Adagrad", "lr_decay", lr_decay)
        self.initial_accumulator_value = check_hyper(
            "Adagrad", "initial_accumulator_value", initial_accumulator_value)
        self.eps = check_hyper("Adagrad", "eps", eps)

    def _rule(self, var: Node, g: Node, ctx: StepContext) -> dict[Node, Node]:
        if self.weight_decay:
            g = g + var * self.weight_decay
        if self.lr_decay:
            key = ("adagrad", var.dtype)
            if key not in ctx.memo:
                clr64 = ctx.lr64 / ((ctx.t - 1.0) * self.lr_decay + 1.0)
                ctx.memo[key] = ctx.as_dtype(clr64, var.dtype)
            clr = ctx.memo[key]
        else:
            clr = ctx.lr(var.dtype)
        acc = self._make_slot(var, "adagrad_sum", self.initial_accumulator_value)
        new_acc = acc + g * g
        return {acc: new_acc, var: var - clr * (g / (ew.sqrt(new_acc) + self.eps))}


class RMSProp(Optimizer):
    """RMSProp (``torch.optim.RMSprop``), with optional momentum and centering.

    ::

        g ← g + wd·p
        v ← α·v + (1 − α)·g²
        if centered:  a ← α·a + (1 − α)·g;   d ← √(v − a²) + eps
        else:                                d ← √v + eps
        if momentum μ > 0:  b ← μ·b + g/d;   p ← p − lr·b
        else:                                p ← p − lr·g/d

    Slots: ``<p>/rms_v``, ``<p>/rms_avg`` (centered), ``<p>/momentum`` (μ > 0).
    """

    def __init__(
        self,
        lr: float = 0.01,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
        *,
        clipvalue: float | None = None,
        clipnorm: float | None = None,
        name: str = "optim",
    ):
        super().__init__(lr, weight_decay=weight_decay, clipvalue=clipvalue, clipnorm=clipnorm,
                         name=name)
        self.alpha = check_hyper("RMSProp", "alpha", alpha, high=1.0)
        self.eps = check_hyper("RMSProp", "eps", eps)
        self.momentum = check_hyper("RMSProp", "momentum", momentum)
        self.centered = bool(centered)

    def _rule(self, var: Node, g: Node, ctx: StepContext) -> dict[Node, Node]:
        if self.weight_decay:
            g = g + var * self.weight_decay
        a = self.alpha
        v = self._make_slot(var, "rms_v")
        new_v = v * a + g * g * (1.0 - a)
        updates: dict[Node, Node] = {v: new_v}
        if self.centered:
            avg = self._make_slot(var, "rms_avg")
            new_avg = avg * a + g * (1.0 - a)
            updates[avg] = new_avg
            denom = ew.sqrt(new_v - new_avg * new_avg) + self.eps
        else:
            denom = ew.sqrt(new_v) + self.eps
        lr = ctx.lr(var.dtype)
        if self.momentum > 0:
            buf = self._make_slot(var, "momentum")
            new_buf = buf * self.momentum + g / denom
            updates[buf] = new_buf
            updates[var] = var - lr * new_buf
        else:
            updates[var] = var - lr * (g / denom)
        return updates


RMSprop = RMSProp  # PyTorch's spelling


class Adadelta(Optimizer):
    """Adadelta (``torch.optim.Adadelta``).

    ::

        g ← g + wd·p
        v ← ρ·v + (1 − ρ)·g²
        δ ← √(a + eps) / √(v + eps) · g
        a ← ρ·a + (1 − ρ)·δ²
        p ← p − lr·δ

    (eps inside both roots; lr = 1 by default, as torch.) Slots: ``<p>/adadelta_v`` (torch's
    square_avg), ``<p>/adadelta_a`` (acc_delta).
    """

    def __init__(
        self,
        lr: float = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        clipvalue: float | None = None,
        clipnorm: float | None = None,
        name: str = "optim",
    ):
        super().__init__(lr, weight_decay=weight_decay, clipvalue=clipvalue, clipnorm=clipnorm,
                         name=name)
        self.rho = check_hyper("Adadelta", "rho", rho, high=1.0)
        self.eps = check_hyper("Adadelta", "eps", eps)

    def _rule(self, var: Node, g: Node, ctx: StepContext) -> dict[Node, Node]:
        rho = self.rho
        if self.weight_decay:
            g = g + var * self.weight_decay
        v = self._make_slot(var, "adadelta_v")
        acc = self._make_slot(var, "adadelta_a")
        new_v = v * rho + g * g * (1.0 - rho)
        delta = ew.sqrt(acc + self.eps) / ew.sqrt(new_v + self.eps) * g
        new_acc = acc * rho + delta * delta * (1.0 - rho)
        return {v: new_v, acc: new_acc, var: var - ctx.lr(var.dtype) * delta}
