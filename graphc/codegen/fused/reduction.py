"""Reduction kernels (`sum`, `max`, `min`, `prod` over any axes, with the kernel's inlined input
expression and optional elementwise epilogue; `mean`, `var`, `std` and `logsumexp` are built
from `sum`). Each output element is reduced by one thread, in an order fixed by the shapes
alone, and which multiplies are fused into FMAs is decided on the emitted code
(`contract.contract_explicitly`), so results are bit-for-bit identical for any thread
count. Three loop structures:

- Innermost input axis reduced (`RowReduction`): per output, the reduced elements are visited
  in index order (one flat row when the reduced axes are trailing and the input expression
  is elementwise over them, else rows of the innermost axis) and cut into blocks of at most
  B = lanes·K·S consecutive elements (K = ACCUMULATORS, S = BLOCK_STEPS; short rows are
  grouped whole, a long row is cut into full blocks and a remainder). Inside a block,
  element j goes to vector accumulator (j div lanes) mod K, lane j mod lanes (a row's last
  n mod lanes elements to a scalar accumulator), so each accumulator adds at most S terms
  in order while K independent chains hide the add latency. A block's value is
  (a0 + a1) + (a2 + a3), plus the scalar in lane 0. Float sums combine the block values
  pairwise with a binary counter (a cascade: level j of a small stack holds the sum of 2^j
  blocks, a new block carries up through the occupied levels, and the levels left at the
  end are added from the lowest up); the lanes are then reduced by a shuffle tree.
- Innermost axis kept, narrow rows (`_emit_narrow_columns`: lcm(inner, lanes) at most
  MAX_COLUMN_VECTORS vectors, contiguous input): an output row's input rows are one flat
  run, reduced as above with K = lcm(inner, lanes) / lanes accumulators, so that lane j of
  the accumulators always holds column j mod inner; at the end each column's lanes (one per
  phase of its rows, lcm / inner of them) are added pairwise, then the run's last scalars.
- Innermost axis kept, wide rows (`_emit_kept_innermost`): threads split the columns; a
  thread's chunk of columns adds the rows in order into a row of partial sums while the
  input streams through row after row (as before this scheme, with the output as the
  partial sums). Float sums take the rows in blocks of G = BLOCK_ROWS and combine the
  blocks by the same cascade, in per-column level buffers (the kernel's scratch, each
  column at its own place, so threads never share one); other ops add every row into the
  output, in order.

Error bound (float sums, u = 2^-24 for float32, 2^-53 for float64): every term passes
through at most d additions, so |computed - exact| <= d·u/(1 - d·u) · sum(|x_i|), with
d = S + log2 K + 1 + ceil(log2 P) + log2(lanes) for the first structure, P = the number of
blocks (about n / B; so d ~ S + 3 + log2(n / S)), d = S + ceil(log2 P) + log2(lcm / inner)
+ ceil(lanes / inner) for the second, and d = G + ceil(log2(n / G)) for the third. With
S = G = 32 and n = 10^7 (float32, 16 lanes): d = 52 and 47 (3.1e-6 and 2.8e-6 of
sum(|x_i|) in the worst case, where one running sum has n·u ~ 0.6); with rounding errors of
random sign the error is ~ u·sqrt(d)·|sum| (10^7 float32 terms: 2e-8 to 1e-7 measured).
numpy's pairwise sum has d ~ 8 + log2(n / 8). max and min are exact in any order, integer
sums exact (wrapping): they use the same loops without the cascade, as do float products,
whose worst-case relative error, (n - 1)·u, is the same for every order. The epilogue then
runs as an elementwise pass over the output, in place.

Side outputs (`passes.column_sums`; only when the innermost axis is kept and the input
expression is flat, `accepts_side_outputs`): both innermost-kept structures visit every
input element once, and there the kernel's other outputs (an elementwise kernel merged in)
are evaluated at the element's flat index and stored (`_visit`). The loops and vector width
are those of the kernel without them (`own_part`), so the reduction keeps its bits.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import llvmlite.ir as ir

from graphc.codegen.context import KernelContext, Lowering
from graphc.codegen.fused.contract import contracted
from graphc.codegen.fused.expr import Evaluator, strides
from graphc.codegen.fused.loop_nests import (
    PARALLEL_GRAIN,
    emit_elementwise,
    nest_dims,
    range_loop,
)
from graphc.codegen.fused.row_reduction import (
    BLOCK_ROWS,
    MAX_COLUMN_VECTORS,
    RowReduction,
    as_i64,
    cascades,
    combine,
    identity,
    offset,
)
from graphc.codegen.index import Idx, IndexBuilder
from graphc.codegen.llvm_types import I64, compute_type
from graphc.codegen.loops import entry_alloca, for_range
from graphc.codegen.parallel import parallel_range
from graphc.codegen.target import Target
from graphc.errors import CompileError
from graphc.ir import Node
from graphc.passes.column_sums import accepts_side_outputs, flat_input, own_part
from graphc.passes.kernels import Kernel, KernelKind

# Adds the cascade's levels to a column's sum: fold(lanes, column, sum) -> sum.
LevelFold = Callable[[int, Idx, ir.Value], ir.Value]


def _kept_plan(anchor: Node) -> tuple[int, int, int]:
    """(rows per block, blocks, cascade levels) of the innermost-kept path: each output sums
    `rows` input rows (the product of the reduced axes) in blocks of BLOCK_ROWS."""
    src = anchor.inputs[0]
    rows = math.prod(src.shape[d] for d in anchor.attrs["axes"])
    if rows <= BLOCK_ROWS:
        return rows, 1, 0
    blocks = -(-rows // BLOCK_ROWS)
    # Blocks 0 .. blocks-2 are pushed; the last one is folded in at the end.
    levels = (blocks - 1).bit_length() if cascades(anchor.op, anchor.dtype) else 0
    return BLOCK_ROWS, blocks, levels


def _innermost_reduced(anchor: Node) -> bool:
    rank = anchor.inputs[0].ndim
    return rank == 0 or (rank - 1) in anchor.attrs["axes"]


def _reduction_scratch(kernel: Kernel, target: Target, threads: int, conv: str) -> int:
    """The level buffers of the innermost-kept path's cascade: `levels` rows of the input's
    innermost axis (each thread writes only its own columns of them; narrow rows summed in
    registers leave them unused)."""
    anchor = kernel.anchor
    assert anchor is not None
    if _innermost_reduced(anchor):
        return 0
    _, _, levels = _kept_plan(anchor)
    return levels * anchor.inputs[0].shape[-1] * anchor.dtype.itemsize


def emit_reduction(ctx: KernelContext) -> None:
    """out = op-reduce(input expression) over the anchor's axes, then the epilogue; see the
    module docstring for the order of each output's reduction and its error bound."""
    kernel = ctx.kernel
    anchor = kernel.anchor
    assert anchor is not None
    side = kernel.outputs[:-1]
    if side and not accepts_side_outputs(kernel):
        raise CompileError(f"kernel {kernel.name}: side outputs of a reduction that does not "
                           "visit each input element once at a flat index")
    # Loops and vector width as without side outputs, so the result keeps its bits.
    own = own_part(kernel)
    src = anchor.inputs[0]
    axes = set(anchor.attrs["axes"])
    rank = src.ndim
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
    lanes = ctx.lanes_for([*own.nodes, *own.inputs])
    # The anchor's value is read back from the output buffer by the epilogue.
    ctx.ptrs[anchor] = ctx.out
    if anchor.size == 0:
        pass  # no output element
    elif _innermost_reduced(anchor):
        _emit_reduced_innermost(ctx, own, axes, lanes, ostride)
    else:
        _emit_kept_innermost(ctx, own, axes, lanes, ostride)
    if kernel.root is not anchor:
        # Over the output's shape: the epilogue alone, never the side outputs' nodes.
        emit_elementwise(dataclasses.replace(ctx, kernel=own))


def _emit_reduced_innermost(ctx: KernelContext, own: Kernel, axes: set[int], lanes: int,
                            ostride: list[int]) -> None:
    """Each output element is one `RowReduction` over its reduced elements."""
    anchor = ctx.kernel.anchor
    assert anchor is not None and len(ctx.kernel.outputs) == 1
    op, dtype, src = anchor.op, anchor.dtype, anchor.inputs[0]
    in_shape = src.shape
    rank = len(in_shape)
    kept = [d for d in range(rank) if d not in axes]
    reduced = [d for d in range(rank) if d in axes]
    kept_shape = [in_shape[d] for d in kept]
    reduced_size = math.prod(in_shape[d] for d in reduced)
    # One flat row per output when the reduced axes are the trailing ones and the expression
    # allows flat indices: (10^6, 10) summed whole is one vectorized row, not 10^6 rows of
    # 10 scalars.
    flat = rank > 0 and kept == list(range(len(kept))) and flat_input(own.nodes, anchor)
    if flat:
        row_len, outer = reduced_size, []
    else:
        row_len, outer = (in_shape[-1] if rank else 1), reduced[:-1]
    rows = math.prod(in_shape[d] for d in outer)
    in_strides = strides(in_shape)

    def per_output(c: KernelContext, prefix: dict[int, Idx]) -> None:
        cb = c.b
        red = RowReduction(cb, op, dtype, lanes, row_len, rows)
        red.begin()
        if flat:
            base = c.evaluator(1).ix.linear([prefix[d] for d in kept],
                                            [in_strides[d] for d in kept]).base

            def flat_value(k: int, i: Idx) -> ir.Value:
                return c.evaluator(k, flat=True).at(src, [Idx(cb.add(base, i.base), i.coef)])

            red.row(flat_value)
        else:
            def one_row(idx: list[Idx]) -> None:
                full = dict(prefix)
                full.update(zip(outer, idx))

                def value(k: int, i: Idx) -> ir.Value:
                    at = [i if d == rank - 1 else full[d] for d in range(rank)]
                    return c.evaluator(k).at(src, at)

                red.row(value)

            nest_dims(c, [in_shape[d] for d in outer], one_row)
        total = red.finish()
        ev = c.evaluator(1)
        offset = ev.ix.linear([prefix[d] for d in kept], [ostride[d] for d in kept])
        ev.ix.store(c.out, dtype, offset, total)

    if not kept:
        per_output(ctx, {})
        return
    # Split the first kept dimension: every output element is still reduced by one thread
    # in one fixed order, so results do not depend on the thread count.
    rest = kept_shape[1:]
    work_per_row = max(1, math.prod(rest) * reduced_size)

    def kept_rows(c: KernelContext, start: ir.Value, stop: ir.Value) -> None:
        with for_range(c.b, start, stop, 1, name="k0") as i0:
            nest_dims(c, rest, lambda idx: per_output(
                c, {d: i for d, i in zip(kept, [Idx(i0), *idx])}))

    parallel_range(ctx, kept_shape[0], max(1, PARALLEL_GRAIN // work_per_row), kept_rows)


def _emit_kept_innermost(ctx: KernelContext, own: Kernel, axes: set[int], lanes: int,
                         ostride: list[int]) -> None:
    """Innermost axis kept. Narrow contiguous rows summed over more than one block go to
    `_emit_narrow_columns`. Otherwise threads split the columns (chunks of whole vectors),
    and a chunk adds its rows in order into partial sums (level buffers, then the output),
    one sweep over its columns per row, while the input streams through row after row, as
    the module docstring says. Measured on 10^7 float32: adding 4 rows per sweep (fewer
    loads and stores of the partial sums) was up to 3x slower, and cutting the columns into
    tiles that keep the partial sums in L1 up to 1.4x slower, than one whole row after the
    other: the hardware prefetcher follows one stream, not several interleaved ones.

    Either way every input element is visited once, where its value is added (`element`
    here, the row callback of `_emit_narrow_columns`): side outputs (`passes.column_sums`)
    are evaluated and stored there (`_visit`)."""
    kernel = ctx.kernel
    anchor = kernel.anchor
    assert anchor is not None
    op, dtype, src = anchor.op, anchor.dtype, anchor.inputs[0]
    in_shape = src.shape
    rank = len(in_shape)
    inner = in_shape[-1]
    kept = [d for d in range(rank - 1) if d not in axes]
    reduced = [d for d in range(rank - 1) if d in axes]
    kept_sizes = [in_shape[d] for d in kept]
    red_sizes = [in_shape[d] for d in reduced]
    block_rows, blocks, _ = _kept_plan(anchor)
    rows = math.prod(red_sizes)
    cascade = cascades(op, dtype) and blocks > 1
    # Flat indices when the kept outer axes come first and the expression allows them: a
    # row's offset is then (kept index · rows + row) · inner, with no division.
    flat = kept == list(range(len(kept))) and flat_input(own.nodes, anchor)
    side = kernel.outputs[:-1]
    assert flat or not side
    out_strides = [ostride[d] for d in kept] + [ostride[rank - 1]]
    if (flat and lanes > 1 and rows > block_rows and inner > 0
            and math.lcm(inner, lanes) // lanes <= MAX_COLUMN_VECTORS):
        _emit_narrow_columns(ctx, lanes, kept_sizes, rows, out_strides)
        return

    def columns(c: KernelContext, start: ir.Value, stop: ir.Value) -> None:
        cb = c.b
        scratch = c.scratch

        def per_prefix(prefix: list[Idx]) -> None:
            kept_flat = c.evaluator(1).ix.linear(prefix, strides(kept_sizes)).base

            def position(q: ir.Value, col: Idx) -> list[Idx]:
                """The input multi-index of (prefix, reduced row q, column(s) col)."""
                at = dict(zip(kept, prefix))
                rest = q
                for d, size in reversed(list(zip(reduced, red_sizes))):
                    if d == reduced[0]:
                        at[d] = Idx(rest)
                    else:
                        at[d] = Idx(cb.urem(rest, ir.Constant(I64, size)))
                        rest = cb.udiv(rest, ir.Constant(I64, size))
                return [at[d] for d in range(rank - 1)] + [col]

            def element(k: int, q: ir.Value, col: Idx) -> ir.Value:
                """The input expression at (prefix, reduced row q, column(s) col); the
                side outputs there are stored."""
                if flat:
                    ev = c.evaluator(k, flat=True, shape=in_shape,
                                     position=lambda: position(q, col))
                    row = cb.mul(cb.add(cb.mul(kept_flat, ir.Constant(I64, rows)), q),
                                 ir.Constant(I64, inner))
                    return _visit(c, ev, src, Idx(cb.add(row, col.base), col.coef))
                return c.evaluator(k).at(src, position(q, col))

            def to_out(col: Idx) -> tuple[ir.Value, Idx]:
                return c.out, IndexBuilder(cb, 1).linear([*prefix, col], out_strides)

            def to_level(j: ir.Value | int) -> Callable[[Idx], tuple[ir.Value, Idx]]:
                """Column `col` of level buffer j (the scratch holds `levels` rows of the
                innermost axis; each thread touches only its own columns)."""
                assert scratch is not None
                return lambda col: (scratch, Idx(cb.add(cb.mul(as_i64(j), ir.Constant(
                    I64, inner)), col.base), col.coef))

            def sweep(fn: Callable[[int, Idx], None]) -> None:
                range_loop(cb, start, stop, lanes, fn, name="col")

            def add_rows(dest: Callable[[Idx], tuple[ir.Value, Idx]],
                         q0: ir.Value | int, g: int, finish: LevelFold | None = None
                         ) -> None:
                """dest[col] = rows q0 .. q0+g-1 of each column, added in row order, one
                sweep over the columns per row; `finish(k, col, sum)` (the cascade's
                levels) is applied in the last sweep, before the store."""

                def one_row(q: ir.Value | int, fresh: bool, last: bool) -> None:
                    def fn(k: int, col: Idx) -> None:
                        ptr, at = dest(col)
                        ix = IndexBuilder(cb, k)
                        # A fresh row starts from the identity, not from memory; the float
                        # `0 + x` also keeps LLVM from turning a plain copy of the first row
                        # into a memcpy call (1.25x slower on 10^4 rows of 1000 float32).
                        acc = identity(op, dtype, k) if fresh else ix.load(ptr, dtype, at)
                        v = combine(cb, op, dtype, acc, element(k, as_i64(q), col))
                        if last and finish is not None:
                            v = finish(k, col, v)
                        ix.store(ptr, dtype, at, v)

                    sweep(fn)

                if cascades(op, dtype):
                    one_row(q0, fresh=True, last=g == 1)
                    first = 1
                else:
                    # max(-inf, x), 0 + x for integers... fold to x, and the first row to a
                    # memcpy call: start from the identity in memory, as before.
                    def init(k: int, col: Idx) -> None:
                        ptr, at = dest(col)
                        IndexBuilder(cb, k).store(ptr, dtype, at, identity(op, dtype, k))

                    sweep(init)
                    first = 0
                if g - 1 > first:
                    with for_range(cb, as_i64(offset(cb, q0, first)),
                                   as_i64(offset(cb, q0, g - 1)), 1, name="rows") as q:
                        one_row(q, fresh=False, last=False)
                if g > first:  # the last row, with the levels
                    one_row(offset(cb, q0, g - 1), fresh=False, last=True)

            def level_value(k: int, j: ir.Value | int, col: Idx) -> ir.Value:
                ptr, at = to_level(j)(col)
                return IndexBuilder(cb, k).load(ptr, dtype, at)

            if rows == 0:  # an empty reduction: the identity
                def empty(k: int, col: Idx) -> None:
                    ptr, at = to_out(col)
                    IndexBuilder(cb, k).store(ptr, dtype, at, identity(op, dtype, k))

                sweep(empty)
            elif not cascade:
                add_rows(to_out, 0, rows)
            else:
                full = blocks - 1  # blocks before the last one
                with for_range(cb, 0, full, 1, name="blk") as blk:
                    # Block blk goes to the first free level, t = the trailing ones of
                    # blk, after the occupied levels below are added to it, lowest
                    # first: L[t] = L[t-1] + (... + (L[0] + block)).
                    t = cb.cttz(cb.add(blk, ir.Constant(I64, 1)),
                                ir.Constant(ir.IntType(1), 1))

                    def carry(k: int, col: Idx, v: ir.Value, t: ir.Value = t) -> ir.Value:
                        acc = entry_alloca(cb, compute_type(dtype, k), name="carry")
                        cb.store(v, acc)
                        with for_range(cb, 0, t, 1, name="lvl") as j:
                            cb.store(combine(cb, op, dtype, level_value(k, j, col),
                                             cb.load(acc)), acc)
                        return cb.load(acc)

                    add_rows(to_level(t), cb.mul(blk, ir.Constant(I64, block_rows)),
                             block_rows, carry)

                def collapse(k: int, col: Idx, v: ir.Value) -> ir.Value:
                    """The last block plus the occupied levels, lowest first."""
                    for j in range(full.bit_length()):
                        if full >> j & 1:
                            v = combine(cb, op, dtype, level_value(k, j, col), v)
                    return v

                add_rows(to_out, full * block_rows, rows - full * block_rows, collapse)

        nest_dims(c, kept_sizes, per_prefix)

    work_per_column = max(1, src.size // max(inner, 1))
    parallel_range(ctx, inner, max(lanes, PARALLEL_GRAIN // work_per_column), columns,
                   align=lanes)


def _emit_narrow_columns(ctx: KernelContext, lanes: int, kept_sizes: list[int], rows: int,
                         out_strides: list[int]) -> None:
    """Narrow rows (lcm(inner, lanes) / lanes at most MAX_COLUMN_VECTORS vectors), flat
    input: each output row's slab of `rows` input rows is one contiguous run, summed as one
    `RowReduction` in columns mode (whole vectors in registers, no partial sums in memory).
    Threads split the first kept axis; an output row is reduced by one thread."""
    anchor = ctx.kernel.anchor
    assert anchor is not None
    op, dtype, src = anchor.op, anchor.dtype, anchor.inputs[0]
    inner = src.shape[-1]
    kept_strides = strides(kept_sizes)
    # `RowReduction` calls the row callback once per element of the run (so side outputs
    # are stored once), its vectors at multiples of `lanes`: when `lanes` divides `inner`,
    # each vector lies in one input row, and a (rows, 1) operand of a side output is one
    # scalar load, not a gather.
    one_row_per_vector = inner % lanes == 0

    def one(c: KernelContext, prefix: list[Idx]) -> None:
        cb = c.b
        kept_flat = c.evaluator(1).ix.linear(prefix, kept_strides).base
        base = cb.mul(kept_flat, ir.Constant(I64, rows * inner))
        red = RowReduction(cb, op, dtype, lanes, rows * inner, 1, columns=inner)
        red.begin()

        def value(k: int, i: Idx) -> ir.Value:
            at = Idx(cb.add(base, i.base), i.coef)
            ev = c.evaluator(k, flat=True, shape=src.shape, position=(
                (lambda: _row_position(cb, at, src.shape)) if one_row_per_vector else None))
            return _visit(c, ev, src, at)

        red.row(value)
        vectors = (red.finish_column_vectors()
                   if inner > 1 and out_strides[-1] == 1 else None)
        if vectors is not None:  # whole vectors of contiguous columns: vector stores
            vx = IndexBuilder(cb, lanes)
            for q, total in enumerate(vectors):
                vx.store(c.out, dtype, vx.linear([*prefix, Idx(ir.Constant(I64, q * lanes),
                                                                1)], out_strides), total)
            return
        ix = IndexBuilder(cb, 1)
        totals = red.finish_columns() if inner > 1 else [red.finish()]
        for col, total in enumerate(totals):
            ix.store(c.out, dtype, ix.linear([*prefix, ix.const(col)], out_strides), total)

    if not kept_sizes:
        one(ctx, [])
        return

    def prefixes(c: KernelContext, start: ir.Value, stop: ir.Value) -> None:
        with for_range(c.b, start, stop, 1, name="k0") as i0:
            nest_dims(c, kept_sizes[1:], lambda idx: one(c, [Idx(i0), *idx]))

    work = max(1, src.size // kept_sizes[0])
    parallel_range(ctx, kept_sizes[0], max(1, PARALLEL_GRAIN // work), prefixes)


def _row_position(b: ir.IRBuilder, at: Idx, shape: tuple[int, ...]) -> list[Idx]:
    """The multi-index in `shape` of flat index `at` whose lanes all lie in one row of the
    innermost axis: scalar outer indices, the innermost one affine like `at`."""
    out: list[Idx] = []
    last = len(shape) - 1
    for d, (size, stride) in enumerate(zip(shape, strides(shape))):
        v = at.base if stride == 1 else b.udiv(at.base, ir.Constant(I64, stride))
        if d > 0:
            v = b.urem(v, ir.Constant(I64, size))
        out.append(Idx(v, at.coef if d == last else 0))
    return out


def _visit(c: KernelContext, ev: Evaluator, src: Node, at: Idx) -> ir.Value:
    """The input expression `src` at flat input index `at` (flat evaluator `ev`); each side
    output of the kernel is evaluated at `at` too (shared nodes once: `ev` memoizes) and,
    after every value is computed, stored there."""
    value = ev.at(src, [at])
    side = c.kernel.outputs[:-1]
    values = [ev.at(out, [at]) for out in side]
    for out, v in zip(side, values):
        ev.ix.store(c.ptr(out), out.dtype, at, v)
    return value


LOWERINGS = (Lowering(KernelKind.REDUCTION, contracted(emit_reduction),
                      scratch=_reduction_scratch),)
