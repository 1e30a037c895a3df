"""Sliding-window building blocks shared by the convolution and pooling lowerings.

NCHW kernels vectorize over the output width: one `<L x T>` vector holds L adjacent outputs
of one output row, and output column q reads input column ``q*stride + offset`` under each
kernel tap. `Run` loads (or read-modify-writes) those L input elements of one input row:
- stride 1: one contiguous vector load;
- stride 2-4: one contiguous load of about L*stride elements and a shuffle keeping every
  stride-th one (cheaper than a gather);
- larger strides: a gather.
A run is *checked* when some lanes may fall outside the row (``[0, width)``): those lanes are
masked off with LLVM's masked loads/stores (they read `fill` and are never written), so
generated code never touches memory outside a row. A run may also have a `limit`: only the
lanes below it are live (the last, partial chunk of an output row).

`plan_chunks` splits an output row into chunks of L and finds (statically) the interior:
the chunks whose every tap stays inside the input row. `emit_chunks` runs one loop over the
chunks with two bodies: interior chunks use plain vector loads; the others (borders and the
final partial chunk) are checked, with a runtime count of live lanes. Two bodies rather
than one per segment keep the generated code (and LLVM time) small.

`transposed_phases` describes the column loop of the transposed ops (conv2d_grad_input, the
pooling gradients) so that they too read contiguous runs: see `ColPhase`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import llvmlite.ir as ir

from graphc.codegen.index import splat
from graphc.codegen.llvm_types import I1, I8, I32, I64, PTR, VOID, intrinsic, storage_type
from graphc.codegen.loops import for_range
from graphc.ir import DType

ChunkBody = Callable[[ir.Value, bool, "ir.Value | None"], None]

MAX_STATIC_TAPS = 16  # kernel taps along one axis up to this count are unrolled


def i64(v: int) -> ir.Constant:
    return ir.Constant(I64, v)


def iota(lanes: int, step: int = 1) -> ir.Constant:
    """The constant vector <0, step, 2*step, ...> of `lanes` i64."""
    return ir.Constant(ir.VectorType(I64, lanes), [i64(k * step) for k in range(lanes)])


def lin(b: ir.IRBuilder, terms: list[tuple[ir.Value | int, int]], const: int = 0) -> ir.Value:
    """sum(v * s) + const in i64, folding constant terms."""
    total: ir.Value | None = None
    for v, s in terms:
        if s == 0:
            continue
        if isinstance(v, int):
            const += v * s
            continue
        if isinstance(v, ir.Constant) and isinstance(v.constant, int):
            const += v.constant * s
            continue
        term = v if s == 1 else b.mul(v, i64(s))
        total = term if total is None else b.add(total, term)
    if total is None:
        return i64(const)
    return b.add(total, i64(const)) if const else total


def pick_lanes(target_lanes: int, n: int) -> int:
    """Lanes for a row of `n` outputs: the target's width, or less for short rows (>= 2)."""
    want = 1 << max(n - 1, 1).bit_length()
    return max(2, min(target_lanes, want))


def element_ptr(b: ir.IRBuilder, ptr: ir.Value, dtype: DType, offset: ir.Value,
                inbounds: bool = True) -> ir.Value:
    return b.gep(ptr, [offset], inbounds=inbounds, source_etype=storage_type(dtype))


def load_scalar(b: ir.IRBuilder, ptr: ir.Value, dtype: DType, offset: ir.Value) -> ir.Value:
    return b.load(element_ptr(b, ptr, dtype, offset), typ=storage_type(dtype),
                  align=dtype.itemsize)


def fma(b: ir.IRBuilder, x: ir.Value, y: ir.Value, acc: ir.Value) -> ir.Value:
    """x * y + acc with one rounding (llvm.fma)."""
    fn = intrinsic(b.module, "llvm.fma", acc.type, [acc.type] * 3)
    return b.call(fn, [x, y, acc])


def all_true(lanes: int) -> ir.Constant:
    return ir.Constant(ir.VectorType(I1, lanes), [ir.Constant(I1, 1)] * lanes)


def live_lanes(b: ir.IRBuilder, lanes: int, limit: ir.Value) -> ir.Value:
    """<lanes x i1>: lane t < limit."""
    return b.icmp_signed("<", iota(lanes), splat(b, limit, lanes))


def masked_load(b: ir.IRBuilder, addr: ir.Value, dtype: DType, mask: ir.Value,
                fill: ir.Value) -> ir.Value:
    vt = fill.type
    fn = intrinsic(b.module, "llvm.masked.load", vt, [PTR, I32, mask.type, vt], [vt, PTR])
    return b.call(fn, [addr, ir.Constant(I32, dtype.itemsize), mask, fill])


def masked_store(b: ir.IRBuilder, addr: ir.Value, dtype: DType, mask: ir.Value,
                 value: ir.Value) -> None:
    vt = value.type
    fn = intrinsic(b.module, "llvm.masked.store", VOID, [vt, PTR, I32, mask.type], [vt, PTR])
    b.call(fn, [value, addr, ir.Constant(I32, dtype.itemsize), mask])


def _addresses(b: ir.IRBuilder, ptr: ir.Value, dtype: DType, offsets: ir.Value) -> ir.Value:
    # llvmlite's gep cannot build a vector of pointers: compute the addresses as integers.
    lanes = offsets.type.count
    base = splat(b, b.ptrtoint(ptr, I64), lanes)
    addrs = b.add(base, b.mul(offsets, splat(b, i64(dtype.itemsize), lanes)))
    return b.inttoptr(addrs, ir.VectorType(PTR, lanes))


def gather(b: ir.IRBuilder, ptr: ir.Value, dtype: DType, offsets: ir.Value,
           mask: ir.Value | None, fill: ir.Value) -> ir.Value:
    """ptr[offsets[t]] for the lanes of `mask` (all when None), `fill` elsewhere."""
    lanes = offsets.type.count
    vt = fill.type
    pv = ir.VectorType(PTR, lanes)
    mask = all_true(lanes) if mask is None else mask
    fn = intrinsic(b.module, "llvm.masked.gather", vt, [pv, I32, mask.type, vt], [vt, pv])
    return b.call(fn, [_addresses(b, ptr, dtype, offsets), ir.Constant(I32, dtype.itemsize),
                       mask, fill])


def scatter(b: ir.IRBuilder, ptr: ir.Value, dtype: DType, offsets: ir.Value,
            mask: ir.Value | None, value: ir.Value) -> None:
    """ptr[offsets[t]] = value[t] for the lanes of `mask` (offsets must be distinct)."""
    lanes = offsets.type.count
    vt = value.type
    pv = ir.VectorType(PTR, lanes)
    mask = all_true(lanes) if mask is None else mask
    fn = intrinsic(b.module, "llvm.masked.scatter", VOID, [vt, pv, I32, mask.type], [vt, pv])
    b.call(fn, [value, _addresses(b, ptr, dtype, offsets), ir.Constant(I32, dtype.itemsize),
                mask])


def memset_zero(b: ir.IRBuilder, ptr: ir.Value, nbytes: int | ir.Value) -> None:
    """Zero `nbytes` (a constant, or an i64 computed at run time) bytes at `ptr`."""
    if isinstance(nbytes, int) and nbytes <= 0:
        return
    fn = intrinsic(b.module, "llvm.memset", VOID, [PTR, I8, I64, I1], [PTR, I64])
    size = i64(nbytes) if isinstance(nbytes, int) else nbytes
    b.call(fn, [ptr, ir.Constant(I8, 0), size, ir.Constant(I1, 0)])


def const_splat(dtype: DType, value: float, lanes: int) -> ir.Constant:
    """<lanes x T> of `value` in `dtype`'s storage type."""
    t = storage_type(dtype)
    c = ir.Constant(t, value if dtype.is_float else int(value))
    return ir.Constant(ir.VectorType(t, lanes), [c] * lanes)


def in_range(b: ir.IRBuilder, v: ir.Value, lo: int, hi: int) -> ir.Value:
    """lo <= v < hi (signed; scalar or vector)."""
    lanes = v.type.count if isinstance(v.type, ir.VectorType) else 1
    lo_c, hi_c = splat(b, i64(lo), lanes), splat(b, i64(hi), lanes)
    return b.and_(b.icmp_signed(">=", v, lo_c), b.icmp_signed("<", v, hi_c))


# --- runs -----------------------------------------------------------------------------------

@dataclass
class Run:
    """Lanes t < `lanes` of one row: element ``col0 + t*stride`` of a row of `width`."""

    b: ir.IRBuilder
    lanes: int
    col0: ir.Value  # i64 column of lane 0 (may be negative when checked)
    stride: int
    width: int
    checked: bool  # lanes may fall outside [0, width): mask them
    limit: ir.Value | None = None  # i64: only lanes < limit are live (None: all)

    @property
    def _wide(self) -> bool:
        return 1 < self.stride <= 4

    def _addr(self, row: ir.Value, dtype: DType) -> ir.Value:
        # A checked run may start before the row: no `inbounds` promise then.
        return element_ptr(self.b, row, dtype, self.col0, inbounds=not self.checked)

    def _mask(self, n: int, step: int) -> ir.Value | None:
        """Mask of n elements at columns col0 + e*step that belong to live lanes (and lie
        inside the row when checked); None when all do."""
        b = self.b
        parts: list[ir.Value] = []
        per_lane = self.stride // step  # elements per lane (the wide form reads between)
        if self.limit is not None:
            # Element e belongs to a live lane when e <= (limit - 1) * per_lane.
            last = b.mul(b.sub(self.limit, i64(1)), i64(per_lane))
            parts.append(b.icmp_signed("<=", iota(n), splat(b, last, n)))
        elif n > (self.lanes - 1) * per_lane + 1:
            live = (self.lanes - 1) * per_lane + 1
            parts.append(ir.Constant(ir.VectorType(I1, n),
                                     [ir.Constant(I1, int(e < live)) for e in range(n)]))
        if self.checked:
            cols = b.add(splat(b, self.col0, n), iota(n, step))
            parts.append(in_range(b, cols, 0, self.width))
        if not parts:
            return None
        mask = parts[0]
        for p in parts[1:]:
            mask = b.and_(mask, p)
        return mask

    def lane_mask(self) -> ir.Value | None:
        """Which lanes are live and inside the row (None: all)."""
        return self._mask(self.lanes, self.stride)

    def offsets(self) -> ir.Value:
        """The columns of all lanes as <lanes x i64>."""
        b = self.b
        return b.add(splat(b, self.col0, self.lanes), iota(self.lanes, self.stride))

    def load(self, row: ir.Value, dtype: DType, fill: float) -> ir.Value:
        """The run's elements of `row` (a pointer to its column 0); masked lanes get fill."""
        b = self.b
        fill_v = const_splat(dtype, fill, self.lanes)
        if self.stride == 1 or self._wide:
            n = self.lanes * self.stride
            mask = self._mask(n, 1)
            addr = self._addr(row, dtype)
            if mask is None:
                wide = b.load(addr, typ=ir.VectorType(storage_type(dtype), n),
                              align=dtype.itemsize)
            else:
                wide = masked_load(b, addr, dtype, mask, const_splat(dtype, fill, n))
            if self.stride == 1:
                return wide
            pick = ir.Constant(ir.VectorType(I32, self.lanes),
                               [ir.Constant(I32, t * self.stride) for t in range(self.lanes)])
            return b.shuffle_vector(wide, ir.Constant(wide.type, ir.Undefined), pick)
        return gather(b, row, dtype, self.offsets(), self.lane_mask(), fill_v)

    def store(self, row: ir.Value, dtype: DType, value: ir.Value) -> None:
        """Write the live lanes inside the row."""
        b = self.b
        mask = self.lane_mask()
        if self.stride == 1:
            addr = self._addr(row, dtype)
            if mask is None:
                b.store(value, addr, align=dtype.itemsize)
            else:
                masked_store(b, addr, dtype, mask, value)
            return
        scatter(b, row, dtype, self.offsets(), mask, value)


# --- chunks of an output row ------------------------------------------------------------------

@dataclass(frozen=True)
class ChunkPlan:
    """Chunks of `lanes` outputs covering a row of `n`; the chunks starting in
    [fast_start, fast_stop) need no checks (all their taps lie inside the input row)."""

    n: int
    lanes: int
    fast_start: int
    fast_stop: int

    @property
    def n_chunks(self) -> int:
        return -(-self.n // self.lanes)


def safe_outputs(stride: int, off_lo: int, off_hi: int, width: int) -> tuple[int, int]:
    """The outputs q (inclusive range) whose inputs q*stride + [off_lo, off_hi] all lie in
    [0, width)."""
    return -(off_lo // stride), (width - 1 - off_hi) // stride


def plan_chunks(n: int, lanes: int, safe: tuple[int, int] | None) -> ChunkPlan:
    """Chunks of `lanes` over [0, n); full chunks inside `safe` (inclusive) are unchecked.
    `safe` None: every chunk is checked."""
    full = n // lanes
    if safe is None:
        return ChunkPlan(n, lanes, 0, 0)
    lo, hi = safe
    first = min(max(-(-lo // lanes), 0), full)  # first chunk starting at or after lo
    stop = min(max((hi - lanes + 1) // lanes + 1, first), full)  # chunks ending <= hi
    return ChunkPlan(n, lanes, first * lanes, stop * lanes)


def emit_chunks(b: ir.IRBuilder, plan: ChunkPlan, body: ChunkBody,
                ends_apart: bool = False) -> None:
    """body(q0, checked, limit) for every chunk: unchecked chunks get limit None, checked
    ones their count of live lanes (an i64, `lanes` except in the last chunk).

    `ends_apart`: the checked chunks (a row's ends) are emitted one by one with constant q0
    and limit, so that their border masks fold to constants, and only the unchecked middle
    is a loop. More code per row; it paid off in the depthwise kernel (1.7x on a stride-2
    layer, whose body is small) and measured no faster in the direct kernels."""
    lanes, n = plan.lanes, plan.n
    end = plan.n_chunks * lanes
    if ends_apart:
        starts = range(0, end, lanes)
        fast = [q for q in starts if plan.fast_start <= q < plan.fast_stop]
        for q in starts:
            if q not in fast:
                body(i64(q), True, i64(min(lanes, n - q)))
            elif q == fast[0] and len(fast) == 1:
                body(i64(q), False, None)
            elif q == fast[0]:
                with for_range(b, fast[0], fast[-1] + lanes, lanes, name="q") as q0:
                    body(q0, False, None)
        return
    if plan.fast_start == 0 and plan.fast_stop == end:
        with for_range(b, 0, end, lanes, name="q") as q0:
            body(q0, False, None)
        return

    def checked(q0: ir.Value) -> None:
        rest = b.sub(i64(n), q0)
        body(q0, True, b.select(b.icmp_signed("<", rest, i64(lanes)), rest, i64(lanes)))

    if plan.n_chunks == 1:
        checked(i64(0))
        return
    with for_range(b, 0, end, lanes, name="q") as q0:
        if plan.fast_start == plan.fast_stop:
            checked(q0)
            return
        fast = b.and_(b.icmp_signed(">=", q0, i64(plan.fast_start)),
                      b.icmp_signed("<", q0, i64(plan.fast_stop)))
        with b.if_else(fast) as (then, otherwise):
            with then:
                body(q0, False, None)
            with otherwise:
                checked(q0)


# --- transposed (gather-form) column phases ---------------------------------------------------

@dataclass(frozen=True)
class ColPhase:
    """Output columns start + q*step (q < count); under tap (j, off) output q reads input
    column q*stride + off. Taps missing from `taps` never contribute to this phase."""

    start: int
    step: int
    count: int
    stride: int
    taps: tuple[tuple[int, int], ...]  # (kernel column j, input column offset)


def transposed_phases(width: int, stride: int, dilation: int, pad: int, taps: int
                      ) -> tuple[ColPhase, ...]:
    """The phases of a transposed window op (conv2d_grad_input, pool gradients) whose
    forward output q reads input column x = q*stride + j*dilation - pad: output column x
    sums the forward outputs q = (x + pad - j*dilation) / stride where that is exact.
    Splitting x by x mod stride makes each tap contribute to a phase always or never, and
    read *contiguous* forward outputs: q = (x - r)/stride + (r + pad - j*dilation)/stride."""
    return tuple(
        ColPhase(r, stride, len(range(r, width, stride)), 1,
                 tuple((j, (r + pad - j * dilation) // stride) for j in range(taps)
                       if (r + pad - j * dilation) % stride == 0))
        for r in range(min(stride, width)))


# --- loops ------------------------------------------------------------------------------------

@contextmanager
def loop(b: ir.IRBuilder, n: int, name: str) -> Iterator[ir.Value]:
    """A counted loop 0..n (a constant index when n == 1)."""
    if n == 1:
        yield i64(0)
        return
    with for_range(b, 0, n, 1, name=name) as i:
        yield i


def taps(b: ir.IRBuilder, n: int, body: Callable[[ir.Value], None], name: str = "tap") -> None:
    """body(t) for t in [0, n): unrolled (constant t) for small n, else a loop."""
    if n <= MAX_STATIC_TAPS:
        for t in range(n):
            body(i64(t))
        return
    with for_range(b, 0, n, 1, name=name) as t:
        body(t)


def blocks(b: ir.IRBuilder, n: int, size: int, body: Callable[[ir.Value, int], None],
           name: str = "blk") -> None:
    """body(start, count) over [0, n) in blocks of `size`: a loop over the full blocks,
    then one static remainder block."""
    full = n // size
    if full == 1:
        body(i64(0), size)
    elif full > 1:
        with for_range(b, 0, full * size, size, name=name) as start:
            body(start, size)
    if n % size:
        body(i64(full * size), n % size)
