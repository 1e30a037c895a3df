"""GEMMs that read each operand once and so gain nothing from packing.

With few rows (matrix-vector shapes: inference at batch 1-4) a GEMM is bound by reading B,
which is read exactly once: from L3 or memory once it outgrows L2 (an MLP's weights). The
code is laid out so that B streams in memory order, which the hardware prefetchers follow
best, with each B vector loaded once and used by every row of A.

- `emit_nvec`: M <= 4 rows and B contiguous along columns (`plan_nvec` picks the mode):
  "regs": one vector accumulator per row and vector of columns, (nearly) all of them in
  registers (M == 1 and N up to 32 vectors: 512 float32 columns with AVX-512): a single
  sweep reads B row after row, front to back. Few accumulators are multiplied into
  independent sets over consecutive rows, so the FMA latency does not bound the loop.
  "rows": the partial sums of C's rows wait in a stack buffer (L1); each step takes 4 rows
  of B and walks them front to back, updating every partial-sum vector with 4 FMAs. B is
  still read in memory order (4 adjacent rows at a time), for any N; very wide N is cut
  into column chunks whose partial sums fit 16 KiB.
- `emit_kdot`: A and B both contiguous along k (A row-major, B stored transposed, or N == 1
  with a unit stride). Vectorized dot products over k for a block of up to 4 rows and 4-8
  columns sharing every A and B vector load, reduced horizontally at the end.
- `emit_zero_k`: K == 0, C = epilogue(accumulate ? C : 0).

Column edges are static here (shapes are static), so the last partial vector is split into
power-of-two pieces for the stores and the epilogue: no masked stores needed, and the
epilogue only sees in-bounds columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import llvmlite.ir as ir

from graphc.codegen.gemm.helpers import (
    Val,
    add,
    as_i64,
    carried_loop,
    elem_ptr,
    for_range,
    hsum,
    lane_mask,
    madd,
    masked_load,
    mul,
    pow2_pieces,
    splat,
    sub_vector,
    vadd,
    zero,
)
from graphc.codegen.gemm.spec import Epilogue, GemmSpec
from graphc.codegen.llvm_types import PTR, VOID, compute_type, storage_type
from graphc.codegen.loops import entry_alloca


def store_c(b: ir.IRBuilder, spec: GemmSpec, c: ir.Value, row: Val, col: Val, acc: ir.Value,
            count: int, accumulate: bool, epilogue: Epilogue | None) -> None:
    """Store the first `count` lanes of `acc` (a vector or a scalar) at C[row, col:col+count],
    adding the old C first when accumulating and applying the epilogue."""
    dtype = spec.dtype
    ety = storage_type(dtype)
    isz = dtype.itemsize
    lanes_in = acc.type.count if isinstance(acc.type, ir.VectorType) else 1
    pieces = [(0, count)] if count == lanes_in else pow2_pieces(count)
    for off, lanes in pieces:
        x = acc if lanes == lanes_in else sub_vector(b, acc, off, lanes)
        col_j = add(b, col, off)
        ptr = elem_ptr(b, c, add(b, mul(b, row, spec.ldc), col_j), ety)
        if accumulate:
            x = vadd(b, dtype, x, b.load(ptr, typ=compute_type(dtype, lanes), align=isz))
        if epilogue is not None:
            x = epilogue(b, as_i64(row), as_i64(col_j), x, lanes)
        b.store(x, ptr, align=isz)


def emit_zero_k(b: ir.IRBuilder, spec: GemmSpec, lanes: int, c: ir.Value,
                epilogue: Epilogue | None, accumulate: bool) -> None:
    """K == 0: the sums are zero. Nothing to do when accumulating without an epilogue."""
    if accumulate and epilogue is None:
        return
    nfull, tail = divmod(spec.n, lanes)
    with for_range(b, 0, spec.m, name="zr") as row:
        if nfull:
            with for_range(b, 0, nfull * lanes, lanes, name="zc") as col:
                store_c(b, spec, c, row, col, zero(spec.dtype, lanes), lanes, accumulate,
                        epilogue)
        if tail:
            store_c(b, spec, c, row, nfull * lanes, zero(spec.dtype, lanes), tail, accumulate,
                    epilogue)


_LATENCY_SETS = 8  # independent FMA chains that cover FMA latency x throughput
_ROW_STEP = 4  # rows of B per step of the "rows" mode (fewer when M > 4: M * step broadcasts)
_PART_BYTES = 16 * 1024  # partial sums per column chunk of the "rows" mode (stays in L1)
_SINGLE_ROW_ACCS = {32: 32, 16: 15}  # "regs" accumulators for M == 1, by register count


def _registers(spec: GemmSpec, lanes: int) -> int:
    """Vector registers of the target: 32 with AVX-512 (64-byte vectors), else 16."""
    return 32 if lanes * spec.dtype.itemsize >= 64 else 16


@dataclass(frozen=True)
class NvecPlan:
    """How `emit_nvec` computes a spec: mode "regs" or "rows" (see the module docstring);
    for "regs", `sets` independent accumulator sets over consecutive rows of B; for "rows",
    `chunk` vectors of columns per column chunk."""

    mode: str
    sets: int = 1
    chunk: int = 0


def plan_nvec(spec: GemmSpec, lanes: int) -> NvecPlan:
    """Mode "regs" when the accumulators fit: for M == 1 up to one per register (32: the
    last two then wait in stack slots, see `_nvec_regs`; measured faster than every split
    of the columns, all of which break the memory order of B) or one less (16 registers);
    for M > 1 up to half the registers (beyond that the B vectors and broadcasts push
    accumulators out of registers, and "rows" measured faster). "rows" otherwise."""
    m = spec.m
    regs = _registers(spec, lanes)
    nv = -(-spec.n // lanes)
    if nv <= (_SINGLE_ROW_ACCS[regs] if m == 1 else regs // 2 // m):
        sets = max(1, min(spec.k, -(-_LATENCY_SETS // (m * nv))))
        return NvecPlan("regs", sets=sets)
    chunk = max(1, _PART_BYTES // (m * lanes * spec.dtype.itemsize))
    return NvecPlan("rows", chunk=min(chunk, nv))


def emit_nvec(b: ir.IRBuilder, spec: GemmSpec, lanes: int, a: ir.Value, bm: ir.Value,
              c: ir.Value, epilogue: Epilogue | None, accumulate: bool) -> None:
    """C = A @ B for M <= 4 rows with B contiguous along columns."""
    plan = plan_nvec(spec, lanes)
    if plan.mode == "regs":
        _nvec_regs(b, spec, lanes, a, bm, c, epilogue, accumulate, plan.sets)
        return
    step_cols = plan.chunk * lanes
    nchunks, rem = divmod(spec.n, step_cols)
    if nchunks == 1:
        _nvec_rows(b, spec, lanes, a, bm, c, epilogue, accumulate, 0, plan.chunk, 0)
    elif nchunks > 1:
        with for_range(b, 0, nchunks * step_cols, step_cols, name="nc") as col0:
            _nvec_rows(b, spec, lanes, a, bm, c, epilogue, accumulate, col0, plan.chunk, 0)
    if rem:
        _nvec_rows(b, spec, lanes, a, bm, c, epilogue, accumulate, nchunks * step_cols,
                   rem // lanes, rem % lanes)


def _a_splat(b: ir.IRBuilder, spec: GemmSpec, a: ir.Value, r: int, p: Val,
             lanes: int) -> ir.Value:
    """A[r, p] broadcast to a vector."""
    ety = storage_type(spec.dtype)
    sa_i, sa_p = spec.a_strides
    val = b.load(elem_ptr(b, a, add(b, r * sa_i, mul(b, p, sa_p)), ety), typ=ety,
                 align=spec.dtype.itemsize)
    return splat(b, val, lanes)


def _b_vector(b: ir.IRBuilder, spec: GemmSpec, lanes: int, bm: ir.Value, p: Val, col: Val,
              count: int) -> ir.Value:
    """B[p, col:col+count] as a vector; lanes past `count` (< lanes) read as zero, unread."""
    ety = storage_type(spec.dtype)
    isz = spec.dtype.itemsize
    vty = compute_type(spec.dtype, lanes)
    ptr = elem_ptr(b, bm, add(b, mul(b, p, spec.b_strides[0]), col), ety)
    if count < lanes:
        return masked_load(b, ptr, vty, lane_mask(b, lanes, 0, count), isz)
    return b.load(ptr, typ=vty, align=isz)


def _compiler_barrier(b: ir.IRBuilder, ptr: ir.Value) -> None:
    """An empty asm statement that may read or write `ptr` and any memory: LLVM can neither
    keep the stack slot at `ptr` in a register nor move memory accesses across it. No
    instruction is emitted."""
    asm = ir.InlineAsm(ir.FunctionType(VOID, [PTR]), "", "r,~{memory}", side_effect=True)
    b.call(asm, [ptr])


def _nvec_regs(b: ir.IRBuilder, spec: GemmSpec, lanes: int, a: ir.Value, bm: ir.Value,
               c: ir.Value, epilogue: Epilogue | None, accumulate: bool, sets: int) -> None:
    """Every accumulator in a register; one sweep over the rows of B, `sets` rows per
    iteration into independent accumulator sets, added up (in a fixed order) at the end.

    With one accumulator per register (M == 1, 32 vectors) none is left for the broadcast
    of A: the last two accumulators then live in stack slots (L1), each updated by a load,
    an FMA and a store per row (two, since reloading one takes a register too). Left to
    itself LLVM spills one and moves all the others through registers on every row
    (measured 6-8% slower in a compiled MLP).
    """
    dtype = spec.dtype
    vty = compute_type(dtype, lanes)
    m, k = spec.m, spec.k
    nfull, tail = divmod(spec.n, lanes)
    counts = [lanes] * nfull + ([tail] if tail else [])
    nset = m * len(counts)
    regs = _registers(spec, lanes)
    nmem = nset - (regs - 2) if sets == 1 and nset >= regs else 0
    slots = {nset - nmem + i: entry_alloca(b, vty, "nv.acc") for i in range(nmem)}
    for slot in slots.values():
        b.store(zero(dtype, lanes), slot)

    def step(p: Val, accs: list[ir.Value], nsets: int) -> list[ir.Value]:
        out = list(accs)
        for s in range(nsets):
            ps = add(b, p, s)
            # (B vectors of stack-slot accumulators are loaded after the barrier: before
            # it, they would be live in registers across the whole row.)
            bvs = [None if (s * nset + v) in slots
                   else _b_vector(b, spec, lanes, bm, ps, v * lanes, cnt)
                   for v, cnt in enumerate(counts)]
            for r in range(m):
                av = _a_splat(b, spec, a, r, ps, lanes)
                for v, bv in enumerate(bvs):
                    j = s * nset + r * len(counts) + v
                    slot = slots.get(j)
                    if slot is None:
                        assert bv is not None
                        out[j] = madd(b, dtype, av, bv, out[j])
                    else:  # only with M == 1: this B vector has no other use
                        _compiler_barrier(b, slot)
                        bv = _b_vector(b, spec, lanes, bm, ps, v * lanes, counts[v])
                        b.store(madd(b, dtype, av, bv, b.load(slot, typ=vty)), slot)
        return out

    kmain = k // sets * sets
    accs = carried_loop(b, 0, kmain, [zero(dtype, lanes)] * (sets * nset),
                        lambda p, v: step(p, v, sets), step=sets, name="nk")
    for p in range(kmain, k):
        accs[:nset] = step(p, accs[:nset], 1)
    for s in range(1, sets):
        for j in range(nset):
            accs[j] = vadd(b, dtype, accs[j], accs[s * nset + j])
    for j, slot in slots.items():
        accs[j] = b.load(slot, typ=vty)
    for r in range(m):
        for v, cnt in enumerate(counts):
            store_c(b, spec, c, r, v * lanes, accs[r * len(counts) + v], cnt, accumulate,
                    epilogue)


def _nvec_rows(b: ir.IRBuilder, spec: GemmSpec, lanes: int, a: ir.Value, bm: ir.Value,
               c: ir.Value, epilogue: Epilogue | None, accumulate: bool, col0: Val,
               nfull: int, tail: int) -> None:
    """Columns [col0, col0 + nfull*lanes + tail) with partial sums in a stack buffer: steps
    of `_ROW_STEP` rows of B (fewer for M > 4), the first starting from zero and the last
    (holding the complete sums) storing to C through the epilogue instead of to the buffer.
    """
    dtype = spec.dtype
    vty = compute_type(dtype, lanes)
    m, k = spec.m, spec.k
    nv = nfull + (1 if tail else 0)
    part = entry_alloca(b, vty, "nv.part", m * nv)
    ku = min(_ROW_STEP, max(1, 16 // m), k)

    def kstep(p0: Val, rows: int, first: bool, last: bool) -> None:
        avs = [[_a_splat(b, spec, a, r, add(b, p0, s), lanes) for s in range(rows)]
               for r in range(m)]

        def column(vi: Val, count: int) -> None:
            col = add(b, col0, mul(b, vi, lanes))
            bvs = [_b_vector(b, spec, lanes, bm, add(b, p0, s), col, count)
                   for s in range(rows)]
            for r in range(m):
                slot = elem_ptr(b, part, add(b, r * nv, vi), vty)
                acc = zero(dtype, lanes) if first else b.load(slot, typ=vty)
                for s in range(rows):
                    acc = madd(b, dtype, avs[r][s], bvs[s], acc)
                if last:
                    store_c(b, spec, c, r, col, acc, count, accumulate, epilogue)
                else:
                    b.store(acc, slot)

        if nfull == 1:
            column(0, lanes)
        elif nfull > 1:
            with for_range(b, 0, nfull, name="nv") as vi:
                column(vi, lanes)
        if tail:
            column(nfull, tail)

    nsteps = -(-k // ku)
    if nsteps == 1:
        kstep(0, k, True, True)
        return
    kstep(0, ku, True, False)
    if nsteps > 2:
        with for_range(b, ku, (nsteps - 1) * ku, ku, name="nks") as p0:
            kstep(p0, ku, False, False)
    kstep((nsteps - 1) * ku, k - (nsteps - 1) * ku, False, True)


def emit_kdot(b: ir.IRBuilder, spec: GemmSpec, lanes: int, a: ir.Value, bm: ir.Value,
              c: ir.Value, epilogue: Epilogue | None, accumulate: bool) -> None:
    """C[i, j] = dot(A[i, :], B[:, j]) with both contiguous in k, in blocks of up to 4 rows
    x 4 columns (8 columns for a single row: more rows of B streaming at once measured
    faster), every loaded vector shared by the whole block."""
    m, n = spec.m, spec.n
    wide = _registers(spec, lanes) >= 32
    mb = min(m, 4)
    jb = min(n, 8 if mb == 1 and wide else 4)

    def row_block(i0: Val, nrows: int) -> None:
        nblocks, rem = divmod(n, jb)
        if nblocks == 1:
            _dot_block(b, spec, lanes, a, bm, c, i0, nrows, 0, jb, epilogue, accumulate)
        else:
            with for_range(b, 0, nblocks * jb, jb, name="dj") as j0:
                _dot_block(b, spec, lanes, a, bm, c, i0, nrows, j0, jb, epilogue, accumulate)
        if rem:
            _dot_block(b, spec, lanes, a, bm, c, i0, nrows, nblocks * jb, rem, epilogue,
                       accumulate)

    nmb, mrem = divmod(m, mb)
    if nmb == 1:
        row_block(0, mb)
    elif nmb > 1:
        with for_range(b, 0, nmb * mb, mb, name="di") as i0:
            row_block(i0, mb)
    if mrem:
        row_block(nmb * mb, mrem)


def _dot_block(b: ir.IRBuilder, spec: GemmSpec, lanes: int, a: ir.Value, bm: ir.Value,
               c: ir.Value, i0: Val, nrows: int, j0: Val, ncols: int,
               epilogue: Epilogue | None, accumulate: bool) -> None:
    """Rows [i0, i0+nrows) x columns [j0, j0+ncols) of C; `unroll` consecutive vectors of k
    go to independent accumulators, so the block has about 16 (8 with 16 registers)."""
    dtype = spec.dtype
    ety = storage_type(dtype)
    isz = dtype.itemsize
    vty = compute_type(dtype, lanes)
    k = spec.k
    sa_i, _ = spec.a_strides
    _, sb_j = spec.b_strides
    arows = [elem_ptr(b, a, mul(b, add(b, i0, r), sa_i), ety) for r in range(nrows)]
    bcols = [elem_ptr(b, bm, mul(b, add(b, j0, j), sb_j), ety) for j in range(ncols)]
    nset = nrows * ncols
    target = 2 * _LATENCY_SETS if _registers(spec, lanes) >= 32 else _LATENCY_SETS
    unroll = max(1, min(8, target // nset))

    def step_at(p0: Val, accs: list[ir.Value], u: int, mask: ir.Value | None
                ) -> list[ir.Value]:
        out = list(accs)
        def load(base: ir.Value, off: Val) -> ir.Value:
            ptr = elem_ptr(b, base, off, ety)
            if mask is None:
                return b.load(ptr, typ=vty, align=isz)
            return masked_load(b, ptr, vty, mask, isz)

        for s in range(u):
            off = add(b, p0, s * lanes)
            avs = [load(row, off) for row in arows]
            for j in range(ncols):
                bv = load(bcols[j], off)
                for r in range(nrows):
                    idx = s * nset + r * ncols + j
                    out[idx] = madd(b, dtype, avs[r], bv, out[idx])
        return out

    chunk = unroll * lanes
    nmain = k // chunk
    accs = [zero(dtype, lanes)] * (unroll * nset)
    accs = carried_loop(b, 0, nmain * chunk, accs,
                        lambda p, v: step_at(p, v, unroll, None), step=chunk, name="dk")
    p = nmain * chunk
    full, tail = divmod(k - p, lanes)
    if full:
        accs = step_at(p, accs, full, None)
        p += full * lanes
    if tail:
        accs = step_at(p, accs, 1, lane_mask(b, lanes, 0, tail))
    for r in range(nrows):
        for j in range(ncols):
            v = accs[r * ncols + j]
            for s in range(1, unroll):
                v = vadd(b, dtype, v, accs[s * nset + r * ncols + j])
            store_c(b, spec, c, add(b, i0, r), add(b, j0, j), hsum(b, dtype, v), 1,
                    accumulate, epilogue)
