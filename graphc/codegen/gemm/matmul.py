"""Matmul kernels: batch loops around the GEMM emitter, with the fused epilogue.

A MATMUL kernel computes its anchor `matmul(a, b)` (numpy semantics: batch dimensions
broadcast, `transpose_a`/`transpose_b` read an operand transposed without copying it) and
applies the kernel's elementwise epilogue (bias, activation, ...) as the GEMM stores each
finished block, so the matmul result never makes a round trip through memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import llvmlite.ir as ir

from graphc.codegen.context import KernelContext, Lowering
from graphc.codegen.fused.expr import strides
from graphc.codegen.gemm import lowp_gemv, lowp_panel_gemv
from graphc.codegen.gemm.emit import Epilogue, GemmSpec, emit_gemm, plan_gemm
from graphc.codegen.gemm.lowp import LowpSpec, b_groups, emit_lowp_gemm, plan_lowp, spec_kind
from graphc.codegen.gemm.lowp_kernels import byte_pairs_fit
from graphc.codegen.gemm.spec import kernel_shape
from graphc.codegen.index import Idx
from graphc.codegen.llvm_types import I64, storage_type
from graphc.codegen.loops import for_range
from graphc.codegen.parallel import parallel_range, split_plan
from graphc.codegen.target import Target
from graphc.errors import CompileError
from graphc.ir import DType, Node
from graphc.passes.kernels import Kernel, KernelKind


def merged_batch(anchor: Node) -> bool:
    """Whether a batched matmul is one GEMM: a 2-D b shared by every batch of a row-major,
    unbroadcast a, whose rows then follow one another in memory, as do the output's (a
    transformer's (T, B, d) @ (d, 3d) projection is one (T*B, d) GEMM, not T GEMVs)."""
    a, b = anchor.inputs[:2]
    return (anchor.ndim > 2 and b.ndim == 2 and not anchor.attrs["transpose_a"]
            and a.shape[:-2] == anchor.shape[:-2])


def gemm_spec(kernel: Kernel) -> GemmSpec | LowpSpec:
    """The GEMM of the kernel: a `LowpSpec` for bf16 or uint8 x int8 operands (their
    kernels store the epilogue's dtype, the root's), else a `GemmSpec`."""
    assert kernel.anchor is not None
    return anchor_spec(kernel.anchor, kernel.root.dtype)


def anchor_spec(anchor: Node, out: DType) -> GemmSpec | LowpSpec:
    """The GEMM of a matmul node whose kernel stores `out` (`gemm_spec`)."""
    a, b = anchor.inputs[:2]
    ta, tb = bool(anchor.attrs["transpose_a"]), bool(anchor.attrs["transpose_b"])
    ra, ca = a.shape[-2:]
    rb, cb = b.shape[-2:]
    m, k = (ca, ra) if ta else (ra, ca)
    n = rb if tb else cb
    if merged_batch(anchor):
        m *= math.prod(anchor.shape[:-2])
    kind = spec_kind(a.dtype)
    if kind is not None:
        groups = anchor.attrs.get("b_groups", ())
        return LowpSpec(m=m, n=n, k=k, kind=kind, trans_a=ta, trans_b=tb, lda=ca, ldb=cb,
                        ldc=n, out=out, zero_point=len(anchor.inputs) > 2,
                        b_panels=groups[0] if groups else 0,
                        b_group=groups[1] if len(groups) > 1 else 0)
    return GemmSpec(m=m, n=n, k=k, dtype=anchor.dtype, trans_a=ta, trans_b=tb,
                    lda=ca, ldb=cb, ldc=n, b_panels=int(anchor.attrs.get("b_panels", 0)))


def _out_index(b: ir.IRBuilder, anchor: Node, row: ir.Value, col: ir.Value,
               lanes: int) -> list[Idx]:
    """The output index of GEMM element (row, col): with a merged batch the row runs over
    (batch..., m) and is split back into one index per dimension."""
    idx = []
    if merged_batch(anchor):
        rest = row
        for size in strides(anchor.shape[:-1])[:-1]:
            idx.append(Idx(b.sdiv(rest, ir.Constant(I64, size))))
            rest = b.srem(rest, ir.Constant(I64, size))
        row = rest
    return [*idx, Idx(row), Idx(col, 1 if lanes > 1 else 0)]


# Below this many multiply-adds a GEMM is not split across threads.
PARALLEL_MACS = 1 << 18
# A GEMM of at most FEW_ROWS rows (batch-1 inference, a decode step) reads B once: it is
# split from PARALLEL_B_BYTES of B (about 5 us of streaming from L3 on one core; a region
# costs about 1 us while the workers spin; a smaller B read from L2 by a small network at
# batch 1 lost more to the region than it gained) or FEW_ROWS_MACS multiply-adds (an int8
# GEMV without VNNI runs at about 13 per cycle).
FEW_ROWS = 4
PARALLEL_B_BYTES = 1 << 18
FEW_ROWS_MACS = 1 << 17


@dataclass(frozen=True)
class Split:
    """A 2-D GEMM cut into `tasks` equal column ("n") or row ("m") blocks of `size`."""

    dim: str
    tasks: int
    size: int
    spec: GemmSpec  # the GEMM of one block


def split(kernel: Kernel, threads: int) -> Split | None:
    """How to run the kernel's GEMM on `threads` threads, or None to run it whole.

    Blocks are equal, so one GEMM body serves every task. Every task packs its own panels:
    splitting columns makes each pack all of A (m x k), splitting rows all of B (k x n),
    so the split duplicates the smaller of the two (columns on a tie). A B stored in panels
    (`b_panels`) is never packed: rows first, and columns only in whole panels.
    """
    anchor = kernel.anchor
    assert anchor is not None
    spec = gemm_spec(kernel)
    if threads <= 1 or (anchor.ndim != 2 and not merged_batch(anchor)):
        return None
    return split_spec(spec, threads)


def split_spec(spec: GemmSpec | LowpSpec, threads: int) -> Split | None:
    """`split` of a 2-D GEMM (or one of merged batches)."""
    if threads <= 1 or not _worth_split(spec):
        return None
    t = threads
    panels = spec.b_panels
    by_n = spec.n % t == 0 and spec.n // t >= 32 and (not panels or spec.n // t % panels == 0)
    by_m = spec.m % t == 0 and spec.m // t >= 16
    if by_n and by_m:
        by_n = spec.m <= spec.n and not panels
    if by_n:
        return Split("n", t, spec.n // t, replace(spec, n=spec.n // t))
    if by_m:
        return Split("m", t, spec.m // t, replace(spec, m=spec.m // t))
    return None


def _worth_split(spec: GemmSpec | LowpSpec) -> bool:
    """Whether the GEMM is big enough to split: by its bytes of B with few rows (a read of B
    is its cost), else by its multiply-adds."""
    macs = spec.m * spec.n * spec.k
    if spec.m <= FEW_ROWS:
        if isinstance(spec, LowpSpec):
            b_bytes = spec.kind.src_esize or spec.kind.esize
        else:
            b_bytes = spec.dtype.itemsize
        return spec.k * spec.n * b_bytes >= PARALLEL_B_BYTES or macs >= FEW_ROWS_MACS
    return macs >= PARALLEL_MACS


def batch_split(kernel: Kernel, threads: int) -> tuple[int, int] | None:
    """(chunk, tasks) when a batched matmul runs its batch of GEMMs in parallel (each task
    whole GEMMs, so results do not depend on the thread count), else None."""
    anchor = kernel.anchor
    assert anchor is not None
    batch = math.prod(anchor.shape[:-2])
    spec = gemm_spec(kernel)
    macs = spec.m * spec.n * spec.k
    if threads <= 1 or anchor.ndim <= 2 or merged_batch(anchor) or batch * macs < PARALLEL_MACS:
        return None
    # A task of at least a quarter of the threshold: enough to amortize its wake-up.
    return split_plan(batch, max(1, -(-(PARALLEL_MACS // 4) // max(macs, 1))), threads)


def check_panels(kernel: Kernel, target: Target) -> None:
    """CompileError unless a B stored in panels (`b_panels`, set by `gemm.prepack` for the
    target it compiled for) has this target's panel width (a graph compiled on one machine
    and compiled again on another), and unless an int8 B stored as quads for `pmaddubsw`
    (no VNNI) is a constant whose k-pairs fit its 16-bit sums (`byte_pairs_fit`), the
    condition of that kernel's exactness, whoever wrote the layout."""
    spec = gemm_spec(kernel)
    anchor = kernel.anchor
    assert anchor is not None
    if isinstance(spec, LowpSpec) and spec.b_panels:
        have = tuple(anchor.attrs["b_groups"])
        want = b_groups(spec, target)
        if have != want:
            raise CompileError(f"matmul_integer %{anchor.name} reads b in panels of {have[0]} "
                               f"columns and groups of {have[1]} rows (b_groups), but this "
                               f"target's integer GEMM packs {want}: compile the graph as "
                               "built, not one compiled for another machine",
                               op="matmul_integer", loc=anchor.loc)
        b = anchor.inputs[1]
        if (not plan_lowp(spec, target).native and spec.b_group == 4
                and not (b.op == "constant"
                         and byte_pairs_fit(b.graph.constants[b.name].reshape(-1, 1)))):
            # Quads on pmaddubsw are exact only for such a B (`gemm.prepack` checks it).
            raise CompileError(f"matmul_integer %{anchor.name} reads b as k-quads (b_groups="
                               f"{have}), which this target multiplies with pmaddubsw, but "
                               "b is not a constant whose k-pairs fit its 16-bit sums "
                               "(b in [-64, 64] does): compile the graph as built",
                               op="matmul_integer", loc=anchor.loc)
    if isinstance(spec, GemmSpec) and spec.b_panels:
        nr = kernel_shape(spec.dtype, target, spec.n)[1]
        if spec.b_panels != nr:
            raise CompileError(f"matmul %{anchor.name} reads b in panels of {spec.b_panels} "
                               f"columns (b_panels), but this target's GEMM reads panels of "
                               f"{nr}: compile the graph as built, not one compiled for "
                               "another machine", op="matmul", loc=anchor.loc)


def scratch_bytes(kernel: Kernel, target: Target, threads: int = 1, conv: str = "auto") -> int:
    check_panels(kernel, target)
    s = split(kernel, threads)
    if s is not None:
        return _aligned(s.spec.scratch_bytes(target)) * s.tasks
    per_gemm = gemm_spec(kernel).scratch_bytes(target)
    bs = batch_split(kernel, threads)
    return per_gemm if bs is None or per_gemm == 0 else _aligned(per_gemm) * bs[1]


def epilogue_writes_once(kernel: Kernel, target: Target) -> bool:
    """Whether the kernel's GEMM stores each output element once, applying the epilogue to
    the complete sum (no partial sums of earlier k blocks stored in the output first)."""
    if kernel.kind != KernelKind.MATMUL:
        return False
    spec = gemm_spec(kernel)
    if isinstance(spec, LowpSpec):
        return True  # the whole K in registers (gemm/lowp.py)
    plan = plan_gemm(spec, target)
    return plan.path != "packed" or plan.kc >= spec.k


def _aligned(n: int) -> int:
    return (n + 63) // 64 * 64


def _batch_strides(shape: tuple[int, ...], out_batch: tuple[int, ...]) -> list[int]:
    """Element strides of each output batch dim in an operand (0 where it broadcasts)."""
    batch = shape[:-2]
    mat = shape[-2] * shape[-1]
    full = [s * mat for s in strides(batch)] if batch else []
    offset = len(out_batch) - len(batch)
    result = []
    for d in range(len(out_batch)):
        j = d - offset
        result.append(0 if j < 0 or batch[j] == 1 else full[j])
    return result


def emit_matmul(ctx: KernelContext) -> None:
    kernel = ctx.kernel
    check_panels(kernel, ctx.target)
    anchor = kernel.anchor
    assert anchor is not None
    a, bnode = anchor.inputs[:2]
    spec = gemm_spec(kernel)
    out_batch = () if merged_batch(anchor) else anchor.shape[:-2]
    a_strides = _batch_strides(a.shape, out_batch)
    b_strides = _batch_strides(bnode.shape, out_batch)
    c_strides = [s * spec.m * spec.n for s in strides(out_batch)] if out_batch else []
    root = kernel.root

    def one(c: KernelContext, batch_idx: list[ir.Value], scratch: ir.Value | None) -> None:
        builder = c.b

        def offset(ptr: ir.Value, per_dim: list[int], node: Node) -> ir.Value:
            total: ir.Value = ir.Constant(I64, 0)
            for i, s in zip(batch_idx, per_dim):
                if s:
                    total = builder.add(total, builder.mul(i, ir.Constant(I64, s)))
            return builder.gep(ptr, [total], inbounds=True,
                               source_etype=storage_type(node.dtype))

        pa = offset(c.ptr(a), a_strides, a)
        pb = offset(c.ptr(bnode), b_strides, bnode)
        pc = offset(c.out, c_strides, root)
        epilogue = None
        if root is not anchor:
            def epilogue(b: ir.IRBuilder, row: ir.Value, col: ir.Value, acc: ir.Value,
                         lanes: int) -> ir.Value:
                ev = c.evaluator(lanes, overrides={anchor: acc})
                ev.b = b
                ev.ix.b = b
                idx = [Idx(i) for i in batch_idx] + _out_index(b, anchor, row, col, lanes)
                return ev.at(root, idx)

        streams = [offset(c.ptr(i), c_strides, i) for i in _streams(kernel)]
        _emit(c, builder, spec, pa, pb, pc, scratch, epilogue, streams)

    def level(d: int, prefix: list[ir.Value]) -> None:
        if d == len(out_batch):
            one(ctx, prefix, ctx.scratch)
            return
        with for_range(ctx.b, 0, out_batch[d], 1, name=f"batch{d}") as i:
            level(d + 1, [*prefix, i])

    if math.prod(anchor.shape) == 0:
        return
    s = split(kernel, ctx.threads)
    if s is not None:
        _emit_split(ctx, s)
        return
    bs = batch_split(kernel, ctx.threads)
    if bs is None:
        level(0, [])
        return
    chunk, _ = bs
    per_task = _aligned(spec.scratch_bytes(ctx.target))

    def tasks(c: KernelContext, start: ir.Value, stop: ir.Value) -> None:
        b = c.b
        scratch = None
        if per_task:
            assert c.scratch is not None
            task = b.sdiv(start, ir.Constant(I64, chunk))
            scratch = b.gep(c.scratch, [b.mul(task, ir.Constant(I64, per_task))],
                            inbounds=True, source_etype=ir.IntType(8))
        with for_range(b, start, stop, 1, name="batch") as flat:
            # The flat batch index back to one index per batch dimension (row-major).
            idx, rest = [], flat
            for d, size in enumerate(strides(out_batch)):
                idx.append(b.sdiv(rest, ir.Constant(I64, size)) if d < len(out_batch) - 1
                           else rest)
                if d < len(out_batch) - 1:
                    rest = b.srem(rest, ir.Constant(I64, size))
            one(c, idx, scratch)

    parallel_range(ctx, math.prod(out_batch), chunk, tasks)


def _emit_split(ctx: KernelContext, s: Split) -> None:
    """One task per block: offset the operands, give each task its own scratch."""
    kernel = ctx.kernel
    anchor = kernel.anchor
    assert anchor is not None
    a, bnode = anchor.inputs[:2]
    full = gemm_spec(kernel)
    per_task = _aligned(s.spec.scratch_bytes(ctx.target))

    def task(c: KernelContext, start: ir.Value, stop: ir.Value) -> None:
        b = c.b
        first = b.mul(start, ir.Constant(I64, s.size))  # first row or column of the block

        def at(ptr: ir.Value, stride: int, node: Node) -> ir.Value:
            return b.gep(ptr, [b.mul(first, ir.Constant(I64, stride))], inbounds=True,
                         source_etype=storage_type(node.dtype))

        if s.dim == "n":
            pa = c.ptr(a)
            # (Panels: a block of whole panels starts at its first column times K.)
            column_stride = (full.k if full.b_panels else full.ldb if full.trans_b else 1)
            pb = at(c.ptr(bnode), column_stride, bnode)
            pc = at(c.out, 1, kernel.root)
        else:
            pa = at(c.ptr(a), 1 if full.trans_a else full.lda, a)
            pb = c.ptr(bnode)
            pc = at(c.out, full.ldc, kernel.root)
        scratch = None
        if per_task:
            assert c.scratch is not None
            scratch = b.gep(c.scratch, [b.mul(start, ir.Constant(I64, per_task))],
                            inbounds=True, source_etype=ir.IntType(8))
        epilogue = None
        if kernel.root is not anchor:
            def epilogue(eb: ir.IRBuilder, row: ir.Value, col: ir.Value, acc: ir.Value,
                         lanes: int) -> ir.Value:
                if s.dim == "n":
                    col = eb.add(col, first)
                else:
                    row = eb.add(row, first)
                ev = c.evaluator(lanes, overrides={anchor: acc})
                ev.b = eb
                ev.ix.b = eb
                return ev.at(kernel.root, _out_index(eb, anchor, row, col, lanes))

        streams = [at(c.ptr(i), 1 if s.dim == "n" else full.ldc, i) for i in _streams(kernel)]
        _emit(c, b, s.spec, pa, pb, pc, scratch, epilogue, streams)

    # One task per block (grain 1): parallel_range gives task t the range [t, t + 1).
    parallel_range(ctx, s.tasks, 1, task)


def _streams(kernel: Kernel) -> list[Node]:
    """The epilogue's inputs laid out like its output (same shape and element size: every
    buffer is contiguous), read at the element being stored (`emit_gemm`'s streams)."""
    anchor, root = kernel.anchor, kernel.root
    if anchor is None or root is anchor:
        return []
    return [i for i in kernel.inputs if i.shape == root.shape
            and i.dtype.itemsize == root.dtype.itemsize
            and all(i is not x for x in anchor.inputs)]


def _emit(c: KernelContext, b: ir.IRBuilder, spec: GemmSpec | LowpSpec, pa: ir.Value,
          pb: ir.Value, pc: ir.Value, scratch: ir.Value | None,
          epilogue: Epilogue | None, streams: list[ir.Value]) -> None:
    """The GEMM of `spec`: the packed/direct float GEMM or a low-precision one (whose A
    zero point, the anchor's third operand when present, is read at run time)."""
    if isinstance(spec, LowpSpec):
        assert c.kernel.anchor is not None
        if scratch is None:  # nothing to pack (K == 0): never dereferenced
            scratch = ir.Constant(ir.PointerType(), None)
        inputs = c.kernel.anchor.inputs
        zero = c.ptr(inputs[2]) if len(inputs) > 2 else None
        if lowp_gemv.applies(spec):  # batch 1: B read in place (its scratch fits the GEMM's)
            lowp_gemv.emit_lowp_gemv(b, spec, pa, pb, pc, scratch, c.target, epilogue)
            return
        if lowp_panel_gemv.applies(spec):  # batch 1, B stored in panels: read in place
            lowp_panel_gemv.emit_panel_gemv(b, spec, pa, pb, pc, scratch, c.target, epilogue)
            return
        emit_lowp_gemm(b, spec, pa, pb, pc, scratch, c.target, epilogue, zero)
    else:
        emit_gemm(b, spec, pa, pb, pc, scratch, c.target, epilogue, streams=streams)


LOWERINGS = (Lowering(KernelKind.MATMUL, emit_matmul, scratch_bytes, epilogue_writes_once),)
