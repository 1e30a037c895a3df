"""Splitting a kernel's outer range across the native thread pool.

`parallel_range(ctx, n, grain, body)` calls `body(ctx2, start, stop)` for contiguous chunks
of [0, n). When the work is too small (n < 2 * grain) or the target has one thread, it emits
`body(ctx, 0, n)` inline. Otherwise it outlines the body into a task function
`void task(void **captured, int64_t t)` whose context re-binds every buffer pointer from
`captured`, and the kernel calls the pool's `parallel_for(task, captured, ntasks)` (the
process pool's in a JIT program, the library's own in an export: `threadpool`).

Chunks are multiples of `align` (vector lanes) so only the last chunk has a vector tail, and
every output element is computed by exactly the same instructions whatever the thread count:
results are identical for any number of threads.
"""

from __future__ import annotations

from collections.abc import Callable

import llvmlite.ir as ir

from graphc.codegen.context import KernelContext
from graphc.codegen.llvm_types import I64, PTR
from graphc.codegen.loops import entry_alloca
from graphc.codegen.threadpool import TASK_FN, ensure_pool

Body = Callable[[KernelContext, ir.Value, ir.Value], None]

# Chunks per thread: a few, so a thread delayed by the OS does not hold everyone up.
CHUNKS_PER_THREAD = 4


def split_plan(n: int, grain: int, threads: int, align: int = 1) -> tuple[int, int] | None:
    """(chunk, tasks) of the split `parallel_range` makes of [0, n), or None when it runs
    the body inline. Task t covers [t*chunk, min((t+1)*chunk, n)), so a body that needs
    per-task scratch finds its task as start // chunk."""
    if threads <= 1 or n < 2 * grain:
        return None
    chunk = max(grain, -(-n // (threads * CHUNKS_PER_THREAD)))
    chunk = -(-chunk // align) * align
    ntasks = -(-n // chunk)
    return None if ntasks <= 1 else (chunk, ntasks)


def parallel_range(ctx: KernelContext, n: int, grain: int, body: Body, align: int = 1) -> None:
    """Run `body` over [0, n) in parallel chunks of at least `grain` (see module doc)."""
    threads = ctx.threads
    split = split_plan(n, grain, threads, align)
    if split is None:
        body(ctx, ir.Constant(I64, 0), ir.Constant(I64, n))
        return
    chunk, ntasks = split
    module = ctx.module
    parent = ctx.b.block.function
    # A kernel may outline several tasks (a concat kernel: one per operand): unique names.
    task = ir.Function(module, TASK_FN, module.get_unique_name(f"{parent.name}.task"))
    task.linkage = "internal"
    task.attributes.add("nounwind")
    captured, t = task.args

    # Capture every pointer the body may use: the kernel's buffers, its scratch, its status.
    nodes = list(ctx.ptrs)
    values = [ctx.ptrs[n_] for n_ in nodes]
    extra = [p for p in (ctx.scratch, ctx.status) if p is not None]
    values += extra
    slot = entry_alloca(ctx.b, PTR, name="captured", count=max(len(values), 1))
    for i, v in enumerate(values):
        addr = ctx.b.gep(slot, [ir.Constant(I64, i)], inbounds=True, source_etype=PTR)
        ctx.b.store(v, addr)

    tb = ir.IRBuilder(task.append_basic_block("entry"))
    loaded = []
    for i in range(len(values)):
        addr = tb.gep(captured, [ir.Constant(I64, i)], inbounds=True, source_etype=PTR)
        loaded.append(tb.load(addr, typ=PTR))
    ptrs = dict(zip(nodes, loaded))
    rest = iter(loaded[len(nodes):])
    scratch = next(rest) if ctx.scratch is not None else None
    status = next(rest) if ctx.status is not None else None
    sub = KernelContext(tb, ctx.target, ctx.program, ctx.kernel, ptrs, scratch, ctx.threads,
                        ctx.conv_algorithm, status)
    start = tb.mul(t, ir.Constant(I64, chunk))
    end = tb.add(start, ir.Constant(I64, chunk))
    over = tb.icmp_signed(">", end, ir.Constant(I64, n))
    stop = tb.select(over, ir.Constant(I64, n), end)
    body(sub, start, stop)
    sub.b.ret_void()

    parallel_for = ensure_pool(module, threads)
    ctx.b.call(parallel_for, [task, slot, ir.Constant(I64, ntasks)])
