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

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import llvmlite.ir as ir

from graphc.codegen.gemm.helpers import Val, add, as_i64, elem_ptr, for_range, mul, prefetch, smin
from graphc.codegen.gemm.kernels import (
    micro_kernel,
    pack_function,
    store_full_tile,
    store_tile_code,
    store_tile_function,
)
from graphc.codegen.gemm.spec import Epilogue, GemmPlan, GemmSpec
from graphc.codegen.llvm_types import I1, storage_type


def _full(b: ir.IRBuilder, mr_eff: Val, mr: int, nr_eff: Val, nr: int) -> ir.Value | bool:
    """Whether a tile is whole (mr_eff == mr and nr_eff == nr), at emission time when both
    sizes are static."""
    checks = []
    for eff, whole in ((mr_eff, mr), (nr_eff, nr)):
        if isinstance(eff, int):
            if eff != whole:
                return False
        else:
            checks.append(b.icmp_signed("==", eff, as_i64(whole)))
    if not checks:
        return True
    return checks[0] if len(checks) == 1 else b.and_(checks[0], checks[1])


@contextmanager
def _blocks(b: ir.IRBuilder, total: int, step: int, name: str) -> Iterator[tuple[Val, Val]]:
    """Loop over [0, total) in blocks of `step`; yields (start, size). A single block is
    emitted without a loop, with static start and size."""
    if total <= step:
        yield 0, total
        return
    with for_range(b, 0, total, step, name=name) as start:
        yield start, smin(b, step, b.sub(as_i64(total), start))


def _in_place_b(b: ir.IRBuilder, spec: GemmSpec, bm: ir.Value, src_b: ir.Value, pc: Val
                ) -> tuple[Callable[[Val], ir.Value], int]:
    """(the address of B's full NR-wide panel at column jr for K block pc, B's row stride
    there) when full panels are read in place: in the row-major B, or in its own panel of a
    B stored in panels (`GemmSpec.b_panels`)."""
    ety = storage_type(spec.dtype)
    if spec.b_panels:
        return (lambda jr: elem_ptr(b, bm, add(b, mul(b, jr, spec.k),
                                                mul(b, pc, spec.b_panels)), ety),
                spec.b_panels)
    return (lambda jr: elem_ptr(b, src_b, jr, ety)), spec.ldb


def emit_packed(b: ir.IRBuilder, spec: GemmSpec, plan: GemmPlan, a: ir.Value, bm: ir.Value,
                c: ir.Value, scratch: ir.Value, epilogue: Epilogue | None,
                accumulate: bool, streams: Sequence[ir.Value] = ()) -> None:
    """Emit the packed GEMM described by `plan` (see the module docstring); `streams`
    (`emit_gemm`) are prefetched tile by tile with C.

    With plan.pack_a False (see `plan_gemm`: all of N in one NR panel, or a row-major A
    with one K block), full MR-row tiles read A in place through a kernel specialised for
    A's row stride, and only the last, partial row tile is packed (zero rows past M), once
    per K block; B is packed.
    """
    dtype = spec.dtype
    ety = storage_type(dtype)
    module = b.module
    sa_i, sa_p = spec.a_strides
    sb_p, sb_j = spec.b_strides

    # The shared functions, created on first use only (an unused one still costs compile time).
    def kernel() -> ir.Function:
        return micro_kernel(module, dtype, plan.mr, plan.nr, plan.lanes)

    def store() -> ir.Function:
        return store_tile_function(module, dtype, plan.lanes, plan.nr)

    def pack_a() -> ir.Function:
        # A's "x" is i, contiguous in p unless transposed; packing that layout transposes.
        return pack_function(module, dtype, plan.mr, plan.lanes, transposed=not spec.trans_a)

    # B's "x" is j, contiguous in j unless transposed.
    pack_b = pack_function(module, dtype, plan.nr, plan.lanes, transposed=spec.trans_b)
    # Full NR-wide panels of B read in place (plan.pack_b False: a single jc block, so nc
    # is static); only a partial last panel is packed.
    full_n = spec.n - spec.n % plan.nr
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
            b_full, b_step = _in_place_b(b, spec, bm, src_b, pc)
            if plan.pack_b:
                b.call(pack_b, [src_b, as_i64(spec.ldb), as_i64(nc), as_i64(kc), bp])
            elif full_n < spec.n:  # the narrower last panel
                tail, tail_ld = ((elem_ptr(b, bm, add(b, full_n * spec.k,
                                                      mul(b, pc, spec.n - full_n)), ety),
                                  spec.n - full_n) if spec.b_panels
                                 else (elem_ptr(b, src_b, full_n, ety), spec.ldb))
                b.call(pack_b, [tail, as_i64(tail_ld), as_i64(spec.n - full_n), as_i64(kc),
                                bp])

            def a_at(row: Val) -> ir.Value:
                return elem_ptr(b, a, add(b, mul(b, row, sa_i), mul(b, pc, sa_p)), ety)

            def tile_at(fn: ir.Function, apanel: ir.Value, row: Val, jr: Val, mr_eff: Val,
                        nr_eff: Val, bpanel: ir.Value | None = None, a_step: int = plan.mr,
                        b_step: int = plan.nr) -> None:
                """One tile through micro-kernel `fn`; A and B are packed panels unless
                a_step / b_step say otherwise (see `micro_kernel`)."""
                if bpanel is None:
                    bpanel = elem_ptr(b, bp, mul(b, jr, kc), ety)
                col = add(b, jc, jr)
                cptr = elem_ptr(b, c, add(b, mul(b, row, spec.ldc), col), ety)
                # Fetch the C tile while the kernel runs: its store (and, after the first
                # KC block, its load) would otherwise wait for memory at every tile.
                # And the tiles the epilogue will read of arrays laid out like C (a
                # residual, a saved activation): read row by row, tile after tile, they are
                # no stream the hardware prefetcher follows.
                sptrs = [elem_ptr(b, sp, add(b, mul(b, row, spec.ldc), col), ety)
                         for sp in streams] if epilogue is not None else []
                for r in range(plan.mr):
                    for off in range(0, plan.nr * dtype.itemsize + 63, 64):
                        at = min(off // dtype.itemsize, plan.nr - 1) + r * spec.ldc
                        prefetch(b, b.gep(cptr, [as_i64(at)], source_etype=ety), True)
                        for sp in sptrs:
                            prefetch(b, b.gep(sp, [as_i64(at)], source_etype=ety), False)
                b.call(fn, [as_i64(kc), apanel, bpanel, tile, as_i64(a_step),
                            as_i64(b_step)])
                full = _full(b, mr_eff, plan.mr, nr_eff, plan.nr)
                if full is False:
                    store_c(cptr, row, col, mr_eff, nr_eff)
                    return
                if full is True:
                    store_full(cptr, row, col)
                    return
                with b.if_else(full) as (then, otherwise):
                    with then:
                        store_full(cptr, row, col)
                    with otherwise:
                        store_c(cptr, row, col, mr_eff, nr_eff)

            def store_full(cptr: ir.Value, row: Val, col: Val) -> None:
                """A whole tile (most of them): straight-line stores."""
                def full_tile(load: ir.Value | bool, epi: Epilogue | None) -> None:
                    store_full_tile(b, dtype, plan.lanes, plan.mr, plan.nr, tile, cptr,
                                    spec.ldc, load, epi, row, col)

                by_last(lambda: full_tile(accumulate or nkb > 1, epilogue),
                        lambda: full_tile(load_c, None))

            def store_c(cptr: ir.Value, row: Val, col: Val, mr_eff: Val, nr_eff: Val) -> None:
                """A partial tile: loops over its rows and columns."""
                sizes = [as_i64(spec.ldc), as_i64(mr_eff), as_i64(nr_eff)]
                plain = [tile, cptr, *sizes,
                         ir.Constant(I1, load_c) if isinstance(load_c, bool) else load_c]
                by_last(lambda: store_tile_code(b, dtype, plan.lanes, plan.nr, tile, cptr,
                                                *sizes, accumulate or nkb > 1, epilogue,
                                                row, col),
                        lambda: b.call(store(), plain))

            def by_last(fused: Callable[[], object], plain: Callable[[], object]) -> None:
                """`fused` (the epilogue; only on the last KC block, where C holds earlier
                partial sums unless this is also the first block) or `plain`."""
                if epilogue is None:
                    plain()
                elif isinstance(last, bool):
                    fused()
                else:
                    with b.if_else(last) as (then, otherwise):
                        with then:
                            fused()
                        with otherwise:
                            plain()

            if not plan.pack_a:  # read A in place; B packed, or its full panels in place
                in_place = micro_kernel(module, dtype, plan.mr, plan.nr, plan.lanes,
                                        row_stride=sa_i)
                full = spec.m - spec.m % plan.mr
                if full < spec.m:
                    b.call(pack_a(), [a_at(full), as_i64(spec.lda), as_i64(spec.m - full),
                                      as_i64(kc), ap])

                def column(jr: Val, nr_eff: Val, bpanel: ir.Value | None,
                           b_step: int, following: ir.Value | None = None) -> None:
                    with for_range(b, 0, full, plan.mr, name="ir") as ir_:
                        if following is not None:
                            _prefetch_panel_part(b, following, ir_, full, b_step, plan,
                                                 dtype.itemsize, ety)
                        tile_at(in_place, a_at(ir_), ir_, jr, plan.mr, nr_eff, bpanel,
                                a_step=sa_p, b_step=b_step)
                    if full < spec.m:
                        tile_at(kernel(), ap, full, jr, spec.m - full, nr_eff, bpanel,
                                b_step=b_step)

                if plan.pack_b:
                    with for_range(b, 0, nc, plan.nr, name="jr") as jr:
                        column(jr, smin(b, plan.nr, b.sub(as_i64(nc), jr)), None, plan.nr)
                else:  # B in panels (`GemmSpec.b_panels`): a narrower last one packed
                    if full_n:
                        with for_range(b, 0, full_n, plan.nr, name="jr") as jr:
                            panel = b_full(jr)
                            column(jr, plan.nr, panel, b_step,
                                   _following_panel(b, panel, spec, plan.nr, ety))
                    if full_n < spec.n:
                        column(full_n, spec.n - full_n, bp, plan.nr)
            elif not plan.pack_b:
                in_place_b = kernel()  # the packed-panel kernel, with B's row stride
                with _blocks(b, spec.m, plan.mc, "ic") as (ic, mc):
                    b.call(pack_a(), [a_at(ic), as_i64(spec.lda), as_i64(mc), as_i64(kc), ap])
                    if full_n:
                        with for_range(b, 0, full_n, plan.nr, name="jr") as jr:
                            panel = b_full(jr)
                            following = _following_panel(b, panel, spec, plan.nr, ety)
                            with for_range(b, 0, mc, plan.mr, name="ir") as ir_:
                                _prefetch_panel_part(b, following, ir_,
                                                     min(plan.mc, spec.m), b_step, plan,
                                                     dtype.itemsize, ety)
                                apanel = elem_ptr(b, ap, b.mul(ir_, as_i64(kc)), ety)
                                tile_at(in_place_b, apanel, add(b, ic, ir_), jr,
                                        smin(b, plan.mr, b.sub(as_i64(mc), ir_)), plan.nr,
                                        bpanel=panel, b_step=b_step)
                    if full_n < spec.n:
                        with for_range(b, 0, mc, plan.mr, name="ir") as ir_:
                            apanel = elem_ptr(b, ap, b.mul(ir_, as_i64(kc)), ety)
                            tile_at(kernel(), apanel, add(b, ic, ir_), full_n,
                                    smin(b, plan.mr, b.sub(as_i64(mc), ir_)),
                                    spec.n - full_n, bpanel=bp)
            else:
                with _blocks(b, spec.m, plan.mc, "ic") as (ic, mc):
                    b.call(pack_a(), [a_at(ic), as_i64(spec.lda), as_i64(mc), as_i64(kc), ap])
                    with for_range(b, 0, nc, plan.nr, name="jr") as jr:
                        with for_range(b, 0, mc, plan.mr, name="ir") as ir_:
                            apanel = elem_ptr(b, ap, b.mul(ir_, as_i64(kc)), ety)
                            tile_at(kernel(), apanel, add(b, ic, ir_), jr,
                                    smin(b, plan.mr, b.sub(as_i64(mc), ir_)),
                                    smin(b, plan.nr, b.sub(as_i64(nc), jr)))


# Prefetching the next B panel: at most this many cache lines before each tile, only in
# columns of at least `_PREFETCH_MIN_TILES` tiles (fewer leave no work to hide it behind),
# with locality 1 (prefetcht2: into L2 on Intel; measured here the same as 2 in a model and
# 2 % less costly in a GEMM whose B stays cached, as the prefetched lines evict less).
_PREFETCH_LINES_PER_TILE = 16
_PREFETCH_MIN_TILES = 4
_LOCALITY = 1


def _following_panel(b: ir.IRBuilder, panel: ir.Value, spec: GemmSpec, nr: int,
                     ety: ir.Type) -> ir.Value:
    """The first element of the in-place B panel after `panel` (NR columns on), for
    prefetching only: after the last panel it points past B, so it is not `inbounds`."""
    step = nr * spec.k if spec.b_panels else nr
    return b.gep(panel, [as_i64(step)], source_etype=ety)


def _prefetch_panel_part(b: ir.IRBuilder, following: ir.Value, ir_: ir.Value, rows: int,
                         b_step: int, plan: GemmPlan, itemsize: int, ety: ir.Type) -> None:
    """Before the tile at row `ir_` of a block of `rows` rows (a column of tiles), prefetch
    its part of the B panel the next column reads in place (`following`: its first element;
    rows of `b_step` elements).

    Without it, a column's first tile waits on memory for each line of its B panel: weights
    read once per call come from L3 or DRAM, where the hardware prefetchers run too few
    lines ahead of a stream consumed this slowly. Spread over the block's ceil(rows / MR)
    tiles, at most `_PREFETCH_LINES_PER_TILE` prefetches each, the panel's first lines
    arrive while this column's tiles compute (GPT inference, T=128: -4 % at 1 thread, -6 %
    at 2; an MLP at batch 256: -2 %; MobileNetV2 -2 % / -4 %). A panel stored contiguously
    is prefetched line by line; a row-major B's panel row by row, at both ends of each row
    (NR elements span two lines with 512-bit vectors, or when rows are not line-aligned).
    Prefetches never fault, so the panel after the last one may be named."""
    tiles = -(-rows // plan.mr)
    if tiles < _PREFETCH_MIN_TILES:
        return
    if b_step == plan.nr:  # a contiguous panel: KC * NR elements, a line at a time
        units, unit_elems = -(-plan.kc * plan.nr * itemsize // 64), 64 // itemsize
        offsets = [0]
    else:  # one row of NR elements every b_step: its first and last element
        units, unit_elems = plan.kc, b_step
        offsets = [0, plan.nr - 1]
    per = min(-(-units // tiles), _PREFETCH_LINES_PER_TILE // len(offsets))
    first = b.mul(b.udiv(ir_, as_i64(plan.mr)), as_i64(per))
    for unit in range(per):
        at = b.mul(b.add(first, as_i64(unit)), as_i64(unit_elems))
        for offset in offsets:
            where = b.add(at, as_i64(offset)) if offset else at
            prefetch(b, b.gep(following, [where], source_etype=ety), False, _LOCALITY)
