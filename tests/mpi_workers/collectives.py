"""Op-level checks on every rank; run as ``mpiexec -n 2 python -m tests.mpi_workers.collectives
OUT.json``. Rank 0 writes {check: verdict} (True when the check held on every rank).

- allreduce sum and mean, float32 and float64, compiled == reference == numpy of the ranks'
  values (which every rank can compute: rank r holds base * (r + 1));
- the gradient of sum(allreduce(x) * c_r) is the allreduce of the cotangents;
- broadcast_variables with a variable that differs in shape on one rank raises a GraphcError
  on every rank (none is left waiting), and with matching graphs copies rank 0's values.
"""

from __future__ import annotations

import json
import sys

import numpy as np

import graphc as gc


def main(out: str) -> None:
    world = gc.distributed.init()
    assert world.comm is not None
    ranks = np.arange(1, world.size + 1, dtype=np.float64)
    results: dict[str, bool] = {}
    base = np.linspace(-1.0, 2.0, 24).reshape(4, 6)
    for dtype in (gc.float32, gc.float64):
        for reduction in ("sum", "mean"):
            with gc.Graph("ar") as g:
                x = gc.placeholder((4, 6), dtype, name="x")
                y = gc.allreduce(x * 2.0, reduction)
            mine = (base * (world.rank + 1)).astype(dtype.np)
            compiled = gc.compile(g, inputs=[x], outputs=y)(mine)
            reference = gc.reference(g, inputs=[x], outputs=y)(mine)
            total = sum((base * r).astype(dtype.np) * 2 for r in ranks)
            expected = total if reduction == "sum" else total / dtype.np.type(world.size)
            results[f"{reduction}_{dtype.name}"] = bool(
                np.array_equal(compiled, reference) and np.allclose(compiled, expected))

    with gc.Graph("grad") as g:
        x = gc.placeholder((3,), gc.float64, name="x")
        scale = gc.constant(np.full(3, world.rank + 1.0), name="scale")
        loss = gc.sum(gc.allreduce(x, "sum") * scale)
        (dx,) = gc.grad(loss, [x])
    got = gc.compile(g, inputs=[x], outputs=dx)(np.ones(3))
    results["grad"] = bool(np.array_equal(got, np.full(3, ranks.sum())))

    with gc.Graph("bcast") as g:
        gc.variable(np.full((2, 3), world.rank, np.float32), name="w")
        gc.variable(np.zeros(2 + world.rank), name="v")  # differs in shape on rank 1
    try:
        gc.distributed.broadcast_variables(g)
        results["mismatch_refused"] = False
    except gc.GraphcError as exc:
        results["mismatch_refused"] = "differ" in str(exc)
    with gc.Graph("bcast2") as g:
        gc.variable(np.full((2, 3), world.rank, np.float32), name="w")
    gc.distributed.broadcast_variables(g)
    results["broadcast"] = bool(np.all(g.variables["w"] == 0))

    everyone = world.comm.gather(results, root=0)
    if world.rank == 0:
        with open(out, "w") as f:
            json.dump({k: all(r[k] for r in everyone) for k in results}, f)


if __name__ == "__main__":
    main(sys.argv[1])
