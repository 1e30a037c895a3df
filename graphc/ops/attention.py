"""Scaled dot-product attention: `attention`, and the two ops its gradient is built from.

    attention(q, k, v[, mask])        softmax(q @ kᵀ · scale + mask [causal]) @ v
    attention_lse(q, k, v[, mask])    the log-sum-exp of each score row (the saved statistic)
    attention_grad(q, k, v, o, do, lse[, mask])
                                      dq, dk, dv flattened and concatenated (one buffer: a
                                      node has one output, and the three come from one pass)
    attention_with_lse(q, k, v[, mask])
                                      the result and each row's log-sum-exp side by side,
                                      (..., Tq, Dv + 1): what a training step's forward
                                      computes (the `attention` pass swaps it in for an
                                      attention and its attention_lse, and gives
                                      attention_grad that buffer with ``packed=True``)

Shapes: q is (..., H, Tq, Dk), k is (..., Hkv, Tk, Dk), v is (..., Hkv, Tk, Dv) with the
same leading dims; H is a multiple of Hkv (grouped-query attention: query head h reads
key/value head h // (H // Hkv)). The result is (..., H, Tq, Dv). `mask` is additive, of q's
float dtype, and broadcasts against the scores (..., H, Tq, Tk); the builder turns a boolean
mask (True: attend, as in PyTorch) into 0 / -inf. `causal` keeps key j for query i when
j <= i (PyTorch's top-left alignment). A row whose every score is -inf (fully masked)
gives 0, and its gradient is 0 (PyTorch gives NaN there).

Each op is OPAQUE: codegen gives it one kernel that tiles q against blocks of k/v with an
online softmax, so the Tq x Tk scores are never stored
(graphc.codegen.opaque.attention_forward).
The gradient recomputes the probabilities from the saved log-sum-exp (FlashAttention-2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from graphc.builder import Operand, apply
from graphc.errors import AttrError, DTypeError, GraphcError, ShapeError
from graphc.ir import Attrs, DType, Node, TensorType
from graphc.ir.attrs import AttrSpec, Kind
from graphc.ir.opdef import Fusion, OpDef
from graphc.ops import elementwise as _ew
from graphc.ops import reduce as _reduce
from graphc.ops.common import FLOATS, as_node, check_dtype, fail
from graphc.ops.layout import broadcast_to, expand_dims, reshape
from graphc.ops.linalg import matmul
from graphc.ops.slicing import slice as _slice

__all__ = ["attention"]

OPS: list[OpDef] = []

ATTRS = (AttrSpec("causal", Kind.BOOL, default=False), AttrSpec("scale", Kind.FLOAT))


# --- type rules -----------------------------------------------------------------------------

def _check_qkv(q: TensorType, k: TensorType, v: TensorType,
               mask: TensorType | None) -> None:
    """Raise a GraphcError naming the operand unless q, k, v (and mask) fit together."""
    check_dtype(q, FLOATS, "q")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise DTypeError(f"{name} must have q's dtype {q.dtype.value}, got {t}")
    if q.ndim < 3:
        raise ShapeError(f"q must be (..., heads, Tq, Dk) with rank >= 3, got {q}")
    for name, t in (("k", k), ("v", v)):
        if t.ndim != q.ndim:
            raise ShapeError(f"{name} must have q's rank {q.ndim}, got {t} (q {q})")
    if q.shape[:-3] != k.shape[:-3] or k.shape[:-3] != v.shape[:-3]:
        raise ShapeError(f"q, k, v must share their leading dims, got q {q}, k {k}, v {v}")
    heads, kv_heads = q.shape[-3], k.shape[-3]
    if v.shape[-3] != kv_heads or kv_heads == 0 or heads % kv_heads:
        raise ShapeError(f"k and v must have the same number of heads, dividing q's {heads}; "
                         f"got k {k}, v {v}")
    if k.shape[-1] != q.shape[-1]:
        raise ShapeError(f"k's last dim must equal q's ({q.shape[-1]}), got k {k}")
    if v.shape[-2] != k.shape[-2]:
        raise ShapeError(f"v must have k's sequence length {k.shape[-2]}, got v {v}")
    if mask is not None:
        if mask.dtype != q.dtype:
            raise DTypeError(f"mask must be additive, of q's dtype {q.dtype.value}, got {mask}")
        scores = (*q.shape[:-1], k.shape[-2])
        if mask.ndim > len(scores) or any(
                m not in (1, s) for m, s in zip(mask.shape[::-1], scores[::-1])):
            raise ShapeError(f"mask {mask} does not broadcast against the scores "
                             f"{list(scores)} (q {q}, k {k})")


def _split(types: Sequence[TensorType], fixed: int) -> tuple[Sequence[TensorType],
                                                             TensorType | None]:
    if len(types) not in (fixed, fixed + 1):
        raise GraphcError(f"expected {fixed} operands (and an optional mask), "
                          f"got {len(types)}")
    return types[:fixed], (types[fixed] if len(types) > fixed else None)


def _attention_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    (q, k, v), mask = _split(types, 3)
    _check_qkv(q, k, v, mask)
    return TensorType((*q.shape[:-1], v.shape[-1]), q.dtype)


def _lse_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    (q, k, v), mask = _split(types, 3)
    _check_qkv(q, k, v, mask)
    return TensorType(q.shape[:-1], q.dtype)


def _with_lse_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    (q, k, v), mask = _split(types, 3)
    _check_qkv(q, k, v, mask)
    return TensorType((*q.shape[:-1], v.shape[-1] + 1), q.dtype)


def grad_size(q: TensorType, k: TensorType, v: TensorType) -> int:
    """Elements of attention_grad's packed result: dq, dk, dv back to back."""
    return q.size + k.size + v.size


def _grad_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    packed = attrs["packed"]
    if packed:
        (q, k, v, o, do), mask = _split(types, 5)
    else:
        (q, k, v, o, do, lse), mask = _split(types, 6)
    _check_qkv(q, k, v, mask)
    want_o = TensorType((*q.shape[:-1], v.shape[-1]), q.dtype)
    if do != want_o:
        raise ShapeError(f"do must be the attention result's type {want_o}, got {do}")
    if packed:
        want = TensorType((*q.shape[:-1], v.shape[-1] + 1), q.dtype)
        if o != want:
            raise ShapeError(f"o must be attention_with_lse's type {want}, got {o}")
    else:
        if o != want_o:
            raise ShapeError(f"o must be the attention result's type {want_o}, got {o}")
        if lse != TensorType(q.shape[:-1], q.dtype):
            raise ShapeError(f"lse must be {TensorType(q.shape[:-1], q.dtype)}, got {lse}")
    return TensorType((grad_size(q, k, v),), q.dtype)


# --- references (numpy, float64 inside) -----------------------------------------------------

def _group(x: np.ndarray, heads: int) -> np.ndarray:
    """k or v with each key/value head repeated for the query heads that read it."""
    return np.repeat(x, heads // x.shape[-3], axis=-3)


def _scores(q: np.ndarray, k: np.ndarray, mask: np.ndarray | None, attrs: Attrs) -> np.ndarray:
    s = q.astype(np.float64) @ np.swapaxes(_group(k, q.shape[-3]), -1, -2) * attrs["scale"]
    if mask is not None:
        s = s + mask
    if attrs["causal"]:
        tq, tk = s.shape[-2:]
        s = np.where(np.tril(np.ones((tq, tk), bool)), s, -np.inf)
    return s


def _lse(s: np.ndarray) -> np.ndarray:
    m = np.max(s, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return (m + np.log(np.sum(np.exp(s - m), axis=-1, keepdims=True)))[..., 0]


def _probs(s: np.ndarray, lse: np.ndarray) -> np.ndarray:
    """exp(s - lse) with fully masked rows (lse = -inf) all zero."""
    finite = np.isfinite(lse)[..., None]
    return np.where(finite, np.exp(s - np.where(finite, lse[..., None], 0.0)), 0.0)


def _attention_ref(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    q, k, v, *mask = arrays
    s = _scores(q, k, mask[0] if mask else None, attrs)
    p = _probs(s, _lse(s))
    return (p @ _group(v, q.shape[-3]).astype(np.float64)).astype(q.dtype)


def _with_lse_ref(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    q, k, v, *mask = arrays
    s = _scores(q, k, mask[0] if mask else None, attrs)
    lse = _lse(s)
    o = _probs(s, lse) @ _group(v, q.shape[-3]).astype(np.float64)
    return np.concatenate([o, lse[..., None]], axis=-1).astype(q.dtype)


def _lse_ref(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    q, k, _v, *mask = arrays
    return _lse(_scores(q, k, mask[0] if mask else None, attrs)).astype(q.dtype)


def _ungroup(x: np.ndarray, kv_heads: int) -> np.ndarray:
    """Sum a per-query-head gradient over the query heads sharing each key/value head."""
    shape = x.shape
    group = shape[-3] // kv_heads
    return x.reshape(*shape[:-3], kv_heads, group, *shape[-2:]).sum(axis=-3)


def _grad_ref(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    if attrs["packed"]:
        q, k, v, ol, do, *mask = (a.astype(np.float64) for a in arrays)
        o, lse = ol[..., :-1], ol[..., -1]
    else:
        q, k, v, o, do, lse, *mask = (a.astype(np.float64) for a in arrays)
    heads, kv_heads = q.shape[-3], k.shape[-3]
    s = _scores(q, k, mask[0] if mask else None, attrs)
    p = _probs(s, lse)
    dv = _ungroup(np.swapaxes(p, -1, -2) @ do, kv_heads)
    dp = do @ np.swapaxes(_group(v, heads), -1, -2)
    ds = p * (dp - np.sum(do * o, axis=-1, keepdims=True)) * attrs["scale"]
    dq = ds @ _group(k, heads)
    dk = _ungroup(np.swapaxes(ds, -1, -2) @ q, kv_heads)
    return np.concatenate([dq.ravel(), dk.ravel(), dv.ravel()]).astype(arrays[0].dtype)


# --- gradients ------------------------------------------------------------------------------

def _attention_grad(n: Node, g: Node) -> list[Node | None]:
    q, k, v, *mask = n.inputs
    lse = apply(LSE, n.inputs, n.attrs)
    packed = apply(GRAD, [q, k, v, n, g, lse, *mask], n.attrs)
    grads: list[Node | None] = []
    start = 0
    for x in (q, k, v):
        part = _slice(packed, [start], [start + x.size])
        grads.append(reshape(part, x.shape))
        start += x.size
    if mask:
        grads.append(_mask_grad(n, g, lse))
    return grads


def _grouped(x: Node, heads: int) -> Node:
    """k or v (..., Hkv, T, D) with each head repeated for the query heads reading it."""
    group = heads // x.shape[-3]
    if group == 1:
        return x
    lead, (kv_heads, t, d) = x.shape[:-3], x.shape[-3:]
    spread = broadcast_to(reshape(x, (*lead, kv_heads, 1, t, d)), (*lead, kv_heads, group, t, d))
    return reshape(spread, (*lead, heads, t, d))


def _mask_grad(n: Node, g: Node, lse: Node) -> Node:
    """The gradient of the additive mask: dS = P ⊙ (dP - rowsum(dO ⊙ O)), summed to the
    mask's shape. It needs the Tq x Tk scores, so it is built from plain ops: only a graph
    that differentiates a mask pays for it (a constant mask's gradient is pruned)."""
    q, k, v, mask = n.inputs
    heads = q.shape[-3]
    s = matmul(q, _grouped(k, heads), transpose_b=True) * n.attrs["scale"] + mask
    if n.attrs["causal"]:
        keep = np.tril(np.ones(s.shape[-2:], bool))
        s = _ew.where(keep, s, np.array(-np.inf, q.dtype.np))
    p = _ew.where(_ew.equal(s, -np.inf), np.zeros((), q.dtype.np),
                  _ew.exp(s - expand_dims(lse, -1)))
    dp = matmul(g, _grouped(v, heads), transpose_b=True)
    ds = p * (dp - _reduce.sum(g * n, axis=-1, keepdims=True))
    return _ew.unbroadcast(ds, mask.shape)


def _no_second_order(n: Node, g: Node) -> list[Node | None]:
    raise GraphcError("second derivatives of attention are not supported (differentiate "
                      "a hand-written softmax(q @ kᵀ) @ v instead)", op=n.op, loc=n.loc)


ATTENTION = OpDef("attention", "attention", None, _attention_infer, _attention_ref,
                  Fusion.OPAQUE, _attention_grad, attrs=ATTRS,
                  doc="softmax(q @ kᵀ * scale + mask [causal]) @ v, fused (online softmax)")
LSE = OpDef("attention_lse", "attention", None, _lse_infer, _lse_ref, Fusion.OPAQUE,
            _no_second_order, attrs=ATTRS,
            doc="log-sum-exp of each attention score row (saved for the gradient)")
GRAD = OpDef("attention_grad", "attention", None, _grad_infer, _grad_ref, Fusion.OPAQUE,
             _no_second_order, attrs=(*ATTRS, AttrSpec("packed", Kind.BOOL, default=False)),
             doc="dq, dk, dv of attention, flattened and concatenated (FlashAttention-2)")
WITH_LSE = OpDef("attention_with_lse", "attention", None, _with_lse_infer, _with_lse_ref,
                 Fusion.OPAQUE, _no_second_order, attrs=ATTRS,
                 doc="attention's result and each row's log-sum-exp, (..., Dv + 1)")
OPS.extend([ATTENTION, LSE, GRAD, WITH_LSE])


# --- builder --------------------------------------------------------------------------------

def _mask_node(mask: Operand, q: Node) -> Node:
    """An additive mask of q's dtype: booleans become 0 (attend) and -inf (masked)."""
    m = as_node(mask)
    if m.dtype == DType.bool:
        return _ew.where(m, np.zeros((), q.dtype.np), np.array(-np.inf, q.dtype.np))
    if m.dtype != q.dtype:
        fail("attention", DTypeError(f"mask must be bool or q's dtype {q.dtype.value}, "
                                     f"got {m.type}"))
    return m


def attention(q: Operand, k: Operand, v: Operand, *, mask: Operand | None = None,
              causal: bool = False, scale: float | None = None,
              name: str | None = None) -> Node:
    """Scaled dot-product attention, ``softmax(q @ kᵀ * scale + mask) @ v``, fused.

    q: (..., H, Tq, Dk); k: (..., Hkv, Tk, Dk); v: (..., Hkv, Tk, Dv) with Hkv dividing H
    (grouped-query attention). Returns (..., H, Tq, Dv). `mask` broadcasts against the scores
    (..., H, Tq, Tk): a boolean mask keeps the True positions (as in PyTorch), a float mask is
    added. `causal` lets query i see keys j <= i. `scale` defaults to 1/sqrt(Dk). A fully
    masked row gives zeros. Like PyTorch's ``scaled_dot_product_attention``, but the kernel
    never stores the Tq x Tk scores, and the gradient is O(T) memory.
    """
    qn = as_node(q)
    if not isinstance(causal, bool):
        fail("attention", AttrError(f"causal must be a bool, got {causal!r}"))
    if scale is None:
        scale = 1.0 / math.sqrt(qn.shape[-1]) if qn.ndim and qn.shape[-1] else 1.0
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(
            scale):
        fail("attention", AttrError(f"scale must be a finite number, got {scale!r}"))
    inputs = [qn, k, v]
    if mask is not None:
        inputs.append(_mask_node(mask, qn))
    return apply(ATTENTION, inputs, {"causal": causal, "scale": float(scale)}, name=name)
