"""ONNX ops graphc writes as compositions of its own: losses (NegativeLogLikelihoodLoss,
SoftmaxCrossEntropyLoss), normalizations (RMS, Lp, mean-variance, group), cumulative sums
and products, hyperbolic and inverse trigonometric functions, depth/space shuffles,
EyeLike and GatherND (Attention is in `attention`, quantization in `narrow`).
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
from graphc.ops import gather, join, layout, linalg, neural, norm, reduce, slicing

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
    if scale.type == norm.param_type(x.type, axes):
        return [norm.rms_norm(x, scale, axis=axes, eps=eps)]  # the fused kernel
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


@rule("GroupNormalization", 18)
def _group_norm(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """Normalized over each group of C/G channels (and all spatial positions), then scaled
    and shifted per channel (opset 21; opset 18's per-group scale and bias are repeated
    over their group's channels)."""
    x, scale, bias = (ctx.node(v) for v in inputs[:3])
    groups = int(attrs.get("num_groups", 0))
    n, c = x.shape[0], x.shape[1]
    if groups <= 0 or c % groups or x.ndim < 2:
        raise ctx.error(f"num_groups {groups} must divide the {c} channels")
    eps = float(attrs.get("epsilon", 1e-5))
    g = layout.reshape(x, [n, groups, int(np.prod(x.shape[1:], dtype=np.int64)) // groups])
    mean = reduce.mean(g, 2, keepdims=True)
    centered = ew.sub(g, mean)
    var = reduce.mean(ew.mul(centered, centered), 2, keepdims=True)
    y = layout.reshape(ew.div(centered, ew.sqrt(ew.add(var, eps))), list(x.shape))
    per = [1, c] + [1] * (x.ndim - 2)

    def channels(p: Node) -> Node:
        if p.shape[0] == groups and groups != c:
            p = layout.reshape(layout.broadcast_to(layout.reshape(p, [groups, 1]),
                                                   [groups, c // groups]), [c])
        return layout.reshape(p, per)
    return [ew.add(ew.mul(y, channels(scale)), channels(bias))]


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


# Cephes' atan (double): a rational approximation on |t| <= 0.66 after reducing |x| by
# atan(x) = pi/2 + atan(-1/x) (x > tan(3pi/8)) or pi/4 + atan((x-1)/(x+1)) (in between).
_ATAN_P = (-8.750608600031904122785e-1, -1.615753718733365076637e1,
           -7.500855792314704667340e1, -1.228866684490136173410e2,
           -6.485021904942025371773e1)
_ATAN_Q = (2.485846490142306297962e1, 1.650270098316988542046e2,
           4.328810604912902668951e2, 4.853903996359136964868e2,
           1.945506571482613964425e2)
_TAN_3PI_8 = 2.41421356237309504880
_PI_2_LOW = 6.123233995736765886130e-17  # pi/2 - float64(pi/2)


def _atan(x: Node) -> Node:
    """arctan(x), odd, with NaN in giving NaN and +-inf giving +-pi/2."""
    ax = ew.abs(x)
    big = ew.greater(ax, _TAN_3PI_8)
    mid = ew.logical_and(ew.greater(ax, 0.66), ew.logical_not(big))
    t = ew.where(big, ew.neg(ew.reciprocal(ew.where(big, ax, 1.0))),
                 ew.where(mid, ew.div(ew.sub(ax, 1.0), ew.add(ax, 1.0)), ax))
    z = ew.mul(t, t)
    p = ew.add(ew.mul(z, _ATAN_P[0]), _ATAN_P[1])
    for c in _ATAN_P[2:]:
        p = ew.add(ew.mul(p, z), c)
    q = ew.add(z, _ATAN_Q[0])
    for c in _ATAN_Q[1:]:
        q = ew.add(ew.mul(q, z), c)
    r = ew.add(ew.mul(t, ew.div(ew.mul(z, p), q)), t)
    base = ew.where(big, math.pi / 2 + _PI_2_LOW, ew.where(mid, math.pi / 4 + _PI_2_LOW / 2,
                                                         ew.mul(ax, 0.0)))
    y = ew.add(base, r)
    return ew.where(ew.less(x, 0.0), ew.neg(y), y)


def _asin(x: Node) -> Node:
    """arcsin(x) = atan(x / sqrt((1 - x)(1 + x))): exact at +-1 (x / 0 = +-inf), NaN outside."""
    return _atan(ew.div(x, ew.sqrt(ew.mul(ew.sub(1.0, x), ew.add(x, 1.0)))))


def _acos(x: Node) -> Node:
    """arccos(x) = 2 atan(sqrt((1 - x) / (1 + x))), accurate near 1 where acos -> 0."""
    return ew.mul(_atan(ew.sqrt(ew.div(ew.sub(1.0, x), ew.add(x, 1.0)))), 2.0)


_unary("Atan", 7, _atan)
_unary("Asin", 7, _asin)
_unary("Acos", 7, _acos)


# --- layout shuffles -------------------------------------------------------------------------

@rule("SpaceToDepth", 1)
def _space_to_depth(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """Blocks of bs x bs pixels become channels: DCR puts the block offset first (ONNX's
    default), CRD the channel first."""
    x = ctx.node(inputs[0])
    bs = int(attrs.get("blocksize", 0))
    mode = str(attrs.get("mode", "DCR"))
    if mode not in ("DCR", "CRD"):
        raise ctx.error(f"mode '{mode}' is not DCR or CRD")
    n, c, h, w = x.shape
    if bs <= 0 or h % bs or w % bs:
        raise ctx.error(f"blocksize {bs} does not divide {h}x{w}")
    t = layout.reshape(x, [n, c, h // bs, bs, w // bs, bs])
    t = layout.transpose(t, [0, 3, 5, 1, 2, 4] if mode == "DCR" else [0, 1, 3, 5, 2, 4])
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
    """The slices of data that the last axis of indices addresses, after `batch_dims`
    leading axes that data and indices share (each batch row indexes its own data)."""
    x, idx = ctx.node(inputs[0]), inputs[1]
    b = int(attrs.get("batch_dims", 0))
    ind = ctx.node(idx)
    k = ind.shape[-1]
    if b < 0 or b >= min(x.ndim, ind.ndim) or tuple(x.shape[:b]) != tuple(ind.shape[:b]):
        raise ctx.error(f"batch_dims {b} for data {tuple(x.shape)} and indices "
                        f"{tuple(ind.shape)}: the leading dims must match")
    if b + k > x.ndim:
        raise ctx.error(f"index tuples of length {k} after {b} batch dims for rank {x.ndim}")
    # Flatten the batch axes and the k indexed axes; gather by the linearized index.
    batch = int(np.prod(x.shape[:b], dtype=np.int64))
    indexed = x.shape[b:b + k]
    strides = [int(np.prod(indexed[i + 1:], dtype=np.int64)) for i in range(k)]
    span = int(np.prod(indexed, dtype=np.int64))
    flat = layout.reshape(x, [batch * span, *x.shape[b + k:]])
    ind = ew.cast(ind, "int64") if ind.dtype.name != "int64" else ind
    dims = gb.constant(np.array(indexed, np.int64))
    ind = ew.where(ew.less(ind, 0), ew.add(ind, dims), ind)
    lin = reduce.sum(ew.mul(ind, gb.constant(np.array(strides, np.int64))), -1)
    if b:
        rows = np.arange(batch, dtype=np.int64).reshape(*x.shape[:b],
                                                        *([1] * (ind.ndim - 1 - b))) * span
        lin = ew.add(lin, gb.constant(rows))
    return [gather.take(flat, lin, 0)]
