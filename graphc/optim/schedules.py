"""Learning-rate schedules: small host-side objects that set `opt.lr` between steps.

Nothing here builds graph nodes: the learning rate is a graph variable that the optimizer
owns, and a schedule writes its value in place (`opt.lr = ...`), so a compiled train step
picks the new value up at its next call without a rebuild.

Common interface (PyTorch's ``lr_scheduler`` conventions, with "step" for "epoch"):

- ``value(step) -> float`` is pure: the learning rate for step number `step` (0, 1, ...).
  `ReduceOnPlateau` depends on the metrics it has seen, so its `value` is its current lr.
- ``step(metric=None) -> float`` advances `last_step` by one, writes ``value(last_step)``
  to the optimizer (if one is attached) and returns it.
- Constructing a schedule with an optimizer writes ``value(0)`` to it; the base learning
  rate defaults to the optimizer's lr at that moment.
- ``state_dict()``/``load_state_dict()`` give the progress as plain numbers.

Schedules compose: `LinearWarmup(inner, warmup_steps)` ramps up to any schedule `inner`,
and `SequentialLR(schedules, milestones)` runs each of several schedules from its own step 0
between milestones (torch SequentialLR), e.g. a warmup then a decay. Their parts are built
without an optimizer (or with the same one); only the composite writes the lr.

Momentum is never scheduled (torch OneCycleLR/CyclicLR cycle it by default): momentum and
betas are constants of the built update graph, not variables, so changing them would need a
rebuild.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from typing import Any, Protocol

from graphc.errors import AttrError
from graphc.optim.base import check_hyper

__all__ = [
    "ConstantLR",
    "CosineAnnealing",
    "ExponentialDecay",
    "LinearWarmup",
    "MultiStepDecay",
    "MultiStepLR",
    "PiecewiseConstant",
    "PolynomialDecay",
    "ReduceOnPlateau",
    "Schedule",
    "SequentialLR",
    "StepDecay",
]


class HasLR(Protocol):
    """What a schedule drives: anything with a read/write `lr` (every `Optimizer`)."""

    lr: float


def positive_int(owner: str, name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AttrError(f"{name} must be an int >= 1, got {value!r}", op=owner)
    return value


def _int_list(owner: str, name: str, values: Sequence[int], *, low: int, strict: bool,
              ordered: bool = True) -> list[int]:
    """`values` as a list of ints >= low; if `ordered`, non-decreasing (increasing if
    `strict`)."""
    try:
        items = list(values)
    except TypeError:
        raise AttrError(f"{name} must be a sequence of ints, got {values!r}", op=owner) from None
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise AttrError(f"{name} must hold ints >= {low}, got {v!r}", op=owner)
    if ordered and not all(a < b if strict else a <= b for a, b in itertools.pairwise(items)):
        kind = "increasing" if strict else "non-decreasing"
        raise AttrError(f"{name} must be {kind}, got {items!r}", op=owner)
    return items


class Schedule:
    """Base class. Subclasses set their parameters, then call ``super().__init__``."""

    _state: tuple[str, ...] = ("last_step",)

    def __init__(self, optimizer: HasLR | None = None, base_lr: float | None = None):
        owner = type(self).__name__
        if base_lr is None:
            if optimizer is None:
                raise AttrError("give base_lr or an optimizer to take it from", op=owner)
            base_lr = optimizer.lr
        self.base_lr = check_hyper(owner, "base_lr", base_lr)
        self.optimizer = optimizer
        self.last_step = 0
        if optimizer is not None:
            optimizer.lr = self.value(0)

    def value(self, step: int) -> float:
        """The learning rate at `step` (pure)."""
        raise NotImplementedError

    def _check_step(self, step: int) -> int:
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise AttrError(f"step must be an int >= 0, got {step!r}", op=type(self).__name__)
        return step

    def step(self, metric: float | None = None) -> float:
        """Advance one step and write the new learning rate to the optimizer."""
        self.last_step += 1
        lr = self.value(self.last_step)
        if self.optimizer is not None:
            self.optimizer.lr = lr
        return lr

    @property
    def current(self) -> float:
        return self.value(self.last_step)

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore progress saved by `state_dict` and write the restored lr."""
        missing = [k for k in self._state if k not in state]
        if missing:
            raise AttrError(f"state is missing {missing}", op=type(self).__name__)
        for name in self._state:
            setattr(self, name, state[name])
        if self.optimizer is not None:
            self.optimizer.lr = self.current

    def __repr__(self) -> str:
        return f"<{type(self).__name__} step={self.last_step} lr={self.current:g}>"


class ConstantLR(Schedule):
    """``lr(s) = base_lr``: a schedule form of a constant (e.g. as a warmup target)."""

    def value(self, step: int) -> float:
        self._check_step(step)
        return self.base_lr


class StepDecay(Schedule):
    """``lr(s) = base_lr · gamma ** floor(s / step_size)`` (torch StepLR)."""

    def __init__(self, optimizer: HasLR | None = None, step_size: int = 1, gamma: float = 0.1,
                 *, base_lr: float | None = None):
        self.step_size = positive_int("StepDecay", "step_size", step_size)
        self.gamma = check_hyper("StepDecay", "gamma", gamma)
        super().__init__(optimizer, base_lr)

    def value(self, step: int) -> float:
        return self.base_lr * self.gamma ** (self._check_step(step) // self.step_size)


class MultiStepDecay(Schedule):
    """``lr(s) = base_lr · gamma ** (number of milestones m with m <= s)`` (torch MultiStepLR).

    The lr is multiplied by gamma *at* each milestone step; a milestone listed twice counts
    twice, as in torch. Milestones may be given in any order.
    """

    def __init__(self, optimizer: HasLR | None = None, milestones: Sequence[int] = (),
                 gamma: float = 0.1, *, base_lr: float | None = None):
        self.milestones = sorted(_int_list("MultiStepDecay", "milestones", milestones, low=0,
                                           strict=False, ordered=False))
        self.gamma = check_hyper("MultiStepDecay", "gamma", gamma)
        super().__init__(optimizer, base_lr)

    def value(self, step: int) -> float:
        return self.base_lr * self.gamma ** bisect.bisect_right(self.milestones,
                                                                self._check_step(step))


MultiStepLR = MultiStepDecay  # PyTorch's name


class PiecewiseConstant(Schedule):
    """``lr(s) = values[i]`` for ``boundaries[i−1] <= s < boundaries[i]`` (b₋₁ = 0, bₙ = ∞).

    `values` has one entry more than `boundaries` (increasing ints >= 1). The value changes
    *at* a boundary, as `MultiStepDecay` does (``PiecewiseConstant(ms, [lr·γ**i ...])`` equals
    ``MultiStepDecay(ms, γ)``). Keras' PiecewiseConstantDecay changes one step later
    (``s <= boundaries[0]`` → values[0]): its boundaries are ours minus one.
    """

    def __init__(self, optimizer: HasLR | None = None, boundaries: Sequence[int] = (),
                 values: Sequence[float] = ()):
        owner = "PiecewiseConstant"
        self.boundaries = _int_list(owner, "boundaries", boundaries, low=1, strict=True)
        try:
            items = list(values)
        except TypeError:
            raise AttrError(f"values must be a sequence of numbers, got {values!r}",
                            op=owner) from None
        if len(items) != len(self.boundaries) + 1:
            raise AttrError(f"values must have len(boundaries) + 1 = {len(self.boundaries) + 1}"
                            f" entries, got {len(items)}", op=owner)
        self.values = [check_hyper(owner, "values", v) for v in items]
        super().__init__(optimizer, self.values[0])

    def value(self, step: int) -> float:
        return self.values[bisect.bisect_right(self.boundaries, self._check_step(step))]


class ExponentialDecay(Schedule):
    """``lr(s) = base_lr · gamma ** (s / decay_steps)``, the exponent floored if `staircase`.

    With decay_steps = 1 this is torch ExponentialLR; otherwise Keras' ExponentialDecay
    (decay_rate = gamma).
    """

    def __init__(self, optimizer: HasLR | None = None, gamma: float = 0.9,
                 decay_steps: int = 1, staircase: bool = False, *, base_lr: float | None = None):
        self.gamma = check_hyper("ExponentialDecay", "gamma", gamma)
        self.decay_steps = positive_int("ExponentialDecay", "decay_steps", decay_steps)
        self.staircase = bool(staircase)
        super().__init__(optimizer, base_lr)

    def value(self, step: int) -> float:
        p = self._check_step(step) / self.decay_steps
        return self.base_lr * self.gamma ** (math.floor(p) if self.staircase else p)


class PolynomialDecay(Schedule):
    """``lr(s) = (base_lr − end_lr) · (1 − min(s, T) / T) ** power + end_lr``, T = total_steps.

    end_lr = 0 gives torch PolynomialLR; the general form is Keras' PolynomialDecay.
    """

    def __init__(self, optimizer: HasLR | None = None, total_steps: int = 100,
                 power: float = 1.0, end_lr: float = 0.0, *, base_lr: float | None = None):
        self.total_steps = positive_int("PolynomialDecay", "total_steps", total_steps)
        self.power = check_hyper("PolynomialDecay", "power", power)
        self.end_lr = check_hyper("PolynomialDecay", "end_lr", end_lr)
        super().__init__(optimizer, base_lr)

    def value(self, step: int) -> float:
        s = min(self._check_step(step), self.total_steps)
        frac = 1.0 - s / self.total_steps
        return (self.base_lr - self.end_lr) * frac**self.power + self.end_lr


class CosineAnnealing(Schedule):
    """Cosine annealing from base_lr to eta_min over `T_max` steps (torch CosineAnnealingLR).

    ``lr(s) = eta_min + (base_lr − eta_min) · (1 + cos(π · s / T_max)) / 2``; past T_max the
    cosine keeps going (back up), as in PyTorch. With ``warm_restarts=True`` (SGDR, torch
    CosineAnnealingWarmRestarts) the period restarts instead: the i-th period lasts
    ``T_max · T_mult**i`` steps and s is replaced by the steps since the last restart.
    """

    def __init__(self, optimizer: HasLR | None = None, T_max: int = 100,  # noqa: N803
                 eta_min: float = 0.0, warm_restarts: bool = False, T_mult: int = 1,  # noqa: N803
                 *, base_lr: float | None = None):
        self.T_max = positive_int("CosineAnnealing", "T_max", T_max)
        self.T_mult = positive_int("CosineAnnealing", "T_mult", T_mult)
        self.eta_min = check_hyper("CosineAnnealing", "eta_min", eta_min)
        self.warm_restarts = bool(warm_restarts)
        super().__init__(optimizer, base_lr)

    def _phase(self, step: int) -> tuple[int, int]:
        """(steps since the last restart, length of the current period), in exact integers."""
        if not self.warm_restarts:
            return step, self.T_max
        if self.T_mult == 1:
            return step % self.T_max, self.T_max
        period = self.T_max
        while step >= period:
            step -= period
            period *= self.T_mult
        return step, period

    def value(self, step: int) -> float:
        t_cur, t_i = self._phase(self._check_step(step))
        cosine = (1 + math.cos(math.pi * t_cur / t_i)) / 2
        return self.eta_min + (self.base_lr - self.eta_min) * cosine


class LinearWarmup(Schedule):
    """A linear ramp over `warmup_steps`, then `inner` from its own step 0.

    ``lr(s) = (f + (1 − f) · s / W) · target(0)`` for s < W, and ``target(s − W)`` after,
    where f = start_factor, W = warmup_steps, and target is `inner` (a schedule) or the
    constant `inner` (a float). With a float inner this is torch LinearLR
    (end_factor = 1, total_iters = W).
    """

    def __init__(self, inner: Schedule | float, warmup_steps: int,
                 optimizer: HasLR | None = None, start_factor: float = 0.0):
        self.inner = inner if isinstance(inner, Schedule) else ConstantLR(base_lr=inner)
        self.warmup_steps = positive_int("LinearWarmup", "warmup_steps", warmup_steps)
        self.start_factor = check_hyper("LinearWarmup", "start_factor", start_factor, high=1.0)
        super().__init__(optimizer, self.inner.base_lr)

    def value(self, step: int) -> float:
        s = self._check_step(step)
        if s < self.warmup_steps:
            f = self.start_factor
            return (f + (1.0 - f) * s / self.warmup_steps) * self.inner.value(0)
        return self.inner.value(s - self.warmup_steps)


class SequentialLR(Schedule):
    """Several schedules one after another, each from its own step 0 (torch SequentialLR).

    ``lr(s) = schedules[i].value(s − m[i−1])`` where ``i`` is the number of milestones
    ``m[j] <= s`` (and m[−1] = 0): `milestones` are increasing ints >= 1, one fewer than
    `schedules`. A float in `schedules` is a constant lr. E.g. a linear warmup then a cosine
    decay::

        SequentialLR([LinearWarmup(0.1, 5, start_factor=0.1), CosineAnnealing(T_max=95,
                     base_lr=0.1)], milestones=[5], optimizer=opt)

    torch's SequentialLR gives every part the optimizer's initial lr as base; here each part
    keeps its own base_lr (equal bases give torch's values). `base_lr` is the first part's.
    `ReduceOnPlateau` cannot be a part: its value depends on metrics, not on the step.
    """

    def __init__(self, schedules: Sequence[Schedule | float], milestones: Sequence[int],
                 optimizer: HasLR | None = None):
        owner = "SequentialLR"
        parts = [p if isinstance(p, Schedule) else ConstantLR(base_lr=p) for p in schedules]
        if not parts:
            raise AttrError("schedules must hold at least one schedule", op=owner)
        for i, part in enumerate(parts):
            if isinstance(part, ReduceOnPlateau):
                raise AttrError(f"schedules[{i}] is a ReduceOnPlateau, whose lr depends on "
                                "metrics, not on the step", op=owner)
        self.schedules = parts
        self.milestones = _int_list(owner, "milestones", milestones, low=1, strict=True)
        if len(self.milestones) != len(parts) - 1:
            raise AttrError(f"milestones must have len(schedules) - 1 = {len(parts) - 1} "
                            f"entries, got {len(self.milestones)}", op=owner)
        super().__init__(optimizer, parts[0].base_lr)

    def value(self, step: int) -> float:
        s = self._check_step(step)
        i = bisect.bisect_right(self.milestones, s)
        start = self.milestones[i - 1] if i > 0 else 0
        return self.schedules[i].value(s - start)


class ReduceOnPlateau(Schedule):
    """Multiply the lr by `factor` when a metric stops improving (torch ReduceLROnPlateau).

    `step(metric)` must get the monitored value. A metric is an improvement when
    (mode "min", threshold_mode "rel") ``metric < best · (1 − threshold)``; "abs" uses
    ``best − threshold``; mode "max" mirrors both. After more than `patience` steps without
    improvement, ``lr ← max(lr · factor, min_lr)`` (skipped if the change is <= eps), then
    `cooldown` steps pass during which bad steps are not counted.
    """

    _state = ("last_step", "lr", "best", "num_bad_steps", "cooldown_counter")

    def __init__(self, optimizer: HasLR | None = None, mode: str = "min", factor: float = 0.1,
                 patience: int = 10, threshold: float = 1e-4, threshold_mode: str = "rel",
                 cooldown: int = 0, min_lr: float = 0.0, eps: float = 1e-8,
                 *, base_lr: float | None = None):
        owner = "ReduceOnPlateau"
        if mode not in ("min", "max"):
            raise AttrError(f"mode must be 'min' or 'max', got {mode!r}", op=owner)
        if threshold_mode not in ("rel", "abs"):
            raise AttrError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}",
                            op=owner)
        self.mode, self.threshold_mode = mode, threshold_mode
        self.factor = check_hyper(owner, "factor", factor, high=1.0, high_open=True)
        self.patience = int(check_hyper(owner, "patience", patience))
        self.threshold = check_hyper(owner, "threshold", threshold)
        self.cooldown = int(check_hyper(owner, "cooldown", cooldown))
        self.min_lr = check_hyper(owner, "min_lr", min_lr)
        self.eps = check_hyper(owner, "eps", eps)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_steps = 0
        self.cooldown_counter = 0
        if base_lr is None and optimizer is not None:
            base_lr = optimizer.lr
        # value() reads self.lr, and Schedule.__init__ calls value(0); it validates base_lr.
        self.lr = float(base_lr) if base_lr is not None else 0.0
        super().__init__(optimizer, base_lr)

    def value(self, step: int) -> float:
        """The current learning rate (it depends on the metrics seen, not on `step`)."""
        self._check_step(step)
        return self.lr

    def _is_better(self, metric: float) -> bool:
        sign = 1.0 if self.mode == "min" else -1.0
        if self.threshold_mode == "rel":
            bound = self.best * (1.0 - sign * self.threshold)
        else:
            bound = self.best - sign * self.threshold
        return metric < bound if self.mode == "min" else metric > bound

    def step(self, metric: float | None = None) -> float:
        if metric is None:
            raise AttrError("step(metric) needs the monitored metric", op="ReduceOnPlateau")
        current = float(metric)
        self.last_step += 1
        if self._is_better(current):
            self.best = current
            self.num_bad_steps = 0
        else:
            self.num_bad_steps += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_steps = 0
        if self.num_bad_steps > self.patience:
            new_lr = max(self.lr * self.factor, self.min_lr)
            if self.lr - new_lr > self.eps:
                self.lr = new_lr
            self.cooldown_counter = self.cooldown
            self.num_bad_steps = 0
        if self.optimizer is not None:
            self.optimizer.lr = self.lr
        return self.lr
