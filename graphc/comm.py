"""The process's place in a data-parallel job: its rank, the number of ranks, and MPI.

This is the lowest layer of data parallelism (it imports nothing of graphc but errors): the
`allreduce` op's reference reads it, the runtime binds compiled code to it, and
`graphc.distributed` (the user-facing module) initializes it.

- `init()` makes the world: with mpi4py importable, MPI's COMM_WORLD (importing
  ``mpi4py.MPI`` initializes MPI); without it, or with ``use_mpi=False``, a world of one
  process. Calling it again returns the same world.
- `world()` is the current world; if `init` was never called it initializes MPI only when
  the process was started by an MPI launcher (`mpiexec` sets PMI_/OMPI_/PMIX_ variables), so
  a plain ``python`` process never loads MPI just because a graph holds an allreduce; a
  launch with several ranks then requires mpi4py (a GraphcError without it, rather than
  every rank training alone).
- `allreduce_array` is the reference semantics of the op: the elementwise sum over ranks, or
  that sum divided by the number of ranks ("mean"), computed by MPI_Allreduce. It is the
  identity (a copy) in a world of one.

MPI handles differ between MPI implementations (ints in MPICH, pointers in Open MPI), so
nothing here or in generated code spells one: they come from mpi4py at run time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphc.errors import GraphcError

REDUCTIONS = ("sum", "mean")

# Set by the MPI launchers we know of (MPICH/Hydra, Open MPI, PMIx-based launchers, Slurm).
_LAUNCHER_VARIABLES = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")


@dataclass(frozen=True)
class World:
    """This process's view of the job. `comm` is an ``mpi4py.MPI.Comm`` (None in a world
    without MPI); `library` names the MPI library (its version line) or is "none"."""

    rank: int
    size: int
    comm: Any | None
    library: str

    @property
    def is_root(self) -> bool:
        return self.rank == 0


_WORLD: World | None = None


def init(use_mpi: bool | None = None) -> World:
    """The world of this process, created on the first call.

    `use_mpi`: True requires mpi4py (a GraphcError if it is missing), False forces a world of
    one, None (the default) uses MPI when mpi4py is importable. A later call returns the
    world of the first and refuses a contradicting `use_mpi`.
    """
    global _WORLD
    if use_mpi is not None and not isinstance(use_mpi, bool):
        raise GraphcError(f"use_mpi must be True, False or None, got {use_mpi!r}",
                          op="distributed.init")
    if _WORLD is not None:
        if use_mpi is not None and use_mpi != (_WORLD.comm is not None):
            raise GraphcError(f"distributed.init(use_mpi={use_mpi}) after the world was "
                              f"made {'with' if _WORLD.comm is not None else 'without'} MPI",
                              op="distributed.init")
        return _WORLD
    _WORLD = _make_world(use_mpi)
    return _WORLD


def world() -> World:
    """The current world; see the module docstring for what happens before `init`."""
    if _WORLD is not None:
        return _WORLD
    launched = any(v in os.environ for v in _LAUNCHER_VARIABLES)
    # Several ranks without mpi4py would each train alone, silently: require it then.
    several = any(os.environ.get(v, "1") not in ("", "1") for v in _SIZE_VARIABLES)
    return init(True if several else None if launched else False)


def _make_world(use_mpi: bool | None) -> World:
    if use_mpi is False:
        return World(0, 1, None, "none")
    try:
        from mpi4py import MPI
    except ImportError as exc:
        if use_mpi:
            raise GraphcError(f"use_mpi=True but mpi4py cannot be imported ({exc}); "
                              "pip install 'graphc[distributed]' (mpi4py and mpich)",
                              op="distributed.init") from None
        return World(0, 1, None, "none")
    comm = MPI.COMM_WORLD
    library = MPI.Get_library_version().splitlines()[0].strip()
    return World(comm.Get_rank(), comm.Get_size(), comm, library)


def allreduce_array(x: np.ndarray, reduction: str) -> np.ndarray:
    """A new array: `x` summed over the ranks elementwise, or that sum / size ("mean").

    Collective: every rank must call it, in the same order, with the same shape and dtype.
    """
    if reduction not in REDUCTIONS:
        raise GraphcError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}",
                          op="allreduce")
    w = world()
    if w.size == 1 or w.comm is None:
        return np.array(x, copy=True)
    from mpi4py import MPI

    send = np.ascontiguousarray(x)
    out = np.empty_like(send)
    w.comm.Allreduce(send, out, op=MPI.SUM)
    if reduction == "mean":
        # A division, as the compiled kernel does: correctly rounded, so both agree bitwise.
        out = out / out.dtype.type(w.size)
    return out
