"""ONNX's Einsum as graphc transposes, reshapes, sums and batched matmuls.

The equation is read as numpy reads it: letters name axes, `...` stands for the leading
axes an operand has beyond its letters (aligned from the right, broadcasting), and without
`->` the output is the ellipsis followed by the letters used once, sorted. Each operand
first takes its diagonals (a letter repeated within it: multiply by an identity, sum one
axis) and sums the letters no one else needs; operands are then contracted left to right,
each pair as one batched matmul (batch letters, the pair's own letters, the contracted
letters), and the result is transposed into the output's order.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from graphc import builder as gb
from graphc.ir import Node
from graphc.onnx.convert import Context, Value, rule
from graphc.ops import elementwise as ew
from graphc.ops import layout, linalg, reduce

Inputs = list[Value | None]
# Stand-ins for the axes under an ellipsis (never letters of an equation).
_ELLIPSIS_AXES = "0123456789"


def _parse(ctx: Context, equation: str, ranks: list[int]) -> tuple[list[str], str]:
    """The axis labels of each operand and of the output, ellipses expanded."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise ctx.error(f"equation '{equation}' names {len(terms)} operands; the node has "
                        f"{len(ranks)}")
    labels, widest = [], 0
    for term, rank in zip(terms, ranks):
        letters = term.replace("...", "")
        if (letters and not letters.isalpha()) or term.count("...") > 1:
            raise ctx.error(f"operand term '{term}' of '{equation}' is not letters with at "
                            "most one '...'")
        extra = rank - len(letters)
        if extra < 0 or (extra and "..." not in term):
            raise ctx.error(f"operand term '{term}' does not match rank {rank}")
        widest = max(widest, extra)
        labels.append(term.replace("...", _ELLIPSIS_AXES[len(_ELLIPSIS_AXES) - extra:]))
    ell = _ELLIPSIS_AXES[len(_ELLIPSIS_AXES) - widest:]
    if arrow:
        out = rhs.replace("...", ell)
    else:
        counts = "".join(labels)
        out = ell + "".join(sorted(c for c in set(counts) if c.isalpha()
                                   and counts.count(c) == 1))
    if len(set(out)) != len(out) or any(c not in "".join(labels) for c in out):
        raise ctx.error(f"output '{rhs}' of '{equation}' repeats a label or names one no "
                        "operand has")
    return labels, out


def _diagonals(x: Node, labels: str) -> tuple[Node, str]:
    """`x` with each repeated label reduced to its diagonal (the label kept once)."""
    while len(set(labels)) != len(labels):
        first = next(c for c in labels if labels.count(c) > 1)
        p = labels.index(first)
        q = labels.index(first, p + 1)
        n = x.shape[p]
        shape = [1] * x.ndim
        shape[p], shape[q] = n, n
        eye = gb.constant(np.eye(n, dtype=x.dtype.np).reshape(shape))
        x = reduce.sum(ew.mul(x, eye), q)
        labels = labels[:q] + labels[q + 1:]
    return x, labels


def _sum_out(x: Node, labels: str, needed: set[str]) -> tuple[Node, str]:
    """`x` summed over the labels not in `needed`."""
    axes = tuple(i for i, c in enumerate(labels) if c not in needed)
    if not axes:
        return x, labels
    return reduce.sum(x, axes), "".join(c for c in labels if c in needed)


def _contract(a: Node, la: str, b: Node, lb: str, keep: set[str]) -> tuple[Node, str]:
    """The product of `a` and `b` summed over their shared labels not in `keep`."""
    size = {c: d for c, d in zip(la, a.shape)}
    for c, d in zip(lb, b.shape):
        size[c] = max(size.get(c, 1), d)
    batch = [c for c in la if c in lb and c in keep]
    summed = [c for c in la if c in lb and c not in keep]
    left = [c for c in la if c not in lb]
    right = [c for c in lb if c not in la]

    def arrange(x: Node, labels: str, order: list[str], groups: list[list[str]]) -> Node:
        x = layout.transpose(x, [labels.index(c) for c in order])
        x = layout.broadcast_to(x, [size[c] for c in order])
        return layout.reshape(x, [math.prod(size[c] for c in g) for g in groups])

    a3 = arrange(a, la, batch + left + summed, [batch, left, summed])
    b3 = arrange(b, lb, batch + summed + right, [batch, summed, right])
    out = linalg.matmul(a3, b3)
    labels = batch + left + right
    return layout.reshape(out, [size[c] for c in labels]), "".join(labels)


@rule("Einsum", 12)
def _einsum(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    xs = [ctx.node(x) for x in inputs]
    if not xs:
        raise ctx.error("needs at least one input")
    labels, out = _parse(ctx, str(attrs.get("equation", "")), [x.ndim for x in xs])
    terms = []
    for i, (x, lab) in enumerate(zip(xs, labels)):
        x, lab = _diagonals(x, lab)
        others = set(out).union(*(set(t) for j, t in enumerate(labels) if j != i))
        terms.append(_sum_out(x, lab, others))
    acc, la = terms[0]
    for k in range(1, len(terms)):
        b, lb = terms[k]
        keep = set(out).union(*(set(t) for _, t in terms[k + 1:]))
        acc, la = _sum_out(acc, la, keep | set(lb))
        b, lb = _sum_out(b, lb, keep | set(la))
        acc, la = _contract(acc, la, b, lb, keep)
    acc, la = _sum_out(acc, la, set(out))
    if la != out:
        acc = layout.transpose(acc, [la.index(c) for c in out])
    return [acc]
