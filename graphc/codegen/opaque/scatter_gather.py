"""Gather and scatter-add kernels: take, take_along_axis, take_grad, take_along_axis_grad.

Index semantics: an index i of an axis of size n is wrapped once if negative (i + n, as in
numpy). An index outside [-n, n) is an error, as in the reference interpreter: the kernel
reports it in the call's status word (`KernelContext.report_error`), the entry point stops
after the kernel and the caller raises a `GraphcError` naming the op. The kernel itself
still clamps every index into [0, n-1] so that it never reads or writes out of bounds
before the call stops. Constant indices are range-checked when the graph is built. An axis
of size 0 has no element to read: take/take_along_axis then produce zeros.

Gathers loop over the output (innermost dimension vectorized, see `kernels.loop_nest`):
where the index is the same for all lanes (the gathered axis is not the innermost one) the
clamp is scalar and the copy a contiguous vector load; otherwise the indices are loaded as
a vector, clamped per lane, and the values gathered.

Scatter-adds zero the output, then loop over g adding each element at its clamped index.
They vectorize only where the lanes of a vector are distinct output elements (the scatter
axis is not the innermost dimension and nothing broadcasts there); otherwise one element at
a time, so duplicate indices accumulate exactly like `np.add.at` (in g's C order).
Booleans accumulate with `or` (numpy's bool addition).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import llvmlite.ir as ir

from graphc.codegen.context import KernelContext, Lowering
from graphc.codegen.fused.expr import strides
from graphc.codegen.fused.loop_nests import loop_nest
from graphc.codegen.index import Idx, IndexBuilder, splat
from graphc.codegen.llvm_types import I1, I64, intrinsic
from graphc.codegen.window import memset_zero
from graphc.ir import DType, Node


def _clamp(ctx: KernelContext, v: ir.Value, n: int) -> ir.Value:
    """Wrap a negative index once, then clamp into [0, n-1] (scalar or vector i64); an index
    outside [-n, n) is reported as the kernel's error."""
    b = ctx.b
    lanes = v.type.count if isinstance(v.type, ir.VectorType) else 1
    zero, size, top = (splat(b, ir.Constant(I64, c), lanes) for c in (0, n, n - 1))
    low = splat(b, ir.Constant(I64, -n), lanes)
    bad = b.or_(b.icmp_signed("<", v, low), b.icmp_signed(">", v, top))
    if lanes > 1:
        reduce_or = intrinsic(b.module, "llvm.vector.reduce.or", I1, [bad.type], [bad.type])
        bad = b.call(reduce_or, [bad])
    ctx.report_error(bad)
    v = b.select(b.icmp_signed("<", v, zero), b.add(v, size), v)
    v = b.select(b.icmp_signed("<", v, zero), zero, v)
    return b.select(b.icmp_signed(">", v, top), top, v)


def _index(ctx: KernelContext, ix: IndexBuilder, ptr: ir.Value, dtype: DType, offset: Idx,
           n: int) -> Idx:
    """The clamped index stored at `offset` of an index buffer, as an Idx for `ix`'s lanes:
    scalar (coefficient 0) when all lanes read the same index, else a per-lane vector."""
    b = ix.b
    if ix.lanes == 1 or (offset.vec is None and offset.coef == 0):
        raw = IndexBuilder(b, 1).load(ptr, dtype, Idx(offset.base))
        wide = b.sext(raw, I64) if dtype == DType.int32 else raw
        return Idx(_clamp(ctx, wide, n), 0)
    raw = ix.load(ptr, dtype, offset)
    if dtype == DType.int32:
        raw = b.sext(raw, ir.VectorType(I64, ix.lanes))
    return ix.from_vector(_clamp(ctx, raw, n))


def _lanes(ctx: KernelContext, nodes: Sequence[Node]) -> int:
    return ctx.lanes_for(list(nodes))


def _zero_output(ctx: KernelContext, node: Node) -> None:
    memset_zero(ctx.b, ctx.out, node.size * node.dtype.itemsize)


def _accumulate(b: ir.IRBuilder, dtype: DType, old: ir.Value, new: ir.Value) -> ir.Value:
    if dtype.is_float:
        return b.fadd(old, new)
    if dtype == DType.bool:
        return b.or_(old, new)
    return b.add(old, new)


def _broadcast_pick(idx: Sequence[Idx], shape: Sequence[int], full: Sequence[int],
                    ix: IndexBuilder) -> list[Idx]:
    """The index into a same-rank operand of `shape` broadcast to `full` (size-1 dims -> 0)."""
    return [ix.const(0) if s == 1 and f != 1 else i for i, s, f in zip(idx, shape, full)]


# --- gathers ----------------------------------------------------------------------------------

def _take(ctx: KernelContext) -> None:
    node = ctx.kernel.anchor
    assert node is not None
    x, ind = node.inputs
    axis = node.attrs["axis"] % x.ndim
    n = x.shape[axis]
    if node.size == 0:
        return
    if n == 0:
        _zero_output(ctx, node)
        return
    k = ind.ndim

    def body(lanes: int, idx: list[Idx]) -> None:
        ix = IndexBuilder(ctx.b, lanes)
        pos = _index(ctx, ix, ctx.ptr(ind), ind.dtype, ix.linear(idx[axis:axis + k],
                                                                 strides(ind.shape)), n)
        src = [*idx[:axis], pos, *idx[axis + k:]]
        value = ix.load(ctx.ptr(x), x.dtype, ix.linear(src, strides(x.shape)))
        ix.store(ctx.out, node.dtype, ix.linear(idx, strides(node.shape)), value)

    loop_nest(ctx, node.shape, _lanes(ctx, [x, ind]), body)


def _take_along_axis(ctx: KernelContext) -> None:
    node = ctx.kernel.anchor
    assert node is not None
    x, ind = node.inputs
    axis = node.attrs["axis"] % x.ndim
    n = x.shape[axis]
    if node.size == 0:
        return
    if n == 0:
        _zero_output(ctx, node)
        return

    def body(lanes: int, idx: list[Idx]) -> None:
        ix = IndexBuilder(ctx.b, lanes)
        at = _broadcast_pick(idx, ind.shape, node.shape, ix)
        pos = _index(ctx, ix, ctx.ptr(ind), ind.dtype, ix.linear(at, strides(ind.shape)), n)
        src = _broadcast_pick(idx, x.shape, node.shape, ix)
        src[axis] = pos
        value = ix.load(ctx.ptr(x), x.dtype, ix.linear(src, strides(x.shape)))
        ix.store(ctx.out, node.dtype, ix.linear(idx, strides(node.shape)), value)

    loop_nest(ctx, node.shape, _lanes(ctx, [x, ind]), body)


# --- scatter-adds -----------------------------------------------------------------------------

def _scatter_add(ctx: KernelContext, node: Node, g: Node, lanes: int,
                 target_index: Callable[[IndexBuilder, list[Idx]], list[Idx]]) -> None:
    """out = 0; out[target_index(idx)] += g[idx] over g's shape."""
    b = ctx.b
    _zero_output(ctx, node)
    if g.size == 0 or node.size == 0:
        return

    def body(n_lanes: int, idx: list[Idx]) -> None:
        ix = IndexBuilder(b, n_lanes)
        dst = ix.linear(target_index(ix, idx), strides(node.shape))
        value = ix.load(ctx.ptr(g), g.dtype, ix.linear(idx, strides(g.shape)))
        old = ix.load(ctx.out, node.dtype, dst)
        ix.store(ctx.out, node.dtype, dst, _accumulate(b, node.dtype, old, value))

    loop_nest(ctx, g.shape, lanes, body)


def _take_grad(ctx: KernelContext) -> None:
    node = ctx.kernel.anchor
    assert node is not None
    g, ind = node.inputs
    axis, size = node.attrs["axis"], node.attrs["size"]
    k = ind.ndim
    # Lanes run along g's innermost dim: distinct outputs only if it is not an index dim.
    lanes = _lanes(ctx, [g, ind]) if axis + k < g.ndim else 1

    def target(ix: IndexBuilder, idx: list[Idx]) -> list[Idx]:
        pos = _index(ctx, ix, ctx.ptr(ind), ind.dtype, ix.linear(idx[axis:axis + k],
                                                                 strides(ind.shape)), size)
        return [*idx[:axis], pos, *idx[axis + k:]]

    _scatter_add(ctx, node, g, lanes, target)


def _take_along_axis_grad(ctx: KernelContext) -> None:
    node = ctx.kernel.anchor
    assert node is not None
    g, ind = node.inputs
    shape = node.shape
    axis = node.attrs["axis"] % len(shape)
    last = len(shape) - 1
    vector_ok = axis != last and shape[last] == g.shape[last] and ind.shape[last] == 1
    lanes = _lanes(ctx, [g, ind]) if vector_ok else 1

    def target(ix: IndexBuilder, idx: list[Idx]) -> list[Idx]:
        at = _broadcast_pick(idx, ind.shape, g.shape, ix)
        pos = _index(ctx, ix, ctx.ptr(ind), ind.dtype, ix.linear(at, strides(ind.shape)),
                     shape[axis])
        dst = _broadcast_pick(idx, shape, g.shape, ix)
        dst[axis] = pos
        return dst

    _scatter_add(ctx, node, g, lanes, target)


def _out_of_range(node: Node) -> str:
    """What a reported error of `node`'s kernel means (the reference says the same)."""
    ind = node.inputs[1]
    axis = node.attrs["axis"]
    if node.op in ("take", "take_along_axis"):
        size = node.inputs[0].shape[axis]
    elif node.op == "take_grad":
        size = node.attrs["size"]
    else:
        size = node.attrs["shape"][axis]
    return (f"an index in %{ind.name} is out of range for axis {axis} with size {size} "
            f"(valid: -{size} <= i < {size})")


LOWERINGS = (
    Lowering("take", _take, failure=_out_of_range),
    Lowering("take_along_axis", _take_along_axis, failure=_out_of_range),
    Lowering("take_grad", _take_grad, failure=_out_of_range),
    Lowering("take_along_axis_grad", _take_along_axis_grad, failure=_out_of_range),
)
