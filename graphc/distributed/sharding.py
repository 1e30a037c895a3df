"""Each rank's share of the data: the same shuffled order on every rank, split by rank.

Every rank draws an epoch's permutation from the same ``(seed, epoch)``, so the ranks agree on
it without communicating. `shard_batches` cuts it into global batches of `batch_size` and
gives rank r the r-th contiguous part of each: the ranks' parts of a step are exactly the
global batch a single process would take, which is what makes N ranks x B/N equal 1 x B.
Incomplete global batches are dropped, so every rank takes the same number of steps (a rank
with one step more would wait forever in its allreduce).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from graphc import comm
from graphc.errors import GraphcError

_OP = "distributed.shard"


def _count(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise GraphcError(f"{name} must be an int >= {low}, got {value!r}", op=_OP)
    return int(value)


def _order(n: int, epoch: int, seed: int | None) -> np.ndarray:
    if seed is None:
        return np.arange(n)
    return np.random.default_rng((_count("seed", seed, 0), epoch)).permutation(n)


def shard_batches(n: int, batch_size: int, *, epoch: int = 0, seed: int | None = None,
                  world: comm.World | None = None) -> Iterator[np.ndarray]:
    """This rank's index arrays for one epoch over range(n), one per step.

    `batch_size` is the global batch (all ranks together); it must be divisible by the
    number of ranks, and each rank gets ``batch_size // size`` indices per step. `seed`
    None keeps the data's order; an int shuffles it, differently per `epoch`, identically
    on every rank. `world` defaults to the current world.
    """
    w = world or comm.world()
    n = _count("n", n, 0)
    batch_size = _count("batch_size", batch_size, 1)
    epoch = _count("epoch", epoch, 0)
    if batch_size % w.size:
        raise GraphcError(f"batch_size {batch_size} is not divisible by the {w.size} ranks",
                          op=_OP)
    order = _order(n, epoch, seed)
    part = batch_size // w.size
    for start in range(0, n - n % batch_size, batch_size):
        begin = start + w.rank * part
        yield order[begin:begin + part]


def shard_indices(n: int, *, epoch: int = 0, seed: int | None = None,
                  world: comm.World | None = None) -> np.ndarray:
    """This rank's indices of one epoch over range(n): the r-th of `size` equal contiguous
    parts of the epoch's order (``n // size`` each; the last ``n % size`` are dropped)."""
    w = world or comm.world()
    n = _count("n", n, 0)
    epoch = _count("epoch", epoch, 0)
    part = n // w.size
    return _order(n, epoch, seed)[w.rank * part:(w.rank + 1) * part]
