"""One reduction of a static run of elements into a scalar, in a fixed order (`RowReduction`),
and the combining primitives the reduction emitters share.

The order and its error bound are described in `graphc.codegen.fused.reduction`: blocks of at
most lanes·K·S consecutive elements, K accumulators of at most S terms each, float-sum blocks
combined by a binary-counter cascade, lanes by a shuffle tree.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import llvmlite.ir as ir

from graphc.codegen.fused import op_table as ew
from graphc.codegen.index import Idx
from graphc.codegen.llvm_types import I64, compute_type, const
from graphc.codegen.loops import entry_alloca, for_range
from graphc.ir import DType

# Independent accumulators per output (or per strip of columns): a vector add has a latency
# of 3-4 cycles and a core issues one or two per cycle, so a single accumulator stalls on
# its own result (and LLVM may not split it: that would reassociate the sum).
ACCUMULATORS = 4
# Terms each accumulator adds in order within a block (innermost axis reduced): the
# sequential part `S` of the error bound. A block is lanes·K·S elements (2048 float32 with
# AVX-512), so the cascade's push (one vector add and a store on average) costs nothing.
BLOCK_STEPS = 32
# Rows per block (innermost axis kept): the sequential part `G` of the error bound.
BLOCK_ROWS = 32
# Narrow rows whose lcm(inner, lanes) is at most this many vectors (inner axis kept, flat
# input) are summed in registers: lane j of the accumulators always holds column j mod inner.
# 32 is AVX-512's register file; at 16-25 vectors (inner 100, 256) this was measured 1.1-3x
# faster than the sweeps, which load and store a partial sum per element.
MAX_COLUMN_VECTORS = 32

# Emits element(s) `i .. i+lanes-1` of the current row: value(lanes, i).
RowValue = Callable[[int, Idx], ir.Value]


def combine(b: ir.IRBuilder, op: str, dtype: DType, acc: ir.Value, x: ir.Value) -> ir.Value:
    """acc op x. No fast-math flags: a float sum must stay in the order the code states (and
    `contract` would let LLVM fuse a multiply of the input expression into it, differently
    in differently shaped loops)."""
    if op == "sum":
        return b.fadd(acc, x) if dtype.is_float else b.add(acc, x)
    if op == "prod":
        return b.fmul(acc, x) if dtype.is_float else b.mul(acc, x)
    if op == "max":
        return ew._max(b, dtype, acc, x)
    return ew._min(b, dtype, acc, x)


def identity(op: str, dtype: DType, lanes: int) -> ir.Constant:
    if op == "sum":
        return const(dtype, 0, lanes)
    if op == "prod":
        return const(dtype, 1, lanes)
    if dtype.is_float:
        return const(dtype, -math.inf if op == "max" else math.inf, lanes)
    bits = dtype.itemsize * 8
    return const(dtype, -(2 ** (bits - 1)) if op == "max" else 2 ** (bits - 1) - 1, lanes)


def horizontal(b: ir.IRBuilder, op: str, dtype: DType, v: ir.Value, lanes: int) -> ir.Value:
    """Reduce a `<lanes x T>` vector to a scalar with a shuffle tree (lanes a power of 2)."""
    width = lanes
    while width > 1:
        half = width // 2
        undef = ir.Constant(v.type, ir.Undefined)
        lo = b.shuffle_vector(v, undef, ir.Constant(ir.VectorType(ir.IntType(32), half),
                                                    list(range(half))))
        hi = b.shuffle_vector(v, undef, ir.Constant(ir.VectorType(ir.IntType(32), half),
                                                    list(range(half, width))))
        v = combine(b, op, dtype, lo, hi)
        width = half
    return b.extract_element(v, ir.Constant(ir.IntType(32), 0))


def cascades(op: str, dtype: DType) -> bool:
    """Whether blocks are combined pairwise: only float sums, whose error bound depends on
    the order (see the module docstring)."""
    return op == "sum" and dtype.is_float


def tree(b: ir.IRBuilder, op: str, dtype: DType, values: list[ir.Value]) -> ir.Value:
    """((v0 op v1) op (v2 op v3)) ...: pairwise, in a fixed order."""
    while len(values) > 1:
        values = [combine(b, op, dtype, values[i], values[i + 1]) if i + 1 < len(values)
                  else values[i] for i in range(0, len(values), 2)]
    return values[0]


def offset(b: ir.IRBuilder, base: ir.Value | int, add: int) -> ir.Value | int:
    """base + add, folded when base is a Python int."""
    if isinstance(base, int):
        return base + add
    return b.add(base, ir.Constant(I64, add)) if add else base


def as_i64(v: ir.Value | int) -> ir.Value:
    return ir.Constant(I64, v) if isinstance(v, int) else v


class RowReduction:
    """op-reduce `rows` rows of `n` elements each (both static) into one scalar, in the order
    of the module docstring (blocks of at most lanes·K·S elements, K accumulators of at most
    S terms each, float-sum blocks combined by a cascade, lanes by a shuffle tree).

    Use: `begin()`, then `row(value)` once per row (inside the caller's loops over rows),
    then `finish()`. `value(k, i)` emits the row's elements i .. i+k-1 (k = lanes with a
    contiguous index, coef 1, and i a multiple of lanes; or k = 1), and is called exactly
    once for each element of the row (the vectors of the main loop and of the last partial
    step, then the scalar tail: the row's own tail loop, or `finish_columns`). The state
    lives in stack slots of the current function, so one instance serves one output at a
    time.

    With `columns` = C > 1 (one row, lanes > 1), the row is a C-column matrix stored by rows
    and `finish_columns()` gives its C column sums: K is then lcm(C, lanes) / lanes, so the
    accumulators' lane j always holds column j mod C; the lanes of a column (one per phase
    of its rows) are combined pairwise at the end, then the row's last n mod lanes elements.
    """

    def __init__(self, b: ir.IRBuilder, op: str, dtype: DType, lanes: int, n: int,
                 rows: int, columns: int = 1) -> None:
        self.b, self.op, self.dtype, self.lanes = b, op, dtype, lanes
        self.n, self.rows, self.columns = n, rows, columns
        self.empty = n == 0 or rows == 0
        assert columns == 1 or (rows == 1 and lanes > 1)
        accumulators = math.lcm(columns, lanes) // lanes if columns > 1 else ACCUMULATORS
        self.step = lanes * accumulators  # elements of one iteration of the main loop
        self.tail = n % lanes  # a row's last elements: scalars
        vec_steps = n // lanes
        self.block = self.step * BLOCK_STEPS
        cascade = cascades(op, dtype)
        self.long = cascade and n > self.block
        if self.long:  # each row: n // block full blocks, then the remainder's block
            self.group = 1
            self.pushes = rows * -(-n // self.block)
            self.n_acc = accumulators
        else:  # whole rows per block, at most S terms per accumulator
            depth = max(-(-vec_steps // accumulators), self.tail, 1)
            self.group = max(1, BLOCK_STEPS // depth) if cascade else max(rows, 1)
            self.pushes = -(-rows // self.group) if rows else 0
            self.n_acc = min(accumulators, vec_steps)
        self.vtype = compute_type(dtype, lanes)
        self.accs = [entry_alloca(b, self.vtype, name="acc") for _ in range(self.n_acc)]
        # The scalar tail's accumulator (columns: the tail is added per column at the end).
        self.scalar = (entry_alloca(b, compute_type(dtype), name="sacc")
                       if self.tail and columns == 1 else None)
        self.last_value: RowValue | None = None
        # A block's value: one vector (the accumulators' tree), a scalar when every element
        # is in the tail, or the accumulators themselves (columns).
        self.width = lanes if self.n_acc else 1
        self.ptype = compute_type(dtype, self.width)
        self.parts = self.n_acc if columns > 1 else 1  # values per level of the stack
        self.levels = self.pushes.bit_length()
        self.stack: ir.Value | None = None
        self.count: ir.Value | None = None  # blocks pushed so far
        self.since: ir.Value | None = None  # rows since the last push (grouped rows)
        if not self.empty and self.pushes > 1:
            self.stack = entry_alloca(b, self.ptype, name="levels",
                                      count=self.levels * self.parts)
            self.count = entry_alloca(b, I64, name="blocks")
            if self.group > 1:
                self.since = entry_alloca(b, I64, name="since")

    def begin(self) -> None:
        """Start a new reduction (a new output)."""
        if self.empty:
            return
        self._reset()
        for counter in (self.count, self.since):
            if counter is not None:
                self.b.store(ir.Constant(I64, 0), counter)

    def row(self, value: RowValue) -> None:
        """Add the next row."""
        if self.empty:
            return
        b = self.b
        self.last_value = value
        if self.long:
            full = self.n // self.block * self.block
            if full:
                with for_range(b, 0, full, self.block, name="blk") as start:
                    self._run(value, start, self.block)
                    self._push()
            if full < self.n:
                self._run(value, full, self.n - full)
                self._push()
            return
        self._run(value, 0, self.n)
        if self.pushes <= 1:
            return
        if self.since is None:
            self._push()
            return
        since = b.add(b.load(self.since), ir.Constant(I64, 1))
        done = b.icmp_signed("==", since, ir.Constant(I64, self.group))
        b.store(b.select(done, ir.Constant(I64, 0), since), self.since)
        with b.if_then(done):
            self._push()

    def finish(self) -> ir.Value:
        """The reduced scalar (after every row)."""
        b, op, dtype = self.b, self.op, self.dtype
        assert self.columns == 1
        if self.empty:
            return identity(op, dtype, 1)
        if self.pushes <= 1:
            total: ir.Value | None = None
            if self.n_acc:
                total = tree(b, op, dtype, [b.load(a) for a in self.accs])
                if self.lanes > 1:
                    total = horizontal(b, op, dtype, total, self.lanes)
            if self.scalar is not None:
                s = b.load(self.scalar)
                total = s if total is None else combine(b, op, dtype, total, s)
            assert total is not None
            return total
        (acc,) = self._collapse()
        return horizontal(b, op, dtype, acc, self.width) if self.width > 1 else acc

    def finish_columns(self) -> list[ir.Value]:
        """The C column reductions (`columns` mode, after the row)."""
        b, op, dtype, lanes, columns = self.b, self.op, self.dtype, self.lanes, self.columns
        assert columns > 1
        if self.empty:
            return [identity(op, dtype, 1)] * columns
        vectors = [b.load(a) for a in self.accs] if self.pushes <= 1 else self._collapse()
        # Lane p of the accumulators (vector p // lanes) is column p mod C, phase p // C.
        phases: list[list[ir.Value]] = [[] for _ in range(columns)]
        for p in range(len(vectors) * lanes):
            phases[p % columns].append(b.extract_element(
                vectors[p // lanes], ir.Constant(ir.IntType(32), p % lanes)))
        totals: list[ir.Value | None] = [tree(b, op, dtype, v) if v else None
                                         for v in phases]
        value = self.last_value
        assert value is not None or not self.tail
        for pos in range(self.n - self.tail, self.n):
            assert value is not None
            x = value(1, Idx(ir.Constant(I64, pos), 0))
            t = totals[pos % columns]
            totals[pos % columns] = x if t is None else combine(b, op, dtype, t, x)
        return [identity(op, dtype, 1) if t is None else t for t in totals]

    def finish_column_vectors(self) -> list[ir.Value] | None:
        """The column reductions as C / lanes vectors (column j at lane j mod lanes of vector
        j // lanes), when `lanes` divides C (then no row has scalar tail elements); else
        None (use `finish_columns`). The same additions as `finish_columns`, lane by lane:
        vector q holds columns (q mod C/lanes)·lanes..., one phase of them, and a column's
        phases are combined by the same pairwise tree."""
        b, op, dtype, lanes, columns = self.b, self.op, self.dtype, self.lanes, self.columns
        if columns % lanes or self.empty or self.tail:
            return None
        vectors = [b.load(a) for a in self.accs] if self.pushes <= 1 else self._collapse()
        per_row = columns // lanes
        return [tree(b, op, dtype, vectors[q::per_row]) for q in range(per_row)]

    def _collapse(self) -> list[ir.Value]:
        """Push the pending block if any, then add the levels the block count leaves
        occupied, from the smallest sum up."""
        b, op, dtype = self.b, self.op, self.dtype
        if not self.long and self.rows % self.group:
            self._push()  # the last, partial group of rows
        acc: list[ir.Value] | None = None
        for j in range(self.levels):
            if self.pushes >> j & 1:
                level = [b.load(self._slot(ir.Constant(I64, j), part), typ=self.ptype)
                         for part in range(self.parts)]
                acc = level if acc is None else [combine(b, op, dtype, lv, a)
                                                 for lv, a in zip(level, acc)]
        assert acc is not None
        return acc

    def _slot(self, level: ir.Value, part: int) -> ir.Value:
        b = self.b
        assert self.stack is not None
        index = level if self.parts == 1 else b.add(
            b.mul(level, ir.Constant(I64, self.parts)), ir.Constant(I64, part))
        return b.gep(self.stack, [index], inbounds=True, source_etype=self.ptype)

    def _reset(self) -> None:
        b = self.b
        for a in self.accs:
            b.store(identity(self.op, self.dtype, self.lanes), a)
        if self.scalar is not None:
            b.store(identity(self.op, self.dtype, 1), self.scalar)

    def _run(self, value: RowValue, start: ir.Value | int, length: int) -> None:
        """Accumulate elements [start, start + length) of the row (length static)."""
        b, op, dtype, lanes = self.b, self.op, self.dtype, self.lanes
        coef = 1 if lanes > 1 else 0

        def add(acc: ir.Value, k: int, i: ir.Value | int) -> None:
            b.store(combine(b, op, dtype, b.load(acc), value(k, Idx(as_i64(i), coef if k > 1
                                                                    else 0))), acc)

        main = length // self.step * self.step
        if main:
            with for_range(b, as_i64(start), as_i64(offset(b, start, main)), self.step,
                           name="acc") as i:
                for k, acc in enumerate(self.accs):
                    add(acc, lanes, offset(b, i, k * lanes))
        pos = main
        for acc in self.accs[:(length - main) // lanes]:  # whole vectors left: fewer than K
            add(acc, lanes, offset(b, start, pos))
            pos += lanes
        if pos < length and self.scalar is not None:
            with for_range(b, as_i64(offset(b, start, pos)), as_i64(offset(b, start, length)),
                           1, name="tail") as i:
                add(self.scalar, 1, i)

    def _partial(self) -> list[ir.Value]:
        """The current block's value(s) (of type `ptype`)."""
        b, op, dtype = self.b, self.op, self.dtype
        if not self.n_acc:
            assert self.scalar is not None
            return [b.load(self.scalar)]
        loaded = [b.load(a) for a in self.accs]
        if self.columns > 1:
            return loaded
        v = tree(b, op, dtype, loaded)
        if self.scalar is not None:
            lane0 = b.insert_element(identity(op, dtype, self.lanes), b.load(self.scalar),
                                     ir.Constant(ir.IntType(32), 0))
            v = combine(b, op, dtype, v, lane0)
        return [v]

    def _push(self) -> None:
        """Close the current block: carry its value up through the occupied levels (a binary
        counter over the number of blocks pushed) and store it at the first free one."""
        b, op, dtype = self.b, self.op, self.dtype
        assert self.count is not None
        values = self._partial()
        self._reset()
        count = b.load(self.count)
        pre = b.block
        fn = pre.function
        head = fn.append_basic_block("push.head")
        carry_block = fn.append_basic_block("push.carry")
        done = fn.append_basic_block("push.done")
        b.branch(head)
        b.position_at_end(head)
        level = b.phi(I64, name="level")
        level.add_incoming(ir.Constant(I64, 0), pre)
        carries = []
        for v in values:
            carry = b.phi(self.ptype, name="carry")
            carry.add_incoming(v, pre)
            carries.append(carry)
        occupied = b.trunc(b.lshr(count, level), ir.IntType(1))
        b.cbranch(occupied, carry_block, done)
        b.position_at_end(carry_block)
        for part, carry in enumerate(carries):
            summed = combine(b, op, dtype, b.load(self._slot(level, part), typ=self.ptype),
                             carry)
            carry.add_incoming(summed, carry_block)
        level.add_incoming(b.add(level, ir.Constant(I64, 1)), carry_block)
        b.branch(head)
        b.position_at_end(done)
        for part, carry in enumerate(carries):
            b.store(carry, self._slot(level, part))
        b.store(b.add(count, ir.Constant(I64, 1)), self.count)
