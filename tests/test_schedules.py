"""Learning-rate schedules: closed-form values, the step/lr protocol, and torch when present."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import graphc as gc
from graphc.optim import cycles
from graphc.optim import schedules as sch


class FakeOpt:
    """The only thing a schedule needs from an optimizer: a read/write `lr`."""

    def __init__(self, lr: float):
        self.lr = lr


def _values(s: sch.Schedule, n: int) -> list[float]:
    return [s.value(i) for i in range(n)]


def test_step_decay() -> None:
    s = sch.StepDecay(step_size=3, gamma=0.5, base_lr=0.8)
    assert _values(s, 8) == pytest.approx([0.8 * 0.5 ** (i // 3) for i in range(8)], rel=1e-15)


def test_exponential_decay_smooth_and_staircase() -> None:
    s = sch.ExponentialDecay(gamma=0.9, base_lr=0.5)
    assert _values(s, 5) == pytest.approx([0.5 * 0.9**i for i in range(5)], rel=1e-15)
    s = sch.ExponentialDecay(gamma=0.5, decay_steps=4, base_lr=1.0)
    assert s.value(2) == pytest.approx(0.5**0.5, rel=1e-15)
    s = sch.ExponentialDecay(gamma=0.5, decay_steps=4, staircase=True, base_lr=1.0)
    assert _values(s, 9) == [1.0] * 4 + [0.5] * 4 + [0.25]


def test_polynomial_decay() -> None:
    s = sch.PolynomialDecay(total_steps=10, power=2.0, end_lr=0.01, base_lr=0.1)
    expected = [(0.1 - 0.01) * (1 - min(i, 10) / 10) ** 2 + 0.01 for i in range(14)]
    assert _values(s, 14) == pytest.approx(expected, rel=1e-14)
    assert s.value(10) == s.value(13) == pytest.approx(0.01)


def test_cosine_annealing() -> None:
    s = sch.CosineAnnealing(T_max=10, eta_min=0.001, base_lr=0.1)
    expected = [0.001 + 0.099 * (1 + math.cos(math.pi * i / 10)) / 2 for i in range(25)]
    assert _values(s, 25) == pytest.approx(expected, rel=1e-14)
    assert s.value(0) == pytest.approx(0.1) and s.value(10) == pytest.approx(0.001)


def test_cosine_warm_restarts() -> None:
    s = sch.CosineAnnealing(T_max=3, T_mult=2, warm_restarts=True, base_lr=1.0)
    # periods of 3, 6, 12 steps: restarts at steps 3 and 9
    phases = [(0, 3), (1, 3), (2, 3), (0, 6), (1, 6), (2, 6), (3, 6), (4, 6), (5, 6), (0, 12)]
    expected = [(1 + math.cos(math.pi * c / p)) / 2 for c, p in phases]
    assert _values(s, 10) == pytest.approx(expected, rel=1e-14)
    s1 = sch.CosineAnnealing(T_max=4, warm_restarts=True, base_lr=1.0)
    assert _values(s1, 12)[4:8] == _values(s1, 4) == _values(s1, 12)[8:]


def test_linear_warmup_then_inner() -> None:
    inner = sch.CosineAnnealing(T_max=8, base_lr=0.2)
    s = sch.LinearWarmup(inner, warmup_steps=4)
    assert _values(s, 4) == pytest.approx([0.2 * i / 4 for i in range(4)], rel=1e-15)
    assert [s.value(4 + i) for i in range(9)] == pytest.approx(_values(inner, 9), rel=1e-15)
    const = sch.LinearWarmup(0.5, warmup_steps=5, start_factor=0.2)
    expected = [0.5 * (0.2 + 0.8 * min(i, 5) / 5) for i in range(8)]
    assert _values(const, 8) == pytest.approx(expected, rel=1e-15)


def test_multistep_decay() -> None:
    s = sch.MultiStepDecay(milestones=[6, 2, 6], gamma=0.5, base_lr=0.8)  # any order, repeats
    expected = [0.8 * 0.5 ** ((i >= 2) + 2 * (i >= 6)) for i in range(10)]
    assert _values(s, 10) == pytest.approx(expected, rel=1e-15)
    assert s.value(1) == 0.8 and s.value(2) == 0.4 and s.value(6) == 0.1
    assert gc.optim.MultiStepLR is sch.MultiStepDecay
    at_zero = sch.MultiStepDecay(milestones=[0], gamma=0.1, base_lr=1.0)
    assert at_zero.value(0) == pytest.approx(0.1)  # torch: a milestone 0 applies at once
    assert _values(sch.MultiStepDecay(base_lr=0.3), 5) == [0.3] * 5  # no milestones


def test_piecewise_constant() -> None:
    s = sch.PiecewiseConstant(boundaries=[3, 5], values=[1.0, 0.5, 0.1])
    assert _values(s, 8) == [1.0] * 3 + [0.5] * 2 + [0.1] * 3
    assert s.base_lr == 1.0
    same = sch.MultiStepDecay(milestones=[3, 5], gamma=0.5, base_lr=1.0)
    as_steps = sch.PiecewiseConstant(boundaries=[3, 5], values=[1.0, 0.5, 0.25])
    assert _values(as_steps, 8) == _values(same, 8)
    rising = sch.PiecewiseConstant(None, [1], [0.0, 2.0])  # values need not decrease
    assert _values(rising, 3) == [0.0, 2.0, 2.0]


def _one_cycle(s: int, total: int, max_lr: float, pct: float = 0.3, div: float = 25.0,
               final_div: float = 1e4) -> float:
    """The two-phase cosine 1cycle from its definition (torch's phase ends)."""
    lr0 = max_lr / div
    up_end, down_end = pct * total - 1, total - 1
    if s <= up_end:
        x, a, b = s / up_end, lr0, max_lr
    else:
        x, a, b = (s - up_end) / (down_end - up_end), max_lr, lr0 / final_div
    return b + (a - b) * (1 + math.cos(math.pi * x)) / 2


def test_one_cycle_cosine_two_phases() -> None:
    s = cycles.OneCycleLR(max_lr=0.5, total_steps=20)
    expected = [_one_cycle(i, 20, 0.5) for i in range(21)]
    assert _values(s, 21) == pytest.approx(expected, rel=1e-14)
    assert s.base_lr == 0.5 / 25 and s.value(0) == pytest.approx(0.5 / 25, rel=1e-14)
    assert s.value(5) == pytest.approx(0.5, rel=1e-15)  # the peak at pct_start·T − 1 = 5
    assert s.value(19) == pytest.approx(0.5 / 25 / 1e4, rel=1e-12)  # the end, T − 1
    e = cycles.OneCycleLR(max_lr=1.0, epochs=3, steps_per_epoch=4, pct_start=0.5, div_factor=4.0,
                       final_div_factor=2.0)
    assert e.total_steps == 12
    assert _values(e, 13) == pytest.approx(
        [_one_cycle(i, 12, 1.0, 0.5, 4.0, 2.0) for i in range(13)], rel=1e-14)
    with pytest.raises(gc.AttrError, match="past total_steps"):
        s.value(21)


def test_one_cycle_three_phase_and_linear() -> None:
    s = cycles.OneCycleLR(max_lr=1.0, total_steps=20, pct_start=0.25, div_factor=10.0,
                       final_div_factor=100.0, three_phase=True, anneal_strategy="linear")
    # phase ends 4, 8, 19: 0.1 -> 1 -> 0.1 -> 0.001, linearly
    expected = ([0.1 + 0.9 * i / 4 for i in range(5)] + [1.0 - 0.9 * i / 4 for i in range(1, 5)]
                + [0.1 - 0.099 * i / 11 for i in range(1, 12)])
    assert _values(s, 20) == pytest.approx(expected, rel=1e-14)
    cos3 = cycles.OneCycleLR(max_lr=1.0, total_steps=20, pct_start=0.25, div_factor=10.0,
                          three_phase=True)
    assert cos3.value(2) == pytest.approx(0.55) and cos3.value(6) == pytest.approx(0.55)
    assert cos3.value(8) == pytest.approx(0.1) and cos3.value(4) == pytest.approx(1.0)


def test_one_cycle_zero_length_phase() -> None:
    """pct_start·T = 1: the warm-up phase is the single step 0, where torch divides by
    zero; the lr there is the phase's end, max_lr."""
    s = cycles.OneCycleLR(max_lr=1.0, total_steps=10, pct_start=0.1)
    assert s.value(0) == 1.0
    assert s.value(9) == pytest.approx(1.0 / 25 / 1e4)


def test_sequential_runs_each_part_from_its_own_step_0() -> None:
    warm = sch.LinearWarmup(0.2, warmup_steps=4, start_factor=0.25)
    cos = sch.CosineAnnealing(T_max=6, eta_min=0.01, base_lr=0.2)
    s = sch.SequentialLR([warm, cos, 0.05], milestones=[4, 10])
    expected = ([0.2 * (0.25 + 0.75 * i / 4) for i in range(4)]
                + [cos.value(i) for i in range(6)] + [0.05] * 5)
    assert _values(s, 15) == pytest.approx(expected, rel=1e-15)
    assert s.base_lr == warm.base_lr
    # LinearWarmup(inner) is the two-part sequence warmup-to-inner(0), inner.
    inner = sch.ExponentialDecay(gamma=0.8, base_lr=0.3)
    a = sch.LinearWarmup(inner, warmup_steps=3)
    b = sch.SequentialLR([sch.LinearWarmup(0.3, 3), inner], [3])
    assert _values(a, 12) == _values(b, 12)
    assert _values(sch.SequentialLR([cos], []), 6) == _values(cos, 6)


def test_sequential_drives_the_optimizer() -> None:
    opt = FakeOpt(1.0)
    s = sch.SequentialLR([sch.ConstantLR(base_lr=0.5), sch.StepDecay(step_size=1, gamma=0.5,
                                                                      base_lr=0.4)], [2], opt)
    assert opt.lr == 0.5
    assert [s.step() for _ in range(4)] == [0.5, 0.4, 0.2, 0.1]
    assert opt.lr == 0.1


@pytest.mark.parametrize(
    "make",
    [
        lambda o: sch.MultiStepDecay(o, milestones=[2, 4], gamma=0.5),
        lambda o: sch.PiecewiseConstant(o, [2, 4], [0.3, 0.2, 0.1]),
        lambda o: cycles.OneCycleLR(o, max_lr=0.3, total_steps=12),
        lambda o: sch.SequentialLR([sch.LinearWarmup(0.3, 3), sch.CosineAnnealing(
            T_max=5, base_lr=0.3)], [3], o),
    ],
    ids=["multistep", "piecewise", "onecycle", "sequential"],
)
def test_new_schedules_state_roundtrip(make: Callable[[FakeOpt], sch.Schedule]) -> None:
    opt = FakeOpt(0.3)
    s = make(opt)
    for _ in range(5):
        s.step()
    opt2 = FakeOpt(0.3)
    s2 = make(opt2)
    s2.load_state_dict(s.state_dict())
    assert opt2.lr == opt.lr == s.value(5)
    assert [s2.step() for _ in range(5)] == [s.step() for _ in range(5)]


def test_cyclic_triangular_modes() -> None:
    s = cycles.CyclicLR(base_lr=0.1, max_lr=0.5, step_size_up=4)
    up = [0.1 + 0.4 * i / 4 for i in range(4)]
    down = [0.5 - 0.4 * i / 4 for i in range(4)]
    assert _values(s, 16) == pytest.approx((up + down) * 2, rel=1e-14)
    asym = cycles.CyclicLR(base_lr=0.0, max_lr=1.0, step_size_up=2, step_size_down=4)
    assert _values(asym, 7) == pytest.approx([0, 0.5, 1, 0.75, 0.5, 0.25, 0], abs=1e-15)
    tri2 = cycles.CyclicLR(base_lr=0.0, max_lr=1.0, step_size_up=2, mode="triangular2")
    assert [tri2.value(i) for i in (2, 6, 10)] == pytest.approx([1.0, 0.5, 0.25])
    exp = cycles.CyclicLR(base_lr=0.0, max_lr=1.0, step_size_up=2, mode="exp_range", gamma=0.9)
    assert exp.value(2) == pytest.approx(0.9**2) and exp.value(6) == pytest.approx(0.9**6)


def test_reduce_on_plateau_follows_its_rule() -> None:
    opt = FakeOpt(1.0)
    s = sch.ReduceOnPlateau(opt, factor=0.5, patience=1, cooldown=1, min_lr=0.2)
    # metric: best=5 | 5 (bad 1) | 5 (bad 2 > 1: lr 0.5, cooldown 1) | 5 (cooldown: bad reset)
    # | 5 (bad 1) | 5 (bad 2: lr 0.25) | 5 (cooldown) | 5 (bad 1) | 5 (bad 2: 0.2 = min_lr)
    # | 4 (better: reset) | 5 ...
    metrics = [5, 5, 5, 5, 5, 5, 5, 5, 5, 4, 5]
    lrs = [s.step(m) for m in metrics]
    assert lrs == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.2, 0.2, 0.2])
    assert opt.lr == lrs[-1] and s.value(0) == lrs[-1]
    assert s.best == 4 and s.num_bad_steps == 1


def test_reduce_on_plateau_thresholds_and_max_mode() -> None:
    s = sch.ReduceOnPlateau(base_lr=1.0, patience=0, threshold=0.1)  # rel: < best * 0.9
    assert [s.step(m) for m in (1.0, 0.95, 0.8)] == pytest.approx([1.0, 0.1, 0.1])
    s = sch.ReduceOnPlateau(base_lr=1.0, patience=0, threshold=0.1, threshold_mode="abs",
                            mode="max")  # > best + 0.1
    assert [s.step(m) for m in (1.0, 1.05, 1.2)] == pytest.approx([1.0, 0.1, 0.1])
    with pytest.raises(gc.AttrError, match="metric"):
        s.step()


def test_step_writes_the_optimizer_lr_into_the_graph() -> None:
    with gc.Graph("s") as g:
        w = gc.variable(np.ones(3), name="w")
        loss = gc.sum(gc.square(w))
        opt = gc.optim.SGD(0.4)
        updates = opt.minimize(loss)
    s = sch.StepDecay(opt, step_size=1, gamma=0.5)
    train = gc.reference(g, [], loss, updates)
    seen = []
    for _ in range(3):
        seen.append(float(g.variables["optim/lr"]))
        before = g.variables["w"].copy()
        train()
        np.testing.assert_allclose(g.variables["w"], before - seen[-1] * 2 * before)
        s.step()
    assert seen == [0.4, 0.2, 0.1] and opt.lr == 0.05 and s.last_step == 3


def test_construction_sets_value0_and_state_roundtrip() -> None:
    opt = FakeOpt(0.3)
    s = sch.LinearWarmup(sch.ExponentialDecay(gamma=0.5, base_lr=0.3), warmup_steps=2,
                         optimizer=opt)
    assert opt.lr == 0.0  # value(0) of a warmup from 0
    for _ in range(4):
        s.step()
    state = s.state_dict()
    opt2 = FakeOpt(0.3)
    s2 = sch.LinearWarmup(sch.ExponentialDecay(gamma=0.5, base_lr=0.3), warmup_steps=2,
                          optimizer=opt2)
    s2.load_state_dict(state)
    assert opt2.lr == opt.lr == pytest.approx(0.3 * 0.25)
    assert s2.step() == s.step()


@pytest.mark.parametrize(
    ("make", "text"),
    [
        (lambda: sch.StepDecay(step_size=0, base_lr=0.1), "step_size"),
        (lambda: sch.StepDecay(step_size=2), "base_lr"),
        (lambda: sch.CosineAnnealing(T_max=0, base_lr=0.1), "T_max"),
        (lambda: cycles.CyclicLR(base_lr=0.1, mode="sine"), "mode"),
        (lambda: sch.LinearWarmup(0.1, warmup_steps=3, start_factor=2.0), "start_factor"),
        (lambda: sch.ExponentialDecay(gamma=0.9, base_lr=0.1).value(-1), "step"),
        (lambda: sch.MultiStepDecay(milestones=[2, -1], base_lr=0.1), "milestones"),
        (lambda: sch.MultiStepDecay(milestones=3, base_lr=0.1), "milestones"),
        (lambda: sch.MultiStepDecay(milestones=[2], gamma=-0.5, base_lr=0.1), "gamma"),
        (lambda: sch.PiecewiseConstant(None, [3, 3], [1.0, 0.5, 0.1]), "increasing"),
        (lambda: sch.PiecewiseConstant(None, [0], [1.0, 0.5]), "boundaries"),
        (lambda: sch.PiecewiseConstant(None, [3], [1.0]), "values must have"),
        (lambda: sch.PiecewiseConstant(None, [3], [1.0, -0.5]), "values"),
        (lambda: cycles.OneCycleLR(max_lr=0.1), "total_steps"),
        (lambda: cycles.OneCycleLR(max_lr=0.1, epochs=2), "total_steps"),
        (lambda: cycles.OneCycleLR(max_lr=0.1, total_steps=0), "total_steps"),
        (lambda: cycles.OneCycleLR(max_lr=0.1, total_steps=9, pct_start=1.5), "pct_start"),
        (lambda: cycles.OneCycleLR(max_lr=0.1, total_steps=9, anneal_strategy="exp"),
         "anneal_strategy"),
        (lambda: cycles.OneCycleLR(max_lr=0.1, total_steps=9, div_factor=0.0), "div_factor"),
        (lambda: sch.SequentialLR([], []), "at least one"),
        (lambda: sch.SequentialLR([0.1, 0.2], [2, 4]), "milestones must have"),
        (lambda: sch.SequentialLR([0.1, 0.2, 0.3], [4, 2]), "increasing"),
        (lambda: sch.SequentialLR([0.1, sch.ReduceOnPlateau(base_lr=0.1)], [2]),
         "ReduceOnPlateau"),
    ],
)
def test_bad_arguments_are_named(make: Callable[[], Any], text: str) -> None:
    with pytest.raises(gc.AttrError, match=text):
        make()


# --- torch.optim.lr_scheduler, when installed ------------------------------------------------

def _pairs() -> list[tuple[str, Callable[[Any, Any], Any], Callable[[FakeOpt], sch.Schedule]]]:
    return [
        ("step", lambda t, o: t.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5),
         lambda o: sch.StepDecay(o, step_size=3, gamma=0.5)),
        ("exponential", lambda t, o: t.optim.lr_scheduler.ExponentialLR(o, gamma=0.9),
         lambda o: sch.ExponentialDecay(o, gamma=0.9)),
        ("polynomial", lambda t, o: t.optim.lr_scheduler.PolynomialLR(o, total_iters=7,
                                                                      power=2.0),
         lambda o: sch.PolynomialDecay(o, total_steps=7, power=2.0)),
        ("cosine", lambda t, o: t.optim.lr_scheduler.CosineAnnealingLR(o, T_max=6, eta_min=0.01),
         lambda o: sch.CosineAnnealing(o, T_max=6, eta_min=0.01)),
        ("restarts", lambda t, o: t.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            o, T_0=3, T_mult=2, eta_min=0.01),
         lambda o: sch.CosineAnnealing(o, T_max=3, T_mult=2, eta_min=0.01, warm_restarts=True)),
        ("linear", lambda t, o: t.optim.lr_scheduler.LinearLR(o, start_factor=0.25,
                                                              total_iters=5),
         lambda o: sch.LinearWarmup(o.lr, warmup_steps=5, optimizer=o, start_factor=0.25)),
        ("cyclic", lambda t, o: t.optim.lr_scheduler.CyclicLR(
            o, base_lr=0.05, max_lr=0.5, step_size_up=3, step_size_down=5,
            cycle_momentum=False),
         lambda o: cycles.CyclicLR(o, base_lr=0.05, max_lr=0.5, step_size_up=3, step_size_down=5)),
        ("multistep", lambda t, o: t.optim.lr_scheduler.MultiStepLR(o, milestones=[2, 5, 5, 9],
                                                                    gamma=0.5),
         lambda o: sch.MultiStepDecay(o, milestones=[2, 5, 5, 9], gamma=0.5)),
        ("onecycle", lambda t, o: t.optim.lr_scheduler.OneCycleLR(
            o, max_lr=0.4, total_steps=25, cycle_momentum=False),
         lambda o: cycles.OneCycleLR(o, max_lr=0.4, total_steps=25)),
        ("sequential", lambda t, o: t.optim.lr_scheduler.SequentialLR(
            o, [t.optim.lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=4),
                t.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10)], milestones=[4]),
         lambda o: sch.SequentialLR([sch.LinearWarmup(o.lr, 4, start_factor=0.1),
                                     sch.CosineAnnealing(T_max=10, base_lr=o.lr)], [4], o)),
    ]


@pytest.mark.parametrize("pair", _pairs(), ids=[p[0] for p in _pairs()])
def test_matches_torch_schedulers(pair: tuple[str, Any, Any]) -> None:
    torch = pytest.importorskip("torch", reason="torch's schedulers are the reference")
    _, make_torch, make_ours = pair
    param = torch.zeros(1, requires_grad=True)
    topt = torch.optim.SGD([param], lr=0.1)
    with warnings.catch_warnings():  # SequentialLR's parts step before the optimizer did
        warnings.simplefilter("ignore", UserWarning)
        tsched = make_torch(torch, topt)
    ours = make_ours(FakeOpt(0.1))
    for _ in range(20):
        assert ours.optimizer.lr == pytest.approx(topt.param_groups[0]["lr"], rel=1e-9)
        topt.step()
        tsched.step()
        ours.step()


def test_matches_torch_reduce_on_plateau() -> None:
    torch = pytest.importorskip("torch", reason="torch's schedulers are the reference")
    param = torch.zeros(1, requires_grad=True)
    topt = torch.optim.SGD([param], lr=1.0)
    tsched = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, factor=0.5, patience=2,
                                                        cooldown=1, min_lr=0.05)
    opt = FakeOpt(1.0)
    ours = sch.ReduceOnPlateau(opt, factor=0.5, patience=2, cooldown=1, min_lr=0.05)
    metrics = np.random.default_rng(0).uniform(0.9, 1.1, 40).cumsum() / np.arange(1, 41)
    for m in metrics:
        tsched.step(float(m))
        ours.step(float(m))
        assert opt.lr == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12)
