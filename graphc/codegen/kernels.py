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

from graphc.codegen import elementwise as ew
from graphc.codegen.context import KernelContext
from graphc.codegen.expr import strides
from graphc.codegen.index import Idx
from graphc.codegen.loops import entry_alloca, for_range
from graphc.codegen.types import I64, compute_type, const
from graphc.ir import DType, Node
from graphc.ops import registry
from graphc.ops.opdef import Fusion

Body = Callable[[int, list[Idx]], None]


def loop_nest(ctx: KernelContext, shape: Sequence[int], lanes: int, body: Body) -> None:
    """Call `body(lanes, idx)` over all indices of `shape`, innermost dim vectorized."""
    b = ctx.b
    ix_const = [Idx(ir.Constant(I64, 0))]

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
    del ix_const
    level(0, [])


def _flat_ok(kernel_nodes: Sequence[Node], inputs: Sequence[Node], shape: tuple[int, ...]
             ) -> bool:
    for n in kernel_nodes:
        if registry.OPS[n.op].fusion not in (Fusion.ELEMENTWISE, Fusion.BROADCAST):
            return False
        if n.shape != shape and n.size != 1:
            return False
    return all(i.shape == shape or i.size == 1 for i in inputs)


def emit_elementwise(ctx: KernelContext, overrides_for: Callable[[int], dict] | None = None
                     ) -> None:
    """out[i] = root(i) over the root's shape."""
    kernel = ctx.kernel
    root = kernel.root
    lanes = ctx.lanes_for([*kernel.nodes, *kernel.inputs])
    out = ctx.out

    def body(n_lanes: int, idx: list[Idx]) -> None:
        ev = ctx.evaluator(n_lanes)
        value = ev.at(root, idx)
        offset = ev.ix.linear(idx, strides(root.shape))
        ev.ix.store(out, root.dtype, offset, value)

    shape = root.shape
    if len(shape) > 1 and _flat_ok(kernel.nodes, kernel.inputs, shape):
        # One flat loop: the index [0, ..., 0, i] addresses element i of every same-shape
        # operand (C order), and size-1 operands broadcast to offset 0.
        flat = (root.size,)
        zeros = [Idx(ir.Constant(I64, 0))] * (len(shape) - 1)
        loop_nest(ctx, flat, lanes, lambda n_lanes, idx: body(n_lanes, [*zeros, *idx]))
    else:
        loop_nest(ctx, shape, lanes, body)


# --- reductions -----------------------------------------------------------------------------

def _combine(b: ir.IRBuilder, op: str, dtype: DType, acc: ir.Value, x: ir.Value) -> ir.Value:
    if op == "sum":
        return b.fadd(acc, x) if dtype.is_float else b.add(acc, x)
    if op == "prod":
        return b.fmul(acc, x) if dtype.is_float else b.mul(acc, x)
    if op == "max":
        return ew._max(b, dtype, acc, x)
    return ew._min(b, dtype, acc, x)


def _identity(op: str, dtype: DType, lanes: int) -> ir.Constant:
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
        v = _combine(b, op, dtype, lo, hi)
        width = half
    return b.extract_element(v, ir.Constant(ir.IntType(32), 0))


def emit_reduction(ctx: KernelContext) -> None:
    kernel = ctx.kernel
    anchor = kernel.anchor
    assert anchor is not None
    b = ctx.b
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

        def per_output(prefix: dict[int, Idx]) -> None:
            vec_acc = entry_alloca(b, compute_type(dtype, lanes)) if lanes > 1 else None
            sc_acc = entry_alloca(b, compute_type(dtype, 1))
            if vec_acc is not None:
                b.store(_identity(op, dtype, lanes), vec_acc)
            b.store(_identity(op, dtype, 1), sc_acc)

            def body(n_lanes: int, idx: list[Idx]) -> None:
                full = dict(prefix)
                full.update({d: i for d, i in zip(reduced, idx)})
                ev = ctx.evaluator(n_lanes)
                x = ev.at(src, [full[d] for d in range(rank)])
                slot = vec_acc if n_lanes > 1 else sc_acc
                b.store(_combine(b, op, dtype, b.load(slot), x), slot)

            loop_nest(ctx, [in_shape[d] for d in reduced], lanes, body)
            total = b.load(sc_acc)
            if vec_acc is not None:
                total = _combine(b, op, dtype, horizontal(b, op, dtype, b.load(vec_acc), lanes),
                                 total)
            ev = ctx.evaluator(1)
            offset = ev.ix.linear([prefix[d] for d in kept], [ostride[d] for d in kept])
            ev.ix.store(out, dtype, offset, total)

        _nest_dims(ctx, [in_shape[d] for d in kept],
                   lambda idx: per_output({d: i for d, i in zip(kept, idx)}))
    else:
        def init(n_lanes: int, idx: list[Idx]) -> None:
            ev = ctx.evaluator(n_lanes)
            ev.ix.store(out, dtype, ev.ix.linear(idx, out_strides_full),
                        _identity(op, dtype, n_lanes))

        loop_nest(ctx, anchor.shape, lanes, init)

        def body(n_lanes: int, idx: list[Idx]) -> None:
            ev = ctx.evaluator(n_lanes)
            x = ev.at(src, idx)
            offset = ev.ix.linear(idx, ostride)
            acc = ev.ix.load(out, dtype, offset)
            ev.ix.store(out, dtype, offset, _combine(b, op, dtype, acc, x))

        loop_nest(ctx, in_shape, lanes, body)

    if kernel.root is not anchor:
        emit_elementwise(ctx)


def _nest_dims(ctx: KernelContext, shape: Sequence[int], body: Callable[[list[Idx]], None]
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
