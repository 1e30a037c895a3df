"""Multi-output elementwise kernels (`passes.multi_output`): one flat loop, several stores.

Every node of such a kernel is read and written at the loop's own flat index (the pass
merges only flat kernels), so one `range_loop` over the elements, vectorized `<lanes x T>`
with a scalar tail and split across threads like an elementwise kernel, evaluates every
output at the index -- nodes shared by several outputs once, through the evaluator's memo
-- and only then stores them all. Storing last is what lets the memory planner put an
output over a buffer the kernel reads at the same index (an optimizer slot updated in
place while the parameter's update reads it).
"""

from __future__ import annotations

import llvmlite.ir as ir

from graphc.codegen.context import KernelContext, Lowering
from graphc.codegen.fused.contract import contracted
from graphc.codegen.fused.loop_nests import PARALLEL_GRAIN, range_loop
from graphc.codegen.index import Idx
from graphc.codegen.parallel import parallel_range
from graphc.passes.kernels import KernelKind


def emit_multi_output(ctx: KernelContext) -> None:
    """out_j[i] = output_j(i) for every output j, over the kernel's elements."""
    kernel = ctx.kernel
    lanes = ctx.lanes_for([*kernel.nodes, *kernel.inputs])

    def store_all(c: KernelContext, n_lanes: int, i: Idx) -> None:
        ev = c.evaluator(n_lanes, flat=True)
        values = [ev.at(out, [i]) for out in kernel.outputs]
        for out, value in zip(kernel.outputs, values):
            ev.ix.store(c.ptr(out), out.dtype, i, value)

    def chunk(c: KernelContext, start: ir.Value, stop: ir.Value) -> None:
        range_loop(c.b, start, stop, lanes, lambda n_lanes, i: store_all(c, n_lanes, i))

    parallel_range(ctx, kernel.root.size, PARALLEL_GRAIN, chunk, align=lanes)


LOWERINGS = (Lowering(KernelKind.MULTI_OUTPUT, contracted(emit_multi_output)),)
