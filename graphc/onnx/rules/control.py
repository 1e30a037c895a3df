"""Subgraphs: ONNX's If with a condition known at import, Scan unrolled over its static
length, Loop unrolled over iterations known at import, and `run_subgraph`, which converts
an attribute subgraph (If's branches, loop bodies, FlexAttention's score and probability
modifiers) node by node with graphc's rules.

graphc graphs are static, so If takes the branch its condition selects when the model is
imported; a condition computed at run time is refused. A subgraph reads its own inputs
and initializers, then the enclosing graph's values by name (`Context.scope`).
"""

from __future__ import annotations

from collections import ChainMap
from typing import Any

import numpy as np

from graphc.onnx.convert import Context, Value, axis_of, lookup, read_attributes, rule
from graphc.onnx.model import require_onnx, rule_key, tensor_array
from graphc.ops import join, layout, slicing

Inputs = list[Value | None]


def run_subgraph(ctx: Context, graph: Any, args: list[Value]) -> list[Value]:
    """The outputs of subgraph `graph` (a GraphProto) given its inputs `args`."""
    onnx = require_onnx()
    if len(graph.input) != len(args):
        raise ctx.error(f"subgraph '{graph.name}' takes {len(graph.input)} inputs; "
                        f"{len(args)} given")
    saved = (ctx.node_name, ctx.op_type, ctx.num_outputs, ctx.input_types, ctx.scope)
    local: dict[str, Value] = {vi.name: a for vi, a in zip(graph.input, args)}
    types = {t.name: t.data_type for t in graph.initializer}
    for t in graph.initializer:
        local[t.name] = tensor_array(t, f"initializer '{t.name}' of '{graph.name}'")
    values = ChainMap(local, ctx.scope)
    ctx.scope = values  # a subgraph inside this one reads this one's values too
    for i, node in enumerate(graph.node):
        ctx.node_name, ctx.op_type = node.name or f"{graph.name}#{i}", node.op_type
        op = rule_key(node.domain, node.op_type)
        fn = lookup(op, ctx.opset if op == node.op_type
                    else ctx.domain_opsets.get(node.domain, 1))
        if fn is None:
            raise ctx.error(f"subgraph op {op} has no rule at this opset")
        missing = [n for n in node.input if n and n not in values]
        if missing:
            raise ctx.error(f"subgraph '{graph.name}' reads {missing[0]!r}, which is not "
                            "computed before it")
        ctx.num_outputs = len(node.output)
        ctx.input_types = [types.get(n, ctx.value_types.get(n)) for n in node.input]
        outs = fn(ctx, [values[n] if n else None for n in node.input],
                  read_attributes(ctx, node, onnx))
        local.update({n: np.asarray(o) if isinstance(o, np.generic) else o
                      for n, o in zip(node.output, outs) if n})
    ctx.node_name, ctx.op_type, ctx.num_outputs, ctx.input_types, ctx.scope = saved
    absent = [o.name for o in graph.output if o.name not in values]
    if absent:
        raise ctx.error(f"subgraph '{graph.name}' does not compute {absent[0]!r}")
    return [values[o.name] for o in graph.output]


@rule("If", 1)
def _if(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """The outputs of then_branch or else_branch, as the condition (known at import)
    selects."""
    cond = ctx.need_known(inputs[0] if inputs else None, "cond")
    if cond.size != 1:
        raise ctx.error(f"cond has {cond.size} values; expected one")
    branch = attrs.get("then_branch" if bool(cond.reshape(-1)[0]) else "else_branch")
    if branch is None:
        raise ctx.error("then_branch or else_branch is missing")
    outs = run_subgraph(ctx, branch, [])
    if len(outs) < ctx.num_outputs:
        raise ctx.error(f"the branch gives {len(outs)} outputs; the node has "
                        f"{ctx.num_outputs}")
    return outs


def _slice_step(ctx: Context, x: Value, axis: int, index: int) -> Value:
    """x's slice at `index` along `axis`, the axis removed."""
    if isinstance(x, np.ndarray):
        return np.take(x, index, axis=axis)
    return layout.squeeze(slicing.slice(x, [index], [index + 1], axes=[axis]), axis)


def _stack(ctx: Context, parts: list[Value], axis: int) -> Value:
    if all(isinstance(p, np.ndarray) for p in parts):
        return np.stack([np.asarray(p) for p in parts], axis)
    return join.stack([ctx.node(p) for p in parts], axis)


@rule("Scan", 9)
def _scan(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """The body run once per step of the scan inputs (the static length of their scan
    axes), unrolled: the state variables carried from step to step, the scan outputs
    stacked along their axes (reversed where the directions say)."""
    body = attrs.get("body")
    m = int(attrs.get("num_scan_inputs", 0))
    if body is None or not 0 < m <= len(inputs) or any(v is None for v in inputs):
        raise ctx.error(f"expected a body and {m} > 0 scan inputs among {len(inputs)}")
    n = len(inputs) - m
    states: list[Value] = [v for v in inputs[:n] if v is not None]
    scans = [v for v in inputs[n:] if v is not None]
    axes = [int(a) for a in attrs.get("scan_input_axes", [0] * m)]
    axes = [axis_of(a, len(s.shape), ctx) for a, s in zip(axes, scans)]
    backward = [int(d) for d in attrs.get("scan_input_directions", [0] * m)]
    lengths = {s.shape[a] for s, a in zip(scans, axes)}
    if len(lengths) != 1:
        raise ctx.error(f"the scan inputs have different lengths {sorted(lengths)}")
    length = lengths.pop()
    k = len(body.output) - n
    out_axes = [int(a) for a in attrs.get("scan_output_axes", [0] * k)]
    out_backward = [int(d) for d in attrs.get("scan_output_directions", [0] * k)]
    collected: list[list[Value]] = [[] for _ in range(k)]
    for t in range(length):
        steps = [_slice_step(ctx, s, a, length - 1 - t if b else t)
                 for s, a, b in zip(scans, axes, backward)]
        outs = run_subgraph(ctx, body, [*states, *steps])
        states = outs[:n]
        for j in range(k):
            collected[j].append(outs[n + j])
    if length == 0:
        raise ctx.error("a scan of length 0 gives empty outputs, which graphc does not build")
    results: list[Value] = list(states)
    for j in range(k):
        parts = collected[j][::-1] if out_backward[j] else collected[j]
        rank = len(parts[0].shape) + 1
        results.append(_stack(ctx, parts, axis_of(out_axes[j], rank, ctx)))
    return results


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
        row = [_slice_step(ctx, v, 0, b) for v in values]
        per_row.append(_scan(ctx, row, {"body": attrs["body"], "num_scan_inputs": m,
                                        "scan_input_directions": directions}))
    return [_stack(ctx, [r[j] for r in per_row], 0) for j in range(len(per_row[0]))]


# Unrolling beyond this many iterations is refused (the graph would grow without bound).
MAX_UNROLL = 4096


@rule("Loop", 1)
def _loop(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """The body unrolled for as many iterations as the trip count and the condition allow,
    both known at import (the body's condition output too, step by step): the loop-carried
    values passed on, the scan outputs stacked along a new first axis."""
    body = attrs.get("body")
    if body is None:
        raise ctx.error("the body is missing")
    trip = inputs[0] if inputs else None
    cond = inputs[1] if len(inputs) > 1 else None
    states = [v for v in inputs[2:] if v is not None]
    if trip is None and cond is None:
        raise ctx.error("neither a trip count nor a condition: the loop does not end")
    limit = int(ctx.need_known(trip, "M").reshape(-1)[0]) if trip is not None else None
    go = bool(ctx.need_known(cond, "cond").reshape(-1)[0]) if cond is not None else True
    n = len(states)
    k = len(body.output) - 1 - n
    collected: list[list[Value]] = [[] for _ in range(k)]
    i = 0
    while go and (limit is None or i < limit):
        if i >= MAX_UNROLL:
            raise ctx.error(f"more than {MAX_UNROLL} iterations to unroll")
        outs = run_subgraph(ctx, body, [np.array(i, np.int64), np.array(go), *states])
        flag = outs[0]
        if not isinstance(flag, np.ndarray):
            raise ctx.error("the body's condition is computed at run time; graphc unrolls "
                            "loops whose iterations are known at import")
        go = bool(flag.reshape(-1)[0])
        states = outs[1:1 + n]
        for j in range(k):
            collected[j].append(outs[1 + n + j])
        i += 1
    if k and i == 0:
        raise ctx.error("no iteration runs: the scan outputs would be empty, which graphc "
                        "does not build")
    return [*states, *(_stack(ctx, parts, 0) for parts in collected)]
