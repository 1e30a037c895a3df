"""Loop nests for elementwise and reduction kernels.

Elementwise: when every node of the kernel has the root's shape (or is a scalar), one flat
loop over all elements; otherwise a loop nest over the root's dimensions. Either way the
innermost loop runs `lanes` elements per iteration with `<lanes x T>` vectors and a scalar
tail handles the rest.

Reductions (`sum`, `max`, `min`, `prod` over any axes, with the kernel's inlined input
expression and optional elementwise epilogue):
- innermost input axis reduced: for each output element, a vector accumulator runs over the
  reduced axes (innermost vectorized), then a horizontal reduction (a shuffle tree);
- innermost input axis kept: the output is initialized to the identity and updated with
  contiguous vector read-modify-writes while the loops walk the input in memory order.
The epilogue then runs as an elementwise pass over the output, in place.
Summation order differs from numpy's pairwise summation; results agree to float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import llvmlite.ir as ir

from graphc.codegen.context import KernelContext, Lowering
from graphc.codegen.fused import op_table as ew
from graphc.codegen.fused.expr import strides
from graphc.codegen.index import Idx
from graphc.codegen.llvm_types import I64, compute_type, const
from graphc.codegen.loops import entry_alloca, for_range
from graphc.codegen.parallel import parallel_range
from graphc.ir import DType, Node
from graphc.ops import registry
from graphc.passes.fuse import KernelKind

Body = Callable[[int, list[Idx]], None]


def loop_nest(ctx: KernelContext, shape: Sequence[int], lanes: int, body: Body) -> None:
    """Call `body(lanes, idx)` over all indices of `shape`, innermost dim vectorized."""
    b = ctx.b

    def level(d: int, prefix: list[Idx]) -> None:
        if d == len(shape) - 1:
            n = shape[d]
            vec_end = (n // lanes) * lanes if lanes > 1 else 0
            if vec_end:
                with for_range(b, 0, vec_end, lanes, name=f"d{d}v") as i:
                    body(lanes, [*prefix, Idx(i, 1)])
            if vec_end < n:
                with for_range(b, vec_end, n, 1, name=f"d{d}") as i:
                    body(1, [*prefix, Idx(i, 0)])
            return
        with for_range(b, 0, shape[d], 1, name=f"d{d}") as i:
            level(d + 1, [*prefix, Idx(i, 0)])

    if len(shape) == 0:
        body(1, [])
        return
    if math.prod(shape) == 0:
        return
    level(0, [])


def range_loop(b: ir.IRBuilder, start: ir.Value, stop: ir.Value, lanes: int,
               body: Callable[[int, Idx], None], name: str = "r") -> None:
    """body(lanes, Idx) over [start, stop) (dynamic bounds): vector steps, then a tail."""
    if lanes > 1:
        count = b.sub(stop, start)
        vec_end = b.add(start, b.mul(b.sdiv(count, ir.Constant(I64, lanes)),
                                     ir.Constant(I64, lanes)))
        with for_range(b, start, vec_end, lanes, name=f"{name}v") as i:
            body(lanes, Idx(i, 1))
    else:
        vec_end = start
    with for_range(b, vec_end, stop, 1, name=name) as i:
        body(1, Idx(i, 0))


# Below this many elements (of work) a kernel is not split across threads: waking the pool
# costs about as much as the work.
PARALLEL_GRAIN = 1 << 14


def _flat_ok(kernel_nodes: Sequence[Node], inputs: Sequence[Node], shape: tuple[int, ...]
             ) -> bool:
    for n in kernel_nodes:
        if not registry.OPS[n.op].fusion.pointwise:
            return False
        if n.shape != shape and n.size != 1:
            return False
    return all(i.shape == shape or i.size == 1 for i in inputs)


def emit_elementwise(ctx: KernelContext) -> None:
    """out[i] = root(i) over the root's shape."""
    kernel = ctx.kernel
    root = kernel.root
    lanes = ctx.lanes_for([*kernel.nodes, *kernel.inputs])

    def store_at(c: KernelContext, n_lanes: int, idx: list[Idx], flat: bool = False) -> None:
        ev = c.evaluator(n_lanes, flat=flat)
        value = ev.at(root, idx)
        offset = idx[0] if flat else ev.ix.linear(idx, strides(root.shape))
        ev.ix.store(c.out, root.dtype, offset, value)

    shape = root.shape
    if root.op == "concat" and root.size:
        _emit_concat_parts(ctx, lanes)
        return
    if len(shape) >= 1 and (len(shape) == 1 or _flat_ok(kernel.nodes, kernel.inputs, shape)):
        # One flat loop over the elements (a 1-D root is its own flat index; otherwise every
        # operand has the root's shape or one element, see `Evaluator.flat`).
        flat = len(shape) > 1

        def chunk(c: KernelContext, start: ir.Value, stop: ir.Value) -> None:
            range_loop(c.b, start, stop, lanes,
                       lambda n_lanes, i: store_at(c, n_lanes, [i], flat))

        parallel_range(ctx, root.size, PARALLEL_GRAIN, chunk, align=lanes)
    elif len(shape) == 0 or root.size == 0:
        loop_nest(ctx, shape, lanes, lambda n_lanes, idx: store_at(ctx, n_lanes, idx))
    else:
        # Split the outermost dimension; each chunk runs the full nest below it.
        rows = shape[0]
        row_size = root.size // max(rows, 1)

        def rows_chunk(c: KernelContext, start: ir.Value, stop: ir.Value) -> None:
            with for_range(c.b, start, stop, 1, name="d0") as i:
                loop_nest(c, shape[1:], lanes,
                          lambda n_lanes, idx: store_at(c, n_lanes, [Idx(i), *idx]))

        parallel_range(ctx, rows, max(1, PARALLEL_GRAIN // max(row_size, 1)), rows_chunk)


def _emit_concat_parts(ctx: KernelContext, lanes: int) -> None:
    """A kernel whose root is a concat: one loop nest per operand over its own block of the
    output, so each part is evaluated alone with affine indices. (Evaluated element by
    element, a concat computes every operand at clamped indices — gathers — and selects.)
    Each part splits its outermost dimension across threads."""
    root = ctx.kernel.root
    axis = root.attrs["axis"]
    out_strides = strides(root.shape)
    offset = 0
    for src in root.inputs:
        shift = offset
        offset += src.shape[axis]
        if src.size == 0:
            continue

        def store(c: KernelContext, n_lanes: int, idx: list[Idx], src: Node = src,
                  shift: int = shift) -> None:
            ev = c.evaluator(n_lanes)
            value = ev.at(src, idx)
            at = list(idx)
            at[axis] = ev.ix.affine(idx[axis], 1, shift)
            ev.ix.store(c.out, root.dtype, ev.ix.linear(at, out_strides), value)

        def rows(c: KernelContext, start: ir.Value, stop: ir.Value, src: Node = src,
                 store: Callable[..., None] = store) -> None:
            with for_range(c.b, start, stop, 1, name="d0") as i:
                loop_nest(c, src.shape[1:], lanes,
                          lambda n_lanes, idx: store(c, n_lanes, [Idx(i), *idx]))

        if src.ndim == 1:
            loop_nest(ctx, src.shape, lanes, lambda n_lanes, idx, s=store: s(ctx, n_lanes, idx))
            continue
        row_size = src.size // src.shape[0]
        parallel_range(ctx, src.shape[0], max(1, PARALLEL_GRAIN // max(row_size, 1)), rows)


# --- reductions -----------------------------------------------------------------------------

def combine(b: ir.IRBuilder, op: str, dtype: DType, acc: ir.Value, x: ir.Value) -> ir.Value:
    if op == "sum":
        return b.fadd(acc, x) if dtype.is_float else b.add(acc, x)
    if op == "prod":
        return b.fmul(acc, x) if dtype.is_float else b.mul(acc, x)
    if op == "max":
        return ew._max(b, dtype, acc, x)
    return ew._min(b, dtype, acc, x)


def identity(op: str, dtype: DType, lanes: int) -> ir.Constant:
    if op == "sum":
        return const(dtype, 0, lanes)
    if op == "prod":
        return const(dtype, 1, lanes)
    if dtype.is_float:
        return const(dtype, -math.inf if op == "max" else math.inf, lanes)
    bits = dtype.itemsize * 8
    return const(dtype, -(2 ** (bits - 1)) if op == "max" else 2 ** (bits - 1) - 1, lanes)


def horizontal(b: ir.IRBuilder, op: str, dtype: DType, v: ir.Value, lanes: int) -> ir.Value:
    """Reduce a `<lanes x T>` vector to a scalar with a shuffle tree (lanes a power of 2)."""
    width = lanes
    while width > 1:
        half = width // 2
        undef = ir.Constant(v.type, ir.Undefined)
        lo = b.shuffle_vector(v, undef, ir.Constant(ir.VectorType(ir.IntType(32), half),
                                                    list(range(half))))
        hi = b.shuffle_vector(v, undef, ir.Constant(ir.VectorType(ir.IntType(32), half),
                                                    list(range(half, width))))
        v = combine(b, op, dtype, lo, hi)
        width = half
    return b.extract_element(v, ir.Constant(ir.IntType(32), 0))


def emit_reduction(ctx: KernelContext) -> None:
    kernel = ctx.kernel
    anchor = kernel.anchor
    assert anchor is not None
    op = anchor.op
    dtype = anchor.dtype
    src = anchor.inputs[0]
    axes = set(anchor.attrs["axes"])
    in_shape = src.shape
    rank = len(in_shape)
    out = ctx.out
    # Output element stride for each input dim (0 for reduced dims).
    out_strides_full = strides(anchor.shape)
    ostride: list[int] = []
    j = 0
    keepdims = anchor.attrs["keepdims"]
    for d in range(rank):
        if d in axes:
            ostride.append(0)
            if keepdims:
                j += 1
        else:
            ostride.append(out_strides_full[j])
            j += 1
    lanes = ctx.lanes_for([*kernel.nodes, *kernel.inputs])
    # The anchor's value is read back from the output buffer by the epilogue.
    ctx.ptrs[anchor] = out

    if rank == 0 or (rank - 1) in axes:
        kept = [d for d in range(rank) if d not in axes]
        reduced = [d for d in range(rank) if d in axes]
        kept_shape = [in_shape[d] for d in kept]
        reduced_size = math.prod(in_shape[d] for d in reduced)

        def per_output(c: KernelContext, prefix: dict[int, Idx]) -> None:
            cb = c.b
            vec_acc = entry_alloca(cb, compute_type(dtype, lanes)) if lanes > 1 else None
            sc_acc = entry_alloca(cb, compute_type(dtype, 1))
            if vec_acc is not None:
                cb.store(identity(op, dtype, lanes), vec_acc)
            cb.store(identity(op, dtype, 1), sc_acc)

            def body(n_lanes: int, idx: list[Idx]) -> None:
                full = dict(prefix)
                full.update({d: i for d, i in zip(reduced, idx)})
                ev = c.evaluator(n_lanes)
                x = ev.at(src, [full[d] for d in range(rank)])
                acc = vec_acc if n_lanes > 1 else sc_acc
                cb.store(combine(cb, op, dtype, cb.load(acc), x), acc)

            loop_nest(c, [in_shape[d] for d in reduced], lanes, body)
            total = cb.load(sc_acc)
            if vec_acc is not None:
                total = combine(cb, op, dtype,
                                 horizontal(cb, op, dtype, cb.load(vec_acc), lanes), total)
            ev = c.evaluator(1)
            offset = ev.ix.linear([prefix[d] for d in kept], [ostride[d] for d in kept])
            ev.ix.store(c.out, dtype, offset, total)

        if not kept:
            per_output(ctx, {})
        else:
            # Split the first kept dimension: every output element is still reduced by one
            # thread in one fixed order, so results do not depend on the thread count.
            rest = kept_shape[1:]
            work_per_row = max(1, math.prod(rest) * reduced_size)

            def rows(c: KernelContext, start: ir.Value, stop: ir.Value) -> None:
                with for_range(c.b, start, stop, 1, name="k0") as i0:
                    nest_dims(c, rest, lambda idx: per_output(
                        c, {d: i for d, i in zip(kept, [Idx(i0), *idx])}))

            parallel_range(ctx, kept_shape[0], max(1, PARALLEL_GRAIN // work_per_row), rows)
    else:
        # The innermost axis is kept: split it into column chunks; each chunk initializes
        # and accumulates its own output columns, walking the input in memory order.
        inner = in_shape[-1]

        def columns(c: KernelContext, start: ir.Value, stop: ir.Value) -> None:
            cb = c.b

            def outer(prefix_shape: Sequence[int], fn: Callable[[list[Idx]], None]) -> None:
                nest_dims(c, prefix_shape, fn)

            def init(prefix: list[Idx]) -> None:
                def one(n_lanes: int, i: Idx) -> None:
                    ev = c.evaluator(n_lanes)
                    ev.ix.store(c.out, dtype, ev.ix.linear([*prefix, i], out_strides_full),
                                identity(op, dtype, n_lanes))

                range_loop(cb, start, stop, lanes, one, name="init")

            outer(anchor.shape[:-1], init)

            def accumulate(prefix: list[Idx]) -> None:
                def one(n_lanes: int, i: Idx) -> None:
                    ev = c.evaluator(n_lanes)
                    idx = [*prefix, i]
                    x = ev.at(src, idx)
                    offset = ev.ix.linear(idx, ostride)
                    acc = ev.ix.load(c.out, dtype, offset)
                    ev.ix.store(c.out, dtype, offset, combine(cb, op, dtype, acc, x))

                range_loop(cb, start, stop, lanes, one, name="acc")

            outer(in_shape[:-1], accumulate)

        work_per_column = max(1, src.size // max(inner, 1))
        parallel_range(ctx, inner, max(lanes, PARALLEL_GRAIN // work_per_column), columns,
                       align=lanes)

    if kernel.root is not anchor:
        emit_elementwise(ctx)


def nest_dims(ctx: KernelContext, shape: Sequence[int], body: Callable[[list[Idx]], None]
               ) -> None:
    """Scalar loops over `shape` (no vectorization), calling body(idx)."""
    b = ctx.b

    def level(d: int, prefix: list[Idx]) -> None:
        if d == len(shape):
            body(prefix)
            return
        with for_range(b, 0, shape[d], 1, name=f"o{d}") as i:
            level(d + 1, [*prefix, Idx(i, 0)])

    level(0, [])


LOWERINGS = (
    Lowering(KernelKind.ELEMENTWISE, emit_elementwise),
    Lowering(KernelKind.REDUCTION, emit_reduction),
)
