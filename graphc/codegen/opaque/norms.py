"""Row kernels of the norm ops: `layer_norm`, `rms_norm` and their gradients `*_grad`.

The normalized axes are x's trailing ones, so each row is N contiguous elements and the
kernel is one loop over rows, split across threads in chunks of whole rows
(`parallel_range`). Each row is read once per statistic and written once; a row of a few
thousand elements stays in L1 between the reads, so the extra reads cost little next to
the memory traffic of separate kernels, and they let each statistic be accurate:

- mean = Σx / N, then var = Σ(x - mean)² / N: two passes, not E[x²] - mean², which loses
  every digit when |mean| ≫ std; rms_norm: ms = Σx² / N;
- rstd = 1 / sqrt(var + eps) (a correctly rounded sqrt and division per row);
- forward: y = fma((x - mean)·rstd, gamma, beta), vectorized `<lanes x T>` with a scalar
  tail;
- gradient (g = dy·gamma, xc = x - mean or x): S1 = Σg (layer_norm), S2 = Σg·xc, then
  dx = g·rstd - rstd·S1/N - xc·rstd³·S2/N.

Every sum is a `RowReduction` (blocked, K accumulators, float blocks combined pairwise:
error ~ (S + 3 + log2(N/S))·u relative to Σ|terms|, see `fused/reduction.py`). A row is
computed by the same instructions whichever thread takes it, so results are identical for
any thread count.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import llvmlite.ir as ir

from graphc.codegen.context import KernelContext, Lowering
from graphc.codegen.fused.loop_nests import PARALLEL_GRAIN
from graphc.codegen.fused.row_reduction import RowReduction
from graphc.codegen.index import Idx, IndexBuilder, splat
from graphc.codegen.llvm_types import I64, const, intrinsic, unary_intrinsic
from graphc.codegen.loops import for_range
from graphc.codegen.parallel import parallel_range
from graphc.ir import DType, Node

# Loads element(s) of the current row at position i (k lanes): f(k, i) -> value.
RowLoad = Callable[[int, Idx], ir.Value]


class _Row:
    """One row of the kernel being emitted: its buffers, offset and vector width."""

    def __init__(self, c: KernelContext, base: ir.Value, n: int, dtype: DType, lanes: int):
        self.c, self.b, self.base, self.n, self.dtype, self.lanes = c, c.b, base, n, dtype, lanes

    def load(self, node: Node, k: int, i: Idx, per_row: bool = True) -> ir.Value:
        """`node` at row position i (k lanes): a row of x-shaped `node`, or, for gamma and
        beta (`per_row` False), the parameter's own element i."""
        off = Idx(self.b.add(self.base, i.base), i.coef) if per_row else i
        return IndexBuilder(self.b, k).load(self.c.ptr(node), self.dtype, off)

    def sum(self, f: RowLoad) -> ir.Value:
        """Σ f over the row, in `RowReduction`'s order."""
        red = RowReduction(self.b, "sum", self.dtype, self.lanes, self.n, 1)
        red.begin()
        red.row(lambda k, i: f(k, Idx(i.base, 1 if k > 1 else 0)))
        return red.finish()

    def store_each(self, f: RowLoad) -> None:
        """out[row, i] = f(i) over the row: `lanes`-wide vectors, then a scalar tail."""
        b, n, lanes = self.b, self.n, self.lanes
        vec_end = n // lanes * lanes if lanes > 1 else 0
        steps = [(0, vec_end, lanes, 1), (vec_end, n, 1, 0)]
        for start, stop, k, coef in steps:
            with for_range(b, start, stop, k, name="w" if k == 1 else "wv") as i:
                off = Idx(b.add(self.base, i), coef)
                IndexBuilder(b, k).store(self.c.out, self.dtype, off, f(k, Idx(i, coef)))

    def mean_of(self, total: ir.Value) -> ir.Value:
        return self.b.fdiv(total, const(self.dtype, self.n))


def _fma(b: ir.IRBuilder, a: ir.Value, x: ir.Value, c: ir.Value) -> ir.Value:
    """a·x + c rounded once (the same bits at any vector width)."""
    t = a.type
    return b.call(intrinsic(b.module, "llvm.fma", t, [t, t, t]), [a, x, c])


def _statistics(row: _Row, node: Node, centered: bool) -> tuple[ir.Value | None, ir.Value]:
    """(mean or None, rstd) of the row: the mean first, then the centered squares."""
    b, dtype, x = row.b, row.dtype, node.inputs[0]
    mean = row.mean_of(row.sum(lambda k, i: row.load(x, k, i))) if centered else None

    def centered_at(k: int, i: Idx) -> ir.Value:
        v = row.load(x, k, i)
        return v if mean is None else b.fsub(v, splat(b, mean, k))

    def square(k: int, i: Idx) -> ir.Value:
        v = centered_at(k, i)
        return b.fmul(v, v)

    var = row.mean_of(row.sum(square))
    eps = const(dtype, node.attrs["eps"])
    rstd = b.fdiv(const(dtype, 1.0), unary_intrinsic(b, "llvm.sqrt", b.fadd(var, eps)))
    return mean, rstd


def _params(node: Node) -> dict[str, Node]:
    """The kernel's gamma and beta operands by name (those the node has)."""
    if node.op == "layer_norm":
        names = [n for n in ("gamma", "beta") if node.attrs[f"has_{n}"]]
        return dict(zip(names, node.inputs[1:]))
    if node.op == "rms_norm":
        return dict(zip(["gamma"], node.inputs[1:]))
    return dict(zip(["gamma"], node.inputs[2:]))


def _emit_forward(row: _Row, node: Node) -> None:
    b = row.b
    x = node.inputs[0]
    params = _params(node)
    mean, rstd = _statistics(row, node, node.op == "layer_norm")

    def out(k: int, i: Idx) -> ir.Value:
        v = row.load(x, k, i)
        if mean is not None:
            v = b.fsub(v, splat(b, mean, k))
        y = b.fmul(v, splat(b, rstd, k))
        gamma, beta = params.get("gamma"), params.get("beta")
        g = row.load(gamma, k, i, per_row=False) if gamma is not None else None
        bias = row.load(beta, k, i, per_row=False) if beta is not None else None
        if g is not None and bias is not None:
            return _fma(b, y, g, bias)
        if g is not None:
            return b.fmul(y, g)
        return b.fadd(y, bias) if bias is not None else y

    row.store_each(out)


def _emit_grad(row: _Row, node: Node) -> None:
    b, dtype, n = row.b, row.dtype, row.n
    x, dy = node.inputs[0], node.inputs[1]
    gamma = _params(node).get("gamma")
    centered = node.op == "layer_norm_grad"
    mean, rstd = _statistics(row, node, centered)

    def g_at(k: int, i: Idx) -> ir.Value:
        d = row.load(dy, k, i)
        return d if gamma is None else b.fmul(d, row.load(gamma, k, i, per_row=False))

    def xc_at(k: int, i: Idx) -> ir.Value:
        v = row.load(x, k, i)
        return v if mean is None else b.fsub(v, splat(b, mean, k))

    s2 = row.sum(lambda k, i: b.fmul(g_at(k, i), xc_at(k, i)))
    # dx = g·rstd + c0 + xc·c1 with c0 = -rstd·S1/N, c1 = -rstd³·S2/N.
    c1 = b.fmul(b.fmul(b.fmul(rstd, rstd), rstd), b.fdiv(s2, const(dtype, -float(n))))
    c0 = None
    if centered:
        s1 = row.sum(g_at)
        c0 = b.fmul(rstd, b.fdiv(s1, const(dtype, -float(n))))

    def out(k: int, i: Idx) -> ir.Value:
        shifted = b.fmul(xc_at(k, i), splat(b, c1, k))
        if c0 is not None:
            shifted = b.fadd(shifted, splat(b, c0, k))
        return _fma(b, g_at(k, i), splat(b, rstd, k), shifted)

    row.store_each(out)


def _emit(ctx: KernelContext) -> None:
    node = ctx.kernel.anchor
    assert node is not None
    x = node.inputs[0]
    n = math.prod(x.shape[x.ndim - len(node.attrs["axes"]):])
    if x.size == 0:
        return
    rows = x.size // n
    dtype = node.dtype
    lanes = ctx.target.lanes(dtype.itemsize)
    emit_row = _emit_grad if node.op.endswith("_grad") else _emit_forward

    def chunk(c: KernelContext, start: ir.Value, stop: ir.Value) -> None:
        with for_range(c.b, start, stop, 1, name="row") as r:
            base = c.b.mul(r, ir.Constant(I64, n))
            emit_row(_Row(c, base, n, dtype, lanes), node)

    parallel_range(ctx, rows, max(1, PARALLEL_GRAIN // n), chunk)


LOWERINGS = (
    Lowering("layer_norm", _emit),
    Lowering("rms_norm", _emit),
    Lowering("layer_norm_grad", _emit),
    Lowering("rms_norm_grad", _emit),
)
