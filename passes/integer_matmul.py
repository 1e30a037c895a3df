"""integer_matmul: int32 matmuls and convolutions of 8-bit values onto the u8 x s8 GEMM.

ONNX holds 8-bit tensors widened to int32 once imported (`graphc.onnx.rules.qlinear`), so
ONNX's MatMulInteger -- what ONNX Runtime's `quantize_dynamic` writes for every MatMul:
DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul -- and QLinearMatMul arrive as int32
``matmul``s of widened operands, which the compiler would run as a generic integer GEMM
(2.2x the time of the int8 kernel on a quantized MLP). The rule `integer_matmul_rule`:

    matmul(A, B)  or  matmul(A - Z, B)                                          int32
 -> matmul_integer(u8(A + s), int8(B) [, u8(Z + s)])      (s = 128: zero point u8(s))

where every value of A and of the scalar Z provably lies in [0, 255] (s = 0) or in
[-128, 127] (s = 128: A - Z = (A + s) - (Z + s)), by `value_bounds` (uint8 tensors, clips
into that range and the roundings and casts of such values, constants), and B is a 2-D
constant within int8's range. Both sides wrap in int32 alike: the same sums, exactly.
u8(A) of A = cast(F, int32) casts the float F to uint8 directly when s = 0 (the same
truncation of values in [0, 255]; a float -> int32 -> uint8 chain costs 6x the vectorized
conversion in the quantize's kernel on AVX2); with s = 128 the shift is added after the
integer cast, since truncation does not commute with it (trunc(-0.5) + 128 = 128,
trunc(127.5) = 127).

ONNX's ConvInteger (`quantize_dynamic` of a CNN) and QLinearConv import as a float64
convolution of centered integers (about 3.4x the float model's time on ResNet-18). The
rule `integer_conv_rule`, with A, Z, s as above and W a constant of int8 integers whose
sums provably fit int32 (255 * max_o sum |W[o]| < 2^31, so the float64 sums are these
integers exactly):

    conv2d(f64(A) [- f64(Z)], W)                                              float64
 -> f64(transpose(matmul_integer(taps(u8(pad(A - Z) + Z + s)), W (kh*kw*C, O),
                                 u8(Z + s)), NCHW))

padding A - Z with zeros, as the float convolution pads its centered input, then adding
Z + s back: the padded taps hold the zero point and contribute nothing (`im2col.py`
gathers the taps). A ConvInteger's cast of that to int32 then drops the float64 round
trip (`cast(f64(x), int32) = x` for int32 x).

The dequantization that follows (cast to float, scales) fuses into the GEMM's epilogue,
and a constant B is stored in the GEMM's panels (`codegen/gemm/prepack.py`). NaN
activations, which ONNX leaves undefined, give unspecified integers either way. Runs after
`constant_fold`; what it emits (casts and reshapes of zero points) is folded and
simplified in turn (those passes list it in `enabled_by`), so the pipeline reaches a fixed
point.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphc.ir import DType, Graph, Node, Signature

from . import im2col
from .rewrite import PassContext, PassDef, Pending, Rebuilder
from .value_bounds import INTEGER_DTYPES, Known, value_bounds, weight_value

__all__ = ["explain", "integer_conv_rule", "integer_matmul", "integer_matmul_rule"]

Op = Node | Pending  # what the plans read: op, dtype, attrs, inputs, shape


@dataclass(frozen=True)
class Source:
    """The 8-bit operand A - Z (Z None: 0) and s, what puts A and Z in [0, 255]."""

    act: Node
    zero: Node | None
    offset: int


@dataclass(frozen=True)
class Plan:
    """A rewrite: the activation and the int8 weights (B (K, N) of a matmul; the (kh*kw*C,
    O) matrix of a convolution)."""

    source: Source
    weights: np.ndarray


def _source(act: Node, zero: Node | None, value: Known) -> Source | str:
    """A - Z with s = 0 (both in [0, 255]) or 128 (both in [-128, 127]), or why not."""
    bounds = [value_bounds(n, value) for n in ([act] if zero is None else [act, zero])]
    if all(0 <= lo and hi <= 255 for lo, hi in bounds):
        return Source(act, zero, 0)
    if all(-128 <= lo and hi <= 127 for lo, hi in bounds):
        return Source(act, zero, 128)
    shown = ", ".join(f"[{lo:g}, {hi:g}]" for lo, hi in bounds)
    return (f"the activation{'' if zero is None else ' and its zero point'} are not provably "
            f"8-bit (bounds {shown})")


def _int8(weights: np.ndarray | None, whole: bool = False) -> str:
    """Why `weights` are not int8 values ("" if they are)."""
    if weights is None:
        return "the weight is not a constant"
    if weights.size == 0 or weights.min() < -128 or weights.max() > 127:
        return "the weight does not fit int8"
    if whole and not np.array_equal(weights, np.round(weights)):
        return "the weight is not whole numbers"
    return ""


def matmul_plan(p: Op, value: Known) -> Plan | str:
    """How int32 matmul `p` becomes matmul_integer, or why it does not."""
    a, b = p.inputs
    if p.attrs["b_panels"]:
        return "its b is stored in the compiler's panels (b_panels)"
    if b.ndim != 2 or a.ndim < 2 or (p.attrs["transpose_a"] and a.ndim > 2):
        return f"not a matmul of a rank >= 2 activation by a 2-D weight ({a.type} @ {b.type})"
    act, zero = a, None
    if a.op == "sub" and isinstance(_source(a, None, value), str):
        act, zero = a.inputs
        if act.shape != a.shape or (zero.ndim > 0 and zero.size != 1):
            return "the zero point is not one scalar (per row)"
    source = _source(act, zero, value)
    if isinstance(source, str):
        return source
    weights = weight_value(b, value)
    why = _int8(weights)
    return why if why else Plan(source, np.ascontiguousarray(weights, np.int8))


def _integer_source(x: Node, value: Known) -> tuple[Node, Node | None] | None:
    """(A, Z) of a float convolution input f64(A) - f64(Z) or f64(A), A and Z integers (Z
    also a constant of whole numbers, whose cast constant_fold has folded)."""
    def uncast(n: Node) -> Node | None:
        if n.op == "cast" and n.inputs[0].dtype in INTEGER_DTYPES:
            return n.inputs[0]
        v = value(n)
        if (v is not None and v.size == 1 and np.isfinite(v).all()
                and float(v.reshape(-1)[0]).is_integer() and abs(float(v.reshape(-1)[0])) <= 255):
            return n  # cast to int32 when rewritten: exact for whole numbers
        return None

    if x.op == "sub":
        act, zero = (uncast(i) for i in x.inputs)
        return (act, zero) if act is not None and zero is not None else None
    act = uncast(x)
    return None if act is None else (act, None)


def conv_plan(p: Op, value: Known) -> Plan | str | None:
    """How float64 conv2d `p` of integers becomes the int8 GEMM, why it does not, or None
    if its input is not integers (a float64 convolution like any other)."""
    x, w = p.inputs
    found = _integer_source(x, value)
    if found is None:
        return None
    act, zero = found
    if p.attrs["groups"] != 1:
        return "a grouped convolution"
    if p.attrs["weight_panels"]:
        return "weights prepacked for the float GEMM (weight_panels)"
    if act.shape != x.shape or (zero is not None and zero.size != 1):
        return "the zero point is not one scalar"
    source = _source(act, zero, value)
    if isinstance(source, str):
        return source
    weights = weight_value(w, value)
    why = _int8(weights, whole=True)
    if why:
        return why
    assert weights is not None
    matrix = im2col.weight_matrix(weights.astype(np.int8))
    if 255 * int(np.abs(matrix.astype(np.int64)).sum(axis=0).max()) >= 2**31:
        return "its sums may leave int32 (255 * max sum |w| >= 2^31), where the GEMM wraps"
    return Plan(source, matrix)


def _as_uint8(node: Node, offset: int, rb: Rebuilder, at: Pending) -> Node:
    """`node` + `offset` (its values + offset in [0, 255]) as uint8 (module docstring)."""
    if node.dtype == DType.uint8 and not offset:
        return node
    if (not offset and node.op == "cast"
            and node.inputs[0].dtype in (DType.float32, DType.float64)):
        node = node.inputs[0]  # the same truncation, vectorized
    if offset:
        if node.dtype != DType.int32:  # + 128 in int8 / uint8 would wrap
            node = rb.emit("cast", (node,), {"dtype": DType.int32}, at=at)
        node = rb.emit("add", (node, rb.constant(np.int32(offset), at=at)), at=at)
    return rb.emit("cast", (node,), {"dtype": DType.uint8}, at=at)


def _as_int32(node: Node, rb: Rebuilder, at: Pending) -> Node:
    return node if node.dtype == DType.int32 else rb.emit("cast", (node,),
                                                            {"dtype": DType.int32}, at=at)


def integer_matmul_rule(p: Pending, rb: Rebuilder) -> Node | None:
    """matmul(A [- Z], B) (int32) -> matmul_integer(u8(A + s), int8(B) [, u8(Z + s)])"""
    if p.op != "matmul" or p.dtype != DType.int32:
        return None
    plan = matmul_plan(p, rb.value)
    if isinstance(plan, str):
        return None
    act, zero, offset = plan.source.act, plan.source.zero, plan.source.offset
    operands = [_as_uint8(act, offset, rb, p), rb.constant(plan.weights, at=p)]
    if zero is not None and zero.ndim > 0:
        zero = rb.emit("reshape", (zero,), {"shape": ()}, at=p)
    if zero is not None:
        operands.append(_as_uint8(zero, offset, rb, p))
    elif offset:
        operands.append(rb.constant(np.array(offset, np.uint8), at=p))
    return rb.emit("matmul_integer", operands,
                   {"transpose_a": p.attrs["transpose_a"],
                    "transpose_b": p.attrs["transpose_b"]}, at=p, name=p.name)


def integer_conv_rule(p: Pending, rb: Rebuilder) -> Node | None:
    """conv2d(f64(A) [- f64(Z)], W) -> f64(transpose(matmul_integer(taps(...), W', ...)))
    (module docstring)"""
    if p.op != "conv2d" or p.dtype != DType.float64:
        return None
    plan = conv_plan(p, rb.value)
    if not isinstance(plan, Plan):
        return None
    w = p.inputs[1]

    def emit(op: str, inputs: Sequence[Node], attrs: dict[str, Any]) -> Node:
        return rb.emit(op, inputs, attrs, at=p)

    act, zero, offset = plan.source.act, plan.source.zero, plan.source.offset
    act = _as_int32(act, rb, p)
    shift: Node | None = rb.constant(np.int32(offset), at=p) if offset else None
    if zero is not None:
        zero = _as_int32(zero if zero.ndim == 0 else emit("reshape", (zero,), {"shape": ()}),
                         rb, p)
        act = emit("sub", (act, zero), {})
        shift = emit("add", (zero, shift), {}) if shift is not None else zero
    # Centered, padded with zeros as the float convolution pads, then back in [0, 255].
    padded = im2col.channels_last_padded(emit, act, w.shape, p.attrs)
    if shift is not None:
        padded = emit("add", (padded, shift), {})
    rows = im2col.gather_taps(emit, emit("cast", (padded,), {"dtype": DType.uint8}), w.shape,
                              p.attrs, p.shape)
    operands = [rows, rb.constant(plan.weights, at=p)]
    if shift is not None:
        operands.append(emit("cast", (shift,), {"dtype": DType.uint8}))
    acc = emit("matmul_integer", operands, {"transpose_a": False, "transpose_b": False})
    nchw = emit("transpose", (acc,), {"perm": (0, 3, 1, 2)})
    return rb.emit("cast", (nchw,), {"dtype": DType.float64}, at=p, name=p.name)


def _round_trip(p: Pending) -> Node | None:
    """cast(f64(x), int32) -> x, for int32 x (float64 holds every int32)."""
    if p.op != "cast" or p.dtype != DType.int32:
        return None
    inner = p.inputs[0]
    if (inner.op == "cast" and inner.dtype == DType.float64
            and inner.inputs[0].dtype == DType.int32 and inner.inputs[0].shape == p.shape):
        return inner.inputs[0]
    return None


def integer_matmul(graph: Graph, sig: Signature, ctx: PassContext) -> tuple[Graph, Signature]:
    """Apply `integer_matmul_rule` and `integer_conv_rule` wherever they hold, and drop the
    float64 round trip a rewritten convolution leaves under an int32 cast."""

    def visit(p: Pending, rb: Rebuilder) -> Node:
        for rule in (integer_matmul_rule, integer_conv_rule):
            node = rule(p, rb)
            if node is not None:
                ctx.hit(rule)
                return node
        node = _round_trip(p)
        if node is not None:
            ctx.hit(_round_trip)
            return node
        return rb.keep(p)

    return Rebuilder(graph, visit).run().finish(sig)


def explain(graph: Graph) -> list[str]:
    """One line for every int32 matmul, and every float64 convolution of integers, of
    `graph` (an optimized graph: the pass has run) left off the int8 GEMM, with the
    reason (`graphc dump --stage optimized --explain`)."""
    def value(node: Node) -> np.ndarray | None:
        return graph.constants.get(node.name) if node.op == "constant" else None

    lines = []
    for node in graph.nodes:
        why: Plan | str | None = None
        if node.op == "matmul" and node.dtype == DType.int32:
            why = matmul_plan(node, value)
        elif node.op == "conv2d" and node.dtype == DType.float64:
            why = conv_plan(node, value)
        if isinstance(why, str):
            lines.append(f"%{node.name} ({node.op}, {node.dtype}): {why}")
    return lines


PASS = PassDef("integer_matmul", integer_matmul,
               "int32 matmuls and convolutions of 8-bit values (imported MatMulInteger, "
               "ConvInteger, QLinear*) as the int8 GEMM",
               enabled_by=frozenset({"constant_fold"}))
