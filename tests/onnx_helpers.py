"""Small ONNX models for the import tests, built with onnx.helper (needs onnx)."""

from __future__ import annotations

from typing import Any


def model_bytes(nodes: list, inputs: list, outputs: list, inits: list | None = None,
                opset: int = 17) -> bytes:
    """A serialized one-graph model of the default domain at `opset`."""
    from onnx import helper

    graph = helper.make_graph(nodes, "m", inputs, outputs, inits or [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]
                             ).SerializeToString()


def value_info(name: str, shape: list | None, elem: int = 1) -> Any:
    """A tensor's name, element type (default FLOAT) and shape."""
    from onnx import helper

    return helper.make_tensor_value_info(name, elem, shape)
