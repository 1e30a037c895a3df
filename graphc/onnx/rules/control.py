"""Subgraphs: ONNX's If with a condition known at import, and `run_subgraph`, which
converts an attribute subgraph (If's branches, FlexAttention's score and probability
modifiers) node by node with graphc's rules.

graphc graphs are static, so If takes the branch its condition selects when the model is
imported; a condition computed at run time is refused. A subgraph reads its own inputs
and initializers, then the enclosing graph's values by name (`Context.scope`).
"""

from __future__ import annotations

from collections import ChainMap
from typing import Any

import numpy as np

from graphc.onnx.convert import Context, Value, lookup, rule
from graphc.onnx.model import require_onnx, rule_key, tensor_array

Inputs = list[Value | None]


def _attributes(node: Any, onnx: Any) -> dict[str, Any]:
    """A subgraph node's attributes as the importer reads a model node's."""
    attrs: dict[str, Any] = {}
    for a in node.attribute:
        value = onnx.helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif isinstance(value, onnx.TensorProto):
            value = tensor_array(value, f"attribute '{a.name}'")
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode("utf-8", "replace") for v in value]
        attrs[a.name] = value
    return attrs


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
                  _attributes(node, onnx))
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
