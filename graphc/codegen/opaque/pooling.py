"""Pooling kernels: max_pool2d, max_pool2d_gather, avg_pool2d (forward ops) and the
geometry and argmax shared with the gradients in `pooling_grad`.

Kernels walk the output rows of each (n, c) plane and vectorize over the output width
(`<L x T>`, see `window`: contiguous loads for stride 1, a load and a shuffle for strides
2-4, gathers beyond), kernel taps in row-major order, rows outside the input skipped,
columns outside it masked (they read -inf for max, 0 for sums).

- max_pool2d: a running max in two partial accumulators, NaNs tracked in a mask (NaN wins,
  as numpy's max propagates it).
- `window_argmax` (max_pool2d_gather, max_pool2d_grad): a running (max, plane offset) pair
  per lane finds each window's first argmax exactly like the reference's `np.argmax` over
  the -inf-padded window: a later tap wins only if strictly greater, or NaN over a non-NaN;
  a window whose first position is padding and whose values are all -inf keeps that
  padding position (offset -1), which routes nothing (grad) or reads 0 (gather).
- max_pool2d_gather: h read at the argmaxes with a masked gather.
- avg_pool2d: window sums divided by kh*kw, or by the count of real elements.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import llvmlite.ir as ir

from graphc.codegen.context import KernelContext, Lowering
from graphc.codegen.fused.loop_nests import PARALLEL_GRAIN
from graphc.codegen.index import splat
from graphc.codegen.llvm_types import I1, I32, I64, storage_type
from graphc.codegen.loops import entry_alloca, for_range
from graphc.codegen.parallel import parallel_range
from graphc.codegen.window import (
    ChunkPlan,
    Run,
    const_splat,
    element_ptr,
    emit_chunks,
    gather,
    i64,
    in_range,
    iota,
    lin,
    live_lanes,
    loop,
    pick_lanes,
    plan_chunks,
    safe_outputs,
    taps,
)
from graphc.errors import CompileError
from graphc.ir import DType, Node
from graphc.ops.geometry import Window

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

    def rows(self, body: RowBody, planes: tuple[ir.Value, ir.Value] | None = None) -> None:
        """body(...) for every chunk of every output row of the planes [lo, hi) (default:
        all of them)."""
        b = self.b
        if self.n * self.c * self.ho * self.wo == 0:
            return
        lo, hi = planes if planes is not None else (i64(0), i64(self.n * self.c))
        with for_range(b, lo, hi, 1, name="nc") as nc, \
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
    """v beats cur: strictly greater, or NaN over a non-NaN (numpy's argmax). That is
    `(v > cur or v is NaN) and cur is not NaN`: two compares (one masked by the other)."""
    return b.and_(b.fcmp_unordered(">", v, cur), b.fcmp_ordered("ord", cur, cur))


def _max_pool(ctx: KernelContext, planes: tuple[ir.Value, ir.Value]) -> None:
    """Window maxima. The running max is a plain `v > cur` select (one vmaxps) in two
    independent partial accumulators (alternate taps), NaNs tracked in a separate mask:
    the NaN-aware select of `_takes` would chain ~8 cycles of latency per tap."""
    node = ctx.kernel.anchor
    assert node is not None
    x = node.inputs[0]
    pool = Pool(ctx, node, x.shape)
    b = ctx.b
    best = [entry_alloca(b, pool.vt, name="best") for _ in range(2)]
    nan = entry_alloca(b, ir.VectorType(I1, pool.lanes), name="nan")

    def chunk(nc: ir.Value, p: ir.Value, q0: ir.Value, checked: bool, limit: ir.Value | None
              ) -> None:
        x_plane = pool.plane(ctx.ptr(x), nc, pool.h * pool.w)
        for slot in best:
            b.store(const_splat(pool.dtype, -float("inf"), pool.lanes), slot)
        b.store(ir.Constant(nan.allocated_type, [ir.Constant(I1, 0)] * pool.lanes), nan)
        order = itertools.count()

        def tap(_i: ir.Value, r: ir.Value, run: Run) -> None:
            row = element_ptr(b, x_plane, pool.dtype, b.mul(r, i64(pool.w)))
            v = run.load(row, pool.dtype, -float("inf"))
            slot = best[next(order) % 2]
            cur = b.load(slot)
            b.store(b.select(b.fcmp_ordered(">", v, cur), v, cur), slot)
            b.store(b.or_(b.load(nan), b.fcmp_unordered("uno", v, v)), nan)

        pool.taps(p, q0, checked, limit, tap)
        b0, b1 = b.load(best[0]), b.load(best[1])
        value = b.select(b.fcmp_ordered(">", b1, b0), b1, b0)
        value = b.select(b.load(nan), const_splat(pool.dtype, float("nan"), pool.lanes), value)
        pool.store_out(pool.plane(ctx.out, nc, pool.ho * pool.wo), p, q0, limit, value)

    pool.rows(chunk, planes)


def window_argmax(ctx: KernelContext, pool: Pool, x_plane: ir.Value, p: ir.Value, q0: ir.Value,
            checked: bool, limit: ir.Value | None) -> ir.Value:
    """<L x i32>: the plane offset of each window's first argmax, or -1 when it is padding
    (i32 halves the index work; `check_plane` guarantees the offsets fit)."""
    b = ctx.b
    lanes = pool.lanes
    v32 = ir.VectorType(I32, lanes)
    best = entry_alloca(b, pool.vt, name="best")
    where = entry_alloca(b, v32, name="where")
    b.store(const_splat(pool.dtype, -float("inf"), lanes), best)
    # The window's first position (its top-left corner), which wins if nothing beats -inf.
    r0 = lin(b, [(p, pool.sh)], -pool.pt)
    c0 = b.add(splat(b, lin(b, [(q0, pool.sw)], -pool.pl), lanes), iota(lanes, pool.sw))
    inside = b.and_(splat(b, in_range(b, r0, 0, pool.h), lanes), in_range(b, c0, 0, pool.w))
    first = b.trunc(b.add(splat(b, b.mul(r0, i64(pool.w)), lanes), c0), v32)
    b.store(b.select(inside, first, const_splat(DType.int32, -1, lanes)), where)

    def tap(_i: ir.Value, r: ir.Value, run: Run) -> None:
        row_off = b.mul(r, i64(pool.w))
        v = run.load(element_ptr(b, x_plane, pool.dtype, row_off), pool.dtype, -float("inf"))
        cur = b.load(best)
        take = _takes(b, v, cur)
        b.store(b.select(take, v, cur), best)
        pos = b.add(splat(b, b.trunc(b.add(row_off, run.col0), I32), lanes),
                    iota32(lanes, run.stride))
        b.store(b.select(take, pos, b.load(where)), where)

    pool.taps(p, q0, checked, limit, tap)
    return b.load(where)


def check_plane(pool: Pool) -> None:
    if pool.h * pool.w >= 2**31:
        node = pool.node
        raise CompileError(f"{node.op}: planes of {pool.h}x{pool.w} elements are too large "
                           "(argmax offsets are 32-bit)", op=node.op, loc=node.loc)


def iota32(lanes: int, step: int) -> ir.Constant:
    return ir.Constant(ir.VectorType(I32, lanes), [ir.Constant(I32, t * step)
                                                   for t in range(lanes)])


def _max_pool_gather(ctx: KernelContext, planes: tuple[ir.Value, ir.Value]) -> None:
    node = ctx.kernel.anchor
    assert node is not None
    x, h = node.inputs
    pool = Pool(ctx, node, x.shape)
    check_plane(pool)
    b = ctx.b

    def chunk(nc: ir.Value, p: ir.Value, q0: ir.Value, checked: bool, limit: ir.Value | None
              ) -> None:
        x_plane = pool.plane(ctx.ptr(x), nc, pool.h * pool.w)
        where = window_argmax(ctx, pool, x_plane, p, q0, checked, limit)
        mask = b.icmp_signed(">=", where, const_splat(DType.int32, 0, pool.lanes))
        where = b.sext(where, ir.VectorType(I64, pool.lanes))
        if limit is not None:
            mask = b.and_(mask, live_lanes(b, pool.lanes, limit))
        value = gather(b, pool.plane(ctx.ptr(h), nc, pool.h * pool.w), pool.dtype, where, mask,
                       const_splat(pool.dtype, 0.0, pool.lanes))
        pool.store_out(pool.plane(ctx.out, nc, pool.ho * pool.wo), p, q0, limit, value)

    pool.rows(chunk, planes)


def divisor(pool: Pool, p: ir.Value, q0: ir.Value) -> ir.Value:
    """Each window's divisor as <L x T>: kh*kw, or its number of real input elements."""
    b = pool.b
    lanes = pool.lanes
    if pool.node.attrs["count_include_pad"]:
        return const_splat(pool.dtype, float(pool.kh * pool.kw), lanes)

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


def _avg_pool(ctx: KernelContext, planes: tuple[ir.Value, ir.Value]) -> None:
    """Window sums (two partial sums over alternate taps, for latency) over the divisor."""
    node = ctx.kernel.anchor
    assert node is not None
    x = node.inputs[0]
    pool = Pool(ctx, node, x.shape)
    b = ctx.b
    total = [entry_alloca(b, pool.vt, name="total") for _ in range(2)]

    def chunk(nc: ir.Value, p: ir.Value, q0: ir.Value, checked: bool, limit: ir.Value | None
              ) -> None:
        x_plane = pool.plane(ctx.ptr(x), nc, pool.h * pool.w)
        for slot in total:
            b.store(const_splat(pool.dtype, 0.0, pool.lanes), slot)
        order = itertools.count()

        def tap(_i: ir.Value, r: ir.Value, run: Run) -> None:
            row = element_ptr(b, x_plane, pool.dtype, b.mul(r, i64(pool.w)))
            slot = total[next(order) % 2]
            b.store(b.fadd(b.load(slot), run.load(row, pool.dtype, 0.0)), slot)

        pool.taps(p, q0, checked, limit, tap)
        value = b.fdiv(b.fadd(b.load(total[0]), b.load(total[1])), divisor(pool, p, q0))
        pool.store_out(pool.plane(ctx.out, nc, pool.ho * pool.wo), p, q0, limit, value)

    pool.rows(chunk, planes)


PlanesLowering = Callable[[KernelContext, tuple[ir.Value, ir.Value]], None]


def by_planes(lower: PlanesLowering) -> Callable[[KernelContext], None]:
    """The kernel of a pooling op, its (n, c) planes split across threads. Planes are
    independent, so results do not depend on the thread count."""
    def kernel(ctx: KernelContext) -> None:
        node = ctx.kernel.anchor
        assert node is not None
        n, c = (node.shape if node.op.endswith("_grad") else node.inputs[0].shape)[:2]
        kh, kw = Window.from_attrs(node.attrs, dilated=False).kernel
        work = max(1, node.size // max(n * c, 1)) * kh * kw
        parallel_range(ctx, n * c, max(1, -(-PARALLEL_GRAIN // work)),
                       lambda sub, lo, hi: lower(sub, (lo, hi)))
    return kernel


LOWERINGS = (
    Lowering("max_pool2d", by_planes(_max_pool)),
    Lowering("max_pool2d_gather", by_planes(_max_pool_gather)),
    Lowering("avg_pool2d", by_planes(_avg_pool)),
)
