"""Index arithmetic for vectorized loops, and loads/stores at such indices.

An `Idx` is the index of one tensor dimension for all lanes of a vector iteration. It is
*affine* (`base + lane * coef`: lane 0 at `base`, then steps of `coef`) whenever it can be, so
that a load whose address is affine with coefficient 1 is one contiguous vector load, with
coefficient 0 one scalar load and a splat, and otherwise a gather. Index maps that are not
affine in the lane (a clamp, a select, an index read from memory) switch to an explicit
`<lanes x i64>` vector. With one lane everything is scalar.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import llvmlite.ir as ir

from graphc.codegen import bf16
from graphc.codegen.llvm_types import (
    I1,
    I8,
    I64,
    PTR,
    compute_type,
    intrinsic,
    shuffle_mask,
    storage_type,
)
from graphc.ir import DType


@dataclass(frozen=True)
class Idx:
    base: ir.Value  # i64: the index at lane 0 (or any lane, when vec is set)
    coef: int = 0  # lane stride, for the affine form
    vec: ir.Value | None = None  # <lanes x i64> when not affine


class IndexBuilder:
    """Builds index arithmetic and memory accesses for a fixed number of lanes."""

    def __init__(self, b: ir.IRBuilder, lanes: int, mask: ir.Value | None = None):
        self.b = b
        self.lanes = lanes
        # <lanes x i1>: only these lanes may be read (the live lanes of a row's last, partial
        # chunk: a full vector there could run past the end of an operand). Loads of vectors
        # then go through masked loads and gathers; dead lanes read 0.
        self.mask = mask

    # --- index arithmetic --------------------------------------------------------------
    def const(self, c: int) -> Idx:
        return Idx(ir.Constant(I64, c), 0)

    def lane(self, base: ir.Value) -> Idx:
        """The index of a vectorized loop dimension: base, base+1, ..."""
        return Idx(base, 1 if self.lanes > 1 else 0)

    def affine(self, a: Idx, mul: int = 1, add: int = 0) -> Idx:
        """a * mul + add."""
        b = self.b
        if a.vec is not None:
            v = a.vec
            if mul != 1:
                v = b.mul(v, self._splat_i64(mul))
            if add:
                v = b.add(v, self._splat_i64(add))
            return Idx(a.base, 0, v)
        base = a.base
        if isinstance(base, ir.Constant) and isinstance(base.constant, int):
            return Idx(ir.Constant(I64, base.constant * mul + add), a.coef * mul)
        if mul != 1:
            base = b.mul(base, ir.Constant(I64, mul))
        if add:
            base = b.add(base, ir.Constant(I64, add))
        return Idx(base, a.coef * mul)

    def linear(self, idxs: Sequence[Idx], strides: Sequence[int]) -> Idx:
        """sum(idx * stride): the element offset of a multi-index."""
        b = self.b
        if any(i.vec is not None for i in idxs):
            total = self._splat_i64(0)
            for i, s in zip(idxs, strides):
                if s:
                    total = b.add(total, b.mul(self.as_vector(i), self._splat_i64(s)))
            return Idx(ir.Constant(I64, 0), 0, total)
        base: ir.Value = ir.Constant(I64, 0)
        const_part = 0
        coef = 0
        for i, s in zip(idxs, strides):
            if s == 0:
                continue
            coef += i.coef * s
            if isinstance(i.base, ir.Constant) and isinstance(i.base.constant, int):
                const_part += i.base.constant * s
            else:
                term = i.base if s == 1 else b.mul(i.base, ir.Constant(I64, s))
                base = term if _is_zero(base) else b.add(base, term)
        if const_part:
            base = ir.Constant(I64, const_part) if _is_zero(base) else b.add(
                base, ir.Constant(I64, const_part))
        return Idx(base, coef)

    def as_vector(self, i: Idx) -> ir.Value:
        """The per-lane indices as <lanes x i64> (i64 when lanes == 1)."""
        if self.lanes == 1:
            return i.base
        if i.vec is not None:
            return i.vec
        splat = self._splat_value(i.base)
        if i.coef == 0:
            return splat
        steps = ir.Constant(ir.VectorType(I64, self.lanes),
                            [ir.Constant(I64, k * i.coef) for k in range(self.lanes)])
        return self.b.add(splat, steps)

    def from_vector(self, v: ir.Value) -> Idx:
        if self.lanes == 1:
            return Idx(v, 0)
        return Idx(ir.Constant(I64, 0), 0, v)

    def _splat_i64(self, c: int) -> ir.Value:
        if self.lanes == 1:
            return ir.Constant(I64, c)
        return ir.Constant(ir.VectorType(I64, self.lanes), [ir.Constant(I64, c)] * self.lanes)

    def _splat_value(self, v: ir.Value) -> ir.Value:
        return splat(self.b, v, self.lanes)

    # --- memory ------------------------------------------------------------------------
    def load(self, ptr: ir.Value, dtype: DType, offset: Idx) -> ir.Value:
        """Load element(s) of `dtype` at element `offset` of `ptr` (vector when lanes > 1)."""
        b = self.b
        st = storage_type(dtype)
        size = st.width // 8 if isinstance(st, ir.IntType) else (4 if dtype == DType.float32
                                                                   else 8)
        if self.lanes == 1 or (offset.vec is None and offset.coef == 0):
            addr = b.gep(ptr, [offset.base], inbounds=True, source_etype=st)
            value = b.load(addr, typ=st, align=size)
            value = _to_compute(b, value, dtype)
            return splat(b, value, self.lanes) if self.lanes > 1 else value
        if offset.vec is None and offset.coef == 1:
            addr = b.gep(ptr, [offset.base], inbounds=True, source_etype=st)
            vt = storage_type(dtype, self.lanes)
            if self.mask is not None:
                load = intrinsic(b.module, "llvm.masked.load", vt,
                                 [PTR, ir.IntType(32), self.mask.type, vt], [vt, PTR])
                return _to_compute(b, b.call(load, [addr, ir.Constant(ir.IntType(32), size),
                                                    self.mask, ir.Constant(vt, None)]), dtype)
            return _to_compute(b, b.load(addr, typ=vt, align=size), dtype)
        if offset.vec is None and offset.coef == -1 and self.mask is None:
            # A mirrored run (reverse, negative-step slice): one load and a lane reversal.
            start = b.sub(offset.base, ir.Constant(I64, self.lanes - 1))
            addr = b.gep(ptr, [start], inbounds=True, source_etype=st)
            vt = storage_type(dtype, self.lanes)
            loaded = b.load(addr, typ=vt, align=size)
            undef = ir.Constant(vt, ir.Undefined)
            order = ir.Constant(ir.VectorType(ir.IntType(32), self.lanes),
                                list(range(self.lanes - 1, -1, -1)))
            return _to_compute(b, b.shuffle_vector(loaded, undef, order), dtype)
        # A gather. llvmlite's gep cannot type a vector of pointers, so the addresses are
        # built as integers.
        base_int = b.ptrtoint(ptr, I64)
        byte_offsets = b.mul(self.as_vector(offset), self._splat_i64(size))
        addrs = b.add(self._splat_value(base_int), byte_offsets)
        ptrs = b.inttoptr(addrs, ir.VectorType(PTR, self.lanes))
        vt = storage_type(dtype, self.lanes)
        ptr_vec = ir.VectorType(PTR, self.lanes)
        mask_t = ir.VectorType(I1, self.lanes)
        gather = intrinsic(b.module, "llvm.masked.gather", vt,
                           [ptr_vec, ir.IntType(32), mask_t, vt], [vt, ptr_vec])
        mask = self.mask if self.mask is not None else ir.Constant(
            mask_t, [ir.Constant(I1, 1)] * self.lanes)
        value = b.call(gather, [ptrs, ir.Constant(ir.IntType(32), size), mask,
                                ir.Constant(vt, None)])
        return _to_compute(b, value, dtype)

    def store(self, ptr: ir.Value, dtype: DType, offset: Idx, value: ir.Value) -> None:
        """Store at element `offset` (contiguous lanes: offset must be affine with coef 1)."""
        b = self.b
        st = storage_type(dtype)
        size = st.width // 8 if isinstance(st, ir.IntType) else (4 if dtype == DType.float32
                                                                   else 8)
        value = _to_storage(b, value, dtype)
        addr = b.gep(ptr, [offset.base], inbounds=True, source_etype=st)
        if self.lanes > 1:
            assert offset.vec is None and offset.coef == 1, "stores must be contiguous"
        b.store(value, addr, align=size)


def splat(b: ir.IRBuilder, v: ir.Value, lanes: int) -> ir.Value:
    """Broadcast a scalar to <lanes x T>."""
    if lanes == 1:
        return v
    vt = ir.VectorType(v.type, lanes)
    if isinstance(v, ir.Constant):
        return ir.Constant(vt, [v] * lanes)
    undef = ir.Constant(vt, ir.Undefined)
    one = b.insert_element(undef, v, ir.Constant(ir.IntType(32), 0))
    return b.shuffle_vector(one, undef, shuffle_mask((0,) * lanes))


def _is_zero(v: ir.Value) -> bool:
    return isinstance(v, ir.Constant) and v.constant == 0


def _to_compute(b: ir.IRBuilder, v: ir.Value, dtype: DType) -> ir.Value:
    if dtype == DType.bfloat16:
        return bf16.widen(b, v)
    if dtype != DType.bool:
        return v
    zero = ir.Constant(v.type, None)
    return b.icmp_unsigned("!=", v, zero)


def _to_storage(b: ir.IRBuilder, v: ir.Value, dtype: DType) -> ir.Value:
    if dtype == DType.bfloat16:
        return bf16.narrow(b, v)
    if dtype != DType.bool:
        return v
    lanes = v.type.count if isinstance(v.type, ir.VectorType) else 1
    return b.zext(v, ir.VectorType(I8, lanes) if lanes > 1 else I8)


__all__ = ["Idx", "IndexBuilder", "compute_type", "splat"]
