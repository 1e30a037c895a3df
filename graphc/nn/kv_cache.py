"""Key/value caches for incremental (autoregressive) attention: `KVCache` and the helpers
`MultiHeadAttention` uses in its cached modes.

    cache = KVCache.zeros("gen/block0", batch=1, kv_heads=4, max_len=256, head_dim=64)
    y = mha(x_prompt, cache=cache)          # prefill: x (B, P, D), k/v of [0, P) written
    y = mha(x_token, cache=cache, pos=pos)  # decode: x (B, 1, D) at runtime position pos

A cache is two graph variables, keys and values, each (B, Hkv, Tmax, Dh): one pair per
attention layer. A cached call computes the new rows' k and v, writes them into the cache
with `gc.dynamic_update_slice` and records ``{cache.k: new_k, cache.v: new_v}`` as state
updates (on the layer and in the active `Scope`), to be passed to `gc.compile(updates=...)`.
The memory planner then writes the new rows into the variables' own buffers, and attention
reads those buffers: nothing is copied per token.

Why one pair of variables per layer, not one (layers, 2, heads, Tmax, Dh) tensor: a layer's
keys read from one big cache are a slice, and a slice is a copy kernel in graphc, so every
decode step would copy each layer's whole cache; per-layer variables are read in place
(measured: `graphc.ops.sequence` docstring and tests/test_sequence_ops.py).

Modes (the attention layer must be causal):

- prefill (``pos`` None): x holds positions [0, T); attention is causal over x's own keys
  (T x T, not T x Tmax) and k/v are written at cache position 0. Rows after T keep stale
  values from an earlier sequence; the decode mask hides them until they are rewritten.
- decode/extend (``pos`` an int scalar node): x holds positions [pos, pos + T); k/v are
  written at pos and the queries attend over the whole cache with the mask
  ``key j visible to query i iff j <= pos + i`` (for T = 1: ``iota(Tmax) <= pos``). A
  position with ``pos + T > Tmax`` is a run-time GraphcError of `dynamic_update_slice`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphc import builder
from graphc.errors import DTypeError, GraphcError, ShapeError
from graphc.ir import DType, Node
from graphc.ops import elementwise as ew
from graphc.ops import sequence

__all__ = ["KVCache", "cache_mask", "check_cache", "positions", "write_cache"]


@dataclass(frozen=True)
class KVCache:
    """One attention layer's key and value caches: variables of shape (B, Hkv, Tmax, Dh)."""

    k: Node
    v: Node

    @staticmethod
    def zeros(name: str, batch: int, kv_heads: int, max_len: int, head_dim: int,
              dtype: DType | str = DType.float32) -> KVCache:
        """Zero caches ``<name>/k_cache`` and ``<name>/v_cache`` (not trainable) in the
        active graph."""
        shape = (batch, kv_heads, max_len, head_dim)
        the_dtype = DType.of(dtype)
        k, v = (builder.variable(np.zeros(shape, the_dtype.np), name=f"{name}/{part}_cache",
                                 trainable=False) for part in ("k", "v"))
        return KVCache(k, v)

    @property
    def max_len(self) -> int:
        """Tmax, the number of positions the cache holds."""
        return self.k.shape[2]


def check_cache(owner: str, cache: object, pos: object, shape: tuple[int, int, int, int],
                steps: int, dtype: DType) -> None:
    """Raise a GraphcError naming `owner` unless `cache` is a KVCache of variables of
    (B, Hkv, ·, Dh) = `shape` (Tmax taken from the cache) and `dtype`, and `pos` is None or
    an int scalar node; `steps` new rows must fit in the cache."""
    if not isinstance(cache, KVCache):
        raise GraphcError(f"cache: expected a KVCache (keys and values variables), got "
                          f"{cache!r}", op=owner)
    batch, kv_heads, _, dh = shape
    for what, var in (("cache.k", cache.k), ("cache.v", cache.v)):
        if not isinstance(var, Node) or var.op != "variable":
            raise GraphcError(f"{what}: expected a variable node, got {var!r}", op=owner)
        want = (batch, kv_heads, cache.max_len, dh)
        if var.shape != want or var.dtype != dtype:
            raise ShapeError(f"{what}: expected (B, Hkv, Tmax, Dh) = {want} of "
                             f"{dtype.value}, got {var.type}", op=owner)
    if steps > cache.max_len:
        raise ShapeError(f"x: {steps} steps do not fit in a cache of Tmax = {cache.max_len} "
                         "positions", op=owner)
    if pos is not None and (not isinstance(pos, Node) or pos.ndim != 0
                            or not pos.dtype.is_int):
        got = pos.type if isinstance(pos, Node) else repr(pos)
        raise DTypeError(f"pos: expected an int32/int64 scalar node (the position of x's first "
                         f"step), got {got}", op=owner)


def write_cache(cache: KVCache, k: Node, v: Node, pos: Node | None) -> tuple[Node, Node]:
    """The caches with k, v (B, Hkv, T, Dh) written at position `pos` (None: 0)."""
    start = 0 if pos is None else pos
    return (sequence.dynamic_update_slice(cache.k, k, (0, 0, start, 0)),
            sequence.dynamic_update_slice(cache.v, v, (0, 0, start, 0)))


def cache_mask(steps: int, max_len: int, pos: Node) -> Node:
    """Bool (T, Tmax): query i (at position pos + i) sees key j iff j <= pos + i."""
    keys = sequence.iota((steps, max_len), 1, pos.dtype)
    if steps == 1:
        return ew.less_equal(keys, pos)
    return ew.less_equal(keys, ew.add(pos, sequence.iota((steps, max_len), 0, pos.dtype)))


def positions(steps: int, pos: Node) -> Node:
    """The positions [pos, pos + T) of x's steps: `pos` itself when T = 1 (`gc.rope` takes
    a scalar), else a (T,) vector."""
    if steps == 1:
        return pos
    return ew.add(pos, sequence.iota((steps,), 0, pos.dtype))
