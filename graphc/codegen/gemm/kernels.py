"""The shared functions of the packed GEMM: micro-kernels, packing routines, the tile store.

Each function is emitted once per module and per specialisation (dtype, register block,
packing kind) and looked up by name in `module.globals`, so every GEMM of a module calls the
same copy (small modules, fast compiles). They take runtime sizes and strides, hold no state
and touch only their arguments: re-entrant.

Packed layouts (R = MR for A, NR for B; "x" is the row of A or the column of B):
  a panel holds R consecutive x for kc consecutive p, stored p-major: panel[p*R + x];
  a block of panels is panel-major: panel q starts at q*R*kc. Rows past the operand's edge
  are zero, so the micro-kernel always computes a full MR x NR block.
"""

from __future__ import annotations

from collections.abc import Callable

import llvmlite.ir as ir

from graphc.codegen.gemm.helpers import (
    Val,
    add,
    align_of,
    as_i64,
    elem_ptr,
    for_range,
    if_value,
    keep_rolled,
    lane_mask,
    madd,
    masked_load,
    prefetch,
    smin,
    splat,
    transpose,
    vadd,
    zero,
)
from graphc.codegen.gemm.spec import Epilogue
from graphc.codegen.llvm_types import (
    I1,
    I64,
    PTR,
    VOID,
    compute_type,
    i64,
    shuffle_mask,
    storage_type,
)
from graphc.ir import DType


def _new_function(module: ir.Module, name: str, args: list[ir.Type],
                  noalias: tuple[int, ...]) -> ir.Function:
    fn = ir.Function(module, ir.FunctionType(VOID, args), name=name)
    # Not "internal": LLVM's interprocedural constant propagation and function specialisation
    # would clone and constant-fold a local function per GEMM (its sizes are constants at
    # every call), doubling compile time for no speed. linkonce_odr keeps exactly one shared
    # body; hidden keeps it out of exported libraries' symbol tables; noinline keeps the
    # callers small. (llvmlite prints the linkage string verbatim.)
    fn.linkage = "linkonce_odr hidden"
    fn.attributes.add("nounwind")
    fn.attributes.add("noinline")
    for j in noalias:
        fn.args[j].add_attribute("noalias")
    return fn


def micro_kernel(module: ir.Module, dtype: DType, mr: int, nr: int, lanes: int,
                 row_stride: int = 1, unroll: int = 4, c_stride: int | None = None,
                 accumulate: bool = False) -> ir.Function:
    """`void uk(i64 kc, ptr ap, ptr bp, ptr tile, i64 a_step, i64 b_step)`:
    tile[r*nr + j] = sum_p A(r, p) * B(p, j), with A(r, p) = ap[r*row_stride + p*a_step]
    and B(p, j) = bp[p*b_step + j].

    The mr x nr block lives in mr*(nr/lanes) vector accumulators across the whole k loop
    (unrolled `unroll` times, plus a remainder loop); each step broadcasts one A element per
    row against nr/lanes B vectors with llvm.fma. `tile` is 64-byte aligned scratch.

    One function serves every layout of one row stride: a packed A panel (row_stride 1,
    a_step mr), a transposed A read in place (1, lda) and a row-major A read in place
    (row_stride lda: every row a constant displacement from one pointer, a_step 1); a packed
    B panel (b_step nr) and nr columns of a row-major B read in place (b_step ldb). The
    steps are loop-invariant runtime arguments: as fast as static ones (GEMM rows within
    noise), and each micro-kernel fewer saves ~20 ms of a cold compile.

    With c_stride=ldc, `tile` is the caller's C instead: tile[r*ldc + j] (+= when
    accumulating) = the sum, with element alignment only (for callers whose whole tiles need
    no epilogue: attention).
    """
    rs = row_stride
    name = f"graphc.gemm.uk.{dtype.short}.{mr}x{nr}.w{lanes}.u{unroll}"
    name += "" if rs == 1 else f".r{rs}"
    name += "" if c_stride is None else f".c{c_stride}{'a' if accumulate else ''}"
    fn = module.globals.get(name)
    if fn is not None:
        return fn
    fn = _new_function(module, name, [I64, PTR, PTR, PTR, I64, I64], noalias=(1, 2, 3))
    kc, ap0, bp0, tile, ps, bs = fn.args
    ety = storage_type(dtype)
    vty = compute_type(dtype, lanes)
    isz = dtype.itemsize
    nv = nr // lanes
    b = ir.IRBuilder(fn.append_basic_block("entry"))

    def at(base: ir.Value, u: int, step: ir.Value, disp: int) -> ir.Value:
        """&base[u*step + disp]."""
        ptr = base if u == 0 else elem_ptr(b, base, b.mul(step, i64(u)), ety)
        return elem_ptr(b, ptr, disp, ety)

    def step(accs: list[ir.Value], ap: ir.Value, bp: ir.Value, u: int) -> list[ir.Value]:
        bvs = [b.load(at(bp, u, bs, v * lanes), typ=vty, align=isz) for v in range(nv)]
        out = list(accs)
        for r in range(mr):
            a = b.load(at(ap, u, ps, r * rs), typ=ety, align=isz)
            av = splat(b, a, lanes)
            for v in range(nv):
                out[r * nv + v] = madd(b, dtype, av, bvs[v], out[r * nv + v])
        return out

    def loop(label: str, trips: ir.Value, u: int, accs: list[ir.Value], ap: ir.Value,
             bp: ir.Value) -> tuple[list[ir.Value], ir.Value, ir.Value]:
        """`trips` iterations of `u` steps; returns the accumulators and advanced pointers."""
        pre = b.block
        body = fn.append_basic_block(f"{label}.body")
        done = fn.append_basic_block(f"{label}.done")
        b.cbranch(b.icmp_signed(">", trips, i64(0)), body, done)
        b.position_at_end(body)
        it = b.phi(I64)
        pa = b.phi(PTR)
        pb = b.phi(PTR)
        phis = [b.phi(vty) for _ in accs]
        for phi, v in zip(phis, accs, strict=True):
            phi.add_incoming(v, pre)
        it.add_incoming(i64(0), pre)
        pa.add_incoming(ap, pre)
        pb.add_incoming(bp, pre)
        new = list(phis)
        for j in range(u):
            new = step(new, pa, pb, j)
        na = elem_ptr(b, pa, b.mul(ps, i64(u)), ety)
        nb = elem_ptr(b, pb, b.mul(bs, i64(u)), ety)
        nit = b.add(it, i64(1))
        for phi, v in zip(phis, new, strict=True):
            phi.add_incoming(v, body)
        it.add_incoming(nit, body)
        pa.add_incoming(na, body)
        pb.add_incoming(nb, body)
        keep_rolled(b.cbranch(b.icmp_signed("<", nit, trips), body, done))
        b.position_at_end(done)
        out = []
        for v_in, v_new in zip(accs, new, strict=True):
            phi = b.phi(vty)
            phi.add_incoming(v_in, pre)
            phi.add_incoming(v_new, body)
            out.append(phi)
        ra = b.phi(PTR)
        ra.add_incoming(ap, pre)
        ra.add_incoming(na, body)
        rb = b.phi(PTR)
        rb.add_incoming(bp, pre)
        rb.add_incoming(nb, body)
        return out, ra, rb

    accs = [zero(dtype, lanes)] * (mr * nv)
    main = b.udiv(kc, i64(unroll))
    accs, ap, bp = loop("main", main, unroll, accs, ap0, bp0)
    rest = b.sub(kc, b.mul(main, i64(unroll)))
    accs, _, _ = loop("rest", rest, 1, accs, ap, bp)
    cs = c_stride if c_stride is not None else nr
    c_align = align_of(lanes * isz) if c_stride is None else isz
    for r in range(mr):
        for v in range(nv):
            ptr = elem_ptr(b, tile, r * cs + v * lanes, ety)
            acc = accs[r * nv + v]
            if accumulate:
                acc = vadd(b, dtype, acc, b.load(ptr, typ=vty, align=c_align))
            b.store(acc, ptr, align=c_align)
    b.ret_void()
    return fn


def pack_function(module: ir.Module, dtype: DType, r: int, lanes: int,
                  transposed: bool) -> ir.Function:
    """`void pack(ptr src, i64 ld, i64 nx, i64 kc, ptr dst)`: pack nx x kc into R-wide panels.

    transposed=False: element (x, p) is src[p*ld + x] (x contiguous: plain vector copies).
    transposed=True:  element (x, p) is src[x*ld + p] (p contiguous: S x S register
    transposes of full panels; the p tail and edge panels go element by element).
    `dst` must be 64-byte aligned; it receives ceil(nx/R) panels of R*kc elements.
    """
    kind = "t" if transposed else "n"
    name = f"graphc.gemm.pack{kind}.{dtype.short}.r{r}.w{lanes}"
    fn = module.globals.get(name)
    if fn is not None:
        return fn
    fn = _new_function(module, name, [PTR, I64, I64, I64, PTR], noalias=(0, 4))
    src, ld, nx, kc, dst = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    npanels = b.udiv(b.add(nx, i64(r - 1)), i64(r))

    def panels(body: Callable[[ir.Value, ir.Value, ir.Value], None]) -> None:
        with for_range(b, 0, npanels, name="q") as q:
            x0 = b.mul(q, i64(r))
            body(x0, smin(b, r, b.sub(nx, x0)), elem_ptr(b, dst, b.mul(x0, kc), ety))

    ety = storage_type(dtype)
    if transposed:
        panels(lambda x0, valid, panel: _pack_t_panel(b, dtype, r, lanes, src, ld, x0, valid,
                                                      kc, panel))
    else:
        # A few source rows at a time across all panels: every cache line of those rows is
        # used while it is in L1 (a panel at a time would stride down the whole source once
        # per panel, and power-of-two row strides thrash L1 sets).
        with for_range(b, 0, kc, _PACK_ROWS, name="pr") as p0:
            p1 = smin(b, kc, b.add(p0, i64(_PACK_ROWS)))
            panels(lambda x0, valid, panel: _pack_n_panel(b, dtype, r, lanes, src, ld, x0,
                                                          valid, p0, p1, panel))
    b.ret_void()
    return fn


_PACK_ROWS = 16
# How far ahead of its loads a transposing pack prefetches each source row (bytes).
_PREFETCH_AHEAD = 256


def _pack_n_panel(b: ir.IRBuilder, dtype: DType, r: int, lanes: int, src: ir.Value,
                  ld: ir.Value, x0: ir.Value, valid: ir.Value, p0: ir.Value, p1: ir.Value,
                  panel: ir.Value) -> None:
    """Rows p0 <= p < p1 of one panel; lanes at x >= valid are zero (masked loads, only in
    a partial panel: masked loads of whole panels made B's packing a fifth of a 49 x 960 x
    160 GEMM on Zen 3)."""
    s = min(r, lanes)
    while r % s:
        s //= 2
    with b.if_else(b.icmp_signed("==", valid, i64(r))) as (whole, part):
        with whole:
            _pack_n_rows(b, dtype, r, s, src, ld, x0, p0, p1, panel, None)
        with part:
            masks = [lane_mask(b, s, c * s, valid) for c in range(r // s)]
            _pack_n_rows(b, dtype, r, s, src, ld, x0, p0, p1, panel, masks)


def _pack_n_rows(b: ir.IRBuilder, dtype: DType, r: int, s: int, src: ir.Value, ld: ir.Value,
                 x0: ir.Value, p0: ir.Value, p1: ir.Value, panel: ir.Value,
                 masks: list[ir.Value] | None) -> None:
    """Copy rows p0 <= p < p1 of one panel in vectors of s lanes, through `masks` if given."""
    ety = storage_type(dtype)
    vty = compute_type(dtype, s)
    with for_range(b, p0, p1, name="p") as p:
        row = elem_ptr(b, src, b.add(b.mul(p, ld), x0), ety)
        out = elem_ptr(b, panel, b.mul(p, i64(r)), ety)
        for c in range(r // s):
            at = elem_ptr(b, row, c * s, ety)
            if s == 1:
                if masks is None:
                    v = b.load(at, typ=ety, align=dtype.itemsize)
                else:  # a column past the panel's rows reads column 0 (in bounds), zeroed
                    live = b.extract_element(masks[c], i64(0))
                    at = elem_ptr(b, row, b.select(live, i64(c), i64(0)), ety)
                    v = b.select(live, b.load(at, typ=ety, align=dtype.itemsize), zero(dtype))
            elif masks is None:
                v = b.load(at, typ=vty, align=dtype.itemsize)
            else:
                v = masked_load(b, at, vty, masks[c], dtype.itemsize)
            b.store(v, elem_ptr(b, out, c * s, ety), align=align_of(s * dtype.itemsize))


def _pack_t_panel(b: ir.IRBuilder, dtype: DType, r: int, lanes: int, src: ir.Value,
                  ld: ir.Value, x0: ir.Value, valid: ir.Value, kc: ir.Value,
                  panel: ir.Value) -> None:
    ety = storage_type(dtype)
    isz = dtype.itemsize
    s = min(r & -r, lanes)  # the largest power of two dividing R, at most one register
    if s < lanes and r & (r - 1):
        # R not a power of two (AVX2's 6- and 5-row blocks, AVX-512's fitted 7 and 6): transpose
        # full-width blocks of up to `lanes` rows, padded with undefined rows, and store
        # each column's real rows; S x S blocks of the largest power of two dividing R
        # (2 x 2 for 6 rows, 1 x 1 for 5) were a third of a 49 x 960 x 160 GEMM.
        s = lanes
    vty = compute_type(dtype, s)
    fn = b.block.function
    fast = fn.append_basic_block("full")
    tail = fn.append_basic_block("tail")
    entry = b.block
    b.cbranch(b.icmp_signed("==", valid, i64(r)), fast, tail)

    # Whole S x S blocks of full panels, the R/S blocks of rows (1 or 2) emitted in turn;
    # unrolling along p (or the tail below) was no faster and each copy costs compile time.
    b.position_at_end(fast)
    nblk = b.udiv(kc, i64(s))
    with for_range(b, 0, nblk, name="pb") as pb:
        p0 = b.mul(pb, i64(s))
        for xb in range(0, r, s):  # static: R / S blocks, or one partial block
            cs = min(s, r - xb)
            starts = [elem_ptr(b, src, b.add(b.mul(b.add(x0, i64(xb + j)), ld), p0), ety)
                      for j in range(cs)]
            # R rows advance together here: more concurrent streams than the hardware
            # prefetchers follow, so weights arriving from memory stalled every block.
            for ptr in starts:
                prefetch(b, elem_ptr(b, ptr, _PREFETCH_AHEAD // isz, ety), False)
            for ptr in starts:  # the same lines of the next panel, into L2
                prefetch(b, elem_ptr(b, ptr, b.mul(ld, i64(2 * r)), ety), False, 2)
            rows = [b.load(ptr, typ=vty, align=isz) for ptr in starts]
            rows += [ir.Constant(vty, ir.Undefined)] * (s - cs)
            for t, col in enumerate(transpose(b, rows)):
                at = b.add(b.mul(b.add(p0, i64(t)), i64(r)), i64(xb))
                if cs < s:  # the real rows only: the next column starts cs elements on
                    col = b.shuffle_vector(col, ir.Constant(vty, ir.Undefined),
                                           shuffle_mask(tuple(range(cs))))
                # Columns R elements apart are vector-aligned only when S divides R.
                align = align_of(s * isz) if r % s == 0 else isz
                b.store(col, elem_ptr(b, panel, at, ety), align=align)
    p_done = b.mul(nblk, i64(s))
    fast_end = b.block
    b.branch(tail)

    # Element copies for p in [p_from, kc): the p tail of a full panel, or all of an edge
    # panel, whose rows x >= valid become zero. One loop nest serves both.
    b.position_at_end(tail)
    p_from = b.phi(I64, name="p_from")
    p_from.add_incoming(i64(0), entry)
    p_from.add_incoming(p_done, fast_end)
    with for_range(b, p_from, kc, name="pt") as p:
        with for_range(b, 0, r, name="xt") as x:
            ok = b.icmp_signed("<", x, valid)
            # Clamp the row so the load stays in bounds; the select zeroes it.
            xs = b.select(ok, x, i64(0))
            v = b.load(elem_ptr(b, src, b.add(b.mul(b.add(x0, xs), ld), p), ety),
                       typ=ety, align=isz)
            b.store(b.select(ok, v, zero(dtype)),
                    elem_ptr(b, panel, b.add(b.mul(p, i64(r)), x), ety), align=isz)


def store_tile_function(module: ir.Module, dtype: DType, lanes: int, nr: int) -> ir.Function:
    """`void st(ptr tile, ptr c, i64 ldc, i64 rows, i64 cols, i1 add)`: the epilogue-free
    tile store, shared: c[r*ldc + j] (+)= tile[r*nr + j] for r < rows, j < cols."""
    name = f"graphc.gemm.store.{dtype.short}.n{nr}.w{lanes}"
    fn = module.globals.get(name)
    if fn is not None:
        return fn
    fn = _new_function(module, name, [PTR, PTR, I64, I64, I64, I1], noalias=(0, 1))
    tile, c, ldc, rows, cols, load_c = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    store_tile_code(b, dtype, lanes, nr, tile, c, ldc, rows, cols, load_c, None, 0, 0)
    b.ret_void()
    return fn


def store_tile_code(b: ir.IRBuilder, dtype: DType, lanes: int, nr: int, tile: ir.Value,
                    c: ir.Value, ldc: ir.Value, rows: ir.Value, cols: ir.Value,
                    load_c: ir.Value | bool, epilogue: Epilogue | None, row0: Val,
                    col0: Val) -> None:
    """c[r*ldc + j] = epilogue(tile[r*nr + j] (+ c[r*ldc + j] when load_c)) for r < rows,
    j < cols; c points at C[row0, col0] (the epilogue's indices).

    Whole vectors first, then the columns past the last whole vector one by one, so the
    epilogue only ever sees in-bounds columns.
    """
    ety = storage_type(dtype)
    isz = dtype.itemsize
    vty = compute_type(dtype, lanes)

    def finish(x: ir.Value, cptr: ir.Value, row: ir.Value, col: Val, n: int) -> None:
        t = vty if n > 1 else ety
        x = if_value(b, load_c, x,
                     lambda v: vadd(b, dtype, v, b.load(cptr, typ=t, align=isz)), "addc")
        if epilogue is not None:
            x = epilogue(b, row, as_i64(add(b, col0, col)), x, n)
        b.store(x, cptr, align=isz)

    nv = b.udiv(cols, i64(lanes))
    with for_range(b, 0, rows, name="tr") as r:
        row = as_i64(add(b, row0, r))
        crow = elem_ptr(b, c, b.mul(r, ldc), ety)
        trow = elem_ptr(b, tile, b.mul(r, i64(nr)), ety)
        with for_range(b, 0, nv, name="tv") as v:
            j = b.mul(v, i64(lanes))
            x = b.load(elem_ptr(b, trow, j, ety), typ=vty, align=align_of(lanes * isz))
            finish(x, elem_ptr(b, crow, j, ety), row, j, lanes)
        with for_range(b, b.mul(nv, i64(lanes)), cols, name="ts") as j:
            x = b.load(elem_ptr(b, trow, j, ety), typ=ety, align=isz)
            finish(x, elem_ptr(b, crow, j, ety), row, j, 1)


def store_full_tile(b: ir.IRBuilder, dtype: DType, lanes: int, mr: int, nr: int,
                    tile: ir.Value, c: ir.Value, ldc: int, load_c: ir.Value | bool,
                    epilogue: Epilogue | None, row0: Val, col0: Val) -> None:
    """`store_tile_code` for a whole mr x nr tile: static trip counts, the row's vectors
    unrolled, and one branch on `load_c` for the whole tile instead of one per vector.
    The rows stay a loop: unrolling them too was no faster and repeats the epilogue's
    code mr times (compile time)."""
    ety = storage_type(dtype)
    isz = dtype.itemsize
    vty = compute_type(dtype, lanes)

    def emit(add_c: bool) -> None:
        with for_range(b, 0, mr, name="tr") as r:
            row = as_i64(add(b, row0, r))
            trow = elem_ptr(b, tile, b.mul(r, i64(nr)), ety)
            crow = elem_ptr(b, c, b.mul(r, i64(ldc)), ety)
            for v in range(nr // lanes):
                j = v * lanes
                x = b.load(elem_ptr(b, trow, j, ety), typ=vty, align=align_of(lanes * isz))
                cptr = elem_ptr(b, crow, j, ety)
                if add_c:
                    x = vadd(b, dtype, x, b.load(cptr, typ=vty, align=isz))
                if epilogue is not None:
                    x = epilogue(b, row, as_i64(add(b, col0, j)), x, lanes)
                b.store(x, cptr, align=isz)

    if isinstance(load_c, bool):
        emit(load_c)
        return
    with b.if_else(load_c) as (then, otherwise):
        with then:
            emit(True)
        with otherwise:
            emit(False)
