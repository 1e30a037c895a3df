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

from collections.abc import Hashable
from typing import cast

import numpy as np

from graphc.codegen.constant_layouts import store_constants
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
    layouts: dict[str, tuple[int, int]] = {}
    for n in graph.nodes:
        if n in live and n.op == "conv2d" and n.inputs[1].op == "constant":
            layout = weight_layout(n, target, threads, algorithm)
            if layout is not None:
                layouts[n.name] = layout

    def store(value: np.ndarray, layout: Hashable) -> np.ndarray:
        block, panel = cast(tuple[int, int], layout)
        return pack_conv_weights(value, block, panel)

    def rebuild(p: Pending, rb: Rebuilder, w: Node, layout: Hashable) -> Node:
        return rb.emit("conv2d", (p.inputs[0], w), {**p.attrs, "weight_panels": layout},
                       at=p, name=p.name)

    # A weight read by anything else (or by two convolutions wanting different layouts)
    # stays as it is.
    return store_constants(graph, sig, layouts, 1, store, rebuild)
