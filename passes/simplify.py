"""simplify: algebraic rewrites, each a small function ``rule(pending, rebuilder)``.

A rule matches one node (its inputs are already simplified) and returns a replacement of
the same type, or None. The first docstring line of a rule is its equation. `RULES` is the
ordered list the pass applies; the first rule that matches wins, and a node a rule builds
is offered to the rules again, so rewrites compose within one sweep.

Rules that match a constant check its VALUE (every element equal to it, `is_value`) and keep
the node's type: when the constant broadcasts the other operand to a bigger shape, the
replacement is ``broadcast_to(x)``, not `x`.

Floating-point policy. A rewrite is exact in IEEE arithmetic unless its docstring says
otherwise. Two documented kinds of deviation are allowed:
- the sign of a zero result (``x + 0 -> x`` gives -0.0 for x = -0.0 where IEEE gives +0.0;
  the two compare equal), as LLVM's `nsz` flag allows;
- replacing a computation by a more accurate one of the same real-number value
  (``log(exp(x)) -> x``, ``log(softmax(x)) -> log_softmax(x)``): results change only where
  the original lost accuracy (overflow, underflow, rounding);
- reassociating a sum of products into one longer dot product (``add_matmuls``): the same
  terms summed in another order, as every GEMM blocking already chooses its own order.
Rewrites that would change results for inf or NaN inputs (``x * 0 -> 0`` on floats) are
not made.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from graphc.ir import Graph, Node, Signature
from graphc.ops.common import reduced_shape

from .rewrite import (
    PassContext,
    PassDef,
    Pending,
    Rebuilder,
    Rule,
    apply_rules,
)

__all__ = ["RULES", "simplify"]

# Ops whose result is >= 0 or NaN for every input: exp(log(y)) == y for such y.
NONNEGATIVE_OPS = frozenset({"exp", "sigmoid", "softplus", "sqrt", "abs", "square", "relu",
                             "softmax"})


# --- helpers --------------------------------------------------------------------------------

def constant_under(rb: Rebuilder, node: Node) -> np.ndarray | None:
    """The array of the constant `node` is, or is a broadcast_to/reshape of; else None."""
    while node.op in ("broadcast_to", "reshape"):
        node = node.inputs[0]
    return rb.value(node)


def is_value(rb: Rebuilder, node: Node, target: float) -> bool:
    """Whether every element of `node` is a constant equal to `target` (never for bools;
    NaN equals nothing). The first element is checked first: most constants fail there."""
    value = constant_under(rb, node)
    if value is None or value.size == 0 or value.dtype == np.bool_:
        return False
    return bool(value.flat[0] == target) and bool(np.all(value == target))


def fit(rb: Rebuilder, x: Node, p: Pending) -> Node | None:
    """`x` as a replacement for `p`: x itself if the types match, broadcast_to(x) if only
    the shape is smaller, None if the dtype differs."""
    if x.type == p.type:
        return x
    if x.dtype != p.dtype:
        return None
    return rb.emit("broadcast_to", (x,), {"shape": p.shape}, at=p, name=p.name)


def build_fit(rb: Rebuilder, op: str, inputs: tuple[Node, ...], p: Pending,
              attrs: dict[str, Any] | None = None) -> Node | None:
    """A new `op` node replacing `p` (taking p's name unless it must be broadcast)."""
    node = rb.emit(op, inputs, attrs, at=p,
                   name=p.name if inputs[0].shape == p.shape else None)
    return fit(rb, node, p)


def binary_operands(p: Pending, op: str) -> tuple[Node, Node] | None:
    if p.op != op:
        return None
    a, b = p.inputs
    return a, b


# --- arithmetic identities ------------------------------------------------------------------

def mul_one(p: Pending, rb: Rebuilder) -> Node | None:
    """x * 1 -> x,  1 * x -> x

    Exact. Where the 1 broadcasts x to a bigger shape the result is broadcast_to(x).
    """
    operands = binary_operands(p, "mul")
    if operands is None:
        return None
    a, b = operands
    if is_value(rb, b, 1):
        return fit(rb, a, p)
    if is_value(rb, a, 1):
        return fit(rb, b, p)
    return None


def mul_zero(p: Pending, rb: Rebuilder) -> Node | None:
    """x * 0 -> 0,  0 * x -> 0  (integer x only)

    Never for floats: inf * 0 and nan * 0 are nan, and whether x is finite is not known.
    """
    operands = binary_operands(p, "mul")
    if operands is None or not p.dtype.is_int:
        return None
    a, b = operands
    if not (is_value(rb, a, 0) or is_value(rb, b, 0)):
        return None
    zero = rb.constant(np.zeros((), p.dtype.np), at=p, name=p.name if not p.shape else None)
    return fit(rb, zero, p)


def add_zero(p: Pending, rb: Rebuilder) -> Node | None:
    """x + 0 -> x,  0 + x -> x

    Ignores the sign of a zero result: for x = -0.0, IEEE gives -0.0 + 0.0 = +0.0.
    """
    operands = binary_operands(p, "add")
    if operands is None:
        return None
    a, b = operands
    if is_value(rb, b, 0):
        return fit(rb, a, p)
    if is_value(rb, a, 0):
        return fit(rb, b, p)
    return None


def sub_zero(p: Pending, rb: Rebuilder) -> Node | None:
    """x - 0 -> x

    Exact for +0; for a -0.0 constant it ignores the sign of a zero result.
    """
    operands = binary_operands(p, "sub")
    if operands is None or not is_value(rb, operands[1], 0):
        return None
    return fit(rb, operands[0], p)


def div_one(p: Pending, rb: Rebuilder) -> Node | None:
    """x / 1 -> x"""
    operands = binary_operands(p, "div")
    if operands is None or not is_value(rb, operands[1], 1):
        return None
    return fit(rb, operands[0], p)


def neg_neg(p: Pending, rb: Rebuilder) -> Node | None:
    """-(-x) -> x"""
    if p.op == "neg" and p.inputs[0].op == "neg":
        return p.inputs[0].inputs[0]
    return None


def pow_one(p: Pending, rb: Rebuilder) -> Node | None:
    """x ** 1 -> x"""
    operands = binary_operands(p, "pow")
    if operands is None or not is_value(rb, operands[1], 1):
        return None
    return fit(rb, operands[0], p)


def pow_two(p: Pending, rb: Rebuilder) -> Node | None:
    """x ** 2 -> x * x"""
    operands = binary_operands(p, "pow")
    if operands is None or not is_value(rb, operands[1], 2):
        return None
    x = operands[0]
    return build_fit(rb, "mul", (x, x), p)


def pow_half(p: Pending, rb: Rebuilder) -> Node | None:
    """x ** 0.5 -> sqrt(x)

    Differs from IEEE pow only at x = -inf (pow gives +inf, sqrt nan) and x = -0.0 (+0.0 vs
    -0.0).
    """
    operands = binary_operands(p, "pow")
    if operands is None or not is_value(rb, operands[1], 0.5):
        return None
    return build_fit(rb, "sqrt", (operands[0],), p)


# --- exp / log ------------------------------------------------------------------------------

def log_exp(p: Pending, rb: Rebuilder) -> Node | None:
    """log(exp(x)) -> x

    Valid for every finite x in real arithmetic, and more accurate where exp overflows or
    underflows: x = 100 in float32 gave inf and now gives 100.
    """
    if p.op == "log" and p.inputs[0].op == "exp":
        return p.inputs[0].inputs[0]
    return None


def exp_log(p: Pending, rb: Rebuilder) -> Node | None:
    """exp(log(y)) -> y  if y >= 0 is known

    Only valid for y >= 0: for negative y, log gives nan. y counts as known nonnegative
    when one of `NONNEGATIVE_OPS` (exp, sigmoid, softplus, sqrt, abs, square, relu,
    softmax) made it; those give nan only for a nan input, which the rewrite keeps.
    """
    if p.op != "exp" or p.inputs[0].op != "log":
        return None
    y = p.inputs[0].inputs[0]
    return y if y.op in NONNEGATIVE_OPS else None


def log_softmax(p: Pending, rb: Rebuilder) -> Node | None:
    """log(softmax(x, axis)) -> log_softmax(x, axis)

    More accurate: an entry whose softmax underflows to 0 gave log(0) = -inf.
    """
    if p.op != "log" or p.inputs[0].op != "softmax":
        return None
    softmax = p.inputs[0]
    return rb.emit("log_softmax", softmax.inputs, softmax.attrs, at=p, name=p.name)


# --- shape ops ------------------------------------------------------------------------------

def transpose_transpose(p: Pending, rb: Rebuilder) -> Node | None:
    """transpose(transpose(x, p1), p2) -> transpose(x, p1[p2])  (x if that is the identity)
    """
    if p.op != "transpose" or p.inputs[0].op != "transpose":
        return None
    inner = p.inputs[0]
    perm = tuple(inner.attrs["perm"][i] for i in p.attrs["perm"])
    x = inner.inputs[0]
    if perm == tuple(range(len(perm))):
        return x
    return rb.emit("transpose", (x,), {"perm": perm}, at=p, name=p.name)


def reshape_reshape(p: Pending, rb: Rebuilder) -> Node | None:
    """reshape(reshape(x, s1), s2) -> reshape(x, s2)"""
    if p.op != "reshape" or p.inputs[0].op != "reshape":
        return None
    return rb.emit("reshape", p.inputs[0].inputs, p.attrs, at=p, name=p.name)


def reshape_noop(p: Pending, rb: Rebuilder) -> Node | None:
    """reshape(x, shape(x)) -> x"""
    return p.inputs[0] if p.op == "reshape" and p.inputs[0].type == p.type else None


def transpose_noop(p: Pending, rb: Rebuilder) -> Node | None:
    """transpose(x, (0, 1, ..., n-1)) -> x"""
    if p.op == "transpose" and p.attrs["perm"] == tuple(range(p.type.ndim)):
        return p.inputs[0]
    return None


def cast_noop(p: Pending, rb: Rebuilder) -> Node | None:
    """cast(x, dtype(x)) -> x"""
    return p.inputs[0] if p.op == "cast" and p.inputs[0].type == p.type else None


def broadcast_noop(p: Pending, rb: Rebuilder) -> Node | None:
    """broadcast_to(x, shape(x)) -> x"""
    return p.inputs[0] if p.op == "broadcast_to" and p.inputs[0].type == p.type else None


def slice_noop(p: Pending, rb: Rebuilder) -> Node | None:
    """slice(x, 0:n:1 on every axis) -> x"""
    if p.op != "slice" or p.inputs[0].type != p.type:
        return None
    whole = all(a == 0 and s == 1 for a, s in zip(p.attrs["starts"], p.attrs["steps"]))
    return p.inputs[0] if whole else None


def sum_broadcast(p: Pending, rb: Rebuilder) -> Node | None:
    """sum(broadcast_to(x, s), axes) -> reshape(x * n)  if axes = the broadcast axes

    The summed axes must be exactly those the broadcast added or stretched (plus any of
    size 1); n is their total size. Equal up to the rounding of the n-term sum.
    """
    if p.op != "sum" or p.inputs[0].op != "broadcast_to":
        return None
    x = p.inputs[0].inputs[0]
    shape = p.inputs[0].shape
    lead = len(shape) - x.ndim
    stretched = {j for j in range(len(shape))
                 if j < lead or (x.shape[j - lead] == 1 and shape[j] != 1)}
    trivial = {j for j in range(len(shape)) if shape[j] == 1}
    axes = set(p.attrs["axes"])
    if not stretched <= axes <= stretched | trivial:
        return None
    n = math.prod(shape[j] for j in axes)
    scaled = x
    if n != 1:
        scaled = rb.emit("mul", (x, rb.constant(np.array(n, p.dtype.np), at=p)), at=p,
                         name=p.name if x.shape == p.shape else None)
    assert reduced_shape(shape, tuple(sorted(axes)), p.attrs["keepdims"]) == p.shape
    if scaled.shape == p.shape:
        return scaled
    return rb.emit("reshape", (scaled,), {"shape": p.shape}, at=p, name=p.name)


def matmul_transpose(p: Pending, rb: Rebuilder) -> Node | None:
    """matmul(transpose(a), b) -> matmul(a, b, transpose_a=True)  (likewise for b)

    Only a transpose that swaps the last two axes and keeps the batch axes in place; a
    flag already set is toggled.
    """
    if p.op != "matmul":
        return None
    operands = list(p.inputs)
    flags = [bool(p.attrs.get("transpose_a", False)), bool(p.attrs.get("transpose_b", False))]
    changed = False
    for i, x in enumerate(operands):
        if i == 1 and p.attrs.get("b_panels"):
            continue  # b in the compiler's panels: a layout, not a matrix to transpose
        if x.op == "transpose" and x.attrs["perm"] == _swap_last_two(x.ndim):
            operands[i] = x.inputs[0]
            flags[i] = not flags[i]
            changed = True
    if not changed:
        return None
    attrs = {**dict(p.attrs), "transpose_a": flags[0], "transpose_b": flags[1]}
    return rb.emit("matmul", tuple(operands), attrs, at=p, name=p.name)


def add_disjoint_pads(p: Pending, rb: Rebuilder) -> Node | None:
    """pad(a) + pad(b) -> pad(concat(a, 0, b))  if a and b fill disjoint ranges of one axis

    Both pads add zeros along the same single axis (no interior padding), so every element
    of the sum is one operand's value plus zero: exact. This is the gradient of slicing a
    tensor into pieces (RNN time steps, LSTM gates), which would otherwise add up many
    mostly-zero tensors; concats along the same axis are merged into one.
    """
    operands = binary_operands(p, "add")
    if operands is None or not p.dtype.is_float:
        return None
    a, b = operands
    if a.op != "pad" or b.op != "pad" or a.type != p.type or b.type != p.type:
        return None
    if a.attrs["value"] != 0 or b.attrs["value"] != 0:
        return None
    pads_a, pads_b = a.attrs["pads"], b.attrs["pads"]
    ndim = len(p.shape)
    axes = [d for d in range(ndim) if pads_a[d] != (0, 0, 0) or pads_b[d] != (0, 0, 0)]
    if len(axes) != 1 or pads_a[axes[0]][2] or pads_b[axes[0]][2]:
        return None
    d = axes[0]
    n = p.shape[d]
    first, second = sorted([(pads_a[d][0], n - pads_a[d][1], a.inputs[0]),
                            (pads_b[d][0], n - pads_b[d][1], b.inputs[0])],
                           key=lambda r: r[0])
    if first[1] > second[0]:
        return None  # overlapping ranges: a real sum
    parts: list[Node] = []
    for _, _, x in (first,):
        parts.extend(_concat_parts(x, d))
    if second[0] > first[1]:
        gap = tuple(second[0] - first[1] if i == d else s for i, s in enumerate(p.shape))
        zero = rb.constant(np.zeros((), p.dtype.np), at=p)
        parts.append(rb.emit("broadcast_to", (zero,), {"shape": gap}, at=p))
    parts.extend(_concat_parts(second[2], d))
    joined = rb.emit("concat", tuple(parts), {"axis": d}, at=p)
    pads = tuple((first[0], n - second[1], 0) if i == d else (0, 0, 0) for i in range(ndim))
    if pads[d] == (0, 0, 0):
        return fit(rb, joined, p)
    return rb.emit("pad", (joined,), {"pads": pads, "value": 0.0}, at=p, name=p.name)


def add_reshaped_pads(p: Pending, rb: Rebuilder) -> Node | None:
    """reshape(pad(a)) + reshape(pad(b)) -> reshape(pad(a) + pad(b))  (same shapes)

    Exact (the same elementwise sum, viewed). Slicing a reshaped tensor (q, k and v from
    one fused projection, split after the head reshape) has a gradient that adds the
    pieces' pads back in the unsliced shape; lifting the add above the reshapes lets
    `add_disjoint_pads` join them into one concat instead of three zero-padded buffers.
    """
    operands = binary_operands(p, "add")
    if operands is None:
        return None
    a, b = operands
    if a.op != "reshape" or b.op != "reshape" or a.type != p.type or b.type != p.type:
        return None
    x, y = a.inputs[0], b.inputs[0]
    if x.type != y.type or x.op != "pad" or y.op != "pad":
        return None
    total = rb.emit("add", (x, y), at=p)
    return rb.emit("reshape", (total,), {"shape": p.shape}, at=p, name=p.name)


# A matmul of k up to this joins a sum with another matmul (see `add_matmuls`).
THIN_K = 128


def add_matmuls(p: Pending, rb: Rebuilder) -> Node | None:
    """matmul(a1, b1) + matmul(a2, b2) -> matmul(concat(a1, a2), concat(b1, b2))  (along k)

    Reassociates a sum of products (see the module's floating-point policy). 2-D matmuls
    with the same transpose flags and the sum's own type, at least one of them thin (k up
    to THIN_K): a weight shared by the steps of an RNN gets its gradient as one GEMM with
    k = steps x batch, instead of one small-k GEMM per step, each reading and writing the
    whole running sum. Applied along a chain of adds, the concats grow (nested concats are
    flattened).
    """
    operands = binary_operands(p, "add")
    if operands is None or not p.dtype.is_float or len(p.shape) != 2:
        return None
    a, b = operands
    if a.op != "matmul" or b.op != "matmul" or a.type != p.type or b.type != p.type:
        return None
    if a.attrs.get("b_panels") or b.attrs.get("b_panels"):
        return None  # panels do not concatenate as rows
    flags = [(bool(m.attrs.get("transpose_a", False)), bool(m.attrs.get("transpose_b", False)))
             for m in (a, b)]
    if flags[0] != flags[1] or any(x.ndim != 2 for m in (a, b) for x in m.inputs):
        return None
    ta, tb = flags[0]
    k_axis_a, k_axis_b = (0 if ta else 1), (1 if tb else 0)
    ks = [m.inputs[0].shape[k_axis_a] for m in (a, b)]
    if min(ks) > THIN_K:
        return None
    lhs = _concat_parts(a.inputs[0], k_axis_a) + _concat_parts(b.inputs[0], k_axis_a)
    rhs = _concat_parts(a.inputs[1], k_axis_b) + _concat_parts(b.inputs[1], k_axis_b)
    left = rb.emit("concat", tuple(lhs), {"axis": k_axis_a}, at=p)
    right = rb.emit("concat", tuple(rhs), {"axis": k_axis_b}, at=p)
    return rb.emit("matmul", (left, right), {"transpose_a": ta, "transpose_b": tb}, at=p,
                   name=p.name)


def _concat_parts(x: Node, axis: int) -> list[Node]:
    """The operands of `x` if it is a concat along `axis` (to flatten nested concats)."""
    return list(x.inputs) if x.op == "concat" and x.attrs["axis"] == axis else [x]


def _swap_last_two(ndim: int) -> tuple[int, ...]:
    return (*range(ndim - 2), ndim - 1, ndim - 2) if ndim >= 2 else ()


RULES: list[Rule] = [
    mul_one,
    mul_zero,
    add_zero,
    sub_zero,
    div_one,
    neg_neg,
    pow_one,
    pow_two,
    pow_half,
    log_exp,
    exp_log,
    log_softmax,
    transpose_transpose,
    reshape_reshape,
    reshape_noop,
    transpose_noop,
    cast_noop,
    broadcast_noop,
    slice_noop,
    sum_broadcast,
    matmul_transpose,
    add_disjoint_pads,
    add_reshaped_pads,
    add_matmuls,
]


def simplify(graph: Graph, sig: Signature, ctx: PassContext) -> tuple[Graph, Signature]:
    """Apply `RULES` in sweeps until a sweep changes nothing (at most options.max_iterations).

    Nodes a rule makes dead stay in the graph; `prune` removes them.
    """
    visit = apply_rules(RULES, ctx)
    for sweep in range(1, ctx.options.max_iterations + 1):
        before = sum(ctx.hits.values())
        graph, sig = Rebuilder(graph, visit).run().finish(sig)
        ctx.iterations = sweep
        if sum(ctx.hits.values()) == before:
            break
    return graph, sig


# Folded constants (x + 0 after relu(-1) folds to 0), merged duplicates (x - x) and the
# nodes integer_matmul emits (reshapes and casts of zero points) give simplify new work;
# removing dead nodes does not (no rule looks at a node's users).
PASS = PassDef("simplify", simplify, "algebraic rewrites (simplify.RULES), to a fixed point",
               enabled_by=frozenset({"constant_fold", "cse", "integer_matmul"}))
