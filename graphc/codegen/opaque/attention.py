"""What the attention kernels share: a node's static geometry (`Geometry`), block sizes,
static-size dispatch (`static_cases`), per-task scratch, addressing, the score epilogue
(scale, mask, causal -inf), its row-wise form for the register-blocked paths (`Scores`)
and row helpers.

The kernels themselves: `attention_forward` (attention, attention_lse, attention_with_lse:
an online softmax over key blocks; `attention_tiles` its many-query path) and
`attention_grad` (the FlashAttention-2 backward; `attention_grad_tiles` likewise).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import llvmlite.ir as ir

from graphc.codegen.context import KernelContext
from graphc.codegen.fused.expr import strides
from graphc.codegen.gemm.helpers import carried_loop, elem_ptr, for_range, lane_mask, masked_load
from graphc.codegen.index import splat
from graphc.codegen.llvm_types import I64, compute_type, const
from graphc.ir import DType, Node

BLOCK_Q = 64  # BR: query rows per block (a 64 x 64 float32 score tile is 16 KiB: L1)
BLOCK_KV = 256  # BC without a causal mask (fewer online-softmax rescales)
TASK_FLOPS = 1 << 19  # a task of at least this much work amortizes its wake-up
# Flops a core could do in the time it streams one byte from L3 (Zen 3: ~64 flops and
# ~18 bytes per cycle): what a byte of K or V read costs, in TASK_FLOPS' units.
KV_BYTE_FLOPS = 4
FEW_QUERIES = 16


@dataclass(frozen=True)
class Geometry:
    """The static facts of one attention node, shared by the forward and backward kernels."""

    dtype: DType
    lead: tuple[int, ...]  # leading dims and the query heads: (..., H)
    heads: int
    kv_heads: int
    tq: int
    tk: int
    dk: int
    dv: int
    causal: bool
    scale: float
    mask_strides: tuple[int, ...] | None  # element strides over (..., H, Tq, Tk); 0: broadcast

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads

    @property
    def batch(self) -> int:
        """Query (batch·head) matrices."""
        return math.prod(self.lead)

    @property
    def br(self) -> int:
        return min(BLOCK_Q, self.tq) if self.tq else 1

    @property
    def bc(self) -> int:
        # Causal: BR, so a query block's last key block is its diagonal. A few queries (a
        # decode step): small blocks too, so blocks a position mask hides are skipped.
        full = BLOCK_Q if self.causal or self.tq <= FEW_QUERIES else BLOCK_KV
        return min(full, self.tk) if self.tk else 1

    @property
    def row_invariant_mask(self) -> bool:
        """Whether the mask is the same for every query row (padding, a decode position):
        then a key block it hides entirely is skipped."""
        return self.mask_strides is not None and self.mask_strides[-2] == 0

    @property
    def ld(self) -> int:
        """Row stride of a score tile: BC padded to 16 elements (a full vector of float32
        on AVX-512), so a row's last vector never runs into the next row."""
        return -(-self.bc // 16) * 16

    def sizes(self, total: int, block: int) -> list[int]:
        """The distinct static sizes of the blocks of [0, total) (full, then the tail)."""
        out = [block] if total >= block else []
        if total % block:
            out.append(total % block)
        return out


def geometry(node: Node) -> Geometry:
    q, k, v, *rest = node.inputs
    mask = None
    if node.op == "attention_grad":
        before = 2 if node.attrs["packed"] else 3  # o, do (and lse) precede the mask
        mask = rest[before] if len(rest) > before else None
    elif rest:
        mask = rest[0]
    mask_strides = None
    if mask is not None:
        scores = (*q.shape[:-1], k.shape[-2])
        full = (1,) * (len(scores) - mask.ndim) + mask.shape
        mask_strides = tuple(0 if d == 1 else s for d, s in zip(full, strides(full)))
    return Geometry(q.dtype, q.shape[:-2], q.shape[-3], k.shape[-3], q.shape[-2], k.shape[-2],
                    q.shape[-1], v.shape[-1], bool(node.attrs["causal"]),
                    float(node.attrs["scale"]), mask_strides)


def grad_block_pairs(b: ir.IRBuilder, g: Geometry,
                     pair: Callable[[int, int, ir.Value, ir.Value], None]) -> None:
    """pair(m, n, i0, j0) for every (query block [i0, i0 + m), key block [j0, j0 + n)) of
    one head the backward visits: key blocks outermost (each accumulates its dK, dV), and
    with a causal mask only the query blocks from the one holding j0 (earlier rows see
    none of its keys). m and n are static (`static_cases` over the blocks' sizes)."""
    with for_range(b, 0, g.tk, g.bc, name="kb") as j0:
        keys = b.sub(i64(g.tk), j0)
        keys = b.select(b.icmp_signed("<", keys, i64(g.bc)), keys, i64(g.bc))
        i_start = b.mul(b.udiv(j0, i64(g.br)), i64(g.br)) if g.causal else i64(0)

        def key_block(n: int) -> None:
            with for_range(b, i_start, g.tq, g.br, name="qb") as i0:
                rows = b.sub(i64(g.tq), i0)
                rows = b.select(b.icmp_signed("<", rows, i64(g.br)), rows, i64(g.br))
                static_cases(b, rows, g.sizes(g.tq, g.br), lambda m: pair(m, n, i0, j0))

        static_cases(b, keys, g.sizes(g.tk, g.bc), key_block)


def static_cases(b: ir.IRBuilder, value: ir.Value, cases: list[int],
                 emit: Callable[[int], None]) -> None:
    """Emit `emit(c)` for the static case `c` equal to the runtime `value` (the last case
    runs when no earlier one matches: callers pass every value that can occur). No cases
    (the blocks of an empty range, whose loop never runs): nothing."""
    if not cases:
        return
    if len(cases) == 1:
        emit(cases[0])
        return
    fn = b.block.function
    done = fn.append_basic_block("case.done")
    for c in cases[:-1]:
        hit = fn.append_basic_block(f"case.{c}")
        miss = fn.append_basic_block(f"case.not{c}")
        b.cbranch(b.icmp_signed("==", value, ir.Constant(I64, c)), hit, miss)
        b.position_at_end(hit)
        emit(c)
        b.branch(done)
        b.position_at_end(miss)
    emit(cases[-1])
    b.branch(done)
    b.position_at_end(done)


def task_scratch(c: KernelContext, start: ir.Value, split: tuple[int, int] | None,
                 per_task: int) -> ir.Value:
    """The scratch of the task whose range starts at `start` (`split_plan`'s chunks: task
    start // chunk owns bytes [task · per_task, (task + 1) · per_task))."""
    assert c.scratch is not None
    if split is None:
        return c.scratch
    b = c.b
    return b.gep(c.scratch, [b.mul(b.udiv(start, i64(split[0])), i64(per_task))],
                 inbounds=True, source_etype=ir.IntType(8))


def i64(v: int) -> ir.Constant:
    return ir.Constant(I64, v)


def at(b: ir.IRBuilder, ptr: ir.Value, index: ir.Value | int, dtype: DType) -> ir.Value:
    return elem_ptr(b, ptr, index, compute_type(dtype))


def head_offsets(b: ir.IRBuilder, g: Geometry, bh: ir.Value) -> tuple[ir.Value, ir.Value]:
    """(key/value matrix index, mask offset) of query matrix `bh` (mask offset 0 if none)."""
    head = b.urem(bh, i64(g.heads))
    outer = b.udiv(bh, i64(g.heads))
    kv = b.add(b.mul(outer, i64(g.kv_heads)), b.udiv(head, i64(g.group)))
    offset: ir.Value = i64(0)
    if g.mask_strides is not None:
        rest = bh
        for dim, stride in zip(reversed(g.lead), reversed(g.mask_strides[:len(g.lead)])):
            if stride:
                offset = b.add(offset, b.mul(b.urem(rest, i64(dim)), i64(stride)))
            rest = b.udiv(rest, i64(dim))
    return kv, offset


def score_epilogue(g: Geometry, mask: ir.Value | None, mask_base: ir.Value, i0: ir.Value,
                   j0: ir.Value) -> Callable[[ir.IRBuilder, ir.Value, ir.Value, ir.Value, int],
                                             ir.Value]:
    """The S GEMM's epilogue: acc · scale, plus the mask, and -inf where causal hides a key.
    (`row`, `col` are the tile's; the block starts at query i0 and key j0.)"""
    dtype = g.dtype

    def epilogue(eb: ir.IRBuilder, row: ir.Value, col: ir.Value, acc: ir.Value,
                 lanes: int) -> ir.Value:
        s = eb.fmul(acc, const(dtype, g.scale, lanes))
        i = eb.add(i0, row)
        j = eb.add(j0, col)
        if mask is not None and g.mask_strides is not None:
            sq, sk = g.mask_strides[-2:]
            off = eb.add(mask_base, eb.add(eb.mul(i, i64(sq)), eb.mul(j, i64(sk))))
            ptr = at(eb, mask, off, dtype)
            if lanes == 1 or sk == 0:
                m = splat(eb, eb.load(ptr, typ=compute_type(dtype), align=dtype.itemsize), lanes)
            else:
                m = eb.load(ptr, typ=compute_type(dtype, lanes), align=dtype.itemsize)
            s = eb.fadd(s, m)
        if g.causal:
            cols = splat(eb, j, lanes)
            if lanes > 1:
                cols = eb.add(cols, ir.Constant(ir.VectorType(I64, lanes), list(range(lanes))))
            hidden = eb.icmp_signed(">", cols, splat(eb, i, lanes))
            s = eb.select(hidden, const(dtype, -math.inf, lanes), s)
        return s

    return epilogue


def row_vectors(b: ir.IRBuilder, g: Geometry, tile: ir.Value, row: ir.Value, n: int,
                lanes: int, visit: Callable[[ir.Value, ir.Value, ir.Value], None]) -> None:
    """visit(ptr, values, valid) over row `row` of a score tile (row stride `ld`) in vectors;
    lanes at or past column n are not valid (their values are -inf)."""
    dtype = g.dtype
    vt = compute_type(dtype, lanes)
    base = b.mul(row, i64(g.ld))
    for c in range(0, n, lanes):
        ptr = at(b, tile, b.add(base, i64(c)), dtype)
        valid = lane_mask(b, lanes, c, n)
        v = masked_load(b, ptr, vt, valid, dtype.itemsize) if c + lanes > n else \
            b.load(ptr, typ=vt, align=dtype.itemsize)
        if c + lanes > n:
            v = b.select(valid, v, const(dtype, -math.inf, lanes))
        visit(ptr, v, valid)


def lanes_max(b: ir.IRBuilder, dtype: DType, v: ir.Value) -> ir.Value:
    """The largest lane of `v` (a scalar as is)."""
    if not isinstance(v.type, ir.VectorType):
        return v
    n = v.type.count
    while n > 1:
        h = n // 2
        lo = b.shuffle_vector(v, ir.Constant(v.type, ir.Undefined),
                              ir.Constant(ir.VectorType(ir.IntType(32), h), list(range(h))))
        hi = b.shuffle_vector(v, ir.Constant(v.type, ir.Undefined),
                              ir.Constant(ir.VectorType(ir.IntType(32), h), list(range(h, n))))
        v = b.select(b.fcmp_ordered(">", lo, hi), lo, hi)
        n = h
    return b.extract_element(v, i64(0))


def vmax(b: ir.IRBuilder, dtype: DType, x: ir.Value, y: ir.Value) -> ir.Value:
    return b.select(b.fcmp_ordered(">", x, y), x, y)


def aligned(n: int) -> int:
    return (n + 63) // 64 * 64


def zero_fill(b: ir.IRBuilder, dtype: DType, lanes: int, ptr: ir.Value, count: int) -> None:
    vt = compute_type(dtype, lanes)
    full = count // lanes * lanes
    with for_range(b, 0, full, lanes, name="z") as i:
        b.store(ir.Constant(vt, None), at(b, ptr, i, dtype), align=dtype.itemsize)
    for i in range(full, count):
        b.store(const(dtype, 0.0), at(b, ptr, i, dtype), align=dtype.itemsize)


def scale_row(b: ir.IRBuilder, dtype: DType, lanes: int, ptr: ir.Value, count: int,
               factor: ir.Value) -> None:
    """ptr[0:count] *= factor (count static)."""
    for c in range(0, count, lanes):
        w = min(lanes, count - c)
        if w != lanes:
            for e in range(c, count):
                p = at(b, ptr, e, dtype)
                x = b.load(p, typ=compute_type(dtype), align=dtype.itemsize)
                b.store(b.fmul(x, factor), p, align=dtype.itemsize)
            break
        p = at(b, ptr, c, dtype)
        x = b.load(p, typ=compute_type(dtype, lanes), align=dtype.itemsize)
        b.store(b.fmul(x, splat(b, factor, lanes)), p, align=dtype.itemsize)


@dataclass(frozen=True)
class Scores:
    """How a row of raw Q Kᵀ sums in a tile becomes scores: · scale, + the mask, -inf past
    the block's n keys and (diag not None) right of the causal diagonal."""

    g: Geometry
    ld: int  # the tile's row stride
    lanes: int
    n: int
    mask: ir.Value | None
    mask_base: ir.Value
    i0: ir.Value
    j0: ir.Value
    diag: ir.Value | None

    def vector(self, b: ir.IRBuilder, tile: ir.Value, r: ir.Value, v: ir.Value
               ) -> tuple[ir.Value, ir.Value, ir.Value]:
        """(pointer, scores, valid lanes) of vector v of row r."""
        g, lanes = self.g, self.lanes
        dtype = g.dtype
        col = b.mul(v, i64(lanes))
        ptr = at(b, tile, b.add(b.mul(r, i64(self.ld)), col), dtype)
        x = b.fmul(b.load(ptr, typ=compute_type(dtype, lanes), align=dtype.itemsize),
                   const(dtype, g.scale, lanes))
        cols = b.add(splat(b, col, lanes),
                     ir.Constant(ir.VectorType(I64, lanes), list(range(lanes))))
        valid = b.icmp_signed("<", cols, splat(b, i64(self.n), lanes))
        if self.mask is not None and g.mask_strides is not None:
            sq, sk = g.mask_strides[-2:]
            off = b.add(self.mask_base, b.add(b.mul(b.add(self.i0, r), i64(sq)),
                                              b.mul(b.add(self.j0, col), i64(sk))))
            mp = at(b, self.mask, off, dtype)
            if sk == 0:
                mv = splat(b, b.load(mp, typ=compute_type(dtype), align=dtype.itemsize),
                           lanes)
            else:
                mv = masked_load(b, mp, compute_type(dtype, lanes), valid, dtype.itemsize)
            x = b.fadd(x, mv)
        if self.diag is not None:  # key j0 + c is hidden from query i0 + r when c > r + diag
            seen = b.icmp_signed("<=", cols, splat(b, b.add(r, self.diag), lanes))
            x = b.select(seen, x, const(dtype, -math.inf, lanes))
        return ptr, b.select(valid, x, const(dtype, -math.inf, lanes)), valid


def vector_loop(b: ir.IRBuilder, count: ir.Value | int, init: list[ir.Value],
                body: Callable[[ir.Value, list[ir.Value]], list[ir.Value]],
                name: str) -> list[ir.Value]:
    """`carried_loop` over [0, count), unrolled when count is static (a row's whole
    width: the column checks against n then fold away)."""
    if isinstance(count, ir.Value):
        return carried_loop(b, 0, count, init, body, name=name)
    for v in range(count):
        init = body(i64(v), init)
    return init
