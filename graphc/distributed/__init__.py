"""Data-parallel training over MPI (issue 18): the user-facing face.

    gc.distributed.init()                     rank, size (a world of one without MPI)
    gc.distributed.broadcast_variables(g)     every variable from rank 0 (weights, slots)
    gc.distributed.shard_batches(n, B, ...)   this rank's share of each global batch
    opt.minimize(loss, distributed=True)      mean-allreduce of every gradient in the step

Launch with ``mpiexec -n N python train.py``. See `graphc.comm` for the world and
`codegen/opaque/collective.py` for the communicator ABI of compiled code.
"""

from graphc.comm import World, world
from graphc.distributed.setup import broadcast_variables, init
from graphc.distributed.sharding import shard_batches, shard_indices

__all__ = ["World", "broadcast_variables", "init", "shard_batches", "shard_indices", "world"]
