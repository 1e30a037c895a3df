"""gc.attention: compiled kernels (forward and FlashAttention-2 backward) against the reference
interpreter over the block edges, masks, causal, grouped heads, dtypes and threads; fully
masked rows; memory that grows linearly in T; errors; PyTorch's SDPA as a second oracle."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.codegen.opaque.attention import BLOCK_KV, BLOCK_Q


def _graph(shapes: tuple[tuple[int, ...], ...], dtype: str, **kw: object
           ) -> tuple[gc.Graph, list[gc.Node], list[gc.Node]]:
    """loss = sum(attention(q, k, v) * w); outputs: the attention and dq, dk, dv."""
    with gc.Graph("attn") as g:
        q, k, v, w = (gc.placeholder(s, dtype, name=n) for s, n in zip(shapes, "qkvw"))
        o = gc.attention(q, k, v, **kw)
        grads = gc.grad(gc.sum(o * w), [q, k, v])
    return g, [q, k, v, w], [o, *grads]


def _inputs(shapes: tuple[tuple[int, ...], ...], dtype: str, seed: int = 0
            ) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def _shapes(b: int, h: int, hkv: int, tq: int, tk: int, d: int, dv: int
            ) -> tuple[tuple[int, ...], ...]:
    return (b, h, tq, d), (b, hkv, tk, d), (b, hkv, tk, dv), (b, h, tq, dv)


def _padding(b: int, tk: int) -> np.ndarray:
    keep = np.ones((b, 1, 1, tk), bool)
    keep[-1, ..., tk // 3:] = False  # the last batch element sees a third of the keys
    return keep


# Sizes straddle the block edges: Tq around BLOCK_Q, Tk around BLOCK_KV, tails of both.
CASES = [
    # (b, h, hkv, tq, tk, d, dv, causal, mask)
    (2, 2, 2, BLOCK_Q + 3, BLOCK_KV + 5, 16, 8, False, None),
    (1, 4, 2, 2 * BLOCK_Q + 1, 2 * BLOCK_Q + 1, 32, 32, True, None),
    (2, 2, 1, 70, 70, 8, 8, True, "padding"),
    (2, 2, 2, 33, 90, 16, 24, False, "float"),
    (1, 2, 2, 1, BLOCK_KV + 40, 64, 64, False, "padding"),  # one query: a decode step
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_compiled_matches_reference(case: tuple, dtype: str, threads: int) -> None:
    b, h, hkv, tq, tk, d, dv, causal, mask_kind = case
    shapes = _shapes(b, h, hkv, tq, tk, d, dv)
    mask: object = None
    if mask_kind == "padding":
        mask = _padding(b, tk)
    elif mask_kind == "float":
        mask = np.random.default_rng(7).standard_normal((1, h, tq, tk)).astype(dtype)
    with gc.Graph("attn") as g:
        q, k, v, w = (gc.placeholder(s, dtype, name=n) for s, n in zip(shapes, "qkvw"))
        o = gc.attention(q, k, v, causal=causal,
                         mask=None if mask is None else gc.constant(mask))
        outs = [o, *gc.grad(gc.sum(o * w), [q, k, v])]
    arrays = _inputs(shapes, dtype)
    expected = gc.reference(g, [q, k, v, w], outs)(*arrays)
    exe = gc.compile(g, [q, k, v, w], outs, options=gc.CompileOptions(threads=threads))
    actual = exe(*arrays)
    tol = 2e-5 if dtype == "float32" else 1e-12
    for name, x, y in zip(("o", "dq", "dk", "dv"), actual, expected):
        scale = float(np.abs(y).max()) or 1.0
        np.testing.assert_allclose(x / scale, y / scale, atol=tol, rtol=0, err_msg=name)


def test_threads_give_identical_bits() -> None:
    shapes = _shapes(2, 4, 2, 2 * BLOCK_Q + 5, 2 * BLOCK_Q + 5, 32, 32)
    g, ins, outs = _graph(shapes, "float32", causal=True)
    arrays = _inputs(shapes, "float32", seed=3)
    one = gc.compile(g, ins, outs, options=gc.CompileOptions(threads=1))(*arrays)
    two = gc.compile(g, ins, outs, options=gc.CompileOptions(threads=2))(*arrays)
    for x, y in zip(one, two):
        np.testing.assert_array_equal(x, y)


def test_a_decode_step_splits_its_heads_across_threads() -> None:
    """One query per head reads all of its keys and values: that read, not its few flops,
    makes the heads worth a task each (`attention_forward._forward_split`)."""
    from graphc.codegen.opaque.attention import geometry
    from graphc.codegen.opaque.attention_forward import _forward_split

    shapes = _shapes(1, 4, 4, 1, 256, 64, 64)
    keep = np.zeros((1, 1, 1, 256), bool)
    keep[..., :150] = True  # a decode position: the keys written so far
    with gc.Graph("decode") as g:
        q, k, v = (gc.placeholder(s, "float32", name=n) for s, n in zip(shapes, "qkv"))
        o = gc.attention(q, k, v, mask=gc.constant(keep))
    assert _forward_split(geometry(o), 2)[1] is not None
    arrays = _inputs(shapes[:3], "float32", seed=5)
    one, two = (gc.compile(g, [q, k, v], [o], options=gc.CompileOptions(threads=t))(*arrays)
                for t in (1, 2))
    np.testing.assert_array_equal(one, two)
    np.testing.assert_allclose(two, gc.reference(g, [q, k, v], [o])(*arrays), atol=2e-6)


def test_fully_masked_rows_give_zeros_not_nan() -> None:
    shapes = _shapes(2, 2, 2, 4, 6, 8, 8)
    keep = np.ones((2, 1, 4, 6), bool)
    keep[1, 0, 2, :] = False  # one query row of batch 1 sees no key
    with gc.Graph("attn") as g:
        q, k, v, w = (gc.placeholder(s, "float64", name=n) for s, n in zip(shapes, "qkvw"))
        o = gc.attention(q, k, v, mask=gc.constant(keep))
        outs = [o, *gc.grad(gc.sum(o * w), [q, k, v])]
    arrays = _inputs(shapes, "float64")
    for run in (gc.reference(g, [q, k, v, w], outs), gc.compile(g, [q, k, v, w], outs)):
        o_val, dq, dk, dv = run(*arrays)
        assert all(np.isfinite(x).all() for x in (o_val, dq, dk, dv))
        np.testing.assert_array_equal(o_val[1, :, 2], 0.0)
        np.testing.assert_array_equal(dq[1, :, 2], 0.0)
        assert np.abs(o_val[1, :, 1]).sum() > 0  # other rows are untouched


@pytest.mark.parametrize("kw", [{"causal": True}, {"mask": "padding"},
                                {"causal": True, "mask": "padding"}],
                         ids=["causal", "padding", "causal_padding"])
def test_check_grad_float64(kw: dict) -> None:
    shapes = _shapes(2, 2, 1, 5, 5, 4, 3)[:3]
    kw = dict(kw)
    if kw.get("mask") == "padding":
        kw["mask"] = _padding(2, 5)
    arrays = _inputs(shapes, "float64", seed=2)

    def build(q: gc.Node, k: gc.Node, v: gc.Node) -> gc.Node:
        mask = kw.get("mask")
        return gc.attention(q, k, v, causal=kw.get("causal", False),
                            mask=None if mask is None else gc.constant(mask))

    gc.check_grad(build, arrays).assert_ok(1e-6)


def test_gradient_of_a_float_mask() -> None:
    arrays = _inputs(((1, 2, 4, 3), (1, 2, 5, 3), (1, 2, 5, 2), (1, 1, 4, 5)), "float64")
    gc.check_grad(lambda q, k, v, m: gc.attention(q, k, v, mask=m, causal=True),
                  arrays).assert_ok(1e-6)


def _arena(t: int) -> int:
    shapes = _shapes(1, 2, 2, t, t, 16, 16)
    g, ins, outs = _graph(shapes, "float32", causal=True)
    return gc.compile(g, ins, outs).report.generated.arena_bytes


def test_training_memory_is_linear_in_t() -> None:
    """4x the sequence: about 4x the memory (quadratic would be 16x)."""
    small, big = _arena(256), _arena(1024)
    assert big / small < 5.0, (small, big)


def test_errors_name_the_operand() -> None:
    with gc.Graph("bad"):
        q = gc.placeholder((2, 4, 5, 8))
        with pytest.raises(gc.ShapeError, match="k's last dim"):
            gc.attention(q, gc.placeholder((2, 4, 5, 6)), gc.placeholder((2, 4, 5, 6)))
        with pytest.raises(gc.ShapeError, match="dividing q's 4"):
            gc.attention(q, gc.placeholder((2, 3, 5, 8)), gc.placeholder((2, 3, 5, 8)))
        with pytest.raises(gc.ShapeError, match="does not broadcast"):
            gc.attention(q, q, q, mask=gc.placeholder((3, 5), "bool"))
        with pytest.raises(gc.DTypeError, match="mask must be bool or q's dtype"):
            gc.attention(q, q, q, mask=gc.placeholder((5, 5), "int32"))
        with pytest.raises(gc.AttrError, match="scale"):
            gc.attention(q, q, q, scale=float("nan"))
        with pytest.raises(gc.DTypeError, match="k must have q's dtype"):
            gc.attention(q, gc.placeholder((2, 4, 5, 8), "float64"), q)


def test_second_derivative_is_refused() -> None:
    with gc.Graph("g2"):
        q = gc.placeholder((1, 1, 3, 2), "float64")
        dq = gc.grad(gc.sum(gc.attention(q, q, q)), [q])[0]
        with pytest.raises(gc.GraphcError, match="second derivatives of attention"):
            gc.grad(gc.sum(dq), [q])


@pytest.mark.parametrize("causal", [False, True])
def test_matches_torch_sdpa(causal: bool) -> None:
    torch = pytest.importorskip("torch")
    shapes = _shapes(2, 4, 4, 40, 40, 16, 16)
    arrays = _inputs(shapes, "float64", seed=5)
    g, ins, outs = _graph(shapes, "float64", causal=causal)
    o, dq, dk, dv = gc.compile(g, ins, outs)(*arrays)
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in arrays[:3])
    to = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
    (to * torch.tensor(arrays[3])).sum().backward()
    for mine, theirs in ((o, to), (dq, tq.grad), (dk, tk.grad), (dv, tv.grad)):
        np.testing.assert_allclose(mine, theirs.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_a_training_forward_computes_the_statistic_once() -> None:
    """gc.grad adds an attention_lse beside the attention; the attention pass makes the
    pair one attention_with_lse kernel that the gradient reads packed."""
    shapes = _shapes(1, 2, 2, 8, 8, 4, 4)
    g, ins, outs = _graph(shapes, "float64", causal=True)
    exe = gc.compile(g, ins, outs)
    ops = [n.op for n in exe.compiled_graph.nodes]
    assert ops.count("attention_with_lse") == 1
    assert "attention_lse" not in ops and "attention" not in ops
    (grad,) = [n for n in exe.compiled_graph.nodes if n.op == "attention_grad"]
    assert grad.attrs["packed"]
    arrays = _inputs(shapes, "float64")
    for x, y in zip(exe(*arrays), gc.reference(g, ins, outs)(*arrays)):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12)
