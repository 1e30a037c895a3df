"""The attention kernels' register-blocked paths (`attention_tiles` for the forward,
`attention_grad_tiles` for the backward: operands packed once per head, causal-cut blocks
trimmed to the key panels each row tile sees) against the reference interpreter, over
shapes that hit each branch: query and key counts that are and are not multiples of the
block and of the register block, fewer keys than queries and the reverse (so a cut block
need not sit on the diagonal), Dv that is not a multiple of the panel width, masks, the
three forward ops and the gradient, float32 and float64."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import graphc as gc
from graphc import pipeline
from graphc.builder import apply
from graphc.codegen.opaque.attention import BLOCK_Q, FEW_QUERIES
from graphc.codegen.vecmath import emitter
from graphc.ops.attention import LSE

# (tq, tk, d, dv, causal, mask)
CASES = [
    (2 * BLOCK_Q, 2 * BLOCK_Q, 64, 64, True, None),  # the GPT benchmark's shape
    (BLOCK_Q + 37, BLOCK_Q + 37, 16, 16, True, None),  # tail block, partial row tile
    (FEW_QUERIES + 4, FEW_QUERIES + 4, 8, 8, True, None),  # one block, smaller than BLOCK_Q
    (BLOCK_Q + 6, 40, 16, 24, True, None),  # fewer keys than queries
    (40, BLOCK_Q + 26, 16, 24, True, None),  # more keys: the cut block is not square
    (BLOCK_Q + 1, 300, 24, 40, False, "float"),  # several key blocks, Dv panel tail
    (2 * BLOCK_Q + 2, 2 * BLOCK_Q + 2, 5, 7, True, "padding"),
]


def _mask(kind: str | None, tq: int, tk: int, dtype: str) -> np.ndarray | None:
    if kind == "padding":
        keep = np.ones((2, 1, 1, tk), bool)
        keep[-1, ..., tk // 3:] = False
        return keep
    if kind == "float":
        return np.random.default_rng(7).standard_normal((1, 3, tq, tk)).astype(dtype)
    return None


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_forward_and_gradients_match_reference(case: tuple, dtype: str) -> None:
    tq, tk, d, dv, causal, kind = case
    shapes = ((2, 3, tq, d), (2, 3, tk, d), (2, 3, tk, dv), (2, 3, tq, dv))
    mask = _mask(kind, tq, tk, dtype)
    with gc.Graph("attn") as g:
        q, k, v, w = (gc.placeholder(s, dtype, name=n) for s, n in zip(shapes, "qkvw"))
        m = None if mask is None else gc.constant(mask)
        o = gc.attention(q, k, v, causal=causal, mask=m)
        lse = apply(LSE, list(o.inputs), o.attrs)  # the mask as the builder made it
        forward = [o, lse]
        training = [o, *gc.grad(gc.sum(o * w), [q, k, v])]
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(s).astype(dtype) for s in shapes]
    tol = 2e-5 if dtype == "float32" else 1e-12
    for outs in (forward, training):  # attention + attention_lse; attention_with_lse
        expected = gc.reference(g, [q, k, v, w], outs)(*arrays)
        actual = gc.compile(g, [q, k, v, w], outs,
                            options=gc.CompileOptions(threads=1))(*arrays)
        for x, y in zip(actual, expected):
            finite = np.isfinite(y)
            np.testing.assert_array_equal(np.isfinite(x), finite)
            scale = float(np.abs(y[finite]).max()) or 1.0
            np.testing.assert_allclose(np.where(finite, x, 0) / scale,
                                       np.where(finite, y, 0) / scale, atol=tol, rtol=0)


def test_threads_split_heads_across_tasks() -> None:
    """Two threads: each task packs the heads it meets; the bits match one thread."""
    shapes = ((1, 4, 2 * BLOCK_Q + 3, 32),) * 3
    with gc.Graph("attn") as g:
        q, k, v = (gc.placeholder(s, "float32", name=n) for s, n in zip(shapes, "qkv"))
        o = gc.attention(q, k, v, causal=True)
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal(s).astype("float32") for s in shapes]
    one, two = (gc.compile(g, [q, k, v], [o], options=gc.CompileOptions(threads=t))(*arrays)
                for t in (1, 2))
    np.testing.assert_array_equal(one[0], two[0])
    expected = gc.reference(g, [q, k, v], [o])(*arrays)[0]
    np.testing.assert_allclose(one[0], expected, atol=2e-5, rtol=0)


def test_no_keys_give_zeros() -> None:
    """Tk = 0: every row sees nothing, so (as for a fully masked row) O, dQ are 0."""
    with gc.Graph("attn") as g:
        q = gc.placeholder((1, 2, FEW_QUERIES + 1, 8), "float64", name="q")
        k, v = (gc.placeholder((1, 2, 0, 8), "float64", name=n) for n in "kv")
        o = gc.attention(q, k, v, causal=True)
        outs = [o, *gc.grad(gc.sum(o * o), [q, k, v])]
    x = np.random.default_rng(0).standard_normal(q.shape)
    o_val, dq, dk, dv = gc.compile(g, [q, k, v], outs)(x, np.zeros(k.shape), np.zeros(v.shape))
    np.testing.assert_array_equal(o_val, 0.0)
    np.testing.assert_array_equal(dq, 0.0)
    assert dk.shape == k.shape and dv.shape == v.shape


def test_avx2_register_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """On an AVX2 target the register block is 6 x 16 (float32): 6 does not divide the
    block, so row tiles straddle the causal diagonal's offset and the backward zeroes the
    keys it did not compute. (AVX2 code runs on AVX-512 hosts too.)"""
    host = pipeline.host_target()
    avx512 = tuple(f[1:] for f in host.features.split(",") if f.startswith("+avx512"))
    avx2 = dataclasses.replace(host.without(avx512), vector_bits=min(host.vector_bits, 256))
    monkeypatch.setattr(pipeline, "host_target", lambda: avx2)
    monkeypatch.setattr(emitter, "use_avx512", lambda: False)  # vecmath's scalef
    for case in (CASES[1], CASES[4], CASES[6]):
        test_forward_and_gradients_match_reference(case, "float32")
    test_forward_and_gradients_match_reference(CASES[0], "float64")
