"""Kernels of dynamic_slice and dynamic_update_slice: a block copied at a runtime start.

Both load their starts (one i64 per axis, from scalar operands or one 1-D operand; a
constant start is a private global, `KernelContext.ptr`) and check ``0 <= start <= dim -
size`` on every axis. A start out of range is reported (`KernelContext.report_error`) and
nothing is written: the entry point stops after the kernel and the caller raises a
`GraphcError` naming the op, as the reference does. Nothing is clamped, so a KV cache
written past its end keeps its last slot.

dynamic_update_slice copies x into its output unless both are one buffer -- the memory
planner gives the result x's buffer when x dies at this kernel or is the variable the
result updates (`OpDef.overwrites`) -- then writes the update's elements. An in-place
cache update therefore costs the update's size, not the cache's.

A block is visited over its own shape, innermost dim vectorized (contiguous in both
buffers: only the start moves it), rows of the outermost dim split across threads when
the block is large.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import llvmlite.ir as ir

from graphc.codegen.context import KernelContext, Lowering
from graphc.codegen.fused.expr import strides
from graphc.codegen.fused.loop_nests import PARALLEL_GRAIN, loop_nest
from graphc.codegen.index import Idx, IndexBuilder
from graphc.codegen.llvm_types import I1, I64, PTR, VOID, i64, intrinsic
from graphc.codegen.loops import for_range
from graphc.codegen.parallel import parallel_range
from graphc.codegen.window import load_scalar
from graphc.ir import DType, Node


def _load_starts(ctx: KernelContext, operands: Sequence[Node], rank: int) -> list[ir.Value]:
    """The start of each axis as an i64 (see `graphc.ops.sequence` for the operand forms)."""
    b = ctx.b

    def load(src: Node, at: int) -> ir.Value:
        v = load_scalar(b, ctx.ptr(src), src.dtype, i64(at))
        return v if src.dtype == DType.int64 else b.sext(v, I64)

    if len(operands) == 1 and operands[0].ndim == 1:
        return [load(operands[0], d) for d in range(rank)]
    return [load(s, 0) for s in operands]


def _starts_ok(ctx: KernelContext, starts: Sequence[ir.Value], dims: Sequence[int],
               sizes: Sequence[int]) -> ir.Value:
    """i1: every start in [0, dim - size] (an unsigned compare also rejects negatives)."""
    b = ctx.b
    ok: ir.Value = ir.Constant(I1, 1)
    for s, d, n in zip(starts, dims, sizes):
        ok = b.and_(ok, b.icmp_unsigned("<=", s, i64(d - n)))
    return ok


def _shifted(b: ir.IRBuilder, idx: Sequence[Idx], starts: Sequence[ir.Value]) -> list[Idx]:
    """idx + start per axis (lane strides unchanged, so contiguous runs stay contiguous)."""
    return [Idx(b.add(i.base, s), i.coef) for i, s in zip(idx, starts)]


def _copy_block(ctx: KernelContext, block: tuple[int, ...], dtype: DType,
                src: Node, src_shape: tuple[int, ...], src_shifted: bool,
                dst: Node, dst_shape: tuple[int, ...], starts_of: Sequence[Node]) -> None:
    """dst[at] = src[at'] over `block`: the start shifts the source index when
    `src_shifted` (a dynamic slice), else the destination index (an update)."""
    if 0 in block:
        return
    rank = len(block)
    lanes = ctx.lanes_for([src])

    def rows(c: KernelContext, lo: ir.Value, hi: ir.Value) -> None:
        b = c.b
        starts = _load_starts(c, starts_of, rank)
        src_ptr, dst_ptr = c.ptr(src), c.ptr(dst)

        def body(n_lanes: int, idx: list[Idx]) -> None:
            ix = IndexBuilder(b, n_lanes)
            moved = _shifted(b, idx, starts)
            read = ix.linear(moved if src_shifted else idx, strides(src_shape))
            write = ix.linear(idx if src_shifted else moved, strides(dst_shape))
            ix.store(dst_ptr, dtype, write, ix.load(src_ptr, dtype, read))

        if rank == 1:
            loop_nest(c, block, lanes, body)
            return
        with for_range(b, lo, hi, 1, name="d0") as i:
            loop_nest(c, block[1:], lanes, lambda n, idx: body(n, [Idx(i), *idx]))

    if rank == 1:
        rows(ctx, i64(0), i64(block[0]))
    else:
        parallel_range(ctx, block[0], max(1, PARALLEL_GRAIN // math.prod(block[1:])), rows)


def _dynamic_slice(ctx: KernelContext) -> None:
    node = ctx.kernel.anchor
    assert node is not None
    x, *starts_of = node.inputs
    ok = _starts_ok(ctx, _load_starts(ctx, starts_of, x.ndim), x.shape, node.shape)
    ctx.report_error(ctx.b.not_(ok))
    with ctx.b.if_then(ok):
        _copy_block(ctx, node.shape, node.dtype, x, x.shape, True, node, node.shape,
                    starts_of)


def _dynamic_update_slice(ctx: KernelContext) -> None:
    node = ctx.kernel.anchor
    assert node is not None
    b = ctx.b
    x, update, *starts_of = node.inputs
    ok = _starts_ok(ctx, _load_starts(ctx, starts_of, x.ndim), x.shape, update.shape)
    ctx.report_error(b.not_(ok))
    with b.if_then(ok):
        out, xp = ctx.out, ctx.ptr(x)
        # The planner may give the result x's own buffer (in place): then x is already there.
        apart = b.icmp_unsigned("!=", b.ptrtoint(out, I64), b.ptrtoint(xp, I64))
        with b.if_then(apart):
            memcpy = intrinsic(b.module, "llvm.memcpy", VOID, [PTR, PTR, I64, I1],
                               [PTR, PTR, I64])
            b.call(memcpy, [out, xp, i64(x.type.nbytes), ir.Constant(I1, 0)])
        _copy_block(ctx, update.shape, node.dtype, update, update.shape, False, node,
                    node.shape, starts_of)


def _out_of_range(node: Node) -> str:
    """What a reported error of `node`'s kernel means (the reference says the same)."""
    x = node.inputs[0]
    first = 1 if node.op == "dynamic_slice" else 2
    sizes = node.shape if node.op == "dynamic_slice" else node.inputs[1].shape
    names = ", ".join("%" + s.name for s in node.inputs[first:])
    highest = [d - n for d, n in zip(x.shape, sizes)]
    return (f"a start in ({names}) is out of range: a block of {list(sizes)} in x "
            f"{x.type} needs 0 <= start <= {highest} per axis (starts are not clamped)")


LOWERINGS = (
    Lowering("dynamic_slice", _dynamic_slice, failure=_out_of_range),
    Lowering("dynamic_update_slice", _dynamic_update_slice, failure=_out_of_range),
)
