"""ONNX's Attention (opsets 23 and 24), written with graphc's matmul and softmax, and at the
end RotaryEmbedding, TensorScatter (the key/value cache update) and FlexAttention (domain
ai.onnx.preview, its score/probability subgraphs converted by `control.run_subgraph`).

softmax(Q·Kᵀ·scale [softcapped] + bias) · V, where the additive bias (0 where a key may be
attended, -inf where not) combines, as ONNX's reference does:

- `attn_mask`: boolean (False masks) or additive; shorter than the key sequence, it is
  padded with masked positions;
- `is_causal`: query i sees key j iff j <= i + offset, the offset aligning the query block to
  the end of the keys: the past cache's length, else per batch `nonpad_kv_seqlen - q_len`
  (an external cache), else 0;
- a sliding window (`left_window_size`, `right_window_size`) around the same position;
- `nonpad_kv_seqlen`: keys at or after each batch row's count are padding.

Parts known at import are numpy constants; those that depend on `nonpad_kv_seqlen` at run
time are graph ops. A query row whose bias is -inf everywhere attends to nothing: its
probabilities (and output) are 0. Past key/value caches are concatenated along the
sequence; grouped-query heads repeat each key/value head. The optional fourth output is
`qk_matmul_output` in the requested mode (0/1: scaled and softcapped scores, 2: plus the
bias, 3: the probabilities).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from graphc import builder as gb
from graphc.ir import Node
from graphc.onnx.convert import Context, Value, rule
from graphc.onnx.rules.control import run_subgraph
from graphc.ops import elementwise as ew
from graphc.ops import gather, join, layout, linalg, neural, reduce, slicing

Inputs = list[Value | None]
Bias = Node | np.ndarray


def _heads(x: Node, heads: int) -> Node:
    """(B, S, H·D) -> (B, H, S, D)."""
    b, s, hd = x.shape
    return layout.transpose(layout.reshape(x, [b, s, heads, hd // heads]), [0, 2, 1, 3])


def _repeat_heads(t: Node, rep: int) -> Node:
    """(B, H, S, D) -> (B, H·rep, S, D), each head repeated `rep` times in place."""
    b, h, s, d = t.shape
    wide = layout.broadcast_to(layout.reshape(t, [b, h, 1, s, d]), [b, h, rep, s, d])
    return layout.reshape(wide, [b, h * rep, s, d])


def _scaled_scores(ctx: Context, q: Node, k: Node, v: Node, attrs: dict[str, Any]
                   ) -> tuple[Node, Node, Node]:
    """(Q·Kᵀ·scale, K, V) of (B, H, S, D) heads, K and V repeated for grouped-query
    attention (each K/V head serving hq / hk query heads); scale defaults to 1/sqrt(D)."""
    hq, hk = q.shape[1], k.shape[1]
    if hq != hk:
        if hq % hk:
            raise ctx.error(f"{hq} query heads do not divide into {hk} key/value heads")
        k, v = _repeat_heads(k, hq // hk), _repeat_heads(v, hq // hk)
    scale = attrs.get("scale")
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    return ew.mul(linalg.matmul(q, k, transpose_b=True), scale), k, v


def _additive(allowed: Bias, dtype: Any) -> Bias:
    """A boolean "may attend" mask as an additive bias: 0 where true, -inf where false."""
    if isinstance(allowed, np.ndarray):
        return np.where(allowed, 0.0, -np.inf).astype(dtype)
    zero = gb.constant(np.zeros((), dtype))
    return ew.where(allowed, zero, -np.inf)


def _add(a: Bias | None, b: Bias) -> Bias:
    if a is None:
        return b
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a + b
    return ew.add(a if isinstance(a, Node) else gb.constant(a),
                  b if isinstance(b, Node) else gb.constant(b))


def _mask_bias(ctx: Context, mask: Value, sk: int, dtype: Any) -> Bias:
    """`attn_mask` as an additive bias over all `sk` keys (a shorter mask is padded with
    masked positions)."""
    shape = tuple(mask.shape)
    m = ctx.known(mask)
    bias: Bias
    if m is not None:
        bias = _additive(m, dtype) if m.dtype == np.bool_ else m.astype(dtype)
    else:
        node = ctx.node(mask)
        bias = _additive(node, dtype) if node.dtype.name == "bool" else node
    if shape[-1] > sk:
        raise ctx.error(f"attn_mask covers {shape[-1]} keys; there are {sk}")
    if shape[-1] < sk:
        pad = np.full((*shape[:-1], sk - shape[-1]), -np.inf, dtype)
        if isinstance(bias, np.ndarray):
            bias = np.concatenate([bias, pad], -1)
        else:
            bias = join.concat([bias, gb.constant(pad)], bias.ndim - 1)
    return bias


def _position_bias(ctx: Context, attrs: dict[str, Any], sq: int, sk: int, past_len: int,
                   nonpad: Node | None, dtype: Any) -> Bias | None:
    """The causal and sliding-window bias: diff = (i + offset) - j for query i, key j."""
    causal = bool(int(attrs.get("is_causal", 0)))
    left = int(attrs.get("left_window_size", -1))
    right = int(attrs.get("right_window_size", -1))
    if left < -1 or right < -1:
        raise ctx.error(f"window sizes {left}, {right}: each must be -1 or >= 0")
    if not causal and left < 0 and right < 0:
        return None
    i = np.arange(sq, dtype=np.int64).reshape(sq, 1)
    j = np.arange(sk, dtype=np.int64).reshape(1, sk)
    if nonpad is None:
        diff = i + past_len - j
        allowed = np.ones((sq, sk), np.bool_)
        if causal:
            allowed &= diff >= 0
        if left >= 0:
            allowed &= diff <= left
        if right >= 0:
            allowed &= diff >= -right
        return _additive(allowed, dtype)
    # An external cache: per batch row b, offset = nonpad_kv_seqlen[b] - sq.
    offset = ew.sub(layout.reshape(nonpad, [nonpad.shape[0], 1, 1]), sq)
    d = ew.sub(ew.add(offset, gb.constant(i)), gb.constant(j))  # (B, sq, sk)
    parts = []
    if causal:
        parts.append(ew.greater_equal(d, 0))
    if left >= 0:
        parts.append(ew.less_equal(d, left))
    if right >= 0:
        parts.append(ew.greater_equal(d, -right))
    both = parts[0]
    for p in parts[1:]:
        both = ew.logical_and(both, p)
    return _additive(layout.reshape(both, [nonpad.shape[0], 1, sq, sk]), dtype)


@rule("Attention", 23)
def _attention(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """Y, present_key, present_value and qk_matmul_output, as the module says."""
    q, k, v = (ctx.node(x) for x in inputs[:3])
    mask = inputs[3] if len(inputs) > 3 else None
    past_k = inputs[4] if len(inputs) > 4 else None
    past_v = inputs[5] if len(inputs) > 5 else None
    nonpad_in = inputs[6] if len(inputs) > 6 else None
    if (past_k is None) != (past_v is None):
        raise ctx.error("past_key and past_value must be given together")
    if nonpad_in is not None and past_k is not None:
        raise ctx.error("nonpad_kv_seqlen (an external cache) cannot be combined with "
                        "past_key/past_value")
    three_d = q.ndim == 3
    if three_d:
        qh, kvh = int(attrs.get("q_num_heads", 0)), int(attrs.get("kv_num_heads", 0))
        if not qh or not kvh:
            raise ctx.error("3-D inputs need q_num_heads and kv_num_heads")
        q, k, v = _heads(q, qh), _heads(k, kvh), _heads(v, kvh)
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ctx.error(f"Q, K, V of ranks {q.ndim}, {k.ndim}, {v.ndim}; expected all 3 or 4")
    if past_k is not None and past_v is not None:
        k = join.concat([ctx.node(past_k), k], 2)
        v = join.concat([ctx.node(past_v), v], 2)
    present_k, present_v = k, v
    scores, k, v = _scaled_scores(ctx, q, k, v, attrs)
    softcap = float(attrs.get("softcap", 0.0))
    if softcap > 0.0:  # before the bias, so that masked scores stay -inf
        scores = ew.mul(ew.tanh(ew.div(scores, softcap)), softcap)
    sq, sk = scores.shape[-2], scores.shape[-1]
    dtype = q.dtype.np
    nonpad = None
    if nonpad_in is not None:
        nonpad = ctx.node(nonpad_in)
        nonpad = nonpad if nonpad.dtype.name == "int64" else ew.cast(nonpad, "int64")
    past_len = past_k.shape[2] if past_k is not None else 0
    bias: Bias | None = None
    if mask is not None:
        bias = _mask_bias(ctx, mask, sk, dtype)
    position = _position_bias(ctx, attrs, sq, sk, past_len, nonpad, dtype)
    if position is not None:
        bias = _add(bias, position)
    if nonpad is not None:
        padding = ew.less(gb.constant(np.arange(sk, dtype=np.int64)),
                          layout.reshape(nonpad, [nonpad.shape[0], 1]))
        bias = _add(bias, _additive(layout.reshape(padding, [nonpad.shape[0], 1, 1, sk]),
                                    dtype))
    biased = scores if bias is None else ew.add(scores, ctx.node(bias))
    probs = neural.softmax(biased, -1)
    if bias is not None:
        # A row whose every key is masked attends to nothing (not NaN).
        if isinstance(bias, np.ndarray):
            dead: Bias = np.isneginf(bias.max(-1, keepdims=True))
        else:
            dead = ew.equal(reduce.max(bias, -1, keepdims=True), -np.inf)
        probs = ew.where(ctx.node(dead), 0.0, probs)
    y = linalg.matmul(probs, v)
    if three_d:
        b, h, s, d = y.shape
        y = layout.reshape(layout.transpose(y, [0, 2, 1, 3]), [b, s, h * d])
    mode = int(attrs.get("qk_matmul_output_mode", 0))
    if mode not in (0, 1, 2, 3):
        raise ctx.error(f"qk_matmul_output_mode {mode}; ONNX defines 0 to 3")
    qk = {0: scores, 1: scores, 2: biased, 3: probs}[mode]
    return [y, present_k, present_v, qk][:max(ctx.num_outputs, 1)]


# --- rotary position embedding ---------------------------------------------------------------

def _last(x: Node, start: int, stop: int, step: int = 1) -> Node:
    """x[..., start:stop:step]."""
    return slicing.slice(x, [start], [stop], [step], axes=[x.ndim - 1])


@rule("RotaryEmbedding", 23)
def _rotary(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """Rotates the first `rotary_embedding_dim` features of each head (all by default) by
    the cached angles of its position: pairs (x1, x2) -> (x1·cos - x2·sin, x1·sin + x2·cos),
    the pairs being the two halves or, `interleaved`, even and odd features. Input
    (B, H, S, D), or (B, S, H·D) with `num_heads`; the caches are (max_position, rd/2)
    indexed by `position_ids` (B, S), or (B, S, rd/2) without them."""
    x, cos, sin = ctx.node(inputs[0]), ctx.node(inputs[1]), ctx.node(inputs[2])
    positions = inputs[3] if len(inputs) > 3 else None
    if x.ndim == 4:
        b, h, s, d = x.shape
        t = layout.transpose(x, [0, 2, 1, 3])
    elif x.ndim == 3:
        heads = int(attrs.get("num_heads", 0))
        b, s, hd = x.shape
        if heads <= 0 or hd % heads:
            raise ctx.error(f"3-D input of width {hd} needs num_heads dividing it")
        h, d = heads, hd // heads
        t = layout.reshape(x, [b, s, h, d])
    else:
        raise ctx.error(f"input of rank {x.ndim}; expected 3 or 4")
    rd = int(attrs.get("rotary_embedding_dim", 0)) or d
    if rd % 2 or rd > d:
        raise ctx.error(f"rotary_embedding_dim {rd} must be even and at most {d}")
    if positions is not None:
        ids = ctx.node(positions)
        cos, sin = gather.take(cos, ids, 0), gather.take(sin, ids, 0)
    if tuple(cos.shape) != (b, s, rd // 2) or tuple(sin.shape) != (b, s, rd // 2):
        raise ctx.error(f"cos/sin caches give {tuple(cos.shape)}; expected {(b, s, rd // 2)}")
    cos, sin = layout.reshape(cos, [b, s, 1, rd // 2]), layout.reshape(sin, [b, s, 1, rd // 2])
    interleaved = bool(int(attrs.get("interleaved", 0)))
    if interleaved:
        x1, x2 = _last(t, 0, rd, 2), _last(t, 1, rd, 2)
    else:
        x1, x2 = _last(t, 0, rd // 2), _last(t, rd // 2, rd)
    real = ew.sub(ew.mul(cos, x1), ew.mul(sin, x2))
    imag = ew.add(ew.mul(sin, x1), ew.mul(cos, x2))
    if interleaved:
        rotated = layout.reshape(join.stack([real, imag], 4), [b, s, h, rd])
    else:
        rotated = join.concat([real, imag], 3)
    out = rotated if rd == d else join.concat([rotated, _last(t, rd, d)], 3)
    if x.ndim == 3:
        return [layout.reshape(out, [b, s, h * d])]
    return [layout.transpose(out, [0, 2, 1, 3])]


# --- key/value cache update ------------------------------------------------------------------

@rule("TensorScatter", 24)
def _tensor_scatter(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """The cache (B, ..., M at `axis`, ...) with the update's S positions written at each
    batch row's write index on (mode circular: modulo M): position m of row b takes update
    position m - w[b] when that lies in 0..S-1, a gather along the axis."""
    past, update = ctx.node(inputs[0]), ctx.node(inputs[1])
    axis = int(attrs.get("axis", -2)) % max(past.ndim, 1)
    mode = str(attrs.get("mode", "linear"))
    if mode not in ("linear", "circular") or axis == 0 or update.ndim != past.ndim:
        raise ctx.error(f"mode '{mode}', axis {attrs.get('axis', -2)}, cache "
                        f"{tuple(past.shape)}, update {tuple(update.shape)}: expected mode "
                        "linear or circular, a non-batch axis and equal ranks")
    m, s = past.shape[axis], update.shape[axis]
    if s > m or any(p != u for d, (p, u) in enumerate(zip(past.shape, update.shape))
                    if d != axis):
        raise ctx.error(f"update {tuple(update.shape)} does not fit cache {tuple(past.shape)}")
    b = past.shape[0]
    given = inputs[2] if len(inputs) > 2 else None
    write = ctx.node(given) if given is not None else gb.constant(np.zeros(b, np.int64))
    write = ew.cast(write, "int64") if write.dtype.name != "int64" else write
    at = [1] * past.ndim
    at[axis] = m
    src = ew.sub(gb.constant(np.arange(m, dtype=np.int64).reshape(at)),
                 layout.reshape(write, [b] + [1] * (past.ndim - 1)))  # (B, .., M, ..)
    if mode == "circular":
        src = ew.mod(src, m)
    valid = ew.logical_and(ew.greater_equal(src, 0), ew.less(src, s))
    index = ew.where(valid, src, ew.mul(src, 0))
    picked = gather.take_along_axis(update, index, axis)
    return [ew.where(valid, picked, past)]


# --- FlexAttention (domain ai.onnx.preview) ----------------------------------------------------

@rule("ai.onnx.preview.FlexAttention", 1)
def _flex_attention(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """softmax(score_mod(Q·Kᵀ·scale))·V, the probabilities passed through prob_mod, for
    (B, H, L, E) inputs, key/value heads repeated for grouped queries; score_mod and
    prob_mod are subgraphs of one tensor, converted with graphc's rules."""
    q, k, v = (ctx.node(x) for x in inputs[:3])
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ctx.error(f"Q, K, V of ranks {q.ndim}, {k.ndim}, {v.ndim}; expected 4")
    scores, k, v = _scaled_scores(ctx, q, k, v, attrs)
    if "score_mod" in attrs:
        scores = ctx.node(run_subgraph(ctx, attrs["score_mod"], [scores])[0])
    probs = neural.softmax(scores, -1)
    if "prob_mod" in attrs:
        probs = ctx.node(run_subgraph(ctx, attrs["prob_mod"], [probs])[0])
    return [linalg.matmul(probs, v)]
