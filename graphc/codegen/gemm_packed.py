"""The packed GEMM driver: GotoBLAS/BLIS loops around the shared micro-kernel.

    for jc in N step NC:                      B block kc x nc packed once per (jc, pc)
      for pc in K step KC:
        pack B[pc:pc+kc, jc:jc+nc]  -> NR-wide panels
        for ic in M step MC:
          pack A[ic:ic+mc, pc:pc+kc] -> MR-wide panels
          for jr in nc step NR:               B micro-panel stays in L1
            for ir in mc step MR:             A panels stream from L2
              tile = micro_kernel(kc, A panel, B panel)
              C[ic+ir.., jc+jr..] (+)= tile   epilogue on the last KC block only

C is written by every KC block: the first stores its partial sums (or adds them to the old C
when accumulating), later ones add, and only the last applies the epilogue, so the epilogue
always sees the complete sum.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import llvmlite.ir as ir

from graphc.codegen.gemm_ir import (
    Val,
    add,
    align_of,
    as_i64,
    elem_ptr,
    for_range,
    if_value,
    mul,
    smin,
    vadd,
)
from graphc.codegen.gemm_kernels import micro_kernel, pack_function
from graphc.codegen.gemm_spec import Epilogue, GemmPlan, GemmSpec
from graphc.codegen.types import compute_type, storage_type


@contextmanager
def _blocks(b: ir.IRBuilder, total: int, step: int, name: str) -> Iterator[tuple[Val, Val]]:
    """Loop over [0, total) in blocks of `step`; yields (start, size). A single block is
    emitted without a loop, with static start and size."""
    if total <= step:
        yield 0, total
        return
    with for_range(b, 0, total, step, name=name) as start:
        yield start, smin(b, step, b.sub(as_i64(total), start))


def emit_packed(b: ir.IRBuilder, spec: GemmSpec, plan: GemmPlan, a: ir.Value, bm: ir.Value,
                c: ir.Value, scratch: ir.Value, epilogue: Epilogue | None,
                accumulate: bool) -> None:
    """Emit the packed GEMM described by `plan` (see the module docstring).

    With plan.pack_a False (all of N in one NR panel, so each A panel would be used once),
    full MR-row tiles read A in place through a kernel specialised for A's strides, and only
    the last, partial row tile is packed (zero rows past M).
    """
    dtype = spec.dtype
    ety = storage_type(dtype)
    module = b.module
    kernel = micro_kernel(module, dtype, plan.mr, plan.nr, plan.lanes)
    sa_i, sa_p = spec.a_strides
    sb_p, sb_j = spec.b_strides
    kernel_in_place = None if plan.pack_a else micro_kernel(
        module, dtype, plan.mr, plan.nr, plan.lanes, a_strides=(sa_i, sa_p))
    # A's "x" is i: contiguous in p unless transposed. B's "x" is j: contiguous in j unless
    # transposed. Packing the p-contiguous layouts transposes in registers.
    pack_a = pack_function(module, dtype, plan.mr, plan.lanes, transposed=not spec.trans_a)
    pack_b = pack_function(module, dtype, plan.nr, plan.lanes, transposed=spec.trans_b)
    i8 = ir.IntType(8)
    ap = scratch
    bp = elem_ptr(b, scratch, plan.b_offset, i8)
    tile = elem_ptr(b, scratch, plan.tile_offset, i8)
    nkb = -(-spec.k // plan.kc)

    with _blocks(b, spec.n, plan.nc, "jc") as (jc, nc):
        with _blocks(b, spec.k, plan.kc, "pc") as (pc, kc):
            if nkb == 1:
                load_c: ir.Value | bool = accumulate
                last: ir.Value | bool = True
            else:
                pcv = as_i64(pc)
                load_c = True if accumulate else b.icmp_signed(">", pcv, as_i64(0))
                last = b.icmp_signed(">=", b.add(pcv, as_i64(kc)), as_i64(spec.k))
            src_b = elem_ptr(b, bm, add(b, mul(b, pc, sb_p), mul(b, jc, sb_j)), ety)
            b.call(pack_b, [src_b, as_i64(spec.ldb), as_i64(nc), as_i64(kc), bp])

            def a_at(row: Val) -> ir.Value:
                return elem_ptr(b, a, add(b, mul(b, row, sa_i), mul(b, pc, sa_p)), ety)

            def tile_at(fn: ir.Function, apanel: ir.Value, row: Val, jr: Val, mr_eff: Val,
                        nr_eff: Val) -> None:
                bpanel = elem_ptr(b, bp, mul(b, jr, kc), ety)
                b.call(fn, [as_i64(kc), apanel, bpanel, tile])
                _store_tile(b, spec, plan, c, tile, row, add(b, jc, jr), mr_eff, nr_eff,
                            load_c, last, epilogue)

            if kernel_in_place is not None:  # one column panel: nc <= NR
                full = spec.m - spec.m % plan.mr
                with for_range(b, 0, full, plan.mr, name="ir") as ir_:
                    tile_at(kernel_in_place, a_at(ir_), ir_, 0, plan.mr, nc)
                if full < spec.m:
                    b.call(pack_a, [a_at(full), as_i64(spec.lda), as_i64(spec.m - full),
                                    as_i64(kc), ap])
                    tile_at(kernel, ap, full, 0, spec.m - full, nc)
            else:
                with _blocks(b, spec.m, plan.mc, "ic") as (ic, mc):
                    b.call(pack_a, [a_at(ic), as_i64(spec.lda), as_i64(mc), as_i64(kc), ap])

                    def packed_tile(ir_: ir.Value, jr: ir.Value) -> None:
                        apanel = elem_ptr(b, ap, b.mul(ir_, as_i64(kc)), ety)
                        tile_at(kernel, apanel, add(b, ic, ir_), jr,
                                smin(b, plan.mr, b.sub(as_i64(mc), ir_)),
                                smin(b, plan.nr, b.sub(as_i64(nc), jr)))

                    if plan.a_outer:
                        with for_range(b, 0, mc, plan.mr, name="ir") as ir_:
                            with for_range(b, 0, nc, plan.nr, name="jr") as jr:
                                packed_tile(ir_, jr)
                    else:
                        with for_range(b, 0, nc, plan.nr, name="jr") as jr:
                            with for_range(b, 0, mc, plan.mr, name="ir") as ir_:
                                packed_tile(ir_, jr)


def _store_tile(b: ir.IRBuilder, spec: GemmSpec, plan: GemmPlan, c: ir.Value,
                tile: ir.Value, row0: Val, col0: Val, mr_eff: Val, nr_eff: Val,
                load_c: ir.Value | bool, last: ir.Value | bool,
                epilogue: Epilogue | None) -> None:
    """C[row0.., col0..] (+)= tile[:mr_eff, :nr_eff], epilogue applied when `last`.

    Whole vectors first, then the columns past the last whole vector one by one, so the
    epilogue only ever sees in-bounds columns.
    """
    dtype = spec.dtype
    ety = storage_type(dtype)
    isz = dtype.itemsize
    w = plan.lanes
    vty = compute_type(dtype, w)

    def finish(x: ir.Value, cptr: ir.Value, row: ir.Value, col: ir.Value, lanes: int) -> None:
        t = vty if lanes > 1 else ety
        x = if_value(b, load_c, x,
                     lambda v: vadd(b, dtype, v, b.load(cptr, typ=t, align=isz)), "addc")
        if epilogue is not None:
            x = if_value(b, last, x, lambda v: epilogue(b, row, col, v, lanes), "epi")
        b.store(x, cptr, align=isz)

    nv = b.udiv(as_i64(nr_eff), as_i64(w))
    with for_range(b, 0, mr_eff, name="tr") as r:
        row = b.add(as_i64(row0), r)
        crow = elem_ptr(b, c, b.add(b.mul(row, as_i64(spec.ldc)), as_i64(col0)), ety)
        trow = elem_ptr(b, tile, b.mul(r, as_i64(plan.nr)), ety)
        with for_range(b, 0, nv, name="tv") as v:
            j = b.mul(v, as_i64(w))
            x = b.load(elem_ptr(b, trow, j, ety), typ=vty, align=align_of(w * isz))
            finish(x, elem_ptr(b, crow, j, ety), row, b.add(as_i64(col0), j), w)
        with for_range(b, b.mul(nv, as_i64(w)), nr_eff, name="ts") as j:
            x = b.load(elem_ptr(b, trow, j, ety), typ=ety, align=isz)
            finish(x, elem_ptr(b, crow, j, ety), row, b.add(as_i64(col0), j), 1)
