"""Structured loops for the IR builder.

`for_range` emits a guarded counted loop and yields its induction variable:

    with for_range(b, 0, n, step=16) as i:
        ...body at index i...

The body may create blocks of its own; the latch is attached to wherever the body ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import llvmlite.ir as ir

from graphc.codegen.llvm_types import I1, I64


def _i64(v: ir.Value | int) -> ir.Value:
    return ir.Constant(I64, v) if isinstance(v, int) else v


@contextmanager
def for_range(
    b: ir.IRBuilder, start: ir.Value | int, stop: ir.Value | int, step: int = 1,
    name: str = "i", rolled: bool = False,
) -> Iterator[ir.Value]:
    """Loop i = start, start+step, ... while i < stop (nothing when start >= stop).

    rolled forbids LLVM to unroll or vectorize the loop (`keep_rolled`): for loops the
    generator has vectorized already, where LLVM's unroller only adds compile time.
    """
    start_v, stop_v = _i64(start), _i64(stop)
    if isinstance(start, int) and isinstance(stop, int) and start >= stop:
        # Statically empty: emit the body into an unreachable block so callers need no
        # special case, and let LLVM delete it.
        func = b.block.function
        dead = func.append_basic_block(f"{name}.dead")
        after = func.append_basic_block(f"{name}.end")
        b.branch(after)
        b.position_at_end(dead)
        yield ir.Constant(I64, start)
        b.branch(after)
        b.position_at_end(after)
        return
    pre = b.block
    func = pre.function
    loop = func.append_basic_block(f"{name}.loop")
    after = func.append_basic_block(f"{name}.end")
    if isinstance(start, int) and isinstance(stop, int):
        b.branch(loop)
    else:
        b.cbranch(b.icmp_signed("<", start_v, stop_v), loop, after)
    b.position_at_end(loop)
    i = b.phi(I64, name=name)
    i.add_incoming(start_v, pre)
    yield i
    nxt = b.add(i, ir.Constant(I64, step), name=f"{name}.next")
    i.add_incoming(nxt, b.block)
    back = b.cbranch(b.icmp_signed("<", nxt, stop_v), loop, after)
    if rolled:
        keep_rolled(back)
    b.position_at_end(after)


def keep_rolled(br: ir.Instruction) -> None:
    """Attach loop metadata to a loop's back-edge branch: LLVM must neither unroll nor
    vectorize it. Used on loops whose static trip counts would otherwise invite full
    unrolling of big bodies (compile time grows with every GEMM for no speed)."""
    module = br.parent.parent.module
    opts = [module.add_metadata([ir.MetaDataString(module, "llvm.loop.unroll.disable")]),
            module.add_metadata([ir.MetaDataString(module, "llvm.loop.vectorize.enable"),
                                 ir.Constant(I1, 0)])]
    # A loop ID is a self-referential node; llvmlite's add_metadata cannot build cycles.
    loop_id = ir.values.MDValue(module, [], name=str(len(module.metadata)))
    loop_id.operands = (loop_id, *opts)
    br.set_metadata("llvm.loop", loop_id)


def entry_alloca(b: ir.IRBuilder, typ: ir.Type, name: str = "", count: int = 1) -> ir.Value:
    """A stack slot (of `count` elements) in the function's entry block, never in a loop."""
    entry = b.block.function.entry_basic_block
    saved = b.block
    if entry.instructions:
        b.position_before(entry.instructions[0])
    else:
        b.position_at_end(entry)
    slot = b.alloca(typ, size=ir.Constant(I64, count) if count != 1 else None, name=name)
    b.position_at_end(saved)
    return slot
