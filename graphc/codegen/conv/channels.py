"""conv2d vectorized over output channels, for narrow outputs (late layers: 7x7, 4x4, 1x1).

Vectorizing over the output width (`conv.emit_direct`) wastes lanes when a row has fewer
outputs than a vector. Here one `<L x T>` vector holds L output channels of one group,
and a register block holds up to `MAX_POSITIONS` output positions: whole output rows of
consecutive (n, y) pairs, so 1x1 maps block over the batch. Each weight vector loaded feeds
one `llvm.fma` per position, with the input value broadcast:

    for group, channel chunk, block of output rows:     acc[position] = 0
      for kernel row i, input channel ci, kernel column j:
        wv = packed_w[group, chunk, ci, i, j, :]           (one contiguous vector load)
        acc[(n, y, q)] += padded_x[n, ci, y*sh + i*dh, q*sw + j*dw] * wv

Two copies into scratch make the inner loop check-free and contiguous:
- the weights as [group][chunk][ci][kh*kw][L], zero-padded to whole chunks (one chunk's
  sweep is contiguous and stays in cache while the row blocks reuse it);
- the input with its zero padding materialized (N, C, H+pt+pb, W+pl+pr): no tap is ever
  outside, so no masks or branches.
Results are scattered to NCHW (channels are Ho*Wo apart) after the kernel's epilogue,
evaluated on the channel vector. In the last, partial channel chunk of a group the raw sums
are scattered for the live lanes and the epilogue then runs in place one element at a time
(its operands must not be read past the group's channels).
"""

from __future__ import annotations

import llvmlite.ir as ir

from graphc.codegen.context import KernelContext
from graphc.codegen.fused.expr import strides
from graphc.codegen.index import Idx, splat
from graphc.codegen.llvm_types import I1, I64, PTR, VOID, intrinsic, storage_type
from graphc.codegen.loops import entry_alloca, for_range
from graphc.codegen.parallel import parallel_range
from graphc.codegen.target import Target
from graphc.codegen.window import (
    const_splat,
    element_ptr,
    fma,
    i64,
    iota,
    lin,
    live_lanes,
    load_scalar,
    loop,
    memset_zero,
    scatter,
)
from graphc.ir import Node
from graphc.ops.geometry import Window
from graphc.passes.kernels import Kernel

MAX_POSITIONS = 14  # vector accumulators per register block


def applies(anchor: Node, target: Target) -> bool:
    """Whether conv2d `anchor` takes this path: rows narrower than a vector, and at least
    half a vector of output channels per group. (Measured with 16-lane vectors: on rows of
    10-14 outputs this path ran 1.2-1.9x faster than the direct kernel, whose vectors along
    the row are partly idle.)"""
    lanes = target.lanes(anchor.dtype.itemsize)
    out_per_group = anchor.shape[1] // anchor.attrs["groups"]
    return anchor.shape[3] < lanes and out_per_group * 2 >= lanes


def _layout(anchor: Node, lanes: int) -> tuple[int, int, int, int]:
    """(chunks per group, packed weight elements, padded height, padded width)."""
    x, w = anchor.inputs
    groups = anchor.attrs["groups"]
    o, cg, kh, kw = w.shape
    chunks = -(-(o // groups) // lanes)
    (pt, pb), (pl, pr) = Window.from_attrs(anchor.attrs, kernel=(kh, kw)).pads
    return chunks, groups * chunks * cg * kh * kw * lanes, x.shape[2] + pt + pb, \
        x.shape[3] + pl + pr


def _input_offset(anchor: Node, lanes: int) -> int:
    """Byte offset of the padded input in scratch (after the packed weights, aligned)."""
    _, w_elems, _, _ = _layout(anchor, lanes)
    return (w_elems * anchor.dtype.itemsize + 63) // 64 * 64


def scratch_bytes(kernel: Kernel, target: Target) -> int:
    anchor = kernel.anchor
    assert anchor is not None
    if not applies(anchor, target):
        return 0
    lanes = target.lanes(anchor.dtype.itemsize)
    _, _, hp, wp = _layout(anchor, lanes)
    n, c = anchor.inputs[0].shape[:2]
    return _input_offset(anchor, lanes) + n * c * hp * wp * anchor.dtype.itemsize


def _pack_weights(ctx: KernelContext, w: Node, groups: int, lanes: int, chunks: int) -> None:
    """w (O, Cg, kh, kw) -> the kernel's scratch as [group][chunk][c][kh*kw][lanes],
    zero-padded chunks."""
    assert ctx.scratch is not None
    b = ctx.b
    o, cg, kh, kw = w.shape
    og, k = o // groups, kh * kw
    dtype = w.dtype
    if og % lanes:
        memset_zero(b, ctx.scratch, groups * chunks * cg * k * lanes * dtype.itemsize)
    # The copy is split across threads by chunk of `lanes` output channels, each chunk a
    # contiguous block of scratch (splitting single channels would have two threads write the
    # same cache lines): a serial copy of a 960 x 160 layer's weights took a third of the
    # kernel on one thread, and kept two threads to 1.1x of it.
    def part(cx: KernelContext, start: ir.Value, stop: ir.Value) -> None:
        cb = cx.b
        src, to = cx.ptr(w), cx.scratch
        assert to is not None
        with for_range(cb, start, stop, 1, name="pgc") as gc_, \
                for_range(cb, 0, lanes, 1, name="pl") as lane:
            g, chunk = cb.udiv(gc_, i64(chunks)), cb.urem(gc_, i64(chunks))
            ol = lin(cb, [(chunk, lanes), (lane, 1)])
            with cb.if_then(cb.icmp_signed("<", ol, i64(og))), loop(cb, cg, "pc") as c, \
                    for_range(cb, 0, k, 1, name="pt") as t:
                value = load_scalar(cb, src, dtype, lin(cb, [(g, og * cg * k), (ol, cg * k),
                                                             (c, k), (t, 1)]))
                at = lin(cb, [(gc_, cg * k * lanes), (c, k * lanes), (t, lanes), (lane, 1)])
                cb.store(value, element_ptr(cb, to, dtype, at), align=dtype.itemsize)

    parallel_range(ctx, groups * chunks, max(1, -(-(1 << 14) // max(cg * k * lanes, 1))),
                   part)


def _pad_input(ctx: KernelContext, x: Node, pads: tuple[tuple[int, int], tuple[int, int]],
               dst: ir.Value) -> None:
    """x (N, C, H, W) -> dst (N, C, H+pt+pb, W+pl+pr) with zeros around."""
    b = ctx.b
    n, c, h, w = x.shape
    (pt, pb), (pl, pr) = pads
    hp, wp = h + pt + pb, w + pl + pr
    dtype = x.dtype
    if pads != ((0, 0), (0, 0)):
        memset_zero(b, dst, n * c * hp * wp * dtype.itemsize)
    memcpy = intrinsic(b.module, "llvm.memcpy", VOID, [PTR, PTR, I64, I1], [PTR, PTR, I64])
    with for_range(b, 0, n * c, 1, name="pnc") as nc, for_range(b, 0, h, 1, name="py") as y:
        to = lin(b, [(nc, hp * wp), (y, wp)], pt * wp + pl)
        b.call(memcpy, [element_ptr(b, dst, dtype, to),
                        element_ptr(b, ctx.ptr(x), dtype, lin(b, [(nc, h * w), (y, w)])),
                        i64(w * dtype.itemsize), ir.Constant(I1, 0)])


def emit(ctx: KernelContext) -> None:
    """The CONV kernel of `ctx` (its anchor satisfies `applies`). The weights are packed
    and the input padded into scratch first; then blocks of output rows, independent of
    each other, are split across threads (each output is computed the same way whatever
    the split)."""
    kernel = ctx.kernel
    anchor = kernel.anchor
    assert anchor is not None and ctx.scratch is not None
    x, w = anchor.inputs
    n_batch, _, ho, wo = anchor.shape
    groups = anchor.attrs["groups"]
    lanes = ctx.target.lanes(anchor.dtype.itemsize)
    chunks, _, _, _ = _layout(anchor, lanes)
    if kernel.root is not anchor:
        ctx.ptrs[anchor] = ctx.out  # the partial chunk's in-place epilogue reads raw sums
    if anchor.size == 0:
        return
    win = Window.from_attrs(anchor.attrs, kernel=(w.shape[2], w.shape[3]))
    _pack_weights(ctx, w, groups, lanes, chunks)
    _pad_input(ctx, x, win.pads, _padded_input(ctx, anchor, lanes))
    rows_total = n_batch * ho
    per_block = max(1, min(MAX_POSITIONS // wo, rows_total))
    n_blocks = -(-rows_total // per_block)
    work = per_block * wo * w.size  # multiply-adds of one block of rows
    parallel_range(ctx, n_blocks, max(1, -(-(1 << 14) // max(work, 1))),
                   lambda c, lo, hi: _row_blocks(c, lo, hi, per_block))


def _padded_input(ctx: KernelContext, anchor: Node, lanes: int) -> ir.Value:
    assert ctx.scratch is not None
    return ctx.b.gep(ctx.scratch, [i64(_input_offset(anchor, lanes))], inbounds=True,
                     source_etype=ir.IntType(8))


def _row_blocks(ctx: KernelContext, lo: ir.Value, hi: ir.Value, per_block: int) -> None:
    """Blocks [lo, hi) of `per_block` output rows (n, y) each; the last block of all may
    be shorter."""
    kernel = ctx.kernel
    anchor = kernel.anchor
    assert anchor is not None and ctx.scratch is not None
    b = ctx.b
    x, w = anchor.inputs
    dtype = anchor.dtype
    n_batch, o_total, ho, wo = anchor.shape
    c_total = x.shape[1]
    groups = anchor.attrs["groups"]
    og, cg, kh, kw = o_total // groups, c_total // groups, w.shape[2], w.shape[3]
    win = Window.from_attrs(anchor.attrs, kernel=(kh, kw))
    (sh, sw), (dh, dw) = win.strides, win.dilation
    lanes = ctx.target.lanes(dtype.itemsize)
    vt = ir.VectorType(storage_type(dtype), lanes)
    chunks, _, hp, wp = _layout(anchor, lanes)
    epilogue = kernel.root is not anchor
    packed = ctx.scratch
    xpad = _padded_input(ctx, anchor, lanes)
    rows_total = n_batch * ho
    n_full, rest = divmod(rows_total, per_block)
    k = kh * kw

    def block(g: ir.Value, ch: ir.Value, count: int, r0: ir.Value, n_rows: int) -> None:
        accs = [[entry_alloca(b, vt, name="acc") for _ in range(wo)] for _ in range(n_rows)]
        for row in accs:
            for a in row:
                b.store(const_splat(dtype, 0.0, lanes), a)
        # (n, y) of each output row of the block, and its input rows' base offset.
        ny = [(b.udiv(r, i64(ho)), b.urem(r, i64(ho)))
              for r in (lin(b, [(r0, 1)], kk) for kk in range(n_rows))]
        wbase = lin(b, [(g, chunks * cg * k * lanes), (ch, cg * k * lanes)])
        with loop(b, kh, "i") as i, loop(b, cg, "ci") as ci:
            xrows = [lin(b, [(n, c_total * hp * wp), (g, cg * hp * wp), (ci, hp * wp),
                             (y, sh * wp), (i, dh * wp)]) for n, y in ny]
            for j in range(kw):
                at = lin(b, [(wbase, 1), (ci, k * lanes), (i, kw * lanes)], j * lanes)
                wv = b.load(element_ptr(b, packed, dtype, at), typ=vt, align=dtype.itemsize)
                for kk, base in enumerate(xrows):
                    for q in range(wo):
                        xs = load_scalar(b, xpad, dtype, lin(b, [(base, 1)], q * sw + j * dw))
                        a = accs[kk][q]
                        b.store(fma(b, splat(b, xs, lanes), wv, b.load(a)), a)
        co = lin(b, [(g, og), (ch, lanes)])
        for kk, (n, y) in enumerate(ny):
            for q in range(wo):
                _store(ctx, (n, co, y, q), b.load(accs[kk][q]), count, epilogue)

    def chunk_rows(g: ir.Value, ch: ir.Value, count: int) -> None:
        # The full blocks of this task, then the short last block if it is this task's.
        last_full = b.select(b.icmp_signed("<", hi, i64(n_full)), hi, i64(n_full))
        with for_range(b, lo, last_full, 1, name="rows") as blk:
            block(g, ch, count, b.mul(blk, i64(per_block)), per_block)
        if rest:
            mine = b.icmp_signed(">", hi, i64(n_full))
            with b.if_then(mine):
                block(g, ch, count, i64(n_full * per_block), rest)

    with loop(b, groups, "g") as g:
        full = og // lanes
        if full:
            with loop(b, full, "ch") as ch:
                chunk_rows(g, ch, lanes)
        if og % lanes:
            chunk_rows(g, i64(full), og % lanes)


def _store(ctx: KernelContext, index: tuple[ir.Value, ir.Value, ir.Value, int], acc: ir.Value,
           count: int, epilogue: bool) -> None:
    """Scatter the channel vector `acc` of output [n, co.., y, q] (`count` live lanes)."""
    b = ctx.b
    kernel = ctx.kernel
    anchor = kernel.anchor
    assert anchor is not None
    lanes = acc.type.count
    n, co, y, q = index
    st = strides(anchor.shape)
    base = lin(b, [(n, st[0]), (co, st[1]), (y, st[2])], q)
    offsets = b.add(splat(b, base, lanes), iota(lanes, st[1]))
    dtype = anchor.dtype
    if count == lanes:
        if epilogue:
            ev = ctx.evaluator(lanes, overrides={anchor: acc})
            acc = ev.at(kernel.root, [Idx(n), Idx(co, 1), Idx(y), Idx(i64(q))])
        scatter(b, ctx.out, dtype, offsets, None, acc)
        return
    scatter(b, ctx.out, dtype, offsets, live_lanes(b, lanes, i64(count)), acc)
    if epilogue:
        ev = ctx.evaluator(1)
        with for_range(b, co, b.add(co, i64(count)), 1, name="ep") as c:
            idx = [Idx(n), Idx(c), Idx(y), Idx(i64(q))]
            ev.ix.store(ctx.out, dtype, ev.ix.linear(idx, st), ev.at(kernel.root, idx))
