"""Explicit FMA contraction of emitted fused-kernel code (elementwise, multi-output and
reduction kernels), so that a result does not depend on how LLVM happened to shape the loops
(and so on the thread count, or on which kernel computes an expression: a reduction storing
an elementwise kernel's outputs, `passes.column_sums`, gives them the same bits)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import llvmlite.ir as ir

from graphc.codegen.context import KernelContext
from graphc.codegen.llvm_types import intrinsic


def contracted(emit: Callable[[KernelContext], None]) -> Callable[[KernelContext], None]:
    """`emit`, followed by `contract_explicitly` on the kernel's function and the task
    functions it outlined."""

    @functools.wraps(emit)
    def emit_contracted(ctx: KernelContext) -> None:
        before = set(ctx.module.globals)
        emit(ctx)
        tasks = [g for name, g in ctx.module.globals.items()
                 if name not in before and isinstance(g, ir.Function)]
        contract_explicitly([ctx.b.function, *tasks])

    return emit_contracted


def contract_explicitly(functions: Sequence[ir.Function]) -> None:
    """Decide the kernel's contractions here, on the code as emitted, not in LLVM's backend.

    Whether LLVM fuses a multiply of the input expression into an add or subtract (`x - m·k`
    of var) depends on whether it hoisted the multiply out of a loop first, and that depends
    on the loop's shape and alias facts, which differ between the single-threaded kernel
    (constant bounds: the scalar tail columns unrolled and their products hoisted; noalias
    arguments) and a thread's task (bounds and pointers known at run time only): var over
    axis 0 of (3000, 1000) differed in a few columns between 1 and 2 threads. Likewise an
    elementwise kernel's loop-invariant product (`x + s·t` of scalars, `x - r·r2` of a
    (rows, 1) pair in a row's loop) was hoisted and not fused, while the same expression in
    a reduction storing it as a side output (`passes.column_sums`) was. So every
    `fadd`/`fsub` with `contract` whose operand is a `contract` `fmul` used only there (an
    operand 0 multiply first), as LLVM would fuse them in one block, becomes an explicit
    `llvm.fma`, and no other instruction keeps `contract`: the same code at any thread
    count, with the FMAs (removing them all cost ~10% on var over a leading axis). The
    reduction's own additions (`combine`) never had `contract`."""
    for fn in functions:
        uses: dict[int, int] = {}
        for block in fn.blocks:
            for instr in block.instructions:
                for op in _operands(instr):
                    uses[id(op)] = uses.get(id(op), 0) + 1
        contractible: set[int] = set()
        for block in fn.blocks:
            for instr in block.instructions:
                flags = getattr(instr, "flags", None)
                if flags and "contract" in flags:
                    contractible.add(id(instr))
                    instr.flags = [f for f in flags if f != "contract"]
        fused: dict[int, ir.Value] = {}
        for block in fn.blocks:
            for instr in list(block.instructions):
                if id(instr) not in contractible or instr.opname not in ("fadd", "fsub"):
                    continue
                for side, mul in enumerate(instr.operands):
                    if (isinstance(mul, ir.Instruction) and mul.opname == "fmul"
                            and id(mul) in contractible and uses.get(id(mul)) == 1
                            and mul.parent is block):
                        fused[id(instr)] = _fma(block, instr, side, mul)
                        break
        if not fused:
            continue
        for block in fn.blocks:
            for instr in block.instructions:
                if isinstance(instr, ir.PhiInstr):
                    instr.incomings = [(fused.get(id(v), v), b) for v, b in instr.incomings]
                elif any(id(op) in fused for op in instr.operands):
                    instr.operands = tuple(fused.get(id(op), op) for op in instr.operands)
                    instr._clear_string_cache()


def _operands(instr: ir.Instruction) -> list[ir.Value]:
    if isinstance(instr, ir.PhiInstr):
        return [v for v, _ in instr.incomings]
    return list(instr.operands)


def _fma(block: ir.Block, instr: ir.Instruction, side: int, mul: ir.Instruction
         ) -> ir.Value:
    """`instr` (fadd/fsub with the product `mul` as operand `side`) as one llvm.fma, in
    its place; `instr` and `mul` are removed."""
    b = ir.IRBuilder(block)
    b.position_before(instr)
    a, c = mul.operands
    other = instr.operands[1 - side]
    if instr.opname == "fsub":
        if side == 0:  # a·c - other
            other = b.fneg(other)
        else:  # other - a·c
            a = b.fneg(a)
    t = instr.type
    result = b.call(intrinsic(b.module, "llvm.fma", t, [t, t, t]), [a, c, other])
    block.instructions.remove(instr)
    block.instructions.remove(mul)
    return result
