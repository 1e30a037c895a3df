"""A PyTorch twin of a small GPT built with graphc's transformer layers (llm.c's test
pattern: one model, two implementations, the same weights, compare logits and steps).

The graphc model is ``Sequential([Embedding, PositionalEmbedding, n x pre-norm causal
TransformerEncoderLayer, LayerNorm, Dense])``; the twin is the same stack of torch modules
(``nn.TransformerEncoderLayer(norm_first=True, batch_first=True, activation="gelu")``, so
torch's own layer is the reference). `copy_gpt` copies graphc's initial weights into the
twin; the copy helpers for one attention, encoder or decoder layer serve the layer tests.

Import this module only after ``pytest.importorskip("torch")``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

import graphc as gc


@dataclass(frozen=True)
class GPTConfig:
    """The issue's model: 2 layers, d=256, 4 heads, FFN 1024, vocab 1000, T <= 128."""

    vocab: int = 1000
    d_model: int = 256
    nhead: int = 4
    dim_feedforward: int = 1024
    layers: int = 2
    max_len: int = 128


def build_gpt(config: GPTConfig, dtype: str = "float32", seed: int = 0) -> gc.nn.Sequential:
    """graphc's GPT (no dropout); weights of `dtype` once called on int ids."""
    return gc.nn.Sequential([
        gc.nn.Embedding(config.vocab, config.d_model, dtype=dtype, seed=seed),
        gc.nn.PositionalEmbedding(config.max_len, config.d_model, seed=seed + 1),
        *(gc.nn.TransformerEncoderLayer(config.d_model, config.nhead, config.dim_feedforward,
                                        dropout=0.0, causal=True, seed=seed + 2 + i)
          for i in range(config.layers)),
        gc.nn.LayerNorm(),
        gc.nn.Dense(config.vocab),
    ])


class TorchGPT(nn.Module):
    """The twin: token and position embeddings, causal pre-norm encoder layers, final norm,
    vocabulary projection."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.wte = nn.Embedding(config.vocab, config.d_model)
        self.wpe = nn.Embedding(config.max_len, config.d_model)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(config.d_model, config.nhead, config.dim_feedforward,
                                       dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True)
            for _ in range(config.layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        steps = ids.shape[1]
        x = self.wte(ids) + self.wpe.weight[:steps]
        mask = nn.Transformer.generate_square_subsequent_mask(steps, dtype=x.dtype)
        for block in self.blocks:
            x = block(x, src_mask=mask, is_causal=True)
        return self.head(self.ln_f(x))


def value(graph: gc.Graph, layer: gc.nn.Layer, short: str) -> np.ndarray:
    """The live array of `layer`'s weight `short`."""
    return graph.variables[layer.weights[short].name]


def _set(param: torch.Tensor, array: np.ndarray) -> None:
    with torch.no_grad():
        param.copy_(torch.from_numpy(np.ascontiguousarray(array)))


def copy_dense(graph: gc.Graph, layer: gc.nn.Layer, linear: nn.Linear) -> None:
    """A Dense (kernel (in, out)) into an nn.Linear (weight (out, in))."""
    _set(linear.weight, value(graph, layer, "kernel").T)
    if linear.bias is not None:
        _set(linear.bias, value(graph, layer, "bias"))


def copy_norm(graph: gc.Graph, layer: gc.nn.Layer, norm: nn.LayerNorm) -> None:
    _set(norm.weight, value(graph, layer, "gamma"))
    if norm.bias is not None:
        _set(norm.bias, value(graph, layer, "beta"))


def copy_mha(graph: gc.Graph, layer: gc.nn.MultiHeadAttention,
             mha: nn.MultiheadAttention) -> None:
    """A fused-projection MultiHeadAttention into nn.MultiheadAttention (in_proj_weight is
    the q | k | v kernel transposed)."""
    _set(mha.in_proj_weight, value(graph, layer, "qkv_kernel").T)
    _set(mha.out_proj.weight, value(graph, layer, "out_kernel").T)
    if mha.in_proj_bias is not None:
        _set(mha.in_proj_bias, value(graph, layer, "qkv_bias"))
        _set(mha.out_proj.bias, value(graph, layer, "out_bias"))


def copy_block(graph: gc.Graph, layer: Any, block: nn.Module) -> None:
    """An encoder or decoder layer into its torch counterpart, sublayer by sublayer (the
    names are PyTorch's)."""
    for short, sub in layer.sublayers.items():
        if isinstance(sub, gc.nn.MultiHeadAttention):
            copy_mha(graph, sub, getattr(block, short))
        elif isinstance(sub, gc.nn.Dense):
            copy_dense(graph, sub, getattr(block, short))
        elif isinstance(sub, gc.nn.LayerNorm):
            copy_norm(graph, sub, getattr(block, short))


def copy_gpt(graph: gc.Graph, net: gc.nn.Sequential, model: TorchGPT) -> None:
    """Every weight of graphc's GPT into the twin."""
    embedding, positions, *blocks, norm, head = net.layers
    _set(model.wte.weight, value(graph, embedding, "embeddings"))
    _set(model.wpe.weight, value(graph, positions, "embeddings"))
    for layer, block in zip(blocks, model.blocks, strict=True):
        copy_block(graph, layer, block)
    copy_norm(graph, norm, model.ln_f)
    copy_dense(graph, head, model.head)
