"""GEMMs that read each operand once and so gain nothing from packing.

- `emit_nvec`: M <= 4 rows and B contiguous along columns. All rows advance together over
  column blocks of U vectors: each B vector is loaded once and used by every row, each A
  element is broadcast.
- `emit_kdot`: A and B both contiguous along k (A row-major, B stored transposed, or N == 1
  with a unit stride). Vectorized dot products over k, up to 4 columns of C at a time
  sharing each A vector, reduced horizontally at the end.
- `emit_zero_k`: K == 0, C = epilogue(accumulate ? C : 0).

Column edges are static here (shapes are static), so the last partial vector is split into
power-of-two pieces for the stores and the epilogue: no masked stores needed, and the
epilogue only sees in-bounds columns.
"""

from __future__ import annotations

import llvmlite.ir as ir

from graphc.codegen.gemm_ir import (
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
from graphc.codegen.gemm_spec import Epilogue, GemmSpec
from graphc.codegen.types import compute_type, storage_type


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


def emit_nvec(b: ir.IRBuilder, spec: GemmSpec, lanes: int, a: ir.Value, bm: ir.Value,
              c: ir.Value, epilogue: Epilogue | None, accumulate: bool) -> None:
    """All M (<= 4) rows at once, U vectors of columns per block, k innermost."""
    dtype = spec.dtype
    ety = storage_type(dtype)
    isz = dtype.itemsize
    vty = compute_type(dtype, lanes)
    m, n, k = spec.m, spec.n, spec.k
    sa_i, sa_p = spec.a_strides
    sb_p, _ = spec.b_strides
    u_max = max(1, min(8, 16 // m))  # m*U accumulators of 16 and 32 registers

    def block(col0: Val, nvec: int, tail: int) -> None:
        """Columns [col0, col0 + nvec*lanes + tail), tail < lanes read with a mask."""
        nacc = nvec + (1 if tail else 0)
        mask = lane_mask(b, lanes, 0, tail) if tail else None

        def step(p: ir.Value, accs: list[ir.Value]) -> list[ir.Value]:
            brow = elem_ptr(b, bm, add(b, b.mul(p, as_i64(sb_p)), col0), ety)
            bvs = []
            for u in range(nacc):
                ptr = elem_ptr(b, brow, u * lanes, ety)
                if u == nvec:
                    bvs.append(masked_load(b, ptr, vty, mask, isz))
                else:
                    bvs.append(b.load(ptr, typ=vty, align=isz))
            out = list(accs)
            for r in range(m):
                aval = b.load(elem_ptr(b, a, add(b, r * sa_i, b.mul(p, as_i64(sa_p))), ety),
                              typ=ety, align=isz)
                av = splat(b, aval, lanes)
                for u in range(nacc):
                    out[r * nacc + u] = madd(b, dtype, av, bvs[u], out[r * nacc + u])
            return out

        accs = carried_loop(b, 0, k, [zero(dtype, lanes)] * (m * nacc), step, name="nk")
        for r in range(m):
            for u in range(nacc):
                cnt = lanes if u < nvec else tail
                store_c(b, spec, c, r, add(b, col0, u * lanes), accs[r * nacc + u], cnt,
                        accumulate, epilogue)

    step_cols = u_max * lanes
    nblocks, rem = divmod(n, step_cols)
    if nblocks == 1:
        block(0, u_max, 0)
    elif nblocks > 1:
        with for_range(b, 0, nblocks * step_cols, step_cols, name="nj") as col0:
            block(col0, u_max, 0)
    if rem:
        block(nblocks * step_cols, rem // lanes, rem % lanes)


def emit_kdot(b: ir.IRBuilder, spec: GemmSpec, lanes: int, a: ir.Value, bm: ir.Value,
              c: ir.Value, epilogue: Epilogue | None, accumulate: bool) -> None:
    """C[i, j] = dot(A[i, :], B[:, j]) with both contiguous in k; up to 4 columns at once."""
    n = spec.n
    jb = min(4, n)
    with for_range(b, 0, spec.m, name="di") as i:
        nblocks, rem = divmod(n, jb)
        if nblocks == 1:
            _dot_block(b, spec, lanes, a, bm, c, i, 0, jb, epilogue, accumulate)
        else:
            with for_range(b, 0, nblocks * jb, jb, name="dj") as j0:
                _dot_block(b, spec, lanes, a, bm, c, i, j0, jb, epilogue, accumulate)
        if rem:
            _dot_block(b, spec, lanes, a, bm, c, i, nblocks * jb, rem, epilogue, accumulate)


def _dot_block(b: ir.IRBuilder, spec: GemmSpec, lanes: int, a: ir.Value, bm: ir.Value,
               c: ir.Value, i: ir.Value, j0: Val, ncols: int, epilogue: Epilogue | None,
               accumulate: bool) -> None:
    dtype = spec.dtype
    ety = storage_type(dtype)
    isz = dtype.itemsize
    vty = compute_type(dtype, lanes)
    k = spec.k
    sa_i, _ = spec.a_strides
    _, sb_j = spec.b_strides
    arow = elem_ptr(b, a, b.mul(i, as_i64(sa_i)), ety)
    bcols = [elem_ptr(b, bm, mul(b, add(b, j0, j), sb_j), ety) for j in range(ncols)]
    unroll = 2 if ncols > 2 else 4  # at least 8 independent accumulators for the FMA latency

    def step_at(p0: ir.Value | int, accs: list[ir.Value], u: int,
                mask: ir.Value | None) -> list[ir.Value]:
        out = list(accs)
        for s in range(u):
            off = add(b, p0, s * lanes)
            if mask is None:
                av = b.load(elem_ptr(b, arow, off, ety), typ=vty, align=isz)
            else:
                av = masked_load(b, elem_ptr(b, arow, off, ety), vty, mask, isz)
            for j in range(ncols):
                ptr = elem_ptr(b, bcols[j], off, ety)
                if mask is None:
                    bv = b.load(ptr, typ=vty, align=isz)
                else:
                    bv = masked_load(b, ptr, vty, mask, isz)
                out[s * ncols + j] = madd(b, dtype, av, bv, out[s * ncols + j])
        return out

    chunk = unroll * lanes
    nmain = k // chunk
    accs = [zero(dtype, lanes)] * (unroll * ncols)
    accs = carried_loop(b, 0, nmain * chunk,
                        accs, lambda p, v: step_at(p, v, unroll, None), step=chunk, name="dk")
    p = nmain * chunk
    full, tail = divmod(k - p, lanes)
    if full:
        accs = step_at(p, accs, full, None)
        p += full * lanes
    if tail:
        accs = step_at(p, accs, 1, lane_mask(b, lanes, 0, tail))
    for j in range(ncols):
        v = accs[j]
        for s in range(1, unroll):
            v = vadd(b, dtype, v, accs[s * ncols + j])
        store_c(b, spec, c, i, add(b, j0, j), hsum(b, dtype, v), 1, accumulate, epilogue)
