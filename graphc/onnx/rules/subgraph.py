"""ONNX subgraphs (If's branches, Loop and Scan bodies, FlexAttention's score modifiers)
converted node by node with graphc's rules, and what the control-flow rules share.

A subgraph reads its own inputs and initializers, then the enclosing graph's values by
name (`Context.scope`). Converted while a graphc body is traced (`gc.scan`, `gc.cond`,
`gc.while_loop`), every enclosing-graph node it reads becomes a capture of the body
(`ops.trace`); converted at the top level (a branch folded at import, an unrolled step) it
simply reads them.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from graphc.ir import Graph, Node
from graphc.onnx.convert import (
    Context,
    NeedsValueError,
    Value,
    dtype_of,
    lookup,
    read_attributes,
    shape_of,
)
from graphc.onnx.model import require_onnx, rule_key, tensor_array
from graphc.ops import layout

Inputs = list[Value | None]
T = TypeVar("T")


def run_subgraph(ctx: Context, graph: Any, args: Sequence[Value]) -> list[Value]:
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
    try:
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
    finally:
        # Restored on errors too: Loop and Scan catch some to unroll instead (`UnrollError`).
        ctx.node_name, ctx.op_type, ctx.num_outputs, ctx.input_types, ctx.scope = saved
    absent = [o.name for o in graph.output if o.name not in values]
    if absent:
        raise ctx.error(f"subgraph '{graph.name}' does not compute {absent[0]!r}")
    return [values[o.name] for o in graph.output]


class UnrollError(Exception):
    """Raised while a loop body is traced into a graphc body when the body cannot be one
    (it needs its iteration's values at import, or a carried value changes shape): the
    rule unrolls the loop instead. Never escapes the control-flow rules."""


def same_type(a: Value, b: Value) -> bool:
    return shape_of(a) == shape_of(b) and dtype_of(a) == dtype_of(b)


def type_text(v: Value) -> str:
    return f"{dtype_of(v)}{list(shape_of(v))}"


class _EscapesError(Exception):
    """The probe read a value of an enclosing graph (it is not all known at import)."""


def fold_at_import(fn: Callable[[], T]) -> T | None:
    """`fn()` if it computes only from values known at import (so control flow over known
    values folds to arrays, as shape arithmetic does), else None. `fn` runs in a scratch
    graph that refuses to read any other graph's node; what it builds there is dropped.
    The caller checks that the results are arrays."""
    probe = Graph("import_fold")

    def refuse(node: Node) -> Node:
        raise _EscapesError

    probe.capture = refuse
    try:
        with probe:
            return fn()
    except (_EscapesError, NeedsValueError):
        return None
    finally:
        probe.capture = None


def scalar(ctx: Context, v: Value, what: str) -> Node:
    """A one-element value (ONNX conditions and trip counts are shape () or [1]) as a
    graphc scalar node."""
    if int(np.prod(shape_of(v))) != 1:
        raise ctx.error(f"{what} has shape {list(shape_of(v))}; expected one value")
    if isinstance(v, np.ndarray):
        return ctx.node(v.reshape(()))
    return v if v.shape == () else layout.reshape(v, ())
