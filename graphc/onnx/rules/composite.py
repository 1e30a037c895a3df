"""ONNX ops graphc writes as compositions of its own: losses (NegativeLogLikelihoodLoss,
SoftmaxCrossEntropyLoss), normalizations (RMSNormalization, LpNormalization), Attention,
cumulative sums and products, quantization, hyperbolic functions, depth/space shuffles.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from graphc import builder as gb
from graphc.ir import Node
from graphc.onnx.convert import Context, Value, axis_of, dtype_of, rule
from graphc.onnx.model import NUMPY_DTYPES, graphc_dtype
from graphc.ops import elementwise as ew
from graphc.ops import gather, join, layout, linalg, neural, reduce, slicing

Inputs = list[Value | None]


# --- losses ----------------------------------------------------------------------------------

def _nll(ctx: Context, logp: Node, target: Node, weight: Node | None,
         attrs: dict[str, Any]) -> tuple[Node, Node]:
    """(loss, the elementwise losses) of log-probabilities `logp` (N, C, d...) and class
    indices `target` (N, d...), with ONNX's ignore_index, weight and reduction."""
    reduction = str(attrs.get("reduction", "mean"))
    if reduction not in ("none", "sum", "mean"):
        raise ctx.error(f"reduction '{reduction}' is not one of none, sum, mean")
    ignore = attrs.get("ignore_index")
    target = ew.cast(target, "int64") if target.dtype.name != "int64" else target
    valid = None
    if ignore is not None:
        valid = ew.not_equal(target, int(ignore))
        target = ew.where(valid, target, ew.mul(target, 0))
    picked = layout.squeeze(gather.take_along_axis(logp, layout.expand_dims(target, 1), 1), 1)
    loss = ew.neg(picked)
    w = None
    if weight is not None:
        w = gather.take(weight, target, 0)
    if valid is not None:
        mask = ew.cast(valid, logp.dtype)
        w = mask if w is None else ew.mul(w, mask)
    if w is not None:
        loss = ew.mul(loss, w)
    if reduction == "none":
        return loss, loss
    total = reduce.sum(loss)
    if reduction == "sum":
        return total, loss
    if w is None:
        return ew.div(total, float(math.prod(loss.shape))), loss
    return ew.div(total, reduce.sum(w)), loss


@rule("NegativeLogLikelihoodLoss", 12)
def _nll_loss(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    weight = ctx.node(inputs[2]) if len(inputs) > 2 and inputs[2] is not None else None
    loss, _ = _nll(ctx, ctx.node(inputs[0]), ctx.node(inputs[1]), weight, attrs)
    return [loss]


@rule("SoftmaxCrossEntropyLoss", 12)
def _softmax_ce(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    scores = ctx.node(inputs[0])
    logp = neural.log_softmax(scores, 1)
    weight = ctx.node(inputs[2]) if len(inputs) > 2 and inputs[2] is not None else None
    loss, _ = _nll(ctx, logp, ctx.node(inputs[1]), weight, attrs)
    return [loss, logp][:ctx.num_outputs]


# --- normalizations --------------------------------------------------------------------------

@rule("RMSNormalization", 23)
def _rms_norm(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x, scale = ctx.node(inputs[0]), ctx.node(inputs[1])
    axis = axis_of(int(attrs.get("axis", -1)), x.ndim, ctx)
    eps = float(attrs.get("epsilon", 1e-5))
    axes = tuple(range(axis, x.ndim))
    ms = reduce.mean(ew.mul(x, x), axes, keepdims=True)
    return [ew.mul(ew.mul(x, ew.rsqrt(ew.add(ms, eps))), scale)]


@rule("LpNormalization", 1)
def _lp_norm(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x = ctx.node(inputs[0])
    axis = axis_of(int(attrs.get("axis", -1)), x.ndim, ctx)
    p = int(attrs.get("p", 2))
    if p == 1:
        norm = reduce.sum(ew.abs(x), axis, keepdims=True)
    elif p == 2:
        norm = ew.sqrt(reduce.sum(ew.mul(x, x), axis, keepdims=True))
    else:
        raise ctx.error(f"p={p}; ONNX allows 1 or 2")
    zero = ew.equal(norm, 0.0)  # an all-zero slice stays zero (ONNX's reference), not NaN
    return [ew.where(zero, ew.mul(x, 0.0), ew.div(x, ew.where(zero, 1.0, norm)))]


@rule("MeanVarianceNormalization", 9)
def _mvn(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x = ctx.node(inputs[0])
    axes = tuple(axis_of(int(a), x.ndim, ctx) for a in attrs.get("axes", [0, 2, 3]))
    mean = reduce.mean(x, axes, keepdims=True)
    centered = ew.sub(x, mean)
    var = reduce.mean(ew.mul(centered, centered), axes, keepdims=True)
    return [ew.div(centered, ew.add(ew.sqrt(var), 1e-9))]


# --- attention -------------------------------------------------------------------------------

def _heads(x: Node, heads: int) -> Node:
    """(B, S, H·D) -> (B, H, S, D)."""
    b, s, hd = x.shape
    return layout.transpose(layout.reshape(x, [b, s, heads, hd // heads]), [0, 2, 1, 3])


@rule("Attention", 23)
def _attention(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """softmax(Q·Kᵀ·scale + mask) · V, with optional past key/value (concatenated along the
    sequence), grouped-query heads, a causal mask and a softcap."""
    q, k, v = (ctx.node(x) for x in inputs[:3])
    mask = inputs[3] if len(inputs) > 3 else None
    past_k = inputs[4] if len(inputs) > 4 else None
    past_v = inputs[5] if len(inputs) > 5 else None
    if len(inputs) > 6 and inputs[6] is not None:
        raise ctx.error("nonpad_kv_seqlen is not supported")
    if ctx.num_outputs > 3:
        raise ctx.error("the qk_matmul_output output is not supported")
    for window in ("left_window_size", "right_window_size"):
        if int(attrs.get(window, -1)) >= 0:
            raise ctx.error(f"{window} (sliding-window attention) is not supported")
    three_d = q.ndim == 3
    if three_d:
        qh, kvh = int(attrs.get("q_num_heads", 0)), int(attrs.get("kv_num_heads", 0))
        if not qh or not kvh:
            raise ctx.error("3-D inputs need q_num_heads and kv_num_heads")
        q, k, v = _heads(q, qh), _heads(k, kvh), _heads(v, kvh)
    if past_k is not None:
        k = join.concat([ctx.node(past_k), k], 2)
    if past_v is not None:
        v = join.concat([ctx.node(past_v), v], 2)
    present_k, present_v = k, v
    hq, hk = q.shape[1], k.shape[1]
    if hq != hk:  # grouped-query attention: each K/V head serves hq / hk query heads
        if hq % hk:
            raise ctx.error(f"{hq} query heads do not divide into {hk} key/value heads")
        rep = hq // hk

        def repeat(t: Node) -> Node:
            b, h, s, d = t.shape
            wide = layout.broadcast_to(layout.reshape(t, [b, h, 1, s, d]), [b, h, rep, s, d])
            return layout.reshape(wide, [b, h * rep, s, d])
        k, v = repeat(k), repeat(v)
    scale = attrs.get("scale")
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    scores = ew.mul(linalg.matmul(q, k, transpose_b=True), scale)
    sq, sk = scores.shape[-2], scores.shape[-1]
    softcap = float(attrs.get("softcap", 0.0))
    if softcap > 0.0:  # before the masks, so that masked scores stay -inf
        scores = ew.mul(ew.tanh(ew.div(scores, softcap)), softcap)
    if int(attrs.get("is_causal", 0)):
        # Query i sees keys up to past + i (ONNX's reference: the offset is the length of
        # the past key cache, 0 without one).
        past_len = past_k.shape[2] if past_k is not None else 0
        causal = np.tril(np.ones((sq, sk), np.bool_), past_len)
        scores = ew.where(gb.constant(causal), scores, -np.inf)
    if mask is not None:
        m = ctx.node(mask)
        if m.dtype.name == "bool":
            scores = ew.where(m, scores, -np.inf)
        else:
            scores = ew.add(scores, m)
    probs = neural.softmax(scores, -1)
    # Rows whose every key is masked give zeros rather than NaN.
    probs = ew.where(ew.not_equal(probs, probs), ew.mul(scores, 0.0), probs)
    y = linalg.matmul(probs, v)
    if three_d:
        b, h, s, d = y.shape
        y = layout.reshape(layout.transpose(y, [0, 2, 1, 3]), [b, s, h * d])
    return [y, present_k, present_v, scores][:max(ctx.num_outputs, 1)]


# --- cumulative ------------------------------------------------------------------------------

def _cumulative(ctx: Context, inputs: Inputs, attrs: dict[str, Any], op: str) -> Node:
    x = ctx.node(inputs[0])
    axis = axis_of(int(ctx.need_known(inputs[1], "axis").reshape(-1)[0]), x.ndim, ctx)
    exclusive, reverse = int(attrs.get("exclusive", 0)), int(attrs.get("reverse", 0))
    if reverse:
        x = slicing.reverse(x, axis)
    n = x.shape[axis]
    if op == "sum":
        # A prefix sum as a product with a triangular matrix along `axis`.
        tri = np.tril(np.ones((n, n)), -1 if exclusive else 0).astype(
            np.float64 if x.dtype.name in ("float64", "int64") else np.float32)
        moved = layout.transpose(x, [d for d in range(x.ndim) if d != axis] + [axis])
        work = moved if x.dtype.is_float else ew.cast(moved, tri.dtype.name)
        out = linalg.matmul(work, gb.constant(tri.T.copy()))
        if not x.dtype.is_float:
            out = ew.cast(ew.round(out), x.dtype)
        perm = list(range(x.ndim - 1))
        perm.insert(axis, x.ndim - 1)
        y = layout.transpose(out, perm)
    else:
        parts = []
        acc: Node | None = None
        for i in range(n):
            starts: list[int | None] = [None] * x.ndim
            stops: list[int | None] = [None] * x.ndim
            starts[axis], stops[axis] = i, i + 1
            piece = slicing.slice(x, starts, stops)
            if exclusive:
                parts.append(ew.add(ew.mul(piece, 0), 1) if acc is None else acc)
                acc = piece if acc is None else ew.mul(acc, piece)
            else:
                acc = piece if acc is None else ew.mul(acc, piece)
                parts.append(acc)
        y = join.concat(parts, axis) if len(parts) > 1 else parts[0]
    return slicing.reverse(y, axis) if reverse else y


@rule("CumSum", 11)
def _cumsum(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    return [_cumulative(ctx, inputs, attrs, "sum")]


@rule("CumProd", 26)
def _cumprod(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    return [_cumulative(ctx, inputs, attrs, "prod")]


# --- quantization ----------------------------------------------------------------------------

_QRANGE = {2: (0, 255), 3: (-128, 127), 4: (0, 65535), 5: (-32768, 32767)}


def _per_axis(ctx: Context, x: Node, p: Node, axis: int) -> Node:
    """A per-axis parameter (1-D of size x.shape[axis]) shaped to broadcast against x."""
    if p.ndim != 1 or p.shape[0] == 1:
        return p
    shape = [1] * x.ndim
    shape[axis_of(axis, x.ndim, ctx)] = p.shape[0]
    return layout.reshape(p, shape)


@rule("DequantizeLinear", 10)
def _dequantize(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x = ctx.node(inputs[0])
    scale = ctx.node(inputs[1])
    if int(attrs.get("block_size", 0)):
        raise ctx.error("blocked quantization is not supported")
    axis = int(attrs.get("axis", 1))
    xf = ew.cast(x, scale.dtype)
    if len(inputs) > 2 and inputs[2] is not None:
        xf = ew.sub(xf, ew.cast(_per_axis(ctx, x, ctx.node(inputs[2]), axis), scale.dtype))
    return [ew.mul(xf, _per_axis(ctx, x, scale, axis))]


@rule("QuantizeLinear", 10)
def _quantize(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x, scale = ctx.node(inputs[0]), ctx.node(inputs[1])
    if int(attrs.get("block_size", 0)) or int(attrs.get("saturate", 1)) != 1:
        raise ctx.error("blocked or non-saturating quantization is not supported")
    axis = int(attrs.get("axis", 1))
    zp = inputs[2] if len(inputs) > 2 else None
    # The output type: the zero point's declared type, else output_dtype, else uint8.
    zp_type = ctx.input_types[2] if zp is not None and len(ctx.input_types) > 2 else None
    out_type = zp_type or int(attrs.get("output_dtype", 0)) or 2
    if out_type not in _QRANGE:
        raise ctx.error(f"output element type {out_type} is not supported")
    lo, hi = _QRANGE[out_type]
    q = ew.round(ew.div(x, _per_axis(ctx, x, scale, axis)))
    if zp is not None:
        q = ew.add(q, ew.cast(_per_axis(ctx, x, ctx.node(zp), axis), x.dtype))
    return [ew.cast(ew.clip(q, float(lo), float(hi)), "int32")]


# --- hyperbolic and inverse functions ----------------------------------------------------------

def _unary(op: str, since: int, fn: Any) -> None:
    def convert(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
        return [fn(ctx.node(inputs[0]))]
    rule(op, since)(convert)


_unary("Sinh", 9, lambda x: ew.mul(ew.sub(ew.exp(x), ew.exp(ew.neg(x))), 0.5))
_unary("Cosh", 9, lambda x: ew.mul(ew.add(ew.exp(x), ew.exp(ew.neg(x))), 0.5))
_unary("Asinh", 9, lambda x: ew.log(ew.add(x, ew.sqrt(ew.add(ew.mul(x, x), 1.0)))))
_unary("Acosh", 9, lambda x: ew.log(ew.add(x, ew.sqrt(ew.sub(ew.mul(x, x), 1.0)))))
_unary("Atanh", 9, lambda x: ew.mul(ew.log(ew.div(ew.add(x, 1.0), ew.sub(1.0, x))), 0.5))


# --- layout shuffles -------------------------------------------------------------------------

@rule("SpaceToDepth", 1)
def _space_to_depth(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x = ctx.node(inputs[0])
    bs = int(attrs.get("blocksize", 0))
    if str(attrs.get("mode", "DCR")) != "DCR":
        raise ctx.error(f"mode '{attrs.get('mode')}' is not supported (DCR)")
    n, c, h, w = x.shape
    if bs <= 0 or h % bs or w % bs:
        raise ctx.error(f"blocksize {bs} does not divide {h}x{w}")
    t = layout.reshape(x, [n, c, h // bs, bs, w // bs, bs])
    t = layout.transpose(t, [0, 3, 5, 1, 2, 4])
    return [layout.reshape(t, [n, c * bs * bs, h // bs, w // bs])]


@rule("DepthToSpace", 1)
def _depth_to_space(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x = ctx.node(inputs[0])
    bs = int(attrs.get("blocksize", 0))
    n, c, h, w = x.shape
    if bs <= 0 or c % (bs * bs):
        raise ctx.error(f"blocksize {bs} does not divide {c} channels")
    if str(attrs.get("mode", "DCR")) == "DCR":
        t = layout.reshape(x, [n, bs, bs, c // (bs * bs), h, w])
        t = layout.transpose(t, [0, 3, 4, 1, 5, 2])
    else:
        t = layout.reshape(x, [n, c // (bs * bs), bs, bs, h, w])
        t = layout.transpose(t, [0, 1, 4, 2, 5, 3])
    return [layout.reshape(t, [n, c // (bs * bs), h * bs, w * bs])]


@rule("EyeLike", 9)
def _eye_like(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x = inputs[0]
    if x is None or len(x.shape) != 2:
        raise ctx.error("input must be 2-D")
    # The requested type as graphc holds it (uint8 in int32, ...), else x's.
    elem = int(attrs.get("dtype", 0))
    dtype = NUMPY_DTYPES[graphc_dtype(elem, ctx.node_name) if elem else dtype_of(x)]
    return [np.eye(x.shape[0], x.shape[1], int(attrs.get("k", 0)), dtype=dtype)]


@rule("GatherND", 11)
def _gather_nd(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x, idx = ctx.node(inputs[0]), inputs[1]
    if int(attrs.get("batch_dims", 0)):
        raise ctx.error("batch_dims other than 0 is not supported")
    ind = ctx.node(idx)
    k = ind.shape[-1]
    if k > x.ndim:
        raise ctx.error(f"index tuples of length {k} for rank {x.ndim}")
    # Flatten the first k axes and gather by the linearized index.
    strides = [int(np.prod(x.shape[i + 1:k], dtype=np.int64)) for i in range(k)]
    lead = int(np.prod(x.shape[:k], dtype=np.int64))
    flat = layout.reshape(x, [lead, *x.shape[k:]])
    ind = ew.cast(ind, "int64") if ind.dtype.name != "int64" else ind
    dims = gb.constant(np.array(x.shape[:k], np.int64))
    ind = ew.where(ew.less(ind, 0), ew.add(ind, dims), ind)
    lin = reduce.sum(ew.mul(ind, gb.constant(np.array(strides, np.int64))), -1)
    return [gather.take(flat, lin, 0)]
