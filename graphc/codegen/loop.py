"""Loop kernels: a `scan` run natively, its body compiled once and called per step.

The pipeline compiles a scan's body as a program of its own (inputs = the body's params,
outputs = its results: `passes.kernels.LoopBody`), and `codegen.module` emits it into the
same module as ``int32_t body(void **table)``, with the entry point's ABI and kernels of
its own (which use the thread pool as any kernel does). The scan's kernel, emitted here,
owns the loop:

    copy init into the carry buffer step 0 reads
    for t in 0..T-1:                        step s = T-1-t when reverse, else t
        table: consts -> the operands; carry -> the buffer step t reads, carry' -> the
               other one (double-buffered: a body's outputs never alias its inputs);
               x_t -> xs + s * |x_t|; y_t -> ys + s * |y_t|; the body's constants ->
               private globals; arena -> this kernel's scratch
        if body(table) != 0: report the error, stop

The two carry buffers are the carry's result buffer and a scratch one, chosen by the parity
of T so that the last step writes the result buffer: nothing is copied after the loop.

Scratch of the kernel (64-byte aligned pieces): the body's arena (planned region, its
kernels' scratch, its status word), then the second buffer of every carry, then the
results no one reads (the loop still writes them).

A body kernel that checks its input (a gather's indices) makes the body return non-zero;
the loop kernel then sets its own status word, so the entry point stops after it as after
any checking kernel. The loop kernel therefore always checks.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import llvmlite.ir as ir
import numpy as np

from graphc.codegen.context import KernelContext, Lowering
from graphc.codegen.llvm_types import I1, I8, I32, I64, PTR, VOID, intrinsic
from graphc.codegen.loops import entry_alloca, for_range
from graphc.codegen.target import Target
from graphc.ir import Node, TensorType
from graphc.passes.kernels import Kernel, KernelKind
from graphc.passes.memory_plan import ALIGN, Space

__all__ = ["LOWERINGS", "ScratchLayout", "scratch_layout"]


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class ScratchLayout:
    """Where a loop kernel's scratch holds the body's arena (at 0), each carry's second
    buffer (`carry`, per carry) and each result no one reads (`unread`, by result index)."""

    carry: tuple[int, ...]
    unread: dict[int, int]
    nbytes: int


def scratch_layout(kernel: Kernel) -> ScratchLayout:
    """The scratch layout of a scan's loop kernel (see the module doc)."""
    assert kernel.body is not None and kernel.anchor is not None
    scan = kernel.anchor
    results = _result_types(scan)
    num_carry = scan.attrs["num_carry"]
    offset = _aligned(kernel.body.arena_bytes)
    carry = []
    for t in results[:num_carry]:
        carry.append(offset)
        offset += _aligned(t.nbytes)
    read = {o.attrs["index"] for o in kernel.outputs}
    unread = {}
    for i, t in enumerate(results):
        if i not in read:
            unread[i] = offset
            offset += _aligned(t.nbytes)
    return ScratchLayout(tuple(carry), unread, offset)


def _scratch_bytes(kernel: Kernel, target: Target, threads: int, conv: str) -> int:
    return scratch_layout(kernel).nbytes


def _result_types(scan: Node) -> list[TensorType]:
    return list(scan.type.elements)  # type: ignore[union-attr]


def _emit_scan(ctx: KernelContext) -> None:
    kernel, b = ctx.kernel, ctx.b
    scan, body = kernel.anchor, ctx.body
    assert scan is not None and scan.op == "scan" and body is not None
    assert kernel.body is not None and ctx.scratch is not None
    nc, nk = scan.attrs["num_consts"], scan.attrs["num_carry"]
    length, reverse = scan.attrs["length"], scan.attrs["reverse"]
    layout = scratch_layout(kernel)
    results = _result_types(scan)

    def at(offset: int) -> ir.Value:
        return b.gep(ctx.scratch, [ir.Constant(I64, offset)], inbounds=True, source_etype=I8)

    result_ptr: dict[int, ir.Value] = {o.attrs["index"]: ctx.ptrs[o] for o in kernel.outputs}
    result_ptr.update((i, at(off)) for i, off in layout.unread.items())
    operands = [ctx.ptr(n) for n in scan.inputs]
    consts, init, xs = operands[:nc], operands[nc:nc + nk], operands[nc + nk:]
    xs_types = [n.type for n in scan.inputs[nc + nk:]]

    # The buffer step 0 reads is the one the last step does not write.
    final = [result_ptr[i] for i in range(nk)]
    other = [at(off) for off in layout.carry]
    first, second = (final, other) if length % 2 == 0 else (other, final)
    memcpy = intrinsic(ctx.module, "llvm.memcpy", VOID, [PTR, PTR, I64, I1], [PTR, PTR, I64])
    for dst, src, t in zip(first, init, results[:nk]):
        b.call(memcpy, [dst, src, ir.Constant(I64, t.nbytes), ir.Constant(I1, 0)])

    table = entry_alloca(b, PTR, name="body.table", count=max(len(body.table), 1))

    def slot(i: int) -> ir.Value:
        return b.gep(table, [ir.Constant(I64, i)], inbounds=True, source_etype=PTR)

    # Slots that hold the same pointer at every step are filled once, before the loop.
    per_step: list[tuple[int, Space, int]] = []
    for i, entry in enumerate(body.table):
        key = entry.key
        if entry.space == Space.INPUT and isinstance(key, int) and key < nc:
            b.store(consts[key], slot(i))
        elif entry.space == Space.CONSTANT:
            b.store(_constant_global(ctx, kernel.body.plan.program.graph.constants[str(key)]),
                    slot(i))
        elif entry.space == Space.ARENA:
            b.store(at(0), slot(i))
        else:
            assert entry.space in (Space.INPUT, Space.OUTPUT) and isinstance(key, int)
            per_step.append((i, entry.space, key))

    with for_range(b, 0, length, name="step") as t:
        odd = b.trunc(t, I1)
        s = b.sub(ir.Constant(I64, length - 1), t) if reverse else t
        for i, space, key in per_step:
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
            b.store(value, slot(i))
        failed = b.icmp_unsigned("!=", b.call(body.fn, [table]), ir.Constant(I32, 0))
        ctx.report_error(failed)
        with b.if_then(failed, likely=False):
            b.ret_void()


def _constant_global(ctx: KernelContext, value: np.ndarray) -> ir.GlobalVariable:
    """A private, 64-byte aligned global holding the bytes of a body's constant (shared by
    value: one global per distinct array)."""
    array = np.ascontiguousarray(value)
    data = array.tobytes()
    name = f"graphc.const.{array.dtype.str}.{hashlib.sha256(data).hexdigest()[:24]}"
    existing = ctx.module.globals.get(name)
    if existing is not None:
        return existing  # type: ignore[no-any-return]
    typ = ir.ArrayType(I8, max(len(data), 1))
    g = ir.GlobalVariable(ctx.module, typ, name)
    g.linkage = "private"
    g.global_constant = True
    g.align = ALIGN
    g.initializer = ir.Constant(typ, bytearray(data or b"\0"))
    return g


def _failure(node: Node) -> str:
    return (f"a kernel in the body of {node.op} %{node.name} found its input invalid (an "
            "index out of range) at some step")


LOWERINGS = (Lowering(KernelKind.LOOP, _emit_scan, _scratch_bytes, failure=_failure),)
