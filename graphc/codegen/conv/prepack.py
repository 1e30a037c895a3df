"""prepack: constant convolution weights stored in the GEMM's panels once, at compile time.

A 1x1 convolution on a small map is computed transposed (`conv.transposed`): Out^T = X^T W^T,
with W^T as the GEMM's B operand (with 16 registers also a kxk or strided one, X its Col).
The GEMM reads B in panels of NR columns (its register block's width), so at every call
it would pack W^T first: a transposing copy of all the weights, which on a late
MobileNetV2 layer (320 -> 1280 channels, 1.6 MB of weights arriving from L3) cost as much
as a third of the layer. When the weights are a constant, this step packs them once
instead, with numpy, into exactly the panels the GEMM reads in place (`graphc.ops.panels`),
and marks the convolution `weight_panels=(block, panel)`; its reference and its lowering
read the weights that way. ONNX Runtime's MLAS prepacks constant weights the same way when
a session is created.

The layout depends on the target (NR) and on the thread count (each thread computes a
block of output channels with its own GEMM, and each block is packed on its own), so this
runs in `graphc.pipeline` after the target-independent passes, not as a pass of
`passes.manager`: `conv.im2col.weight_layout` says, for the target and the threads at hand,
whether and how the lowering reads a convolution's weights as panels. Variables are never
packed (training and `VariableStore.bind` replace them), nor a constant that something
other than such convolutions reads.
"""

from __future__ import annotations

from graphc.codegen.conv.im2col import weight_layout
from graphc.codegen.target import Target
from graphc.ir import Graph, Node, Signature
from graphc.ops.panels import pack_conv_weights
from graphc.passes.rewrite import Pending, Rebuilder, live_nodes

__all__ = ["prepack_weights"]


def prepack_weights(graph: Graph, sig: Signature, target: Target, threads: int,
                    algorithm: str) -> tuple[Graph, Signature]:
    """`graph` and `sig` with the weights packed (both unchanged when none applies)."""
    live = live_nodes(graph, sig)
    readers: dict[Node, list[Node]] = {}
    for n in graph.nodes:
        if n in live:
            for i in n.inputs:
                readers.setdefault(i, []).append(n)
    layouts: dict[str, tuple[int, int]] = {}
    for n in graph.nodes:
        if n in live and n.op == "conv2d" and n.inputs[1].op == "constant":
            layout = weight_layout(n, target, threads, algorithm)
            if layout is not None:
                layouts[n.name] = layout
    # A weight read by anything else (or by two convolutions wanting different layouts)
    # stays as it is.
    packed = {w for w, users in readers.items() if w.op == "constant" and users and all(
        u.name in layouts and u.inputs[1] is w and layouts[u.name] == layouts[users[0].name]
        for u in users)}
    if not packed:
        return graph, sig
    done: dict[str, Node] = {}

    def visit(p: Pending, rb: Rebuilder) -> Node:
        if p.op != "conv2d" or p.name not in layouts or p.attrs.get("weight_panels"):
            return rb.keep(p)
        old_w = graph[p.name].inputs[1]
        if old_w not in packed:
            return rb.keep(p)
        layout = layouts[p.name]
        w = done.get(old_w.name)
        if w is None:
            value = rb.value(p.inputs[1])
            assert value is not None
            w = rb.constant(pack_conv_weights(value, *layout), at=p, copy=False,
                            name=rb.fresh_name(f"{old_w.name}.panels"))
            done[old_w.name] = w
        return rb.emit("conv2d", (p.inputs[0], w), {**p.attrs, "weight_panels": layout},
                       at=p, name=p.name)

    g1, s1 = Rebuilder(graph, visit).run(n for n in graph.nodes if n in live).finish(sig)
    # Drop the unpacked weights nothing reads any more.
    live1 = live_nodes(g1, s1)
    return Rebuilder(g1).run(n for n in g1.nodes if n in live1).finish(s1)
