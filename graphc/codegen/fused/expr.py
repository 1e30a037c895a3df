"""Evaluate a kernel's fused expression at an index: the heart of loop fusion.

`Evaluator.at(node, idx)` returns the value of `node` at multi-index `idx` (one `Idx` per
dimension of the node), as a scalar or as a `<lanes x T>` vector. Materialized nodes (kernel
inputs) are loaded from their buffers; immediates become constants; nodes inside the kernel
are computed from their operands, which are evaluated at the index the op maps to:
broadcasting drops or zeroes dimensions, transpose permutes them, slice scales and shifts,
reverse mirrors, pad and concat select between operands with clamped indices.

Every inlined node has exactly one user (see passes/fuse.py), so each is evaluated once per
index point. In flat mode (every node at the loop's own index) values are memoized per
evaluator, so the outputs of a multi-output kernel (`passes.multi_output`) that read each
other compute each node once. Given the iteration space's `shape`, flat mode also takes
nodes and inputs of shapes that broadcast to it (each at the element's broadcast index):
the side outputs of a reduction (`passes.column_sums`) may read a (rows, 1) operand.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import llvmlite.ir as ir

from graphc.codegen import bf16
from graphc.codegen.fused import op_table as ew
from graphc.codegen.fused.rng import lower_random
from graphc.codegen.index import Idx, IndexBuilder, splat
from graphc.codegen.llvm_types import I64, compute_type, const
from graphc.errors import CompileError
from graphc.ir import DType, Node, from_bfloat16
from graphc.passes.kernels import FusedProgram, Kernel


def strides(shape: Sequence[int]) -> list[int]:
    """C-order element strides."""
    out = [1] * len(shape)
    for d in range(len(shape) - 2, -1, -1):
        out[d] = out[d + 1] * shape[d + 1]
    return out


class Evaluator:
    """Computes kernel nodes at index points, `lanes` elements at a time."""

    def __init__(
        self,
        b: ir.IRBuilder,
        program: FusedProgram,
        kernel: Kernel,
        ptrs: dict[Node, ir.Value],
        lanes: int,
        overrides: dict[Node, ir.Value] | None = None,
        flat: bool = False,
        shape: tuple[int, ...] | None = None,
        position: Callable[[], list[Idx]] | None = None,
    ):
        self.b = b
        self.program = program
        self.kernel = kernel
        self.members = set(kernel.nodes)
        self.ptrs = ptrs
        self.lanes = lanes
        self.ix = IndexBuilder(b, lanes)
        self.overrides = overrides or {}
        # Flat mode: every node has the root's shape or one element, and the index is one
        # flat element index (elementwise kernels over contiguous buffers).
        self.flat = flat
        self._memo: dict[Node, ir.Value] = {}  # flat mode only: one index per evaluator
        # Flat mode with `shape`: the iteration space. A node or input of another shape (it
        # broadcasts to `shape`) is read at the broadcast index of the element's multi-index
        # (`position()` if given, else unravelled from the flat index per lane).
        self.shape = shape
        self._position = position
        self._multi: list[Idx] | None = None

    def at(self, node: Node, idx: Sequence[Idx]) -> ir.Value:
        if node in self.overrides:
            return self.overrides[node]
        if node in self.program.immediates:
            array = self.program.graph.constants[node.name].reshape(())
            value = (from_bfloat16(array) if node.dtype == DType.bfloat16 else array).item()
            return const(node.dtype, value, self.lanes)
        if node not in self.members or node is self.kernel.anchor:
            return self.load(node, idx)
        if self.flat:
            known = self._memo.get(node)
            if known is None:
                known = self._memo[node] = self._flat(node, idx)
            return known
        handler = INDEX_RULES.get(node.op)
        if handler is not None:
            return handler(self, node, idx)
        args = [self.at(inp, broadcast_index(self.ix, idx, node.shape, inp.shape))
                for inp in node.inputs]
        return self._computed(node, args)

    def _computed(self, node: Node, args: list[ir.Value]) -> ir.Value:
        """An elementwise op's value; a bf16 result rounded to bf16 as the reference rounds
        every bf16 node (so fused and unfused code agree bit for bit)."""
        value = ew.lower(self.b, node, args)
        if node.dtype == DType.bfloat16:
            value = bf16.round_float(self.b, value)
        return value

    def _flat(self, node: Node, idx: Sequence[Idx]) -> ir.Value:
        if node.op in ("random_uniform", "random_normal"):
            return _random(self, node, idx)
        args = [self.at(inp, [self.ix.const(0)] if inp.size == 1 else idx)
                for inp in node.inputs]
        if node.op == "broadcast_to":  # of a one-element value, in flat mode
            return args[0]
        return self._computed(node, args)

    def load(self, node: Node, idx: Sequence[Idx]) -> ir.Value:
        try:
            ptr = self.ptrs[node]
        except KeyError:
            raise CompileError(f"kernel {self.kernel.name}: no buffer for %{node.name}") from None
        if self.flat:
            offset = idx[0] if node.size > 1 else self.ix.const(0)
            if self._broadcast(node):
                offset = self._broadcast_offset(node, idx[0])
        else:
            offset = self.ix.linear(idx, strides(node.shape))
        return self.ix.load(ptr, node.dtype, offset)

    def flat_index(self, node: Node, idx: Sequence[Idx]) -> ir.Value:
        """The C-order flat index of `idx` in `node`'s shape, per lane (i64 or vector)."""
        if self.flat:
            if self._broadcast(node):
                return self.ix.as_vector(self._broadcast_offset(node, idx[0]))
            return self.ix.as_vector(idx[0])
        return self.ix.as_vector(self.ix.linear(idx, strides(node.shape)))

    def _broadcast(self, node: Node) -> bool:
        """Flat mode: whether `node` is read at a broadcast index (not the flat one)."""
        return self.shape is not None and node.size > 1 and node.shape != self.shape

    def _broadcast_offset(self, node: Node, flat: Idx) -> Idx:
        """The element of `node` (broadcast to `shape`) at the flat index `flat`."""
        assert self.shape is not None
        if self._multi is None:
            self._multi = (self._position() if self._position is not None
                           else self._unravel(flat))
        at = broadcast_index(self.ix, self._multi, self.shape, node.shape)
        return self.ix.linear(at, strides(node.shape))

    def _unravel(self, flat: Idx) -> list[Idx]:
        """The multi-index in `shape` of flat index `flat`, per lane (scalar arithmetic when
        every lane has the same index)."""
        assert self.shape is not None
        b = self.b
        scalar = self.lanes == 1 or (flat.vec is None and flat.coef == 0)
        pos = flat.base if scalar else self.ix.as_vector(flat)

        def c(v: int) -> ir.Constant:
            if scalar:
                return ir.Constant(I64, v)
            return ir.Constant(ir.VectorType(I64, self.lanes), [ir.Constant(I64, v)] * self.lanes)

        out: list[Idx] = []
        for d, (size, stride) in enumerate(zip(self.shape, strides(self.shape))):
            v = pos if stride == 1 else b.udiv(pos, c(stride))
            if d > 0:
                v = b.urem(v, c(size))
            out.append(Idx(v, 0) if scalar else self.ix.from_vector(v))
        return out


def broadcast_index(ix: IndexBuilder, idx: Sequence[Idx], out_shape: Sequence[int],
                    in_shape: Sequence[int]) -> list[Idx]:
    """The index into an operand of shape `in_shape` broadcast to `out_shape`."""
    offset = len(out_shape) - len(in_shape)
    result = []
    for d, size in enumerate(in_shape):
        if size == 1:
            result.append(ix.const(0))
        else:
            result.append(idx[d + offset])
    return result


# --- injective ops evaluated by index -------------------------------------------------------

def _transpose(ev: Evaluator, node: Node, idx: Sequence[Idx]) -> ir.Value:
    perm = node.attrs["perm"]
    inner = [idx[0]] * len(perm)
    for d, p in enumerate(perm):
        inner[p] = idx[d]
    return ev.at(node.inputs[0], inner)


def _slice(ev: Evaluator, node: Node, idx: Sequence[Idx]) -> ir.Value:
    starts, steps = node.attrs["starts"], node.attrs["steps"]
    inner = [ev.ix.affine(i, steps[d], starts[d]) for d, i in enumerate(idx)]
    return ev.at(node.inputs[0], inner)


def _reverse(ev: Evaluator, node: Node, idx: Sequence[Idx]) -> ir.Value:
    axes = set(node.attrs["axes"])
    shape = node.inputs[0].shape
    inner = [ev.ix.affine(i, -1, shape[d] - 1) if d in axes else i for d, i in enumerate(idx)]
    return ev.at(node.inputs[0], inner)


def _broadcast_to(ev: Evaluator, node: Node, idx: Sequence[Idx]) -> ir.Value:
    src = node.inputs[0]
    return ev.at(src, broadcast_index(ev.ix, idx, node.shape, src.shape))


def _clamped(ev: Evaluator, i: Idx, lo: int, hi: int) -> tuple[Idx, ir.Value]:
    """(i clamped to [lo, hi], whether i was inside), per lane."""
    b = ev.b
    v = ev.ix.as_vector(i)
    lo_c = splat(b, ir.Constant(I64, lo), ev.lanes)
    hi_c = splat(b, ir.Constant(I64, hi), ev.lanes)
    inside = b.and_(b.icmp_signed(">=", v, lo_c), b.icmp_signed("<=", v, hi_c))
    clamped = b.select(b.icmp_signed("<", v, lo_c), lo_c, b.select(b.icmp_signed(">", v, hi_c),
                                                                     hi_c, v))
    return ev.ix.from_vector(clamped), inside


def _pad(ev: Evaluator, node: Node, idx: Sequence[Idx]) -> ir.Value:
    b = ev.b
    src = node.inputs[0]
    pads = node.attrs["pads"]
    inner: list[Idx] = []
    valid: ir.Value | None = None
    for d, i in enumerate(idx):
        lo, _hi, interior = pads[d]
        n = src.shape[d]
        if lo == 0 and interior == 0 and pads[d][1] == 0:
            inner.append(i)
            continue
        rel = ev.ix.affine(i, 1, -lo)
        span = (n - 1) * (interior + 1)
        clamped, inside = _clamped(ev, rel, 0, max(span, 0))
        if interior:
            step = splat(b, ir.Constant(I64, interior + 1), ev.lanes)
            cv = ev.ix.as_vector(clamped)
            on_grid = b.icmp_signed("==", b.srem(cv, step), splat(b, ir.Constant(I64, 0),
                                                                   ev.lanes))
            inside = b.and_(inside, on_grid)
            clamped = ev.ix.from_vector(b.sdiv(cv, step))
        inner.append(clamped)
        valid = inside if valid is None else b.and_(valid, inside)
    value = ev.at(src, inner)
    if valid is None:
        return value
    fill = const(node.dtype, node.attrs["value"] if node.dtype.is_float
                 else int(node.attrs["value"]), ev.lanes)
    return b.select(valid, value, fill)


def _concat(ev: Evaluator, node: Node, idx: Sequence[Idx]) -> ir.Value:
    b = ev.b
    axis = node.attrs["axis"]
    result: ir.Value | None = None
    offset = 0
    for src in node.inputs:
        n = src.shape[axis]
        rel = ev.ix.affine(idx[axis], 1, -offset)
        clamped, inside = _clamped(ev, rel, 0, n - 1)
        inner = list(idx)
        inner[axis] = clamped
        value = ev.at(src, inner)
        result = value if result is None else b.select(inside, value, result)
        offset += n
    assert result is not None
    return result


def _iota(ev: Evaluator, node: Node, idx: Sequence[Idx]) -> ir.Value:
    """The index along the iota's axis (it has no operands), in its dtype."""
    i = ev.ix.as_vector(idx[node.attrs["axis"]])
    t = compute_type(node.dtype, ev.lanes)
    if node.dtype.is_float:
        return ev.b.sitofp(i, t)
    return i if t == i.type else ev.b.trunc(i, t)


def _random(ev: Evaluator, node: Node, idx: Sequence[Idx]) -> ir.Value:
    key = ev.at(node.inputs[0], [ev.ix.const(0)] if ev.flat else [])  # the scalar key
    return lower_random(ev.b, ev.lanes, node, key, ev.flat_index(node, idx))


# How each inlined op that is not a plain elementwise op is evaluated at an index (the ops
# in `op_table.LOWER` read their operands at the broadcast index). Every op whose fusion
# kind is inlinable has an entry here or there (tests/test_lowering_registry.py).
INDEX_RULES = {
    "transpose": _transpose,
    "slice": _slice,
    "reverse": _reverse,
    "broadcast_to": _broadcast_to,
    "pad": _pad,
    "concat": _concat,
    "iota": _iota,
    "random_uniform": _random,
    "random_normal": _random,
}

