"""Calling a compiled region from its loop kernel: the region's table, filled and called.

A region of a loop kernel (a scan's body, a while_loop's cond and body, a cond's branches)
is a program of its own, ``int32_t fn(void **table)`` with the entry point's ABI
(`codegen.module`). Its loop kernel keeps one table per region on its stack: the slots
that point at the same buffer at every call (the loop's consts, the region's constants,
its arena) are filled once, before the loop; the others (carries, x_t, y_t) per call.

Region constants become private globals of the module; a region's arena lives in its loop
kernel's scratch. A region whose kernel finds its input invalid returns non-zero; the loop
kernel then reports the error through its own status word and returns at once, so the
entry point stops after it as after any checking kernel.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import llvmlite.ir as ir
import numpy as np

from graphc.codegen.context import KernelContext, LoopCode
from graphc.codegen.llvm_types import I1, I8, I32, I64, PTR, VOID, intrinsic
from graphc.codegen.loops import entry_alloca
from graphc.ir import TensorType
from graphc.passes.kernels import Kernel, LoopBody
from graphc.passes.memory_plan import ALIGN, Space

__all__ = ["BodyTable", "aligned", "call_checked", "memcpy", "result_pointers", "scratch_at",
           "unread_results"]


def aligned(n: int) -> int:
    """`n` rounded up to the arena's alignment (64 bytes)."""
    return (n + ALIGN - 1) // ALIGN * ALIGN


def scratch_at(ctx: KernelContext, offset: int) -> ir.Value:
    """A pointer `offset` bytes into the loop kernel's scratch (null when it has none: a
    region whose arena is empty never reads its arena slot)."""
    if ctx.scratch is None:
        return ir.Constant(PTR, None)
    return ctx.b.gep(ctx.scratch, [ir.Constant(I64, offset)], inbounds=True, source_etype=I8)


def memcpy(ctx: KernelContext, dst: ir.Value, src: ir.Value, nbytes: int) -> None:
    fn = intrinsic(ctx.module, "llvm.memcpy", VOID, [PTR, PTR, I64, I1], [PTR, PTR, I64])
    ctx.b.call(fn, [dst, src, ir.Constant(I64, nbytes), ir.Constant(I1, 0)])


def carry_buffers(carries: list[TensorType], in_place: set[int], offset: int
                  ) -> tuple[tuple[int | None, ...], int]:
    """Scratch offsets, from `offset` on, of each carry's second buffer (None for a carry
    the body updates in place: it has one buffer); the end offset."""
    second: list[int | None] = []
    for c, t in enumerate(carries):
        if c in in_place:
            second.append(None)
            continue
        second.append(offset)
        offset += aligned(t.nbytes)
    return tuple(second), offset


def unread_results(kernel: Kernel, results: list[TensorType], offset: int
                   ) -> tuple[dict[int, int], int]:
    """Scratch offsets, from `offset` on, for the results of a loop kernel's region op that
    no `get` stores (its regions still write them); the end offset."""
    read = {o.attrs["index"] for o in kernel.outputs}
    unread = {}
    for i, t in enumerate(results):
        if i not in read:
            unread[i] = offset
            offset += aligned(t.nbytes)
    return unread, offset


def result_pointers(ctx: KernelContext, unread: dict[int, int]) -> dict[int, ir.Value]:
    """Where each result of the loop kernel's region op goes, by result index: the buffer
    of the `get` that stores it, else its scratch piece."""
    ptrs: dict[int, ir.Value] = {o.attrs["index"]: ctx.ptrs[o] for o in ctx.kernel.outputs}
    ptrs.update((i, scratch_at(ctx, off)) for i, off in unread.items())
    return ptrs


@dataclass
class BodyTable:
    """One region's table on the loop kernel's stack.

    `varying` lists the slots left to fill before each call, as (slot, space, key): an
    input slot (key = the region param's index) or an output slot (key = the result's
    index) the constructor was not given a fixed pointer for.
    """

    code: LoopCode
    table: ir.Value
    varying: list[tuple[int, Space, int]]

    @classmethod
    def prepare(cls, ctx: KernelContext, code: LoopCode, body: LoopBody, arena: ir.Value,
                inputs: dict[int, ir.Value], outputs: dict[int, ir.Value] | None = None
                ) -> BodyTable:
        """Allocate the table and fill what never changes: the given `inputs` (by param
        index) and `outputs` (by result index), the region's constants, its arena."""
        b = ctx.b
        table = entry_alloca(b, PTR, name="body.table", count=max(len(code.table), 1))
        this = cls(code, table, [])
        constants = body.plan.program.graph.constants
        for i, entry in enumerate(code.table):
            key = entry.key
            if entry.space == Space.CONSTANT:
                b.store(_constant_global(ctx, constants[str(key)]), this.slot(ctx, i))
            elif entry.space == Space.ARENA:
                b.store(arena, this.slot(ctx, i))
            else:
                assert entry.space in (Space.INPUT, Space.OUTPUT) and isinstance(key, int)
                fixed = inputs if entry.space == Space.INPUT else (outputs or {})
                if key in fixed:
                    b.store(fixed[key], this.slot(ctx, i))
                else:
                    this.varying.append((i, entry.space, key))
        return this

    def slot(self, ctx: KernelContext, i: int) -> ir.Value:
        return ctx.b.gep(self.table, [ir.Constant(I64, i)], inbounds=True, source_etype=PTR)

    def store(self, ctx: KernelContext, i: int, value: ir.Value) -> None:
        ctx.b.store(value, self.slot(ctx, i))


def call_checked(ctx: KernelContext, body: BodyTable) -> None:
    """Call the region; if it failed, report the error and return from the loop kernel."""
    b = ctx.b
    failed = b.icmp_unsigned("!=", b.call(body.code.fn, [body.table]), ir.Constant(I32, 0))
    ctx.report_error(failed)
    with b.if_then(failed, likely=False):
        b.ret_void()


def _constant_global(ctx: KernelContext, value: np.ndarray) -> ir.GlobalVariable:
    """A private, 64-byte aligned global holding the bytes of a region's constant (shared by
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
