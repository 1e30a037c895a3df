"""`graphc compile MODEL --quantize dynamic|static --calibration data.npz`: int8 export.

The model is quantized (`graphc.quant`) before it is exported, and a per-layer report goes
to stderr: each float matmul's GEMM shape, the precision chosen (int8, or float32 and why)
and, when calibration data is given, the error of that layer's output against the float32
model on it (max |error| and RMS error relative to the float output's RMS; the error of a
layer includes what earlier quantized layers passed on to it).

data.npz holds one array per input of the compiled signature, named by the input: either
one batch (the input's shape) or a stack of batches (count x the input's shape); all
inputs have the same count. It is untrusted input: read as a bounded zip
(`io.untrusted.ZipReader`), every .npy header checked against the input before its data
is read.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from graphc.cli.command import UsageError
from graphc.compile import compile as compile_graph
from graphc.errors import GraphcError, SerializationError
from graphc.io.untrusted import ZipReader, npy_array, open_regular_file, read_npy_header
from graphc.ir import Graph, Node
from graphc.options import CompileOptions
from graphc.quant import Layer, quantize
from graphc.quant.calibrate import METHODS

__all__ = ["add_arguments", "apply", "read_calibration"]

MAX_MEMBER_BYTES = 1 << 31  # 2 GiB per calibration array


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quantize", choices=("dynamic", "static"),
                   help="int8 matmuls: scales computed at run time (dynamic) or from "
                        "--calibration (static); prints a per-layer report")
    p.add_argument("--calibration", metavar="DATA.npz",
                   help="calibration batches, one array per input name (required by "
                        "--quantize static; with dynamic, measures the report's errors)")
    p.add_argument("--calibration-method", choices=METHODS, default="minmax",
                   help="static activation ranges: min/max (default) or percentiles")
    p.add_argument("--reduce-range", action="store_true",
                   help="7-bit weights in [-64, 64] (as ONNX Runtime's option): half the "
                        "resolution, ~0.76x the time of packed int8 GEMMs on CPUs without "
                        "VNNI")


def _inputs(graph: Graph, selected: dict[str, Any]) -> list[Node]:
    if "signature" in selected:
        if selected["signature"] not in graph.signatures:
            raise UsageError(f"graph {graph.name!r} has no signature "
                             f"{selected['signature']!r}")
        return list(graph.signatures[selected["signature"]].inputs)
    return list(selected.get("inputs", []))


def read_calibration(path: str, inputs: Sequence[Node]) -> list[list[np.ndarray]]:
    """The batches of `path` as positional arrays for `inputs` (module docstring)."""
    try:
        with open_regular_file(path) as f:
            zr = ZipReader(f)
            arrays = {}
            for node in inputs:
                member = f"{node.name}.npy"
                if member not in zr.members:
                    have = ", ".join(sorted(m.removesuffix(".npy") for m in zr.members))
                    raise GraphcError(f"calibration data {path} has no array for input "
                                      f"{node.name!r} (it has: {have or 'none'})")
                data = zr.read(member, MAX_MEMBER_BYTES)
                header = read_npy_header(io.BytesIO(data))
                shape = header.shape
                if shape not in (node.shape, shape[:1] + node.shape) or not node.dtype.is_float:
                    raise GraphcError(f"calibration array {node.name!r} in {path} holds "
                                      f"{header.describe()}; input {node.name!r} is "
                                      f"{node.type} (give one batch or a stack of batches)")
                value = npy_array(memoryview(data)[header.offset:], header)
                arrays[node.name] = (value[None] if shape == node.shape else value).astype(
                    node.dtype.np, copy=False)
    except OSError as exc:
        raise GraphcError(f"cannot read calibration data {path}: "
                          f"{exc.strerror or exc}") from None
    except SerializationError as exc:
        raise GraphcError(f"cannot read calibration data {path}: {exc.message}") from None
    counts = {len(a) for a in arrays.values()}
    if len(counts) > 1:
        raise GraphcError(f"calibration arrays in {path} hold different numbers of batches "
                          f"({sorted(counts)})")
    count = counts.pop() if counts else 0
    return [[arrays[n.name][i] for n in inputs] for i in range(count)]


def layer_errors(source: Graph, quantized: Graph, inputs: Sequence[Node],
                 layers: Sequence[Layer], batches: Sequence[Sequence[np.ndarray]],
                 options: CompileOptions) -> dict[str, tuple[float, float]]:
    """{layer: (max |error|, RMS error / RMS of the float output)} over `batches`."""
    names = [layer.name for layer in layers]
    if not names or not batches:
        return {}
    ref = compile_graph(source, inputs, [source[n] for n in names], options=options)
    got = compile_graph(quantized, [quantized[n.name] for n in inputs],
                        [quantized[n] for n in names], options=options)
    worst = dict.fromkeys(names, 0.0)
    sq_err = dict.fromkeys(names, 0.0)
    sq_ref = dict.fromkeys(names, 0.0)
    for batch in batches:
        for name, r, q in zip(names, ref(*batch), got(*batch)):
            d = np.asarray(q, np.float64) - np.asarray(r, np.float64)
            worst[name] = max(worst[name], float(np.max(np.abs(d))) if d.size else 0.0)
            sq_err[name] += float(np.sum(d * d))
            sq_ref[name] += float(np.sum(np.asarray(r, np.float64) ** 2))
    return {n: (worst[n], float(np.sqrt(sq_err[n] / sq_ref[n])) if sq_ref[n] else 0.0)
            for n in names}


def format_report(layers: Sequence[Layer], errors: dict[str, tuple[float, float]]) -> str:
    lines = [f"{'layer':<24} {'rows x k x n':<18} {'precision':<9} {'max|err|':>10} "
             f"{'rel rms':>9}  note"]
    for layer in layers:
        m, k, n = layer.shape
        err = errors.get(layer.name)
        cells = (f"{err[0]:>10.3g} {err[1]:>9.3g}" if err is not None
                 else f"{'-':>10} {'-':>9}")
        lines.append(f"{layer.name:<24} {f'{m}x{k}x{n}':<18} {layer.precision:<9} {cells}  "
                     f"{layer.reason}")
    return "\n".join(lines)


def apply(graph: Graph, args: argparse.Namespace, selected: dict[str, Any],
          options: CompileOptions) -> Graph:
    """The graph to export: `graph` quantized as the flags ask (itself without
    --quantize), after printing the per-layer report to stderr."""
    if args.quantize is None:
        for flag, given in (("--calibration", args.calibration is not None),
                            ("--reduce-range", args.reduce_range)):
            if given:
                raise UsageError(f"{flag} needs --quantize")
        return graph
    inputs = _inputs(graph, selected)
    if args.quantize == "static" and args.calibration is None:
        raise UsageError("--quantize static needs --calibration DATA.npz")
    batches = read_calibration(args.calibration, inputs) if args.calibration else []
    result = quantize(graph, args.quantize, batches, args.calibration_method, inputs=inputs,
                      reduce_range=args.reduce_range)
    errors = layer_errors(graph, result.graph, inputs, result.layers, batches, options)
    print(f"quantized ({args.quantize}"
          + (f", {args.calibration_method} over {len(batches)} batches" if batches else "")
          + (", 7-bit weights" if args.reduce_range else "")
          + f"): {len(result.int8_layers)} of {len(result.layers)} matmuls in int8",
          file=sys.stderr)
    print(format_report(result.layers, errors), file=sys.stderr)
    return result.graph
