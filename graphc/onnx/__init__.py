"""ONNX models in graphc: `gc.onnx.load(path)` imports a model as a `Graph` with a signature
"main" (`importer`), which compiles, exports and trains like any graphc graph;
`gc.onnx.save(graph, path)` writes a signature as an ONNX model (`exporter`).

Needs the optional `onnx` package (`pip install 'graphc[onnx]'`); graphc imports without it
and `gc.onnx.load` then says what to install. `backend` adapts graphc to ONNX's backend
test suite (`onnx.backend.base.Backend`).
"""

# export_transformer and export_control register the ONNX forms of the transformer ops and
# of the region ops (scan, cond, while_loop) into the exporter.
from graphc.onnx import export_control, export_transformer
from graphc.onnx.exporter import save, to_model
from graphc.onnx.importer import load
from graphc.onnx.model import OnnxError

__all__ = ["OnnxError", "export_control", "export_transformer", "load", "save", "to_model"]
