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

`matmul_integer` (quantized layers) likewise: a constant int8 B whose rows fill whole
k-groups and whose columns fill whole panels is stored in the integer GEMM's packed layout
(`graphc.ops.panels.pack_groups`; quads for `vpdpbusd`, byte pairs without VNNI, or
quads there too if its k-pairs fit `pmaddubsw`, `lowp_kernels.byte_pairs_fit`) and marked
`b_groups=(NR, group)`; with a few rows of A the GEMV reads those panels in place
(`lowp_panel_gemv`). Same-process A/Bs on Zen 3, 1 thread: a quantized MLP at batch 256
0.95x the time with B packed at every call, int8 GPT decode 0.89x the row-major GEMV's.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import replace
from typing import cast

import numpy as np

from graphc.codegen.constant_layouts import store_constants
from graphc.codegen.gemm.emit import GemmSpec, plan_gemm
from graphc.codegen.gemm.lowp import LowpSpec, b_groups, emulates_quads, plan_lowp
from graphc.codegen.gemm.lowp_kernels import byte_pairs_fit
from graphc.codegen.gemm.matmul import anchor_spec, merged_batch, split_spec
from graphc.codegen.gemm.spec import kernel_shape
from graphc.codegen.target import Target
from graphc.ir import DType, Graph, Node, Signature
from graphc.ops.panels import pack_groups, pack_panels
from graphc.passes.rewrite import Pending, Rebuilder, live_nodes

__all__ = ["integer_groups", "panel_width", "prepack_matmul_weights"]


def integer_groups(node: Node, target: Target, threads: int) -> tuple[int, int] | None:
    """The (panel, group) in which a `matmul_integer`'s constant B should be stored (None:
    leave it as it is): B's rows and columns fill whole groups and panels (no padding: the
    array keeps its shape) and the threads keep their split. The group is the target's
    (quads with VNNI, pairs without), or without VNNI quads if B's values fit `pmaddubsw`
    (`lowp_kernels.byte_pairs_fit`)."""
    if (node.op != "matmul_integer" or node.attrs.get("b_groups")
            or node.inputs[1].op != "constant"):
        return None
    spec = anchor_spec(node, node.dtype)
    assert isinstance(spec, LowpSpec)
    panel, group = b_groups(spec, target)
    if (group == 2 and spec.k % 4 == 0 and emulates_quads(target)
            and byte_pairs_fit(_constant(node.inputs[1], bool(node.attrs["transpose_b"])))):
        group = 4  # quads on pmaddubsw, exact for this B (`lowp` module docstring)
    if spec.k % group or spec.n % panel or group * plan_lowp(spec, target).b_kind.esize > 4:
        return None
    panelled = replace(spec, trans_b=False, ldb=spec.n, b_panels=panel, b_group=group)
    if node.ndim == 2 or merged_batch(node):
        if split_spec(spec, threads) is not None and split_spec(panelled, threads) is None:
            return None
    return panel, group


def _constant(b: Node, transposed: bool) -> np.ndarray:
    """The (k x n) matrix of a constant B."""
    value = b.graph.constants[b.name]
    return value.T if transposed else value


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
    # By node: (NR, group, transpose_b), group 0 for a float matmul's panels; a constant
    # read as B and as Bᵀ stays as it is.
    layouts: dict[str, tuple[int, int, bool]] = {}
    for n in graph.nodes:
        if n not in live:
            continue
        if (w := panel_width(n, target, threads)):
            layouts[n.name] = (w, 0, bool(n.attrs["transpose_b"]))
        elif (groups := integer_groups(n, target, threads)) is not None:
            layouts[n.name] = (*groups, bool(n.attrs["transpose_b"]))

    def store(value: np.ndarray, layout: Hashable) -> np.ndarray:
        nr, group, transposed = cast(tuple[int, int, bool], layout)
        matrix = np.ascontiguousarray(value.T if transposed else value)
        flat = pack_groups(matrix, nr, group) if group else pack_panels(matrix, nr)
        return flat.reshape(matrix.shape)

    def rebuild(p: Pending, rb: Rebuilder, b: Node, layout: Hashable) -> Node:
        nr, group, _ = cast(tuple[int, int, bool], layout)
        if group:
            return rb.emit("matmul_integer", (p.inputs[0], b, *p.inputs[2:]),
                           {**p.attrs, "transpose_b": False, "b_groups": (nr, group)}, at=p,
                           name=p.name)
        return rb.emit("matmul", (p.inputs[0], b),
                       {**p.attrs, "transpose_b": False, "b_panels": nr}, at=p, name=p.name)

    return store_constants(graph, sig, layouts, 1, store, rebuild)
