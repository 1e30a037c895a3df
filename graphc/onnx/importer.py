"""`gc.onnx.load`: an ONNX model becomes a graphc `Graph` with a signature "main".

The walk: the model's inputs become placeholders (symbolic dims bound from `dims`, whole
shapes from `shapes`), its initializers variables (float: trainable unless told otherwise)
or known arrays (integers: shapes, axes, indices), then every node in the file's order goes
through its conversion rule (`graphc.onnx.convert`). Before anything is built the whole
model is checked for ops without a rule at its opset, and all of them are reported in one
error with the versions graphc has. Outputs that are known at import become constants.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from graphc import builder as gb
from graphc.errors import GraphcError
from graphc.ir import Graph, Node
from graphc.onnx import rules as _rules  # noqa: F401 (registers the rules)
from graphc.onnx.convert import Context, Value, lookup, read_attributes, valid_name, versions
from graphc.onnx.model import (
    NUMPY_DTYPES,
    OnnxError,
    graphc_dtype,
    read_model,
    require_onnx,
    rule_key,
    tensor_array,
)
from graphc.ops import layout

MAX_DIM = 1 << 40  # a dimension beyond this is an error, not an allocation attempt


def load(source: str | os.PathLike[str] | bytes | Any, *,
         dims: Mapping[str, int] | None = None,
         shapes: Mapping[str, Sequence[int]] | None = None,
         trainable: bool = True, constants: Mapping[str, Any] | None = None,
         name: str | None = None) -> Graph:
    """Import an ONNX model (a path, bytes or an `onnx.ModelProto`) as a graphc Graph.

    The graph has a signature "main" whose inputs and outputs are the model's, in order
    (names made valid graphc names: characters other than letters, digits, `_./-` become
    `_`). Float initializers become variables (`trainable=False`: constants). `dims` binds
    symbolic dimensions by name; `shapes` fixes an input's whole shape by its ONNX name.
    `constants` gives inputs fixed values by name: they are known at import (a `Reshape`'s
    shape or a reduction's axes given as model inputs) and leave the signature. Element
    types graphc has no type for are computed in a wider one (`model.WIDENED`: float16 in
    float32, uint8 in int32, ...).
    Raises `GraphcError` for anything graphc cannot import, naming the node and the reason.
    """
    model = read_model(source, lift=True)
    onnx = require_onnx()
    graph_proto = model.proto.graph
    _check_supported(model.proto, model.opset, model.origin)
    g = Graph(name or valid_name(graph_proto.name or "onnx_model"))
    ctx = Context(g, model.opset, domain_opsets=model.domains)
    for vi in [*graph_proto.input, *graph_proto.value_info, *graph_proto.output]:
        if vi.type.HasField("tensor_type"):
            ctx.value_types[vi.name] = vi.type.tensor_type.elem_type
    for t in graph_proto.initializer:
        ctx.value_types[t.name] = t.data_type
    values: dict[str, Value] = {}
    ctx.scope = values
    with g:
        init_names = {t.name for t in graph_proto.initializer}
        for i, t in enumerate(graph_proto.initializer):
            values[t.name] = _initializer(ctx, t, trainable, model.folder, model.data.get(i))
        inputs: list[Node] = []
        for vi in graph_proto.input:
            if vi.name in init_names:
                continue  # older exporters list initializers as inputs too
            if constants and vi.name in constants:
                values[vi.name] = _given(vi, constants[vi.name])
                continue
            node = _placeholder(ctx, vi, dims or {}, shapes or {})
            values[vi.name] = node
            inputs.append(node)
        for i, proto_node in enumerate(graph_proto.node):
            _convert_node(ctx, proto_node, i, values, onnx)
        outputs: list[Node] = []
        for vi in graph_proto.output:
            if vi.name not in values:
                raise OnnxError(f"{model.origin}: output '{vi.name}' is computed by no node")
            node = ctx.node(values[vi.name])
            want = valid_name(vi.name)
            if node.name != want and want not in g:
                # The output carries its ONNX name (the C header's port, a saved model's
                # output): a same-shape reshape, a view that the compiler removes.
                node = layout.reshape(node, node.shape, name=want)
            outputs.append(node)
    try:
        g.add_signature("main", inputs, outputs)
    except GraphcError as exc:
        raise OnnxError(f"{model.origin}: {exc.message}") from None
    return g


def _check_supported(proto: Any, opset: int, origin: str) -> None:
    missing: dict[str, list[str]] = {}  # op (domain-qualified outside ONNX's) -> nodes
    domains = {o.domain: o.version for o in proto.opset_import}
    version: dict[str, int] = {}  # op -> the opset of its domain
    for i, node in enumerate(proto.graph.node):
        op = rule_key(node.domain, node.op_type)
        version[op] = opset if op == node.op_type else domains.get(node.domain, 1)
        if lookup(op, version[op]) is None:
            missing.setdefault(op, []).append(node.name or f"#{i}")
    if not missing:
        return
    lines = []
    for op, names in sorted(missing.items()):
        have = versions(op)
        hint = (f"graphc has versions {', '.join(map(str, have))}" if have
                else "graphc has no rule for it")
        shown = ", ".join(repr(n) for n in names[:5]) + (" ..." if len(names) > 5 else "")
        lines.append(f"  {op} (opset {version[op]}): nodes {shown}; {hint}")
    raise OnnxError(f"{origin}: {len(missing)} unsupported op(s):\n" + "\n".join(lines))


def _initializer(ctx: Context, tensor: Any, trainable: bool, folder: Any,
                 lifted: np.ndarray | None) -> Value:
    # A trainable float initializer becomes a variable, which training writes: it gets its
    # own copy; everything else becomes a constant, which may view the model's bytes.
    what = f"initializer '{tensor.name}'"
    floating = graphc_dtype(tensor.data_type, what).is_float
    array = tensor_array(tensor, what, folder, copy=floating and trainable, values=lifted)
    if array.dtype.kind == "f" and trainable:
        return gb.variable(array, name=ctx.unique_name(tensor.name), trainable=True)
    # A value known at import: used as a constant, folded with what else is known
    # (a transposed weight, batch-norm parameters), and open to the compiler's constant
    # rewrites (Winograd convolutions need constant weights).
    return array


def _given(vi: Any, value: Any) -> np.ndarray:
    """An input given a fixed value at import (`constants`), in its graphc dtype."""
    what = f"input '{vi.name}'"
    tt = vi.type.tensor_type
    dtype = graphc_dtype(tt.elem_type, what)
    try:
        array = np.array(value, dtype=NUMPY_DTYPES[dtype], copy=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise OnnxError(f"{what}: the given value is not {dtype} ({exc})") from None
    if tt.HasField("shape") and len(tt.shape.dim) != array.ndim:
        raise OnnxError(f"{what}: the given value has rank {array.ndim}, the model says "
                        f"{len(tt.shape.dim)}")
    return array


def _placeholder(ctx: Context, vi: Any, dims: Mapping[str, int],
                 shapes: Mapping[str, Sequence[int]]) -> Node:
    what = f"input '{vi.name}'"
    tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
    if tt is None:
        raise OnnxError(f"{what}: only tensor inputs are supported")
    dtype = graphc_dtype(tt.elem_type, what)
    if vi.name in shapes:
        shape = [int(d) for d in shapes[vi.name]]
    else:
        if not tt.HasField("shape"):
            raise OnnxError(f"{what}: the model gives no shape; pass shapes={{'{vi.name}': "
                            "(...)}}")
        shape = []
        for k, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value") and d.dim_value >= 0:
                shape.append(int(d.dim_value))
            elif d.HasField("dim_param") and d.dim_param in dims:
                shape.append(int(dims[d.dim_param]))
            else:
                if d.HasField("dim_param"):
                    raise OnnxError(
                        f"{what}: dimension {k} is '{d.dim_param}' and unbound; bind it with "
                        f"dims={{'{d.dim_param}': N}} (graphc command: --dim "
                        f"{d.dim_param}=N) or give the shape with shapes={{'{vi.name}': "
                        "(...)}")
                raise OnnxError(f"{what}: dimension {k} is unnamed and unknown; give the "
                                f"shape with shapes={{'{vi.name}': (...)}}")
    for d in shape:
        if not 0 <= d <= MAX_DIM:
            raise OnnxError(f"{what}: dimension {d} out of range")
    return gb.placeholder(shape, dtype, name=ctx.unique_name(vi.name))


def _convert_node(ctx: Context, node: Any, index: int, values: dict[str, Value],
                  onnx: Any) -> None:
    ctx.node_name = node.name or f"#{index}"
    ctx.op_type = node.op_type
    ctx.num_outputs = len(node.output)
    ctx.input_types = [ctx.value_types.get(name) for name in node.input]
    inputs: list[Value | None] = []
    for name in node.input:
        if not name:
            inputs.append(None)
        elif name not in values:
            raise ctx.error(f"input '{name}' is not computed before this node (the graph is "
                            "not in topological order, or the value does not exist)")
        else:
            inputs.append(values[name])
    attrs = read_attributes(ctx, node, onnx)
    op = rule_key(node.domain, node.op_type)
    fn = lookup(op, ctx.opset if op == node.op_type else ctx.domain_opsets.get(node.domain, 1))
    assert fn is not None  # _check_supported ran
    try:
        outputs = fn(ctx, inputs, attrs)
    except GraphcError as exc:
        if isinstance(exc, OnnxError) or exc.message.startswith(f"{node.op_type} node"):
            raise
        raise ctx.error(exc.message) from None
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise ctx.error(f"{type(exc).__name__}: {exc}") from None
    for name, out in zip(node.output, outputs):
        if name:
            # numpy folds of 0-d values return scalars (np.int64), which are values too.
            values[name] = np.asarray(out) if isinstance(out, np.generic) else out
    if len(outputs) < len([n for n in node.output if n]):
        raise ctx.error(f"{len(node.output)} outputs requested; graphc computes "
                        f"{len(outputs)}")

