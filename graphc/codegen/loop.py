"""Loop kernels: region ops run natively, each region compiled once as a program of its own.

`KernelKind.LOOP` has this one `Lowering`; it dispatches on the region op: a `scan` is
emitted here, a `while_loop` by `codegen/while_loop.py`, a `cond` kept as a branch by
`codegen/branch.py` (`NATIVE_REGION_OPS`; how a region is called: `codegen/body_call.py`).

The pipeline compiles each region as a program of its own (inputs = the region's params,
outputs = its results: `passes.kernels.LoopBody`), and `codegen.module` emits it into the
same module as ``int32_t body(void **table)``, with the entry point's ABI and kernels of
its own (which use the thread pool as any kernel does). A scan's kernel owns the loop:

    copy init into the carry buffer step 0 reads
    for t in 0..T-1:                        step s = T-1-t when reverse, else t
        table: consts -> the operands; carry -> the buffer step t reads, carry' -> the
               other one (double-buffered: a body's outputs never alias its inputs);
               x_t -> xs + s * |x_t|; y_t -> ys + s * |y_t|; the body's constants ->
               private globals; arena -> this kernel's scratch
        if body(table) != 0: report the error, stop

The two carry buffers are the carry's result buffer and a scratch one, chosen by the parity
of T so that the last step writes the result buffer: nothing is copied after the loop.
A carry the body's memory plan writes over the buffer it read
(`MemoryPlan.in_place_carries`: safe when no kernel reads the old value after the one
writing the new, which reads it only at its own index or overwrites it, as
dynamic_update_slice does) has one buffer, the result's: then a step that updates a row
of a large carry writes that row, instead of copying the carry.

Scratch of the kernel (64-byte aligned pieces): the body's arena (planned region, its
kernels' scratch, its status word), then the second buffer of every double-buffered
carry, then the results no one reads (the loop still writes them).

A body kernel that checks its input (a gather's indices) makes the body return non-zero;
the loop kernel then sets its own status word, so the entry point stops after it as after
any checking kernel. The loop kernel therefore always checks.

Partial unrolling (`unroll=k`) happens before, in `passes/lower_control.py`: the kernel
sees a scan whose body holds k steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import llvmlite.ir as ir

from graphc.codegen import branch, while_loop
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
from graphc.codegen.context import KernelContext, Lowering
from graphc.codegen.llvm_types import I1, I8, I64
from graphc.codegen.loops import for_range
from graphc.codegen.target import Target
from graphc.ir import Node, TensorType
from graphc.passes.kernels import Kernel, KernelKind
from graphc.passes.memory_plan import Space

__all__ = ["LOWERINGS", "NATIVE_REGION_OPS", "ScratchLayout", "scratch_layout"]

# The region ops code generation runs natively (one loop kernel each).
NATIVE_REGION_OPS = ("scan", "while_loop", "cond")


@dataclass(frozen=True)
class ScratchLayout:
    """Where a loop kernel's scratch holds the body's arena (at 0), each carry's second
    buffer (`carry`, per carry) and each result no one reads (`unread`, by result index)."""

    carry: tuple[int | None, ...]  # None: updated in place, one buffer
    unread: dict[int, int]
    nbytes: int


def scratch_layout(kernel: Kernel) -> ScratchLayout:
    """The scratch layout of a scan's loop kernel (see the module doc)."""
    assert kernel.bodies and kernel.anchor is not None
    scan = kernel.anchor
    results = _result_types(scan)
    num_carry = scan.attrs["num_carry"]
    in_place = set(kernel.bodies[0].plan.in_place_carries)
    offset = aligned(kernel.bodies[0].arena_bytes)
    carry, offset = carry_buffers(results[:num_carry], in_place, offset)
    unread, offset = unread_results(kernel, results, offset)
    return ScratchLayout(carry, unread, offset)


def _scratch_bytes(kernel: Kernel, target: Target, threads: int, conv: str) -> int:
    op = kernel.anchor.op if kernel.anchor is not None else ""
    if op == "while_loop":
        return while_loop.scratch_layout(kernel).nbytes
    if op == "cond":
        return branch.scratch_layout(kernel).nbytes
    return scratch_layout(kernel).nbytes


def _result_types(scan: Node) -> list[TensorType]:
    return list(scan.type.elements)  # type: ignore[union-attr]


def _emit(ctx: KernelContext) -> None:
    anchor = ctx.kernel.anchor
    assert anchor is not None and anchor.op in NATIVE_REGION_OPS
    if anchor.op == "while_loop":
        while_loop.emit(ctx)
    elif anchor.op == "cond":
        branch.emit(ctx)
    else:
        _emit_scan(ctx)


def _emit_scan(ctx: KernelContext) -> None:
    kernel, b = ctx.kernel, ctx.b
    scan = kernel.anchor
    assert scan is not None and scan.op == "scan" and len(ctx.bodies) == 1
    nc, nk = scan.attrs["num_consts"], scan.attrs["num_carry"]
    length, reverse = scan.attrs["length"], scan.attrs["reverse"]
    layout = scratch_layout(kernel)
    results = _result_types(scan)
    result_ptr = result_pointers(ctx, layout.unread)
    operands = [ctx.ptr(n) for n in scan.inputs]
    consts, init, xs = operands[:nc], operands[nc:nc + nk], operands[nc + nk:]
    xs_types = [n.type for n in scan.inputs[nc + nk:]]

    # The buffer step 0 reads is the one the last step does not write.
    final = [result_ptr[i] for i in range(nk)]
    other = [f if off is None else scratch_at(ctx, off) for f, off in zip(final, layout.carry)]
    first, second = (final, other) if length % 2 == 0 else (other, final)
    for dst, src, t in zip(first, init, results[:nk]):
        memcpy(ctx, dst, src, t.nbytes)

    # Slots that hold the same pointer at every step are filled once, before the loop.
    body = BodyTable.prepare(ctx, ctx.bodies[0], kernel.bodies[0], scratch_at(ctx, 0),
                             dict(enumerate(consts)))
    with for_range(b, 0, length, name="step") as t:
        odd = b.trunc(t, I1)
        s = b.sub(ir.Constant(I64, length - 1), t) if reverse else t
        for i, space, key in body.varying:
            if space == Space.INPUT and key < nc + nk:  # the carry this step reads
                c = key - nc
                value = b.select(odd, second[c], first[c])
            elif space == Space.INPUT:  # x_t
                j = key - nc - nk
                row = xs_types[j].nbytes // length
                value = b.gep(xs[j], [b.mul(s, ir.Constant(I64, row))], inbounds=True,
                              source_etype=I8)
            elif key < nk:  # the carry this step writes
                value = b.select(odd, first[key], second[key])
            else:  # y_t
                row = results[key].nbytes // length
                value = b.gep(result_ptr[key], [b.mul(s, ir.Constant(I64, row))],
                              inbounds=True, source_etype=I8)
            body.store(ctx, i, value)
        call_checked(ctx, body)


def _failure(node: Node) -> str:
    what = {"cond": "a branch", "while_loop": "the cond or the body"}.get(node.op, "the body")
    at = "" if node.op == "cond" else " at some step"
    return (f"a kernel in {what} of {node.op} %{node.name} found its input invalid (an "
            f"index out of range){at}")


LOWERINGS = (Lowering(KernelKind.LOOP, _emit, _scratch_bytes, failure=_failure),)
