"""The winograd pass: which convolutions it rewrites, the F(2x2, 3x3) algebra, and compiled
results equal to the direct convolution's (the reference interpreter runs the original
graph) over odd sizes, paddings, batches, dtypes and fused epilogues."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.ir import Graph
from graphc.ops.winograd import AT, BT
from graphc.options import CompileOptions
from graphc.passes.manager import run_pipeline
from graphc.passes.winograd import G, weight_transform


def test_one_tile_of_the_algebra_is_a_correlation() -> None:
    """A^T [(G g G^T) * (B^T d B)] A is the 2x2 valid correlation of a 4x4 tile d with the
    3x3 kernel g (Lavin & Gray's identity, in float64)."""
    rng = np.random.default_rng(0)
    d, g = rng.standard_normal((4, 4)), rng.standard_normal((3, 3))
    y = AT @ ((G @ g @ G.T) * (BT @ d @ BT.T)) @ AT.T
    want = np.array([[np.sum(d[a:a + 3, b:b + 3] * g) for b in range(2)] for a in range(2)])
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    w = rng.standard_normal((5, 7, 3, 3)).astype(np.float32)
    u = weight_transform(w)
    assert u.shape == (16, 5, 7) and u.dtype == np.float32
    np.testing.assert_allclose(u[:, 2, 3].reshape(4, 4), G @ w[2, 3] @ G.T, rtol=1e-6)


def _graph(shape: tuple[int, ...], out_ch: int, *, padding: object = 1, stride: int = 1,
           groups: int = 1, variable: bool = False, dtype: str = "float32",
           seed: int = 0) -> tuple[Graph, list[gc.Node], gc.Node, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    x_val = rng.standard_normal(shape).astype(dtype)
    r_shape = None
    with gc.Graph("wino") as g:
        x = gc.placeholder(shape, dtype, name="x")
        w_val = (rng.standard_normal((out_ch, shape[1] // groups, 3, 3)) * 0.1).astype(dtype)
        w = gc.variable(w_val, name="w") if variable else gc.constant(w_val)
        y = gc.conv2d(x, w, stride=stride, padding=padding, groups=groups)
        r_shape = y.shape
        r = gc.placeholder(r_shape, dtype, name="r")
        b = gc.constant(rng.standard_normal((1, out_ch, 1, 1)).astype(dtype))
        out = gc.relu(y + b + r)  # the epilogue: bias, a residual, an activation
    r_val = rng.standard_normal(r_shape).astype(dtype)
    return g, [x, r], out, [x_val, r_val]


def _hits(g: Graph, ins: list[gc.Node], out: gc.Node, algorithm: str = "auto") -> int:
    sig = g.add_signature("probe", ins, [out])
    result = run_pipeline(g, sig, CompileOptions(conv_algorithm=algorithm))
    return sum(r.hits for p in result.report.passes for r in p.rules
               if p.name == "winograd")


def test_which_convolutions_are_rewritten() -> None:
    assert _hits(*_graph((1, 64, 8, 8), 64)[:3]) == 1
    assert _hits(*_graph((1, 64, 8, 8), 64, stride=2)[:3]) == 0
    assert _hits(*_graph((1, 64, 8, 8), 64, variable=True)[:3]) == 0  # training
    assert _hits(*_graph((1, 64, 8, 8), 64, groups=2)[:3]) == 0
    assert _hits(*_graph((1, 16, 8, 8), 64)[:3]) == 0  # few channels: direct is faster
    assert _hits(*_graph((1, 64, 8, 8), 64)[:3], algorithm="direct") == 0


@pytest.mark.parametrize(("shape", "out_ch", "padding", "dtype"), [
    ((1, 64, 14, 14), 64, 1, "float32"),
    ((1, 64, 7, 7), 96, 1, "float32"),  # odd output: the last tile row/column is cut
    ((2, 64, 9, 6), 64, 1, "float32"),  # a batch: V is transposed into GEMM layout
    ((2, 64, 12, 12), 64, 1, "float32"),  # 72 tiles: the GEMMs as V^T U^T
    ((1, 64, 10, 11), 64, 0, "float32"),
    ((1, 64, 6, 8), 64, ((0, 2), (1, 0)), "float32"),  # asymmetric padding
    ((2, 64, 5, 5), 64, 1, "float64"),
])
def test_compiled_winograd_matches_the_direct_convolution(
        shape: tuple[int, ...], out_ch: int, padding: object, dtype: str) -> None:
    g, ins, out, vals = _graph(shape, out_ch, padding=padding, dtype=dtype)
    assert _hits(g, ins, out) == 1
    want = gc.reference(g, ins, [out])(*vals)
    tol = 1e-5 if dtype == "float32" else 1e-12
    for threads in (1, 2):
        got = gc.compile(g, ins, [out], options=CompileOptions(
            cache_dir=None, threads=threads))(*vals)
        np.testing.assert_allclose(got[0], want[0], rtol=tol, atol=tol * np.abs(want).max())
