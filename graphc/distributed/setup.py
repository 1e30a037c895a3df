"""Joining the job (`init`) and making every rank start from the same state
(`broadcast_variables`)."""

from __future__ import annotations

import sys
import traceback
from types import TracebackType

from graphc import comm
from graphc.comm import World
from graphc.errors import GraphcError
from graphc.ir import Graph


def init(use_mpi: bool | None = None, *, abort_on_error: bool = True) -> World:
    """Join the job and return this process's `World` (rank, size, MPI library).

    `use_mpi`: see `graphc.comm.init` (None: MPI when mpi4py is importable). With
    `abort_on_error` and more than one rank, an uncaught exception on any rank prints its
    traceback and calls MPI_Abort, which ends every rank of the job: the others would
    otherwise wait forever in their next allreduce.
    """
    if not isinstance(abort_on_error, bool):
        raise GraphcError(f"abort_on_error must be True or False, got {abort_on_error!r}",
                          op="distributed.init")
    w = comm.init(use_mpi)
    if abort_on_error and w.size > 1 and w.comm is not None:
        _install_abort_hook(w)
    return w


def _install_abort_hook(w: World) -> None:
    if getattr(sys.excepthook, "graphc_abort", False):
        return
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException,
             tb: TracebackType | None) -> None:
        try:
            sys.stderr.write(f"graphc.distributed: rank {w.rank} of {w.size} failed; "
                             "aborting the job\n")
            traceback.print_exception(kind, value, tb)
            sys.stderr.flush()
        finally:
            assert w.comm is not None
            w.comm.Abort(1)
        previous(kind, value, tb)  # not reached: Abort does not return

    hook.graphc_abort = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def broadcast_variables(graph: Graph, root: int = 0) -> None:
    """Overwrite every variable of `graph` (parameters and optimizer state) with rank
    `root`'s values, in place (executables bound to the arrays keep them).

    Collective: every rank calls it with the same graph. If any rank's variables differ from
    root's in names, shapes or dtypes, every rank raises the same GraphcError and nothing is
    overwritten. A no-op in a world of one.
    """
    if not isinstance(graph, Graph):
        raise GraphcError(f"graph must be a gc.Graph, got {graph!r}",
                          op="distributed.broadcast_variables")
    w = comm.world()
    if isinstance(root, bool) or not isinstance(root, int) or not 0 <= root < w.size:
        raise GraphcError(f"root must be a rank in [0, {w.size}), got {root!r}",
                          op="distributed.broadcast_variables")
    if w.size == 1 or w.comm is None:
        return
    names = sorted(graph.variables)
    layout = [(n, graph.variables[n].shape, graph.variables[n].dtype.str) for n in names]
    expected = w.comm.bcast(layout, root=root)
    # Agree on failure before raising, so that no rank is left waiting in a Bcast.
    mismatch = w.comm.allreduce(int(layout != expected))
    if mismatch:
        raise GraphcError(f"{mismatch} rank(s) hold variables that differ from rank {root}'s "
                          "in names, shapes or dtypes; build the same graph on every rank",
                          op="distributed.broadcast_variables")
    for name in names:
        array = graph.variables[name]
        if not array.flags.c_contiguous or not array.flags.writeable:
            raise GraphcError(f"variable {name!r} is not a writable C-contiguous array",
                              op="distributed.broadcast_variables")
        w.comm.Bcast(array, root=root)
