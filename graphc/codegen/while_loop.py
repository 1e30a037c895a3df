"""The loop kernel of a `while_loop`: its cond and body compiled once each, run natively
until the cond is false.

The pipeline compiles both regions as programs of their own (`passes.kernels.LoopBody`);
`codegen.module` emits them as ``int32_t fn(void **table)`` functions of the same module.
The kernel, emitted here, owns the loop:

    copy init into the carries' result buffers (`final`)
    loop:
        cond table: consts -> the operands; carry -> the current buffers; result -> `pred`
        if cond(table) != 0: report the error, stop
        if not *pred: leave the loop
        body table: consts; carry -> the current buffers; carry' -> the other ones
        if body(table) != 0: report the error, stop
        swap the current and the other buffers
    if the current buffers are not the result buffers: copy them there

Carries are double-buffered (a region's outputs never alias its inputs): the result buffer
and a scratch one. The trip count is known only at run time, so unlike a scan's the loop
cannot pick the first buffer by parity; after an odd number of trips it copies the carries
once into the result buffers. Zero trips leave init in them.

Scratch (64-byte aligned pieces): one arena shared by the two regions (they never run at
the same time: the larger of the two), the cond's bool result, the second buffer of every
carry, then the carries no one reads (the loop still writes them).
"""

from __future__ import annotations

from dataclasses import dataclass

import llvmlite.ir as ir

from graphc.codegen.body_call import (
    BodyTable,
    aligned,
    call_checked,
    carry_buffers,
    memcpy,
    result_pointers,
    scratch_at,
    unread_results,
)
from graphc.codegen.context import KernelContext
from graphc.codegen.llvm_types import I1, I8
from graphc.codegen.loops import entry_alloca
from graphc.ir import TensorType
from graphc.passes.kernels import Kernel
from graphc.passes.memory_plan import ALIGN, Space

__all__ = ["WhileScratch", "emit", "scratch_layout"]


@dataclass(frozen=True)
class WhileScratch:
    """Offsets in a while_loop kernel's scratch (see the module doc); the arena is at 0."""

    pred: int
    carry: tuple[int | None, ...]  # None: updated in place, one buffer
    unread: dict[int, int]
    nbytes: int


def scratch_layout(kernel: Kernel) -> WhileScratch:
    assert kernel.anchor is not None and len(kernel.bodies) == 2
    results = _results(kernel)
    pred = aligned(max(body.arena_bytes for body in kernel.bodies))
    offset = pred + ALIGN
    in_place = set(kernel.bodies[1].plan.in_place_carries)
    carry, offset = carry_buffers(results, in_place, offset)
    unread, offset = unread_results(kernel, results, offset)
    return WhileScratch(pred, carry, unread, offset)


def _results(kernel: Kernel) -> list[TensorType]:
    assert kernel.anchor is not None
    return list(kernel.anchor.type.elements)  # type: ignore[union-attr]


def emit(ctx: KernelContext) -> None:
    """The while_loop kernel (see the module doc)."""
    kernel, b = ctx.kernel, ctx.b
    node = kernel.anchor
    assert node is not None and node.op == "while_loop" and len(ctx.bodies) == 2
    nc = node.attrs["num_consts"]
    layout = scratch_layout(kernel)
    results = _results(kernel)
    result_ptr = result_pointers(ctx, layout.unread)
    operands = [ctx.ptr(n) for n in node.inputs]
    consts, init = operands[:nc], operands[nc:]
    final = [result_ptr[i] for i in range(len(results))]
    other = [f if off is None else scratch_at(ctx, off) for f, off in zip(final, layout.carry)]
    for dst, src, t in zip(final, init, results):
        memcpy(ctx, dst, src, t.nbytes)

    pred = scratch_at(ctx, layout.pred)
    arena = scratch_at(ctx, 0)
    fixed = dict(enumerate(consts))
    test = BodyTable.prepare(ctx, ctx.bodies[0], kernel.bodies[0], arena, fixed, {0: pred})
    body = BodyTable.prepare(ctx, ctx.bodies[1], kernel.bodies[1], arena, fixed)
    swapped = entry_alloca(b, I1, name="swapped")  # the current carries are in `other`
    b.store(ir.Constant(I1, 0), swapped)

    fn = b.block.function
    head = fn.append_basic_block("while.cond")
    loop = fn.append_basic_block("while.body")
    done = fn.append_basic_block("while.end")
    b.branch(head)

    b.position_at_end(head)
    odd = b.load(swapped, typ=I1)
    current = [b.select(odd, o, f) for o, f in zip(other, final)]
    following = [b.select(odd, f, o) for o, f in zip(other, final)]
    for i, space, key in test.varying:
        assert space == Space.INPUT and key >= nc
        test.store(ctx, i, current[key - nc])
    call_checked(ctx, test)
    holds = b.icmp_unsigned("!=", b.load(pred, typ=I8), ir.Constant(I8, 0))
    b.cbranch(holds, loop, done)

    b.position_at_end(loop)
    for i, space, key in body.varying:
        if space == Space.INPUT:
            assert key >= nc
            body.store(ctx, i, current[key - nc])
        else:
            body.store(ctx, i, following[key])
    call_checked(ctx, body)
    b.store(b.not_(odd), swapped)
    b.branch(head)

    b.position_at_end(done)
    with b.if_then(b.load(swapped, typ=I1)):
        for dst, src, t, off in zip(final, other, results, layout.carry):
            if off is not None:
                memcpy(ctx, dst, src, t.nbytes)
