"""Depthwise conv2d (each output channel reads only its own input channel) on wide rows.

The general direct kernel (`conv.direct`) treats a depthwise layer as groups of one channel:
per output vector it walks the kernel rows with a branch each, reloads every weight as a
scalar and broadcasts it, and keeps the accumulator in a stack slot. Here one (image,
channel) plane is a unit of work:

    w[0..kh*kw) broadcast into vectors once per plane
    for each output row y:
        the kh input rows it reads, a row of zeros for those in the padding (no branches)
        for each chunk of L outputs: acc = sum over taps of w[i, j] * x[row_i, q*s + j - pl]
        (masked loads at the row ends, stride 2 by a wide load and a shuffle: `window.Run`;
        the ends' masks are constants: `window.emit_chunks(..., ends_apart=True)`)
        (with 16 registers and stride 2, the plane's rows are first split by column phase
        into the task's scratch, `conv.phases`, and each tap loads one whole vector: on
        Zen 3, MobileNetV2's stride-2 layers 313 -> 260 us (96 channels, 112x112), 152 ->
        102 (144, 56x56), 87 -> 75 (192, 28x28), one thread, alternated in one process)
        epilogue, store

so each output vector costs its kh*kw loads and FMAs and nothing else. Units are (image,
channel) planes, split across threads; each output is computed the same way whatever the
split. Stride 1 or 2 (MobileNet's), no dilation, rows at least half a vector wide (on
narrower rows the direct kernel's blocking over rows wastes as few lanes).
"""

from __future__ import annotations

import llvmlite.ir as ir

from graphc.codegen.context import KernelContext
from graphc.codegen.conv import phases
from graphc.codegen.conv.epilogue import EpilogueStore
from graphc.codegen.index import splat
from graphc.codegen.llvm_types import I8, storage_type
from graphc.codegen.loops import for_range
from graphc.codegen.parallel import parallel_range, split_plan
from graphc.codegen.target import Target
from graphc.codegen.window import (
    Run,
    const_splat,
    element_ptr,
    emit_chunks,
    fma,
    i64,
    in_range,
    load_scalar,
    memset_zero,
    pick_lanes,
    plan_chunks,
    safe_outputs,
)
from graphc.ir import Node
from graphc.ops.geometry import Window
from graphc.passes.kernels import Kernel

MAX_TAPS = 49  # kernels up to 7x7: each tap's weight vector is held across the plane
_TASK_MACS = 1 << 15  # multiply-adds per task at least (a plane of 56x56x9 is 28k)


def applies(anchor: Node, target: Target) -> bool:
    """Whether conv2d `anchor` takes this path (see the module docstring)."""
    if anchor.op != "conv2d" or not anchor.dtype.is_float or anchor.size == 0:
        return False
    x, w = anchor.inputs
    _, kh, kw = w.shape[1:]
    win = Window.from_attrs(anchor.attrs, kernel=(kh, kw))
    lanes = target.lanes(anchor.dtype.itemsize)
    return (anchor.attrs["groups"] == x.shape[1] == anchor.shape[1] and w.shape[1] == 1
            and win.dilation == (1, 1) and win.strides in ((1, 1), (2, 2))
            and kh * kw <= MAX_TAPS and 2 * anchor.shape[3] >= lanes)


def _phase_rows(anchor: Node, target: Target) -> phases.PhaseRows | None:
    """The phase rows of one input plane where the kernel reads them (stride 2, 16
    registers), else None."""
    win = Window.from_attrs(anchor.attrs, kernel=anchor.inputs[1].shape[2:])
    if target.registers != 16 or win.strides[1] == 1:
        return None
    return phases.row_layout(anchor, target, anchor.inputs[0].shape[2])


def _layout(anchor: Node, target: Target, threads: int
            ) -> tuple[int, int, tuple[int, int] | None]:
    """(bytes of the row of zeros, bytes of one task's phase rows (0: none), the planes'
    split across threads: `split_plan`'s (chunk, tasks), None for one task)."""
    rows = _phase_rows(anchor, target)
    isz = anchor.dtype.itemsize
    zeros = max(anchor.inputs[0].shape[3], rows.stride * rows.width if rows else 0) * isz
    plane = 0 if rows is None else (rows.elements * isz + 63) // 64 * 64
    split = split_plan(anchor.shape[0] * anchor.shape[1], _grain(anchor), threads)
    return (zeros + 63) // 64 * 64, plane, split


def _grain(anchor: Node) -> int:
    """Planes per task at least."""
    _, _, ho, wo = anchor.shape
    kh, kw = anchor.inputs[1].shape[2:]
    return max(1, -(-_TASK_MACS // max(1, ho * wo * kh * kw)))


def scratch_bytes(kernel: Kernel, target: Target, threads: int) -> int:
    """One row of zeros, read in place of rows in the vertical padding; with a stride of 2
    on 16 registers, also each task's phase rows of its current plane."""
    anchor = kernel.anchor
    assert anchor is not None
    if not applies(anchor, target):
        return 0
    zeros, plane, split = _layout(anchor, target, threads)
    return zeros + plane * (1 if split is None else split[1])


def emit(ctx: KernelContext) -> None:
    """The CONV kernel of `ctx` (its anchor satisfies `applies`)."""
    kernel = ctx.kernel
    anchor = kernel.anchor
    assert anchor is not None and ctx.scratch is not None
    x, w = anchor.inputs
    dtype = anchor.dtype
    n_batch, chans, hi, wi = x.shape
    _, _, ho, wo = anchor.shape
    kh, kw = w.shape[2], w.shape[3]
    win = Window.from_attrs(anchor.attrs, kernel=(kh, kw))
    (sh, sw), ((pt, _), (pl, _)) = win.strides, win.pads
    epilogue = kernel.root is not anchor
    if epilogue:
        ctx.ptrs[anchor] = ctx.out  # the tail's in-place epilogue reads the raw sums here
    phase_rows = _phase_rows(anchor, ctx.target)
    zeros, plane_bytes, task_split = _layout(anchor, ctx.target, ctx.threads)
    memset_zero(ctx.b, ctx.scratch, zeros)
    lanes = pick_lanes(ctx.target.lanes(dtype.itemsize), wo)
    assert phase_rows is None or phase_rows.lanes == lanes
    # Phase rows are padded: every output's loads are inside them.
    plan = plan_chunks(wo, lanes, (0, wo - 1) if phase_rows is not None else
                       safe_outputs(sw, -pl, kw - 1 - pl, wi))
    grain = _grain(anchor)  # parallel_range splits as `task_split` says

    def planes(c: KernelContext, start: ir.Value, stop: ir.Value) -> None:
        b = c.b
        assert c.scratch is not None
        store = EpilogueStore(c, dtype, epilogue)
        task = b.sdiv(start, i64(task_split[0])) if task_split is not None else i64(0)
        vt = ir.VectorType(storage_type(dtype), lanes)
        with for_range(b, start, stop, 1, name="plane") as u:
            image, ch = b.udiv(u, i64(chans)), b.urem(u, i64(chans))
            taps = [splat(b, load_scalar(b, c.ptr(w), dtype,
                                         b.add(b.mul(ch, i64(kh * kw)), i64(t))), lanes)
                    for t in range(kh * kw)]
            src = element_ptr(b, c.ptr(x), dtype, b.mul(u, i64(hi * wi)))
            if phase_rows is not None:  # this plane's rows, each split by column phase once
                own = b.gep(c.scratch, [b.add(i64(zeros), b.mul(task, i64(plane_bytes)))],
                            inbounds=True, source_etype=I8)
                phases.copy_rows(b, src, own, phase_rows, dtype, i64(0), i64(hi))
                src = own
            line = wi if phase_rows is None else phase_rows.stride * phase_rows.width
            with for_range(b, 0, ho, 1, name="y") as y:
                rows = []
                for i in range(kh):
                    iy = b.add(b.mul(y, i64(sh)), i64(i - pt))
                    row = element_ptr(b, src, dtype, b.mul(iy, i64(line)), inbounds=False)
                    rows.append(b.select(in_range(b, iy, 0, hi), row, c.scratch))
                out_row = element_ptr(b, c.out, dtype, b.mul(b.add(b.mul(u, i64(ho)), y),
                                                             i64(wo)))

                def chunk(q0: ir.Value, checked: bool, limit: ir.Value | None) -> None:
                    # One chain of FMAs per kernel row, summed at the end: a single chain
                    # of kh*kw dependent FMAs bounds the loop by their latency.
                    partial = []
                    for i, row in enumerate(rows):
                        acc = const_splat(dtype, 0.0, lanes)
                        for j in range(kw):
                            if phase_rows is not None:  # a whole vector of a phase row
                                f, shift = phase_rows.tap(j)
                                at = b.add(q0, i64(f * phase_rows.width + shift))
                                xv = b.load(element_ptr(b, row, dtype, at), typ=vt,
                                            align=dtype.itemsize)
                            else:
                                col0 = b.add(b.mul(q0, i64(sw)), i64(j - pl))
                                xv = Run(b, lanes, col0, sw, wi, checked, limit).load(
                                    row, dtype, 0.0)
                            acc = fma(b, taps[i * kw + j], xv, acc)
                        partial.append(acc)
                    while len(partial) > 1:
                        pairs = [b.fadd(partial[k], partial[k + 1])
                                 for k in range(0, len(partial) - 1, 2)]
                        partial = pairs + partial[len(partial) - len(partial) % 2:]
                    store(out_row, (image, ch, y), q0, 1, partial[0], lanes, limit)

                emit_chunks(b, plan, chunk, ends_apart=True)

    parallel_range(ctx, n_batch * chans, grain, planes)

