"""ONNX's ops for models that carry a state across tokens (opset 27): LinearAttention and
CausalConvWithState. Both take an optional past state and return the present one, so a
model can run a prompt at once and then token by token.

- LinearAttention: per key/value head a (d_k, d_v) state S, updated once per time step and
  read by the query: S <- S·exp(decay_t) (the gated rules), v_t <- beta_t·(v_t - Sᵀk_t) (the
  delta rules), S <- S + k_t v_tᵀ, o_t = scale·q_tᵀS (each state serving q_heads/kv_heads
  query heads). The recurrence is unrolled over the static sequence length.
- CausalConvWithState: a depthwise 1-D convolution over [past_state, input] (the past being
  k-1 zeros without a state), written as k shifted slices times the channel's weights, then
  the optional SiLU; the present state is the padded input's last k-1 positions.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from graphc import builder as gb
from graphc.ir import Node
from graphc.onnx.convert import Context, Value, rule
from graphc.ops import elementwise as ew
from graphc.ops import join, layout, linalg, slicing

Inputs = list[Value | None]
_RULES = ("linear", "gated", "delta", "gated_delta")


def _heads(x: Node, heads: int, what: str, ctx: Context) -> Node:
    """(B, T, H·D) -> (B, H, T, D)."""
    if x.ndim != 3 or x.shape[2] % heads:
        raise ctx.error(f"{what} {tuple(x.shape)} must be (batch, time, {heads}·size)")
    b, t, hd = x.shape
    return layout.transpose(layout.reshape(x, [b, t, heads, hd // heads]), [0, 2, 1, 3])


def _step(x: Node, i: int) -> Node:
    """x[:, :, i:i+1, :] of a (B, H, T, D) tensor."""
    return slicing.slice(x, [i], [i + 1], axes=[2])


def _optional(inputs: Inputs, i: int) -> Value | None:
    return inputs[i] if len(inputs) > i else None


@rule("LinearAttention", 27)
def _linear_attention(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """Inputs query, key, value (B, T, H·D), past_state (B, H_kv, d_k, d_v), decay
    (B, T, H_kv or H_kv·d_k), beta (B, T, H_kv or 1); outputs (B, T, H_q·d_v) and the
    present state."""
    update = str(attrs.get("update_rule", "gated_delta"))
    if update not in _RULES:
        raise ctx.error(f"update_rule '{update}' is not one of {', '.join(_RULES)}")
    qh, kvh = int(attrs.get("q_num_heads", 0)), int(attrs.get("kv_num_heads", 0))
    if qh <= 0 or kvh <= 0 or qh % kvh:
        raise ctx.error(f"q_num_heads {qh} must be a positive multiple of kv_num_heads {kvh}")
    gated, delta = update in ("gated", "gated_delta"), update in ("delta", "gated_delta")
    decay_in, beta_in = _optional(inputs, 4), _optional(inputs, 5)
    if gated != (decay_in is not None) or delta != (beta_in is not None):
        raise ctx.error(f"update_rule '{update}' needs decay {'given' if gated else 'absent'} "
                        f"and beta {'given' if delta else 'absent'}")
    q = _heads(ctx.node(inputs[0]), qh, "query", ctx)
    k = _heads(ctx.node(inputs[1]), kvh, "key", ctx)
    v = _heads(ctx.node(inputs[2]), kvh, "value", ctx)
    b, _, t, dk = k.shape
    dv = v.shape[3]
    decay = beta = None
    if decay_in is not None:
        dn = ctx.node(decay_in)
        width = dn.shape[2] if dn.ndim == 3 else -1
        if width not in (kvh, kvh * dk):
            raise ctx.error(f"decay {tuple(dn.shape)}: the last dim must be {kvh} or {kvh * dk}")
        decay = _heads(dn, kvh, "decay", ctx)  # (B, H_kv, T, 1 or d_k)
    if beta_in is not None:
        bn = ctx.node(beta_in)
        width = bn.shape[2] if bn.ndim == 3 else -1
        if width not in (kvh, 1):
            raise ctx.error(f"beta {tuple(bn.shape)}: the last dim must be {kvh} or 1")
        beta = _heads(bn, width, "beta", ctx)  # (B, H_kv or 1, T, 1)
    past = _optional(inputs, 3)
    if past is not None:
        state = ctx.node(past)
        if tuple(state.shape) != (b, kvh, dk, dv):
            raise ctx.error(f"past_state {tuple(state.shape)}; expected {(b, kvh, dk, dv)}")
    else:
        state = gb.constant(np.zeros((b, kvh, dk, dv), q.dtype.np))
    scale = float(attrs.get("scale", 0.0)) or 1.0 / math.sqrt(q.shape[3])
    group = qh // kvh
    outs = []
    for i in range(t):
        k_t = _step(k, i)  # (B, H_kv, 1, d_k)
        v_t = _step(v, i)  # (B, H_kv, 1, d_v)
        if decay is not None:  # exp(g) scales the state's rows (one factor or one per d_k)
            state = ew.mul(state, layout.transpose(ew.exp(_step(decay, i)), [0, 1, 3, 2]))
        if beta is not None:
            v_t = ew.mul(_step(beta, i), ew.sub(v_t, linalg.matmul(k_t, state)))
        state = ew.add(state, linalg.matmul(k_t, v_t, transpose_a=True))
        read = state
        if group > 1:  # each key/value head's state serves `group` query heads in a row
            wide = layout.broadcast_to(layout.reshape(state, [b, kvh, 1, dk, dv]),
                                       [b, kvh, group, dk, dv])
            read = layout.reshape(wide, [b, qh, dk, dv])
        outs.append(ew.mul(linalg.matmul(_step(q, i), read), scale))  # (B, H_q, 1, d_v)
    y = join.concat(outs, 2) if len(outs) > 1 else outs[0]
    y = layout.reshape(layout.transpose(y, [0, 2, 1, 3]), [b, t, qh * dv])
    return [y, state]


@rule("CausalConvWithState", 27)
def _causal_conv(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """Inputs input (B, C, L), weight (C, 1, k), bias (C), past_state (B, C, k-1); outputs
    (B, C, L) and the present state (B, C, k-1)."""
    activation = str(attrs.get("activation", "none"))
    if activation not in ("none", "silu", "swish"):
        raise ctx.error(f"activation '{activation}' is not one of none, silu, swish")
    x, w = ctx.node(inputs[0]), ctx.node(inputs[1])
    if x.ndim != 3 or w.ndim != 3 or w.shape[0] != x.shape[1] or w.shape[1] != 1:
        raise ctx.error(f"input {tuple(x.shape)} and weight {tuple(w.shape)} must be "
                        "(batch, channels, length) and (channels, 1, kernel)")
    b, c, length = x.shape
    k = w.shape[2]
    past = _optional(inputs, 3)
    if past is not None:
        state = ctx.node(past)
        if tuple(state.shape) != (b, c, k - 1):
            raise ctx.error(f"past_state {tuple(state.shape)}; expected {(b, c, k - 1)}")
    else:
        state = gb.constant(np.zeros((b, c, k - 1), x.dtype.np))
    padded = join.concat([state, x], 2) if k > 1 else x
    y: Node | None = None
    for j in range(k):
        tap = ew.mul(slicing.slice(padded, [j], [j + length], axes=[2]),
                     layout.reshape(slicing.slice(w, [j], [j + 1], axes=[2]), [1, c, 1]))
        y = tap if y is None else ew.add(y, tap)
    assert y is not None
    bias = _optional(inputs, 2)
    if bias is not None:
        y = ew.add(y, layout.reshape(ctx.node(bias), [1, c, 1]))
    if activation != "none":
        y = ew.mul(y, ew.sigmoid(y))
    present = slicing.slice(padded, [length], [length + k - 1], axes=[2])
    return [y, present]
