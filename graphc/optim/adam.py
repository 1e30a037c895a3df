"""Adam, AdamW, NAdam, RAdam, Adamax: PyTorch's Adam-family update rules, as graph nodes.

Notation as in `optimizers.py`: ``p`` a parameter, ``g`` its gradient (after clipping),
``t`` the step number after this step's increment, ``lr`` the learning-rate variable's
value, ``wd`` weight_decay; slots start at zero. Every rule matches ``torch.optim.<Name>``
(PyTorch 2.x, single-tensor, ``maximize=False``) up to rounding; scalars (``lr``, bias
corrections) are computed in float64 and cast to the parameter's dtype.
"""

from __future__ import annotations

import math

from graphc.ir import DType, Node
from graphc.ops import elementwise as ew
from graphc.optim.base import Optimizer, StepContext, check_hyper
from graphc.optim.optimizers import check_betas

__all__ = ["Adam", "AdamW", "Adamax", "NAdam", "RAdam"]


class Adam(Optimizer):
    """Adam (``torch.optim.Adam``), optionally AMSGrad, with coupled L2 weight decay.

    ::

        g  ← g + wd·p
        m  ← β₁·m + (1 − β₁)·g
        v  ← β₂·v + (1 − β₂)·g²
        v̂  ← max(v̂, v) if amsgrad (the max is used below in place of v)
        p  ← p − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + eps)

    β**t is computed in the graph as exp(t·log β) from the step variable. Slots:
    ``<p>/adam_m``, ``<p>/adam_v``, ``<p>/adam_vmax`` (amsgrad).
    """

    _decoupled = False

    def __init__(
        self,
        lr: float = 0.001,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        clipvalue: float | None = None,
        clipnorm: float | None = None,
        name: str = "optim",
    ):
        super().__init__(lr, weight_decay=weight_decay, clipvalue=clipvalue, clipnorm=clipnorm,
                         name=name)
        owner = type(self).__name__
        self.betas = check_betas(owner, betas)
        self.eps = check_hyper(owner, "eps", eps)
        self.amsgrad = bool(amsgrad)

    def _rule(self, var: Node, g: Node, ctx: StepContext) -> dict[Node, Node]:
        b1, b2 = self.betas
        dtype = var.dtype
        if self.weight_decay and not self._decoupled:
            g = g + var * self.weight_decay
        m = self._make_slot(var, "adam_m")
        v = self._make_slot(var, "adam_v")
        new_m = m * b1 + g * (1.0 - b1)
        new_v = v * b2 + g * g * (1.0 - b2)
        updates: dict[Node, Node] = {m: new_m, v: new_v}
        second = new_v
        if self.amsgrad:
            vmax = self._make_slot(var, "adam_vmax")
            second = ew.maximum(vmax, new_v)
            updates[vmax] = second
        step_size, bc2_sqrt = self._scalars(ctx, dtype)
        denom = ew.sqrt(second) / bc2_sqrt + self.eps
        base = var
        if self.weight_decay and self._decoupled:
            base = var * (1.0 - ctx.lr(dtype) * self.weight_decay)
        updates[var] = base - step_size * (new_m / denom)
        return updates

    def _scalars(self, ctx: StepContext, dtype: DType) -> tuple[Node, Node]:
        """lr / (1 − β₁ᵗ) and √(1 − β₂ᵗ), in float64 then cast to `dtype` (once per dtype)."""
        key = ("adam", dtype)
        if key not in ctx.memo:
            b1, b2 = self.betas
            step_size = ctx.lr64 / (1.0 - ctx.power(b1))
            bc2_sqrt = ew.sqrt(1.0 - ctx.power(b2))
            ctx.memo[key] = (ctx.as_dtype(step_size, dtype), ctx.as_dtype(bc2_sqrt, dtype))
        return ctx.memo[key]


class AdamW(Adam):
    """AdamW (``torch.optim.AdamW``): Adam with decoupled weight decay.

    ::

        p  ← p·(1 − lr·wd)
        m  ← β₁·m + (1 − β₁)·g
        v  ← β₂·v + (1 − β₂)·g²
        p  ← p − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + eps)

    (the gradient does not include wd·p). Default wd = 0.01 as in PyTorch. Slots as Adam.
    """

    _decoupled = True

    def __init__(
        self,
        lr: float = 0.001,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        amsgrad: bool = False,
        *,
        clipvalue: float | None = None,
        clipnorm: float | None = None,
        name: str = "optim",
    ):
        super().__init__(lr, betas, eps, weight_decay, amsgrad, clipvalue=clipvalue,
                         clipnorm=clipnorm, name=name)


def _weight_decay(var: Node, g: Node, ctx: StepContext, weight_decay: float,
                  decoupled: bool) -> tuple[Node, Node]:
    """(the value the step starts from, the gradient it uses): weight decay coupled into
    the gradient (``g + wd·p``), or decoupled, ``p·(1 − lr·wd)`` before the step, as torch's
    ``decoupled_weight_decay`` does."""
    if not weight_decay:
        return var, g
    if decoupled:
        return var * (1.0 - ctx.lr(var.dtype) * weight_decay), g
    return var, g + var * weight_decay


class NAdam(Optimizer):
    """NAdam (``torch.optim.NAdam``): Adam with Nesterov momentum and a momentum schedule.

    With ψ = momentum_decay and μΠ the running product of the μ's (1 before the first step)::

        g   ← g + wd·p                        (p ← p·(1 − lr·wd) instead if decoupled)
        μₜ  ← β₁·(1 − ½·0.96^(t·ψ));   μₜ₊₁ ← β₁·(1 − ½·0.96^((t+1)·ψ))
        μΠ  ← μΠ·μₜ
        m   ← β₁·m + (1 − β₁)·g
        v   ← β₂·v + (1 − β₂)·g²
        d   ← √(v / (1 − β₂ᵗ)) + eps
        p   ← p − lr·(1 − μₜ)/(1 − μΠ) · g/d − lr·μₜ₊₁/(1 − μΠ·μₜ₊₁) · m/d

    Slots: ``<p>/nadam_m``, ``<p>/nadam_v``; μΠ is one optimizer-wide float64 scalar,
    ``<prefix>/nadam_mu_product`` (torch keeps a copy per parameter, all equal; with its
    default float32 scalar dtype, torch's copy is rounded to float32).
    """

    def __init__(
        self,
        lr: float = 0.002,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum_decay: float = 0.004,
        decoupled_weight_decay: bool = False,
        *,
        clipvalue: float | None = None,
        clipnorm: float | None = None,
        name: str = "optim",
    ):
        super().__init__(lr, weight_decay=weight_decay, clipvalue=clipvalue, clipnorm=clipnorm,
                         name=name)
        self.betas = check_betas("NAdam", betas)
        self.eps = check_hyper("NAdam", "eps", eps)
        self.momentum_decay = check_hyper("NAdam", "momentum_decay", momentum_decay)
        self.decoupled_weight_decay = bool(decoupled_weight_decay)

    def _rule(self, var: Node, g: Node, ctx: StepContext) -> dict[Node, Node]:
        b1, b2 = self.betas
        base, g = _weight_decay(var, g, ctx, self.weight_decay, self.decoupled_weight_decay)
        m = self._make_slot(var, "nadam_m")
        v = self._make_slot(var, "nadam_v")
        new_m = m * b1 + g * (1.0 - b1)
        new_v = v * b2 + g * g * (1.0 - b2)
        mu_product, new_mu_product, coef_g, coef_m, bc2 = self._scalars(ctx, var.dtype)
        denom = ew.sqrt(new_v / bc2) + self.eps
        new_var = base - coef_g * (g / denom) - coef_m * (new_m / denom)
        return {m: new_m, v: new_v, mu_product: new_mu_product, var: new_var}

    def _scalars(self, ctx: StepContext, dtype: DType) -> tuple[Node, Node, Node, Node, Node]:
        """(μΠ variable, its new value, lr·(1 − μₜ)/(1 − μΠ), lr·μₜ₊₁/(1 − μΠ·μₜ₊₁), 1 − β₂ᵗ):
        built once per step in float64 (μΠ's update once for all dtypes), then cast."""
        if "nadam" not in ctx.memo:
            b1 = self.betas[0]
            mu_product = self._make_state("nadam_mu_product", 1.0)
            # 0.96 ** (t·ψ) as exp(t·ψ·log 0.96), like StepContext.power.
            rate = self.momentum_decay * math.log(0.96)
            mu = (1.0 - ew.exp(ctx.t * rate) * 0.5) * b1
            mu_next = (1.0 - ew.exp((ctx.t + 1.0) * rate) * 0.5) * b1
            new_mu_product = mu_product * mu
            coef_g = ctx.lr64 * (1.0 - mu) / (1.0 - new_mu_product)
            coef_m = ctx.lr64 * mu_next / (1.0 - new_mu_product * mu_next)
            ctx.memo["nadam"] = (mu_product, new_mu_product, coef_g, coef_m,
                                 1.0 - ctx.power(self.betas[1]))
        mu_product, new_mu_product, coef_g, coef_m, bc2 = ctx.memo["nadam"]
        key = ("nadam", dtype)
        if key not in ctx.memo:
            ctx.memo[key] = tuple(ctx.as_dtype(x, dtype) for x in (coef_g, coef_m, bc2))
        return (mu_product, new_mu_product, *ctx.memo[key])


class RAdam(Optimizer):
    """RAdam (``torch.optim.RAdam``): Adam with the variance of its adaptive lr rectified.

    ::

        g   ← g + wd·p                        (p ← p·(1 − lr·wd) instead if decoupled)
        m   ← β₁·m + (1 − β₁)·g
        v   ← β₂·v + (1 − β₂)·g²
        ρ∞  = 2/(1 − β₂) − 1;   ρₜ ← ρ∞ − 2t·β₂ᵗ/(1 − β₂ᵗ)
        m̂   ← m / (1 − β₁ᵗ)
        if ρₜ > 5:
            r ← √((ρₜ − 4)(ρₜ − 2)·ρ∞ / ((ρ∞ − 4)(ρ∞ − 2)·ρₜ))
            p ← p − m̂·lr·(√(1 − β₂ᵗ)/(√v + eps))·r
        else:
            p ← p − m̂·lr                      (SGD with bias-corrected momentum)

    ρₜ rises from 1 at t = 1 towards ρ∞, so the first steps (5 with the default β₂) take the
    un-rectified branch; with ρ∞ <= 5 (β₂ <= 2/3) they all do. The test on ρₜ is a `where`
    on a scalar in the graph: the step needs no rebuild when it crosses 5.
    Slots: ``<p>/radam_m``, ``<p>/radam_v``.
    """

    def __init__(
        self,
        lr: float = 0.001,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        *,
        clipvalue: float | None = None,
        clipnorm: float | None = None,
        name: str = "optim",
    ):
        super().__init__(lr, weight_decay=weight_decay, clipvalue=clipvalue, clipnorm=clipnorm,
                         name=name)
        self.betas = check_betas("RAdam", betas)
        self.eps = check_hyper("RAdam", "eps", eps)
        self.decoupled_weight_decay = bool(decoupled_weight_decay)

    @property
    def rho_inf(self) -> float:
        """ρ∞ = 2/(1 − β₂) − 1, the maximum length of the approximated SMA."""
        return 2.0 / (1.0 - self.betas[1]) - 1.0

    def _rule(self, var: Node, g: Node, ctx: StepContext) -> dict[Node, Node]:
        b1, b2 = self.betas
        base, g = _weight_decay(var, g, ctx, self.weight_decay, self.decoupled_weight_decay)
        m = self._make_slot(var, "radam_m")
        v = self._make_slot(var, "radam_v")
        new_m = m * b1 + g * (1.0 - b1)
        new_v = v * b2 + g * g * (1.0 - b2)
        bc1, bc2_sqrt, rect, rectified = self._scalars(ctx, var.dtype)
        plain = new_m / bc1 * ctx.lr(var.dtype)
        if rect is None or rectified is None:  # ρ∞ <= 5: never rectified
            step = plain
        else:
            adaptive = bc2_sqrt / (ew.sqrt(new_v) + self.eps)
            step = ew.where(rectified, plain * adaptive * rect, plain)
        return {m: new_m, v: new_v, var: base - step}

    def _scalars(self, ctx: StepContext, dtype: DType
                 ) -> tuple[Node, Node, Node | None, Node | None]:
        """(1 − β₁ᵗ, √(1 − β₂ᵗ), r, ρₜ > 5) in float64 then cast, once per dtype; r and the
        test are None when ρ∞ <= 5."""
        key = ("radam", dtype)
        if key not in ctx.memo:
            b1, b2 = self.betas
            bc1 = 1.0 - ctx.power(b1)
            bc2 = 1.0 - ctx.power(b2)
            rho_inf = self.rho_inf
            rect: Node | None = None
            rectified: Node | None = None
            if rho_inf > 5.0:
                rho_t = rho_inf - ctx.t * 2.0 * ctx.power(b2) / bc2
                ratio = (rho_t - 4.0) * (rho_t - 2.0) * rho_inf / (
                    (rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)
                # The ratio is negative for 2 < ρₜ < 4, where it is not used; clamping keeps
                # the unused branch free of NaN (and numpy of warnings).
                rect = ctx.as_dtype(ew.sqrt(ew.maximum(ratio, 0.0)), dtype)
                rectified = ew.greater(rho_t, 5.0)
            ctx.memo[key] = (ctx.as_dtype(bc1, dtype), ctx.as_dtype(ew.sqrt(bc2), dtype),
                             rect, rectified)
        return ctx.memo[key]


class Adamax(Optimizer):
    """Adamax (``torch.optim.Adamax``): Adam with the infinity norm in place of √v.

    ::

        g ← g + wd·p
        m ← β₁·m + (1 − β₁)·g
        u ← max(β₂·u, |g| + eps)               (eps inside the max, as torch)
        p ← p − (lr / (1 − β₁ᵗ)) · m/u

    Slots: ``<p>/adamax_m``, ``<p>/adamax_u``.
    """

    def __init__(
        self,
        lr: float = 0.002,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        clipvalue: float | None = None,
        clipnorm: float | None = None,
        name: str = "optim",
    ):
        super().__init__(lr, weight_decay=weight_decay, clipvalue=clipvalue, clipnorm=clipnorm,
                         name=name)
        self.betas = check_betas("Adamax", betas)
        self.eps = check_hyper("Adamax", "eps", eps)

    def _rule(self, var: Node, g: Node, ctx: StepContext) -> dict[Node, Node]:
        b1, b2 = self.betas
        if self.weight_decay:
            g = g + var * self.weight_decay
        m = self._make_slot(var, "adamax_m")
        u = self._make_slot(var, "adamax_u")
        new_m = m * b1 + g * (1.0 - b1)
        new_u = ew.maximum(u * b2, ew.abs(g) + self.eps)
        key = ("adamax", var.dtype)
        if key not in ctx.memo:
            ctx.memo[key] = ctx.as_dtype(ctx.lr64 / (1.0 - ctx.power(b1)), var.dtype)
        return {m: new_m, u: new_u, var: var - ctx.memo[key] * (new_m / new_u)}
