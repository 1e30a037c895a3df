"""prepack: constant matmul weights stored in the GEMM's panels once, at compile time.

The packed GEMM reads B in column panels of NR (its register block's width), so a matmul
whose B is a constant (an imported ONNX model's weights, a graph built with constants or
frozen; never a variable) would copy all of B into panels at every call: about a
tenth of the GEMM time of a small transformer's inference on Zen 3 (the `packn` function:
7 % of all samples, the micro-kernel 59 %). This step packs such a B once, with numpy, into
exactly the panels the GEMM reads in place (`graphc.ops.panels`) and marks the matmul
`b_panels=NR` (B transposed is packed as its transpose, `transpose_b` then False); the
reference and the lowering read B that way. ONNX Runtime's MLAS prepacks constant weights
the same way when a session is created, as `conv.prepack` does here for convolutions.

Only where it pays and keeps the threads busy: a float32 or float64 2-D B of at least one
whole panel that the GEMM would pack (not a matrix-vector product, which reads B in place;
a B narrower than NR is all "narrower last panel", packed at every call anyway), read by
nothing but such
matmuls with one layout, and whose GEMM still splits across the threads (a B in panels
splits by rows, or by columns in whole panels: `gemm.matmul.split_spec`). The layout
depends on the target (NR), so this runs in `graphc.pipeline` after the target-independent
passes. Variables are never packed (training and `VariableStore.bind` replace them).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from graphc.codegen.gemm.emit import GemmSpec, plan_gemm
from graphc.codegen.gemm.matmul import anchor_spec, merged_batch, split_spec
from graphc.codegen.gemm.spec import kernel_shape
from graphc.codegen.target import Target
from graphc.ir import DType, Graph, Node, Signature
from graphc.ops.panels import pack_panels
from graphc.passes.rewrite import Pending, Rebuilder, live_nodes

__all__ = ["panel_width", "prepack_matmul_weights"]


def panel_width(node: Node, target: Target, threads: int) -> int:
    """The NR in which `node`'s B should be stored (0: leave it as it is)."""
    if node.op != "matmul" or node.attrs.get("b_panels") or node.inputs[1].op != "constant":
        return 0
    b = node.inputs[1]
    if b.ndim != 2 or b.dtype not in (DType.float32, DType.float64):
        return 0
    spec = anchor_spec(node, node.dtype)
    assert isinstance(spec, GemmSpec)
    plan = plan_gemm(spec, target)
    if plan.path != "packed" or not plan.pack_b:
        return 0
    nr = kernel_shape(spec.dtype, target, spec.n)[1]
    if spec.n < nr:
        return 0
    panelled = replace(spec, trans_b=False, ldb=spec.n, b_panels=nr)
    if node.ndim == 2 or merged_batch(node):
        whole = split_spec(spec, threads)
        if whole is not None and split_spec(panelled, threads) is None:
            return 0  # the threads would lose their split
    return nr


def prepack_matmul_weights(graph: Graph, sig: Signature, target: Target, threads: int
                           ) -> tuple[Graph, Signature]:
    """`graph` and `sig` with the constant B of every matmul that gains stored in panels
    (both unchanged when none does)."""
    live = live_nodes(graph, sig)
    readers: dict[Node, list[Node]] = {}
    for n in graph.nodes:
        if n in live:
            for i in n.inputs:
                readers.setdefault(i, []).append(n)
    widths = {n.name: w for n in graph.nodes if n in live
              and (w := panel_width(n, target, threads))}

    def layout(user: Node) -> tuple[int, bool] | None:
        if user.name not in widths:
            return None
        return widths[user.name], bool(user.attrs["transpose_b"])

    # A constant read by anything else, or as two layouts, stays as it is.
    packed = {b for b, users in readers.items() if b.op == "constant" and users and all(
        layout(u) is not None and u.inputs[1] is b and u.inputs[0] is not b
        and layout(u) == layout(users[0]) for u in users)}
    if not packed:
        return graph, sig
    done: dict[str, Node] = {}

    def visit(p: Pending, rb: Rebuilder) -> Node:
        if p.op != "matmul" or p.name not in widths:
            return rb.keep(p)
        old_b = graph[p.name].inputs[1]
        if old_b not in packed:
            return rb.keep(p)
        nr = widths[p.name]
        b = done.get(old_b.name)
        if b is None:
            value = rb.value(p.inputs[1])
            assert value is not None
            matrix = value.T if p.attrs["transpose_b"] else value
            flat = pack_panels(np.ascontiguousarray(matrix), nr)
            b = rb.constant(flat.reshape(matrix.shape), at=p, copy=False,
                            name=rb.fresh_name(f"{old_b.name}.panels"))
            done[old_b.name] = b
        return rb.emit("matmul", (p.inputs[0], b),
                       {**p.attrs, "transpose_b": False, "b_panels": nr}, at=p, name=p.name)

    g1, s1 = Rebuilder(graph, visit).run(n for n in graph.nodes if n in live).finish(sig)
    # Drop the unpacked weights nothing reads any more.
    live1 = live_nodes(g1, s1)
    return Rebuilder(g1).run(n for n in g1.nodes if n in live1).finish(s1)
