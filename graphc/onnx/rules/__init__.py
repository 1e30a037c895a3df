"""ONNX conversion rules by family; importing this package registers them all
(`graphc.onnx.convert.RULES`)."""

from graphc.onnx.rules import (
    attention,
    bitwise,
    composite,
    control,
    detection,
    einsum,
    elementwise,
    grid_sample,
    image,
    indexing,
    matrix,
    ml,
    narrow,
    nn,
    qlinear,
    recurrent,
    recurrent_state,
    signal,
    spatial,
    tensor,
    text,
    topk,
    training,
    windows,
)

__all__ = ["attention", "bitwise", "composite", "control", "detection", "einsum", "elementwise",
           "grid_sample", "image", "indexing", "matrix", "ml", "narrow", "nn", "qlinear",
           "recurrent", "recurrent_state", "signal", "spatial", "tensor", "text", "topk",
           "training", "windows"]
