"""ONNX's If, Scan and Loop: onto graphc's region ops, folded or unrolled where that is
what the model needs.

- **If**: a condition known at import takes its branch then (the other is never
  converted); a run-time condition becomes a `cond` of both branches
  (`control_regions.if_cond`).
- **Scan** (opset 9; opset 8 per batch row): a `scan` over the body converted once
  (`control_regions.scan_region`).
- **Loop**: a trip count known at import and a condition provably always true make a
  `scan` of that length, the scan outputs stacked; any other loop without scan outputs a
  `while_loop`. A Loop with scan outputs whose condition is computed at run time has
  outputs of a data-dependent length: it is unrolled when its trip count and conditions
  fold at import and otherwise refused with an error saying they must be known then (the
  ONNX backend then retries with the inputs given at import).

A loop is unrolled at import instead (`control_unroll`) when every operand is known at
import and the body reads nothing else (it then folds to arrays, as shape arithmetic
does), or when the body cannot be a graphc body: it needs its iteration's values at import
(a `Slice` whose starts are the iteration counter) or a carried value changes shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from graphc.onnx.convert import Context, Value, all_known, axis_of, rule
from graphc.onnx.rules.control_regions import (
    NotAlwaysTrueError,
    if_cond,
    loop_scan,
    loop_while,
    scan_region,
)
from graphc.onnx.rules.control_unroll import (
    MAX_UNROLL,
    ScanSpec,
    slice_step,
    stack,
    unroll_loop,
    unroll_scan,
)
from graphc.onnx.rules.subgraph import UnrollError, fold_at_import, run_subgraph

__all__ = ["MAX_UNROLL", "run_subgraph"]

Inputs = list[Value | None]

# A Loop of more iterations than this is no fixed-length scan (exporters write "forever" as
# a trip count of 2**63 - 1 and stop on the condition): it becomes a while_loop.
MAX_SCAN_LENGTH = 2**31 - 1


def _folded(fn: Callable[[], list[Value]]) -> list[Value] | None:
    """`fn()`'s results if they are all known at import (see `fold_at_import`)."""
    out = fold_at_import(fn)
    return out if out is not None and all(isinstance(v, np.ndarray) for v in out) else None


@rule("If", 1)
def _if(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """then_branch or else_branch, as the condition selects: at import when it is known,
    else a `cond`."""
    then, other = attrs.get("then_branch"), attrs.get("else_branch")
    if then is None or other is None:
        raise ctx.error("then_branch or else_branch is missing")
    if not inputs or inputs[0] is None:
        raise ctx.error("input 'cond' is missing")
    cond = ctx.known(inputs[0])
    if cond is None:
        return if_cond(ctx, inputs[0], then, other)
    if cond.size != 1:
        raise ctx.error(f"cond has {cond.size} values; expected one")
    outs = run_subgraph(ctx, then if bool(cond.reshape(-1)[0]) else other, [])
    if len(outs) < ctx.num_outputs:
        raise ctx.error(f"the branch gives {len(outs)} outputs; the node has "
                        f"{ctx.num_outputs}")
    return outs


def _scan_spec(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> ScanSpec:
    body = attrs.get("body")
    m = int(attrs.get("num_scan_inputs", 0))
    if body is None or not 0 < m <= len(inputs) or any(v is None for v in inputs):
        raise ctx.error(f"expected a body and {m} > 0 scan inputs among {len(inputs)}")
    n = len(inputs) - m
    values = [v for v in inputs if v is not None]
    states, scans = values[:n], values[n:]
    axes = [axis_of(int(a), len(s.shape), ctx)
            for a, s in zip(attrs.get("scan_input_axes", [0] * m), scans)]
    backward = [bool(int(d)) for d in attrs.get("scan_input_directions", [0] * m)]
    lengths = {s.shape[a] for s, a in zip(scans, axes)}
    if len(lengths) != 1:
        raise ctx.error(f"the scan inputs have different lengths {sorted(lengths)}")
    k = len(body.output) - n
    if k < 0 or len(body.input) != n + m:
        raise ctx.error(f"the body takes {len(body.input)} inputs and gives "
                        f"{len(body.output)} outputs; the node has {n} states and {m} scan "
                        "inputs")
    out_axes = [int(a) for a in attrs.get("scan_output_axes", [0] * k)]
    out_backward = [bool(int(d)) for d in attrs.get("scan_output_directions", [0] * k)]
    if len(axes) != m or len(backward) != m or len(out_axes) != k or len(out_backward) != k:
        raise ctx.error("scan_input_axes/directions need one entry per scan input and "
                        "scan_output_axes/directions one per scan output")
    spec = ScanSpec(body, states, scans, axes, backward, out_axes, out_backward, lengths.pop())
    if spec.length == 0:
        raise ctx.error("a scan of length 0 gives empty outputs, which graphc does not build")
    return spec


@rule("Scan", 9)
def _scan(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """A `scan` of the body (unrolled when everything is known at import, or when the body
    cannot be a graphc body)."""
    spec = _scan_spec(ctx, inputs, attrs)
    if all_known(inputs) and spec.length <= MAX_UNROLL:
        folded = _folded(lambda: unroll_scan(ctx, spec))
        if folded is not None:
            return folded
    try:
        return scan_region(ctx, spec)
    except UnrollError:
        return unroll_scan(ctx, spec)


@rule("Scan", 8)
def _scan8(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """Scan-8: every input and output has a batch axis 0, the scan inputs their sequence on
    axis 1; each batch row is scanned as Scan-9 scans (sequence_lens must be the full
    length, when given)."""
    lens = inputs[0] if inputs else None
    rest = inputs[1:]
    m = int(attrs.get("num_scan_inputs", 0))
    if attrs.get("body") is None or not 0 < m <= len(rest) or any(v is None for v in rest):
        raise ctx.error(f"expected a body and {m} > 0 scan inputs among {len(rest)}")
    values = [v for v in rest if v is not None]
    batch, length = values[-1].shape[0], values[-1].shape[1]
    if lens is not None and np.any(ctx.need_known(lens, "sequence_lens") != length):
        raise ctx.error(f"sequence_lens other than the full length {length} are not "
                        "supported")
    directions = [int(d) for d in attrs.get("directions", [0] * m)]
    per_row = []
    for b in range(batch):
        row: Inputs = [slice_step(v, 0, b) for v in values]
        per_row.append(_scan(ctx, row, {"body": attrs["body"], "num_scan_inputs": m,
                                        "scan_input_directions": directions}))
    return [stack(ctx, [r[j] for r in per_row], 0) for j in range(len(per_row[0]))]


def _one(ctx: Context, v: np.ndarray, what: str) -> np.ndarray:
    if v.size != 1:
        raise ctx.error(f"{what} has {v.size} values; expected one")
    return v.reshape(-1)[0]  # type: ignore[no-any-return]


@rule("Loop", 1)
def _loop(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """A `scan`, a `while_loop`, or the body unrolled (see the module docstring)."""
    body = attrs.get("body")
    if body is None:
        raise ctx.error("the body is missing")
    trip = inputs[0] if inputs else None
    cond = inputs[1] if len(inputs) > 1 else None
    states = [v for v in inputs[2:] if v is not None]
    if trip is None and cond is None:
        raise ctx.error("neither a trip count nor a condition: the loop does not end")
    n = len(states)
    k = len(body.output) - 1 - n
    if k < 0 or len(body.input) != 2 + n:
        raise ctx.error(f"the body takes {len(body.input)} inputs and gives "
                        f"{len(body.output)} outputs for {n} loop-carried values")
    known_trip, known_cond = ctx.known(trip), ctx.known(cond)
    limit = None if known_trip is None else int(_one(ctx, known_trip, "M"))
    go = None if known_cond is None else bool(_one(ctx, known_cond, "cond"))
    entered = cond is None or go is True  # the first iteration runs if the count allows

    def unroll(why: str) -> list[Value]:
        if trip is not None and limit is None:
            raise ctx.needs_value(f"input 'M' must be known when the model is imported: the "
                                  f"loop is unrolled because {why}")
        if cond is not None and go is None:
            raise ctx.needs_value(f"input 'cond' must be known when the model is imported: "
                                  f"the loop is unrolled because {why}")
        return unroll_loop(ctx, body, limit, True, states, why)

    if go is False or limit == 0:  # no iteration runs
        if k:
            raise ctx.error("no iteration runs: the scan outputs would be empty, which graphc "
                            "does not build")
        return list(states)
    if all_known(inputs) and limit is not None and limit <= MAX_UNROLL and entered:
        folded = _folded(lambda: unroll_loop(ctx, body, limit, True, states, "it folds"))
        if folded is not None:
            return folded
    try:
        if limit is not None and entered and limit <= MAX_SCAN_LENGTH:
            try:
                return loop_scan(ctx, body, limit, states)
            except NotAlwaysTrueError:
                pass  # a while loop, or unrolled below
        if k:
            return unroll(f"its {k} scan output(s) would stop at a data-dependent iteration "
                          "(graphc shapes are static)")
        return loop_while(ctx, body, trip, cond, states)
    except UnrollError as exc:
        return unroll(str(exc))
