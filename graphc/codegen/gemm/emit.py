"""GEMM code generation: C = op(A) @ op(B) (+ C), with a fused epilogue.

The public API is `GemmSpec` (static shapes, transposes, strides), `Epilogue` and
`emit_gemm`, which emits the computation at the builder's current position inside a function
the caller owns. Which code runs is chosen by `plan_gemm` (graphc.codegen.gemm.spec):

- packed (graphc.codegen.gemm.packed): the BLIS/GotoBLAS structure. B and A are packed into
  caller-provided scratch as zero-padded NR- and MR-wide panels (transposed operands are
  handled by the packing routines: no transpose is ever materialized), with MC/KC/NC cache
  blocking, and a micro-kernel keeps an MR x NR block of vector accumulators in registers
  (8 x 32 float32 / 8 x 16 float64 with AVX-512) updated with llvm.fma. The micro-kernels,
  packing routines and the epilogue-free tile store are functions shared by every GEMM of
  the module (graphc.codegen.gemm.kernels). When all of N fits one NR panel, A is read in
  place instead of packed.
- direct (graphc.codegen.gemm.unpacked): small M or N whose operands are read once anyway
  (vectorized dot products along k, or a few rows advancing along columns), and K == 0.

Contract for every path: each element of C is computed from the complete sum; the epilogue
runs exactly once per element, on that sum (plus the old C when accumulating), and only for
in-bounds columns. The code allocates nothing and touches no globals (re-entrant); loads and
stores of A, B, C assume element alignment only. `scratch` (64-byte aligned, at least
`spec.scratch_bytes(target)` bytes) may be None when that is 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import llvmlite.ir as ir

from graphc.codegen.gemm.packed import emit_packed
from graphc.codegen.gemm.spec import Epilogue, GemmPlan, GemmSpec, kernel_shape, plan_gemm
from graphc.codegen.gemm.unpacked import emit_kdot, emit_nvec, emit_zero_k
from graphc.codegen.target import Target

__all__ = ["Epilogue", "GemmPlan", "GemmSpec", "emit_gemm", "kernel_shape", "plan_gemm"]


def emit_gemm(builder: ir.IRBuilder, spec: GemmSpec, a: ir.Value, b: ir.Value, c: ir.Value,
              scratch: ir.Value | None, target: Target, epilogue: Epilogue | None = None,
              accumulate: bool = False, streams: Sequence[ir.Value] = ()) -> None:
    """Emit C = epilogue(op(A) @ op(B) [+ C if accumulate]) for the static `spec`.

    a, b, c are pointers to the operands' first elements (laid out as `spec` says; the caller
    should mark them noalias). With K == 0 the product is zero: C = epilogue(0), or
    epilogue(C) when accumulating (C is left untouched when there is no epilogue either).
    `streams`: pointers to arrays laid out like C (same element size and ldc) that the
    epilogue reads at the elements it stores; the packed path prefetches their tiles with C's
    (a hint: the result does not depend on it). Raises ValueError when the plan needs
    scratch and none is given.
    """
    plan = plan_gemm(spec, target)
    if plan.path == "empty":
        return
    if plan.path == "zero_k":
        emit_zero_k(builder, spec, plan.lanes, c, epilogue, accumulate)
    elif plan.path == "kdot":
        emit_kdot(builder, spec, plan.lanes, a, b, c, epilogue, accumulate)
    elif plan.path == "nvec":
        emit_nvec(builder, spec, plan.lanes, a, b, c, epilogue, accumulate)
    else:
        if scratch is None:
            raise ValueError(f"{spec} needs {plan.scratch_bytes} bytes of scratch; none given")
        emit_packed(builder, spec, plan, a, b, c, scratch, epilogue, accumulate, streams)
