"""ONNX conversion rules by family; importing this package registers them all
(`graphc.onnx.convert.RULES`)."""

from graphc.onnx.rules import (
    composite,
    elementwise,
    indexing,
    nn,
    recurrent,
    spatial,
    tensor,
    windows,
)

__all__ = ["composite", "elementwise", "indexing", "nn", "recurrent", "spatial",
           "tensor", "windows"]
