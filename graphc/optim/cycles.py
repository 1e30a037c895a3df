"""Cyclic learning-rate schedules: `OneCycleLR` (PyTorch's, cosine annealing by default)
and `CyclicLR` (triangular cycles). The interface is `schedules.Schedule`'s; momentum is
not cycled (it is a constant of the built update graph, see `schedules`).
"""

from __future__ import annotations

import math

from graphc.errors import AttrError
from graphc.optim.base import check_hyper
from graphc.optim.schedules import HasLR, Schedule, positive_int

__all__ = ["CyclicLR", "OneCycleLR"]


class OneCycleLR(Schedule):
    """The 1cycle policy (torch OneCycleLR, Smith 2018), learning rate only.

    With T = total_steps (or epochs · steps_per_epoch), lr₀ = max_lr / div_factor and
    lr_min = lr₀ / final_div_factor, the phases (end step, from, to) are

    - two phases (default): (pct_start·T − 1, lr₀, max_lr), (T − 1, max_lr, lr_min);
    - three_phase: (pct_start·T − 1, lr₀, max_lr), (2·pct_start·T − 2, max_lr, lr₀),
      (T − 1, lr₀, lr_min).

    Step s falls in the first phase whose end is >= s (the last phase takes the rest); with
    the phase running from step a to step e (a = the previous phase's end, 0 for the first)
    and x = (s − a)/(e − a): ``lr = to + (from − to)·(1 + cos(π·x))/2`` ("cos", the default)
    or ``from + (to − from)·x`` ("linear"). `value(s)` for s > T is an error, as torch's
    `step` past total_steps; where torch divides by a zero-length phase (e.g.
    pct_start·T = 1 at s = 0) the lr is that phase's `to`. The optimizer's lr is not used:
    base_lr is lr₀. Momentum cycling (torch's cycle_momentum=True) is not done: see the
    module docstring; compare with torch's ``cycle_momentum=False``.
    """

    _STRATEGIES = ("cos", "linear")

    def __init__(self, optimizer: HasLR | None = None, max_lr: float = 0.1,
                 total_steps: int | None = None, epochs: int | None = None,
                 steps_per_epoch: int | None = None, pct_start: float = 0.3,
                 anneal_strategy: str = "cos", div_factor: float = 25.0,
                 final_div_factor: float = 1e4, three_phase: bool = False):
        owner = "OneCycleLR"
        if total_steps is not None:
            self.total_steps = positive_int(owner, "total_steps", total_steps)
        elif epochs is not None and steps_per_epoch is not None:
            self.total_steps = (positive_int(owner, "epochs", epochs)
                                * positive_int(owner, "steps_per_epoch", steps_per_epoch))
        else:
            raise AttrError("give total_steps, or epochs and steps_per_epoch", op=owner)
        self.max_lr = check_hyper(owner, "max_lr", max_lr)
        self.pct_start = check_hyper(owner, "pct_start", pct_start, high=1.0)
        if anneal_strategy not in self._STRATEGIES:
            raise AttrError(f"anneal_strategy must be one of {self._STRATEGIES}, got "
                            f"{anneal_strategy!r}", op=owner)
        self.anneal_strategy = anneal_strategy
        self.div_factor = check_hyper(owner, "div_factor", div_factor)
        self.final_div_factor = check_hyper(owner, "final_div_factor", final_div_factor)
        if self.div_factor == 0 or self.final_div_factor == 0:
            raise AttrError("div_factor and final_div_factor must be > 0", op=owner)
        self.three_phase = bool(three_phase)
        initial = self.max_lr / self.div_factor
        self.min_lr = initial / self.final_div_factor
        t, up = self.total_steps, self.pct_start * self.total_steps
        # torch's arithmetic, so that the phase ends are the same floats.
        if self.three_phase:
            self.phases = [(float(up) - 1, initial, self.max_lr),
                           (float(2 * self.pct_start * t) - 2, self.max_lr, initial),
                           (float(t - 1), initial, self.min_lr)]
        else:
            self.phases = [(float(up) - 1, initial, self.max_lr),
                           (float(t - 1), self.max_lr, self.min_lr)]
        super().__init__(optimizer, initial)

    def _anneal(self, start: float, end: float, x: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * x) + 1)
        return (end - start) * x + start

    def value(self, step: int) -> float:
        s = self._check_step(step)
        if s > self.total_steps:
            raise AttrError(f"step {s} is past total_steps = {self.total_steps}",
                            op="OneCycleLR")
        start_step = 0.0
        for i, (end_step, start, end) in enumerate(self.phases):
            if s <= end_step or i == len(self.phases) - 1:
                if end_step == start_step:
                    return end
                return self._anneal(start, end, (s - start_step) / (end_step - start_step))
            start_step = end_step
        raise AssertionError("unreachable: the last phase takes every step")


class CyclicLR(Schedule):
    """Cyclical learning rate between base_lr and max_lr (torch CyclicLR, Smith 2017).

    With total = up + down and r = up / total: ``cycle = floor(1 + s / total)``,
    ``x = 1 + s / total − cycle``, ``h = x / r`` if x <= r else ``(x − 1) / (r − 1)``,
    ``lr = base_lr + (max_lr − base_lr) · h · scale`` where scale is 1 (mode "triangular"),
    ``1 / 2 ** (cycle − 1)`` ("triangular2") or ``gamma ** s`` ("exp_range").
    """

    _MODES = ("triangular", "triangular2", "exp_range")

    def __init__(self, optimizer: HasLR | None = None, base_lr: float | None = None,
                 max_lr: float = 0.1, step_size_up: int = 2000,
                 step_size_down: int | None = None, mode: str = "triangular",
                 gamma: float = 1.0):
        self.max_lr = check_hyper("CyclicLR", "max_lr", max_lr)
        up = positive_int("CyclicLR", "step_size_up", step_size_up)
        down = up if step_size_down is None else positive_int(
            "CyclicLR", "step_size_down", step_size_down)
        self.total_size = up + down
        self.step_ratio = up / self.total_size
        if mode not in self._MODES:
            raise AttrError(f"mode must be one of {self._MODES}, got {mode!r}", op="CyclicLR")
        self.mode = mode
        self.gamma = check_hyper("CyclicLR", "gamma", gamma)
        super().__init__(optimizer, base_lr)

    def value(self, step: int) -> float:
        s = self._check_step(step)
        cycle = math.floor(1 + s / self.total_size)
        x = 1.0 + s / self.total_size - cycle
        if x <= self.step_ratio:
            height = x / self.step_ratio
        else:
            height = (x - 1) / (self.step_ratio - 1)
        if self.mode == "triangular":
            scale = 1.0
        elif self.mode == "triangular2":
            scale = 1 / (2.0 ** (cycle - 1))
        else:
            scale = self.gamma**s
        return self.base_lr + (self.max_lr - self.base_lr) * height * scale
