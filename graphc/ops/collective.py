"""Collective ops: values combined across the processes (ranks) of a data-parallel job.

    allreduce(x, reduction)   elementwise sum over ranks ("sum"), or that sum / ranks ("mean")

Semantics (`graphc.comm.allreduce_array`): every rank gets the same result; in a world of one
process it is the identity. The op is a collective: every rank must run the same graph, so
that the allreduces happen in the same order with the same shapes (ranks compile the same
graph with the same options, and the schedule is deterministic). It is never constant-folded
(`OpDef.collective`). Its kernel (`codegen/opaque/collective.py`) calls through the
communicator slot of the compiled module, which the runtime binds to MPI.

Gradient: the reduction is linear and the same on every rank, so its vector-Jacobian product
is the same allreduce of the cotangents (d/dx_r of sum_s f_s(sum_q x_q) = sum_s g_s).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from graphc.builder import Operand, apply
from graphc.comm import REDUCTIONS, allreduce_array
from graphc.errors import DTypeError
from graphc.ir import Attrs, DType, Node, TensorType
from graphc.ir.attrs import AttrSpec, Kind
from graphc.ir.opdef import Fusion, OpDef
from graphc.ops.common import as_node

__all__ = ["allreduce"]

OPS: list[OpDef] = []


def _allreduce_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    (x,) = types
    if x.dtype not in (DType.float32, DType.float64):
        raise DTypeError(f"operand 0: expected a float32 or float64 tensor, got {x}")
    return x


def _allreduce_reference(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    return allreduce_array(arrays[0], attrs["reduction"])


def _allreduce_grad(n: Node, g: Node) -> list[Node | None]:
    return [allreduce(g, n.attrs["reduction"])]


ALLREDUCE = OpDef(
    "allreduce", "collective", 1, _allreduce_infer, _allreduce_reference, Fusion.OPAQUE,
    _allreduce_grad, collective=True,
    doc="sum (or mean) of a float tensor over the ranks of the job; identity with one rank",
    attrs=(AttrSpec("reduction", Kind.STR, choices=REDUCTIONS),),
)
OPS.append(ALLREDUCE)


def allreduce(x: Operand, reduction: str = "mean", name: str | None = None) -> Node:
    """`x` reduced elementwise over all ranks: "mean" (the default: the sum divided by the
    number of ranks, what data-parallel gradients need) or "sum". Same type as `x`; float32
    or float64 only. A collective: see the module docstring."""
    return apply(ALLREDUCE, [as_node(x)], {"reduction": reduction}, name=name)
