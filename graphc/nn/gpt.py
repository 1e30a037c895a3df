"""`GPT`: a decoder-only transformer language model built from graphc's layers.

    gpt = gc.nn.GPT(vocab_size=1000, d_model=256, num_layers=2, num_heads=4,
                    dim_feedforward=1024, max_len=256)
    logits = gpt(tokens)                      # tokens (B, T) int -> logits (B, T, vocab)

The stack is GPT-2's: token embedding ``wte`` (+ learned positions ``wpe``, or rotary
positions inside attention with ``positions="rope"``), `num_layers` pre-norm causal
`TransformerEncoderLayer`s ``h0``, ``h1``, ... (GELU feed-forward), a final norm ``ln_f``
and the vocabulary projection ``lm_head`` (or, with ``tie_embeddings``, ``wteᵀ`` without a
bias, as GPT-2 ties them). Variables are ``<gpt>/wte/embeddings``,
``<gpt>/h0/self_attn/qkv_kernel``, ``<gpt>/lm_head/kernel`` ...

Training: ``gpt(tokens, training=True)`` inside `gc.Model` (loss
"sparse_categorical_crossentropy" on (B, T) next-token targets) or a hand-written step;
inference: `gc.nn.Generator` adds KV-cached prefill and decode signatures to the graph.
Incremental calls: ``gpt(tokens, caches=[KVCache per layer], pos=None | pos)`` (see
`graphc.nn.kv_cache`) record the cache writes as state updates; ``last_only=True`` gives the
logits of the last position only, (B, 1, V), skipping the head's work on the others.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from graphc.errors import AttrError, GraphcError, ShapeError
from graphc.ir import DType, Node
from graphc.nn import activations
from graphc.nn.attention import CallInputs, KeywordInputsLayer, check_rate
from graphc.nn.core import Dense, Dropout, Embedding
from graphc.nn.kv_cache import KVCache
from graphc.nn.layer import Layer, Scope
from graphc.nn.transformer import (
    NORMS,
    PositionalEmbedding,
    TransformerEncoderLayer,
    make_norm,
    run_sublayer,
)
from graphc.ops import layout, linalg, slicing

__all__ = ["GPT"]

POSITIONS = ("learned", "rope")


@dataclass(frozen=True)
class GPTInputs(CallInputs):
    """`GPT`'s call: token ids, and for incremental calls the caches and the position."""

    caches: tuple[KVCache, ...] | None = None
    pos: Node | None = None
    last_only: bool = False


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AttrError(f"{name} must be an int >= 1, got {value!r}", op="GPT")
    return value


class GPT(KeywordInputsLayer):
    """A decoder-only transformer: token ids (B, T) -> next-token logits (B, T, vocab_size).

    `max_len` bounds the positions (the learned table's rows; with rope only generation's
    cache length uses it). `num_kv_heads` (grouped-query attention), `norm` ("layer" or
    "rms", every norm), `activation`, `bias` and `layer_norm_eps` are passed to the layers;
    `dropout` applies to the embeddings' sum, attention output and feed-forward, in
    training mode. `dtype` is the weights' dtype (default float32).
    """

    def __init__(self, vocab_size: int, d_model: int, num_layers: int, num_heads: int,
                 dim_feedforward: int, max_len: int, *, dropout: float = 0.0,
                 norm: str = "layer", positions: str = "learned",
                 tie_embeddings: bool = False, num_kv_heads: int | None = None,
                 activation: activations.ActivationLike = "gelu", bias: bool = True,
                 layer_norm_eps: float = 1e-5, name: str | None = None,
                 dtype: DType | str | None = None, seed: int | None = None):
        super().__init__(name, dtype, seed)
        self.vocab_size = _positive("vocab_size", vocab_size)
        self.d_model = _positive("d_model", d_model)
        self.num_layers = _positive("num_layers", num_layers)
        self.num_heads = _positive("num_heads", num_heads)
        self.dim_feedforward = _positive("dim_feedforward", dim_feedforward)
        self.max_len = _positive("max_len", max_len)
        self.num_kv_heads = num_heads if num_kv_heads is None else _positive(
            "num_kv_heads", num_kv_heads)
        if d_model % num_heads or num_heads % self.num_kv_heads:
            raise AttrError(f"num_heads {num_heads} must divide d_model {d_model}, and "
                            f"num_kv_heads {self.num_kv_heads} must divide num_heads",
                            op="GPT")
        self.dropout = check_rate("GPT", dropout)
        if norm not in NORMS:
            raise AttrError(f"norm must be one of {NORMS}, got {norm!r}", op="GPT")
        if positions not in POSITIONS:
            raise AttrError(f"positions must be one of {POSITIONS}, got {positions!r}",
                            op="GPT")
        if not isinstance(tie_embeddings, bool):
            raise AttrError(f"tie_embeddings must be a bool, got {tie_embeddings!r}", op="GPT")
        self.norm = norm
        self.positions = positions
        self.tie_embeddings = tie_embeddings
        self.activation = activation
        self.bias = bool(bias)
        self.layer_norm_eps = layer_norm_eps
        self.sublayers: dict[str, Layer] = {}

    # --- structure ----------------------------------------------------------------------
    @property
    def variables(self) -> list[Node]:
        return [v for layer in self.sublayers.values() for v in layer.variables]

    @property
    def blocks(self) -> list[TransformerEncoderLayer]:
        """The transformer layers, in order (once built)."""
        return [self.sublayers[f"h{i}"] for i in range(self.num_layers)
                if f"h{i}" in self.sublayers]  # type: ignore[misc]

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def weight_type(self) -> DType:
        """The weights' dtype."""
        return self.dtype or DType.float32

    def _child_seed(self, short: str) -> int | None:
        return None if self.seed is None else zlib.crc32(f"{self.seed}/{short}".encode())

    def _child(self, short: str) -> dict[str, Any]:
        return {"name": f"{self.name}/{short}", "seed": self._child_seed(short)}

    def build(self, inputs: GPTInputs | Node) -> None:
        self._call(inputs)
        d, dtype = self.d_model, self.weight_type
        self.sublayers["wte"] = Embedding(self.vocab_size, d, dtype=dtype, **self._child("wte"))
        if self.positions == "learned":
            self.sublayers["wpe"] = PositionalEmbedding(self.max_len, d, dtype=dtype,
                                                        **self._child("wpe"))
        if self.dropout:
            self.sublayers["drop"] = Dropout(self.dropout, **self._child("drop"))
        for i in range(self.num_layers):
            self.sublayers[f"h{i}"] = TransformerEncoderLayer(
                d, self.num_heads, self.dim_feedforward, self.dropout, self.activation,
                self.layer_norm_eps, norm_first=True, causal=True, bias=self.bias,
                num_kv_heads=self.num_kv_heads, rope=self.positions == "rope", norm=self.norm,
                dtype=dtype, **self._child(f"h{i}"))
        self.sublayers["ln_f"] = make_norm(self.norm, self.layer_norm_eps, self.bias,
                                           f"{self.name}/ln_f", dtype)
        if not self.tie_embeddings:
            self.sublayers["lm_head"] = Dense(self.vocab_size, use_bias=self.bias, dtype=dtype,
                                              **self._child("lm_head"))

    # --- calls --------------------------------------------------------------------------
    def __call__(self, tokens: Node, *,  # type: ignore[override]
                 caches: Sequence[KVCache] | None = None, pos: Node | None = None,
                 last_only: bool = False, training: bool | None = None) -> Node:
        """Logits (B, T, vocab_size) of tokens (B, T) int32/int64 ((B, 1, V) with
        `last_only`). With `caches` (one `KVCache` per layer): a prefill (`pos` None, the
        tokens are positions [0, T)) or a decode step (tokens at positions [pos, pos + T))
        that writes the caches (state updates of the layers and of the active Scope)."""
        record = GPTInputs(tokens, None if caches is None else tuple(caches), pos,
                           bool(last_only))
        return super().__call__(record, training)

    def _call(self, inputs: GPTInputs | Node) -> GPTInputs:
        call = inputs if isinstance(inputs, GPTInputs) else GPTInputs(inputs)
        owner = f"GPT {self.name!r}"
        ids = call.x
        if ids.ndim != 2 or not ids.dtype.is_int:
            raise ShapeError(f"tokens: expected int32/int64 ids (B, T), got {ids.type}",
                             op=owner)
        if call.caches is not None and len(call.caches) != self.num_layers:
            raise GraphcError(f"caches: expected one KVCache per layer ({self.num_layers}), "
                              f"got {len(call.caches)}", op=owner)
        if call.pos is not None and call.caches is None:
            raise GraphcError("pos is given without caches", op=owner)
        if call.caches is None and self.positions == "learned" \
                and ids.shape[1] > self.max_len:
            raise ShapeError(f"tokens: {ids.shape[1]} steps exceed max_len {self.max_len}",
                             op=owner)
        return call

    def _run(self, short: str, x: Node, training: bool, **kwargs: Any) -> Node:
        return run_sublayer(self, self.sublayers, short, x, training, **kwargs)

    def forward(self, inputs: GPTInputs | Node, training: bool, scope: Scope | None) -> Node:
        call = self._call(inputs)
        self.state_updates = {}
        x = self._run("wte", call.x, training)
        if "wpe" in self.sublayers:
            x = self.sublayers["wpe"](x, 0 if call.pos is None else call.pos,
                                      training=training)
        x = self._run("drop", x, training)
        for i in range(self.num_layers):
            cached = {} if call.caches is None else {"cache": call.caches[i], "pos": call.pos}
            x = self._run(f"h{i}", x, training, **cached)
        if call.last_only and x.shape[1] > 1:
            x = slicing.slice(x, [x.shape[1] - 1], [x.shape[1]], axes=[1])
        x = self._run("ln_f", x, training)
        if self.tie_embeddings:
            b, t, d = x.shape
            table = self.sublayers["wte"].weights["embeddings"]
            flat = linalg.matmul(layout.reshape(x, (b * t, d)), table, transpose_b=True)
            return layout.reshape(flat, (b, t, self.vocab_size))
        return self._run("lm_head", x, training)
