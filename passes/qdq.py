"""qdq: quantize -> dequantize pairs around a matmul or conv2d folded into the int8 GEMM.

A QDQ model (ONNX's QuantizeLinear/DequantizeLinear around MatMul, as `gc.onnx.load`
imports them, or the same ops written by hand) computes in float what an int8 kernel
computes exactly:

    q  = cast(clip(round(x / s) + z, lo, hi), int32)          quantize (uint8 or int8 range)
    xd = (cast(q, f32) - cast(z, f32)) * s                   dequantize, the same s and z
    wd = (cast(W, f32) - zw) * sw                            a constant integer weight
    y  = matmul(xd, wd)
 -> y  = cast(matmul_integer(u8(round(x / s) + z'), W - zw) - z' * colsum(W - zw), f32)
         * (s * sw)

with z' = z (uint8 activations) or z + 128 (int8 activations, shifted into uint8 exactly:
clip(v, -128, 127) + 128 == clip(v + 128, 0, 255)). The saturating cast to uint8 is the clip,
since round(...) + z' is an integer. Sums are exact in int32; the float model rounded every
product and partial sum, so results differ by float32 rounding only (ONNX Runtime folds
these pairs the same way). Scales and zero points may be any nodes (`gc.onnx.load` makes
float initializers variables): quantize and dequantize must use the same node or equal
constants. The weight's integers must be constant, with W - zw in int8's range; its scale
one per tensor or per output channel. A conv2d (one group) folds the same way on its
im2col rows (`im2col.py`: the quantize re-applied to the padded channels-last input).

`explain(graph)` lists every quantize -> dequantize pair the pass leaves as it is, with the
reason (`graphc dump --explain`). Idempotent: what it folds is no longer a float matmul.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphc.ir import DType, Graph, Node, Signature

from . import im2col
from .rewrite import PassContext, PassDef, Pending, Rebuilder

__all__ = ["explain", "qdq"]

Known = Callable[[Node], "np.ndarray | None"]
RANGES = {(0.0, 255.0): False, (-128.0, 127.0): True}  # clip bounds -> signed
FEW_ROWS = 4  # as codegen/gemm/lowp_gemv.MAX_ROWS: weights (N, K) for the GEMV


@dataclass(frozen=True)
class Quant:
    """q = cast(clip(round(x / scale) + cast(zp), lo, hi), int32); `shifted` the add node
    (or the round node without zero point)."""

    x: Node
    scale: Node
    zp: Node | None
    shifted: Node
    signed: bool


@dataclass(frozen=True)
class Dequant:
    """(cast(q, f32) - cast(zp, f32)) * scale; `zp` the integer zero point (None: 0)."""

    q: Node
    zp: Node | None
    scale: Node


def known_value(value: Known, node: Node) -> np.ndarray | None:
    """A constant's array seen through reshape/broadcast_to, in `node`'s shape."""
    inner = node
    while inner.op in ("reshape", "broadcast_to"):
        inner = inner.inputs[0]
    v = value(inner)
    if v is None:
        return None
    v = np.asarray(v)
    return v.reshape(node.shape) if node.op == "reshape" else np.broadcast_to(v, node.shape)


def _scalar(value: Known, node: Node) -> float | None:
    v = known_value(value, node)
    return float(v) if v is not None and v.size == 1 else None


def _uncast(node: Node, src_int: bool) -> Node | None:
    """x of cast(x, float32) whose x is an integer (src_int) tensor."""
    if node.op != "cast" or node.dtype != DType.float32:
        return None
    inner = node.inputs[0]
    return inner if (not inner.dtype.is_float) == src_int else None


def match_dequant(node: Node) -> Dequant | None:
    if node.op != "mul" or node.dtype != DType.float32:
        return None
    for a, s in (node.inputs, node.inputs[::-1]):
        if a.op == "sub":
            q, z = (_uncast(i, True) for i in a.inputs)
            if q is not None and z is not None:
                return Dequant(q, z, s)
        q = _uncast(a, True)
        if q is not None:
            return Dequant(q, None, s)
    return None


def match_quant(node: Node, value: Known) -> Quant | str:
    """The quantize pattern producing `node`, or why `node` is not one."""
    if node.op != "cast" or node.dtype.is_float:
        return "not produced by a quantize (cast of a clipped, rounded x / scale)"
    hi_n = node.inputs[0]
    if hi_n.op != "minimum" or hi_n.inputs[0].op != "maximum":
        return "not produced by a quantize (no clip before the integer cast)"
    lo_n = hi_n.inputs[0]
    bounds = (_scalar(value, lo_n.inputs[1]), _scalar(value, hi_n.inputs[1]))
    if bounds not in RANGES:
        return f"quantized to the range {bounds}, not uint8's or int8's"
    shifted = lo_n.inputs[0]
    zp = None
    rounded = shifted
    if shifted.op == "add":
        rounded, zf = shifted.inputs
        zp = _uncast(zf, True)
        if zp is None:
            return "the quantize's zero point is not an integer cast to float"
    if rounded.op != "round" or rounded.inputs[0].op != "div":
        return "not produced by a quantize (no round(x / scale))"
    x, scale = rounded.inputs[0].inputs
    return Quant(x, scale, zp, shifted, RANGES[bounds])


def _same(value: Known, a: Node | None, b: Node | None) -> bool:
    """Whether two scale/zero-point operands are the same node or equal constants."""
    if a is b:
        return True
    va = None if a is None else known_value(value, a)
    vb = None if b is None else known_value(value, b)
    if a is None:
        return vb is not None and not np.any(vb)
    if b is None:
        return va is not None and not np.any(va)
    return va is not None and vb is not None and va.shape == vb.shape and bool(
        np.all(va == vb))


@dataclass(frozen=True)
class Plan:
    """A foldable matmul: the activation's quantize, the centered int8 weight (K, N), the
    weight scale as an (N,)- or ()-shaped node (None: reshape `w_scale` first)."""

    quant: Quant
    act_scale: Node
    weight: np.ndarray
    w_scale: Node
    w_scale_shape: tuple[int, ...]
    conv: bool = False  # a conv2d through im2col (the weight is its (kh*kw*C, O) matrix)


def _activation(a: Node, value: Known) -> tuple[Quant, Node] | str:
    """The quantize of a dequantized activation `a` and its dequantize scale, or why not."""
    da = match_dequant(a)
    if da is None:
        return "the activation (operand a) is not dequantized"
    qa = match_quant(da.q, value)
    if isinstance(qa, str):
        return f"the activation's dequantize input is {qa}"
    if not (_same(value, qa.scale, da.scale) and _same(value, qa.zp, da.zp)):
        return "quantize and dequantize use different scales or zero points"
    if qa.scale.shape != () or (qa.zp is not None and qa.zp.shape != ()):
        return "the activation is quantized per channel (only per tensor folds)"
    return qa, da.scale


def _weight(b: Node, value: Known) -> tuple[np.ndarray, Node] | str:
    """The centered integer weight (W - zw, int8) and its scale node, or why not."""
    db = match_dequant(b)
    if db is None:
        return "the weight (operand b) is not dequantized"
    w = known_value(value, db.q)
    if w is None:
        return "the weight's integers are not constant"
    zw = known_value(value, db.zp) if db.zp is not None else np.zeros((), np.int64)
    if zw is None:
        return "the weight's zero point is not constant"
    centered = w.astype(np.int64) - zw.astype(np.int64)
    if centered.shape != w.shape:
        return "the weight's zero point has more elements than the weight"
    if centered.min(initial=0) < -128 or centered.max(initial=0) > 127:
        return "the weight minus its zero point does not fit int8"
    return centered.astype(np.int8), db.scale


def plan(a: Node, b: Node, transpose_a: bool, transpose_b: bool, value: Known) -> Plan | str:
    """How matmul(a, b) folds, or why it does not."""
    if transpose_a:
        return "the matmul reads its activation transposed"
    act = _activation(a, value)
    if isinstance(act, str):
        return act
    wt = _weight(b, value)
    if isinstance(wt, str):
        return wt
    centered, scale = wt
    if centered.ndim != 2:
        return "the weight is not one 2-D matrix"
    n = centered.shape[0] if transpose_b else centered.shape[1]
    s = scale.shape
    per_column = ((n, 1),) if transpose_b else ((n,), (1, n))
    if s != () and s not in per_column:
        return f"the weight scale {s} is neither per tensor nor per output channel"
    weight = centered.T if transpose_b else centered
    return Plan(act[0], act[1], np.ascontiguousarray(weight), scale, () if s == () else (n,))


def plan_conv(p: Pending | Node, value: Known) -> Plan | str:
    """How conv2d `p` folds (through `im2col`), or why it does not."""
    if p.attrs["groups"] != 1:
        return "a grouped convolution"
    if p.attrs["weight_panels"]:
        return "weights prepacked for the float GEMM (weight_panels)"
    act = _activation(p.inputs[0], value)
    if isinstance(act, str):
        return act
    wt = _weight(p.inputs[1], value)
    if isinstance(wt, str):
        return wt
    centered, scale = wt
    o = centered.shape[0]
    if scale.shape not in ((), (o, 1, 1, 1), (o,)):
        return f"the weight scale {scale.shape} is neither per tensor nor per output channel"
    return Plan(act[0], act[1], im2col.weight_matrix(centered), scale,
                () if scale.shape == () else (o,), conv=True)


def _conv_rows(rb: Rebuilder, p: Pending, q: Quant) -> Node:
    """The uint8 im2col rows of conv2d `p`: its input quantized as `q` quantizes it."""
    def emit(op: str, inputs: Sequence[Node], attrs: dict[str, Any]) -> Node:
        return rb.emit(op, inputs, attrs, at=p)

    xp = im2col.channels_last_padded(emit, q.x, p.inputs[1].shape, p.attrs)
    shifted = emit("round", (emit("div", (xp, q.scale), {}),), {})
    if q.shifted.op == "add":  # + cast(zero point, f32), as the quantize adds it
        shifted = emit("add", (shifted, q.shifted.inputs[1]), {})
    if q.signed:
        shifted = emit("add", (shifted, rb.constant(np.float32(128), at=p)), {})
    xq = emit("cast", (shifted,), {"dtype": DType.uint8})
    return im2col.gather_taps(emit, xq, p.inputs[1].shape, p.attrs, p.shape)


def rewrite(rb: Rebuilder, p: Pending, pl: Plan) -> Node:
    """The int8 form of matmul or conv2d `p` (module docstring)."""
    q = pl.quant
    if pl.conv:
        xq = _conv_rows(rb, p, q)
    else:
        shifted = q.shifted
        if q.signed:
            shifted = rb.emit("add", (shifted, rb.constant(np.float32(128), at=p)), at=p)
        xq = rb.emit("cast", (shifted,), {"dtype": DType.uint8}, at=p)
    rows = int(np.prod(xq.shape[:-1]))
    few = rows <= FEW_ROWS
    w = rb.constant(np.ascontiguousarray(pl.weight.T) if few else pl.weight, at=p, copy=False)
    acc = rb.emit("matmul_integer", (xq, w), {"transpose_a": False, "transpose_b": few}, at=p)
    colsum = pl.weight.astype(np.int32).sum(axis=0, dtype=np.int32)
    zp_value = 0 if q.zp is None else known_value(rb.value, q.zp)
    if zp_value is not None:
        shift = int(zp_value) + (128 if q.signed else 0)
        corr = rb.constant((np.int32(shift) * colsum).astype(np.int32), at=p)
    else:
        assert q.zp is not None
        zi = rb.emit("cast", (q.zp,), {"dtype": DType.int32}, at=p)
        if q.signed:
            zi = rb.emit("add", (zi, rb.constant(np.int32(128), at=p)), at=p)
        corr = rb.emit("mul", (zi, rb.constant(colsum, at=p)), at=p)
    exact = rb.emit("sub", (acc, corr), at=p)
    accf = rb.emit("cast", (exact,), {"dtype": DType.float32}, at=p)
    sw = pl.w_scale
    if sw.shape != pl.w_scale_shape:
        sw = rb.emit("reshape", (sw,), {"shape": pl.w_scale_shape}, at=p)
    rescale = rb.emit("mul", (pl.act_scale, sw), at=p)
    if not pl.conv:
        return rb.emit("mul", (accf, rescale), at=p, name=p.name)
    nhwc = rb.emit("mul", (accf, rescale), at=p)
    return rb.emit("transpose", (nhwc,), {"perm": (0, 3, 1, 2)}, at=p, name=p.name)


def qdq(graph: Graph, sig: Signature, ctx: PassContext) -> tuple[Graph, Signature]:
    """Fold every matmul `plan` accepts."""

    def visit(p: Pending, rb: Rebuilder) -> Node:
        pl: Plan | str = ""
        if p.op == "matmul" and p.dtype == DType.float32 and not p.attrs["b_panels"]:
            a, b = p.inputs
            pl = plan(a, b, bool(p.attrs["transpose_a"]), bool(p.attrs["transpose_b"]),
                      rb.value)
        elif p.op == "conv2d" and p.dtype == DType.float32:
            pl = plan_conv(p, rb.value)
        if isinstance(pl, Plan):
            ctx.hit(rewrite)
            return rewrite(rb, p, pl)
        return rb.keep(p)

    return Rebuilder(graph, visit).run().finish(sig)


def explain(graph: Graph) -> list[str]:
    """One line for every quantize -> dequantize pair the pass does not fold: the pair (its
    dequantize node) and the consumer it feeds, with the reason."""
    def value(node: Node) -> np.ndarray | None:
        return graph.constants.get(node.name) if node.op == "constant" else None

    users: dict[Node, list[tuple[Node, int]]] = {}
    for node in graph.nodes:
        for i, inp in enumerate(node.inputs):
            users.setdefault(inp, []).append((node, i))
    lines = []
    for node in graph.nodes:
        dq = match_dequant(node)
        if dq is None or isinstance(match_quant(dq.q, value), str):
            continue
        for user, index in users.get(node, []):
            if user.op not in ("matmul", "conv2d"):
                why = f"feeds {user.op}, not a matmul or convolution"
            elif index != 0:
                why = f"is the {user.op}'s operand b (only an activation, operand a, folds)"
            elif user.op == "matmul" and user.attrs["b_panels"]:
                why = "its b is stored in the compiler's panels (b_panels)"
            else:
                pl = plan_conv(user, value) if user.op == "conv2d" else plan(
                    user.inputs[0], user.inputs[1], bool(user.attrs["transpose_a"]),
                    bool(user.attrs["transpose_b"]), value)
                if isinstance(pl, Plan):
                    continue
                why = pl
            lines.append(f"%{node.name} -/-> %{user.name}: {why}")
    return lines


PASS = PassDef("qdq", qdq, "quantize->dequantize pairs around a matmul as the int8 GEMM",
               enabled_by=frozenset())
