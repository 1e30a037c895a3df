"""NAdam, RAdam, Adamax, Adadelta and the new LR schedules against torch.optim, in float64.

Each case trains the tiny MLP of `tests/test_optim.py` (same initial parameters, same data)
with graphc, on the numpy reference interpreter and compiled, and with torch.optim; the
parameters must agree to 1e-12 relative after every run, and so must the optimizer state
(graphc's slots against torch's ``optimizer.state``), which is what a checkpoint carries.
torch runs with float64 as its default dtype, so that its scalar state (``step``, NAdam's
``mu_product``) is float64 like graphc's, not float32.

Run with ``-s`` to see the largest relative difference of every case (lines ``TORCH-DIFF``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import graphc as gc
from graphc.optim import cycles
from graphc.optim import schedules as sch
from tests.test_optim import PARAMS, SCALE, _data, build_model

torch = pytest.importorskip("torch", reason="torch.optim is the reference of these tests "
                                            "(CI installs torch==2.13.0)")

RTOL = 1e-12
STEPS = 5
BACKENDS = ("reference", "compiled")


@pytest.fixture(autouse=True)
def torch_float64() -> Iterator[None]:
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def max_rel(actual: np.ndarray, expected: np.ndarray, floor: float | np.ndarray = 0.0
            ) -> float:
    """max |a − e| / max(|e|, floor) over the elements (`floor` may be an array)."""
    scale = np.maximum(np.abs(expected), floor)
    return float(np.max(np.abs(np.asarray(actual) - expected) / scale))


@dataclass(frozen=True)
class Case:
    """One optimizer configuration: graphc's and torch's constructors, and which graphc
    state variable holds which torch state entry (slots ``<p>/<kind>``, or optimizer-wide
    ``optim/<kind>`` for kinds starting with "/")."""

    id: str
    ours: Callable[[], gc.optim.Optimizer]
    theirs: Callable[[list[Any]], Any]
    state: dict[str, str]
    steps: int = STEPS
    clipvalue: float | None = None
    clipnorm: float | None = None
    schedule: Callable[[Any], sch.Schedule] | None = None
    torch_schedule: Callable[[Any], Any] | None = None


NADAM = {"exp_avg": "nadam_m", "exp_avg_sq": "nadam_v", "mu_product": "/nadam_mu_product"}
RADAM = {"exp_avg": "radam_m", "exp_avg_sq": "radam_v"}
ADAMAX = {"exp_avg": "adamax_m", "exp_inf": "adamax_u"}
ADADELTA = {"square_avg": "adadelta_v", "acc_delta": "adadelta_a"}

OPTIMIZERS = [
    Case("nadam", lambda: gc.optim.NAdam(0.01),
         lambda ps: torch.optim.NAdam(ps, lr=0.01), NADAM),
    Case("nadam_defaults", lambda: gc.optim.NAdam(),
         lambda ps: torch.optim.NAdam(ps), NADAM),
    Case("nadam_wd", lambda: gc.optim.NAdam(0.01, betas=(0.8, 0.99), weight_decay=0.05,
                                            momentum_decay=0.01),
         lambda ps: torch.optim.NAdam(ps, lr=0.01, betas=(0.8, 0.99), weight_decay=0.05,
                                      momentum_decay=0.01), NADAM),
    Case("nadam_decoupled", lambda: gc.optim.NAdam(0.01, weight_decay=0.1,
                                                   decoupled_weight_decay=True),
         lambda ps: torch.optim.NAdam(ps, lr=0.01, weight_decay=0.1,
                                      decoupled_weight_decay=True), NADAM),
    # rho_t <= t, so the rectified branch starts at step 6 at the earliest: 8 steps.
    Case("radam", lambda: gc.optim.RAdam(0.01),
         lambda ps: torch.optim.RAdam(ps, lr=0.01), RADAM, steps=8),
    Case("radam_wd", lambda: gc.optim.RAdam(0.01, betas=(0.8, 0.95), weight_decay=0.05),
         lambda ps: torch.optim.RAdam(ps, lr=0.01, betas=(0.8, 0.95), weight_decay=0.05),
         RADAM, steps=8),
    Case("radam_decoupled", lambda: gc.optim.RAdam(0.01, weight_decay=0.1,
                                                   decoupled_weight_decay=True),
         lambda ps: torch.optim.RAdam(ps, lr=0.01, weight_decay=0.1,
                                      decoupled_weight_decay=True), RADAM, steps=8),
    Case("radam_never_rectified", lambda: gc.optim.RAdam(0.01, betas=(0.9, 0.6)),
         lambda ps: torch.optim.RAdam(ps, lr=0.01, betas=(0.9, 0.6)), RADAM, steps=8),
    Case("adamax", lambda: gc.optim.Adamax(0.01),
         lambda ps: torch.optim.Adamax(ps, lr=0.01), ADAMAX),
    Case("adamax_wd_eps", lambda: gc.optim.Adamax(0.01, betas=(0.7, 0.9), eps=0.05,
                                                  weight_decay=0.05),
         lambda ps: torch.optim.Adamax(ps, lr=0.01, betas=(0.7, 0.9), eps=0.05,
                                       weight_decay=0.05), ADAMAX),
    Case("adadelta", lambda: gc.optim.Adadelta(),
         lambda ps: torch.optim.Adadelta(ps), ADADELTA),
    Case("adadelta_wd", lambda: gc.optim.Adadelta(0.5, rho=0.8, eps=1e-4, weight_decay=0.05),
         lambda ps: torch.optim.Adadelta(ps, lr=0.5, rho=0.8, eps=1e-4, weight_decay=0.05),
         ADADELTA),
    Case("nadam_clipnorm", lambda: gc.optim.NAdam(0.01, clipnorm=0.5),
         lambda ps: torch.optim.NAdam(ps, lr=0.01), NADAM, clipnorm=0.5),
    Case("radam_clipvalue", lambda: gc.optim.RAdam(0.01, clipvalue=0.05),
         lambda ps: torch.optim.RAdam(ps, lr=0.01), RADAM, steps=8, clipvalue=0.05),
    Case("adamax_clipnorm", lambda: gc.optim.Adamax(0.01, clipnorm=0.5),
         lambda ps: torch.optim.Adamax(ps, lr=0.01), ADAMAX, clipnorm=0.5),
    Case("adadelta_clipvalue", lambda: gc.optim.Adadelta(clipvalue=0.05),
         lambda ps: torch.optim.Adadelta(ps), ADADELTA, clipvalue=0.05),
]

LRS = torch.optim.lr_scheduler
SCHEDULED = [
    Case("multistep+nadam", lambda: gc.optim.NAdam(0.02),
         lambda ps: torch.optim.NAdam(ps, lr=0.02), NADAM,
         schedule=lambda o: sch.MultiStepDecay(o, milestones=[1, 3, 3], gamma=0.5),
         torch_schedule=lambda o: LRS.MultiStepLR(o, milestones=[1, 3, 3], gamma=0.5)),
    Case("piecewise+adadelta", lambda: gc.optim.Adadelta(2.0),
         lambda ps: torch.optim.Adadelta(ps, lr=2.0), ADADELTA,
         # values 2·0.3**i at the boundaries: torch's MultiStepLR
         schedule=lambda o: sch.PiecewiseConstant(o, [2, 4], [2.0, 0.6, 0.18]),
         torch_schedule=lambda o: LRS.MultiStepLR(o, milestones=[2, 4], gamma=0.3)),
    Case("onecycle+radam", lambda: gc.optim.RAdam(0.01),
         lambda ps: torch.optim.RAdam(ps, lr=0.01), RADAM, steps=8,
         schedule=lambda o: cycles.OneCycleLR(o, max_lr=0.05, total_steps=8),
         torch_schedule=lambda o: LRS.OneCycleLR(o, max_lr=0.05, total_steps=8,
                                                 cycle_momentum=False)),
    Case("onecycle3+adamax", lambda: gc.optim.Adamax(0.01),
         lambda ps: torch.optim.Adamax(ps, lr=0.01), ADAMAX,
         schedule=lambda o: cycles.OneCycleLR(o, max_lr=0.05, total_steps=10, pct_start=0.25,
                                           three_phase=True, anneal_strategy="linear"),
         torch_schedule=lambda o: LRS.OneCycleLR(o, max_lr=0.05, total_steps=10,
                                                 pct_start=0.25, three_phase=True,
                                                 anneal_strategy="linear",
                                                 cycle_momentum=False)),
    Case("sequential+adamax", lambda: gc.optim.Adamax(0.02),
         lambda ps: torch.optim.Adamax(ps, lr=0.02), ADAMAX,
         schedule=lambda o: sch.SequentialLR(
             [sch.LinearWarmup(0.02, 2, start_factor=0.25),
              sch.CosineAnnealing(T_max=4, eta_min=0.001, base_lr=0.02)], [2], o),
         torch_schedule=lambda o: LRS.SequentialLR(
             o, [LRS.LinearLR(o, start_factor=0.25, total_iters=2),
                 LRS.CosineAnnealingLR(o, T_max=4, eta_min=0.001)], milestones=[2])),
    Case("warmup_cosine+nadam", lambda: gc.optim.NAdam(0.02),
         lambda ps: torch.optim.NAdam(ps, lr=0.02), NADAM,
         schedule=lambda o: sch.LinearWarmup(sch.CosineAnnealing(T_max=3, base_lr=0.02), 2,
                                             o, start_factor=0.5),
         torch_schedule=lambda o: LRS.SequentialLR(
             o, [LRS.LinearLR(o, start_factor=0.5, total_iters=2),
                 LRS.CosineAnnealingLR(o, T_max=3)], milestones=[2])),
    Case("sequential3+adadelta", lambda: gc.optim.Adadelta(1.0),
         lambda ps: torch.optim.Adadelta(ps, lr=1.0), ADADELTA, steps=7,
         schedule=lambda o: sch.SequentialLR(
             [sch.ExponentialDecay(gamma=0.5, base_lr=1.0),
              sch.MultiStepDecay(milestones=[1], gamma=0.1, base_lr=1.0),
              sch.StepDecay(step_size=1, gamma=0.8, base_lr=1.0)], [2, 4], o),
         torch_schedule=lambda o: LRS.SequentialLR(
             o, [LRS.ExponentialLR(o, gamma=0.5), LRS.MultiStepLR(o, milestones=[1], gamma=0.1),
                 LRS.StepLR(o, step_size=1, gamma=0.8)], milestones=[2, 4])),
]


@dataclass
class Run:
    params: dict[str, np.ndarray]
    state: dict[str, dict[str, np.ndarray]]  # parameter -> torch state key -> value
    lrs: list[float]


def torch_run(case: Case, init: dict[str, np.ndarray]) -> Run:
    params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
              for k, v in init.items()}
    opt = case.theirs(list(params.values()))
    with warnings.catch_warnings():  # SequentialLR's parts step before the optimizer did
        warnings.simplefilter("ignore", UserWarning)
        sched = case.torch_schedule(opt) if case.torch_schedule is not None else None
    xv, tv = (torch.tensor(a, dtype=torch.float64) for a in _data())
    lrs = []
    for _ in range(case.steps):
        lrs.append(float(opt.param_groups[0]["lr"]))
        opt.zero_grad()
        h = torch.tanh(xv @ params["w1"] + params["b1"])
        loss = (((h @ params["w2"] + params["b2"]) * SCALE - tv) ** 2).mean()
        loss.backward()
        if case.clipvalue is not None:
            torch.nn.utils.clip_grad_value_(list(params.values()), case.clipvalue)
        if case.clipnorm is not None:  # tf's formula (torch's clip_grad_norm_ adds 1e-6)
            norm = torch.sqrt(sum((p.grad**2).sum() for p in params.values()))
            for p in params.values():
                p.grad.mul_(case.clipnorm / torch.clamp(norm, min=case.clipnorm))
        opt.step()
        if sched is not None:
            sched.step()
    state = {k: {key: np.asarray(value.detach().numpy() if torch.is_tensor(value) else value)
                 for key, value in opt.state[p].items()} for k, p in params.items()}
    return Run({k: p.detach().numpy() for k, p in params.items()}, state, lrs)


def graphc_run(case: Case, backend: str) -> tuple[Run, gc.Graph, dict[str, np.ndarray]]:
    m = build_model()
    opt = case.ours()
    updates = opt.minimize(m.loss)
    sched = case.schedule(opt) if case.schedule is not None else None
    make = gc.reference if backend == "reference" else gc.compile
    step = make(m.g, [m.x, m.t], m.loss, updates=updates)
    x, t = _data()
    lrs = []
    for _ in range(case.steps):
        lrs.append(opt.lr)
        step(x, t)
        if sched is not None:
            sched.step()
    assert opt.iterations == case.steps
    params = {k: m.g.variables[k].copy() for k in PARAMS}
    return Run(params, {}, lrs), m.g, m.init


def compare(case: Case, backend: str) -> float:
    ours, g, init = graphc_run(case, backend)
    theirs = torch_run(case, init)
    np.testing.assert_allclose(ours.lrs, theirs.lrs, rtol=RTOL, atol=0)
    worst = 0.0
    for k in PARAMS:
        assert not np.allclose(ours.params[k], init[k])  # it trained
        # Relative to the larger of the element's initial and final magnitude: an element
        # that crosses zero (b1 under RAdam does) keeps the absolute error of the steps
        # (~1e-15 of the lr-sized updates) while its final value may be ~1e-4.
        diff = max_rel(ours.params[k], theirs.params[k], np.abs(init[k]))
        assert diff <= RTOL, f"{case.id} {backend}: {k} differs by {diff:.2e} relative"
        worst = max(worst, diff)
        assert float(theirs.state[k]["step"]) == case.steps == int(g.variables["optim/step"])
        for key, kind in case.state.items():
            name = f"optim{kind}" if kind.startswith("/") else f"{k}/{kind}"
            expected = theirs.state[k][key]
            # State entries near zero (a moment whose gradient changed sign) are compared
            # relative to the largest entry of that state, not to themselves.
            diff = max_rel(g.variables[name], expected, 1e-3 * float(np.max(np.abs(expected))))
            assert diff <= RTOL, f"{case.id} {backend}: {name} vs torch {key}: {diff:.2e}"
    return worst


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", OPTIMIZERS, ids=[c.id for c in OPTIMIZERS])
def test_optimizer_matches_torch(case: Case, backend: str) -> None:
    worst = compare(case, backend)
    print(f"\nTORCH-DIFF optimizer {case.id} {backend} {case.steps} steps: {worst:.2e}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", SCHEDULED, ids=[c.id for c in SCHEDULED])
def test_scheduled_training_matches_torch(case: Case, backend: str) -> None:
    worst = compare(case, backend)
    print(f"\nTORCH-DIFF schedule {case.id} {backend} {case.steps} steps: {worst:.2e}")


# --- schedule values alone, over longer runs ---------------------------------------------------

class FakeOpt:
    def __init__(self, lr: float):
        self.lr = lr


SCHEDULE_VALUES: list[tuple[str, int, Callable[[Any], Any], Callable[[FakeOpt], sch.Schedule]]] = [
    ("multistep", 30, lambda o: LRS.MultiStepLR(o, milestones=[3, 7, 7, 20], gamma=0.3),
     lambda o: sch.MultiStepDecay(o, milestones=[20, 7, 3, 7], gamma=0.3)),
    ("piecewise", 30, lambda o: LRS.MultiStepLR(o, milestones=[5, 11], gamma=0.25),
     lambda o: sch.PiecewiseConstant(o, [5, 11], [0.1, 0.025, 0.00625])),
    ("onecycle", 100, lambda o: LRS.OneCycleLR(o, max_lr=0.3, total_steps=100,
                                               cycle_momentum=False),
     lambda o: cycles.OneCycleLR(o, max_lr=0.3, total_steps=100)),
    ("onecycle_epochs", 36, lambda o: LRS.OneCycleLR(
        o, max_lr=1.0, epochs=4, steps_per_epoch=9, pct_start=0.4, div_factor=10.0,
        final_div_factor=100.0, cycle_momentum=False),
     lambda o: cycles.OneCycleLR(o, max_lr=1.0, epochs=4, steps_per_epoch=9, pct_start=0.4,
                              div_factor=10.0, final_div_factor=100.0)),
    ("onecycle_three_phase", 50, lambda o: LRS.OneCycleLR(
        o, max_lr=0.2, total_steps=50, three_phase=True, cycle_momentum=False),
     lambda o: cycles.OneCycleLR(o, max_lr=0.2, total_steps=50, three_phase=True)),
    ("onecycle_linear", 40, lambda o: LRS.OneCycleLR(
        o, max_lr=0.2, total_steps=40, anneal_strategy="linear", cycle_momentum=False),
     lambda o: cycles.OneCycleLR(o, max_lr=0.2, total_steps=40, anneal_strategy="linear")),
    ("sequential_warmup_cosine", 40, lambda o: LRS.SequentialLR(
        o, [LRS.LinearLR(o, start_factor=0.01, total_iters=10),
            LRS.CosineAnnealingLR(o, T_max=30, eta_min=1e-4)], milestones=[10]),
     lambda o: sch.SequentialLR([sch.LinearWarmup(0.1, 10, start_factor=0.01),
                                 sch.CosineAnnealing(T_max=30, eta_min=1e-4, base_lr=0.1)],
                                [10], o)),
    ("sequential_constant_exponential", 30, lambda o: LRS.SequentialLR(
        o, [LRS.ConstantLR(o, factor=1.0, total_iters=1), LRS.ExponentialLR(o, gamma=0.9)],
        milestones=[6]),
     lambda o: sch.SequentialLR([0.1, sch.ExponentialDecay(gamma=0.9, base_lr=0.1)], [6], o)),
]


@pytest.mark.parametrize("pair", SCHEDULE_VALUES, ids=[p[0] for p in SCHEDULE_VALUES])
def test_schedule_values_match_torch(pair: tuple[str, int, Any, Any]) -> None:
    name, steps, make_torch, make_ours = pair
    param = torch.zeros(1, requires_grad=True)
    topt = torch.optim.SGD([param], lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        tsched = make_torch(topt)
    opt = FakeOpt(0.1)
    ours = make_ours(opt)
    theirs, mine = [], []
    for _ in range(steps):
        theirs.append(topt.param_groups[0]["lr"])
        mine.append(opt.lr)
        topt.step()
        tsched.step()
        ours.step()
    diff = max_rel(np.array(mine), np.array(theirs))
    print(f"\nTORCH-DIFF schedule values {name} {steps} steps: {diff:.2e}")
    assert diff <= RTOL
