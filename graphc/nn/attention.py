"""`MultiHeadAttention`, and what layers called with keyword inputs (a context, masks) share.

    mha = gc.nn.MultiHeadAttention(4, causal=True)
    y = mha(x)                                  # self-attention, x (B, T, D) -> (B, T, D)
    y = mha(x, context, padding_mask=keep)      # cross-attention over context (B, S, Dc)

The layer projects q, k, v, splits heads to (B, H, T, Dh), runs the fused `gc.attention`
(never materializing the T x S scores), merges heads and projects back to D. Weights
(``<layer>/<short>``, Keras' (in, out) layout, so PyTorch's weights are their transposes):

- ``qkv_kernel`` (D, (H + 2·Hkv)·Dh) and ``qkv_bias``: q | k | v columns, when the context
  width equals D (self-attention always): self-attention is one GEMM. PyTorch's
  ``in_proj_weight`` is its transpose. A cross-attention call uses column slices of it.
- ``q_kernel`` (D, H·Dh) and ``kv_kernel`` (Dc, 2·Hkv·Dh) (+ biases) instead, when the
  first call's context is Dc != D wide (PyTorch's ``kdim``/``vdim`` case).
- ``out_kernel`` (H·Dh, D) and ``out_bias``.

Initialization follows ``torch.nn.MultiheadAttention``: xavier-uniform input projections
(over the fused matrix, or per matrix when separate), zero biases, and the output
projection as ``nn.Linear`` (U(±1/√fan_in)).

Masks: `mask` keeps the True positions (as `gc.attention`, PyTorch's SDPA and Keras; the
*opposite* of ``nn.MultiheadAttention``'s ``attn_mask``/``key_padding_mask`` booleans); a
float mask is added to the scores. It broadcasts against the scores (B, H, T, S): a (T, S)
mask for every example, (B, T, S) per example (a head axis is inserted, as Keras'
``attention_mask``), or (B|1, H|1, T|1, S|1). `padding_mask` (B, S) marks the real keys
with True (both checked and combined by `graphc.nn.masks`). `causal` (a constructor
option) lets query i see keys j <= i, fused.

Dropout: PyTorch and Keras drop attention *probabilities*; the fused kernel never forms
them, so ``dropout`` here drops elements of the merged attention output (B, T, H·Dh),
before the output projection, in training mode. At ``dropout=0`` (inference, or the parity
tests) the layer computes exactly PyTorch's function.

Incremental decoding (a causal layer): ``mha(x, cache=kv)`` is a prefill of x's T positions
and ``mha(x, cache=kv, pos=pos)`` a decode step at runtime position `pos`; they write k/v
into the `KVCache` variables and record the writes as state updates (see
`graphc.nn.kv_cache`).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from graphc import init
from graphc.builder import Operand
from graphc.errors import AttrError, GraphcError, ShapeError
from graphc.ir import DType, Node
from graphc.nn import initializers
from graphc.nn.initializers import Initializer, InitializerLike
from graphc.nn.kv_cache import KVCache, cache_mask, check_cache, positions, write_cache
from graphc.nn.layer import Layer, Scope, dropout_seed
from graphc.nn.masks import attention_mask
from graphc.ops import attention as attention_ops
from graphc.ops import elementwise as ew
from graphc.ops import layout, linalg, sequence, slicing
from graphc.ops import neural as nn_ops

__all__ = ["CallInputs", "KVCache", "KeywordInputsLayer", "MultiHeadAttention",
           "torch_linear"]


# --- layers called with keyword inputs ------------------------------------------------------

@dataclass(frozen=True)
class CallInputs:
    """One call's inputs of a layer that takes more than one: `x` is the main input (its
    graph is the layer's); subclasses add optional fields (a context, masks, an offset)."""

    x: Node

    def nodes(self) -> list[Node]:
        """Every field that is a graph node."""
        return [v for f in fields(self) if isinstance(v := getattr(self, f.name), Node)]


class KeywordInputsLayer(Layer):
    """A layer whose ``__call__`` takes keyword inputs and hands `forward` a `CallInputs`.

    Subclasses define ``__call__(x, ..., training=None)`` that packs the record and calls
    `Layer.__call__` with it; called by `Sequential` with one node, they get ``x`` alone.
    """

    def _first_node(self, inputs: Any) -> Node:
        if not isinstance(inputs, CallInputs):
            return super()._first_node(inputs)
        owner = type(self).__name__
        if not isinstance(inputs.x, Node):
            raise GraphcError(f"layer {self.name!r} expects a graph node x, got {inputs.x!r}",
                              op=owner)
        for node in inputs.nodes():
            if node.graph is not inputs.x.graph:
                raise GraphcError(f"layer {self.name!r}: input %{node.name} belongs to graph "
                                  f"{node.graph.name!r}, x to {inputs.x.graph.name!r}", op=owner)
        return inputs.x


@dataclass(frozen=True)
class AttentionInputs(CallInputs):
    """`MultiHeadAttention`'s call: x, an optional context (keys and values) and masks; or
    a cache and the position of x's first step (incremental decoding)."""

    context: Node | None = None
    mask: Operand | None = None
    padding_mask: Operand | None = None
    cache: KVCache | None = None
    pos: Node | None = None


# --- initializers ---------------------------------------------------------------------------

def torch_linear(fan_in: int | None = None) -> Initializer:
    """``torch.nn.Linear``'s default: U(-1/√fan_in, 1/√fan_in) (its kaiming-uniform with
    a=√5 for the weight, and the bias's bound). `fan_in` None: a kernel's rows (in, out)."""

    def draw(shape: Sequence[int], *, seed: int = 0, dtype: DType | str = "float32"
             ) -> np.ndarray:
        n = fan_in if fan_in is not None else shape[0]
        bound = 1.0 / math.sqrt(n)
        return init.uniform(shape, -bound, bound, seed=seed, dtype=dtype)

    return draw


def _glorot_blocks(blocks: int) -> Initializer:
    """Xavier-uniform per column block of a (in, blocks·out) kernel: PyTorch draws separate
    k and v projections with their own fans."""

    def draw(shape: Sequence[int], *, seed: int = 0, dtype: DType | str = "float32"
             ) -> np.ndarray:
        rows, cols = shape
        parts = [init.glorot_uniform((rows, cols // blocks), seed=seed + i, dtype=dtype)
                 for i in range(blocks)]
        return np.ascontiguousarray(np.concatenate(parts, axis=1))

    return draw


# --- the layer ------------------------------------------------------------------------------

def _check_int(owner: str, name: str, value: Any, allow_none: bool = False) -> Any:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AttrError(f"{name} must be an int >= 1, got {value!r}", op=owner)
    return value


def check_rate(owner: str, rate: Any) -> float:
    """A dropout rate in [0, 1), or an AttrError naming `owner`."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise AttrError(f"dropout must be a number in [0, 1), got {rate!r}", op=owner)
    return float(rate)


class MultiHeadAttention(KeywordInputsLayer):
    """Multi-head (and grouped-query) attention on (B, T, D); see the module docstring.

    `num_heads` query heads of width `key_dim` (default D // num_heads, which must divide);
    `num_kv_heads` key/value heads (default num_heads; must divide it: grouped-query
    attention shares each among num_heads // num_kv_heads query heads). `rope` rotates q
    and k by their positions with `gc.rope` (needs that op). The output is (B, T, D).
    """

    def __init__(self, num_heads: int, *, key_dim: int | None = None, causal: bool = False,
                 dropout: float = 0.0, use_bias: bool = True, num_kv_heads: int | None = None,
                 rope: bool = False, kernel_initializer: InitializerLike | None = None,
                 name: str | None = None, dtype: DType | str | None = None,
                 seed: int | None = None):
        super().__init__(name, dtype, seed)
        owner = "MultiHeadAttention"
        self.num_heads = _check_int(owner, "num_heads", num_heads)
        self.key_dim: int | None = _check_int(owner, "key_dim", key_dim, allow_none=True)
        kv = _check_int(owner, "num_kv_heads", num_kv_heads, allow_none=True)
        self.num_kv_heads: int = num_heads if kv is None else kv
        if self.num_heads % self.num_kv_heads:
            raise AttrError(f"num_kv_heads {self.num_kv_heads} must divide num_heads "
                            f"{self.num_heads}", op=owner)
        for flag, value in (("causal", causal), ("use_bias", use_bias), ("rope", rope)):
            if not isinstance(value, bool):
                raise AttrError(f"{flag} must be a bool, got {value!r}", op=owner)
        self.causal = causal
        self.use_bias = use_bias
        self.rope = rope
        self.dropout = check_rate(owner, dropout)
        if kernel_initializer is not None:
            initializers.get(kernel_initializer)  # an unknown name fails here, not at build
        self.kernel_initializer = kernel_initializer
        self._width = 0  # D, fixed by the first call
        self._context_width = 0  # the context width the kernels were built for

    def __call__(self, x: Node, context: Node | None = None, *,  # type: ignore[override]
                 mask: Operand | None = None, padding_mask: Operand | None = None,
                 cache: KVCache | None = None, pos: Node | None = None,
                 training: bool | None = None) -> Node:
        """Self-attention over x (B, T, D), or cross-attention of x over `context` (B, S, Dc);
        `mask`/`padding_mask` as in the module docstring. Returns (B, T, D).

        With `cache` (a causal layer's `KVCache`, (B, Hkv, Tmax, Dh) variables): x's keys
        and values are written into it at `pos` (None: a prefill at 0, attending causally
        within x; an int scalar node: x's first step is at position pos and attends over
        the cache up to its own position), and the writes become state updates."""
        if isinstance(context, bool):
            raise GraphcError("context must be a node (pass the mode as training=...)",
                              op="MultiHeadAttention")
        return super().__call__(AttentionInputs(x, context, mask, padding_mask, cache, pos),
                                training)

    @property
    def head_dim(self) -> int:
        """Dh, known once the layer is built."""
        return self.key_dim or self._width // self.num_heads

    def _check(self, inputs: AttentionInputs | Node) -> AttentionInputs:
        call = inputs if isinstance(inputs, AttentionInputs) else AttentionInputs(inputs)
        owner = f"MultiHeadAttention {self.name!r}"
        for what, t in (("x", call.x), ("context", call.context)):
            if t is None:
                continue
            if t.ndim != 3 or not t.dtype.is_float:
                raise ShapeError(f"{what}: expected a float (B, T, D) tensor, got {t.type}",
                                 op=owner)
        if call.context is not None and call.context.shape[0] != call.x.shape[0]:
            raise ShapeError(f"context: expected x's batch {call.x.shape[0]}, got "
                             f"{call.context.type}", op=owner)
        if self.built:
            width = call.x.shape[-1]
            ctx = call.context.shape[-1] if call.context is not None else width
            fused = "qkv_kernel" in self.weights
            if width != self._width or ctx != (width if fused else self._context_width):
                got = f"x {call.x.type}" + (f", context {call.context.type}"
                                            if call.context is not None else "")
                raise ShapeError(f"built for x (B, T, {self._width}) and contexts "
                                 f"{self._width if fused else self._context_width} wide; got "
                                 f"{got}", op=owner)
        return call

    def build(self, inputs: AttentionInputs | Node) -> None:
        call = self._check(inputs)
        width = call.x.shape[-1]
        if self.key_dim is None and width % self.num_heads:
            raise ShapeError(f"the model width {width} (x's last dim) is not divisible by "
                             f"num_heads {self.num_heads}; give key_dim or a width divisible "
                             "by num_heads", op=f"MultiHeadAttention {self.name!r}")
        self._width = width
        ctx = call.context.shape[-1] if call.context is not None else width
        self._context_width = ctx
        dh = self.head_dim
        inner, kv_inner = self.num_heads * dh, self.num_kv_heads * dh
        dtype = self.weight_dtype(call.x)
        custom = self.kernel_initializer
        if ctx == width:
            self.add_weight("qkv_kernel", (width, inner + 2 * kv_inner),
                            custom or "glorot_uniform", dtype)
            if self.use_bias:
                self.add_weight("qkv_bias", (inner + 2 * kv_inner,), "zeros", dtype)
        else:
            self.add_weight("q_kernel", (width, inner), custom or "glorot_uniform", dtype)
            self.add_weight("kv_kernel", (ctx, 2 * kv_inner), custom or _glorot_blocks(2),
                            dtype)
            if self.use_bias:
                self.add_weight("q_bias", (inner,), "zeros", dtype)
                self.add_weight("kv_bias", (2 * kv_inner,), "zeros", dtype)
        self.add_weight("out_kernel", (inner, width), custom or torch_linear(), dtype)
        if self.use_bias:
            self.add_weight("out_bias", (width,), "zeros", dtype)
        if self.dropout:
            self.add_weight("step", (), "zeros", DType.int32, trainable=False)

    # --- forward ----------------------------------------------------------------------------
    def _columns(self, short: str, start: int, stop: int) -> tuple[Node, Node | None]:
        """Columns [start, stop) of a kernel and its bias (a cross-attention call of a layer
        whose q/k/v kernel is fused)."""
        kernel = slicing.slice(self.weights[f"{short}_kernel"], [start], [stop], axes=[1])
        bias = self.weights.get(f"{short}_bias")
        return kernel, (None if bias is None else slicing.slice(bias, [start], [stop]))

    def _project(self, x: Node, kernel: Node, bias: Node | None) -> Node:
        """(B, T, C) @ kernel + bias as one (B·T, C) GEMM -> (B·T, N)."""
        b, t, c = x.shape
        return linalg.linear(layout.reshape(x, (b * t, c)), kernel, bias)

    def _heads(self, flat: Node, first: int, heads: int, batch: int, steps: int) -> Node:
        """Heads [first, first + heads) of a (B·S, N·Dh) projection as (B, heads, S, Dh)."""
        dh = self.head_dim
        split = layout.reshape(flat, (batch, steps, flat.shape[-1] // dh, dh))  # a view
        if split.shape[2] != heads:
            # Slicing after the reshape lets the slice fuse into the transpose's kernel: one
            # copy per q, k, v.
            split = slicing.slice(split, [first], [first + heads], axes=[2])
        return layout.transpose(split, (0, 2, 1, 3))

    def _qkv(self, call: AttentionInputs) -> tuple[Node, Node, Node]:
        x, ctx = call.x, call.context
        h, hkv, dh = self.num_heads, self.num_kv_heads, self.head_dim
        inner, kv_inner = h * dh, hkv * dh
        b, t, _ = x.shape
        s = t if ctx is None else ctx.shape[1]
        if ctx is None:  # one GEMM for q, k and v
            qkv = self._project(x, self.weights["qkv_kernel"], self.weights.get("qkv_bias"))
            q_flat = kv_flat = qkv
            kv_first = h
        else:
            if "qkv_kernel" in self.weights:
                q_w, q_b = self._columns("qkv", 0, inner)
                kv_w, kv_b = self._columns("qkv", inner, inner + 2 * kv_inner)
            else:
                q_w, q_b = self.weights["q_kernel"], self.weights.get("q_bias")
                kv_w, kv_b = self.weights["kv_kernel"], self.weights.get("kv_bias")
            q_flat = self._project(x, q_w, q_b)
            kv_flat = self._project(ctx, kv_w, kv_b)
            kv_first = 0
        q = self._heads(q_flat, 0, h, b, t)
        k = self._heads(kv_flat, kv_first, hkv, b, s)
        v = self._heads(kv_flat, kv_first + hkv, hkv, b, s)
        return q, k, v

    def _rotate(self, q: Node, k: Node) -> tuple[Node, Node]:
        rope = getattr(sequence, "rope", None)
        if rope is None:
            raise GraphcError("rope=True needs the gc.rope op, which this build of graphc "
                              "does not have", op=f"MultiHeadAttention {self.name!r}")
        return rope(q), rope(k)

    def forward(self, inputs: AttentionInputs | Node, training: bool,
                scope: Scope | None) -> Node:
        call = self._check(inputs)
        b, t, width = call.x.shape
        if call.cache is not None or call.pos is not None:
            o = self._cached(call, training, scope)
        else:
            q, k, v = self._qkv(call)
            if self.rope:
                q, k = self._rotate(q, k)
            mask = attention_mask(f"MultiHeadAttention {self.name!r}", call.mask,
                                  call.padding_mask, q.dtype,
                                  (b, self.num_heads, t, k.shape[2]))
            o = attention_ops.attention(q, k, v, mask=mask, causal=self.causal)
        merged = layout.reshape(layout.transpose(o, (0, 2, 1, 3)), (b * t, -1))
        if training and self.dropout:
            merged = self._drop(merged, scope)
        out = linalg.linear(merged, self.weights["out_kernel"], self.weights.get("out_bias"))
        return layout.reshape(out, (b, t, width))

    def _cached(self, call: AttentionInputs, training: bool, scope: Scope | None) -> Node:
        """Attention of a prefill or decode call (see `graphc.nn.kv_cache`); records the
        cache writes as state updates. Returns (B, H, T, Dh)."""
        owner = f"MultiHeadAttention {self.name!r}"
        b, t, _ = call.x.shape
        if call.cache is None:
            raise GraphcError("pos is given without a cache: pass cache=KVCache(...) too",
                              op=owner)
        if not self.causal:
            raise GraphcError("cache: a KV cache serves a causal layer (causal=True) only",
                              op=owner)
        if call.context is not None or call.mask is not None \
                or call.padding_mask is not None:
            raise GraphcError("cache: a cached call takes no context, mask or padding_mask "
                              "(the cache's position mask is the only one)", op=owner)
        if training:
            raise GraphcError("cache: a cached call is inference (training=False)", op=owner)
        q, k, v = self._qkv(call)
        check_cache(owner, call.cache, call.pos, (b, self.num_kv_heads, 0, self.head_dim), t,
                    q.dtype)
        pos = call.pos
        if self.rope:
            if pos is None:
                q, k = self._rotate(q, k)
            else:
                at = positions(t, pos)
                q, k = sequence.rope(q, positions=at), sequence.rope(k, positions=at)
        new_k, new_v = write_cache(call.cache, k, v, pos)
        self.state_updates = {}
        self.add_state_update(scope, call.cache.k, new_k)
        self.add_state_update(scope, call.cache.v, new_v)
        if pos is None:  # a prefill attends within x: T x T scores, not T x Tmax
            return attention_ops.attention(q, k, v, causal=True)
        mask = cache_mask(t, call.cache.max_len, pos)
        return attention_ops.attention(q, new_k, new_v, mask=mask)

    def _drop(self, x: Node, scope: Scope | None) -> Node:
        """Inverted dropout with fresh masks per step, as `gc.nn.Dropout` draws them."""
        counter = self.weights["step"]
        base = self.seed if self.seed is not None else zlib.crc32(self.name.encode())
        call = scope.calls.get(id(self), 1) - 1 if scope is not None else 0
        out = nn_ops.dropout(x, self.dropout, seed=dropout_seed(scope, base + call), key=counter)
        self.add_state_update(scope, counter, ew.add(counter, 1), shared=True)
        return out
