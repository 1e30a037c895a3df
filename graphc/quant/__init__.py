"""Post-training int8 quantization: graph-to-graph rewrites onto the u8 x s8 GEMM.

`quantize_dynamic(graph)`: activation scales computed at run time; `quantize_static(graph,
calibration_batches)`: scales fixed by calibration. Both return a new graph in which every
float32 matmul with a known 2-D weight (and conv2d with known weights, one group: `conv`)
runs as `matmul_integer` with a fused
dequantization epilogue (`rewrite`); `quantize` also returns the per-layer decisions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from graphc.ir import Graph, Node
from graphc.quant.calibrate import CalibrationError, calibrate
from graphc.quant.rewrite import (
    QMAX_WEIGHT,
    QMAX_WEIGHT_REDUCED,
    Dynamic,
    Layer,
    QuantizationError,
    Quantized,
    Range,
    Static,
    rewrite,
)

__all__ = ["CalibrationError", "Layer", "QuantizationError", "Quantized", "Range", "quantize",
           "quantize_dynamic", "quantize_static"]


def quantize(graph: Graph, mode: str = "dynamic", calibration_batches: Iterable[Any] = (),
             method: str = "minmax", *, inputs: Sequence[Node] | None = None,
             freeze_variables: bool = True, percentile: float = 99.99,
             compiled: bool = True, reduce_range: bool = False) -> Quantized:
    """The quantized graph and what happened to each matmul and convolution ("dynamic" or
    "static"; static calibrates on the compiled float graph, or with `compiled=False` on
    the reference interpreter; `reduce_range` as for `quantize_dynamic`)."""
    qmax = QMAX_WEIGHT_REDUCED if reduce_range else QMAX_WEIGHT
    if mode == "dynamic":
        return rewrite(graph, Dynamic(qmax), freeze_variables)
    if mode != "static":
        raise CalibrationError(f"mode must be 'dynamic' or 'static', got {mode!r}")
    ranges = calibrate(graph, calibration_batches, method, inputs=inputs,
                       percentile=percentile, freeze_variables=freeze_variables,
                       compiled=compiled)
    return rewrite(graph, Static(ranges, qmax), freeze_variables)


def quantize_dynamic(graph: Graph, *, freeze_variables: bool = True,
                     reduce_range: bool = False) -> Graph:
    """`graph` with every float32 matmul of a known 2-D weight (and every one-group conv2d
    of known weights, through im2col) in int8: weights quantized
    per output channel (symmetric int8) now, activations per tensor (asymmetric uint8)
    with scale and zero point computed in the graph from their min and max at run time.

    Weights that read variables are quantized from their current values (the result is an
    inference graph; later updates of the variables do not reach it) unless
    `freeze_variables` is False, which leaves those matmuls in float32. Nodes keep their
    names and the source's signatures are carried over, so ``new[old_node.name]`` finds a
    node's counterpart.

    `reduce_range` (as ONNX Runtime's option): weights in 7 bits, [-64, 64], instead of
    [-127, 127]. Half the weight resolution, but on CPUs without VNNI (AVX2 or AVX-512BW)
    the integer GEMM of every layer whose weights it stores packed (K a multiple of 4, N
    of the panel width, 16 on AVX2) multiplies with `pmaddubsw`, exactly, in about 0.76x
    the time; with VNNI it changes nothing but the resolution."""
    return rewrite(graph, Dynamic(QMAX_WEIGHT_REDUCED if reduce_range else QMAX_WEIGHT),
                   freeze_variables).graph


def quantize_static(graph: Graph, calibration_batches: Iterable[Any],
                    method: str = "minmax", *, inputs: Sequence[Node] | None = None,
                    freeze_variables: bool = True, percentile: float = 99.99,
                    compiled: bool = True, reduce_range: bool = False) -> Graph:
    """As `quantize_dynamic`, with each activation's uint8 scale and zero point fixed from
    its range on `calibration_batches` (each an array, a sequence of arrays for `inputs`,
    or a dict by placeholder name, each of the graph's input shapes), run through the
    compiled float graph (the reference interpreter with `compiled=False`): "minmax" or
    "percentile" (`calibrate`). The quantization of an activation then fuses into the
    kernel that produces it; `reduce_range` as for `quantize_dynamic`."""
    return quantize(graph, "static", calibration_batches, method, inputs=inputs,
                    freeze_variables=freeze_variables, percentile=percentile,
                    compiled=compiled, reduce_range=reduce_range).graph
