"""Direct convolution kernels: conv2d (with its fused epilogue), conv2d_grad_input and
conv2d_grad_weight (NCHW activations, OIHW weights, strides/pads/dilation/groups).

conv2d and conv2d_grad_input are one loop nest (`DirectConv`): an output element is a sum
over the input channels of its group and the kernel taps (i, j) of ``w * input``.
- Rows: the input row of output row y under kernel row i is ``(y*a + i*b + c) / d``; a tap
  contributes only where that is exact and inside the input (a branch per kernel row).
  conv2d: a = stride, b = dilation, c = -pad, d = 1; grad_input (a transposed conv):
  a = 1, b = -dilation, c = pad, d = stride.
- Columns are vectorized (`<L x T>`, L from the target) through `ColPhase`s. conv2d has one
  phase: output q reads input column ``q*stride + j*dilation - pad``. grad_input splits its
  output columns by ``x mod stride``: within a phase each tap either always or never
  contributes, and reads *contiguous* g columns, so no lane needs a gather; the results
  are stored with a stride (a scatter) once per chunk.
Each input vector loaded feeds OB (`OUT_BLOCK`) `llvm.fma`s with broadcast weights, one per
output channel of the register block. With 16 registers a conv2d with a column stride > 1
first copies its input into phase rows (`phases`) and loads whole vectors from them.
Borders and the partial last chunk of a row use masked loads (see `window`), so nothing
outside a row is read. grad_input first copies the weights, transposed per group, into its
scratch so that it walks them contiguously.

conv2d_grad_weight, a reduction over batch and positions, is in `weight_grad`; conv2d on
rows narrower than a vector is vectorized over output channels instead, in
`channels`, and a depthwise conv2d on wider rows has its own kernel, `depthwise`.

Threads split (image, band of output rows) units; an image is cut into row bands only when
there are fewer images than threads (batch-1 inference). Rows are independent, so the
results do not depend on the split.

The epilogue of a CONV kernel (bias, activation, ...) is evaluated on each finished vector
of accumulators before it is stored. The last, partial chunk of a row stores the raw sums
with a masked store and applies the epilogue in place with a scalar loop, because the
epilogue's own loads are full vectors that must not run past the row.

Summation order differs from the numpy reference (fma, a different association); results
agree to rounding. The same three ops can also run through the packed GEMM (im2col, in
`im2col`); `LOWERINGS` dispatches each node with `im2col.choose`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import llvmlite.ir as ir

from graphc.codegen.context import Emitter, KernelContext, Lowering, ScratchRule
from graphc.codegen.conv import channels, depthwise, im2col, phases, weight_grad
from graphc.codegen.conv.epilogue import EpilogueStore
from graphc.codegen.gemm.helpers import prefetch
from graphc.codegen.index import splat
from graphc.codegen.llvm_types import I1, I64, PTR, VOID, intrinsic, storage_type
from graphc.codegen.loops import entry_alloca, for_range
from graphc.codegen.parallel import CHUNKS_PER_THREAD, parallel_range
from graphc.codegen.target import Target
from graphc.codegen.window import (
    ChunkPlan,
    ColPhase,
    Run,
    blocks,
    const_splat,
    element_ptr,
    emit_chunks,
    fma,
    i64,
    in_range,
    lin,
    load_scalar,
    loop,
    pick_lanes,
    plan_chunks,
    safe_outputs,
    transposed_phases,
)
from graphc.ir import DType, Node
from graphc.ops.geometry import Window
from graphc.passes.kernels import Kernel, KernelKind

OUT_BLOCK = 8  # output channels per register block (conv2d, grad_input)
# Each input vector's line this many output rows ahead is prefetched into L1 as it is
# loaded: a row of a 1x1 layer reads one line of each of its C input rows, C streams that
# the hardware prefetchers do not all follow (0 turns it off). MobileNetV2 at one thread
# (Zen 4, A/B in one process): 1 and 2 rows ahead 2-3% faster, 4 rows 1%; ResNet-18
# unchanged.
PREFETCH_ROWS = 1


@dataclass(frozen=True)
class Rows:
    """Input row (y*a + i*b + c) / d of output row y under kernel row i < taps; the tap
    contributes only where the division is exact and the row lies in [0, size)."""

    a: int
    b: int
    c: int
    d: int
    size: int
    taps: int


@dataclass(frozen=True)
class DirectConv:
    """out[n, co, y, x] = sum over ci in co's group, taps (i, j) of
    w[g*w_group + co_l*w_out + ci_l*w_in + i*kw + j] * inp[n, ci, row(y, i), col(x, j)]."""

    out_shape: tuple[int, int, int, int]
    in_shape: tuple[int, int, int, int]
    groups: int
    kw: int
    rows: Rows
    phases: tuple[ColPhase, ...]
    w_group: int
    w_out: int
    w_in: int


def _window(node: Node) -> Window:
    """The window of conv2d / conv2d_grad_input (the weights are their second input)."""
    w = node.inputs[1]
    return Window.from_attrs(node.attrs, kernel=(w.shape[2], w.shape[3]))


def _forward_spec(node: Node) -> DirectConv:
    x, w = node.inputs
    win = _window(node)
    o, cg, kh, kw = w.shape
    (sh, sw), (dh, dw), ((pt, _), (pl, _)) = win.strides, win.dilation, win.pads
    k = kh * kw
    phase = ColPhase(0, 1, node.shape[3], sw, tuple((j, j * dw - pl) for j in range(kw)))
    return DirectConv(node.shape, x.shape, node.attrs["groups"], kw,
                      Rows(sh, dh, -pt, 1, x.shape[2], kh), (phase,),
                      w_group=(o // node.attrs["groups"]) * cg * k, w_out=cg * k, w_in=k)


def _grad_input_spec(node: Node) -> DirectConv:
    """dx[x] gathers g[q] for x = q*sw + j*dw - pl. Output columns are split by x mod sw:
    in phase r, tap j contributes iff (r + pl - j*dw) % sw == 0, and then reads the
    contiguous g columns q = (x - r)/sw + (r + pl - j*dw)/sw. The weights are read from
    the packed copy made by `_pack_transposed` (layout [group][c_l][o_l][kh*kw])."""
    g, w = node.inputs
    win = _window(node)
    o, cg, kh, kw = w.shape
    (sh, sw), (dh, dw), ((pt, _), (pl, _)) = win.strides, win.dilation, win.pads
    k = kh * kw
    og = o // node.attrs["groups"]
    width = node.shape[3]
    phases = transposed_phases(width, sw, dw, pl, kw)
    # The output channels are x's (c), the summed ones g's (o).
    return DirectConv(node.shape, g.shape, node.attrs["groups"], kw,
                      Rows(1, -dh, pt, sh, g.shape[2], kh), phases,
                      w_group=og * cg * k, w_out=og * k, w_in=k)


def _pack_transposed(ctx: KernelContext, w: Node, groups: int) -> ir.Value:
    """Copy w (O, Cg, kh, kw) to scratch as [group][c_l][o_l][kh*kw]: the grad_input loop
    then walks its weights contiguously, like conv2d's (instead of striding across the
    whole tensor, a new page per step for large layers)."""
    b = ctx.b
    assert ctx.scratch is not None
    o, cg, kh, kw = w.shape
    og, k = o // groups, kh * kw
    dtype = w.dtype
    src = ctx.ptr(w)
    memcpy = intrinsic(b.module, "llvm.memcpy", VOID, [PTR, PTR, I64, I1], [PTR, PTR, I64])
    with loop(b, groups, "pg") as grp, loop(b, cg, "pc") as c, loop(b, og, "po") as ol:
        dst = lin(b, [(grp, og * cg * k), (c, og * k), (ol, k)])
        at = lin(b, [(grp, og * cg * k), (ol, cg * k), (c, k)])
        b.call(memcpy, [element_ptr(b, ctx.scratch, dtype, dst),
                        element_ptr(b, src, dtype, at), i64(k * dtype.itemsize),
                        ir.Constant(I1, 0)])
    return ctx.scratch


def _grad_input_scratch(kernel: Kernel, target: Target, threads: int) -> int:
    assert kernel.anchor is not None
    return kernel.anchor.inputs[1].type.nbytes


def emit_direct(ctx: KernelContext, spec: DirectConv, inp: ir.Value, w: ir.Value,
                out: ir.Value, dtype: DType, store: EpilogueStore,
                units: tuple[ir.Value, ir.Value] | None = None, bands: int = 1,
                split: phases.PhaseRows | None = None) -> None:
    """The loop nest of `DirectConv` (see the module docstring), over all images or over
    units [start, stop) when `units` is given (one task of a parallel split): unit u is
    band u % bands of the output rows of image u // bands (`bands` row bands per image).
    With `split` (conv2d only) the input is read from its phase rows (`phases`) at the
    start of the scratch instead of from `inp`."""
    b = ctx.b
    n_batch, co_total, ho, wo = spec.out_shape
    _, ci_total, hi, wi = spec.in_shape
    if n_batch * co_total * ho * wo == 0:
        return
    cog, cig = co_total // spec.groups, ci_total // spec.groups
    rows = spec.rows
    lanes = pick_lanes(ctx.target.lanes(dtype.itemsize), max(p.count for p in spec.phases))
    vt = ir.VectorType(storage_type(dtype), lanes)
    assert split is None or (len(spec.phases) == 1 and split.lanes == lanes
                             and ctx.scratch is not None)

    def block(n: ir.Value, g: ir.Value, y: ir.Value, cb: ir.Value, count: int,
              phase: ColPhase, q0: ir.Value, checked: bool, limit: ir.Value | None) -> None:
        accs = [entry_alloca(b, vt, name="acc") for _ in range(count)]
        for a in accs:
            b.store(const_splat(dtype, 0.0, lanes), a)
        with loop(b, rows.taps, "i") as i:
            num = lin(b, [(y, rows.a), (i, rows.b)], rows.c)
            valid = in_range(b, num, 0, rows.size * rows.d)
            if rows.d > 1:
                valid = b.and_(valid, b.icmp_signed("==", b.srem(num, i64(rows.d)), i64(0)))
            with b.if_then(valid):
                r = b.sdiv(num, i64(rows.d)) if rows.d > 1 else num
                with loop(b, cig, "ci") as ci:
                    cin = lin(b, [(g, cig), (ci, 1)])
                    in_row = lin(b, [(n, ci_total * hi), (cin, hi), (r, 1)])
                    row = element_ptr(b, inp, dtype, b.mul(in_row, i64(wi)))
                    wbase = lin(b, [(g, spec.w_group), (cb, spec.w_out), (ci, spec.w_in),
                                    (i, spec.kw)])
                    for j, off in phase.taps:
                        if split is not None:  # one whole vector of a phase row
                            f, shift = split.tap(j)
                            at = b.add(split.row_offset(b, in_row, f), b.add(q0, i64(shift)))
                            xv = b.load(element_ptr(b, ctx.scratch, dtype, at), typ=vt,
                                        align=dtype.itemsize)
                        else:
                            col0 = lin(b, [(q0, phase.stride)], off)
                            if PREFETCH_ROWS and j == phase.taps[0][0]:
                                ahead = b.add(col0, i64(PREFETCH_ROWS * rows.a * wi))
                                prefetch(b, element_ptr(b, row, dtype, ahead, inbounds=False),
                                         False)
                            xv = Run(b, lanes, col0, phase.stride, wi, checked, limit).load(
                                row, dtype, 0.0)
                        for k, a in enumerate(accs):
                            wk = load_scalar(b, w, dtype, lin(b, [(wbase, 1)],
                                                              k * spec.w_out + j))
                            b.store(fma(b, splat(b, wk, lanes), xv, b.load(a)), a)
        for k, a in enumerate(accs):
            co = lin(b, [(g, cog), (cb, 1)], k)
            out_row = element_ptr(b, out, dtype, b.mul(lin(b, [(n, co_total * ho), (co, ho),
                                                               (y, 1)]), i64(wo)))
            col0 = lin(b, [(q0, phase.step)], phase.start)
            store(out_row, (n, co, y), col0, phase.step, b.load(a), lanes, limit)

    band = -(-ho // bands)  # output rows per band
    start, stop = units if units is not None else (i64(0), i64(n_batch * bands))
    with for_range(b, start, stop, 1, name="u") as u, loop(b, spec.groups, "g") as g:
        n = b.sdiv(u, i64(bands)) if bands > 1 else u
        y0 = b.mul(b.srem(u, i64(bands)), i64(band)) if bands > 1 else i64(0)
        y1 = b.select(b.icmp_signed("<", b.add(y0, i64(band)), i64(ho)), b.add(y0, i64(band)),
                      i64(ho)) if bands > 1 else i64(ho)
        with for_range(b, y0, y1, 1, name="y") as y:
            for phase in spec.phases:
                offs = [off for _, off in phase.taps] or [0]
                # Phase rows are padded: every output's loads are inside them.
                safe = (0, phase.count - 1) if split is not None else safe_outputs(
                    phase.stride, min(offs), max(offs), wi)
                plan = plan_chunks(phase.count, lanes, safe)

                def out_block(cb: ir.Value, count: int, phase: ColPhase = phase,
                              plan: ChunkPlan = plan) -> None:
                    emit_chunks(b, plan, lambda q0, checked, limit: block(
                        n, g, y, cb, count, phase, q0, checked, limit))

                blocks(b, cog, OUT_BLOCK, out_block, name="cb")


def _conv2d(ctx: KernelContext) -> None:
    kernel = ctx.kernel
    anchor = kernel.anchor
    assert anchor is not None and anchor.op == "conv2d"
    if channels.applies(anchor, ctx.target):
        channels.emit(ctx)
        return
    if depthwise.applies(anchor, ctx.target):
        depthwise.emit(ctx)
        return
    x, w = anchor.inputs
    epilogue = kernel.root is not anchor
    if epilogue:
        ctx.ptrs[anchor] = ctx.out  # the tail's in-place epilogue reads the raw sums here
    spec = _forward_spec(anchor)
    layout = phases.layout(anchor, ctx.target)
    if layout is not None:
        phases.emit_copy(ctx, anchor, layout)  # at the start of the scratch

    bands, grain = _split(anchor, w, ctx.threads)

    def units(c: KernelContext, start: ir.Value, stop: ir.Value) -> None:
        emit_direct(c, spec, c.ptr(x), c.ptr(w), c.out, anchor.dtype,
                    EpilogueStore(c, anchor.dtype, epilogue), (start, stop), bands, layout)

    parallel_range(ctx, spec.out_shape[0] * bands, grain, units)


def _grad_input(ctx: KernelContext) -> None:
    node = ctx.kernel.anchor
    assert node is not None
    g, w = node.inputs
    _pack_transposed(ctx, w, node.attrs["groups"])  # into scratch, before the split
    spec = _grad_input_spec(node)

    bands, grain = _split(node, w, ctx.threads)

    def units(c: KernelContext, start: ir.Value, stop: ir.Value) -> None:
        assert c.scratch is not None
        emit_direct(c, spec, c.ptr(g), c.scratch, c.out, node.dtype,
                    EpilogueStore(c, node.dtype, False), (start, stop), bands)

    parallel_range(ctx, spec.out_shape[0] * bands, grain, units)


_TASK_MACS = 1 << 17  # a task has at least this many multiply-adds of work


def _split(node: Node, w: Node, threads: int) -> tuple[int, int]:
    """(row bands per image, units per task): with fewer images than threads, each image's
    output rows are cut into bands so that every thread gets work (rows are independent:
    no sums to merge, and the results do not depend on the split)."""
    images, rows = node.shape[0], node.shape[2]
    per_row = max(1, node.size // max(images * rows, 1)) * max(1, w.size // w.shape[0])
    bands = 1
    if 0 < images < threads:
        bands = min(rows, -(-threads // images) * CHUNKS_PER_THREAD)
        # No band below the task minimum.
        bands = max(1, min(bands, rows * per_row // _TASK_MACS))
    per_unit = per_row * -(-rows // bands)
    return bands, max(1, -(-_TASK_MACS // per_unit))


def _dispatch(op: str, direct: Emitter) -> Emitter:
    """The lowering of `op`: through the GEMM when `im2col.choose` says so."""
    def lower(ctx: KernelContext) -> None:
        assert ctx.kernel.anchor is not None
        if im2col.choose(ctx.kernel.anchor, ctx.target, ctx.conv_algorithm, ctx.threads):
            im2col.EMIT[op](ctx)
        else:
            direct(ctx)
    return lower


def _scratch(direct: Callable[[Kernel, Target, int], int] | None) -> ScratchRule:
    """Scratch of the algorithm `im2col.choose` picks for the kernel's anchor."""
    def scratch(kernel: Kernel, target: Target, threads: int, algorithm: str) -> int:
        assert kernel.anchor is not None
        if im2col.choose(kernel.anchor, target, algorithm, threads):
            return im2col.scratch_bytes(kernel, target, threads)
        return direct(kernel, target, threads) if direct is not None else 0
    return scratch


def _forward_scratch(kernel: Kernel, target: Target, threads: int) -> int:
    """Scratch of conv2d's direct lowering: the narrow-rows or the depthwise kernel's, or
    the phase rows of a strided input."""
    anchor = kernel.anchor
    assert anchor is not None
    return (channels.scratch_bytes(kernel, target)
            or depthwise.scratch_bytes(kernel, target, threads)
            or phases.scratch_bytes(anchor, target))


# conv2d anchors CONV kernels (with their epilogue); its gradients are kernels of their own.
LOWERINGS = (
    Lowering(KernelKind.CONV, _dispatch("conv2d", _conv2d), _scratch(_forward_scratch)),
    Lowering("conv2d_grad_input", _dispatch("conv2d_grad_input", _grad_input),
             _scratch(_grad_input_scratch)),
    Lowering("conv2d_grad_weight", _dispatch("conv2d_grad_weight", weight_grad.emit_grad_weight),
             _scratch(None)),
)
