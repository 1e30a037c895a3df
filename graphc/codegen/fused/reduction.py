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
- Innermost axis kept, narrow rows (`column_reduction`: lcm(inner, lanes) at most
  MAX_COLUMN_VECTORS vectors, contiguous input): an output row's input rows are one flat
  run, reduced as above with K = lcm(inner, lanes) / lanes accumulators, so that lane j of
  the accumulators always holds column j mod inner; at the end each column's lanes (one per
  phase of its rows, lcm / inner of them) are added pairwise, then the run's last scalars.
- Innermost axis kept, wide rows (`column_reduction.emit_kept_innermost`): threads split
  the columns; a thread's chunk of columns adds the rows in order into a row of partial
  sums while the input streams through row after row (as before this scheme, with the
  output as the partial sums). Float sums take the rows in blocks of G = BLOCK_ROWS and combine the
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
are evaluated at the element's flat index and stored (`column_reduction._visit`). The
loops and vector width are those of the kernel without them (`own_part`), so the reduction
keeps its bits.
"""

from __future__ import annotations

import dataclasses
import math

import llvmlite.ir as ir

from graphc.codegen.context import KernelContext, Lowering
from graphc.codegen.fused.column_reduction import emit_kept_innermost, kept_plan
from graphc.codegen.fused.contract import contracted
from graphc.codegen.fused.expr import strides
from graphc.codegen.fused.loop_nests import (
    PARALLEL_GRAIN,
    emit_elementwise,
    nest_dims,
)
from graphc.codegen.fused.row_reduction import (
    RowReduction,
)
from graphc.codegen.index import Idx
from graphc.codegen.loops import for_range
from graphc.codegen.parallel import parallel_range
from graphc.codegen.target import Target
from graphc.errors import CompileError
from graphc.ir import Node
from graphc.passes.column_sums import (
    accepts_side_outputs,
    flat_input,
    own_part,
    row_flat_input,
)
from graphc.passes.kernels import Kernel, KernelKind


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
    _, _, levels = kept_plan(anchor)
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
        emit_kept_innermost(ctx, own, axes, lanes, ostride)
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
    # 10 scalars. Values constant along a row (a (1, C, 1, 1) bias before a global average
    # pool of (1, C, 7, 7)) are read at the row's index: 49 elements per row in vectors,
    # not 7 rows of 7 scalars (MobileNetV2's last pool: 74 -> 23 us per call on Zen 3).
    trailing = rank > 0 and kept == list(range(len(kept)))
    flat = trailing and flat_input(own.nodes, anchor)
    by_row = trailing and not flat and row_flat_input(own.nodes, anchor)
    if flat or by_row:
        row_len, outer = reduced_size, []
    else:
        row_len, outer = (in_shape[-1] if rank else 1), reduced[:-1]
    rows = math.prod(in_shape[d] for d in outer)
    in_strides = strides(in_shape)

    def per_output(c: KernelContext, prefix: dict[int, Idx]) -> None:
        cb = c.b
        red = RowReduction(cb, op, dtype, lanes, row_len, rows)
        red.begin()
        if flat or by_row:
            base = c.evaluator(1).ix.linear([prefix[d] for d in kept],
                                            [in_strides[d] for d in kept]).base
            # by_row: the reduced axes' indices never matter (row-constant values only).
            row_position = [prefix[d] if d in prefix else Idx(ir.Constant(ir.IntType(64), 0))
                            for d in range(rank)]

            def flat_value(k: int, i: Idx) -> ir.Value:
                ev = (c.evaluator(k, flat=True, shape=in_shape, position=lambda: row_position)
                      if by_row else c.evaluator(k, flat=True))
                return ev.at(src, [Idx(cb.add(base, i.base), i.coef)])

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
        with for_range(c.b, start, stop, 1, name="k0", rolled=True) as i0:
            nest_dims(c, rest, lambda idx: per_output(
                c, {d: i for d, i in zip(kept, [Idx(i0), *idx])}))

    parallel_range(ctx, kept_shape[0], max(1, PARALLEL_GRAIN // work_per_row), kept_rows)


LOWERINGS = (Lowering(KernelKind.REDUCTION, contracted(emit_reduction),
                      scratch=_reduction_scratch),)
