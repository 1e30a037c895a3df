"""ONNX conversion rules by family; importing this package registers them all
(`graphc.onnx.convert.RULES`)."""

from graphc.onnx.rules import composite, elementwise, nn, tensor

__all__ = ["composite", "elementwise", "nn", "tensor"]
