"""graphc as an ONNX backend (`onnx.backend.base.Backend`), for ONNX's backend test suite.

`GraphcBackend.prepare(model)` imports the model (`gc.onnx.load`) and returns a rep whose
`run(inputs)` calls the numpy reference interpreter (`mode="reference"`, the default) or
the compiled executable (`mode="compile"`). Inputs are given in the order of the model's
graph inputs, as the suite does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from graphc.compile import compile as gc_compile
from graphc.onnx.importer import load
from graphc.onnx.model import (
    NUMPY_DTYPES,
    OnnxError,
    graphc_dtype,
    onnx_numpy,
    read_model,
    require_onnx,
)
from graphc.options import CompileOptions
from graphc.runtime.reference import reference


class GraphcRep:
    """A prepared model: call `run` with the input arrays, get the output arrays.

    Inputs arrive in the model's element types and are converted to the graph's (float16
    to float32, ...); outputs are converted back to the types the model declares. A model
    that needs an input's value at import (an axes or shape input) is imported again at each
    `run` with its integer and bool inputs given as `constants` (graphc graphs have static
    shapes), the float inputs staying run-time inputs; only if that is not enough (an op
    graphc computes on known float values only) are all inputs given.
    `inputs_given`: None (a run-time input for every model input), "integer" or "all".
    """

    def __init__(self, model: Any, mode: str, options: CompileOptions | None):
        if mode not in ("reference", "compile"):
            raise ValueError(f"mode must be 'reference' or 'compile', got {mode!r}")
        self.mode, self.options = mode, options
        onnx = require_onnx()
        proto = model if isinstance(model, onnx.ModelProto) else read_model(model).proto
        self.proto = proto
        inits = {t.name for t in proto.graph.initializer}
        self.inputs = [vi for vi in proto.graph.input if vi.name not in inits]
        self.out_types = [onnx_numpy(vi.type.tensor_type.elem_type)
                          for vi in proto.graph.output]
        self.inputs_given: str | None = None
        try:
            self.fn: Any = self._build(None)
        except OnnxError as exc:
            if not _needs_values(exc):
                raise
            self.fn = None  # built per run, with the inputs' values
            self.inputs_given = "integer"

    def _build(self, constants: dict[str, np.ndarray] | None) -> Any:
        graph = load(self.proto, constants=constants)
        if self.mode == "compile":
            return gc_compile(graph, signature="main", options=self.options)
        return reference(graph, signature="main")

    def run(self, inputs: Sequence[np.ndarray] | np.ndarray, **kwargs: Any) -> tuple[Any, ...]:
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        arrays = [np.asarray(a) for a in inputs]
        fn, given = self.fn, {}
        if fn is None:
            if self.inputs_given == "integer":
                given = {vi.name: a for vi, a in zip(self.inputs, arrays)
                         if a.dtype.kind not in "fc"}
                try:
                    fn = self._build(given)
                except OnnxError as exc:
                    if not _needs_values(exc):
                        raise
                    self.inputs_given = "all"
            if self.inputs_given == "all":
                given = {vi.name: a for vi, a in zip(self.inputs, arrays)}
                fn = self._build(given)
        args = []
        for vi, a in zip(self.inputs, arrays):
            if vi.name in given:
                continue
            dtype = graphc_dtype(vi.type.tensor_type.elem_type, f"input '{vi.name}'")
            args.append(a.astype(NUMPY_DTYPES[dtype], copy=False))
        out = fn(*args)
        outs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        return tuple(o.astype(t) if t is not None and o.dtype != t else o
                     for o, t in zip(outs, self.out_types))


def _needs_values(exc: OnnxError) -> bool:
    """Whether an import failed only because an input's value is needed at import."""
    return "must be known when the model is imported" in exc.message


def _backend_base() -> Any:
    require_onnx()
    from onnx.backend.base import Backend

    return Backend


class GraphcBackend(_backend_base()):  # type: ignore[misc]
    """`onnx.backend.base.Backend` over graphc (CPU only)."""

    @classmethod
    def prepare(cls, model: Any, device: str = "CPU", **kwargs: Any) -> GraphcRep:
        return GraphcRep(model, kwargs.get("mode", "reference"), kwargs.get("options"))

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"

    @classmethod
    def run_node(cls, node: Any, inputs: Any, device: str = "CPU",
                 outputs_info: Any = None, **kwargs: Any) -> tuple[Any, ...]:
        raise NotImplementedError("graphc runs whole models; use prepare(model).run(inputs)")
