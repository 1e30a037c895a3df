"""Op-table rows for attention: the fused op with and without masks, causal, grouped-query
heads, and its two gradient ops (numpy from the textbook: explicit softmax, and the softmax
Jacobian written as P ⊙ (dP - rowsum(dP ⊙ P)) rather than the kernel's rowsum(dO ⊙ O))."""

from __future__ import annotations

import numpy as np

import graphc as gc
from graphc.builder import apply
from graphc.ops import attention as att
from tests.op_table import Arg, OpCase

B, H, T, S, D = 2, 2, 5, 7, 4
PAD = np.array([[True] * 7, [True] * 4 + [False] * 3])  # batch 1 attends to 4 keys only


def _softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _scores(q: np.ndarray, k: np.ndarray, causal: bool = False,
            mask: np.ndarray | None = None) -> np.ndarray:
    k = np.repeat(k, q.shape[-3] // k.shape[-3], axis=-3)
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    if mask is not None:
        s = s + mask
    if causal:
        s = np.where(np.tril(np.ones(s.shape[-2:], bool)), s, -np.inf)
    return s


def _attn(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool = False,
          mask: np.ndarray | None = None) -> np.ndarray:
    v = np.repeat(v, q.shape[-3] // v.shape[-3], axis=-3)
    return _softmax(_scores(q, k, causal, mask)) @ v


def _pad_mask() -> np.ndarray:
    return np.where(PAD, 0.0, -np.inf)[:, None, None, :]


def _grads(q: np.ndarray, k: np.ndarray, v: np.ndarray, do: np.ndarray,
           causal: bool) -> np.ndarray:
    group = q.shape[-3] // k.shape[-3]
    kg, vg = np.repeat(k, group, axis=-3), np.repeat(v, group, axis=-3)
    p = _softmax(_scores(q, k, causal))
    dp = do @ np.swapaxes(vg, -1, -2)
    ds = p * (dp - np.sum(dp * p, axis=-1, keepdims=True)) / np.sqrt(q.shape[-1])

    def fold(x: np.ndarray) -> np.ndarray:
        return x.reshape(*x.shape[:-3], k.shape[-3], group, *x.shape[-2:]).sum(axis=-3)

    dq, dk, dv = ds @ kg, fold(np.swapaxes(ds, -1, -2) @ q), fold(np.swapaxes(p, -1, -2) @ do)
    return np.concatenate([dq.ravel(), dk.ravel(), dv.ravel()])


def _grad_op(q: gc.Node, k: gc.Node, v: gc.Node, do: gc.Node, causal: bool,
             packed: bool = False) -> gc.Node:
    attrs = {"causal": causal, "scale": 1 / np.sqrt(q.shape[-1])}
    if packed:  # the training forward: [O | lse] rows from one kernel
        ol = apply(att.WITH_LSE, [q, k, v], attrs)
        return apply(att.GRAD, [q, k, v, ol, do], {**attrs, "packed": True})
    o = apply(att.ATTENTION, [q, k, v], attrs)
    lse = apply(att.LSE, [q, k, v], attrs)
    return apply(att.GRAD, [q, k, v, o, do, lse], attrs)


def _lse(q: np.ndarray, k: np.ndarray, causal: bool) -> np.ndarray:
    s = _scores(q, k, causal)
    return np.log(np.sum(np.exp(s), axis=-1))


QKV = (Arg((B, H, T, D)), Arg((B, H, S, D)), Arg((B, H, S, 3)))
SELF = (Arg((B, H, T, D)), Arg((B, H, T, D)), Arg((B, H, T, D)))
GQA = (Arg((B, 4, T, D)), Arg((B, 2, S, D)), Arg((B, 2, S, D)))

CASES = [
    OpCase("attention", ("attention",), lambda q, k, v: gc.attention(q, k, v), _attn, QKV),
    OpCase("attention:causal", ("attention",), lambda q, k, v: gc.attention(q, k, v, causal=True),
           lambda q, k, v: _attn(q, k, v, causal=True), SELF),
    OpCase("attention:gqa_causal", ("attention",),
           lambda q, k, v: gc.attention(q, k, v, causal=True),
           lambda q, k, v: _attn(q, k, v, causal=True), GQA),
    OpCase("attention:float_mask", ("attention",),
           lambda q, k, v, m: gc.attention(q, k, v, mask=m),
           lambda q, k, v, m: _attn(q, k, v, mask=m), (*QKV, Arg((1, H, T, S)))),
    OpCase("attention:padding_mask", ("attention",),
           lambda q, k, v: gc.attention(q, k, v, mask=gc.constant(PAD[:, None, None, :])),
           lambda q, k, v: _attn(q, k, v, mask=_pad_mask()), QKV),
    OpCase("attention:scale_3d", ("attention",),
           lambda q, k, v: gc.attention(q, k, v, scale=0.3),
           lambda q, k, v: _softmax(q @ np.swapaxes(k, -1, -2) * 0.3) @ v,
           (Arg((3, T, D)), Arg((3, S, D)), Arg((3, S, 2)))),
    OpCase("attention_lse", ("attention_lse",),
           lambda q, k, v: apply(att.LSE, [q, k, v], {"causal": True, "scale": 0.5}),
           lambda q, k, v: _lse(q * 0.5 * np.sqrt(D), k, True), SELF, grad=False),
    OpCase("attention_with_lse", ("attention_with_lse",),
           lambda q, k, v: apply(att.WITH_LSE, [q, k, v], {"causal": True, "scale": 0.5}),
           lambda q, k, v: np.concatenate(
               [_attn(q * 0.5 * np.sqrt(D), k, v, True),
                _lse(q * 0.5 * np.sqrt(D), k, True)[..., None]], axis=-1), GQA, grad=False),
    OpCase("attention_grad:packed", ("attention_grad", "attention_with_lse"),
           lambda q, k, v, do: _grad_op(q, k, v, do, True, packed=True),
           lambda q, k, v, do: _grads(q, k, v, do, True), (*GQA, Arg((B, 4, T, D))),
           grad=False),
    OpCase("attention_grad", ("attention_grad",),
           lambda q, k, v, do: _grad_op(q, k, v, do, False),
           lambda q, k, v, do: _grads(q, k, v, do, False), (*QKV, Arg((B, H, T, 3))),
           grad=False),
    OpCase("attention_grad:gqa_causal", ("attention_grad",),
           lambda q, k, v, do: _grad_op(q, k, v, do, True),
           lambda q, k, v, do: _grads(q, k, v, do, True), (*GQA, Arg((B, 4, T, D))),
           grad=False),
]
