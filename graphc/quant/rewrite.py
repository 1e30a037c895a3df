"""The int8 rewrite of float32 matmuls, shared by dynamic and static quantization.

A float32 ``matmul(x, w)`` (x of rank >= 2, not transposed; w a 2-D weight whose value is
known without running the graph: constants, and variables when `freeze_variables`) becomes

    q    = cast(round(x / s) + z, uint8)            activations, per tensor, asymmetric
    acc  = matmul_integer(q, wq)                    exact int32 sums on vpdpbusd
    acc' = acc - z * colsum(wq)                     the zero point, exactly, in int32
    y    = cast(acc', float32) * (s * sw)           dequantized, per output channel

with ``wq = clip(round(w / sw), -127, 127)`` int8 and ``sw = max|w[:, n]| / 127`` computed
here in numpy (per output channel, symmetric: wq has no zero point, so the kernel needs no
column sums of its own). With ``reduce_range`` (ONNX Runtime's option of the same name)
the weights take 7 bits, [-64, 64] with ``sw = max|w[:, n]| / 64``: half the resolution,
but then every pair of products fits the 16-bit sums of `pmaddubsw`, which the integer
GEMM uses for such weights on CPUs without VNNI (0.76x the time of the exact 8-bit path on
a quantized MLP at batch 256 on Zen 3; `codegen/gemm/lowp.py`), for every layer whose
weights it stores packed (K a multiple of 4, N of the panel width: 16 on AVX2).

`y` takes the matmul's name and type, so whatever followed it (bias add, activation) reads
it unchanged, and every elementwise op of the chain from `acc` on -- zero-point
correction, dequantization, bias, activation -- fuses into the GEMM's epilogue
(`passes/fuse.py`: a low-precision GEMM stores each element once, in the epilogue's
dtype).

s and z are either computed in the graph at run time (`Dynamic`: min/max of x widened to
include 0, as ONNX's DynamicQuantizeLinear and ONNX Runtime's dynamic quantization do:
s = (hi - lo) / 255, 1 when hi == lo, z = round(clip(-lo / s, 0, 255))) or fixed numbers
from calibration (`Static`: then q is an elementwise chain that fuses into the kernel
producing x, storing uint8 straight from its epilogue).

A conv2d (one group, known weights) is the same product on its im2col rows
(`passes/im2col.py`). Layers that cannot be rewritten are kept in float32 and listed with
the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from graphc.codegen.gemm import lowp_gemv
from graphc.errors import GraphcError, SourceLoc
from graphc.ir import DType, Graph, Node, Signature, ancestors
from graphc.ops import elementwise as ew
from graphc.ops import layout, linalg, reduce
from graphc.passes.im2col import channels_last_padded, gather_taps, weight_matrix
from graphc.passes.rewrite import Pending, Rebuilder
from graphc.runtime.reference import reference


class QuantizationError(GraphcError):
    """A graph or its calibration that the int8 rewrite cannot use as asked."""


QMAX_WEIGHT = 127  # symmetric int8 weights in [-127, 127] (ONNX Runtime's default)
QMAX_WEIGHT_REDUCED = 64  # 7-bit weights, `reduce_range`: [-64, 64]


@dataclass(frozen=True)
class Range:
    """A calibrated activation range [lo, hi] of one matmul's input."""

    lo: float
    hi: float


@dataclass(frozen=True)
class Layer:
    """What happened to one float matmul: `name` is the matmul's node name (also the name
    of its replacement), `precision` "int8" or "float32", `reason` why it stayed float."""

    name: str
    precision: str
    reason: str = ""
    shape: tuple[int, int, int] = (0, 0, 0)  # (rows, k, n) of the GEMM


@dataclass(frozen=True)
class Quantized:
    """A quantized graph (every source signature mapped onto it, every surviving node
    keeps its name) and the per-layer decisions, in graph order."""

    graph: Graph
    layers: tuple[Layer, ...]

    @property
    def int8_layers(self) -> list[str]:
        return [layer.name for layer in self.layers if layer.precision == "int8"]


def weight_scales(w: np.ndarray, qmax: int = QMAX_WEIGHT) -> tuple[np.ndarray, np.ndarray]:
    """(wq int8 (K, N) in [-qmax, qmax], sw float32 (N,)): per output channel (column),
    symmetric."""
    w = np.asarray(w, np.float32)
    amax = np.max(np.abs(w), axis=0)
    sw = np.where(amax > 0, amax / np.float32(qmax), np.float32(1)).astype(np.float32)
    wq = np.clip(np.round(w / sw), -qmax, qmax).astype(np.int8)
    return wq, sw


def activation_params(lo: float, hi: float) -> tuple[np.float32, np.float32]:
    """(scale, zero point) of a uint8 range covering [lo, hi] and 0, in float32 exactly as
    the dynamic graph computes them."""
    f = np.float32
    lo32, hi32 = min(f(lo), f(0)), max(f(hi), f(0))
    span = f(hi32 - lo32)
    scale = f(f(1) if span == 0 else span) / f(255)
    zp = np.round(np.clip(-(lo32 / scale), f(0), f(255))).astype(np.float32)
    return f(scale), f(zp)


def _weight_value(graph: Graph, w: Node, freeze_variables: bool, rank: int = 2
                  ) -> tuple[np.ndarray | None, str]:
    """The weight's value, or None and why not."""
    if w.ndim != rank:
        return None, f"weight of rank {w.ndim} (a batch of matrices)"
    for node in ancestors([w]):
        if node.op == "placeholder":
            return None, f"weight depends on the input %{node.name}"
        if node.op == "variable" and not freeze_variables:
            return None, f"weight reads variable %{node.name} (freeze_variables=False)"
    if w.op == "constant":
        return np.asarray(graph.constants[w.name]), ""
    if w.op == "variable":
        return np.array(graph.variables[w.name]), ""
    return np.asarray(reference(graph, [], [w])()), ""


def find_layers(graph: Graph, freeze_variables: bool = True) -> tuple[
        dict[str, np.ndarray], list[Layer]]:
    """The float matmuls of `graph`: {name: weight as (K, N) float32} of those that can be
    quantized, and a `Layer` for every float matmul (int8 or why not)."""
    weights: dict[str, np.ndarray] = {}
    layers: list[Layer] = []
    for node in graph.nodes:
        if node.op == "conv2d" and node.dtype == DType.float32:
            layers.append(_conv_layer(graph, node, freeze_variables, weights))
            continue
        if node.op != "matmul" or node.dtype != DType.float32:
            continue
        a, b = node.inputs
        ta, tb = bool(node.attrs["transpose_a"]), bool(node.attrs["transpose_b"])
        k = a.shape[-2] if ta else a.shape[-1]
        shape = (int(np.prod(node.shape[:-1])), int(k), int(node.shape[-1]))
        if ta:
            layers.append(Layer(node.name, "float32", "transpose_a", shape))
            continue
        if node.attrs["b_panels"]:
            layers.append(Layer(node.name, "float32", "b prepacked (b_panels)", shape))
            continue
        value, why = _weight_value(graph, b, freeze_variables)
        if value is None:
            layers.append(Layer(node.name, "float32", why, shape))
            continue
        weights[node.name] = np.ascontiguousarray((value.T if tb else value), np.float32)
        layers.append(Layer(node.name, "int8", "", shape))
    return weights, layers


def _conv_layer(graph: Graph, node: Node, freeze_variables: bool,
                weights: dict[str, np.ndarray]) -> Layer:
    """The Layer of a float conv2d; its weight matrix goes into `weights` if it is int8."""
    o, c, kh, kw = node.inputs[1].shape
    k, n = c * kh * kw, o
    shape = (int(np.prod(node.shape)) // n, k, n)
    if node.attrs["groups"] != 1:
        return Layer(node.name, "float32", "grouped convolution", shape)
    if node.attrs["weight_panels"]:
        return Layer(node.name, "float32", "weights prepacked (weight_panels)", shape)
    w = node.inputs[1]
    value, why = _weight_value(graph, w, freeze_variables, rank=4)
    if value is None:
        return Layer(node.name, "float32", why, shape)
    weights[node.name] = weight_matrix(np.asarray(value, np.float32))
    return Layer(node.name, "int8", "", shape)


@dataclass(frozen=True)
class Dynamic:
    """Activation scales computed in the graph at run time; weights in [-weight_max,
    weight_max]."""

    weight_max: int = QMAX_WEIGHT


@dataclass(frozen=True)
class Static:
    """Activation ranges fixed by calibration, by matmul name; weights in [-weight_max,
    weight_max]."""

    ranges: Mapping[str, Range]
    weight_max: int = QMAX_WEIGHT


def _activation_params(x: Node, mode: Dynamic | Static, layer: str, rb: Rebuilder
                       ) -> tuple[Node | np.float32, Node | np.float32]:
    """(scale, zero point as float) of x: nodes (dynamic) or numbers (static)."""
    def nm(what: str) -> str:
        return rb.fresh_name(f"{layer}.{what}")

    if isinstance(mode, Static):
        r = mode.ranges[layer]
        return activation_params(r.lo, r.hi)
    lo = ew.minimum(reduce.min(x, name=nm("min")), 0.0, name=nm("lo"))
    hi = ew.maximum(reduce.max(x, name=nm("max")), 0.0, name=nm("hi"))
    span = ew.sub(hi, lo, name=nm("span"))
    safe = ew.where(ew.equal(span, 0.0, name=nm("flat")), 1.0, span, name=nm("range"))
    scale_n = ew.div(safe, 255.0, name=nm("scale"))
    zp_n = ew.round(ew.clip(ew.neg(ew.div(lo, scale_n, name=nm("lz")), name=nm("nz")),
                            0.0, 255.0, name=nm("cz")), name=nm("zp"))
    return scale_n, zp_n


def _int8_product(p: Pending, rb: Rebuilder, x: Node, rows: Node, w: np.ndarray,
                  mode: Dynamic | Static, name: str,
                  gather: Callable[[Node], Node] | None = None) -> Node:
    """rows @ w in int8 (module docstring): `rows` (float, rank >= 2; `gather` maps its
    uint8 quantization to the GEMM's rows, if given) quantized with the scale and zero
    point of `x` (the layer's input, whose range `rows` shares), `w` (K, N); the result,
    float32, is named `name`. Call inside ``with rb.graph``."""
    wq, sw = weight_scales(w, mode.weight_max)
    colsum = wq.astype(np.int32).sum(axis=0, dtype=np.int32)
    layer = p.name

    def nm(what: str) -> str:
        return rb.fresh_name(f"{layer}.{what}")

    scale, zp = _activation_params(x, mode, layer, rb)
    shifted = ew.add(ew.round(ew.div(rows, scale, name=nm("xs")), name=nm("xr")), zp,
                     name=nm("xz"))
    q = ew.cast(shifted, DType.uint8, name=nm("xq"))
    if gather is not None:
        q = gather(q)
    # Few rows (batch-1 inference): the weight as (N, K), so the GEMV reads each output
    # channel's bytes contiguously (`codegen/gemm/lowp_gemv.py`); else (K, N), which the
    # packed GEMM packs fastest.
    few = int(np.prod(rows.shape[:-1])) <= lowp_gemv.MAX_ROWS
    stored = np.ascontiguousarray(wq.T) if few else wq
    wq_node = rb.constant(stored, at=p, name=nm("wq"), copy=False)
    acc = linalg.matmul_integer(q, wq_node, transpose_b=few, name=nm("acc"))
    if isinstance(zp, Node):
        zi = ew.cast(zp, DType.int32, name=nm("zi"))
        corr = ew.mul(zi, rb.constant(colsum, at=p, name=nm("colsum")), name=nm("corr"))
    else:
        corr = rb.constant((np.int32(zp) * colsum).astype(np.int32), at=p, name=nm("corr"))
    exact = ew.sub(acc, corr, name=nm("exact"))
    if isinstance(scale, Node):
        rescale = ew.mul(scale, rb.constant(sw, at=p, name=nm("sw")), name=nm("rescale"))
    else:
        rescale = rb.constant((scale * sw).astype(np.float32), at=p, name=nm("rescale"))
    return ew.mul(ew.cast(exact, DType.float32, name=nm("accf")), rescale, name=name)


def _int8_matmul(p: Pending, rb: Rebuilder, w: np.ndarray, mode: Dynamic | Static) -> Node:
    """The int8 form of matmul `p`, named as `p`."""
    with rb.graph:
        x = p.inputs[0]
        return _int8_product(p, rb, x, x, w, mode, p.name)


def _int8_conv(p: Pending, rb: Rebuilder, w: np.ndarray, mode: Dynamic | Static) -> Node:
    """The int8 form of conv2d `p` (`passes/im2col.py`): the padded channels-last input
    quantized, its taps gathered into GEMM rows, times the (kh*kw*C, O) weight matrix,
    back to NCHW; named as `p`."""
    x, kernel = p.inputs
    shape = kernel.shape

    def emit(op: str, inputs: Sequence[Node], attrs: dict[str, Any]) -> Node:
        return rb.emit(op, inputs, attrs, at=p, name=rb.fresh_name(f"{p.name}.{op}"))

    def gather(q: Node) -> Node:
        return gather_taps(emit, q, shape, p.attrs, p.shape)

    with rb.graph:
        rows = channels_last_padded(emit, x, shape, p.attrs)
        y = _int8_product(p, rb, x, rows, w, mode, rb.fresh_name(f"{p.name}.nhwc"), gather)
        return layout.transpose(y, (0, 3, 1, 2), name=p.name)


def rewrite(graph: Graph, mode: Dynamic | Static, freeze_variables: bool = True) -> Quantized:
    """Quantize every float matmul and convolution of `graph` that `find_layers` accepts."""
    weights, layers = find_layers(graph, freeze_variables)
    if isinstance(mode, Static):
        missing = [name for name in weights if name not in mode.ranges]
        if missing:
            raise QuantizationError(f"no calibrated range for layer(s) {missing}")
    made: dict[str, SourceLoc | None] = {}  # nodes a rewrite built -> the layer's location

    def visit(p: Pending, rb: Rebuilder) -> Node:
        if p.name not in weights or p.op not in ("matmul", "conv2d"):
            return rb.keep(p)
        first = len(rb.graph.nodes)
        build = _int8_matmul if p.op == "matmul" else _int8_conv
        node = build(p, rb, weights[p.name], mode)
        made.update((n.name, p.loc) for n in rb.graph.nodes[first:])
        return node

    rb = Rebuilder(graph, visit).run()
    # The builder functions located the new nodes at the caller of the rewrite; as every
    # pass's do, they take the location of the layer they replace (`passes/rewrite.py`).
    relocated = Rebuilder(rb.graph, lambda p, r: r.keep(
        replace(p, loc=made[p.name]) if p.name in made else p)).run()
    out = relocated.graph
    for sig in graph.signatures.values():
        m = {old: relocated.mapping[new] for old, new in rb.mapping.items()}
        out.signatures[sig.name] = Signature(
            sig.name, tuple(m[n] for n in sig.inputs), tuple(m[n] for n in sig.outputs),
            tuple((m[v], m[u]) for v, u in sig.updates))
    return Quantized(out, tuple(layers))
