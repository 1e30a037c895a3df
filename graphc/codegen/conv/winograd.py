"""Kernels of the Winograd F(2x2, 3x3) transforms (`graphc.ops.winograd`).

winograd_input: per (image, channel) plane and tile row, vectors of L tiles along the row.
The 16 tile elements d[i][j] are strided loads (every other column; a load and a shuffle,
`window.Run`), rows outside the image read zeros (a select on a clamped row) and columns
outside it are masked; V = B^T d B is 24 adds and subtracts (B has entries 0 and +-1), and
its 16 vectors are stored contiguously at V[k, c, (n, ty, tx0..)].

winograd_output, M as (16, O, tiles): per (channel, image, tile row), vectors of L tiles;
the 16 loads are contiguous, Y = A^T M A is 16 adds, and each output row receives the two
columns of its tiles interleaved by one shuffle into a contiguous (masked at the end) store.
M as (16, tiles, O) (the transposed GEMM): per tile, vectors of L output channels, loaded
contiguously and scattered to the channels' planes.

Both split their outer loop (planes or tiles) across threads; every element is computed the
same way whatever the split.
"""

from __future__ import annotations

import llvmlite.ir as ir

from graphc.codegen.context import KernelContext, Lowering
from graphc.codegen.fused.loop_nests import PARALLEL_GRAIN
from graphc.codegen.llvm_types import I32, I64
from graphc.codegen.loops import for_range
from graphc.codegen.parallel import parallel_range
from graphc.codegen.window import (
    Run,
    const_splat,
    element_ptr,
    emit_chunks,
    i64,
    lin,
    pick_lanes,
    plan_chunks,
    scatter,
    splat,
)
from graphc.ir import DType, Node
from graphc.ops.winograd import AT, BT, tiles


def _combine(b: ir.IRBuilder, coefs: list[float], vs: list[ir.Value]) -> ir.Value:
    """sum(c * v) for coefficients in {0, 1, -1} (at least one nonzero)."""
    out: ir.Value | None = None
    for c, v in zip(coefs, vs):
        if c == 0:
            continue
        if out is None:
            out = v if c > 0 else b.fneg(v)
        else:
            out = b.fadd(out, v) if c > 0 else b.fsub(out, v)
    assert out is not None
    return out


def _grain(work_per_unit: int) -> int:
    return max(1, -(-PARALLEL_GRAIN // max(work_per_unit, 1)))


def _input(ctx: KernelContext) -> None:
    node = ctx.kernel.anchor
    assert node is not None
    x = node.inputs[0]
    n, c, h, w = x.shape
    _, _, th, tw = tiles(h, w, node.attrs["pads"])
    (pt, _), (pl, _) = node.attrs["pads"]
    dt: DType = node.dtype
    lanes = pick_lanes(ctx.target.lanes(dt.itemsize), tw)
    count = n * th * tw
    plan = plan_chunks(tw, lanes, None)

    def planes(cx: KernelContext, start: ir.Value, stop: ir.Value) -> None:
        b = cx.b
        zero = const_splat(dt, 0.0, lanes)
        with for_range(b, start, stop, 1, name="plane") as plane, \
                for_range(b, 0, th, 1, name="ty") as ty:
            img = b.sdiv(plane, i64(c))
            ch = b.srem(plane, i64(c))
            rows = []
            for i in range(4):
                r = lin(b, [(ty, 2)], i - pt)
                inside = b.and_(b.icmp_signed(">=", r, i64(0)), b.icmp_signed("<", r, i64(h)))
                clamped = b.select(inside, r, i64(0))
                rows.append((inside, element_ptr(b, cx.ptr(x), dt, lin(
                    b, [(plane, h * w), (clamped, w)]))))

            def chunk(t0: ir.Value, _checked: bool, limit: ir.Value | None) -> None:
                d = []
                for inside, row in rows:
                    for j in range(4):
                        v = Run(b, lanes, lin(b, [(t0, 2)], j - pl), 2, w, True, limit).load(
                            row, dt, 0.0)
                        d.append(b.select(inside, v, zero))
                t = [[_combine(b, list(BT[r]), [d[4 * i + j] for i in range(4)])
                      for j in range(4)] for r in range(4)]
                base = lin(b, [(img, th * tw), (ty, tw), (t0, 1)])
                for r in range(4):
                    for s in range(4):
                        v = _combine(b, list(BT[s]), t[r])
                        dst = element_ptr(b, cx.out, dt, lin(b, [(ch, count)],
                                                             (4 * r + s) * c * count))
                        Run(b, lanes, base, 1, 0, False, limit).store(dst, dt, v)

            emit_chunks(b, plan, chunk)

    parallel_range(ctx, n * c, _grain(th * tw * 64), planes)


def _interleave(b: ir.IRBuilder, lo: ir.Value, hi: ir.Value, lanes: int) -> ir.Value:
    """<2L> from two <L>: lo[0], hi[0], lo[1], hi[1], ..."""
    order = [k for pair in zip(range(lanes), range(lanes, 2 * lanes)) for k in pair]
    return b.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(I32, 2 * lanes), order))


def _tile_outputs(b: ir.IRBuilder, m: list[ir.Value]) -> list[list[ir.Value]]:
    """y[a][b] = (A^T M A)[a, b] from the 16 values m[4r + s]."""
    s_ = [[_combine(b, list(AT[a]), [m[4 * r + s] for r in range(4)]) for s in range(4)]
          for a in range(2)]
    return [[_combine(b, list(AT[bb]), s_[a]) for bb in range(2)] for a in range(2)]


def _output_geometry(node: Node) -> tuple[Node, int, int, int, int, int, int, int, DType]:
    """(M, N, O, Ho, Wo, th, tw, tiles, dtype) of a winograd_output node."""
    n, o, ho, wo = node.shape
    th, tw = -(-ho // 2), -(-wo // 2)
    return node.inputs[0], n, o, ho, wo, th, tw, n * th * tw, node.dtype


def _output(ctx: KernelContext) -> None:
    node = ctx.kernel.anchor
    assert node is not None
    if node.attrs["transposed"]:
        _output_by_channel(ctx)
        return
    m, n, o, ho, wo, th, tw, count, dt = _output_geometry(node)
    lanes = pick_lanes(ctx.target.lanes(dt.itemsize), tw)
    plan = plan_chunks(tw, lanes, None)

    def planes(cx: KernelContext, start: ir.Value, stop: ir.Value) -> None:
        b = cx.b
        with for_range(b, start, stop, 1, name="plane") as plane, \
                for_range(b, 0, th, 1, name="ty") as ty:
            img = b.sdiv(plane, i64(o))
            ch = b.srem(plane, i64(o))

            def chunk(t0: ir.Value, _checked: bool, limit: ir.Value | None) -> None:
                base = lin(b, [(ch, count), (img, th * tw), (ty, tw), (t0, 1)])
                vals = [Run(b, lanes, base, 1, 0, False, limit).load(
                    element_ptr(b, cx.ptr(m), dt, i64(k * o * count)), dt, 0.0)
                    for k in range(16)]
                y = _tile_outputs(b, vals)
                # Columns 2*t0 .. of the output rows; the last tile column may be cut.
                live = b.sub(i64(wo), b.mul(t0, i64(2)))
                if limit is not None:
                    live = b.select(b.icmp_signed("<", b.mul(limit, i64(2)), live),
                                    b.mul(limit, i64(2)), live)
                full = b.icmp_signed(">=", live, i64(2 * lanes))
                width = b.select(full, i64(2 * lanes), live)
                for a in range(2):
                    row = lin(b, [(ty, 2)], a)
                    with b.if_then(b.icmp_signed("<", row, i64(ho))):
                        dst = element_ptr(b, cx.out, dt, lin(
                            b, [(img, o * ho * wo), (ch, ho * wo), (row, wo)]))
                        Run(b, 2 * lanes, b.mul(t0, i64(2)), 1, 0, False, width).store(
                            dst, dt, _interleave(b, y[a][0], y[a][1], lanes))

            emit_chunks(b, plan, chunk)

    parallel_range(ctx, n * o, _grain(th * tw * 16), planes)


def _output_by_channel(ctx: KernelContext) -> None:
    """M as (16, tiles, O): vectors of L output channels per tile, scattered to NCHW."""
    node = ctx.kernel.anchor
    assert node is not None
    m, _, o, ho, wo, th, tw, count, dt = _output_geometry(node)
    lanes = pick_lanes(ctx.target.lanes(dt.itemsize), o)
    plan = plan_chunks(o, lanes, None)
    plane = ho * wo
    offsets = ir.Constant(ir.VectorType(I64, lanes), [k * plane for k in range(lanes)])

    def tiles_(cx: KernelContext, start: ir.Value, stop: ir.Value) -> None:
        b = cx.b
        with for_range(b, start, stop, 1, name="tile") as tile:
            img = b.sdiv(tile, i64(th * tw))
            ty = b.sdiv(b.srem(tile, i64(th * tw)), i64(tw))
            tx = b.srem(tile, i64(tw))

            def chunk(o0: ir.Value, _checked: bool, limit: ir.Value | None) -> None:
                vals = [Run(b, lanes, lin(b, [(tile, o)], 0), 1, 0, False, limit).load(
                    element_ptr(b, cx.ptr(m), dt, lin(b, [(o0, 1)], k * count * o)), dt, 0.0)
                    for k in range(16)]
                y = _tile_outputs(b, vals)
                mask = Run(b, lanes, i64(0), 1, 0, False, limit).lane_mask()
                for a in range(2):
                    for bb in range(2):
                        row, col = lin(b, [(ty, 2)], a), lin(b, [(tx, 2)], bb)
                        inside = b.and_(b.icmp_signed("<", row, i64(ho)),
                                        b.icmp_signed("<", col, i64(wo)))
                        with b.if_then(inside):
                            at = lin(b, [(img, o * plane), (o0, plane), (row, wo), (col, 1)])
                            idx = b.add(splat(b, at, lanes), offsets)
                            scatter(b, cx.out, dt, idx, mask, y[a][bb])

            emit_chunks(b, plan, chunk)

    parallel_range(ctx, count, _grain(o * 16), tiles_)


LOWERINGS = (
    Lowering("winograd_input", _input),
    Lowering("winograd_output", _output),
)
