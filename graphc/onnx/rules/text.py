"""ONNX's TfIdfVectorizer over integer tokens (pool_int64s; string pools are refused).

For every n-gram length n from min_gram_length to max_gram_length and every skip distance
d (1 for unigrams, 1..max_skip_count+1 for longer n-grams), the n-gram starting at s is the
tokens at s, s+d, ..., s+(n-1)d. Its matches against the pool's n-grams of that length are
equality tests of shifted slices of X, counted over s; the counts go to the pool n-grams'
output columns (ngram_indexes) and are weighted by `mode`: TF (the counts), IDF (weight, or
1, where the count is positive), TFIDF (count times weight).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from graphc import builder as gb
from graphc.ir import Node
from graphc.onnx.convert import Context, Value, rule
from graphc.ops import elementwise as ew
from graphc.ops import layout, linalg, reduce, slicing

Inputs = list[Value | None]


def _pool(ctx: Context, attrs: dict[str, Any]) -> dict[int, np.ndarray]:
    """The pool's n-grams by length: n -> (count, n) array, in pool order."""
    pool = np.asarray(attrs.get("pool_int64s", []), np.int64)
    starts = [int(v) for v in attrs.get("ngram_counts", [])]
    if "pool_strings" in attrs or not starts or starts[0] != 0:
        raise ctx.error("expected pool_int64s with ngram_counts starting at 0 (string pools "
                        "are not supported)")
    bounds = [*starts, pool.size]
    grams = {}
    for i in range(len(starts)):
        n, chunk = i + 1, pool[bounds[i]:bounds[i + 1]]
        if chunk.size % n:
            raise ctx.error(f"the pool's {n}-grams take {chunk.size} values, not a multiple "
                            f"of {n}")
        grams[n] = chunk.reshape(-1, n)
    return grams


def _matches(x: Node, grams: np.ndarray, n: int, distance: int) -> Node | None:
    """(B, count): how often each n-gram of `grams` occurs in the rows of x (B, L) with
    its tokens `distance` apart; None when no such n-gram fits in a row."""
    length = x.shape[1]
    starts = length - (n - 1) * distance
    if starts <= 0:
        return None
    hit: Node | None = None
    for j in range(n):
        token = slicing.slice(x, [j * distance], [j * distance + starts], axes=[1])
        same = ew.equal(layout.reshape(token, [x.shape[0], starts, 1]),
                        gb.constant(grams[:, j].astype(x.dtype.np)))
        hit = same if hit is None else ew.logical_and(hit, same)
    assert hit is not None
    return reduce.sum(ew.cast(hit, "float32"), 1)


@rule("TfIdfVectorizer", 9)
def _tfidf(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    x = ctx.node(inputs[0])
    if x.dtype.is_float or x.ndim not in (1, 2):
        raise ctx.error(f"X {x.dtype}{list(x.shape)}: expected integer tokens (C) or (B, C)")
    rows = x if x.ndim == 2 else layout.reshape(x, [1, x.shape[0]])
    lo, hi = int(attrs.get("min_gram_length", 1)), int(attrs.get("max_gram_length", 1))
    skips = int(attrs.get("max_skip_count", 0))
    mode = str(attrs.get("mode", "TF"))
    indexes = [int(v) for v in attrs.get("ngram_indexes", [])]
    if mode not in ("TF", "IDF", "TFIDF") or not 1 <= lo <= hi or skips < 0 or not indexes:
        raise ctx.error(f"mode '{mode}', gram lengths {lo}..{hi}, max_skip_count {skips}, "
                        f"ngram_indexes {indexes}: expected TF, IDF or TFIDF and a valid range")
    grams = _pool(ctx, attrs)
    width = max(indexes) + 1
    columns: list[Node] = []
    placement: list[np.ndarray] = []
    offset = 0
    for n in sorted(grams):
        count = grams[n].shape[0]
        if lo <= n <= hi and count:
            total: Node | None = None
            for d in range(1, (1 if n == 1 else skips + 1) + 1):
                m = _matches(rows, grams[n], n, d)
                if m is not None:
                    total = m if total is None else ew.add(total, m)
            if total is not None:
                columns.append(total)
                place = np.zeros((count, width), np.float32)
                place[np.arange(count), indexes[offset:offset + count]] = 1.0
                placement.append(place)
        offset += count
    if offset != len(indexes):
        raise ctx.error(f"{len(indexes)} ngram_indexes for the pool's {offset} n-grams")
    if columns:
        y = linalg.matmul(columns[0], gb.constant(placement[0]))
        for c, p in zip(columns[1:], placement[1:]):
            y = ew.add(y, linalg.matmul(c, gb.constant(p)))
    else:
        y = gb.constant(np.zeros((rows.shape[0], width), np.float32))
    weights = attrs.get("weights")
    w = gb.constant(np.asarray(weights, np.float32)) if weights is not None else None
    if mode == "IDF":
        y = ew.where(ew.greater(y, 0.0), w if w is not None else 1.0, ew.mul(y, 0.0))
    elif mode == "TFIDF" and w is not None:
        y = ew.mul(y, w)
    return [y if x.ndim == 2 else layout.reshape(y, [width])]
