"""Loop nests for elementwise kernels.

When every node of the kernel has the root's shape (or is a scalar), one flat loop over all
elements; otherwise a loop nest over the root's dimensions. Either way the innermost loop runs
`lanes` elements per iteration with `<lanes x T>` vectors and a scalar tail handles the rest.
The loop helpers here (`loop_nest`, `range_loop`, `nest_dims`) are shared by the reduction,
multi-output, scatter/gather and pooling emitters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import llvmlite.ir as ir

from graphc.codegen.context import KernelContext, Lowering
from graphc.codegen.fused.contract import contracted
from graphc.codegen.fused.expr import strides
from graphc.codegen.index import Idx
from graphc.codegen.llvm_types import I64
from graphc.codegen.loops import for_range
from graphc.codegen.parallel import parallel_range
from graphc.ir import Node
from graphc.ops import registry
from graphc.passes.kernels import KernelKind

Body = Callable[[int, list[Idx]], None]


def loop_nest(ctx: KernelContext, shape: Sequence[int], lanes: int, body: Body) -> None:
    """Call `body(lanes, idx)` over all indices of `shape`, innermost dim vectorized.

    Every loop is kept rolled (`loops.keep_rolled`): the body is vectorized already, and
    LLVM's unrolling of it only cost compile time (an MLP training step: 12% of LLVM's time,
    runtime within noise).
    """
    b = ctx.b

    def level(d: int, prefix: list[Idx]) -> None:
        if d == len(shape) - 1:
            n = shape[d]
            vec_end = (n // lanes) * lanes if lanes > 1 else 0
            if vec_end:
                with for_range(b, 0, vec_end, lanes, name=f"d{d}v", rolled=True) as i:
                    body(lanes, [*prefix, Idx(i, 1)])
            if vec_end < n:
                with for_range(b, vec_end, n, 1, name=f"d{d}", rolled=True) as i:
                    body(1, [*prefix, Idx(i, 0)])
            return
        with for_range(b, 0, shape[d], 1, name=f"d{d}", rolled=True) as i:
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
        with for_range(b, start, vec_end, lanes, name=f"{name}v", rolled=True) as i:
            body(lanes, Idx(i, 1))
    else:
        vec_end = start
    with for_range(b, vec_end, stop, 1, name=name, rolled=True) as i:
        body(1, Idx(i, 0))


# Below this many elements (of work) a kernel is not split across threads: waking the pool
# costs about as much as the work.
PARALLEL_GRAIN = 1 << 14


def flat_ok(kernel_nodes: Sequence[Node], inputs: Sequence[Node], shape: tuple[int, ...]
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
    if len(shape) >= 1 and (len(shape) == 1 or flat_ok(kernel.nodes, kernel.inputs, shape)):
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


def nest_dims(ctx: KernelContext, shape: Sequence[int], body: Callable[[list[Idx]], None]
               ) -> None:
    """Scalar loops over `shape` (no vectorization), calling body(idx)."""
    b = ctx.b

    def level(d: int, prefix: list[Idx]) -> None:
        if d == len(shape):
            body(prefix)
            return
        with for_range(b, 0, shape[d], 1, name=f"o{d}", rolled=True) as i:
            level(d + 1, [*prefix, Idx(i, 0)])

    level(0, [])


# FMAs decided on the emitted code (`contract.contracted`), as in reductions: an expression
# gets the same bits in its own kernel and as a reduction's side output.
LOWERINGS = (Lowering(KernelKind.ELEMENTWISE, contracted(emit_elementwise)),)
