"""Small LLVM IR helpers shared by the GEMM emitters (loops, intrinsics, vector utilities).

Everything here emits at the builder's current position and leaves the builder positioned
where straight-line code can continue. Index arithmetic is done in i64.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import llvmlite.ir as ir

from graphc.codegen.llvm_types import (
    I1,
    I32,
    I64,
    PTR,
    VOID,
    compute_type,
    i64,
    intrinsic,
    shuffle_mask,
)
from graphc.codegen.loops import keep_rolled
from graphc.ir import DType

Val = ir.Value | int
"""An i64 index: an IR value, or a Python int that becomes a constant."""


def as_i64(v: Val) -> ir.Value:
    return i64(v) if isinstance(v, int) else v


def add(b: ir.IRBuilder, x: Val, y: Val) -> Val:
    """x + y, folded when both are Python ints (keeps static index math out of the IR)."""
    if isinstance(x, int) and isinstance(y, int):
        return x + y
    if isinstance(y, int) and y == 0:
        return x
    if isinstance(x, int) and x == 0:
        return y
    return b.add(as_i64(x), as_i64(y))


def mul(b: ir.IRBuilder, x: Val, y: Val) -> Val:
    """x * y, folded when both are Python ints."""
    if isinstance(x, int) and isinstance(y, int):
        return x * y
    if isinstance(y, int) and y == 1:
        return x
    if isinstance(x, int) and x == 1:
        return y
    if (isinstance(x, int) and x == 0) or (isinstance(y, int) and y == 0):
        return 0
    return b.mul(as_i64(x), as_i64(y))


def smin(b: ir.IRBuilder, x: Val, y: Val) -> Val:
    if isinstance(x, int) and isinstance(y, int):
        return min(x, y)
    xv, yv = as_i64(x), as_i64(y)
    return b.select(b.icmp_signed("<", xv, yv), xv, yv)


def elem_ptr(b: ir.IRBuilder, base: ir.Value, index: Val, ety: ir.Type) -> ir.Value:
    """&base[index] for elements of type `ety`."""
    if isinstance(index, int) and index == 0:
        return base
    return b.gep(base, [as_i64(index)], inbounds=True, source_etype=ety)


@contextmanager
def for_range(b: ir.IRBuilder, start: Val, stop: Val, step: int = 1,
              name: str = "i", rolled: bool = True) -> Iterator[ir.Value]:
    """`for (i = start; i < stop; i += step)` (signed compare). Yields the induction value.

    The body may create blocks of its own; the back edge is taken from wherever the body
    leaves the builder. rolled (the default: every GEMM loop is blocked by hand already)
    forbids LLVM to unroll or vectorize it (`keep_rolled`).
    """
    pre = b.block
    fn = pre.function
    header = fn.append_basic_block(f"{name}.head")
    body = fn.append_basic_block(f"{name}.body")
    done = fn.append_basic_block(f"{name}.done")
    b.branch(header)
    b.position_at_end(header)
    iv = b.phi(I64, name=name)
    iv.add_incoming(as_i64(start), pre)
    b.cbranch(b.icmp_signed("<", iv, as_i64(stop)), body, done)
    b.position_at_end(body)
    yield iv
    nxt = b.add(iv, i64(step), name=f"{name}.next")
    iv.add_incoming(nxt, b.block)
    back = b.branch(header)
    if rolled:
        keep_rolled(back)
    b.position_at_end(done)


def if_value(b: ir.IRBuilder, cond: ir.Value | bool, value: ir.Value,
             then: Callable[[ir.Value], ir.Value], name: str = "sel") -> ir.Value:
    """`cond ? then(value) : value`, with the code of `then` run only when cond holds.

    A Python bool is decided at emission time (no branch emitted).
    """
    if isinstance(cond, bool):
        return then(value) if cond else value
    fn = b.block.function
    before = b.block
    yes = fn.append_basic_block(f"{name}.then")
    join = fn.append_basic_block(f"{name}.join")
    b.cbranch(cond, yes, join)
    b.position_at_end(yes)
    new = then(value)
    yes_end = b.block
    b.branch(join)
    b.position_at_end(join)
    phi = b.phi(value.type, name=name)
    phi.add_incoming(value, before)
    phi.add_incoming(new, yes_end)
    return phi


def madd(b: ir.IRBuilder, dtype: DType, x: ir.Value, y: ir.Value, acc: ir.Value) -> ir.Value:
    """acc + x*y: `llvm.fma` for floats (explicit: no fast-math flags needed), mul+add for ints."""
    if not dtype.is_float:
        return b.add(acc, b.mul(x, y))
    t = acc.type
    fn = intrinsic(b.module, "llvm.fma", t, [t, t, t])
    return b.call(fn, [x, y, acc])


def vadd(b: ir.IRBuilder, dtype: DType, x: ir.Value, y: ir.Value) -> ir.Value:
    return b.fadd(x, y) if dtype.is_float else b.add(x, y)


def splat(b: ir.IRBuilder, scalar: ir.Value, lanes: int) -> ir.Value:
    """<lanes x T> with every lane equal to `scalar` (folds into an embedded broadcast)."""
    if lanes == 1:
        return scalar
    vt = ir.VectorType(scalar.type, lanes)
    v = b.insert_element(ir.Constant(vt, ir.Undefined), scalar, i64(0))
    return b.shuffle_vector(v, ir.Constant(vt, ir.Undefined), shuffle_mask((0,) * lanes))


def lane_mask(b: ir.IRBuilder, lanes: int, first: Val, count: Val) -> ir.Value:
    """<lanes x i1>: lane l is on when first + l < count."""
    if isinstance(first, int) and isinstance(count, int):
        return ir.Constant(ir.VectorType(I1, lanes), [int(first + j < count) for j in range(lanes)])
    iota = ir.Constant(ir.VectorType(I64, lanes), list(range(lanes)))
    idx = b.add(iota, _vector_splat(b, as_i64(first), lanes)) if first != 0 else iota
    return b.icmp_signed("<", idx, _vector_splat(b, as_i64(count), lanes))


def _vector_splat(b: ir.IRBuilder, scalar: ir.Value, lanes: int) -> ir.Value:
    """`splat`, but a vector also for one lane (a mask of one lane is <1 x i1>: a panel of
    7 float64 rows on 4-lane AVX2 packs one lane at a time)."""
    if lanes > 1:
        return splat(b, scalar, lanes)
    return b.insert_element(ir.Constant(ir.VectorType(scalar.type, 1), ir.Undefined), scalar,
                            i64(0))


def masked_load(b: ir.IRBuilder, ptr: ir.Value, vt: ir.VectorType, mask: ir.Value,
                align: int) -> ir.Value:
    """Load the lanes of `mask` from ptr; off lanes read as zero and never touch memory."""
    mt = ir.VectorType(I1, vt.count)
    # The (ptr, i32 align, mask, passthru) form; LLVM upgrades it to the align attribute.
    fn = intrinsic(b.module, "llvm.masked.load", vt, [PTR, I32, mt, vt], [vt, PTR])
    return b.call(fn, [ptr, ir.Constant(I32, align), mask, ir.Constant(vt, None)])


def prefetch(b: ir.IRBuilder, ptr: ir.Value, write: bool, locality: int = 3) -> None:
    """A cache-line prefetch hint (never faults, so `ptr` may be past the end); locality 3
    fetches into L1, 2 into L2."""
    fn = intrinsic(b.module, "llvm.prefetch", VOID, [PTR, I32, I32, I32], [PTR])
    b.call(fn, [ptr, ir.Constant(I32, int(write)), ir.Constant(I32, locality),
                ir.Constant(I32, 1)])


def hsum(b: ir.IRBuilder, dtype: DType, v: ir.Value) -> ir.Value:
    """The sum of the lanes of `v` by a halving shuffle tree (a fixed, reassociated order)."""
    n = v.type.count
    while n > 1:
        h = n // 2
        undef = ir.Constant(v.type, ir.Undefined)
        lo = b.shuffle_vector(v, undef, ir.Constant(ir.VectorType(I32, h), list(range(h))))
        hi = b.shuffle_vector(v, undef, ir.Constant(ir.VectorType(I32, h), list(range(h, n))))
        v = vadd(b, dtype, lo, hi)
        n = h
    return b.extract_element(v, i64(0))


def sub_vector(b: ir.IRBuilder, v: ir.Value, start: int, lanes: int) -> ir.Value:
    """Lanes [start, start+lanes) of `v` (a scalar when lanes == 1)."""
    if lanes == 1:
        return b.extract_element(v, i64(start))
    if start == 0 and lanes == v.type.count:
        return v
    return b.shuffle_vector(v, ir.Constant(v.type, ir.Undefined),
                            ir.Constant(ir.VectorType(I32, lanes),
                                        list(range(start, start + lanes))))


def pow2_pieces(count: int) -> list[tuple[int, int]]:
    """Split `count` lanes into (offset, width) pieces of decreasing powers of two."""
    pieces, off, w = [], 0, 1 << max(count.bit_length() - 1, 0)
    while count and w:
        if count >= w:
            pieces.append((off, w))
            off += w
            count -= w
        w //= 2
    return pieces


def zero(dtype: DType, lanes: int = 1) -> ir.Constant:
    return ir.Constant(compute_type(dtype, lanes), None)


def transpose(b: ir.IRBuilder, rows: list[ir.Value]) -> list[ir.Value]:
    """Transpose an S x S block held as S vectors of S lanes (S a power of two).

    Stage k swaps bit k of the row index with bit k of the lane index: each stage is S
    two-input shuffles (unpack/permute instructions), log2(S) stages in all.
    """
    s = len(rows)
    k = 1
    while k < s:
        out = list(rows)
        for r0 in range(s):
            if r0 & k:
                continue
            r1 = r0 | k
            lo = [c if not c & k else s + c - k for c in range(s)]
            hi = [c + k if not c & k else s + c for c in range(s)]
            out[r0] = b.shuffle_vector(rows[r0], rows[r1], shuffle_mask(tuple(lo)))
            out[r1] = b.shuffle_vector(rows[r0], rows[r1], shuffle_mask(tuple(hi)))
        rows = out
        k *= 2
    return rows


def carried_loop(b: ir.IRBuilder, start: Val, stop: Val, init: list[ir.Value],
                 body: Callable[[ir.Value, list[ir.Value]], list[ir.Value]],
                 step: int = 1, name: str = "k") -> list[ir.Value]:
    """A counted loop carrying `init` through `body(iv, values) -> values`; returns the final
    values. A statically empty loop emits nothing and returns `init`. Kept rolled."""
    if isinstance(start, int) and isinstance(stop, int) and start >= stop:
        return init
    pre = b.block
    fn = pre.function
    header = fn.append_basic_block(f"{name}.head")
    loop = fn.append_basic_block(f"{name}.body")
    done = fn.append_basic_block(f"{name}.done")
    b.branch(header)
    b.position_at_end(header)
    iv = b.phi(I64, name=name)
    iv.add_incoming(as_i64(start), pre)
    phis = []
    for j, v in enumerate(init):
        phi = b.phi(v.type, name=f"{name}.c{j}")
        phi.add_incoming(v, pre)
        phis.append(phi)
    b.cbranch(b.icmp_signed("<", iv, as_i64(stop)), loop, done)
    b.position_at_end(loop)
    new = body(iv, list(phis))
    end = b.block
    for phi, v in zip(phis, new, strict=True):
        phi.add_incoming(v, end)
    iv.add_incoming(b.add(iv, i64(step)), end)
    keep_rolled(b.branch(header))
    b.position_at_end(done)
    return list(phis)


def align_of(nbytes: int) -> int:
    """The alignment (<= 64) that every multiple of `nbytes` from a 64-aligned base has."""
    return min(64, nbytes & -nbytes) if nbytes else 64
