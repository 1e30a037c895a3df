"""Pooling kernels: max_pool2d, max_pool2d_grad, max_pool2d_gather, avg_pool2d and
avg_pool2d_grad over NCHW tensors.

Every kernel walks the output rows of each (n, c) plane and vectorizes over the output
width (`<L x T>`, see `window`: contiguous loads for stride 1, a load and a shuffle for
strides 2-4, gathers beyond), kernel taps in row-major order, rows outside the input
skipped, columns outside it masked (they read -inf for max, 0 for the sums).

- max_pool2d: a running max; NaN wins (numpy's max propagates NaN).
- max_pool2d_grad / _gather: a running (max, flat input offset) pair per lane finds each
  window's first argmax exactly like the reference's `np.argmax` over the -inf-padded
  window: a later tap wins only if strictly greater, or NaN over a non-NaN; a window whose
  first position is padding and whose values are all -inf keeps that padding position,
  which contributes nothing (grad) or reads 0 (gather). The grad zero-fills dx and
  scatter-adds g one lane at a time (overlapping windows may share an argmax); the gather
  reads h at the argmaxes with a masked gather.
- avg_pool2d: window sums divided by kh*kw, or by the count of real elements.
- avg_pool2d_grad: dx zero-filled, then each g/divisor added to its window's elements with
  vector read-modify-writes (the lanes of one vector never share an element).
"""

from __future__ import annotations

from collections.abc import Callable

import llvmlite.ir as ir

from graphc.codegen.context import KernelContext
from graphc.codegen.index import splat
from graphc.codegen.loops import entry_alloca, for_range
from graphc.codegen.types import I64, storage_type
from graphc.codegen.window import (
    ChunkPlan,
    Run,
    element_ptr,
    emit_chunks,
    float_splat,
    gather,
    i64,
    in_range,
    iota,
    lin,
    live_lanes,
    load_scalar,
    loop,
    memset_zero,
    pick_lanes,
    plan_chunks,
    safe_outputs,
    store_scalar,
    taps,
)
from graphc.ir import DType, Node
from graphc.ops.conv_geometry import Window

# body(plane index n*C + c, output row p, chunk start q0, checked, limit)
RowBody = Callable[[ir.Value, ir.Value, ir.Value, bool, "int | None"], None]


class Pool:
    """The geometry of one pooling node: x (N, C, H, W) -> (N, C, Ho, Wo)."""

    def __init__(self, ctx: KernelContext, node: Node, x_shape: tuple[int, ...]):
        self.ctx = ctx
        self.b = ctx.b
        self.node = node
        self.win = Window.from_attrs(node.attrs, dilated=False)
        self.n, self.c, self.h, self.w = x_shape
        self.ho, self.wo = self.win.out_size((self.h, self.w))
        self.kh, self.kw = self.win.kernel
        self.sh, self.sw = self.win.strides
        (self.pt, _), (self.pl, _) = self.win.pads
        self.dtype: DType = node.dtype
        self.lanes = pick_lanes(ctx.target.lanes(self.dtype.itemsize), self.wo)
        self.vt = ir.VectorType(storage_type(self.dtype), self.lanes)
        safe = safe_outputs(self.sw, -self.pl, self.kw - 1 - self.pl, self.w)
        self.plan: ChunkPlan = plan_chunks(self.wo, self.lanes, safe)

    def plane(self, ptr: ir.Value, idx: ir.Value, size: int) -> ir.Value:
        return element_ptr(self.b, ptr, self.dtype, self.b.mul(idx, i64(size)))

    def rows(self, body: RowBody) -> None:
        """body(...) for every chunk of every output row of every plane."""
        b = self.b
        if self.n * self.c * self.ho * self.wo == 0:
            return
        with for_range(b, 0, self.n * self.c, 1, name="nc") as nc, \
                for_range(b, 0, self.ho, 1, name="p") as p:
            emit_chunks(b, self.plan, lambda q0, checked, limit: body(nc, p, q0, checked,
                                                                      limit))

    def taps(self, p: ir.Value, q0: ir.Value, checked: bool, limit: ir.Value | None,
             body: Callable[[ir.Value, ir.Value, Run], None]) -> None:
        """body(i, input row, run) for the taps of row-major window order whose row is in
        the input (a branch per kernel row)."""
        b = self.b

        with loop(b, self.kh, "i") as i:
            r = lin(b, [(p, self.sh), (i, 1)], -self.pt)
            with b.if_then(in_range(b, r, 0, self.h)):
                def tap_col(j: ir.Value) -> None:
                    col0 = lin(b, [(q0, self.sw), (j, 1)], -self.pl)
                    body(i, r, Run(b, self.lanes, col0, self.sw, self.w, checked, limit))

                taps(b, self.kw, tap_col, name="j")

    def store_out(self, out_plane: ir.Value, p: ir.Value, q0: ir.Value, limit: ir.Value | None,
                  value: ir.Value) -> None:
        row = element_ptr(self.b, out_plane, self.dtype, self.b.mul(p, i64(self.wo)))
        Run(self.b, self.lanes, q0, 1, self.wo, False, limit).store(row, self.dtype, value)

    def load_out(self, plane: ir.Value, p: ir.Value, q0: ir.Value, limit: ir.Value | None
                 ) -> ir.Value:
        row = element_ptr(self.b, plane, self.dtype, self.b.mul(p, i64(self.wo)))
        return Run(self.b, self.lanes, q0, 1, self.wo, False, limit).load(row, self.dtype, 0.0)


def _takes(b: ir.IRBuilder, v: ir.Value, cur: ir.Value) -> ir.Value:
    """v beats cur: strictly greater, or NaN over a non-NaN (numpy's max/argmax)."""
    return b.or_(b.fcmp_ordered(">", v, cur),
                 b.and_(b.fcmp_unordered("uno", v, v), b.fcmp_ordered("ord", cur, cur)))


def _max_pool(ctx: KernelContext) -> None:
    node = ctx.kernel.anchor
    assert node is not None
    x = node.inputs[0]
    pool = Pool(ctx, node, x.shape)
    b = ctx.b
    best = entry_alloca(b, pool.vt, name="best")

    def chunk(nc: ir.Value, p: ir.Value, q0: ir.Value, checked: bool, limit: ir.Value | None
              ) -> None:
        x_plane = pool.plane(ctx.ptr(x), nc, pool.h * pool.w)
        b.store(float_splat(pool.dtype, -float("inf"), pool.lanes), best)

        def tap(_i: ir.Value, r: ir.Value, run: Run) -> None:
            row = element_ptr(b, x_plane, pool.dtype, b.mul(r, i64(pool.w)))
            v = run.load(row, pool.dtype, -float("inf"))
            cur = b.load(best)
            b.store(b.select(_takes(b, v, cur), v, cur), best)

        pool.taps(p, q0, checked, limit, tap)
        pool.store_out(pool.plane(ctx.out, nc, pool.ho * pool.wo), p, q0, limit, b.load(best))

    pool.rows(chunk)


def _argmax(ctx: KernelContext, pool: Pool, x_plane: ir.Value, p: ir.Value, q0: ir.Value,
            checked: bool, limit: ir.Value | None) -> ir.Value:
    """<L x i64>: the plane offset of each window's first argmax, or -1 when it is padding."""
    b = ctx.b
    lanes = pool.lanes
    best = entry_alloca(b, pool.vt, name="best")
    where = entry_alloca(b, ir.VectorType(I64, lanes), name="where")
    b.store(float_splat(pool.dtype, -float("inf"), lanes), best)
    # The window's first position (its top-left corner), which wins if nothing beats -inf.
    r0 = lin(b, [(p, pool.sh)], -pool.pt)
    c0 = b.add(splat(b, lin(b, [(q0, pool.sw)], -pool.pl), lanes), iota(lanes, pool.sw))
    inside = b.and_(splat(b, in_range(b, r0, 0, pool.h), lanes), in_range(b, c0, 0, pool.w))
    first = b.add(splat(b, b.mul(r0, i64(pool.w)), lanes), c0)
    b.store(b.select(inside, first, splat(b, i64(-1), lanes)), where)

    def tap(_i: ir.Value, r: ir.Value, run: Run) -> None:
        row_off = b.mul(r, i64(pool.w))
        v = run.load(element_ptr(b, x_plane, pool.dtype, row_off), pool.dtype, -float("inf"))
        cur = b.load(best)
        take = _takes(b, v, cur)
        b.store(b.select(take, v, cur), best)
        pos = b.add(splat(b, row_off, lanes), run.offsets())
        b.store(b.select(take, pos, b.load(where)), where)

    pool.taps(p, q0, checked, limit, tap)
    return b.load(where)


def _max_pool_grad(ctx: KernelContext) -> None:
    node = ctx.kernel.anchor
    assert node is not None
    x, g = node.inputs
    pool = Pool(ctx, node, x.shape)
    b = ctx.b
    memset_zero(b, ctx.out, node.size * node.dtype.itemsize)

    def chunk(nc: ir.Value, p: ir.Value, q0: ir.Value, checked: bool, limit: ir.Value | None
              ) -> None:
        x_plane = pool.plane(ctx.ptr(x), nc, pool.h * pool.w)
        dx_plane = pool.plane(ctx.out, nc, pool.h * pool.w)
        where = _argmax(ctx, pool, x_plane, p, q0, checked, limit)
        gv = pool.load_out(pool.plane(ctx.ptr(g), nc, pool.ho * pool.wo), p, q0, limit)
        # One lane at a time: overlapping windows can route to the same element.
        count = i64(pool.lanes) if limit is None else limit
        with for_range(b, 0, count, 1, name="lane") as t:
            off = b.extract_element(where, t)
            with b.if_then(b.icmp_signed(">=", off, i64(0))):
                old = load_scalar(b, dx_plane, pool.dtype, off)
                store_scalar(b, dx_plane, pool.dtype, off, b.fadd(old, b.extract_element(gv, t)))

    pool.rows(chunk)


def _max_pool_gather(ctx: KernelContext) -> None:
    node = ctx.kernel.anchor
    assert node is not None
    x, h = node.inputs
    pool = Pool(ctx, node, x.shape)
    b = ctx.b

    def chunk(nc: ir.Value, p: ir.Value, q0: ir.Value, checked: bool, limit: ir.Value | None
              ) -> None:
        x_plane = pool.plane(ctx.ptr(x), nc, pool.h * pool.w)
        where = _argmax(ctx, pool, x_plane, p, q0, checked, limit)
        mask = b.icmp_signed(">=", where, splat(b, i64(0), pool.lanes))
        if limit is not None:
            mask = b.and_(mask, live_lanes(b, pool.lanes, limit))
        value = gather(b, pool.plane(ctx.ptr(h), nc, pool.h * pool.w), pool.dtype, where, mask,
                       float_splat(pool.dtype, 0.0, pool.lanes))
        pool.store_out(pool.plane(ctx.out, nc, pool.ho * pool.wo), p, q0, limit, value)

    pool.rows(chunk)


def _divisor(pool: Pool, p: ir.Value, q0: ir.Value) -> ir.Value:
    """Each window's divisor as <L x T>: kh*kw, or its number of real input elements."""
    b = pool.b
    lanes = pool.lanes
    if pool.node.attrs["count_include_pad"]:
        return float_splat(pool.dtype, float(pool.kh * pool.kw), lanes)

    def count(start: ir.Value, k: int, size: int, n: int) -> ir.Value:
        """min(start + k, size) - max(start, 0), elementwise."""
        zero, top = splat(b, i64(0), n), splat(b, i64(size), n)
        end = b.add(start, splat(b, i64(k), n))
        hi = b.select(b.icmp_signed("<", end, top), end, top)
        lo = b.select(b.icmp_signed(">", start, zero), start, zero)
        return b.sub(hi, lo)

    r0 = lin(b, [(p, pool.sh)], -pool.pt)
    rows = count(r0, pool.kh, pool.h, 1)
    c0 = b.add(splat(b, lin(b, [(q0, pool.sw)], -pool.pl), lanes), iota(lanes, pool.sw))
    cols = count(c0, pool.kw, pool.w, lanes)
    n = b.mul(splat(b, rows, lanes), cols)
    return b.sitofp(n, pool.vt)


def _avg_pool(ctx: KernelContext) -> None:
    node = ctx.kernel.anchor
    assert node is not None
    x = node.inputs[0]
    pool = Pool(ctx, node, x.shape)
    b = ctx.b
    total = entry_alloca(b, pool.vt, name="total")

    def chunk(nc: ir.Value, p: ir.Value, q0: ir.Value, checked: bool, limit: ir.Value | None
              ) -> None:
        x_plane = pool.plane(ctx.ptr(x), nc, pool.h * pool.w)
        b.store(float_splat(pool.dtype, 0.0, pool.lanes), total)

        def tap(_i: ir.Value, r: ir.Value, run: Run) -> None:
            row = element_ptr(b, x_plane, pool.dtype, b.mul(r, i64(pool.w)))
            b.store(b.fadd(b.load(total), run.load(row, pool.dtype, 0.0)), total)

        pool.taps(p, q0, checked, limit, tap)
        value = b.fdiv(b.load(total), _divisor(pool, p, q0))
        pool.store_out(pool.plane(ctx.out, nc, pool.ho * pool.wo), p, q0, limit, value)

    pool.rows(chunk)


def _avg_pool_grad(ctx: KernelContext) -> None:
    node = ctx.kernel.anchor
    assert node is not None
    g = node.inputs[0]
    pool = Pool(ctx, node, tuple(node.attrs["input_shape"]))
    b = ctx.b
    memset_zero(b, ctx.out, node.size * node.dtype.itemsize)

    def chunk(nc: ir.Value, p: ir.Value, q0: ir.Value, checked: bool, limit: ir.Value | None
              ) -> None:
        dx_plane = pool.plane(ctx.out, nc, pool.h * pool.w)
        gv = pool.load_out(pool.plane(ctx.ptr(g), nc, pool.ho * pool.wo), p, q0, limit)
        share = b.fdiv(gv, _divisor(pool, p, q0))

        def tap(_i: ir.Value, r: ir.Value, run: Run) -> None:
            row = element_ptr(b, dx_plane, pool.dtype, b.mul(r, i64(pool.w)))
            # A gather (not the load-and-shuffle form) so load and scatter see one mask.
            if run.stride == 1:
                old = run.load(row, pool.dtype, 0.0)
            else:
                old = gather(b, row, pool.dtype, run.offsets(), run.lane_mask(),
                             float_splat(pool.dtype, 0.0, pool.lanes))
            run.store(row, pool.dtype, b.fadd(old, share))

        pool.taps(p, q0, checked, limit, tap)

    pool.rows(chunk)


LOWER = {
    "max_pool2d": _max_pool,
    "max_pool2d_grad": _max_pool_grad,
    "max_pool2d_gather": _max_pool_gather,
    "avg_pool2d": _avg_pool,
    "avg_pool2d_grad": _avg_pool_grad,
}
