"""ONNX If, Scan and Loop as graphc's region ops: `cond`, `scan` and `while_loop`.

The ONNX body is converted once, node by node, while `gc.scan` / `gc.cond` /
`gc.while_loop` trace it into a graphc body; enclosing-graph values the ONNX body reads
by name become the region's captures (`ops.trace`), at every nesting level. So the
imported graph holds one body whatever the trip count.

- **Scan** (opset 9+) -> `scan`: scan inputs on another axis are transposed to axis 0
  first, scan outputs transposed back; directions become one `reverse` of the whole loop
  (when every scan input runs backward) plus a `reverse` of each input or output whose
  direction differs from it.
- **Loop** with a trip count known at import whose condition is provably always true ->
  `scan` of that length, carrying the iteration counter; the scan outputs are its stacked
  outputs. "Provably": the body is converted with its condition input known to be true
  (it is, whenever the body runs) and its condition output folds to true at import, so by
  induction every iteration runs.
- **Loop** otherwise -> `while_loop` carrying (iteration counter, condition, states...),
  testing `counter < M and condition`. Its scan outputs would have a data-dependent
  length, which static graphc shapes cannot hold: the rule unrolls such loops when their
  conditions fold at import and refuses them otherwise (`rules/control.py`).
- **If** with a condition computed at run time -> `cond`; both branches must give the
  same types.

A body that cannot be a graphc body raises `UnrollError` (the rule then unrolls): it needs
values of its iteration at import (`NeedsValueError`), or a carried value changes type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from graphc.ir import DType, Node
from graphc.onnx.convert import Context, NeedsValueError, Value, axis_of
from graphc.onnx.rules.control_unroll import ScanSpec
from graphc.onnx.rules.subgraph import UnrollError, run_subgraph, same_type, scalar, type_text
from graphc.ops import elementwise as ew
from graphc.ops import layout, slicing
from graphc.ops.control import cond, scan, while_loop


class NotAlwaysTrueError(Exception):
    """A Loop body's condition output does not fold to true: not a fixed-length scan."""


def _run_body(ctx: Context, body: Any, args: Sequence[Value]) -> list[Value]:
    try:
        return run_subgraph(ctx, body, args)
    except NeedsValueError as exc:
        raise UnrollError(f"the body needs a value at import ({exc.message})") from None


def _check_carry(ctx: Context, before: Sequence[Value], after: Sequence[Value]) -> None:
    for i, (a, b) in enumerate(zip(before, after)):
        if not same_type(a, b):
            raise UnrollError(f"loop-carried value {i} changes from {type_text(a)} to "
                         f"{type_text(b)}")


def _to_front(x: Node, axis: int) -> Node:
    if axis == 0:
        return x
    return layout.transpose(x, [axis, *(d for d in range(x.ndim) if d != axis)])


def _from_front(x: Node, axis: int) -> Node:
    if axis == 0:
        return x
    rest = list(range(1, x.ndim))
    return layout.transpose(x, [*rest[:axis], 0, *rest[axis:]])


def scan_region(ctx: Context, spec: ScanSpec) -> list[Value]:
    """ONNX Scan as one `scan` node (see the module docstring)."""
    whole = bool(spec.scans) and all(spec.backward)  # the scan runs backward
    xs = []
    for s, axis, backward in zip(spec.scans, spec.axes, spec.backward):
        x = _to_front(ctx.node(s), axis)
        xs.append(slicing.reverse(x, 0) if backward != whole else x)
    init = [ctx.node(s) for s in spec.states]
    n = len(init)

    def step(carry: list[Node], x_t: list[Node]) -> tuple[list[Value], list[Value]]:
        outs = _run_body(ctx, spec.body, [*carry, *x_t])
        _check_carry(ctx, carry, outs[:n])
        return list(outs[:n]), list(outs[n:])

    carry, ys = scan(step, init, xs, reverse=whole)
    results: list[Value] = list(carry)
    for j, y in enumerate(ys):
        if spec.out_backward[j] != whole:
            y = slicing.reverse(y, 0)
        results.append(_from_front(y, axis_of(spec.out_axes[j], y.ndim, ctx)))
    return results


def loop_scan(ctx: Context, body: Any, length: int, states: Sequence[Value]) -> list[Value]:
    """ONNX Loop of `length` iterations whose condition is always true, as a `scan`
    (raises NotAlwaysTrueError when the body's condition does not fold to true)."""
    n = len(states)
    init = [ctx.node(np.array(0, np.int64)), *(ctx.node(s) for s in states)]

    def step(carry: list[Node], _: Any) -> tuple[list[Value], list[Value]]:
        i, *current = carry
        outs = _run_body(ctx, body, [i, np.array(True), *current])
        flag = outs[0]
        if not (isinstance(flag, np.ndarray) and flag.size == 1 and bool(flag.reshape(-1)[0])):
            raise NotAlwaysTrueError
        _check_carry(ctx, current, outs[1:1 + n])
        return [i + 1, *outs[1:1 + n]], list(outs[1 + n:])

    carry, ys = scan(step, init, None, length=length)
    return [*carry[1:], *ys]


def loop_while(ctx: Context, body: Any, trip: Value | None, go: Value | None,
               states: Sequence[Value]) -> list[Value]:
    """ONNX Loop without scan outputs as a `while_loop` (see the module docstring)."""
    n = len(states)
    if len(body.output) != 1 + n:
        raise ctx.error(f"a loop with a run-time condition has {len(body.output) - 1 - n} "
                        "scan outputs")
    limit = None if trip is None else scalar(ctx, trip, "M")
    start = ctx.node(np.array(True)) if go is None else scalar(ctx, go, "cond")
    if start.dtype != DType.bool:
        raise ctx.error(f"cond is {start.dtype}; expected bool")
    init = [ctx.node(np.array(0, np.int64)), start, *(ctx.node(s) for s in states)]

    def test(carry: list[Node]) -> Node:
        i, c = carry[0], carry[1]
        return c if limit is None else ew.logical_and(ew.less(i, limit), c)

    def step(carry: list[Node]) -> list[Value]:
        i, _, *current = carry
        # The body runs only while the condition holds: its condition input is true.
        outs = _run_body(ctx, body, [i, np.array(True), *current])
        flag = scalar(ctx, outs[0], "the body's condition output")
        if flag.dtype != DType.bool:
            raise ctx.error(f"the body's condition output is {flag.dtype}; expected bool")
        _check_carry(ctx, current, outs[1:])
        return [i + 1, flag, *outs[1:]]

    carry = while_loop(test, step, init)
    return list(carry[2:])


def if_cond(ctx: Context, pred: Value, then: Any, other: Any) -> list[Value]:
    """ONNX If with a run-time condition as a `cond` of its two branches."""
    p = scalar(ctx, pred, "cond")
    if p.dtype != DType.bool:
        raise ctx.error(f"cond is {p.dtype}; expected bool")
    wanted = ctx.num_outputs
    first: list[Value] = []

    def branch(graph: Any, label: str) -> list[Value]:
        outs = run_subgraph(ctx, graph, [])
        if len(outs) != wanted:
            raise ctx.error(f"the {label} branch gives {len(outs)} outputs; the node has "
                            f"{wanted}")
        if not first:
            first.extend(outs)
        elif not all(same_type(a, b) for a, b in zip(first, outs)):
            shown = ", ".join(f"{type_text(a)} / {type_text(b)}" for a, b in zip(first, outs))
            raise ctx.needs_value(
                f"the branches give different types (then / else: {shown}); graphc shapes "
                "are static, so the condition must be known when the model is imported")
        return outs

    return list(cond(p, lambda: branch(then, "then"), lambda: branch(other, "else")))
