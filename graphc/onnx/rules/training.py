"""ONNX's optimizer ops (domain ai.onnx.preview.training): Adagrad, Adam, Momentum.

Each updates one or more tensors X with their gradients G and optimizer state from a
learning rate R and step count T (run-time scalars), as ONNX's reference does: the
gradient is regularized (G + norm_coefficient·X), the state updated, and X moved. Inputs
are R, T, then the n X's, the n G's and the n of each state; outputs the n new X's, then
each state's n new values. The T-dependent choices (T > 0) are selects.
"""

from __future__ import annotations

from typing import Any

from graphc.ir import Node
from graphc.onnx.convert import Context, Value, rule
from graphc.ops import elementwise as ew

Inputs = list[Value | None]
_DOMAIN = "ai.onnx.preview.training"


def _groups(ctx: Context, inputs: Inputs, states: int) -> tuple[Node, Node, list[list[Node]]]:
    """R, T (as floats) and the n-long lists X, G and each state."""
    if len(inputs) < 2 or (len(inputs) - 2) % (2 + states):
        raise ctx.error(f"expected R, T and {2 + states} groups of tensors; got "
                        f"{len(inputs)} inputs")
    n = (len(inputs) - 2) // (2 + states)
    nodes = [ctx.node(v) for v in inputs]
    r, t = nodes[0], nodes[1]
    x = nodes[2]
    r = ew.cast(r, x.dtype) if r.dtype != x.dtype else r
    t = ew.cast(t, x.dtype)
    return r, t, [nodes[2 + k * n:2 + (k + 1) * n] for k in range(2 + states)]


@rule(f"{_DOMAIN}.Adagrad", 1)
def _adagrad(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    r, t, (xs, gs, hs) = _groups(ctx, inputs, 1)
    decay = float(attrs.get("decay_factor", 0.0))
    eps, norm = float(attrs.get("epsilon", 0.0)), float(attrs.get("norm_coefficient", 0.0))
    rate = ew.div(r, ew.add(ew.mul(t, decay), 1.0))
    new_x, new_h = [], []
    for x, g, h in zip(xs, gs, hs):
        g = ew.add(ew.mul(x, norm), g)
        h = ew.add(h, ew.mul(g, g))
        new_x.append(ew.sub(x, ew.div(ew.mul(rate, g), ew.add(ew.sqrt(h), eps))))
        new_h.append(h)
    return [*new_x, *new_h]


@rule(f"{_DOMAIN}.Adam", 1)
def _adam(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    r, t, (xs, gs, vs, hs) = _groups(ctx, inputs, 2)
    alpha, beta = float(attrs.get("alpha", 0.9)), float(attrs.get("beta", 0.999))
    eps, norm = float(attrs.get("epsilon", 0.0)), float(attrs.get("norm_coefficient", 0.0))
    post = float(attrs.get("norm_coefficient_post", 0.0))
    # Bias correction from step 1 on: R·sqrt(1 - beta^T) / (1 - alpha^T).
    corrected = ew.div(ew.mul(r, ew.sqrt(ew.sub(1.0, ew.pow(beta, t)))),
                       ew.sub(1.0, ew.pow(alpha, t)))
    rate = ew.where(ew.greater(t, 0.0), corrected, r)
    new_x, new_v, new_h = [], [], []
    for x, g, v, h in zip(xs, gs, vs, hs):
        g = ew.add(ew.mul(x, norm), g)
        v = ew.add(ew.mul(v, alpha), ew.mul(g, 1.0 - alpha))
        h = ew.add(ew.mul(h, beta), ew.mul(ew.mul(g, g), 1.0 - beta))
        step = ew.mul(rate, ew.div(v, ew.add(ew.sqrt(h), eps)))
        new_x.append(ew.mul(ew.sub(x, step), 1.0 - post))
        new_v.append(v)
        new_h.append(h)
    return [*new_x, *new_v, *new_h]


@rule(f"{_DOMAIN}.Momentum", 1)
def _momentum(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    r, t, (xs, gs, vs) = _groups(ctx, inputs, 1)
    mode = str(attrs.get("mode", "standard"))
    if mode not in ("standard", "nesterov") or "alpha" not in attrs or "beta" not in attrs:
        raise ctx.error(f"mode '{mode}' must be standard or nesterov, with alpha and beta")
    alpha, beta = float(attrs["alpha"]), float(attrs["beta"])
    norm = float(attrs.get("norm_coefficient", 0.0))
    scale = ew.where(ew.greater(t, 0.0), ew.add(ew.mul(t, 0.0), beta), 1.0)  # beta from T=1
    new_x, new_v = [], []
    for x, g, v in zip(xs, gs, vs):
        g = ew.add(ew.mul(x, norm), g)
        v = ew.add(ew.mul(v, alpha), ew.mul(g, scale))
        step = v if mode == "standard" else ew.add(g, ew.mul(v, alpha))
        new_x.append(ew.sub(x, ew.mul(r, step)))
        new_v.append(v)
    return [*new_x, *new_v]
