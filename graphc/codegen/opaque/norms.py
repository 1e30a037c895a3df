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

    def centered(self, x: Node, mean: ir.Value | None, k: int, i: Idx) -> ir.Value:
        """x - mean at row position i (x itself when mean is None: rms_norm)."""
        v = self.load(x, k, i)
        return v if mean is None else self.b.fsub(v, splat(self.b, mean, k))

    def mean_of(self, total: ir.Value) -> ir.Value:
        return self.b.fdiv(total, const(self.dtype, self.n))


def _fma(b: ir.IRBuilder, a: ir.Value, x: ir.Value, c: ir.Value) -> ir.Value:
    """a·x + c rounded once (the same bits at any vector width)."""
    t = a.type
    return b.call(intrinsic(b.module, "llvm.fma", t, [t, t, t]), [a, x, c])


def _statistics(row: _Row, node: Node, centered: bool) -> tuple[ir.Value | None, ir.Value]:
    """(mean or None, rstd) of the row: the mean first, then the centered squares."""
    x = node.inputs[0]
    mean = _mean(row, x) if centered else None
    return mean, _rstd(row, x, mean, node.attrs["eps"])


def _mean(row: _Row, x: Node) -> ir.Value:
    return row.mean_of(row.sum(lambda k, i: row.load(x, k, i)))


def _rstd(row: _Row, x: Node, mean: ir.Value | None, eps: float) -> ir.Value:
    """1 / sqrt(Σ(x - mean)² / N + eps)."""
    b = row.b

    def square(k: int, i: Idx) -> ir.Value:
        v = row.centered(x, mean, k, i)
        return b.fmul(v, v)

    var = row.mean_of(row.sum(square))
    root = unary_intrinsic(b, "llvm.sqrt", b.fadd(var, const(row.dtype, eps)))
    return b.fdiv(const(row.dtype, 1.0), root)


def _params(node: Node) -> dict[str, Node]:
    """The kernel's gamma and beta operands by name (those the node has)."""
    if node.op == "layer_norm":
        names = [n for n in ("gamma", "beta") if node.attrs[f"has_{n}"]]
        return dict(zip(names, node.inputs[1:]))
    if node.op == "rms_norm":
        return dict(zip(["gamma"], node.inputs[1:]))
    return dict(zip(["gamma"], node.inputs[2:]))


def _emit_forward(row: _Row, node: Node) -> None:
    mean, rstd = _statistics(row, node, node.op == "layer_norm")
    row.store_each(_normalized(row, node, mean, rstd))


def _normalized(row: _Row, node: Node, mean: ir.Value | None, rstd: ir.Value) -> RowLoad:
    """The forward result at row position i: ((x - mean)·rstd)·gamma + beta."""
    b, x = row.b, node.inputs[0]
    params = _params(node)
    gamma, beta = params.get("gamma"), params.get("beta")

    def out(k: int, i: Idx) -> ir.Value:
        y = b.fmul(row.centered(x, mean, k, i), splat(b, rstd, k))
        g = row.load(gamma, k, i, per_row=False) if gamma is not None else None
        bias = row.load(beta, k, i, per_row=False) if beta is not None else None
        if g is not None and bias is not None:
            return _fma(b, y, g, bias)
        if g is not None:
            return b.fmul(y, g)
        return b.fadd(y, bias) if bias is not None else y

    return out


def _emit_grad(row: _Row, node: Node) -> None:
    mean, rstd = _statistics(row, node, node.op == "layer_norm_grad")
    c0, c1 = _grad_coefs(row, node, mean, rstd)
    row.store_each(_dx(row, node, mean, rstd, c0, c1))


def _scaled_dy(row: _Row, node: Node) -> RowLoad:
    """g = dy·gamma (dy without gamma) at row position i."""
    dy, gamma = node.inputs[1], _params(node).get("gamma")

    def g(k: int, i: Idx) -> ir.Value:
        d = row.load(dy, k, i)
        return d if gamma is None else row.b.fmul(d, row.load(gamma, k, i, per_row=False))

    return g


def _grad_coefs(row: _Row, node: Node, mean: ir.Value | None, rstd: ir.Value
                ) -> tuple[ir.Value | None, ir.Value]:
    """(c0, c1) of dx = g·rstd + c0 + xc·c1: c0 = -rstd·S1/N (layer_norm; rms_norm: None),
    c1 = -rstd³·S2/N, with S1 = Σg and S2 = Σg·xc."""
    b, x, g = row.b, node.inputs[0], _scaled_dy(row, node)
    minus_n = const(row.dtype, -float(row.n))
    s2 = row.sum(lambda k, i: b.fmul(g(k, i), row.centered(x, mean, k, i)))
    c1 = b.fmul(b.fmul(b.fmul(rstd, rstd), rstd), b.fdiv(s2, minus_n))
    if mean is None:
        return None, c1
    return b.fmul(rstd, b.fdiv(row.sum(g), minus_n)), c1


def _dx(row: _Row, node: Node, mean: ir.Value | None, rstd: ir.Value, c0: ir.Value | None,
        c1: ir.Value) -> RowLoad:
    b, x, g = row.b, node.inputs[0], _scaled_dy(row, node)

    def out(k: int, i: Idx) -> ir.Value:
        shifted = b.fmul(row.centered(x, mean, k, i), splat(b, c1, k))
        if c0 is not None:
            shifted = b.fadd(shifted, splat(b, c0, k))
        return _fma(b, g(k, i), splat(b, rstd, k), shifted)

    return out


def _emit(ctx: KernelContext) -> None:
    node = ctx.kernel.anchor
    assert node is not None
    x = node.inputs[0]
    if x.size == 0:
        return
    n = math.prod(x.shape[x.ndim - len(node.attrs["axes"]):])
    rows = x.size // n
    dtype = node.dtype
    lanes = ctx.target.lanes(dtype.itemsize)
    emit_row = _emit_grad if node.op.endswith("_grad") else _emit_forward

    def chunk(c: KernelContext, start: ir.Value, stop: ir.Value) -> None:
        with for_range(c.b, start, stop, 1, name="row") as r:
            emit_row(_Row(c, c.b.mul(r, ir.Constant(I64, n)), n, dtype, lanes), node)

    parallel_range(ctx, rows, max(1, PARALLEL_GRAIN // n), chunk)


LOWERINGS = (
    Lowering("layer_norm", _emit),
    Lowering("rms_norm", _emit),
    Lowering("layer_norm_grad", _emit),
    Lowering("rms_norm_grad", _emit),
)
