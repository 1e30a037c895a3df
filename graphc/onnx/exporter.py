"""`gc.onnx.save`: a graphc signature as an ONNX model (opsets 17 to 21).

Placeholders become graph inputs, variables and constants initializers, and each graphc op
one ONNX node or a short composition (`EMIT`; region ops, in `export_control.py`: scan is
ONNX's Scan, cond If and while_loop Loop, their bodies subgraphs); ops with no ONNX form
(random numbers, gradient kernels) are listed together in one error. Node names are
graphc's, so the model reads like `graphc dump`. The file is written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from graphc.io.atomic import atomic_write
from graphc.ir import DType, Graph, Node, Signature
from graphc.onnx.model import OnnxError, require_onnx

MIN_SAVE_OPSET, MAX_SAVE_OPSET = 17, 21
_ELEM = {DType.float32: 1, DType.int32: 6, DType.int64: 7, DType.bool: 9, DType.float64: 11,
         DType.uint8: 2, DType.int8: 3, DType.bfloat16: 16}


class _Writer:
    """Accumulates nodes and initializers; names are graphc's node names."""

    def __init__(self, onnx: Any, opset: int):
        self.onnx, self.opset = onnx, opset
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.count = 0

    def fresh(self, base: str) -> str:
        self.count += 1
        return f"{base}__{self.count}"

    def node(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [output],
                                                     name=output, **attrs))
        return output

    def tmp(self, op: str, inputs: list[str], base: str, **attrs: Any) -> str:
        return self.node(op, inputs, self.fresh(base), **attrs)

    def const(self, array: np.ndarray, base: str) -> str:
        name = self.fresh(base)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def ints(self, values: Any, base: str) -> str:
        return self.const(np.asarray(list(values), dtype=np.int64), base)


Emit = Callable[[_Writer, Node, list[str], str], None]
EMIT: dict[str, Emit] = {}


def _simple(op: str, onnx_op: str) -> None:
    def emit(w: _Writer, n: Node, ins: list[str], out: str) -> None:
        w.node(onnx_op, ins, out)
    EMIT[op] = emit


for _name, _onnx in (("abs", "Abs"), ("ceil", "Ceil"), ("cos", "Cos"), ("erf", "Erf"),
                     ("exp", "Exp"), ("floor", "Floor"), ("log", "Log"), ("neg", "Neg"),
                     ("reciprocal", "Reciprocal"), ("relu", "Relu"), ("round", "Round"),
                     ("sigmoid", "Sigmoid"), ("sign", "Sign"), ("sin", "Sin"),
                     ("sqrt", "Sqrt"), ("tanh", "Tanh"), ("softplus", "Softplus"),
                     ("logical_not", "Not"), ("stop_gradient", "Identity"), ("selu", "Selu"),
                     ("add", "Add"), ("sub", "Sub"), ("mul", "Mul"), ("div", "Div"),
                     ("pow", "Pow"), ("equal", "Equal"), ("less", "Less"),
                     ("less_equal", "LessOrEqual"), ("greater", "Greater"),
                     ("greater_equal", "GreaterOrEqual"), ("logical_and", "And"),
                     ("logical_or", "Or"), ("maximum", "Max"), ("minimum", "Min"),
                     ("where", "Where")):
    _simple(_name, _onnx)


def _emit(op: str) -> Callable[[Emit], Emit]:
    def register(fn: Emit) -> Emit:
        EMIT[op] = fn
        return fn
    return register


@_emit("not_equal")
def _not_equal(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    w.node("Not", [w.tmp("Equal", ins, out)], out)


@_emit("expm1")
def _expm1(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    one = w.const(np.array(1, n.dtype.np), out)
    w.node("Sub", [w.tmp("Exp", ins, out), one], out)


@_emit("log1p")
def _log1p(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    one = w.const(np.array(1, n.dtype.np), out)
    w.node("Log", [w.tmp("Add", [ins[0], one], out)], out)


@_emit("rsqrt")
def _rsqrt(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    w.node("Reciprocal", [w.tmp("Sqrt", ins, out)], out)


@_emit("square")
def _square(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    w.node("Mul", [ins[0], ins[0]], out)


@_emit("elu")
def _elu(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    w.node("Elu", ins, out, alpha=float(n.attrs["alpha"]))


@_emit("leaky_relu")
def _leaky_relu(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    w.node("LeakyRelu", ins, out, alpha=float(n.attrs["alpha"]))


@_emit("gelu")
def _gelu(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    approximate = str(n.attrs["approximate"])
    if w.opset >= 20:
        w.node("Gelu", ins, out, approximate=approximate)
        return
    x = ins[0]

    def c(v: float) -> str:
        return w.const(np.array(v, n.dtype.np), out)
    if approximate == "tanh":
        cube = w.tmp("Mul", [w.tmp("Mul", [x, x], out), x], out)
        inner = w.tmp("Mul", [w.tmp("Add", [x, w.tmp("Mul", [cube, c(0.044715)], out)], out),
                              c(float(np.sqrt(2 / np.pi)))], out)
        t = w.tmp("Tanh", [inner], out)
    else:
        t = w.tmp("Erf", [w.tmp("Mul", [x, c(float(1 / np.sqrt(2)))], out)], out)
    half = w.tmp("Mul", [x, c(0.5)], out)
    w.node("Mul", [half, w.tmp("Add", [t, c(1.0)], out)], out)


@_emit("mod")
def _mod(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    if not n.dtype.is_float:
        w.node("Mod", ins, out, fmod=0)
        return
    # Python's mod for floats (the sign of b): a - b·floor(a / b).
    a, b = ins
    q = w.tmp("Floor", [w.tmp("Div", [a, b], out)], out)
    w.node("Sub", [a, w.tmp("Mul", [b, q], out)], out)


@_emit("cast")
def _cast(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    w.node("Cast", ins, out, to=_ELEM[n.dtype])


@_emit("matmul")
def _matmul(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    if n.attrs["b_panels"]:
        raise OnnxError(f"matmul node '{n.name}' reads b in the compiler's packed layout "
                        f"(b_panels={n.attrs['b_panels']}); save the graph as built, before "
                        "gc.compile's passes")
    a, b = ins
    for i, flag in ((0, "transpose_a"), (1, "transpose_b")):
        if n.attrs[flag]:
            rank = n.inputs[i].ndim
            perm = [*range(rank - 2), rank - 1, rank - 2]
            name = w.tmp("Transpose", [ins[i]], out, perm=perm)
            a, b = (name, b) if i == 0 else (a, name)
    w.node("MatMul", [a, b], out)


@_emit("matmul_integer")
def _matmul_integer(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    """uint8 x int8 -> int32 (ONNX MatMulInteger; its optional a_zero_point is graphc's)."""
    if n.attrs["b_groups"]:
        raise OnnxError(f"matmul_integer node '{n.name}' reads b in the compiler's packed "
                        f"layout (b_groups={n.attrs['b_groups']}); save the graph as built, "
                        "before gc.compile's passes")
    ins = list(ins)
    for i, flag in ((0, "transpose_a"), (1, "transpose_b")):
        if n.attrs[flag]:
            rank = n.inputs[i].ndim
            perm = [*range(rank - 2), rank - 1, rank - 2]
            ins[i] = w.tmp("Transpose", [ins[i]], out, perm=perm)
    w.node("MatMulInteger", ins, out)


@_emit("reshape")
def _reshape(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    w.node("Reshape", [ins[0], w.ints(n.shape, out)], out)


@_emit("transpose")
def _transpose(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    w.node("Transpose", ins, out, perm=list(n.attrs["perm"]))


@_emit("broadcast_to")
def _broadcast_to(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    w.node("Expand", [ins[0], w.ints(n.shape, out)], out)


@_emit("concat")
def _concat(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    w.node("Concat", ins, out, axis=int(n.attrs["axis"]))


@_emit("slice")
def _slice(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    starts, stops, steps = n.attrs["starts"], n.attrs["stops"], n.attrs["steps"]
    w.node("Slice", [ins[0], w.ints(starts, out), w.ints(stops, out),
                     w.ints(range(len(starts)), out), w.ints(steps, out)], out)


@_emit("reverse")
def _reverse(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    axes = list(n.attrs["axes"])
    big = np.iinfo(np.int64).max
    w.node("Slice", [ins[0], w.ints([-1] * len(axes), out), w.ints([-big] * len(axes), out),
                     w.ints(axes, out), w.ints([-1] * len(axes), out)], out)


@_emit("pad")
def _pad(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    rows = [tuple(r) for r in n.attrs["pads"]]  # (low, high, interior) per axis
    if any(len(r) > 2 and r[2] for r in rows):
        raise OnnxError(f"pad node '{n.name}': interior padding has no ONNX form")
    pads = [r[0] for r in rows] + [r[1] for r in rows]
    value = w.const(np.array(n.attrs["value"], n.dtype.np), out)
    w.node("Pad", [ins[0], w.ints(pads, out), value], out, mode="constant")


@_emit("take")
def _take(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    w.node("Gather", ins, out, axis=int(n.attrs["axis"]))


@_emit("take_along_axis")
def _take_along_axis(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    w.node("GatherElements", ins, out, axis=int(n.attrs["axis"]))


def _reduction(op: str, onnx_op: str, axes_input_from: int) -> None:
    def emit(w: _Writer, n: Node, ins: list[str], out: str) -> None:
        axes = list(n.attrs["axes"])
        keep = int(bool(n.attrs["keepdims"]))
        if not axes:
            w.node("Identity", ins, out)
        elif w.opset >= axes_input_from:
            w.node(onnx_op, [ins[0], w.ints(axes, out)], out, keepdims=keep)
        else:
            w.node(onnx_op, ins, out, axes=axes, keepdims=keep)
    EMIT[op] = emit


_reduction("sum", "ReduceSum", 13)
_reduction("max", "ReduceMax", 18)
_reduction("min", "ReduceMin", 18)
_reduction("prod", "ReduceProd", 18)


def _arg(op: str, onnx_op: str) -> None:
    def emit(w: _Writer, n: Node, ins: list[str], out: str) -> None:
        (axis,) = n.attrs["axes"]
        w.node(onnx_op, ins, out, axis=int(axis), keepdims=int(bool(n.attrs["keepdims"])))
    EMIT[op] = emit


_arg("argmax", "ArgMax")
_arg("argmin", "ArgMin")


@_emit("softmax")
def _softmax(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    w.node("Softmax", ins, out, axis=int(n.attrs["axis"]))


@_emit("log_softmax")
def _log_softmax(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    w.node("LogSoftmax", ins, out, axis=int(n.attrs["axis"]))


@_emit("layer_norm")
def _layer_norm(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    axes = list(n.attrs["axes"])
    x, *params = ins
    if not n.attrs["has_gamma"]:  # LayerNormalization's Scale is not optional
        params.insert(0, w.const(np.ones(n.shape[axes[0]:], n.dtype.np), out))
    w.node("LayerNormalization", [x, *params], out, axis=axes[0],
           epsilon=float(n.attrs["eps"]))


@_emit("rms_norm")
def _rms_norm(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    # RMSNormalization is opset 23: x / sqrt(mean(x²) + eps) (* gamma) spelled out.
    x, axes = ins[0], list(n.attrs["axes"])
    square = w.tmp("Mul", [x, x], out)
    if w.opset >= 18:
        ms = w.tmp("ReduceMean", [square, w.ints(axes, out)], out, keepdims=1)
    else:
        ms = w.tmp("ReduceMean", [square], out, axes=axes, keepdims=1)
    eps = w.const(np.array(n.attrs["eps"], n.dtype.np), out)
    root = w.tmp("Sqrt", [w.tmp("Add", [ms, eps], out)], out)
    if len(ins) == 1:
        w.node("Div", [x, root], out)
    else:
        w.node("Mul", [w.tmp("Div", [x, root], out), ins[1]], out)


def _spatial(n: Node) -> dict[str, Any]:
    (t, b), (left, r) = n.attrs["pads"]
    return {"pads": [t, left, b, r], "strides": list(n.attrs["strides"])}


@_emit("conv2d")
def _conv2d(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    if n.attrs["weight_panels"]:
        raise OnnxError(f"conv2d node '{n.name}' reads its weights in the compiler's packed "
                        f"layout (weight_panels={n.attrs['weight_panels']}); save the graph "
                        "as built, before gc.compile's passes")
    w.node("Conv", ins, out, dilations=list(n.attrs["dilation"]), group=int(n.attrs["groups"]),
           kernel_shape=list(n.inputs[1].shape[2:]), **_spatial(n))


@_emit("max_pool2d")
def _max_pool2d(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    w.node("MaxPool", ins, out, kernel_shape=list(n.attrs["kernel"]), **_spatial(n))


@_emit("avg_pool2d")
def _avg_pool2d(w: _Writer, n: Node, ins: list[str], out: str) -> None:
    w.node("AveragePool", ins, out, kernel_shape=list(n.attrs["kernel"]),
           count_include_pad=int(bool(n.attrs["count_include_pad"])), **_spatial(n))


def _ops(nodes: Sequence[Node]) -> set[str]:
    """The ops of `nodes` and of every body they own, at every depth."""
    ops = {n.op for n in nodes}
    for n in nodes:
        for region in n.regions:
            ops |= _ops(region.needed_nodes())
    return ops


def _write(w: _Writer, nodes: Sequence[Node], name: Callable[[Node], str]) -> None:
    """Emit `nodes` (in order) into `w`, each ONNX value named `name(node)`; variables and
    constants become initializers, placeholders are left to the caller."""
    for n in nodes:
        if n.op in ("variable", "constant"):
            values = n.graph.variables if n.op == "variable" else n.graph.constants
            w.initializers.append(_initializer(w.onnx, np.asarray(values[n.name]), n,
                                               name(n)))
        elif n.op != "placeholder":
            EMIT[n.op](w, n, [name(i) for i in n.inputs], name(n))


def _initializer(onnx: Any, array: np.ndarray, n: Node, name: str) -> Any:
    """A TensorProto of `n`'s type: bfloat16 arrays (graphc keeps their bits as uint16)
    are written as BFLOAT16 raw data, not as UINT16."""
    if n.dtype == DType.bfloat16:
        return onnx.helper.make_tensor(name, _ELEM[DType.bfloat16], list(array.shape),
                                       np.ascontiguousarray(array, "<u2").tobytes(),
                                       raw=True)
    return onnx.numpy_helper.from_array(array, name)


def to_model(graph: Graph, signature: str = "main", opset: int = 17) -> Any:
    """The ONNX ModelProto of `graph`'s `signature` (its inputs and outputs)."""
    onnx = require_onnx()
    if not MIN_SAVE_OPSET <= opset <= MAX_SAVE_OPSET:
        raise OnnxError(f"opset {opset}: gc.onnx.save writes opsets {MIN_SAVE_OPSET} to "
                        f"{MAX_SAVE_OPSET}")
    if signature not in graph.signatures:
        raise OnnxError(f"graph {graph.name!r} has no signature {signature!r} (it has: "
                        f"{', '.join(graph.signatures) or 'none'})")
    sig: Signature = graph.signatures[signature]
    if sig.updates:
        raise OnnxError(f"signature {signature!r} updates variables; ONNX models are "
                        "inference graphs (export the signature without updates)")
    needed = sig.needed_nodes()
    missing = sorted(_ops(needed) - EMIT.keys() - {"placeholder", "variable", "constant"})
    if missing:
        raise OnnxError(f"no ONNX form for graphc op(s): {', '.join(missing)}")
    w = _Writer(onnx, opset)
    _write(w, needed, lambda n: n.name)
    inputs = [onnx.helper.make_tensor_value_info(n.name, _ELEM[n.dtype], list(n.shape))
              for n in sig.inputs]
    outputs = []
    used: set[str] = set()
    for n in sig.outputs:
        name = n.name
        if n.op in ("placeholder", "variable", "constant") or name in used:
            name = w.node("Identity", [n.name], w.fresh(n.name))
        used.add(name)
        outputs.append(onnx.helper.make_tensor_value_info(name, _ELEM[n.dtype], list(n.shape)))
    g = onnx.helper.make_graph(w.nodes, graph.name, inputs, outputs, w.initializers)
    model = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", opset)],
                                   producer_name="graphc")
    return model


def save(graph: Graph, path: str | os.PathLike[str], *, signature: str = "main",
         opset: int = 17) -> None:
    """Write `graph`'s `signature` as an ONNX model file (atomically)."""
    data = to_model(graph, signature, opset).SerializeToString()
    atomic_write(path, lambda f: f.write(data))
