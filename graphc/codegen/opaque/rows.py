"""Row-wise kernels: softmax and log_softmax (three passes over each row: max, sum of exp,
normalize; vectorized when the axis is the innermost one; the max and the sum are
`RowReduction`s, so the sum of exp is blocked and pairwise like `gc.sum`), argmax and argmin
(first index of the extreme value; a NaN counts as the extreme, as in numpy: a sequential
scan, exact).
"""

from __future__ import annotations

from collections.abc import Callable

import llvmlite.ir as ir

from graphc.codegen.context import KernelContext, Lowering
from graphc.codegen.fused.expr import strides
from graphc.codegen.fused.loop_nests import nest_dims
from graphc.codegen.fused.row_reduction import RowReduction
from graphc.codegen.gemm.helpers import carried_loop
from graphc.codegen.index import Idx, IndexBuilder, splat
from graphc.codegen.llvm_types import I64, compute_type, const, intrinsic
from graphc.codegen.loops import entry_alloca, for_range
from graphc.codegen.vecmath import functions as vecmath
from graphc.ir import DType


def _outer_loops(ctx: KernelContext, shape: tuple[int, ...], skip: set[int],
                 body: Callable[[dict[int, ir.Value]], None]) -> None:
    """Scalar loops over every dim of `shape` not in `skip`; body gets {dim: index}."""
    dims = [d for d in range(len(shape)) if d not in skip]
    nest_dims(ctx, [shape[d] for d in dims],
              lambda idx: body({d: i.base for d, i in zip(dims, idx)}))


def _row_base(b: ir.IRBuilder, prefix: dict[int, ir.Value], st: list[int]) -> ir.Value:
    total: ir.Value = ir.Constant(I64, 0)
    for d, i in prefix.items():
        if st[d]:
            total = b.add(total, b.mul(i, ir.Constant(I64, st[d])))
    return total


def _softmax(ctx: KernelContext) -> None:
    node = ctx.kernel.anchor
    assert node is not None
    b = ctx.b
    x = node.inputs[0]
    axis = node.attrs["axis"]
    n = node.shape[axis]
    st = strides(node.shape)
    stride = st[axis]
    dtype = node.dtype
    lanes = ctx.target.lanes(dtype.itemsize) if stride == 1 else 1
    src, out = ctx.ptr(x), ctx.out
    log_form = node.op == "log_softmax"

    def row(prefix: dict[int, ir.Value]) -> None:
        base = _row_base(b, prefix, st)
        # Pass 1: the maximum.
        m = _row_reduce(ctx, src, dtype, base, stride, n, lanes, "max", lambda v, _n: v)
        # Pass 2: sum of exp(x - m) (and exp values stored for softmax).

        def shifted_exp(v: ir.Value, n_lanes: int) -> ir.Value:
            return vecmath.exp(b, b.fsub(v, splat(b, m, n_lanes)))

        store_to = None if log_form else out
        total = _row_reduce(ctx, src, dtype, base, stride, n, lanes, "sum", shifted_exp,
                            store_to=store_to)
        # Pass 3: normalize.
        if log_form:
            shift = b.fadd(m, vecmath.log(b, total))
            _row_map(ctx, src, out, dtype, base, stride, n, lanes,
                     lambda v, k: b.fsub(v, splat(b, shift, k)))
        else:
            inv = b.fdiv(const(dtype, 1.0), total)
            _row_map(ctx, out, out, dtype, base, stride, n, lanes,
                     lambda v, k: b.fmul(v, splat(b, inv, k)))

    _outer_loops(ctx, node.shape, {axis}, row)


def _row_reduce(ctx: KernelContext, src: ir.Value, dtype: DType, base: ir.Value, stride: int,
                n: int, lanes: int, op: str, f: Callable[[ir.Value, int], ir.Value],
                store_to: ir.Value | None = None) -> ir.Value:
    """op-reduce f(x[base + i*stride]) over i < n; optionally store f(x) to `store_to`.

    The order is `RowReduction`'s (see `graphc.codegen.fused.reduction`): K accumulators per
    block, float sums' blocks combined pairwise, so a sum of exp over a row of n elements has an
    error of at most about (S + 3 + log2(n / S))·u relative to the sum, not n·u."""
    b = ctx.b
    red = RowReduction(b, op, dtype, lanes, n, 1)
    red.begin()

    def value(k: int, i: Idx) -> ir.Value:
        # Vectors only when the row is contiguous (lanes > 1 only for stride 1).
        step = i.base if stride == 1 else b.mul(i.base, ir.Constant(I64, stride))
        off = Idx(b.add(base, step), 1 if k > 1 else 0)
        ix = IndexBuilder(b, k)
        v = f(ix.load(src, dtype, off), k)
        if store_to is not None:
            ix.store(store_to, dtype, off, v)
        return v

    red.row(value)
    return red.finish()


def _row_map(ctx: KernelContext, src: ir.Value, dst: ir.Value, dtype: DType, base: ir.Value,
             stride: int, n: int, lanes: int, f: Callable[[ir.Value, int], ir.Value]) -> None:
    b = ctx.b
    vec_end = (n // lanes) * lanes if lanes > 1 else 0
    if vec_end:
        ix = IndexBuilder(b, lanes)
        with for_range(b, 0, vec_end, lanes, name="mv", rolled=True) as i:
            off = Idx(b.add(base, i), 1)
            ix.store(dst, dtype, off, f(ix.load(src, dtype, off), lanes))
    ix1 = IndexBuilder(b, 1)
    with for_range(b, vec_end, n, 1, name="m", rolled=True) as i:
        off = Idx(b.add(base, b.mul(i, ir.Constant(I64, stride))))
        ix1.store(dst, dtype, off, f(ix1.load(src, dtype, off), 1))




def _argext(ctx: KernelContext) -> None:
    node = ctx.kernel.anchor
    assert node is not None
    b = ctx.b
    x = node.inputs[0]
    dtype = x.dtype
    axes = tuple(node.attrs["axes"])
    src, out = ctx.ptr(x), ctx.out
    better = "<" if node.op == "argmin" else ">"
    best_v = entry_alloca(b, compute_type(dtype))
    best_i = entry_alloca(b, I64)

    lanes = ctx.target.lanes(dtype.itemsize) if dtype != DType.bool else 1

    def scan(base: ir.Value, stride: int, n: int) -> ir.Value:
        if stride == 1 and lanes > 1 and n >= 2 * lanes:
            return _vector_scan(b, src, dtype, base, n, lanes, better)
        ix = IndexBuilder(b, 1)
        b.store(ix.load(src, dtype, Idx(base)), best_v)
        b.store(ir.Constant(I64, 0), best_i)
        with for_range(b, 1, n, 1, name="a") as i:
            v = ix.load(src, dtype, Idx(b.add(base, b.mul(i, ir.Constant(I64, stride)))))
            cur = b.load(best_v)
            if dtype.is_float:
                take = b.or_(b.fcmp_ordered(better, v, cur),
                             b.and_(b.fcmp_unordered("uno", v, v),
                                    b.fcmp_ordered("ord", cur, cur)))
            else:
                take = b.icmp_signed(better, v, cur)
            b.store(b.select(take, v, cur), best_v)
            b.store(b.select(take, i, b.load(best_i)), best_i)
        return b.load(best_i)

    ix = IndexBuilder(b, 1)
    if len(axes) == x.ndim:
        ix.store(out, DType.int64, Idx(ir.Constant(I64, 0)), scan(ir.Constant(I64, 0), 1,
                                                                  x.size))
        return
    (axis,) = axes
    st = strides(x.shape)
    out_st = strides(node.shape)

    def row(prefix: dict[int, ir.Value]) -> None:
        base = _row_base(b, prefix, st)
        result = scan(base, st[axis], x.shape[axis])
        # Output index: the input index without `axis` (or with it at 0 for keepdims).
        out_idx = []
        for d in range(x.ndim):
            if d == axis:
                if node.attrs["keepdims"]:
                    out_idx.append(ir.Constant(I64, 0))
                continue
            out_idx.append(prefix[d])
        offset: ir.Value = ir.Constant(I64, 0)
        for i, s in zip(out_idx, out_st):
            offset = b.add(offset, b.mul(i, ir.Constant(I64, s)))
        ix.store(out, DType.int64, Idx(offset), result)

    _outer_loops(ctx, x.shape, {axis}, row)


def _vector_scan(b: ir.IRBuilder, src: ir.Value, dtype: DType, base: ir.Value, n: int,
                 lanes: int, better: str) -> ir.Value:
    """The index of the first extreme of src[base:base+n] (contiguous), as the sequential
    scan defines it (a NaN counts as the extreme: the first NaN wins), in two vector passes:
    the extreme (and whether any NaN occurs), then the smallest index holding it."""
    vt = compute_type(dtype, lanes)
    it = ir.VectorType(I64, lanes)
    full = n // lanes * lanes
    isz = dtype.itemsize

    def vec(c: ir.Value) -> ir.Value:
        ptr = b.gep(src, [b.add(base, c)], inbounds=True, source_etype=compute_type(dtype))
        return b.load(ptr, typ=vt, align=isz)

    def elem(c: ir.Value | int) -> ir.Value:
        i = b.add(base, c if isinstance(c, ir.Value) else ir.Constant(I64, c))
        ptr = b.gep(src, [i], inbounds=True, source_etype=compute_type(dtype))
        return b.load(ptr, typ=compute_type(dtype), align=isz)

    def pick(x: ir.Value, y: ir.Value) -> ir.Value:
        take = b.fcmp_ordered(better, x, y) if dtype.is_float else b.icmp_signed(better, x, y)
        return b.select(take, x, y)

    def is_nan(x: ir.Value) -> ir.Value:
        return b.fcmp_unordered("uno", x, x)

    # Pass 1: the extreme of the non-NaN values, and any NaN.
    first = vec(ir.Constant(I64, 0))
    init = [first] + ([is_nan(first)] if dtype.is_float else [])

    def step(c: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
        v = vec(c)
        out = [pick(v, acc[0])]
        if dtype.is_float:
            out.append(b.or_(acc[1], is_nan(v)))
        return out

    acc = carried_loop(b, lanes, full, init, step, step=lanes, name="amx")
    best = b.extract_element(acc[0], ir.Constant(I64, 0))
    for lane in range(1, lanes):
        best = pick(b.extract_element(acc[0], ir.Constant(I64, lane)), best)
    any_nan = None
    for i in range(full, n):
        x = elem(i)
        best = pick(x, best)
        if dtype.is_float:
            any_nan = is_nan(x) if any_nan is None else b.or_(any_nan, is_nan(x))
    if dtype.is_float:
        reduce_or = intrinsic(b.module, "llvm.vector.reduce.or", ir.IntType(1),
                              [acc[1].type], [acc[1].type])
        lanes_nan = b.call(reduce_or, [acc[1]])
        any_nan = lanes_nan if any_nan is None else b.or_(any_nan, lanes_nan)

    def hit(x: ir.Value, k: int) -> ir.Value:
        target = splat(b, best, k)
        if not dtype.is_float:
            return b.icmp_signed("==", x, target)
        nan_lanes = splat(b, any_nan, k)
        return b.select(nan_lanes, is_nan(x), b.fcmp_ordered("==", x, target))

    # Pass 2: the smallest index that holds it (lane-wise minimum of matching indices).
    none = ir.Constant(it, [n] * lanes)
    iota = ir.Constant(it, list(range(lanes)))

    def find(c: ir.Value, acc2: list[ir.Value]) -> list[ir.Value]:
        idx = b.add(iota, splat(b, c, lanes))
        cand = b.select(hit(vec(c), lanes), idx, none)
        return [b.select(b.icmp_signed("<", cand, acc2[0]), cand, acc2[0])]

    (where,) = carried_loop(b, 0, full, [none], find, step=lanes, name="afd")
    found = b.extract_element(where, ir.Constant(I64, 0))
    for lane in range(1, lanes):
        e = b.extract_element(where, ir.Constant(I64, lane))
        found = b.select(b.icmp_signed("<", e, found), e, found)
    for i in range(full, n):
        x = elem(i)
        match = hit(x, 1)
        found = b.select(b.and_(match, b.icmp_signed("==", found, ir.Constant(I64, n))),
                         ir.Constant(I64, i), found)
    return found


LOWERINGS = (
    Lowering("softmax", _softmax),
    Lowering("log_softmax", _softmax),
    Lowering("argmax", _argext),
    Lowering("argmin", _argext),
)
