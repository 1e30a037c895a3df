"""ONNX Scan and Loop unrolled at import: one converted copy of the body per step.

The control-flow rules (`rules/control.py`) use this where a graphc loop cannot hold the
body: the body needs its iteration's values at import (a `Slice` whose starts are the
iteration counter), a carried value changes shape from step to step, a Loop's scan outputs
stop at a data-dependent step, or every operand is known at import (the loop then folds to
arrays, as shape arithmetic does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from graphc.onnx.convert import Context, Value, axis_of
from graphc.onnx.rules.subgraph import run_subgraph
from graphc.ops import join, layout, slicing

# Unrolling beyond this many iterations is refused (the graph would grow without bound).
MAX_UNROLL = 4096


@dataclass
class ScanSpec:
    """An ONNX Scan (opset 9+) read from its node: `states` carried, `scans` sliced along
    `axes` (backward where `backward`), the body's scan outputs stacked along `out_axes`
    (reversed where `out_backward`), for `length` steps."""

    body: Any
    states: list[Value]
    scans: list[Value]
    axes: list[int]
    backward: list[bool]
    out_axes: list[int]
    out_backward: list[bool]
    length: int

    @property
    def num_outputs(self) -> int:
        return len(self.body.output) - len(self.states)


def slice_step(x: Value, axis: int, index: int) -> Value:
    """x's slice at `index` along `axis`, the axis removed."""
    if isinstance(x, np.ndarray):
        return np.asarray(np.take(x, index, axis=axis))  # a 0-d array, not a numpy scalar
    return layout.squeeze(slicing.slice(x, [index], [index + 1], axes=[axis]), axis)


def stack(ctx: Context, parts: list[Value], axis: int) -> Value:
    if all(isinstance(p, np.ndarray) for p in parts):
        return np.stack([np.asarray(p) for p in parts], axis)
    return join.stack([ctx.node(p) for p in parts], axis)


def unroll_scan(ctx: Context, spec: ScanSpec) -> list[Value]:
    """The body run once per step, unrolled: the states carried from step to step, the
    scan outputs stacked along their axes (reversed where the directions say)."""
    if spec.length > MAX_UNROLL:
        raise ctx.error(f"the body cannot be a graphc loop and {spec.length} steps are more "
                        f"than the {MAX_UNROLL} graphc unrolls")
    n, k, length = len(spec.states), spec.num_outputs, spec.length
    states = list(spec.states)
    collected: list[list[Value]] = [[] for _ in range(k)]
    for t in range(length):
        steps = [slice_step(s, a, length - 1 - t if b else t)
                 for s, a, b in zip(spec.scans, spec.axes, spec.backward)]
        outs = run_subgraph(ctx, spec.body, [*states, *steps])
        states = outs[:n]
        for j in range(k):
            collected[j].append(outs[n + j])
    results: list[Value] = list(states)
    for j in range(k):
        parts = collected[j][::-1] if spec.out_backward[j] else collected[j]
        rank = len(parts[0].shape) + 1
        results.append(stack(ctx, parts, axis_of(spec.out_axes[j], rank, ctx)))
    return results


def unroll_loop(ctx: Context, body: Any, limit: int | None, go: bool,
                states: list[Value], why: str) -> list[Value]:
    """The body unrolled for as many iterations as the trip count `limit` and the
    condition allow, both known at import (the body's condition output too, step by step):
    the loop-carried values passed on, the scan outputs stacked along a new first axis.
    `why` (the loop is unrolled because ...) is part of the error when a condition is
    computed at run time."""
    n = len(states)
    k = len(body.output) - 1 - n
    collected: list[list[Value]] = [[] for _ in range(k)]
    i = 0
    while go and (limit is None or i < limit):
        if i >= MAX_UNROLL:
            raise ctx.error(f"more than {MAX_UNROLL} iterations to unroll (the body cannot "
                            "be a graphc loop: see the Loop rule)")
        outs = run_subgraph(ctx, body, [np.array(i, np.int64), np.array(go), *states])
        flag = outs[0]
        if not isinstance(flag, np.ndarray):
            raise ctx.needs_value(
                f"the body's condition is computed at run time, and the loop is unrolled "
                f"because {why}: the condition must be known when the model is imported")
        go = bool(flag.reshape(-1)[0])
        states = outs[1:1 + n]
        for j in range(k):
            collected[j].append(outs[1 + n + j])
        i += 1
    if k and i == 0:
        raise ctx.error("no iteration runs: the scan outputs would be empty, which graphc does "
                        "not build")
    return [*states, *(stack(ctx, parts, 0) for parts in collected)]
