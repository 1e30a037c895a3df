"""How a convolution's finished sums reach its output: `EpilogueStore`.

Shared by the direct kernels (which store accumulator vectors as they finish) and the GEMM
path (which sweeps the epilogue over the raw sums the GEMM stored).
"""

from __future__ import annotations

import llvmlite.ir as ir

from graphc.codegen.context import KernelContext
from graphc.codegen.fused.expr import strides
from graphc.codegen.index import Idx
from graphc.codegen.loops import for_range
from graphc.codegen.window import Run, element_ptr, i64
from graphc.ir import DType
from graphc.ops import registry
from graphc.passes.kernels import Kernel


def reads_planes(kernel: Kernel) -> bool:
    """Whether the epilogue of a convolution kernel may be evaluated along whole (H, W)
    output planes, as if each were one row of H*W elements (index (n, c, 0, q)): every
    epilogue op is pointwise and each operand either spans the output's whole plane or is
    broadcast over all of it (a bias), so its element at (y, x) is at y*W + x or at 0."""
    root, anchor = kernel.root, kernel.anchor
    if anchor is None or root is anchor or root.shape != anchor.shape or len(root.shape) != 4:
        return True
    plane = tuple(root.shape[2:])
    for node in kernel.nodes:
        if node is anchor:
            continue
        if not registry.OPS[node.op].fusion.pointwise:
            return False
        for operand in node.inputs:
            shape = (1, 1, *operand.shape)[-2:]
            if shape != (1, 1) and shape != plane:
                return False
    return True


class EpilogueStore:
    """How finished accumulators reach the output: plain, or through the epilogue (only
    for unit-step phases: the kernel's root shares the anchor's index)."""

    def __init__(self, ctx: KernelContext, dtype: DType, epilogue: bool):
        self.ctx = ctx
        self.dtype = dtype
        self.epilogue = epilogue

    def __call__(self, out_row: ir.Value, idx: tuple[ir.Value, ir.Value, ir.Value],
                 col0: ir.Value, step: int, acc: ir.Value, lanes: int,
                 limit: ir.Value | None) -> None:
        b = self.ctx.b
        if not self.epilogue:
            Run(b, lanes, col0, step, 0, False, limit).store(out_row, self.dtype, acc)
            return
        assert step == 1
        if limit is None:
            self._vector(out_row, idx, col0, acc, lanes)
            return
        with b.if_else(b.icmp_signed("==", limit, i64(lanes))) as (full, partial):
            with full:
                self._vector(out_row, idx, col0, acc, lanes)
            with partial:
                self._partial(out_row, idx, col0, acc, lanes, limit)

    def _vector(self, out_row: ir.Value, idx: tuple[ir.Value, ir.Value, ir.Value],
                q0: ir.Value, acc: ir.Value, lanes: int) -> None:
        ctx, b = self.ctx, self.ctx.b
        kernel = ctx.kernel
        ev = ctx.evaluator(lanes, overrides={kernel.anchor: acc})
        value = ev.at(kernel.root, [Idx(idx[0]), Idx(idx[1]), Idx(idx[2]), Idx(q0, 1)])
        b.store(value, element_ptr(b, out_row, self.dtype, q0), align=self.dtype.itemsize)

    def _partial(self, out_row: ir.Value, idx: tuple[ir.Value, ir.Value, ir.Value],
                 q0: ir.Value, acc: ir.Value, lanes: int, limit: ir.Value) -> None:
        """The last chunk of a row. A float epilogue is evaluated on the whole vector with
        its operands read through masked loads (only the live lanes, which lie inside every
        operand's row) and stored masked. Otherwise (an integer op in the epilogue could
        trap on a dead lane) the raw sums are stored for the live lanes and the epilogue
        runs in place, one element at a time (ctx.ptrs[anchor] is the output buffer, so the
        evaluator reads the anchor's value back from there)."""
        ctx, b = self.ctx, self.ctx.b
        kernel = ctx.kernel
        run = Run(b, lanes, q0, 1, 0, False, limit)
        if all(n.dtype.is_float for n in kernel.nodes):
            ev = ctx.evaluator(lanes, overrides={kernel.anchor: acc})
            ev.ix.mask = run.lane_mask()
            value = ev.at(kernel.root, [Idx(idx[0]), Idx(idx[1]), Idx(idx[2]), Idx(q0, 1)])
            run.store(out_row, self.dtype, value)
            return
        run.store(out_row, self.dtype, acc)
        ev = ctx.evaluator(1)
        with for_range(b, q0, b.add(q0, limit), 1, name="ep") as q:
            index = [Idx(idx[0]), Idx(idx[1]), Idx(idx[2]), Idx(q)]
            value = ev.at(kernel.root, index)
            ev.ix.store(ctx.out, self.dtype, ev.ix.linear(index, strides(kernel.root.shape)),
                        value)
