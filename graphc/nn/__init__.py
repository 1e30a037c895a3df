"""Keras-style layers built from graphc ops (see `graphc.nn.layer` for the contracts).

    net = gc.nn.Sequential([gc.nn.Dense(128, "relu"), gc.nn.Dropout(0.2), gc.nn.Dense(10)])
    logits = net(x, training=True)

Families: `core` (Dense, Flatten, Activation, Dropout, Embedding, Add), `conv` (Conv2D,
DepthwiseConv2D, MaxPool2D, AvgPool2D, GlobalAvgPool2D), `norm` (BatchNorm, LayerNorm, RMSNorm),
`recurrent` (SimpleRNN, LSTM, GRU), `attention` (MultiHeadAttention), `transformer`
(TransformerEncoderLayer, TransformerDecoderLayer, PositionalEmbedding), `kv_cache`
(KVCache), `gpt` (GPT), `generate` (Generator: KV-cached sampling), `container`
(Sequential), `regularizers` (L1, L2, L1L2), `losses` (per-example losses by name, used by
`gc.Model`).
"""

from graphc.nn import activations, initializers, losses, regularizers
from graphc.nn.attention import MultiHeadAttention
from graphc.nn.container import Sequential
from graphc.nn.convolutional import AvgPool2D, Conv2D, DepthwiseConv2D, GlobalAvgPool2D, MaxPool2D
from graphc.nn.core import Activation, Add, Dense, Dropout, Embedding, Flatten
from graphc.nn.generate import Generator
from graphc.nn.gpt import GPT
from graphc.nn.kv_cache import KVCache
from graphc.nn.layer import Layer, Scope, current_scope
from graphc.nn.norm import BatchNorm, LayerNorm, RMSNorm
from graphc.nn.recurrent import GRU, LSTM, Bidirectional, SimpleRNN
from graphc.nn.regularizers import L1, L1L2, L2
from graphc.nn.transformer import (
    PositionalEmbedding,
    TransformerDecoderLayer,
    TransformerEncoderLayer,
)

__all__ = [
    "GPT",
    "GRU",
    "L1",
    "L1L2",
    "L2",
    "LSTM",
    "Activation",
    "Add",
    "AvgPool2D",
    "BatchNorm",
    "Bidirectional",
    "Conv2D",
    "Dense",
    "DepthwiseConv2D",
    "Dropout",
    "Embedding",
    "Flatten",
    "Generator",
    "GlobalAvgPool2D",
    "KVCache",
    "Layer",
    "LayerNorm",
    "MaxPool2D",
    "MultiHeadAttention",
    "PositionalEmbedding",
    "RMSNorm",
    "Scope",
    "Sequential",
    "SimpleRNN",
    "TransformerDecoderLayer",
    "TransformerEncoderLayer",
    "activations",
    "current_scope",
    "initializers",
    "losses",
    "regularizers",
]
