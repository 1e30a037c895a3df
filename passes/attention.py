"""attention: hand-written scaled dot-product attention becomes the fused `attention` op.

    softmax(q @ kᵀ · s + mask) @ v          ->  attention(q, k, v, mask, scale=s)
    softmax(where(keep, q @ kᵀ · s, -inf)) @ v  ->  attention(..., mask=where(keep, 0, -inf))

The scale may be a multiplication by a scalar constant on either side or a division by one
(or absent: s = 1), or be applied to q and kᵀ before the product (as PyTorch's ONNX export
writes it); the mask an addition on either side, or a `where` against -inf (PyTorch's
``masked_fill``) in either orientation; a mask that is the causal pattern (0 on and below
the diagonal, -inf above: a constant, or computed from iotas as `gc.tril` does) becomes
``causal=True``, so the kernel skips the hidden key blocks. The softmax is over the last
axis, the matmuls carry no broadcasting (q, k, v share their batch dims) and k is read transposed
(``q @ k.T`` after simplify's `matmul_transpose`, or a transpose of its last two axes).

The rewrite is made only when every intermediate (scores, scaled, masked, probabilities) has
no user but the next step: a graph that differentiates the hand-written form keeps it (its
gradient reads the probabilities), so no work is ever duplicated. ONNX models exported
from PyTorch's and Keras's attention layers match as they are imported.

Exact in real arithmetic; the fused kernel sums in another order (online softmax), so
results differ by rounding, as from any GEMM blocking.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from graphc.ir import Graph, Node, Signature
from graphc.ops import registry

from .rewrite import PassContext, PassDef, Pending, Rebuilder, live_nodes

__all__ = ["attention", "match"]


@dataclass(frozen=True)
class Match:
    q: Node
    k: Node
    v: Node
    scale: float
    mask: Node | None  # additive
    keep: Node | None  # boolean (becomes the additive mask)
    keep_false: bool  # keep's False entries attend (a masked_fill mask), not its True ones
    causal: bool


def _scalar(rb: Rebuilder, node: Node) -> float | None:
    while node.op in ("broadcast_to", "reshape"):
        node = node.inputs[0]
    value = rb.value(node)
    if value is None or value.size != 1 or value.dtype.kind != "f":
        return None
    return float(value.reshape(()))


def _scaled(rb: Rebuilder, x: Node) -> tuple[Node, float]:
    """(y, s) with x = y · s for a scalar constant s (s = 1 when x is no such product)."""
    if x.op == "mul":
        a, b = x.inputs
        for y, c in ((a, b), (b, a)):
            s = _scalar(rb, c)
            if s is not None and y.type == x.type:
                return y, s
    return x, 1.0


def _swap_last_two(ndim: int) -> tuple[int, ...]:
    return (*range(ndim - 2), ndim - 1, ndim - 2)


def _is_neg_inf(rb: Rebuilder, node: Node) -> bool:
    while node.op in ("broadcast_to", "reshape"):
        node = node.inputs[0]
    value = rb.value(node)
    return value is not None and value.size > 0 and bool(np.all(value == -np.inf))


def _causal(value: np.ndarray | None, tq: int, tk: int, keep_true: bool) -> bool:
    """Whether a constant mask (bool keep, or additive 0 / -inf) is exactly the causal one,
    the same for every leading index."""
    if value is None or value.ndim < 2 or value.shape[-2:] != (tq, tk):
        return False
    want = np.tril(np.ones((tq, tk), bool))
    kept = value if keep_true else (value == 0)
    if not keep_true and not np.all((value == 0) | (value == -np.inf)):
        return False
    return bool(np.all(kept.reshape(-1, tq, tk) == want))


# Masks up to this many elements that are computed from iotas and constants (not folded:
# too big) are evaluated at compile time to recognize the causal pattern.
EVALUATE_MAX = 1 << 22


def _static_value(rb: Rebuilder, node: Node) -> np.ndarray | None:
    """The value of `node` if it depends on constants and iotas only (a computed mask), by
    the ops' references; None otherwise or when it is too big to evaluate."""
    value = rb.value(node)
    if value is not None or node.size > EVALUATE_MAX:
        return value
    memo: dict[Node, np.ndarray] = {}

    def run(n: Node) -> np.ndarray | None:
        if n in memo:
            return memo[n]
        if n.op == "constant":
            return rb.value(n)
        if n.op in ("placeholder", "variable") or registry.get(n.op).random:
            return None
        args = [run(i) for i in n.inputs]
        if any(a is None for a in args):
            return None
        memo[n] = registry.get(n.op).reference(args, n.attrs)
        return memo[n]

    return run(node)


def match(p: Pending, rb: Rebuilder, uses: Counter[str]) -> Match | None:
    """The attention that matmul `p` computes by hand, or None (see the module doc)."""
    if p.op != "matmul" or p.attrs.get("transpose_a") or p.attrs.get("transpose_b"):
        return None
    probs, v = p.inputs
    if probs.op != "softmax" or probs.attrs["axis"] != probs.ndim - 1 or probs.ndim < 3:
        return None
    chain = [probs]
    x = probs.inputs[0]
    mask: Node | None = None
    keep: Node | None = None
    keep_false = False
    if x.op == "add":
        a, b = x.inputs
        scores_first = a.op in ("matmul", "mul", "div")
        chain.append(x)
        x, mask = (a, b) if scores_first else (b, a)
    elif x.op == "where":
        cond, a, b = x.inputs
        chain.append(x)
        if _is_neg_inf(rb, b):
            x, keep = a, cond
        elif _is_neg_inf(rb, a):
            x, keep, keep_false = b, cond, True
        else:
            return None
    scale = 1.0
    if x.op in ("mul", "div"):
        a, b = x.inputs
        s = _scalar(rb, b)
        if s is None and x.op == "mul":
            s, b, a = _scalar(rb, a), a, b
        if s is None or s == 0:
            return None
        chain.append(x)
        scale, x = (s if x.op == "mul" else 1.0 / s), a
    if x.op != "matmul" or x.attrs.get("transpose_a"):
        return None
    chain.append(x)
    q, k = x.inputs
    q, q_scale = _scaled(rb, q)
    scale *= q_scale
    if not x.attrs.get("transpose_b"):
        # (k * s)ᵀ-like operands, as PyTorch's ONNX export of SDPA writes q·√s @ kᵀ·√s.
        k, k_scale = _scaled(rb, k)
        if k.op != "transpose" or k.attrs["perm"] != _swap_last_two(k.ndim):
            return None
        k, scale = k.inputs[0], scale * k_scale
    if any(uses[n.name] != 1 for n in chain):
        return None
    if not (q.ndim == k.ndim == v.ndim and q.shape[:-2] == k.shape[:-2] == v.shape[:-2]):
        return None
    if x.shape != probs.shape or (mask is not None and mask.dtype != q.dtype):
        return None
    tq, tk = x.shape[-2:]
    causal = False
    if keep is not None and not keep_false and _causal(_static_value(rb, keep), tq, tk, True):
        causal, keep = True, None
    if mask is not None and _causal(_static_value(rb, mask), tq, tk, False):
        causal, mask = True, None
    return Match(q, k, v, scale, mask, keep, keep_false, causal)


def attention(graph: Graph, sig: Signature, ctx: PassContext) -> tuple[Graph, Signature]:
    """Rewrite every hand-written attention `match` finds."""
    uses: Counter[str] = Counter()
    for n in live_nodes(graph, sig):
        for i in n.inputs:
            uses[i.name] += 1
    for n in [*sig.outputs, *(value for _, value in sig.updates)]:
        uses[n.name] += 1

    def visit(p: Pending, rb: Rebuilder) -> Node:
        found = match(p, rb, uses) if p.op == "matmul" else None
        if found is None:
            return rb.keep(p)
        ctx.hit(attention)
        inputs = [found.q, found.k, found.v]
        if found.mask is not None:
            inputs.append(found.mask)
        elif found.keep is not None:
            dtype = found.q.dtype.np
            zero = rb.constant(np.zeros((), dtype), at=p)
            hidden = rb.constant(np.array(-np.inf, dtype), at=p)
            values = (hidden, zero) if found.keep_false else (zero, hidden)
            inputs.append(rb.emit("where", (found.keep, *values), at=p))
        return rb.emit("attention", tuple(inputs),
                       {"causal": found.causal, "scale": found.scale}, at=p, name=p.name)

    return Rebuilder(graph, visit).run().finish(sig)


PASS = PassDef("attention", attention,
               "hand-written softmax(q @ kᵀ · s + mask) @ v as the fused attention op",
               enabled_by=frozenset({"simplify", "constant_fold"}))
