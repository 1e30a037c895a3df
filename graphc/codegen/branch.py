"""The kernel of a `cond` kept as a branch: the predicate read, one branch's program called.

`passes/lower_control.py` keeps a cond whose branches are not trivially cheap (its rule:
`branch_worthy`); the pipeline compiles each branch as a program of its own and
`codegen.module` emits them as ``int32_t fn(void **table)`` functions. The kernel:

    if *pred: true table:  operands -> the cond's operands; results -> the result buffers
              call true(table)
    else:     the same with the false branch
    a non-zero return: report the error (the entry point stops after this kernel)

Only the taken branch runs, so an error the other branch would raise (an index out of
range) is not raised, and its cost is not paid. Results are written straight into the
buffers of the `get`s that store them (a branch's outputs never alias its inputs: the
memory planner never places a loop kernel's output over a buffer it reads).

Scratch (64-byte aligned pieces): one arena shared by the two branches (only one runs:
the larger of the two), then the results no one reads (the branch still writes them).
"""

from __future__ import annotations

from dataclasses import dataclass

import llvmlite.ir as ir

from graphc.codegen.body_call import (
    BodyTable,
    aligned,
    call_checked,
    result_pointers,
    scratch_at,
    unread_results,
)
from graphc.codegen.context import KernelContext
from graphc.codegen.llvm_types import I8
from graphc.passes.kernels import Kernel

__all__ = ["BranchScratch", "emit", "scratch_layout"]


@dataclass(frozen=True)
class BranchScratch:
    """Offsets in a cond kernel's scratch (see the module doc); the arena is at 0."""

    unread: dict[int, int]
    nbytes: int


def scratch_layout(kernel: Kernel) -> BranchScratch:
    assert kernel.anchor is not None and len(kernel.bodies) == 2
    results = list(kernel.anchor.type.elements)  # type: ignore[union-attr]
    start = aligned(max(body.arena_bytes for body in kernel.bodies))
    unread, end = unread_results(kernel, results, start)
    return BranchScratch(unread, end)


def emit(ctx: KernelContext) -> None:
    """The cond kernel (see the module doc)."""
    kernel, b = ctx.kernel, ctx.b
    node = kernel.anchor
    assert node is not None and node.op == "cond" and len(ctx.bodies) == 2
    layout = scratch_layout(kernel)
    outputs = result_pointers(ctx, layout.unread)
    pred, *operands = [ctx.ptr(n) for n in node.inputs]
    holds = b.icmp_unsigned("!=", b.load(pred, typ=I8), ir.Constant(I8, 0))
    with b.if_else(holds) as (then, otherwise):
        for block, code, body in ((then, ctx.bodies[0], kernel.bodies[0]),
                                  (otherwise, ctx.bodies[1], kernel.bodies[1])):
            with block:
                table = BodyTable.prepare(ctx, code, body, scratch_at(ctx, 0),
                                          dict(enumerate(operands)), outputs)
                assert not table.varying
                call_checked(ctx, table)
