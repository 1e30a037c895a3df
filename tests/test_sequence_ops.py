"""Sequence ops beyond the op table: argument errors, runtime starts out of range (compiled
and reference), the KV-cache update in place, a write at every position of a cache, a
decode-step read of [0, Tmax) through a runtime-position mask, iota masks fused rather
than stored, the ONNX Trilu rule, and rope against PyTorch's formulas."""

from __future__ import annotations

import time

import numpy as np
import pytest

import graphc as gc
from graphc.io.textir import format_graph, parse_graph
from graphc.passes.memory_plan import Space


def _compile(g: gc.Graph, *args: object, threads: int = 1, **kwargs: object) -> gc.Executable:
    return gc.compile(g, *args, options=gc.CompileOptions(threads=threads), **kwargs)


# --- argument errors: GraphcError naming op and argument, expected vs received -------------

def _raises(fn: object, *words: str) -> None:
    with gc.Graph("errors"):
        with pytest.raises(gc.GraphcError) as info:
            fn()  # type: ignore[operator]
    text = str(info.value)
    for w in words:
        assert w in text, f"{w!r} not in {text!r}"


def test_iota_and_arange_errors() -> None:
    _raises(lambda: gc.iota((3, 4), 2), "iota", "axis 2", "[3, 4]")
    _raises(lambda: gc.iota((3,), 0, "bool"), "iota", "numeric", "bool")
    _raises(lambda: gc.iota((), 0), "iota", "rank >= 1")
    _raises(lambda: gc.arange(0, 5, 0), "arange", "step")
    _raises(lambda: gc.arange(0, float("inf")), "arange", "finite")


def test_triu_tril_errors() -> None:
    _raises(lambda: gc.triu(gc.placeholder((4,), "float32")), "triu", "rank >= 2", "f32[4]")
    _raises(lambda: gc.tril(gc.placeholder((2, 2), "float32"), 1.5), "tril", "k", "1.5")


def test_dynamic_update_slice_errors() -> None:
    def ph(shape: tuple[int, ...], dtype: str = "float32") -> gc.Node:
        return gc.placeholder(shape, dtype)

    op = "dynamic_update_slice"
    _raises(lambda: gc.dynamic_update_slice(ph((4, 5)), ph((1, 5), "float64"), (0, 0)),
            op, "update", "float32", "f64[1,5]")
    _raises(lambda: gc.dynamic_update_slice(ph((4, 5)), ph((5,)), (0, 0)), op, "update",
            "rank 2", "f32[5]")
    _raises(lambda: gc.dynamic_update_slice(ph((4, 5)), ph((5, 1)), (0, 0)), op, "update",
            "f32[5,1]")
    _raises(lambda: gc.dynamic_update_slice(ph((4, 5)), ph((1, 5)), (0,)), op, "start",
            "2 int scalars", "i64[]")
    _raises(lambda: gc.dynamic_update_slice(ph((4, 5)), ph((1, 5)), (ph(()), 0)), op,
            "start 0", "integer", "f32[]")
    _raises(lambda: gc.dynamic_update_slice(ph((4, 5)), ph((1, 5)), ph((3,), "int64")), op,
            "length 2", "i64[3]")
    # Constant starts are checked when the graph is built.
    _raises(lambda: gc.dynamic_update_slice(ph((4, 5)), ph((2, 5)), (3, 0)), op,
            "start 3", "axis 0", "0 <= start <= 2")
    _raises(lambda: gc.dynamic_slice(ph((4, 5)), (0, 0), (5, 1)), "dynamic_slice", "sizes",
            "[5, 1]", "f32[4,5]")
    _raises(lambda: gc.dynamic_slice(ph((4, 5)), (0, -1), (1, 1)), "dynamic_slice",
            "start -1", "axis 1")


def test_rope_errors() -> None:
    _raises(lambda: gc.rope(gc.placeholder((2, 5), "float32")), "rope", "D even", "f32[2,5]")
    _raises(lambda: gc.rope(gc.placeholder((2, 4), "int32")), "rope", "float", "i32[2,4]")
    x = (3, 5, 4)
    _raises(lambda: gc.rope(gc.placeholder(x), gc.placeholder((5,), "float32")), "rope",
            "positions", "[3, 5]", "f32[5]")
    _raises(lambda: gc.rope(gc.placeholder(x), gc.placeholder((2, 5), "int64")), "rope",
            "positions", "i64[2,5]")
    _raises(lambda: gc.rope(gc.placeholder(x), base=0.0), "rope", "base")


# --- runtime starts out of range -----------------------------------------------------------

def _block_graph() -> tuple[gc.Graph, list[gc.Node], list[gc.Node]]:
    with gc.Graph("blocks") as g:
        x = gc.placeholder((3, 8), "float32", name="x")
        u = gc.placeholder((3, 2), "float32", name="u")
        pos = gc.placeholder((), "int32", name="pos")
        written = gc.dynamic_update_slice(x, u, (0, pos))
        read = gc.dynamic_slice(x, (0, pos), (3, 2))
    return g, [x, u, pos], [written, read]


@pytest.mark.parametrize("backend", ["reference", "compiled"])
@pytest.mark.parametrize("pos", [7, 8, -1, 2**31 - 1])
def test_a_start_out_of_range_raises_at_the_call(backend: str, pos: int) -> None:
    g, inputs, (written, read) = _block_graph()
    x = np.arange(24, dtype=np.float32).reshape(3, 8)
    u = np.ones((3, 2), np.float32)
    for out, op in ((written, "dynamic_update_slice"), (read, "dynamic_slice")):
        fn = (gc.reference(g, inputs, out) if backend == "reference"
              else _compile(g, inputs, out))
        got = fn(x, u, np.int32(6))
        np.testing.assert_array_equal(got[:, 6:] if op == "dynamic_update_slice" else got,
                                      1.0 if op == "dynamic_update_slice" else x[:, 6:])
        with pytest.raises(gc.GraphcError) as info:
            fn(x, u, np.int32(pos))
        text = str(info.value)
        assert op in text and "out of range" in text and "6" in text, text


def test_a_cache_written_past_its_end_keeps_its_last_slot() -> None:
    """In place into the variable, a bad position writes nothing and the call raises."""
    with gc.Graph("cache") as g:
        cache = gc.variable(np.zeros((2, 4, 3), np.float32), name="cache")
        pos = gc.placeholder((), "int64", name="pos")
        kv = gc.placeholder((2, 1, 3), "float32", name="kv")
        g.add_signature("step", inputs=[pos, kv], outputs=[],
                        updates={cache: gc.dynamic_update_slice(cache, kv, (0, pos, 0))})
    step = _compile(g, signature="step")
    assert [v.name for v in step.report.plan.in_place_updates] == ["cache"]
    step(np.int64(3), np.full((2, 1, 3), 7, np.float32))
    for bad in (4, 5, -1):
        with pytest.raises(gc.GraphcError, match="dynamic_update_slice"):
            step(np.int64(bad), np.full((2, 1, 3), 9, np.float32))
    assert (g.variables["cache"][:, 3] == 7).all() and (g.variables["cache"][:, :3] == 0).all()


# --- in place ------------------------------------------------------------------------------

def _kv_graph(shape: tuple[int, ...]) -> tuple[gc.Graph, gc.Node]:
    layers, _two, heads, _tmax, dh = shape
    with gc.Graph("kv") as g:
        cache = gc.variable(np.zeros(shape, np.float32), name="cache")
        pos = gc.placeholder((), "int64", name="pos")
        kv = gc.placeholder((layers, 2, heads, 1, dh), "float32", name="kv")
        g.add_signature("step", inputs=[pos, kv], outputs=[],
                        updates={cache: gc.dynamic_update_slice(cache, kv, (0, 0, 0, pos, 0))})
    return g, cache


def test_a_kv_cache_update_writes_into_the_variable_in_place() -> None:
    """The plan puts the result in the variable itself (no arena, no copies), and a step on
    a 64 MB cache costs far less than one copy of it."""
    shape = (16, 2, 8, 1024, 64)  # 64 MiB of float32
    g, cache = _kv_graph(shape)
    step = _compile(g, signature="step")
    plan = step.report.plan
    assert [v.name for v in plan.in_place_updates] == [cache.name]
    (kernel,) = plan.program.kernels
    assert plan.location[kernel.root].space == Space.VARIABLE
    assert plan.arena_bytes == 0 and not plan.copies_before and not plan.copies_after
    kv = np.ones((16, 2, 8, 1, 64), np.float32)
    step(np.int64(0), kv)
    start = time.perf_counter()
    for p in range(1, 21):
        step(np.int64(p), kv)
    per_step = (time.perf_counter() - start) / 20
    copy = np.empty_like(g.variables["cache"])
    start = time.perf_counter()
    np.copyto(copy, g.variables["cache"])
    copy_time = time.perf_counter() - start
    assert per_step < copy_time / 4, (per_step, copy_time)  # loose: measured ~1/400 here
    assert (g.variables["cache"][:, :, :, :21] == 1).all()
    assert not g.variables["cache"][:, :, :, 21:].any()


def test_a_dead_x_gives_its_arena_slot_to_the_update() -> None:
    with gc.Graph("dead") as g:
        x = gc.placeholder((64, 32), "float32", name="x")
        u = gc.placeholder((4, 32), "float32", name="u")
        pos = gc.placeholder((), "int64", name="pos")
        y = gc.exp(x)
        out = gc.sum(gc.dynamic_update_slice(y, u, (pos, 0)) * 2.0, axis=0)
        live = gc.sum(gc.dynamic_update_slice(y, u, (pos, 0)) + y, axis=0)  # y read after
    # (The plan's nodes are the optimized graph's: compare by op.)
    plan = _compile(g, [x, u, pos], [out]).report.plan
    assert [(a.op, b.op) for a, b in plan.in_place] == [("dynamic_update_slice", "exp")]
    plan_live = _compile(g, [x, u, pos], [live]).report.plan
    assert not any(b.op == "exp" for _a, b in plan_live.in_place)
    args = (np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32),
            np.ones((4, 32), np.float32), np.int64(60))
    for target in (out, live):
        np.testing.assert_allclose(_compile(g, [x, u, pos], [target])(*args),
                                   gc.reference(g, [x, u, pos], [target])(*args), rtol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_large_block_split_across_threads(threads: int) -> None:
    with gc.Graph("big") as g:
        x = gc.placeholder((300, 400), "float64", name="x")
        u = gc.placeholder((200, 399), "float64", name="u")
        s = gc.placeholder((2,), "int64", name="s")
        outs = [gc.dynamic_update_slice(x, u, s), gc.dynamic_slice(x, s, (200, 399))]
    rng = np.random.default_rng(1)
    args = (rng.standard_normal((300, 400)), rng.standard_normal((200, 399)),
            np.array([77, 1], np.int64))
    got = _compile(g, [x, u, s], outs, threads=threads)(*args)
    want = gc.reference(g, [x, u, s], outs)(*args)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", ["reference", "compiled"])
def test_writes_at_every_position_in_random_order(backend: str) -> None:
    tmax = 16
    g, _cache = _kv_graph((2, 2, 3, tmax, 4))
    step = gc.reference(g, signature="step") if backend == "reference" else _compile(
        g, signature="step")
    rng = np.random.default_rng(2)
    mirror = np.zeros((2, 2, 3, tmax, 4), np.float32)
    for p in rng.permutation(tmax):
        kv = rng.standard_normal((2, 2, 3, 1, 4)).astype(np.float32)
        step(np.int64(p), kv)
        mirror[:, :, :, p:p + 1] = kv
        np.testing.assert_array_equal(g.variables["cache"], mirror)


# --- a decode step's read of [0, Tmax) through a runtime-position mask ---------------------

def _decode_graph(heads: int, tmax: int, dh: int) -> tuple[gc.Graph, list[gc.Node], gc.Node]:
    """Write this token's k, v at `pos`, then attend over the whole cache with keys after
    `pos` masked out: mask = iota(Tmax) <= pos (True: attend)."""
    with gc.Graph("decode") as g:
        q = gc.placeholder((1, heads, 1, dh), "float64", name="q")
        k_new = gc.placeholder((1, heads, 1, dh), "float64", name="k_new")
        v_new = gc.placeholder((1, heads, 1, dh), "float64", name="v_new")
        k_cache = gc.placeholder((1, heads, tmax, dh), "float64", name="k_cache")
        v_cache = gc.placeholder((1, heads, tmax, dh), "float64", name="v_cache")
        pos = gc.placeholder((), "int64", name="pos")
        k = gc.dynamic_update_slice(k_cache, k_new, (0, 0, pos, 0))
        v = gc.dynamic_update_slice(v_cache, v_new, (0, 0, pos, 0))
        mask = gc.iota((tmax,)) <= pos
        out = gc.attention(q, k, v, mask=mask)
    return g, [q, k_new, v_new, k_cache, v_cache, pos], out


@pytest.mark.parametrize("backend", ["reference", "compiled"])
def test_attention_over_the_prefix_through_a_runtime_position_mask(backend: str) -> None:
    heads, tmax, dh = 2, 12, 4
    g, inputs, out = _decode_graph(heads, tmax, dh)
    fn = gc.reference(g, inputs, out) if backend == "reference" else _compile(g, inputs, out)
    rng = np.random.default_rng(3)
    q, k_new, v_new = (rng.standard_normal((1, heads, 1, dh)) for _ in range(3))
    # Garbage after the prefix must not matter.
    k_cache, v_cache = (rng.standard_normal((1, heads, tmax, dh)) * 100 for _ in range(2))
    for pos in (0, 5, tmax - 1):
        k, v = k_cache.copy(), v_cache.copy()
        k[:, :, pos], v[:, :, pos] = k_new[:, :, 0], v_new[:, :, 0]
        s = (q @ np.swapaxes(k[:, :, :pos + 1], -1, -2)) / np.sqrt(dh)
        p = np.exp(s - s.max(-1, keepdims=True))
        want = (p / p.sum(-1, keepdims=True)) @ v[:, :, :pos + 1]
        got = fn(q, k_new, v_new, k_cache, v_cache, np.int64(pos))
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def _decode_with_caches(per_layer: bool) -> tuple[gc.Graph, int]:
    """Two layers' caches as variables (one per layer and K/V, or one (layers, 2, ...)),
    written at `pos`, each layer attending over [0, Tmax) through mask iota <= pos."""
    layers, heads, tmax, dh = 2, 2, 8, 4
    rng = np.random.default_rng(7)
    with gc.Graph("decode") as g:
        pos = gc.placeholder((), "int64", name="pos")
        q = gc.placeholder((1, heads, 1, dh), "float64", name="q")
        kv = gc.placeholder((layers, 2, heads, 1, dh), "float64", name="kv")
        mask = gc.iota((tmax,)) <= pos
        outs, updates = [], {}
        if per_layer:
            for i in range(layers * 2):
                cache = gc.variable(rng.standard_normal((1, heads, tmax, dh)), name=f"c{i}")
                new = kv[i // 2, i % 2][None]
                updates[cache] = gc.dynamic_update_slice(cache, new, (0, 0, pos, 0))
            values = list(updates.values())
            layer_kv = [(values[2 * i], values[2 * i + 1]) for i in range(layers)]
        else:
            cache = gc.variable(rng.standard_normal((layers, 2, heads, tmax, dh)), name="c")
            updates[cache] = gc.dynamic_update_slice(cache, kv, (0, 0, 0, pos, 0))
            layer_kv = [(updates[cache][i, 0][None], updates[cache][i, 1][None])
                        for i in range(layers)]
        for k, v in layer_kv:
            outs.append(gc.attention(q, k, v, mask=mask))
        g.add_signature("decode", inputs=[pos, q, kv], outputs=outs, updates=updates)
    return g, len(updates)


@pytest.mark.parametrize("per_layer", [True, False], ids=["per_layer", "one_cache"])
def test_a_compiled_decode_step_updates_its_caches_in_place(per_layer: bool) -> None:
    g, n_caches = _decode_with_caches(per_layer)
    ref_graph, _ = _decode_with_caches(per_layer)
    step = _compile(g, signature="decode")
    reference = gc.reference(ref_graph, signature="decode")
    plan = step.report.plan
    assert len(plan.in_place_updates) == n_caches and not plan.copies_after
    if per_layer:  # attention reads the variables themselves: no cache is copied per token
        copies = [k.root for k in plan.program.kernels if k.root.op == "slice"]
        assert copies and all(c.size == 2 * 4 for c in copies)  # only the new token's k, v
    rng = np.random.default_rng(8)
    for pos in (0, 1, 2, 5, 7):
        q, kv = rng.standard_normal((1, 2, 1, 4)), rng.standard_normal((2, 2, 2, 1, 4))
        for got, want in zip(step(np.int64(pos), q, kv), reference(np.int64(pos), q, kv)):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    for name, value in g.variables.items():
        np.testing.assert_array_equal(value, ref_graph.variables[name])


# --- iota masks are computed, not stored ---------------------------------------------------

def test_a_causal_mask_fuses_into_its_user() -> None:
    n = 300  # above fold_max_elements: not folded into a constant
    with gc.Graph("mask") as g:
        x = gc.placeholder((n, n), "float32", name="x")
        y = gc.where(gc.iota((n, n), 0) >= gc.iota((n, n), 1), x, 0.0)
    fn = _compile(g, [x], y)
    (kernel,) = fn.report.plan.program.kernels
    assert sum(node.op == "iota" for node in kernel.nodes) == 2
    assert fn.report.plan.arena_bytes == 0
    a = np.random.default_rng(4).standard_normal((n, n)).astype(np.float32)
    np.testing.assert_array_equal(fn(a), np.tril(a))


@pytest.mark.parametrize("dtype", ["int32", "int64", "float32", "float64"])
def test_a_stored_iota_of_every_dtype(dtype: str) -> None:
    with gc.Graph("iota") as g:
        outs = [gc.iota((3, 50, 500), axis, dtype) for axis in range(3)]
    got = _compile(g, [], outs)()
    for axis, a in enumerate(got):
        assert a.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(a, np.indices((3, 50, 500))[axis])


def test_iota_round_trips_through_the_text_ir() -> None:
    with gc.Graph("ir") as g:
        gc.iota((2, 3), 1, "float32")
    text = format_graph(g)
    assert format_graph(parse_graph(text)) == text


# --- ONNX Trilu ----------------------------------------------------------------------------

@pytest.mark.parametrize("upper,k", [(1, 0), (0, 0), (1, 2), (0, -1)])
def test_onnx_trilu_of_a_runtime_input(upper: int, k: int) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from tests.onnx_helpers import model_bytes, value_info

    node = helper.make_node("Trilu", ["x", "k"], ["y"], upper=upper)
    k_init = numpy_helper.from_array(np.array(k, np.int64), "k")
    data = model_bytes([node], [value_info("x", [2, 5, 6], TensorProto.FLOAT)],
                       [value_info("y", [2, 5, 6], TensorProto.FLOAT)], [k_init], opset=14)
    assert onnx is not None
    g = gc.onnx.load(data)
    assert any(n.op == "iota" for n in g.nodes)
    a = np.random.default_rng(5).standard_normal((2, 5, 6)).astype(np.float32)
    want = np.triu(a, k) if upper else np.tril(a, k)
    np.testing.assert_array_equal(gc.reference(g, signature="main")(a)[0], want)
    np.testing.assert_array_equal(gc.compile(g, signature="main")(a)[0], want)


# --- rope against PyTorch ------------------------------------------------------------------

def test_rope_matches_pytorch_formulas() -> None:
    """HF Llama's rotate_half and Meta's complex-pair form, written in torch."""
    torch = pytest.importorskip("torch")
    b, h, t, d, base = 2, 3, 7, 8, 10000.0
    x = np.random.default_rng(6).standard_normal((b, h, t, d))
    pos = np.array(11)
    xt = torch.tensor(x)
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    freqs = torch.outer(torch.arange(t, dtype=torch.float64) + 11, inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    half = torch.cat([-xt[..., d // 2:], xt[..., :d // 2]], dim=-1)
    want_half = (xt * emb.cos() + half * emb.sin()).numpy()
    pairs = torch.view_as_complex(xt.reshape(b, h, t, d // 2, 2).contiguous())
    want_pairs = torch.view_as_real(pairs * torch.polar(torch.ones_like(freqs), freqs))
    with gc.Graph("rope") as g:
        xn = gc.placeholder((b, h, t, d), "float64", name="x")
        p = gc.placeholder((), "int64", name="p")
        positions = gc.iota((t,)) + p
        outs = [gc.rope(xn, positions), gc.rope(xn, positions, interleaved=True)]
    for fn in (gc.reference(g, [xn, p], outs), _compile(g, [xn, p], outs)):
        got_half, got_pairs = fn(x, pos)
        np.testing.assert_allclose(got_half, want_half, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got_pairs, want_pairs.reshape(b, h, t, d).numpy(),
                                   rtol=1e-12, atol=1e-12)
