"""Optimizers: each update rule against a plain-numpy textbook implementation (and torch).

The model is a small tanh MLP with an MSE loss whose gradients the test computes by hand in
numpy, so both the gradients (gc.grad) and the update rules are checked independently.
A non-trainable scale variable sits in the model: it must never change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

import graphc as gc

RTOL = 1e-6
PARAMS = ("w1", "b1", "w2", "b2")
SCALE = 1.5  # the frozen (trainable=False) output scale


def _init(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w1": rng.standard_normal((4, 6)) * 0.7,
        "b1": rng.standard_normal(6) * 0.1,
        "w2": rng.standard_normal((6, 3)) * 0.7,
        "b2": rng.standard_normal(3) * 0.1,
    }


def _data(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((8, 4)), rng.standard_normal((8, 3)) * 2.0


@dataclass
class Model:
    g: gc.Graph
    x: gc.Node
    t: gc.Node
    loss: gc.Node
    params: dict[str, gc.Node]
    scale: gc.Node
    init: dict[str, np.ndarray] = field(default_factory=dict)


def build_model(dtype: str = "float64", seed: int = 0) -> Model:
    init = _init(seed)
    with gc.Graph("mlp") as g:
        x = gc.placeholder((8, 4), dtype, name="x")
        t = gc.placeholder((8, 3), dtype, name="t")
        p = {k: gc.variable(v.astype(dtype), name=k) for k, v in init.items()}
        scale = gc.variable(np.asarray(SCALE, dtype), name="scale", trainable=False)
        out = (gc.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]) * scale
        loss = gc.mean(gc.square(out - t))
    return Model(g, x, t, loss, p, scale, init)


def numpy_grads(p: dict[str, np.ndarray], x: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
    """Backpropagation by hand for mean((tanh(x w1 + b1) w2 + b2) * SCALE - t) ** 2)."""
    h = np.tanh(x @ p["w1"] + p["b1"])
    d = (h @ p["w2"] + p["b2"]) * SCALE - t
    dz = 2.0 * d / d.size * SCALE
    da = (dz @ p["w2"].T) * (1.0 - h * h)
    return {"w1": x.T @ da, "b1": da.sum(0), "w2": h.T @ dz, "b2": dz.sum(0)}


# --- textbook rules (t is the 1-based step number) -------------------------------------------

def np_sgd(p, g, st, t, lr, momentum=0.0, nesterov=False, weight_decay=0.0, dampening=0.0):
    g = g + weight_decay * p
    if momentum:
        b = g.copy() if t == 1 else momentum * st["b"] + (1 - dampening) * g
        st["b"] = b
        g = g + momentum * b if nesterov else b
    return p - lr * g


def np_adagrad(p, g, st, t, lr, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
               eps=1e-10):
    g = g + weight_decay * p
    st["s"] = st.get("s", np.full_like(p, initial_accumulator_value)) + g * g
    clr = lr / (1 + (t - 1) * lr_decay)
    return p - clr * g / (np.sqrt(st["s"]) + eps)


def np_rmsprop(p, g, st, t, lr, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
               centered=False):
    g = g + weight_decay * p
    st["v"] = alpha * st.get("v", 0.0) + (1 - alpha) * g * g
    v = st["v"]
    if centered:
        st["a"] = alpha * st.get("a", 0.0) + (1 - alpha) * g
        v = v - st["a"] ** 2
    d = np.sqrt(v) + eps
    if momentum:
        st["b"] = momentum * st.get("b", 0.0) + g / d
        return p - lr * st["b"]
    return p - lr * g / d


def np_adam(p, g, st, t, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
            decoupled=False):
    b1, b2 = betas
    if decoupled:
        p = p * (1 - lr * weight_decay)
    else:
        g = g + weight_decay * p
    st["m"] = b1 * st.get("m", 0.0) + (1 - b1) * g
    st["v"] = b2 * st.get("v", 0.0) + (1 - b2) * g * g
    v = st["v"]
    if amsgrad:
        st["vmax"] = np.maximum(st.get("vmax", 0.0), v)
        v = st["vmax"]
    m_hat = st["m"] / (1 - b1**t)
    v_hat = v / (1 - b2**t)
    return p - lr * m_hat / (np.sqrt(v_hat) + eps)


def np_adamw(p, g, st, t, lr, weight_decay=0.01, **kw):
    return np_adam(p, g, st, t, lr, weight_decay=weight_decay, decoupled=True, **kw)


def np_nadam(p, g, st, t, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
             momentum_decay=4e-3, decoupled_weight_decay=False):
    b1, b2 = betas
    if decoupled_weight_decay:
        p = p * (1 - lr * weight_decay)
    else:
        g = g + weight_decay * p
    mu = b1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))
    mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
    st["mu_prod"] = st.get("mu_prod", 1.0) * mu
    st["m"] = b1 * st.get("m", 0.0) + (1 - b1) * g
    st["v"] = b2 * st.get("v", 0.0) + (1 - b2) * g * g
    d = np.sqrt(st["v"] / (1 - b2**t)) + eps
    return (p - lr * (1 - mu) / (1 - st["mu_prod"]) * g / d
            - lr * mu_next / (1 - st["mu_prod"] * mu_next) * st["m"] / d)


def np_radam(p, g, st, t, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
             decoupled_weight_decay=False):
    b1, b2 = betas
    if decoupled_weight_decay:
        p = p * (1 - lr * weight_decay)
    else:
        g = g + weight_decay * p
    st["m"] = b1 * st.get("m", 0.0) + (1 - b1) * g
    st["v"] = b2 * st.get("v", 0.0) + (1 - b2) * g * g
    m_hat = st["m"] / (1 - b1**t)
    rho_inf = 2 / (1 - b2) - 1
    rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
    if rho <= 5:
        return p - lr * m_hat
    r = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
    return p - lr * m_hat * r * np.sqrt(1 - b2**t) / (np.sqrt(st["v"]) + eps)


def np_adamax(p, g, st, t, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    b1, b2 = betas
    g = g + weight_decay * p
    st["m"] = b1 * st.get("m", 0.0) + (1 - b1) * g
    st["u"] = np.maximum(b2 * st.get("u", 0.0), np.abs(g) + eps)
    return p - lr / (1 - b1**t) * st["m"] / st["u"]


def np_adadelta(p, g, st, t, lr, rho=0.9, eps=1e-6, weight_decay=0.0):
    g = g + weight_decay * p
    st["v"] = rho * st.get("v", 0.0) + (1 - rho) * g * g
    delta = np.sqrt(st.get("a", 0.0) + eps) / np.sqrt(st["v"] + eps) * g
    st["a"] = rho * st.get("a", 0.0) + (1 - rho) * delta * delta
    return p - lr * delta


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[], gc.optim.Optimizer]
    rule: Callable[..., np.ndarray]
    hp: dict[str, Any]
    lr: float
    clipvalue: float | None = None
    clipnorm: float | None = None


CASES = [
    Case("sgd", lambda: gc.optim.SGD(0.1), np_sgd, {}, 0.1),
    Case("sgd_momentum", lambda: gc.optim.SGD(0.1, momentum=0.9), np_sgd, {"momentum": 0.9}, 0.1),
    Case("sgd_nesterov_wd", lambda: gc.optim.SGD(0.1, momentum=0.9, nesterov=True,
                                                 weight_decay=0.05),
         np_sgd, {"momentum": 0.9, "nesterov": True, "weight_decay": 0.05}, 0.1),
    Case("sgd_dampening", lambda: gc.optim.SGD(0.1, momentum=0.8, dampening=0.5), np_sgd,
         {"momentum": 0.8, "dampening": 0.5}, 0.1),
    Case("adagrad", lambda: gc.optim.Adagrad(0.1, lr_decay=0.05, weight_decay=0.01,
                                             initial_accumulator_value=0.1),
         np_adagrad, {"lr_decay": 0.05, "weight_decay": 0.01, "initial_accumulator_value": 0.1},
         0.1),
    Case("rmsprop", lambda: gc.optim.RMSProp(0.01), np_rmsprop, {}, 0.01),
    Case("rmsprop_centered_momentum",
         lambda: gc.optim.RMSProp(0.01, alpha=0.9, momentum=0.5, centered=True,
                                  weight_decay=0.01),
         np_rmsprop, {"alpha": 0.9, "momentum": 0.5, "centered": True, "weight_decay": 0.01},
         0.01),
    Case("adam", lambda: gc.optim.Adam(0.01), np_adam, {}, 0.01),
    Case("adam_amsgrad_wd", lambda: gc.optim.Adam(0.01, betas=(0.8, 0.99), weight_decay=0.05,
                                                  amsgrad=True),
         np_adam, {"betas": (0.8, 0.99), "weight_decay": 0.05, "amsgrad": True}, 0.01),
    Case("adamw", lambda: gc.optim.AdamW(0.01, weight_decay=0.1), np_adamw,
         {"weight_decay": 0.1}, 0.01),
    Case("sgd_clipvalue", lambda: gc.optim.SGD(0.1, momentum=0.9, clipvalue=0.05), np_sgd,
         {"momentum": 0.9}, 0.1, clipvalue=0.05),
    Case("adam_clipnorm", lambda: gc.optim.Adam(0.01, clipnorm=0.5), np_adam, {}, 0.01,
         clipnorm=0.5),
    Case("nadam", lambda: gc.optim.NAdam(0.01), np_nadam, {}, 0.01),
    Case("nadam_wd_decoupled", lambda: gc.optim.NAdam(0.01, betas=(0.8, 0.99),
                                                      weight_decay=0.1, momentum_decay=0.01,
                                                      decoupled_weight_decay=True),
         np_nadam, {"betas": (0.8, 0.99), "weight_decay": 0.1, "momentum_decay": 0.01,
                    "decoupled_weight_decay": True}, 0.01),
    Case("radam", lambda: gc.optim.RAdam(0.01, weight_decay=0.05), np_radam,
         {"weight_decay": 0.05}, 0.01),
    Case("radam_decoupled", lambda: gc.optim.RAdam(0.01, betas=(0.8, 0.95), weight_decay=0.1,
                                                   decoupled_weight_decay=True),
         np_radam, {"betas": (0.8, 0.95), "weight_decay": 0.1, "decoupled_weight_decay": True},
         0.01),
    Case("adamax", lambda: gc.optim.Adamax(0.01, betas=(0.8, 0.9), weight_decay=0.05),
         np_adamax, {"betas": (0.8, 0.9), "weight_decay": 0.05}, 0.01),
    Case("adadelta", lambda: gc.optim.Adadelta(), np_adadelta, {}, 1.0),
    Case("adadelta_wd", lambda: gc.optim.Adadelta(0.5, rho=0.8, eps=1e-4, weight_decay=0.05),
         np_adadelta, {"rho": 0.8, "eps": 1e-4, "weight_decay": 0.05}, 0.5),
    Case("nadam_clipvalue", lambda: gc.optim.NAdam(0.01, clipvalue=0.05), np_nadam, {}, 0.01,
         clipvalue=0.05),
    Case("adadelta_clipnorm", lambda: gc.optim.Adadelta(clipnorm=0.5), np_adadelta, {}, 1.0,
         clipnorm=0.5),
]
CASE = {c.id: c for c in CASES}


def numpy_train(case: Case, init: dict[str, np.ndarray], lrs: list[float]
                ) -> dict[str, np.ndarray]:
    x, t = _data()
    params = {k: v.copy() for k, v in init.items()}
    states: dict[str, dict[str, Any]] = {k: {} for k in params}
    for step, lr in enumerate(lrs, start=1):
        grads = numpy_grads(params, x, t)
        if case.clipvalue is not None:
            assert max(np.abs(g).max() for g in grads.values()) > case.clipvalue  # it bites
            grads = {k: np.clip(g, -case.clipvalue, case.clipvalue) for k, g in grads.items()}
        if case.clipnorm is not None:
            norm = np.sqrt(sum(np.sum(g * g) for g in grads.values()))
            assert norm > case.clipnorm  # it bites
            grads = {k: g * case.clipnorm / max(norm, case.clipnorm) for k, g in grads.items()}
        for k in params:
            params[k] = case.rule(params[k], grads[k], states[k], step, lr, **case.hp)
    return params


def graphc_train(case: Case, lrs: list[float], dtype: str = "float64"
                 ) -> tuple[Model, gc.optim.Optimizer]:
    m = build_model(dtype)
    opt = case.make()
    updates = opt.minimize(m.loss)
    step = gc.reference(m.g, inputs=[m.x, m.t], outputs=m.loss, updates=updates)
    x, t = _data()
    nodes_before = len(m.g)
    for lr in lrs:
        opt.lr = lr
        step(x.astype(dtype), t.astype(dtype))
    assert len(m.g) == nodes_before  # changing lr rebuilt nothing
    return m, opt


@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_matches_numpy_rule(case: Case, steps: int) -> None:
    lrs = [case.lr] * steps
    m, opt = graphc_train(case, lrs)
    expected = numpy_train(case, m.init, lrs)
    for k in PARAMS:
        np.testing.assert_allclose(m.g.variables[k], expected[k], rtol=RTOL, atol=1e-12,
                                   err_msg=f"{case.id}: {k}")
        assert not np.allclose(m.g.variables[k], m.init[k])  # the step really moved it
    assert m.g.variables["scale"] == SCALE  # trainable=False is never updated
    assert opt.iterations == steps


@pytest.mark.parametrize("case", [CASE["radam"], CASE["radam_decoupled"]], ids=lambda c: c.id)
def test_radam_rectified_steps_match_numpy(case: Case) -> None:
    """rho_t <= t, so RAdam's rectified branch starts at step 6 at the earliest."""
    lrs = [case.lr] * 8
    m, _ = graphc_train(case, lrs)
    expected = numpy_train(case, m.init, lrs)
    for k in PARAMS:
        np.testing.assert_allclose(m.g.variables[k], expected[k], rtol=RTOL, atol=1e-12)


@pytest.mark.parametrize("case", [CASES[1], CASES[7], CASES[9], CASE["nadam"], CASE["radam"],
                                  CASE["adamax"], CASE["adadelta"]], ids=lambda c: c.id)
def test_changing_lr_between_steps(case: Case) -> None:
    lrs = [case.lr, case.lr * 3, case.lr * 0.5, 0.0, case.lr]
    m, opt = graphc_train(case, lrs)
    expected = numpy_train(case, m.init, lrs)
    for k in PARAMS:
        np.testing.assert_allclose(m.g.variables[k], expected[k], rtol=RTOL, atol=1e-12)
    assert opt.lr == lrs[-1]
    assert m.g.variables["optim/lr"] == lrs[-1]


def test_float32_adam_matches_numpy() -> None:
    case = CASES[7]
    m, _ = graphc_train(case, [case.lr] * 3, dtype="float32")
    expected = numpy_train(case, m.init, [case.lr] * 3)
    for k in PARAMS:
        assert m.g.variables[k].dtype == np.float32
        np.testing.assert_allclose(m.g.variables[k], expected[k], rtol=1e-5, atol=1e-6)


def test_state_variables_are_named_and_not_trainable() -> None:
    m = build_model()
    opt = gc.optim.Adam(0.01, amsgrad=True)
    assert opt.lr == 0.01 and opt.lr_variable is None  # nothing built yet
    updates = opt.minimize(m.loss)
    names = {v.name for v in updates}
    for k in PARAMS:
        assert {k, f"{k}/adam_m", f"{k}/adam_v", f"{k}/adam_vmax"} <= names
    assert "optim/step" in names
    assert "optim/lr" not in names and "scale" not in names  # lr is set by the host only
    assert not any(name.startswith("scale/") for name in m.g.variables)  # frozen: no slots
    trainable = {v.name for v in m.g.trainable_variables}
    assert trainable == set(PARAMS)
    assert m.g.variables["optim/lr"].dtype == np.float64
    assert m.g.variables["optim/step"].dtype == np.int64
    assert opt.slot(m.params["w1"], "adam_m").name == "w1/adam_m"
    assert {v.name for v in opt.variables} == names - set(PARAMS) | {"optim/lr"}
    gc.verify(m.g)


def test_var_list_restricts_the_update() -> None:
    m = build_model()
    updates = gc.optim.SGD(0.1).minimize(m.loss, var_list=[m.params["w2"]])
    assert {v.name for v in updates} == {"w2", "optim/step"}
    x, t = _data()
    gc.reference(m.g, [m.x, m.t], m.loss, updates)(x, t)
    for k in ("w1", "b1", "b2"):
        np.testing.assert_array_equal(m.g.variables[k], m.init[k])
    expected = m.init["w2"] - 0.1 * numpy_grads(m.init, x, t)["w2"]
    np.testing.assert_allclose(m.g.variables["w2"], expected, rtol=RTOL)


def test_two_optimizers_in_one_graph_get_distinct_state() -> None:
    m = build_model()
    u1 = gc.optim.SGD(0.1, momentum=0.9).minimize(m.loss, var_list=[m.params["w1"]])
    u2 = gc.optim.SGD(0.2, momentum=0.9).minimize(m.loss, var_list=[m.params["w1"]])
    assert "optim/step" in {v.name for v in u1}
    assert {"optim_1/step", "w1/momentum_1"} <= {v.name for v in u2}
    assert m.g.variables["optim_1/lr"] == 0.2


def test_apply_gradients_with_own_gradients() -> None:
    m = build_model()
    w1 = m.params["w1"]
    with m.g:
        g = gc.grad(m.loss, w1) * 2.0
    updates = gc.optim.SGD(0.1).apply_gradients([(g, w1)])
    x, t = _data()
    gc.reference(m.g, [m.x, m.t], m.loss, updates)(x, t)
    expected = m.init["w1"] - 0.1 * 2.0 * numpy_grads(m.init, x, t)["w1"]
    np.testing.assert_allclose(m.g.variables["w1"], expected, rtol=RTOL)


def test_clip_helpers_on_gradient_lists() -> None:
    rng = np.random.default_rng(3)
    a_val, b_val = rng.standard_normal((3, 4)) * 3, rng.standard_normal(5) * 3
    with gc.Graph("clip") as g:
        a = gc.placeholder((3, 4), "float64", name="a")
        b = gc.placeholder((5,), "float64", name="b")
        clipped = gc.optim.clip_by_value([a, b], -0.5, 1.0)
        scaled, norm = gc.optim.clip_by_global_norm([a, b], 2.0)
        unclipped, _ = gc.optim.clip_by_global_norm([a, b], 1e6)
    run = gc.reference(g, [a, b], [*clipped, *scaled, norm, *unclipped])
    ca, cb, sa, sb, n, ua, ub = run(a_val, b_val)
    np.testing.assert_allclose(ca, np.clip(a_val, -0.5, 1.0))
    np.testing.assert_allclose(cb, np.clip(b_val, -0.5, 1.0))
    expected_norm = np.sqrt(np.sum(a_val**2) + np.sum(b_val**2))
    np.testing.assert_allclose(n, expected_norm, rtol=1e-12)
    np.testing.assert_allclose(sa, a_val * 2.0 / expected_norm, rtol=1e-12)
    np.testing.assert_allclose(np.sqrt(np.sum(sa**2) + np.sum(sb**2)), 2.0, rtol=1e-12)
    np.testing.assert_array_equal(ua, a_val)  # below the threshold: untouched
    np.testing.assert_array_equal(ub, b_val)


def test_penalties_values_and_gradients() -> None:
    m = build_model()
    w1, w2 = m.params["w1"], m.params["w2"]
    with m.g:
        l1 = gc.optim.l1_penalty([w1, w2], 0.01)
        l2 = gc.optim.l2_penalty([w1, w2], 0.02)
        g1 = gc.grad(l2, w1)
        g2 = gc.grad(l1, w2)
    vals = gc.reference(m.g, [], [l1, l2, g1, g2])()
    init = m.init
    np.testing.assert_allclose(vals[0], 0.01 * (np.abs(init["w1"]).sum()
                                                + np.abs(init["w2"]).sum()), rtol=1e-12)
    np.testing.assert_allclose(vals[1], 0.02 * ((init["w1"] ** 2).sum()
                                                + (init["w2"] ** 2).sum()), rtol=1e-12)
    np.testing.assert_allclose(vals[2], 2 * 0.02 * init["w1"], rtol=1e-12)
    np.testing.assert_allclose(vals[3], 0.01 * np.sign(init["w2"]), rtol=1e-12)


def test_l2_penalty_equals_coupled_weight_decay() -> None:
    """wd in the rule and l2_penalty(wd / 2) in the loss take the same SGD step."""
    a, b = build_model(), build_model()
    ua = gc.optim.SGD(0.1, weight_decay=0.2).minimize(a.loss)
    with b.g:
        total = b.loss + gc.optim.l2_penalty(list(b.params.values()), 0.1)
    ub = gc.optim.SGD(0.1).minimize(total)
    x, t = _data()
    gc.reference(a.g, [a.x, a.t], a.loss, ua)(x, t)
    gc.reference(b.g, [b.x, b.t], b.loss, ub)(x, t)
    for k in PARAMS:
        np.testing.assert_allclose(a.g.variables[k], b.g.variables[k], rtol=1e-12)


@pytest.mark.parametrize(
    ("make", "text"),
    [
        (lambda: gc.optim.SGD(-0.1), "lr"),
        (lambda: gc.optim.SGD(0.1, momentum=-1), "momentum"),
        (lambda: gc.optim.SGD(0.1, nesterov=True), "nesterov"),
        (lambda: gc.optim.Adam(0.1, betas=(1.0, 0.999)), "beta1"),
        (lambda: gc.optim.Adam(0.1, betas=(0.9,)), "betas"),
        (lambda: gc.optim.RMSProp(0.1, alpha=2.0), "alpha"),
        (lambda: gc.optim.Adagrad(0.1, eps=float("nan")), "eps"),
        (lambda: gc.optim.AdamW(0.1, clipnorm=0.0), "clipnorm"),
        (lambda: gc.optim.NAdam(0.1, momentum_decay=-1e-3), "momentum_decay"),
        (lambda: gc.optim.NAdam(0.1, betas=0.9), "betas"),
        (lambda: gc.optim.RAdam(0.1, betas=(0.9, 1.0)), "beta2"),
        (lambda: gc.optim.RAdam(-1.0), "lr"),
        (lambda: gc.optim.Adamax(0.1, eps=float("nan")), "eps"),
        (lambda: gc.optim.Adamax(0.1, weight_decay=-0.1), "weight_decay"),
        (lambda: gc.optim.Adadelta(rho=1.5), "rho"),
        (lambda: gc.optim.Adadelta(eps=-1e-6), "eps"),
    ],
)
def test_bad_hyperparameters_are_named(make: Callable[[], Any], text: str) -> None:
    with pytest.raises(gc.AttrError) as info:
        make()
    assert text in str(info.value)
    assert info.value.op in {"SGD", "Adam", "AdamW", "RMSProp", "Adagrad", "NAdam", "RAdam",
                             "Adamax", "Adadelta"}


def test_bad_minimize_and_apply_gradients_arguments() -> None:
    m = build_model()
    with m.g:
        vector_loss = gc.square(m.t)
    with pytest.raises(gc.GraphcError, match=r"loss .* must be a float scalar, got f64\[8,3\]"):
        gc.optim.SGD(0.1).minimize(vector_loss)
    w1, b1 = m.params["w1"], m.params["b1"]
    with m.g:
        gb = gc.grad(m.loss, b1)
    with pytest.raises(gc.GraphcError, match=r"gradient of %w1: expected f64\[4,6\], got f64\[6\]"):
        gc.optim.SGD(0.1).apply_gradients([(gb, w1)])
    with pytest.raises(gc.GraphcError, match="not a variable"):
        gc.optim.SGD(0.1).apply_gradients([(gb, m.x)])
    with pytest.raises(gc.GraphcError, match="listed twice"):
        gc.optim.SGD(0.1).apply_gradients([(gb, b1), (gb, b1)])


def test_lr_setter_writes_the_live_variable_in_place() -> None:
    m = build_model()
    opt = gc.optim.SGD(0.1)
    opt.lr = 0.3  # before building: a plain float that becomes the initial value
    opt.minimize(m.loss)
    live = m.g.variables["optim/lr"]
    assert live == 0.3
    opt.lr = 0.05
    assert live == 0.05 and m.g.variables["optim/lr"] is live
    with pytest.raises(gc.AttrError, match="lr"):
        opt.lr = -1.0


# --- NAdam, RAdam, Adamax, Adadelta: steps by hand, state, checkpoints, Model.fit ----------

W0 = np.array([[0.5, -1.25, 2.0], [-0.75, 0.1, 3.0]])
C = np.array([[0.3, -2.0, 1e-3], [-0.02, 5.0, -0.7]])  # the gradient of sum(C * w) + bias


def linear_problem(opt: gc.optim.Optimizer, backend: str
                   ) -> tuple[gc.Graph, gc.Node, Callable[[], Any]]:
    """loss = sum(C * w): the gradient is exactly C at every step."""
    with gc.Graph("linear") as g:
        w = gc.variable(W0.copy(), name="w")
        loss = gc.sum(w * gc.constant(C))
    updates = opt.minimize(loss)
    make = gc.reference if backend == "reference" else gc.compile
    return g, w, make(g, [], loss, updates=updates)


def _nadam_first(lr: float, b1: float, eps: float, psi: float, g: np.ndarray) -> np.ndarray:
    """NAdam's first step for gradient g: m = (1 − β₁)g, √(v/(1 − β₂)) = |g|, μΠ = μ₁."""
    mu1 = b1 * (1 - 0.5 * 0.96**psi)
    mu2 = b1 * (1 - 0.5 * 0.96 ** (2 * psi))
    d = np.abs(g) + eps
    return lr * g / d + lr * mu2 / (1 - mu1 * mu2) * (1 - b1) * g / d


FIRST_STEPS: list[tuple[str, Callable[[], gc.optim.Optimizer], Callable[[], np.ndarray]]] = [
    ("nadam", lambda: gc.optim.NAdam(0.1, betas=(0.8, 0.99), eps=1e-3),
     lambda: W0 - _nadam_first(0.1, 0.8, 1e-3, 4e-3, C)),
    ("nadam_wd", lambda: gc.optim.NAdam(0.1, weight_decay=0.2, momentum_decay=0.5),
     lambda: W0 - _nadam_first(0.1, 0.9, 1e-8, 0.5, C + 0.2 * W0)),
    ("nadam_decoupled", lambda: gc.optim.NAdam(0.1, weight_decay=0.2,
                                               decoupled_weight_decay=True),
     lambda: W0 * (1 - 0.1 * 0.2) - _nadam_first(0.1, 0.9, 1e-8, 4e-3, C)),
    # ρ₁ = 1 <= 5: the bias-corrected momentum (1 − β₁)g / (1 − β₁) = g, times lr
    ("radam", lambda: gc.optim.RAdam(0.1), lambda: W0 - 0.1 * C),
    ("radam_wd", lambda: gc.optim.RAdam(0.1, weight_decay=0.2),
     lambda: W0 - 0.1 * (C + 0.2 * W0)),
    ("radam_decoupled", lambda: gc.optim.RAdam(0.1, weight_decay=0.2,
                                               decoupled_weight_decay=True),
     lambda: W0 * (1 - 0.1 * 0.2) - 0.1 * C),
    # u = max(0, |g| + eps); lr/(1 − β₁) · (1 − β₁)g / u
    ("adamax", lambda: gc.optim.Adamax(0.1, eps=1e-2), lambda: W0 - 0.1 * C / (np.abs(C) + 1e-2)),
    ("adamax_wd", lambda: gc.optim.Adamax(0.1, weight_decay=0.2),
     lambda: W0 - 0.1 * (C + 0.2 * W0) / (np.abs(C + 0.2 * W0) + 1e-8)),
    # v = (1 − ρ)g², δ = √eps / √(v + eps) · g
    ("adadelta", lambda: gc.optim.Adadelta(),
     lambda: W0 - 1.0 * np.sqrt(1e-6) / np.sqrt(0.1 * C * C + 1e-6) * C),
    ("adadelta_wd", lambda: gc.optim.Adadelta(0.5, rho=0.8, eps=1e-3, weight_decay=0.2),
     lambda: W0 - 0.5 * np.sqrt(1e-3) / np.sqrt(0.2 * (C + 0.2 * W0) ** 2 + 1e-3)
     * (C + 0.2 * W0)),
]


@pytest.mark.parametrize("backend", ["reference", "compiled"])
@pytest.mark.parametrize("row", FIRST_STEPS, ids=[r[0] for r in FIRST_STEPS])
def test_first_step_by_hand(row: tuple[str, Any, Any], backend: str) -> None:
    _, make, expected = row
    g, _, step = linear_problem(make(), backend)
    step()
    # atol: a step may cancel an entry down to ~1e-4 (0.1 − 0.1·5/5.01), ulps of W0 remain
    np.testing.assert_allclose(g.variables["w"], expected(), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("backend", ["reference", "compiled"])
def test_first_step_state_by_hand(backend: str) -> None:
    opt = gc.optim.NAdam(0.1)
    g, _, step = linear_problem(opt, backend)
    step()
    assert g.variables["optim/nadam_mu_product"] == pytest.approx(0.9 * (1 - 0.5 * 0.96**4e-3),
                                                                   rel=1e-15)
    np.testing.assert_allclose(g.variables["w/nadam_m"], 0.1 * C, rtol=1e-15)
    np.testing.assert_allclose(g.variables["w/nadam_v"], 0.001 * C * C, rtol=1e-14)
    opt = gc.optim.Adadelta()
    g, _, step = linear_problem(opt, backend)
    step()
    delta = np.sqrt(1e-6) / np.sqrt(0.1 * C * C + 1e-6) * C
    np.testing.assert_allclose(g.variables["w/adadelta_v"], 0.1 * C * C, rtol=1e-15)
    np.testing.assert_allclose(g.variables["w/adadelta_a"], 0.1 * delta * delta, rtol=1e-14)
    opt = gc.optim.Adamax(0.1, betas=(0.9, 0.5))
    g, _, step = linear_problem(opt, backend)
    step()
    step()  # u = max(0.5 (|g| + eps), |g| + eps) = |g| + eps again
    np.testing.assert_allclose(g.variables["w/adamax_u"], np.abs(C) + 1e-8, rtol=1e-15)


@pytest.mark.parametrize("backend", ["reference", "compiled"])
def test_radam_rectifies_from_step_6_by_hand(backend: str) -> None:
    """With a constant gradient, m̂ = g and v = (1 − β₂ᵗ)g²: steps 1-5 (ρₜ <= 5) are
    p −= lr·g, step 6 is p −= lr·g·r₆·√(1 − β₂⁶)/(√(1 − β₂⁶)·|g| + eps)."""
    lr, b2, eps = 0.1, 0.999, 1e-8
    g, _, step = linear_problem(gc.optim.RAdam(lr), backend)
    for _ in range(5):
        step()
    np.testing.assert_allclose(g.variables["w"], W0 - 5 * lr * C, rtol=1e-14)
    step()
    rho_inf = 2 / (1 - b2) - 1
    bc2 = 1 - b2**6
    rho = rho_inf - 2 * 6 * b2**6 / bc2
    assert 5 < rho < 6
    r = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
    expected = W0 - 5 * lr * C - lr * C * r * np.sqrt(bc2) / (np.sqrt(bc2) * np.abs(C) + eps)
    np.testing.assert_allclose(g.variables["w"], expected, rtol=1e-13)


NEW_OPTIMIZERS: list[tuple[str, Callable[[], gc.optim.Optimizer], set[str]]] = [
    ("nadam", lambda: gc.optim.NAdam(0.01, weight_decay=0.01), {"nadam_m", "nadam_v"}),
    ("radam", lambda: gc.optim.RAdam(0.01, decoupled_weight_decay=True, weight_decay=0.1),
     {"radam_m", "radam_v"}),
    ("adamax", lambda: gc.optim.Adamax(0.01), {"adamax_m", "adamax_u"}),
    ("adadelta", lambda: gc.optim.Adadelta(), {"adadelta_v", "adadelta_a"}),
]


@pytest.mark.parametrize("row", NEW_OPTIMIZERS, ids=[r[0] for r in NEW_OPTIMIZERS])
def test_new_optimizer_state_variables(row: tuple[str, Any, set[str]]) -> None:
    name, make, kinds = row
    m = build_model()
    opt = make()
    updates = opt.minimize(m.loss)
    names = {v.name for v in updates}
    shared = {"optim/nadam_mu_product"} if name == "nadam" else set()
    assert names == set(PARAMS) | {f"{k}/{kind}" for k in PARAMS for kind in kinds} | {
        "optim/step"} | shared
    assert {v.name for v in opt.variables} == names - set(PARAMS) | {"optim/lr"}
    assert {v.name for v in m.g.trainable_variables} == set(PARAMS)
    for k in PARAMS:
        for kind in kinds:
            assert opt.slot(m.params[k], kind).type == m.params[k].type
    gc.verify(m.g)


@pytest.mark.parametrize("row", NEW_OPTIMIZERS, ids=[r[0] for r in NEW_OPTIMIZERS])
def test_new_optimizer_checkpoint_resumes_identically(row: tuple[str, Any, set[str]],
                                                      tmp_path: Any) -> None:
    """2 steps, save; a fresh graph and optimizer load it; 6 more steps (RAdam crosses into
    its rectified branch) on both: bit-identical to never having stopped."""
    _, make, _ = row
    x, t = _data()

    def built() -> tuple[Model, gc.optim.Optimizer, Any]:
        m = build_model()
        opt = make()
        return m, opt, gc.reference(m.g, [m.x, m.t], m.loss, opt.minimize(m.loss))

    a, opt_a, step_a = built()
    for _ in range(2):
        step_a(x, t)
    path = gc.save_checkpoint(a.g, tmp_path / "run.gcc")
    b, opt_b, step_b = built()
    result = gc.load_checkpoint(b.g, path)
    assert set(result.loaded) == set(a.g.variables) and opt_b.iterations == 2
    for _ in range(6):
        step_a(x, t)
        step_b(x, t)
    for name in a.g.variables:
        np.testing.assert_array_equal(b.g.variables[name], a.g.variables[name], err_msg=name)
    assert opt_a.iterations == opt_b.iterations == 8


def test_two_nadams_in_one_graph_have_their_own_mu_product() -> None:
    m = build_model()
    u1 = gc.optim.NAdam(0.01).minimize(m.loss, var_list=[m.params["w1"]])
    u2 = gc.optim.NAdam(0.01).minimize(m.loss, var_list=[m.params["w2"]])
    assert "optim/nadam_mu_product" in {v.name for v in u1}
    assert "optim_1/nadam_mu_product" in {v.name for v in u2}


@pytest.mark.parametrize("row", NEW_OPTIMIZERS, ids=[r[0] for r in NEW_OPTIMIZERS])
def test_new_optimizer_in_model_fit(row: tuple[str, Any, set[str]], tmp_path: Any) -> None:
    """Compiled fit follows the reference; save/load resumes exactly; the optimizer state
    (slots and NAdam's mu_product) is in the checkpoint but not among the model weights."""
    from graphc import nn
    from graphc.training.callbacks import LearningRateScheduler

    _, make, _ = row
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 5)).astype(np.float32)
    y = (x @ rng.standard_normal((5, 2))).astype(np.float32)

    def model(backend: str) -> gc.Model:
        net = nn.Sequential([nn.Dense(8, "tanh", seed=1), nn.Dense(2, seed=2)])
        return gc.Model(net, (5,), loss="mse", optimizer=make(), metrics=[], backend=backend)

    def schedule() -> LearningRateScheduler:
        return LearningRateScheduler(gc.optim.OneCycleLR(max_lr=0.05, total_steps=30),
                                     unit="step")

    ref, fast = model("reference"), model("compiled")
    h_ref = ref.fit(x, y, batch_size=8, epochs=3, callbacks=[schedule()], verbose=0)
    h_fast = fast.fit(x, y, batch_size=8, epochs=3, callbacks=[schedule()], verbose=0)
    assert h_fast["lr"] == h_ref["lr"]
    assert h_fast["lr"][-1] == gc.optim.OneCycleLR(max_lr=0.05, total_steps=30).value(14)
    np.testing.assert_allclose(h_fast["loss"], h_ref["loss"], rtol=1e-5)
    assert h_fast["loss"][-1] < h_fast["loss"][0]
    for name in ref.graph.variables:
        np.testing.assert_allclose(fast.graph.variables[name], ref.graph.variables[name],
                                   rtol=1e-4, atol=1e-6, err_msg=name)
    state = {v.name for v in fast.optimizer.variables}
    assert state and not state & set(fast.weight_names)
    path = fast.save(tmp_path / "m.gcc")
    clone = model("compiled").load(path)
    assert clone.optimizer.iterations == fast.optimizer.iterations == 15
    h1 = fast.fit(x, y, batch_size=8, epochs=1, verbose=0, seed=3)
    h2 = clone.fit(x, y, batch_size=8, epochs=1, verbose=0, seed=3)
    assert h1["loss"] == h2["loss"]
    for name in fast.graph.variables:
        np.testing.assert_array_equal(clone.graph.variables[name], fast.graph.variables[name],
                                      err_msg=name)


# --- torch, when installed -----------------------------------------------------------------

def _torch_factory(case_id: str) -> Callable[[Any, list[Any]], Any]:
    import torch

    table: dict[str, Callable[[list[Any]], Any]] = {
        "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1),
        "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
        "sgd_nesterov_wd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True,
                                                      weight_decay=0.05),
        "sgd_dampening": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.8, dampening=0.5),
        "adagrad": lambda ps: torch.optim.Adagrad(ps, lr=0.1, lr_decay=0.05, weight_decay=0.01,
                                                  initial_accumulator_value=0.1),
        "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=0.01),
        "rmsprop_centered_momentum": lambda ps: torch.optim.RMSprop(
            ps, lr=0.01, alpha=0.9, momentum=0.5, centered=True, weight_decay=0.01),
        "adam": lambda ps: torch.optim.Adam(ps, lr=0.01),
        "adam_amsgrad_wd": lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.8, 0.99),
                                                       weight_decay=0.05, amsgrad=True),
        "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
        "sgd_clipvalue": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
        "adam_clipnorm": lambda ps: torch.optim.Adam(ps, lr=0.01),
        "nadam": lambda ps: torch.optim.NAdam(ps, lr=0.01),
        "nadam_wd_decoupled": lambda ps: torch.optim.NAdam(
            ps, lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, momentum_decay=0.01,
            decoupled_weight_decay=True),
        "radam": lambda ps: torch.optim.RAdam(ps, lr=0.01, weight_decay=0.05),
        "radam_decoupled": lambda ps: torch.optim.RAdam(ps, lr=0.01, betas=(0.8, 0.95),
                                                        weight_decay=0.1,
                                                        decoupled_weight_decay=True),
        "adamax": lambda ps: torch.optim.Adamax(ps, lr=0.01, betas=(0.8, 0.9),
                                                weight_decay=0.05),
        "adadelta": lambda ps: torch.optim.Adadelta(ps),
        "adadelta_wd": lambda ps: torch.optim.Adadelta(ps, lr=0.5, rho=0.8, eps=1e-4,
                                                       weight_decay=0.05),
        "nadam_clipvalue": lambda ps: torch.optim.NAdam(ps, lr=0.01),
        "adadelta_clipnorm": lambda ps: torch.optim.Adadelta(ps),
    }
    return lambda _torch, ps: table[case_id](ps)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_matches_torch(case: Case) -> None:
    torch = pytest.importorskip("torch", reason="torch.optim is the reference (CI installs it)")
    steps = 4
    m, _ = graphc_train(case, [case.lr] * steps)
    params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
              for k, v in m.init.items()}
    opt = _torch_factory(case.id)(torch, list(params.values()))
    xv, tv = (torch.tensor(a, dtype=torch.float64) for a in _data())
    for _ in range(steps):
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
    for k in PARAMS:
        np.testing.assert_allclose(m.g.variables[k], params[k].detach().numpy(), rtol=RTOL,
                                   atol=1e-12, err_msg=f"{case.id}: {k}")
