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

The pass also packs a training step's forward: `gc.grad` of an attention adds an
`attention_lse` of the same inputs (the statistic the backward needs), which would compute
every score a second time. When an `attention_grad` reads both, the pair becomes one
`attention_with_lse` kernel writing [O | lse] rows; the attention's users read O through a
slice (fused into the head-merging transpose that follows), and `attention_grad` reads the
packed rows directly (``packed=True``). Results are bit-identical: the same kernel code
computes O and the statistic.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from graphc.ir import Graph, Node, Signature
from graphc.ops import registry

from .constant_fold import evaluable
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
        op = registry.get(n.op)
        if not evaluable(op):  # constant folding's rule: no inputs, randoms, loops, MPI
            return None
        args = [run(i) for i in n.inputs]
        if any(a is None for a in args):
            return None
        with np.errstate(all="ignore"):
            memo[n] = op.evaluate_reference(args, n.attrs, n.type)
        return memo[n]

    return run(node)


def match(p: Pending, rb: Rebuilder, uses: Counter[str]) -> Match | None:
    """The attention that matmul `p` computes by hand, or None (see the module doc)."""
    if p.op != "matmul" or p.attrs.get("transpose_a") or p.attrs.get("transpose_b") \
            or p.attrs.get("b_panels"):
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
    if x.op != "matmul" or x.attrs.get("transpose_a") or x.attrs.get("b_panels"):
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


def _training_pairs(live: set[Node]) -> tuple[dict[str, str], dict[str, str]]:
    """({attention: its attention_lse}, {attention_grad: its attention}) by name, for the
    unpacked gradients whose o and lse are an attention and a log-sum-exp of the same
    inputs and attributes."""
    pairs: dict[str, str] = {}
    grads: dict[str, str] = {}
    for n in live:
        if n.op != "attention_grad" or n.attrs["packed"]:
            continue
        o, lse = n.inputs[3], n.inputs[5]
        if (o.op == "attention" and lse.op == "attention_lse" and o.inputs == lse.inputs
                and o.attrs == lse.attrs):
            pairs[o.name] = lse.name
            grads[n.name] = o.name
    return pairs, grads


def _last_axis(rb: Rebuilder, x: Node, start: int, stop: int, at: Pending,
               name: str | None = None) -> Node:
    """x[..., start:stop]."""
    nd = x.ndim
    return rb.emit("slice", (x,), {"starts": (0,) * (nd - 1) + (start,),
                                  "stops": (*x.shape[:-1], stop), "steps": (1,) * nd},
                   at=at, name=name)


def pack_statistics(rb: Rebuilder, p: Pending, packed_of: dict[str, Node],
                    pairs: dict[str, str], grads: dict[str, str]) -> Node | None:
    """The packed form of an attention, log-sum-exp or gradient of a training pair."""
    if p.op == "attention" and p.name in pairs:
        packed = rb.emit("attention_with_lse", p.inputs, p.attrs, at=p)
        packed_of[p.name] = packed
        packed_of[pairs[p.name]] = packed
        return _last_axis(rb, packed, 0, p.shape[-1], p, name=p.name)
    if p.op == "attention_lse" and p.name in packed_of:
        packed = packed_of[p.name]
        column = _last_axis(rb, packed, packed.shape[-1] - 1, packed.shape[-1], p)
        return rb.emit("reshape", (column,), {"shape": p.shape}, at=p, name=p.name)
    if (p.op == "attention_grad" and not p.attrs["packed"] and p.name in grads
            and grads[p.name] in packed_of):
        q, k, v, _o, do, _lse, *mask = p.inputs
        return rb.emit("attention_grad", (q, k, v, packed_of[grads[p.name]], do, *mask),
                       {**dict(p.attrs), "packed": True}, at=p, name=p.name)
    return None


def attention(graph: Graph, sig: Signature, ctx: PassContext) -> tuple[Graph, Signature]:
    """Rewrite every hand-written attention `match` finds; pack training forwards."""
    uses: Counter[str] = Counter()
    live = live_nodes(graph, sig)
    for n in live:
        for i in n.inputs:
            uses[i.name] += 1
    for n in [*sig.outputs, *(value for _, value in sig.updates)]:
        uses[n.name] += 1
    pairs, grads = _training_pairs(live)
    packed_of: dict[str, Node] = {}

    def visit(p: Pending, rb: Rebuilder) -> Node:
        if p.op in ("attention", "attention_lse", "attention_grad"):
            packed = pack_statistics(rb, p, packed_of, pairs, grads)
            if packed is not None:
                ctx.hit(pack_statistics)
                return packed
            return rb.keep(p)
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
               "hand-written softmax(q @ kᵀ · s + mask) @ v as the fused attention op; a "
               "training forward and its log-sum-exp as one kernel",
               enabled_by=frozenset({"simplify", "constant_fold"}))
