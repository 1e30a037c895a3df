"""Reductions over trailing axes whose input expression reads values constant along each
reduced row (a per-channel bias before a global pool): one flat, vectorized row per output
(`passes.column_sums.row_flat_input`), equal to numpy; other broadcasts keep the row loops."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.passes.column_sums import row_flat_input
from graphc.pipeline import lower


def _graph(shape, bshape, op, axes):
    rng = np.random.default_rng(len(shape) + sum(bshape))
    x = rng.standard_normal(shape).astype(np.float32)
    bias = rng.standard_normal(bshape).astype(np.float32)
    with gc.Graph("rowb") as g:
        px = gc.placeholder(shape, name="x")
        y = gc.minimum(gc.maximum(px + gc.constant(bias), 0.0), 6.0) * 1.5
        out = getattr(gc, op)(y, axis=axes)
    want = getattr(np, op)(np.minimum(np.maximum(x + bias, 0), 6) * np.float32(1.5), axis=axes)
    return g, px, out, x, want


@pytest.mark.parametrize("op", ["sum", "mean", "max"])
@pytest.mark.parametrize("shape,bshape,axes,by_row", [
    ((1, 40, 7, 7), (1, 40, 1, 1), (2, 3), True),      # MobileNetV2's last pool
    ((2, 13, 5, 11), (1, 13, 1, 1), (2, 3), True),     # rows of 55: vectors and a tail
    ((3, 9, 33), (3, 9, 1), (2,), True),
    ((2, 6, 4, 4), (1, 6, 4, 1), (2, 3), False),       # varies along a reduced axis
    ((4, 6, 5), (1, 6, 1), (1, 2), False),             # reduced axes beyond the bias's
])
def test_row_constant_operands_reduce_as_flat_rows(shape, bshape, axes, by_row, op) -> None:
    g, px, out, x, want = _graph(shape, bshape, op, axes)
    sig = gc.Signature("s", (px,), (out,), ())
    fused = lower(g, sig, gc.CompileOptions(), "fused").fused
    assert fused is not None
    (kernel,) = [k for k in fused.kernels if k.anchor is not None and k.anchor.op in
                 ("sum", "max")]
    assert row_flat_input(kernel.nodes, kernel.anchor) == by_row
    for threads in (1, 2):
        (got,) = gc.compile(g, [px], [out], options=gc.CompileOptions(threads=threads))(x)
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)
