"""ONNX forms of the transformer ops (registered into the exporter's `EMIT` table).

- `attention` is spelled out as ONNX's opset-17 models write it (what PyTorch's exporter
  emits for ``scaled_dot_product_attention``): MatMul(q, kᵀ) · scale (+ mask, + a causal
  0/-inf constant), Softmax over the keys, MatMul with v; grouped key/value heads are
  repeated with Expand. ONNX Runtime fuses that pattern itself, and graphc's `attention`
  pass turns it back into the fused op on import. One difference: a fully masked row gives
  NaN in ONNX's Softmax where graphc gives 0.
- `iota` is Range → Reshape → Expand (→ Cast): no (shape)-sized initializer.
- `dynamic_slice` is a Gather per sliced axis at start + [0, size) (static shapes; an
  out-of-range start is an error in ONNX Runtime as in graphc, where Slice would clamp).
`dynamic_update_slice` has no form: it serves state updates, and ONNX models are inference
graphs (`to_model` refuses signatures with updates already).
"""

from __future__ import annotations

import numpy as np

from graphc.ir import DType, Node
from graphc.onnx.exporter import _ELEM, _emit, _Writer


@_emit("attention")
def _attention(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    q, k, v, *mask = ins
    qn, kn = n.inputs[0], n.inputs[1]
    group = qn.shape[-3] // kn.shape[-3]
    if group > 1:
        k, v = (_repeat_heads(w, x, node, group, out)
                for x, node in ((k, kn), (v, n.inputs[2])))
    rank = qn.ndim
    perm = [*range(rank - 2), rank - 1, rank - 2]
    scores = w.tmp("MatMul", [q, w.tmp("Transpose", [k], out, perm=perm)], out)
    scores = w.tmp("Mul", [scores, w.const(np.array(n.attrs["scale"], n.dtype.np), out)], out)
    if mask:
        scores = w.tmp("Add", [scores, mask[0]], out)
    if n.attrs["causal"]:
        tq, tk = qn.shape[-2], kn.shape[-2]
        hidden = np.where(np.tril(np.ones((tq, tk), bool)), 0.0, -np.inf).astype(n.dtype.np)
        scores = w.tmp("Add", [scores, w.const(hidden, out)], out)
    w.node("MatMul", [w.tmp("Softmax", [scores], out, axis=-1), v], out)


def _repeat_heads(w: _Writer, x: str, node: Node, group: int, base: str) -> str:
    """(..., Hkv, T, D) -> (..., Hkv * group, T, D), each head repeated `group` times."""
    lead, (heads, t, d) = node.shape[:-3], node.shape[-3:]
    spread = w.tmp("Unsqueeze", [x, w.ints([node.ndim - 2], base)], base)
    spread = w.tmp("Expand", [spread, w.ints([*lead, heads, group, t, d], base)], base)
    return w.tmp("Reshape", [spread, w.ints([*lead, heads * group, t, d], base)], base)


@_emit("iota")
def _iota(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    shape, axis = tuple(n.attrs["shape"]), int(n.attrs["axis"])
    along = w.tmp("Range", [w.const(np.array(0, np.int64), out),
                            w.const(np.array(shape[axis], np.int64), out),
                            w.const(np.array(1, np.int64), out)], out)
    column = [-1 if d == axis else 1 for d in range(len(shape))]
    spread = w.tmp("Expand", [w.tmp("Reshape", [along, w.ints(column, out)], out),
                              w.ints(shape, out)], out)
    if n.dtype == DType.int64:
        w.node("Identity", [spread], out)
    else:
        w.node("Cast", [spread], out, to=_ELEM[n.dtype])


@_emit("dynamic_slice")
def _dynamic_slice(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    x, *starts = ins
    sizes = list(n.attrs["sizes"])
    shape = n.inputs[0].shape
    if len(starts) == 1 and n.inputs[1].ndim == 1:  # one 1-D start: split it per axis
        vector = starts[0] if n.inputs[1].dtype == DType.int64 else \
            w.tmp("Cast", starts, out, to=7)
        starts = [w.tmp("Gather", [vector, w.const(np.array(a, np.int64), out)], out, axis=0)
                  for a in range(len(sizes))]
        nodes = [None] * len(sizes)
    else:
        nodes = list(n.inputs[1:])
    current = x
    for axis, (start, node, size) in enumerate(zip(starts, nodes, sizes)):
        if size == shape[axis]:
            continue  # the whole axis: the start can only be 0
        if node is not None and node.dtype != DType.int64:
            start = w.tmp("Cast", [start], out, to=7)
        # Gather at start + [0, size): static shapes, and an out-of-range index is an error
        # in ONNX Runtime as in graphc (Slice would clamp it).
        index = w.tmp("Add", [start, w.const(np.arange(size, dtype=np.int64), out)], out)
        current = w.tmp("Gather", [current, index], out, axis=axis)
    w.node("Identity", [current], out)
