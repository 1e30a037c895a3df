"""Ops of the ai.onnx.ml domain on numeric tensors: Binarizer, ArrayFeatureExtractor and
TreeEnsemble (the string ops, LabelEncoder among them, are not supported).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from graphc import builder as gb
from graphc.ir import Node
from graphc.onnx.convert import Context, Value, rule
from graphc.ops import elementwise as ew
from graphc.ops import gather, join, layout, slicing

Inputs = list[Value | None]


@rule("ai.onnx.ml.Binarizer", 1)
def _binarizer(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """1 where x > threshold, else 0, in x's type."""
    x = ctx.node(inputs[0])
    threshold = float(attrs.get("threshold", 0.0))
    zero = ew.mul(x, 0.0) if x.dtype.is_float else ew.sub(x, x)
    return [ew.where(ew.greater(x, threshold), ew.add(zero, 1), zero)]


@rule("ai.onnx.ml.ArrayFeatureExtractor", 1)
def _array_feature_extractor(ctx: Context, inputs: Inputs, attrs: dict[str, Any]
                             ) -> list[Value]:
    """The elements of x's last axis that the (flattened) indices select, as ONNX's
    reference shapes them: (..., count), a 1-D x giving (1, count)."""
    x, idx = ctx.node(inputs[0]), ctx.node(inputs[1])
    if x.ndim == 0:
        raise ctx.error("X must have rank >= 1")
    count = int(np.prod(idx.shape, dtype=np.int64))
    picked = gather.take(x, layout.reshape(idx, [count]), x.ndim - 1)
    return [picked if x.ndim > 1 else layout.reshape(picked, [1, count])]


_MODES = ("LEQ", "LT", "GTE", "GT", "EQ", "NEQ", "MEMBER")


def _ints(attrs: dict[str, Any], name: str) -> list[int]:
    return [int(v) for v in np.asarray(attrs.get(name, [])).reshape(-1)]


@rule("ai.onnx.ml.TreeEnsemble", 5)
def _tree_ensemble(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """Every tree's leaves as the conjunction of the branch conditions on their path (the
    trees are known at import, the comparisons run on X): each sample reaches one leaf per
    tree, whose weight goes to its target, aggregated over the trees (SUM, AVERAGE, MIN,
    MAX). post_transform NONE only."""
    x = ctx.node(inputs[0])
    if x.ndim != 2 or not x.dtype.is_float:
        raise ctx.error(f"X {x.dtype}{list(x.shape)}: expected float (N, features)")
    if int(attrs.get("post_transform", 0)) != 0:
        raise ctx.error("post_transform other than NONE is not supported")
    aggregate = int(attrs.get("aggregate_function", 1))
    if aggregate not in (0, 1, 2, 3):
        raise ctx.error(f"aggregate_function {aggregate} is not AVERAGE, SUM, MIN or MAX")
    features, modes = _ints(attrs, "nodes_featureids"), _ints(attrs, "nodes_modes")
    splits = np.asarray(attrs.get("nodes_splits", []), np.float64).reshape(-1)
    true_ids, false_ids = _ints(attrs, "nodes_truenodeids"), _ints(attrs, "nodes_falsenodeids")
    true_leaf, false_leaf = _ints(attrs, "nodes_trueleafs"), _ints(attrs, "nodes_falseleafs")
    targets = _ints(attrs, "leaf_targetids")
    weights = np.asarray(attrs.get("leaf_weights", []), np.float64).reshape(-1)
    missing = _ints(attrs, "nodes_missing_value_tracks_true") or [0] * len(modes)
    n_targets = int(attrs.get("n_targets", 0))
    sets = np.asarray(attrs.get("membership_values", []), np.float64).reshape(-1)
    members, cut = [], 0
    for mode in modes:  # one NaN-terminated set per MEMBER node, in node order
        if mode == 6:
            end = cut + int(np.argmax(np.isnan(sets[cut:]))) if np.isnan(sets[cut:]).any() \
                else sets.size
            members.append(sets[cut:end])
            cut = end + 1
        else:
            members.append(np.zeros(0))
    conditions: dict[int, Node] = {}

    def condition(i: int) -> Node:
        if i not in conditions:
            column = slicing.slice(x, [features[i]], [features[i] + 1], axes=[1])
            mode = modes[i]
            if mode == 6:
                hit = gb.constant(np.zeros((x.shape[0], 1), np.bool_))
                for m in members[i]:
                    hit = ew.logical_or(hit, ew.equal(column, float(m)))
            else:
                compare = (ew.less_equal, ew.less, ew.greater_equal, ew.greater, ew.equal,
                           ew.not_equal)[mode]
                hit = compare(column, float(splits[i]))
            if missing[i]:
                hit = ew.logical_or(hit, ew.not_equal(column, column))
            conditions[i] = hit
        return conditions[i]

    # (leaf, path) for every tree: the path lists (node, branch taken).
    trees: list[list[tuple[int, list[tuple[int, bool]]]]] = []
    for root in _ints(attrs, "tree_roots"):
        leaves: list[tuple[int, list[tuple[int, bool]]]] = []
        if true_leaf[root] and false_leaf[root] and true_ids[root] == false_ids[root]:
            leaves.append((true_ids[root], []))
        else:
            stack: list[tuple[int, list[tuple[int, bool]]]] = [(root, [])]
            while stack:
                node, path = stack.pop()
                for taken, child, leaf in ((True, true_ids[node], true_leaf[node]),
                                           (False, false_ids[node], false_leaf[node])):
                    if leaf:
                        leaves.append((child, [*path, (node, taken)]))
                    else:
                        stack.append((child, [*path, (node, taken)]))
        trees.append(leaves)
    if not trees or n_targets <= 0:
        raise ctx.error("expected tree_roots and n_targets > 0")
    n = x.shape[0]
    columns = []
    zeros = gb.constant(np.zeros((n, 1), x.dtype.np))
    fill = {2: np.finfo(x.dtype.np).max, 3: np.finfo(x.dtype.np).min}.get(aggregate, 0.0)
    for t in range(n_targets):
        total: Node = gb.constant(np.full((n, 1), fill, x.dtype.np))
        for leaves in trees:
            value: Node | None = None
            reached: Node | None = None
            for leaf, path in leaves:
                if targets[leaf] != t:
                    continue
                on: Node | None = None
                for node, taken in path:
                    c = condition(node) if taken else ew.logical_not(condition(node))
                    on = c if on is None else ew.logical_and(on, c)
                here = on if on is not None else gb.constant(np.ones((n, 1), np.bool_))
                term = ew.where(here, float(weights[leaf]), zeros)
                value = term if value is None else ew.add(value, term)
                reached = here if reached is None else ew.logical_or(reached, here)
            if value is None or reached is None:
                continue
            if aggregate in (0, 1):
                total = ew.add(total, value if aggregate else ew.div(value, float(len(trees))))
            else:
                pick = ew.minimum if aggregate == 2 else ew.maximum
                total = ew.where(reached, pick(total, value), total)
        columns.append(total)
    return [join.concat(columns, 1) if len(columns) > 1 else columns[0]]

