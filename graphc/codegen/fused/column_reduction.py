"""Reductions that keep the input's innermost axis (a bias gradient's column sums, `sum`
over the batch): two of `reduction`'s three loop structures, whose order and error bound
that module's docstring gives.

- Narrow rows (`_emit_narrow_columns`): an output row's input rows are one flat run summed
  in registers, lane j of the accumulators always holding column j mod inner.
- Wide rows (`emit_kept_innermost`): threads split the columns; a chunk of columns adds the
  rows in order into partial sums (level buffers of the kernel's scratch, `kept_plan`)
  while the input streams through row after row.

Both visit every input element once, at its flat index, where the kernel's side outputs
(`passes.column_sums`) are evaluated and stored (`_visit`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import llvmlite.ir as ir

from graphc.codegen.context import KernelContext
from graphc.codegen.fused.expr import Evaluator, strides
from graphc.codegen.fused.loop_nests import PARALLEL_GRAIN, nest_dims, range_loop
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
from graphc.ir import Node
from graphc.passes.column_sums import flat_input
from graphc.passes.kernels import Kernel

# Adds the cascade's levels to a column's sum: fold(lanes, column, sum) -> sum.
LevelFold = Callable[[int, Idx, ir.Value], ir.Value]


def kept_plan(anchor: Node) -> tuple[int, int, int]:
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


def emit_kept_innermost(ctx: KernelContext, own: Kernel, axes: set[int], lanes: int,
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
    block_rows, blocks, _ = kept_plan(anchor)
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
