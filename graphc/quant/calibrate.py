"""Calibration for static quantization: the ranges of every quantizable matmul's input.

The float graph runs on each calibration batch (compiled, or with the reference
interpreter), returning the input of every matmul `rewrite.find_layers` can quantize; a
range per matmul is then the min and max over all batches ("minmax") or the
`percentile`-th and (100 - `percentile`)-th percentiles of all values seen ("percentile",
which clips rare outliers and spends the 256 levels on the bulk of the values).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from graphc.compile import compile as compile_graph
from graphc.ir import Graph, Node
from graphc.quant.rewrite import QuantizationError, Range, find_layers
from graphc.runtime.reference import reference

METHODS = ("minmax", "percentile")


class CalibrationError(QuantizationError):
    """Calibration data that does not fit the graph, or an unknown method."""


def graph_inputs(graph: Graph, inputs: Sequence[Node] | None) -> list[Node]:
    """The placeholders a batch binds: `inputs`, else the only signature's, else all of the
    graph's placeholders in graph order."""
    if inputs is not None:
        return list(inputs)
    if len(graph.signatures) == 1:
        return list(next(iter(graph.signatures.values())).inputs)
    return [n for n in graph.nodes if n.op == "placeholder"]


def _args(batch: Any, inputs: Sequence[Node]) -> list[np.ndarray]:
    """One batch as positional arrays: an array (one input), a sequence, or a mapping by
    placeholder name."""
    if isinstance(batch, Mapping):
        try:
            return [np.asarray(batch[n.name]) for n in inputs]
        except KeyError as exc:
            raise CalibrationError(f"calibration batch has no array for input {exc}; it has "
                                   f"{sorted(batch)}") from None
    if isinstance(batch, np.ndarray):
        batch = [batch]
    arrays = [np.asarray(b) for b in batch]
    if len(arrays) != len(inputs):
        raise CalibrationError(f"calibration batch of {len(arrays)} arrays; the graph takes "
                               f"{len(inputs)} inputs ({[n.name for n in inputs]})")
    return arrays


def calibrate(graph: Graph, batches: Iterable[Any], method: str = "minmax", *,
              inputs: Sequence[Node] | None = None, percentile: float = 99.99,
              freeze_variables: bool = True, compiled: bool = True) -> dict[str, Range]:
    """{matmul name: Range of its input} over `batches` (see the module docstring)."""
    if method not in METHODS:
        raise CalibrationError(f"method must be one of {METHODS}, got {method!r}")
    if not 50.0 < percentile <= 100.0:
        raise CalibrationError(f"percentile must be in (50, 100], got {percentile}")
    weights, _ = find_layers(graph, freeze_variables)
    names = list(weights)
    if not names:
        return {}
    xs = [graph[name].inputs[0] for name in names]
    ins = graph_inputs(graph, inputs)
    run = (compile_graph(graph, ins, xs) if compiled else reference(graph, ins, xs))
    lo = {n: np.inf for n in names}
    hi = {n: -np.inf for n in names}
    seen: dict[str, list[np.ndarray]] = {n: [] for n in names}
    count = 0
    for batch in batches:
        outs = run(*_args(batch, ins))
        count += 1
        for name, value in zip(names, outs):
            v = np.asarray(value, np.float32)
            lo[name] = min(lo[name], float(v.min()))
            hi[name] = max(hi[name], float(v.max()))
            if method == "percentile":
                seen[name].append(v.reshape(-1))
    if count == 0:
        raise CalibrationError("no calibration batches")
    if method == "minmax":
        return {n: Range(lo[n], hi[n]) for n in names}
    ranges = {}
    for n in names:
        values = np.concatenate(seen[n])
        ranges[n] = Range(float(np.percentile(values, 100.0 - percentile)),
                          float(np.percentile(values, percentile)))
    return ranges
