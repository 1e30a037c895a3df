"""Transformer layers: `TransformerEncoderLayer`, `TransformerDecoderLayer` (PyTorch's
options, batch-first (B, T, D) always, pre-norm by default) and `PositionalEmbedding`.

    gpt = gc.nn.Sequential([
        gc.nn.Embedding(vocab, 256), gc.nn.PositionalEmbedding(128, 256),
        gc.nn.TransformerEncoderLayer(256, 4, 1024, dropout=0.0, causal=True),
        gc.nn.TransformerEncoderLayer(256, 4, 1024, dropout=0.0, causal=True),
        gc.nn.LayerNorm(), gc.nn.Dense(vocab)])

An encoder or decoder layer owns its sublayers under PyTorch's attribute names, so its
variables are ``<layer>/self_attn/qkv_kernel``, ``<layer>/linear1/kernel``,
``<layer>/norm1/gamma`` ... (``multihead_attn`` is the decoder's cross-attention; see
`graphc.nn.attention` for the attention weights and their PyTorch counterparts). The
sublayers are created at the first call, when the layer's own name is final.

The computation is PyTorch's, with ``norm_first=True`` (pre-norm, the default here, as
GPT-2 and most current models; PyTorch defaults to post-norm)::

    x = x + dropout1(self_attn(norm1(x)))                  # pre-norm
    x = x + dropout2(multihead_attn(norm2(x), memory))     # decoder only
    x = x + dropout3(linear2(dropout(activation(linear1(norm3(x))))))

and ``x = norm1(x + dropout1(self_attn(x)))``, ... with ``norm_first=False``. `dropout` is
also the attention dropout, which `MultiHeadAttention` applies to its merged output (the
fused kernel never forms the probabilities PyTorch drops). Initialization follows PyTorch:
the attention as `nn.MultiheadAttention`, the feed-forward as ``nn.Linear``, the norms
ones and zeros. Masks: True marks what may be attended (see `graphc.nn.attention`).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphc.builder import Operand, constant
from graphc.errors import AttrError, DTypeError, GraphcError, ShapeError
from graphc.ir import DType, Node
from graphc.nn import activations
from graphc.nn.attention import (
    AttentionInputs,
    CallInputs,
    KeywordInputsLayer,
    KVCache,
    MultiHeadAttention,
    check_rate,
    torch_linear,
)
from graphc.nn.core import Dense, Dropout
from graphc.nn.initializers import InitializerLike
from graphc.nn.layer import Layer, Scope
from graphc.nn.norm import LayerNorm, RMSNorm
from graphc.ops import elementwise as ew
from graphc.ops import gather, layout, slicing

__all__ = ["PositionalEmbedding", "TransformerDecoderLayer", "TransformerEncoderLayer"]

Block = Callable[[Node], Node]  # one residual branch on the (B·T, D) stream


@dataclass(frozen=True)
class DecoderInputs(CallInputs):
    """`TransformerDecoderLayer`'s call: x, the memory it attends to, and masks."""

    memory: Node | None = None
    mask: Operand | None = None
    padding_mask: Operand | None = None
    memory_mask: Operand | None = None
    memory_padding_mask: Operand | None = None


NORMS = ("layer", "rms")


def make_norm(kind: str, eps: float, center: bool, name: str,
              dtype: DType | None) -> LayerNorm | RMSNorm:
    """A LayerNorm (`center`: with its bias) or an RMSNorm (scale only) over the last axis."""
    if kind == "rms":
        return RMSNorm(eps=eps, name=name, dtype=dtype)
    return LayerNorm(eps=eps, center=center, name=name, dtype=dtype)


def _check_int(owner: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AttrError(f"{name} must be an int >= 1, got {value!r}", op=owner)
    return value


def run_sublayer(owner: Layer, sublayers: dict[str, Layer], short: str, x: Node,
                 training: bool, **kwargs: Any) -> Node:
    """Call sublayer `short` of `owner` (absent ones, like Dropouts at rate 0, are the
    identity), collecting its state updates into the owner's."""
    layer = sublayers.get(short)
    if layer is None:
        return x
    y = layer(x, training=training, **kwargs)
    # A layer's state_updates are its last training (or cached) call's: collect them only
    # from such a call, never stale ones.
    if training or kwargs.get("cache") is not None:
        owner.state_updates.update(layer.state_updates)
    return y


class _Block(KeywordInputsLayer):
    """A layer made of named sublayers (``<name>/<short>``), built at the first call; the
    encoder's and decoder's shared options, checks and residual plumbing."""

    kind = ""  # the public class name, for messages

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float,
                 activation: activations.ActivationLike, layer_norm_eps: float,
                 norm_first: bool, causal: bool, bias: bool, num_kv_heads: int | None,
                 rope: bool, norm: str, name: str | None, dtype: DType | str | None,
                 seed: int | None):
        super().__init__(name, dtype, seed)
        owner = self.kind
        self.d_model = _check_int(owner, "d_model", d_model)
        self.nhead = _check_int(owner, "nhead", nhead)
        if d_model % nhead:
            raise AttrError(f"d_model {d_model} is not divisible by nhead {nhead} (each head "
                            "gets d_model / nhead features)", op=owner)
        self.dim_feedforward = _check_int(owner, "dim_feedforward", dim_feedforward)
        self.dropout = check_rate(owner, dropout)
        self.activation = activations.get(activation)
        if isinstance(layer_norm_eps, bool) or not isinstance(layer_norm_eps, (int, float)) \
                or not layer_norm_eps > 0:
            raise AttrError(f"layer_norm_eps must be a number > 0, got {layer_norm_eps!r}",
                            op=owner)
        self.layer_norm_eps = float(layer_norm_eps)
        for flag, value in (("norm_first", norm_first), ("causal", causal), ("bias", bias)):
            if not isinstance(value, bool):
                raise AttrError(f"{flag} must be a bool, got {value!r}", op=owner)
        self.norm_first = norm_first
        self.causal = causal
        self.bias = bias
        if num_kv_heads is not None:
            _check_int(owner, "num_kv_heads", num_kv_heads)
            if nhead % num_kv_heads:
                raise AttrError(f"num_kv_heads {num_kv_heads} must divide nhead {nhead}",
                                op=owner)
        if not isinstance(rope, bool):
            raise AttrError(f"rope must be a bool, got {rope!r}", op=owner)
        self.num_kv_heads = num_kv_heads
        self.rope = rope
        if norm not in NORMS:
            raise AttrError(f"norm must be one of {', '.join(map(repr, NORMS))}, got {norm!r}",
                            op=owner)
        self.norm = norm
        self.sublayers: dict[str, Layer] = {}

    @property
    def variables(self) -> list[Node]:
        return [v for layer in self.sublayers.values() for v in layer.variables]

    def _child_seed(self, short: str) -> int | None:
        # Distinct streams per sublayer: each would otherwise seed "kernel" alike.
        return None if self.seed is None else zlib.crc32(f"{self.seed}/{short}".encode())

    def _path(self, short: str) -> str:
        return f"{self.name}/{short}"

    def _attention(self, short: str, causal: bool, rope: bool) -> None:
        self.sublayers[short] = MultiHeadAttention(
            self.nhead, causal=causal, dropout=self.dropout, use_bias=self.bias,
            num_kv_heads=self.num_kv_heads, rope=rope, name=self._path(short), dtype=self.dtype,
            seed=self._child_seed(short))

    def _check_x(self, x: Node, what: str = "x") -> None:
        if x.ndim != 3 or not x.dtype.is_float or x.shape[-1] != self.d_model:
            raise ShapeError(f"{what}: expected a float (B, T, d_model={self.d_model}) tensor, "
                             f"got {x.type}", op=f"{self.kind} {self.name!r}")

    def _build_common(self, x: Node, norms: int) -> None:
        """The feed-forward block, `norms` LayerNorms and the dropouts (none at rate 0)."""
        self._check_x(x)
        d, ff = self.d_model, self.dim_feedforward
        for short, units, fan_in in (("linear1", ff, d), ("linear2", d, ff)):
            self.sublayers[short] = Dense(
                units, use_bias=self.bias, kernel_initializer=torch_linear(),
                bias_initializer=torch_linear(fan_in), name=self._path(short),
                dtype=self.dtype, seed=self._child_seed(short))
        for i in range(1, norms + 1):
            self.sublayers[f"norm{i}"] = make_norm(self.norm, self.layer_norm_eps, self.bias,
                                                   self._path(f"norm{i}"), self.dtype)
        if self.dropout:
            for short in ("dropout", *(f"dropout{i}" for i in range(1, norms + 1))):
                self.sublayers[short] = Dropout(self.dropout, seed=self._child_seed(short),
                                                name=self._path(short))

    def _run(self, short: str, x: Node, training: bool, **kwargs: Any) -> Node:
        return run_sublayer(self, self.sublayers, short, x, training, **kwargs)

    def _ffn(self, training: bool) -> Block:
        """linear2(dropout(activation(linear1(h)))) as a block on the (B·T, D) stream."""
        def block(h: Node) -> Node:
            inner = self.activation(self._run("linear1", h, training))
            return self._run("linear2", self._run("dropout", inner, training), training)
        return block

    def _residual(self, x: Node, i: int, block: Block, training: bool) -> Node:
        """Sublayer block i with its norm, dropout and residual, pre- or post-norm."""
        norm = f"norm{i}"
        if self.norm_first:
            return x + self._run(f"dropout{i}", block(self._run(norm, x, training)), training)
        return self._run(norm, x + self._run(f"dropout{i}", block(x), training), training)

    def _stack(self, x: Node, blocks: Sequence[Block], training: bool) -> Node:
        """The residual blocks in order on x (B, T, D), the stream kept (B·T, D) between
        them: each block's last GEMM then takes the residual add (and the FFN's first its
        activation) as its epilogue, which a reshape in between would prevent."""
        b, t, d = x.shape
        stream = layout.reshape(x, (b * t, d))
        for i, block in enumerate(blocks, start=1):
            stream = self._residual(stream, i, block, training)
        return layout.reshape(stream, (b, t, d))

    def _attend(self, short: str, batch: int, training: bool, **kwargs: Any) -> Block:
        """Attention sublayer `short` as a block on the (B·T, D) stream."""
        def block(h: Node) -> Node:
            steps = h.shape[0] // batch
            out = self._run(short, layout.reshape(h, (batch, steps, self.d_model)), training,
                            **kwargs)
            return layout.reshape(out, h.shape)
        return block


class TransformerEncoderLayer(_Block):
    """Self-attention and a feed-forward block, each with a residual (PyTorch's
    ``nn.TransformerEncoderLayer(batch_first=True)``; see the module docstring).

    Called as ``layer(x, mask=None, padding_mask=None)`` on x (B, T, d_model); `causal`
    (constructor) makes the self-attention causal inside the fused kernel. Extra options:
    `num_kv_heads` (grouped-query attention), `rope` (rotary positions on q and k) and
    `norm` ("layer": LayerNorm, PyTorch's; "rms": RMSNorm). ``layer(x, cache=kv, pos=pos)``
    is a causal layer's prefill (pos None) or decode step with a `KVCache`, as
    `MultiHeadAttention`'s (the cache writes become the layer's state updates).
    """

    kind = "TransformerEncoderLayer"

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048,
                 dropout: float = 0.1, activation: activations.ActivationLike = "gelu",
                 layer_norm_eps: float = 1e-5, norm_first: bool = True, causal: bool = False,
                 bias: bool = True, *, num_kv_heads: int | None = None, rope: bool = False,
                 norm: str = "layer", name: str | None = None,
                 dtype: DType | str | None = None, seed: int | None = None):
        super().__init__(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps,
                         norm_first, causal, bias, num_kv_heads, rope, norm, name, dtype, seed)

    def __call__(self, x: Node, *, mask: Operand | None = None,  # type: ignore[override]
                 padding_mask: Operand | None = None, cache: KVCache | None = None,
                 pos: Node | None = None, training: bool | None = None) -> Node:
        """x (B, T, d_model) -> (B, T, d_model); masks, cache and pos as
        `MultiHeadAttention`'s."""
        return super().__call__(AttentionInputs(x, None, mask, padding_mask, cache, pos),
                                training)

    def build(self, inputs: AttentionInputs | Node) -> None:
        x = inputs.x if isinstance(inputs, AttentionInputs) else inputs
        self._attention("self_attn", self.causal, self.rope)
        self._build_common(x, norms=2)

    def forward(self, inputs: AttentionInputs | Node, training: bool,
                scope: Scope | None) -> Node:
        call = inputs if isinstance(inputs, AttentionInputs) else AttentionInputs(inputs)
        self._check_x(call.x)
        self.state_updates = {}
        cached = {} if call.cache is None and call.pos is None else {"cache": call.cache,
                                                                      "pos": call.pos}
        attend = self._attend("self_attn", call.x.shape[0], training, mask=call.mask,
                              padding_mask=call.padding_mask, **cached)
        return self._stack(call.x, [attend, self._ffn(training)], training)


class TransformerDecoderLayer(_Block):
    """Self-attention, cross-attention over a memory, and a feed-forward block, each with a
    residual (PyTorch's ``nn.TransformerDecoderLayer(batch_first=True)``).

    Called as ``layer(x, memory, mask=None, padding_mask=None, memory_mask=None,
    memory_padding_mask=None)`` (PyTorch's tgt_mask, tgt_key_padding_mask, memory_mask,
    memory_key_padding_mask, with True marking what may be attended). Unlike PyTorch, the
    self-attention is `causal` by default (a decoder that sees its future is rarely meant);
    the memory is not normalized, as in PyTorch. A decoder needs its memory, so it cannot
    sit in a `Sequential`.
    """

    kind = "TransformerDecoderLayer"

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048,
                 dropout: float = 0.1, activation: activations.ActivationLike = "gelu",
                 layer_norm_eps: float = 1e-5, norm_first: bool = True, causal: bool = True,
                 bias: bool = True, *, num_kv_heads: int | None = None, rope: bool = False,
                 norm: str = "layer", name: str | None = None,
                 dtype: DType | str | None = None, seed: int | None = None):
        super().__init__(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps,
                         norm_first, causal, bias, num_kv_heads, rope, norm, name, dtype, seed)

    def __call__(self, x: Node, memory: Node | None = None, *,  # type: ignore[override]
                 mask: Operand | None = None, padding_mask: Operand | None = None,
                 memory_mask: Operand | None = None,
                 memory_padding_mask: Operand | None = None,
                 training: bool | None = None) -> Node:
        """x (B, T, d_model) attending to memory (B, S, d_model) -> (B, T, d_model)."""
        return super().__call__(DecoderInputs(x, memory, mask, padding_mask, memory_mask,
                                              memory_padding_mask), training)

    def _call(self, inputs: DecoderInputs | Node) -> DecoderInputs:
        call = inputs if isinstance(inputs, DecoderInputs) else DecoderInputs(inputs)
        if not isinstance(call.memory, Node):
            raise GraphcError(f"layer {self.name!r} needs a memory node: layer(x, memory), "
                              f"got {call.memory!r}", op=self.kind)
        self._check_x(call.x)
        self._check_x(call.memory, "memory")
        if call.memory.shape[0] != call.x.shape[0]:
            raise ShapeError(f"memory: expected x's batch {call.x.shape[0]}, got "
                             f"{call.memory.type}", op=f"{self.kind} {self.name!r}")
        return call

    def build(self, inputs: DecoderInputs | Node) -> None:
        call = self._call(inputs)
        self._attention("self_attn", self.causal, self.rope)
        self._attention("multihead_attn", False, False)
        self._build_common(call.x, norms=3)

    def forward(self, inputs: DecoderInputs | Node, training: bool,
                scope: Scope | None) -> Node:
        call = self._call(inputs)
        self.state_updates = {}
        batch = call.x.shape[0]
        attend = self._attend("self_attn", batch, training, mask=call.mask,
                              padding_mask=call.padding_mask)
        cross = self._attend("multihead_attn", batch, training, context=call.memory,
                             mask=call.memory_mask, padding_mask=call.memory_padding_mask)
        return self._stack(call.x, [attend, cross, self._ffn(training)], training)


@dataclass(frozen=True)
class PositionInputs(CallInputs):
    """`PositionalEmbedding`'s call: x and the position of its first step."""

    offset: Node | int = 0


class PositionalEmbedding(KeywordInputsLayer):
    """Learned positions added to x (..., T, d_model): ``x + embeddings[offset:offset + T]``.

    Variable ``embeddings`` (max_len, d_model), initialized like `Embedding` (U(±0.05)).
    `offset` (the position of x's first step, for a decode step after a prompt) is an int,
    checked when the graph is built, or an int32/int64 scalar node read at run time: a
    position outside [0, max_len) is then a run-time error of the `take` op.
    """

    def __init__(self, max_len: int, d_model: int, *,
                 embeddings_initializer: InitializerLike = "uniform",
                 name: str | None = None, dtype: DType | str | None = None,
                 seed: int | None = None):
        super().__init__(name, dtype, seed)
        self.max_len = _check_int("PositionalEmbedding", "max_len", max_len)
        self.d_model = _check_int("PositionalEmbedding", "d_model", d_model)
        self.embeddings_initializer = embeddings_initializer

    def __call__(self, x: Node, offset: Node | int = 0, *,  # type: ignore[override]
                 training: bool | None = None) -> Node:
        return super().__call__(PositionInputs(x, offset), training)

    def _call(self, inputs: PositionInputs | Node) -> PositionInputs:
        call = inputs if isinstance(inputs, PositionInputs) else PositionInputs(inputs)
        owner = f"PositionalEmbedding {self.name!r}"
        x, offset = call.x, call.offset
        if x.ndim < 2 or not x.dtype.is_float or x.shape[-1] != self.d_model:
            raise ShapeError(f"x: expected a float (..., T, d_model={self.d_model}) tensor, "
                             f"got {x.type}", op=owner)
        steps = x.shape[-2]
        if isinstance(offset, Node):
            if offset.ndim != 0 or not offset.dtype.is_int:
                raise DTypeError(f"offset: expected an int32/int64 scalar, got {offset.type}",
                                 op=owner)
        elif isinstance(offset, bool) or not isinstance(offset, int) or offset < 0 \
                or offset + steps > self.max_len:
            raise ShapeError(f"offset: expected an int in [0, {self.max_len - steps}] (max_len "
                             f"{self.max_len}, {steps} steps), got {offset!r}", op=owner)
        return call

    def build(self, inputs: PositionInputs | Node) -> None:
        call = self._call(inputs)
        self.add_weight("embeddings", (self.max_len, self.d_model),
                        self.embeddings_initializer, self.weight_dtype(call.x))

    def forward(self, inputs: PositionInputs | Node, training: bool,
                scope: Scope | None) -> Node:
        call = self._call(inputs)
        table, steps = self.weights["embeddings"], call.x.shape[-2]
        if isinstance(call.offset, int):
            rows = slicing.slice(table, [call.offset], [call.offset + steps])
        else:
            offset = call.offset
            positions = ew.add(offset, constant(np.arange(steps, dtype=offset.dtype.np)))
            # take() reads negative ids from the end; send them past it, an error instead.
            positions = ew.where(ew.greater_equal(positions, 0), positions,
                                 np.array(self.max_len, offset.dtype.np))
            rows = gather.take(table, positions, axis=0)
        if rows.dtype != call.x.dtype:
            rows = ew.cast(rows, call.x.dtype)
        return call.x + rows
