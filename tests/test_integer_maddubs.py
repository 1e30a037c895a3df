"""u8 x s8 k-quads on `pmaddubsw` without VNNI: a constant B whose every k-pair fits the
instruction's 16-bit sums (`lowp_kernels.byte_pairs_fit`; 7-bit weights always do) is stored
as quads (b_groups group 4) and multiplied by `pmaddubsw` + `pmaddwd`, exactly.

Checked: `byte_pairs_fit` against the exact int16 bound over every pair of bytes; exact
sums at the bound (A = 255 against pairs adding to +-128) and on random data, with and
without a zero point, B transposed or not, on the GEMM and the panel GEMV, at 1 and 2
threads; the instruction in the IR; a B that does not fit stays byte pairs; a crafted quads
layout over such a B is a CompileError, not saturated sums; `quantize_dynamic(reduce_range=
True)` writes 7-bit weights that take this path.
"""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc import pipeline
from graphc.builder import apply
from graphc.codegen.gemm.lowp import emulates_quads
from graphc.codegen.gemm.lowp_kernels import byte_pairs_fit
from graphc.codegen.target import host_target
from graphc.ops.linalg import MATMUL_INTEGER
from graphc.ops.panels import pack_groups
from graphc.options import CompileOptions
from tests.int8_helpers import integer_matmul_graph as _graph

# The host without VNNI: quads run on pmaddubsw wherever the host has AVX2 (or AVX-512BW).
NO_VNNI = ("avx512bf16", "avx512vnni")
pytestmark = pytest.mark.skipif(not emulates_quads(host_target().without(NO_VNNI)),
                                reason="the host has neither AVX2 nor AVX-512BW")


def _opts(threads: int = 1) -> CompileOptions:
    return CompileOptions(threads=threads, cache_dir=None, disable_features=NO_VNNI)


def _groups(exe: gc.Executable) -> tuple[int, ...]:
    (mm,) = [n for n in exe.compiled_graph.nodes if n.op == "matmul_integer"]
    return tuple(mm.attrs["b_groups"])


def test_byte_pairs_fit_is_the_int16_bound_of_every_pair() -> None:
    """For every pair (b0, b1) of int8: fits iff a0*b0 + a1*b1 stays in int16 for all
    bytes a0, a1 (the sum is linear in a, so its extremes are at a in {0, 255}^2)."""
    b0, b1 = (x.ravel() for x in np.meshgrid(np.arange(-128, 128), np.arange(-128, 128)))
    corners = [(x, y) for x in (0, 255) for y in (0, 255)]
    sums = np.stack([x * b0 + y * b1 for x, y in corners])
    exact = (sums.max(axis=0) <= 32767) & (sums.min(axis=0) >= -32768)
    for i in range(b0.size):
        pair = np.array([[b0[i]], [b1[i]]], np.int8)
        assert byte_pairs_fit(pair) == exact[i], (b0[i], b1[i])
    # A matrix fits only if every pair of every column does.
    fitting = np.full((8, 4), 64, np.int8)
    assert byte_pairs_fit(fitting)
    fitting[6, 3] = 65
    assert not byte_pairs_fit(fitting)
    # Checked in blocks of pair rows: a pair past the first block counts as much.
    big = np.full((600, 300), 60, np.int8)
    assert byte_pairs_fit(big)
    for value, row in ((70, 598), (-70, 596)):
        late = big.copy()
        late[row:row + 2, 299] = value
        assert not byte_pairs_fit(late)


def _at_the_bound(k: int, n: int) -> np.ndarray:
    """Pairs whose products with A = 255 reach +-255 * 128, the largest that fit."""
    pat = np.array([[127, 1], [1, 127], [-128, 0], [0, -128], [64, 64], [-64, -64],
                    [100, 28], [-100, -28], [-128, 127], [127, -128]], np.int8)
    w = np.empty((k, n), np.int8)
    for p in range(k // 2):
        w[2 * p:2 * p + 2] = pat[(p + np.arange(n)) % len(pat)].T
    return w


# (a shape, k, n, transpose_b, zero point, B at the bound)
CASES = [
    ((256, 128), 128, 64, False, False, True),
    ((64, 256), 256, 96, True, True, False),
    ((4, 33, 64), 64, 128, False, True, False),  # a merged batch of odd rows
    ((1, 512), 512, 256, False, False, True),  # the panel GEMV
    ((3, 136), 136, 160, True, False, False),
]


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_fitting_weights_run_quads_on_pmaddubsw_exactly(case) -> None:
    a_shape, k, n, tb, zp, bound = case
    rng = np.random.default_rng(k + n)
    w = _at_the_bound(k, n) if bound else rng.integers(-64, 65, (k, n), dtype=np.int8)
    stored = np.ascontiguousarray(w.T) if tb else w
    g, inputs, acc = _graph(a_shape, stored, tb, zp)
    av = np.full(a_shape, 255, np.uint8) if bound else rng.integers(0, 256, a_shape,
                                                                    dtype=np.uint8)
    zv = np.uint8(rng.integers(0, 256))
    args = (av, zv) if zp else (av,)
    want = (av.astype(np.int64) - (int(zv) if zp else 0)) @ w.astype(np.int64)
    assert np.abs(want).max() < 2**31
    for threads in (1, 2):
        exe = gc.compile(g, inputs, [acc], options=_opts(threads))
        assert _groups(exe)[1] == 4
        np.testing.assert_array_equal(exe(*args)[0], want.astype(np.int32))


def test_the_ir_multiplies_with_pmaddubsw() -> None:
    rng = np.random.default_rng(1)
    g, inputs, acc = _graph((64, 256), rng.integers(-64, 65, (256, 128), dtype=np.int8),
                            False, False)
    g.add_signature("s", inputs, [acc])
    low = pipeline.lower(g, g.signatures["s"], _opts())
    assert "pmadd.ub.sw" in low.ir_text or "pmaddubs.w" in low.ir_text


def test_weights_that_do_not_fit_stay_byte_pairs() -> None:
    """One pair over the bound (127 + 2) keeps the whole B on the exact pmaddwd path."""
    w = np.full((128, 64), 10, np.int8)
    w[40, 17], w[41, 17] = 127, 2
    g, inputs, acc = _graph((64, 128), w, False, False)
    exe = gc.compile(g, inputs, [acc], options=_opts())
    assert _groups(exe)[1] == 2
    av = np.full((64, 128), 255, np.uint8)
    np.testing.assert_array_equal(exe(av)[0], (av.astype(np.int64) @ w).astype(np.int32))


def test_crafted_quads_over_weights_that_do_not_fit_are_a_compile_error() -> None:
    """b_groups = (panel, 4) written by hand over a B whose pairs would saturate: a
    CompileError naming the node, not saturated sums."""
    w = np.full((64, 64), 100, np.int8)
    panel = 2 * host_target().lanes(4)
    with gc.Graph("crafted") as g:
        a = gc.placeholder((64, 64), gc.uint8, name="a")
        y = apply(MATMUL_INTEGER, [a, gc.constant(pack_groups(w, panel, 4).reshape(64, 64))],
                  {"transpose_a": False, "transpose_b": False, "b_groups": (panel, 4)})
    with pytest.raises(gc.CompileError, match=r"matmul_integer %.*pmaddubsw"):
        gc.compile(g, [a], [y], options=_opts())


@pytest.mark.parametrize("batch", [1, 64])
def test_reduce_range_writes_7bit_weights_that_run_on_pmaddubsw(batch: int) -> None:
    rng = np.random.default_rng(5)
    w1 = rng.standard_normal((128, 256)).astype(np.float32) / 10
    w2 = rng.standard_normal((256, 64)).astype(np.float32) / 10
    with gc.Graph("mlp") as g:
        x = gc.placeholder((batch, 128), name="x")
        y = gc.relu(x @ gc.constant(w1)) @ gc.constant(w2)
    g.add_signature("main", [x], [y])
    q = gc.quantize_dynamic(g, reduce_range=True)
    weights = [q.constants[n.inputs[1].name] for n in q.nodes if n.op == "matmul_integer"]
    assert len(weights) == 2
    assert all(v.min() >= -64 and v.max() <= 64 and np.abs(v).max() == 64 for v in weights)
    exe = gc.compile(q, signature="main", options=_opts())
    assert all(n.attrs["b_groups"][1] == 4 for n in exe.compiled_graph.nodes
               if n.op == "matmul_integer")
    xv = rng.standard_normal((batch, 128)).astype(np.float32)
    got = exe(xv)[0]
    np.testing.assert_allclose(got, gc.reference(q, signature="main")(xv)[0],
                               rtol=1e-5, atol=1e-5)
    # Within 7-bit quantization error of the float model.
    want = np.maximum(xv @ w1, 0) @ w2
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()
