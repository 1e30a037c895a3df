"""One LLVM module per compiled signature: kernel functions and one entry point.

ABI of the entry point: ``int32_t graphc_entry(void **table)``. `table` holds one pointer
per buffer, in the order of `GeneratedModule.table`: the inputs (signature order), the
outputs (signature order), the variables and the large constants the code reads (by name),
then the arena (`arena_bytes`, 64-byte aligned; the caller owns it). The entry point runs
the `copies_before` of the memory plan, calls every kernel in schedule order, runs the
`copies_after`, and returns 0. A kernel that checks its inputs (`Lowering.checks`: gathers
and scatter-adds check their indices) gets a pointer to a status word at the end of the
arena; when it reports an error the entry point stops after it and returns the kernel's
index + 1 (`GeneratedModule.failed_kernel`), so no later kernel (no variable update after
it) runs on the bad input.

Every kernel is an internal function whose arguments are its output buffers (one per
`Kernel.outputs`), its input buffers and, if it needs one, a scratch pointer into the
arena (after the planned region: kernels run one after another, so they share it). Buffer
arguments are `noalias` except where the memory plan placed an output over an input
(in-place).

Gradient buckets (`MemoryPlan.buckets`): the allreduce kernels they cover are not called;
the entry point starts each bucket after the kernel that writes its last gradient and waits
for it before the first kernel that reads a result (`codegen/opaque/collective.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import llvmlite.ir as ir

from graphc.codegen import bf16, lowering
from graphc.codegen.context import KernelContext, LoopCode, TableEntry
from graphc.codegen.llvm_types import I1, I8, I32, I64, PTR, VOID, intrinsic
from graphc.codegen.opaque.collective import (
    emit_bucket_poke,
    emit_bucket_start,
    emit_bucket_wait,
)
from graphc.codegen.target import Target
from graphc.codegen.threadpool import declare_process_pool
from graphc.ir import Node
from graphc.passes.kernels import Kernel
from graphc.passes.memory_plan import ALIGN, Copy, Location, MemoryPlan, Space

ENTRY = "graphc_entry"


@dataclass
class GeneratedModule:
    module: ir.Module
    table: list[TableEntry]
    arena_bytes: int
    scratch_offset: int
    entry: str = ENTRY

    @property
    def ir_text(self) -> str:
        return str(self.module)


def _table(plan: MemoryPlan) -> list[TableEntry]:
    sig = plan.program.signature
    entries = [TableEntry(Space.INPUT, i) for i in range(len(sig.inputs))]
    entries += [TableEntry(Space.OUTPUT, i) for i in range(len(sig.outputs))]
    used = set(plan.location.values())
    for c in (*plan.copies_before, *plan.copies_after):
        used |= {c.src_loc, c.dst}
    variables = sorted({str(loc.key) for loc in used if loc.space == Space.VARIABLE})
    constants = sorted({str(loc.key) for loc in used if loc.space == Space.CONSTANT})
    entries += [TableEntry(Space.VARIABLE, n) for n in variables]
    entries += [TableEntry(Space.CONSTANT, n) for n in constants]
    entries.append(TableEntry(Space.ARENA, 0))
    return entries


@dataclass(frozen=True)
class ArenaLayout:
    """Where a module's table points and how its arena is cut: the planned region
    (`plan.arena_bytes`), the kernels' shared scratch at `scratch_offset`, and the status
    word of checking kernels at `status_offset` (64 bytes, only when a kernel checks)."""

    table: tuple[TableEntry, ...]
    scratch: tuple[int, ...]  # per kernel, in schedule order
    checks: tuple[bool, ...]  # per kernel: gets the status word
    scratch_offset: int
    status_offset: int
    arena_bytes: int


def arena_layout(plan: MemoryPlan, target: Target, threads: int = 1,
                 conv: str = "auto") -> ArenaLayout:
    """The layout `build_module` gives `plan` (the program cache checks entries against it)."""
    kernels = plan.program.kernels
    scratch = tuple(lowering.scratch_bytes(k, target, threads, conv) for k in kernels)
    checks = tuple(lowering.lowering_of(k).checks for k in kernels)
    scratch_offset = (plan.arena_bytes + ALIGN - 1) // ALIGN * ALIGN
    status_offset = (scratch_offset + max(scratch, default=0) + ALIGN - 1) // ALIGN * ALIGN
    arena_bytes = status_offset + (ALIGN if any(checks) else 0)
    return ArenaLayout(tuple(_table(plan)), scratch, checks, scratch_offset, status_offset,
                       arena_bytes)


def build_module(plan: MemoryPlan, target: Target, name: str = "graphc",
                 entry: str = ENTRY, threads: int = 1, profile: bool = False,
                 conv: str = "auto", embedded_pool: bool = True) -> GeneratedModule:
    """Generate the LLVM module for a planned program (verified by the caller via LLVM).

    `entry` names the entry-point symbol; exported libraries give each model its own so
    that two of them can be linked or loaded into one process. `conv` is
    `CompileOptions.conv_algorithm`. The bodies of loop kernels become functions of the
    same module, with the entry point's ABI (`emit_program`), one per region. Parallel
    kernels call a worker pool the module defines (`embedded_pool`, self-contained) or the
    process pool of `threads` threads (`threadpool.declare_process_pool`; the loader must
    provide it: `runtime.process_pool`).
    """
    module = ir.Module(name=name)
    module.triple = target.triple
    bf16.set_native(module, target.has("avx512bf16"))
    if not embedded_pool and threads > 1:
        declare_process_pool(module, threads)
    layout = arena_layout(plan, target, threads, conv)
    emitter = ProgramEmitter(module, target, threads, conv)
    emitter.emit_program(plan, layout, entry, prefix="", profile=profile)
    return GeneratedModule(module, list(layout.table), layout.arena_bytes,
                           layout.scratch_offset, entry)


@dataclass
class ProgramEmitter:
    """Emits programs into one module: the top-level one and, recursively, loop bodies.

    Structurally identical kernels (repeated layers, a loop body's kernel equal to one
    outside it) share one function across all of them: it is generated and optimized once
    and called with different buffers (`kernel_key`).
    """

    module: ir.Module
    target: Target
    threads: int
    conv: str
    shared: dict[tuple, ir.Function] = field(default_factory=dict)

    def emit_program(self, plan: MemoryPlan, layout: ArenaLayout, entry: str, prefix: str,
                     profile: bool = False) -> ir.Function:
        """``int32_t entry(void **table)`` running `plan` (see the module doc for the ABI);
        its kernels' function names start with `prefix`."""
        module, program = self.module, plan.program
        table = list(layout.table)
        scratch_of, checks = layout.scratch, layout.checks
        kernel_fns: list[ir.Function | None] = []
        bucketed = {m.kernel for bucket in plan.buckets for m in bucket.members}
        for k, k_scratch, k_checks in zip(program.kernels, scratch_of, checks):
            if k.index in bucketed:
                kernel_fns.append(None)  # its bucket does the work
                continue
            needs_scratch = k_scratch > 0
            key = (kernel_key(plan, k, needs_scratch), k_checks)
            if key not in self.shared:
                self.shared[key] = self._emit_kernel(plan, k, needs_scratch, k_checks, prefix)
            kernel_fns.append(self.shared[key])

        entry_fn = ir.Function(module, ir.FunctionType(I32, [PTR]), entry)
        if prefix:  # a loop body: called by its loop kernel only
            entry_fn.linkage = "internal"
            entry_fn.attributes.add("nounwind")
        b = ir.IRBuilder(entry_fn.append_basic_block("entry"))
        (table_ptr,) = entry_fn.args
        base_ptrs: dict[tuple[Space, int | str], ir.Value] = {}
        for i, e in enumerate(table):
            addr = b.gep(table_ptr, [ir.Constant(I64, i)], inbounds=True, source_etype=PTR)
            base_ptrs[(e.space, e.key)] = b.load(addr, typ=PTR,
                                                 name=f"{e.space.value}.{e.key}")
        arena = base_ptrs[(Space.ARENA, 0)]

        def pointer(loc: Location) -> ir.Value:
            if loc.space == Space.ARENA:
                assert isinstance(loc.key, int) and loc.key >= 0
                return b.gep(arena, [ir.Constant(I64, loc.key)], inbounds=True,
                             source_etype=I8)
            return base_ptrs[(loc.space, loc.key)]

        memcpy = intrinsic(module, "llvm.memcpy", VOID, [PTR, PTR, I64, I1], [PTR, PTR, I64])

        def copy(c: Copy) -> None:
            b.call(memcpy, [pointer(c.dst), pointer(c.src_loc), ir.Constant(I64, c.nbytes),
                            ir.Constant(I1, 0)])

        status = b.gep(arena, [ir.Constant(I64, layout.status_offset)], inbounds=True,
                       source_etype=I8)
        if any(checks):
            b.store(ir.Constant(I32, 0), status)
        for c in plan.copies_before:
            copy(c)
        counters = _profile_counters(module, len(program.kernels)) if profile else None
        clock = intrinsic(module, "llvm.readcyclecounter", I64, [], []) if profile else None

        def buckets_at(index: int, when: str) -> None:
            for bucket in plan.buckets:
                if (bucket.needed if when == "wait" else bucket.ready) != index:
                    continue
                emit = emit_bucket_wait if when == "wait" else emit_bucket_start
                with b.if_then(emit(b, module, bucket, arena), likely=False):
                    b.ret(ir.Constant(I32, bucket.first_kernel + 1))
            if when == "start":  # after a kernel: poke the oldest bucket in flight
                flying = [bk for bk in plan.buckets if bk.ready < index < bk.needed - 1]
                if flying:
                    bucket = flying[0]
                    with b.if_then(emit_bucket_poke(b, module, bucket, arena), likely=False):
                        b.ret(ir.Constant(I32, bucket.first_kernel + 1))

        for index, (k, fn) in enumerate(zip(program.kernels, kernel_fns)):
            buckets_at(index, "wait")
            if fn is None:
                continue
            args = [pointer(plan.location[o]) for o in k.outputs]
            args += [pointer(plan.buffer_of(n)) for n in k.inputs]
            if scratch_of[index] > 0:
                args.append(b.gep(arena, [ir.Constant(I64, layout.scratch_offset)],
                                  inbounds=True, source_etype=I8))
            if checks[index]:
                args.append(status)
            if counters is None:
                b.call(fn, args)
            else:
                start = b.call(clock, [])
                b.call(fn, args)
                elapsed = b.sub(b.call(clock, []), start)
                # Through an opaque pointer: llvmlite type-checks stores to typed global
                # pointers.
                base = b.inttoptr(b.ptrtoint(counters, I64), PTR)
                slot = b.gep(base, [ir.Constant(I64, index)], inbounds=True, source_etype=I64)
                b.store(b.add(b.load(slot, typ=I64), elapsed), slot)
            if checks[index]:
                failed = b.icmp_unsigned("!=", b.load(status, typ=I32), ir.Constant(I32, 0))
                with b.if_then(failed, likely=False):
                    b.ret(ir.Constant(I32, index + 1))
            buckets_at(index, "start")
        buckets_at(len(program.kernels), "wait")
        for c in plan.copies_after:
            copy(c)
        b.ret(ir.Constant(I32, 0))
        return entry_fn

    def _emit_kernel(self, plan: MemoryPlan, kernel: Kernel, needs_scratch: bool,
                     checks: bool, prefix: str) -> ir.Function:
        module = self.module
        n_out = len(kernel.outputs)
        n_args = n_out + len(kernel.inputs) + (1 if needs_scratch else 0) + (1 if checks else 0)
        name = module.get_unique_name(prefix + kernel.name)
        fn = ir.Function(module, ir.FunctionType(VOID, [PTR] * n_args), name)
        fn.linkage = "internal"
        fn.attributes.add("nounwind")
        fn.attributes.add("noinline")
        out_locs = [plan.location[o] for o in kernel.outputs]
        aliased = {i for i, n in enumerate(kernel.inputs) if plan.buffer_of(n) in out_locs}
        for j, loc in enumerate(out_locs):
            if not any(plan.buffer_of(n) == loc for n in kernel.inputs):
                fn.args[j].add_attribute("noalias")
        for i in range(len(kernel.inputs)):
            if i not in aliased:
                fn.args[n_out + i].add_attribute("noalias")
        bodies = []
        for i, body in enumerate(kernel.bodies):  # a loop: its bodies first, functions
            body_layout = arena_layout(body.plan, self.target, self.threads, self.conv)
            assert body_layout.arena_bytes == body.arena_bytes
            label = "body" if i == 0 else f"body{i}"
            prefix_i = f"{name}." if i == 0 else f"{name}.{label}."
            bodies.append(LoopCode(self.emit_program(body.plan, body_layout,
                                                     f"{name}.{label}", prefix=prefix_i),
                                   body_layout.table))
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        ptrs: dict[Node, ir.Value] = dict(zip(kernel.outputs, fn.args))
        for i, n in enumerate(kernel.inputs):
            ptrs[n] = fn.args[n_out + i]
        rest = iter(fn.args[n_out + len(kernel.inputs):])
        scratch = next(rest) if needs_scratch else None
        status = next(rest) if checks else None
        ctx = KernelContext(b, self.target, plan.program, kernel, ptrs, scratch, self.threads,
                            self.conv, status, bodies)
        lowering.lowering_of(kernel).emit(ctx)
        ctx.b.ret_void()
        return fn


PROFILE = "graphc_profile_cycles"


def _profile_counters(module: ir.Module, n: int) -> ir.GlobalVariable:
    """`uint64_t graphc_profile_cycles[n]`: cycles spent in each kernel, summed over calls."""
    counters = ir.GlobalVariable(module, ir.ArrayType(I64, max(n, 1)), PROFILE)
    counters.initializer = ir.Constant(ir.ArrayType(I64, max(n, 1)), None)
    return counters


def kernel_key(plan: MemoryPlan, kernel: Kernel, needs_scratch: bool) -> tuple:
    """Everything the code of `kernel` depends on, except which buffers it is given.

    Two kernels with equal keys compute the same function of their argument buffers: the
    same ops, attributes and types wired the same way, the same immediate values, the same
    input types and the same output/input aliasing (which decides `noalias`).
    """
    if kernel.bodies:  # a loop's code is its bodies': never shared
        return ("loop", id(kernel))
    program = plan.program
    position = {n: i for i, n in enumerate(kernel.nodes)}
    inputs = {n: i for i, n in enumerate(kernel.inputs)}
    consts = program.graph.constants

    def ref(n: Node) -> tuple:
        if n in position:
            return ("node", position[n])
        if n in program.immediates:
            value = consts[n.name]
            return ("imm", str(n.type), value.tobytes())
        return ("in", inputs[n])

    body = tuple((n.op, n.attrs, n.type, tuple(ref(i) for i in n.inputs))
                 for n in kernel.nodes)
    aliased = tuple(tuple(plan.buffer_of(n) == plan.location[o] for n in kernel.inputs)
                    for o in kernel.outputs)
    return (kernel.kind, body, tuple(position[o] for o in kernel.outputs),
            None if kernel.anchor is None else position[kernel.anchor],
            tuple(n.type for n in kernel.inputs), aliased, needs_scratch)
