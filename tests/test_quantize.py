"""gc.quantize_dynamic / gc.quantize_static and the int8 GEMV (issue 17, int8 half).

The integer part is checked bit for bit against numpy: the uint8 activations computed in
float32 exactly as the graph does, then (q - z) @ wq in int64."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import graphc as gc
from graphc import pipeline
from graphc.passes import fuse as fuse_module
from graphc.passes.kernels import KernelKind
from graphc.quant import quantize
from graphc.quant.calibrate import calibrate
from graphc.quant.rewrite import activation_params, weight_scales

NO_VNNI = ("avx512vnni",)
# A 256-bit target (8 lanes, the 2-chunk blocks of the GEMV), without VNNI.
AVX2_ONLY = ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd", "avx512vnni",
             "avx512bf16", "avx512vbmi", "avx512vbmi2", "avx512bitalg", "avx512vpopcntdq",
             "avx512ifma", "avxvnni")
# No AVX2 either: the widened pairs' product in plain IR (`lowp_kernels.pair_products`).
NO_AVX2 = (*AVX2_ONLY, "avx2")


def _mlp(batch: int, sizes: tuple[int, ...] = (40, 33, 17, 5), seed: int = 0,
         variables: bool = False) -> tuple[gc.Graph, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    ws = [(rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
          for a, b in itertools.pairwise(sizes)]
    bs = [(rng.standard_normal(b) * 0.1).astype(np.float32) for b in sizes[1:]]
    with gc.Graph("mlp") as g:
        x = gc.placeholder((batch, sizes[0]), name="x")
        h = x
        for i, (w, b) in enumerate(zip(ws, bs)):
            wn = gc.variable(w, name=f"w{i}") if variables else gc.constant(w)
            h = gc.linear(h, wn, gc.constant(b))
            if i < len(ws) - 1:
                h = gc.relu(h)
    g.add_signature("main", [x], [h])
    return g, ws


def _np_quantize(x: np.ndarray) -> tuple[np.ndarray, np.float32, np.float32]:
    """The dynamic quantization in float32 numpy, op for op as the graph computes it."""
    f = np.float32
    lo, hi = min(x.min(), f(0)), max(x.max(), f(0))
    scale, zp = activation_params(float(lo), float(hi))
    q = np.clip(np.round(x / scale) + zp, 0, 255).astype(np.uint8)
    return q, scale, zp


def _exact_nodes(qg: gc.Graph) -> list[gc.Node]:
    return [n for n in qg.nodes if n.name.endswith(".exact")]


@pytest.mark.parametrize("batch", [1, 3, 37])
@pytest.mark.parametrize("features", [(), NO_VNNI])
def test_dynamic_integer_part_is_exact(batch: int, features: tuple[str, ...]) -> None:
    g, ws = _mlp(batch)
    qg = gc.quantize_dynamic(g)
    exact = _exact_nodes(qg)
    firsts = [n.inputs[0] for n in exact]  # the matmul_integer nodes
    assert len(exact) == 3 and all(a.op == "matmul_integer" for a in firsts)
    xs = np.random.default_rng(1).standard_normal((batch, 40)).astype(np.float32)
    f = gc.compile(qg, [qg["x"]], [*firsts[:1], *exact[:1]],
                   options=gc.CompileOptions(threads=1, disable_features=features))
    acc, got = f(xs)
    q, _, zp = _np_quantize(xs)
    wq, _ = weight_scales(ws[0])
    want = (q.astype(np.int64) - int(zp)) @ wq.astype(np.int64)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(acc, q.astype(np.int64) @ wq.astype(np.int64))


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("threads", [1, 2])
def test_dynamic_compiled_matches_reference_and_fp32(batch: int, threads: int) -> None:
    g, _ = _mlp(batch, (96, 80, 48, 10))
    qg = gc.quantize_dynamic(g)
    xs = np.random.default_rng(2).standard_normal((batch, 96)).astype(np.float32)
    ref = gc.reference(qg, signature="main")(xs)[0]
    got = gc.compile(qg, signature="main", options=gc.CompileOptions(threads=threads))(xs)[0]
    # The integer sums are exact; the float epilogue may contract multiply-adds.
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    fp32 = gc.reference(g, signature="main")(xs)[0]
    err = np.max(np.abs(got - fp32)) / np.max(np.abs(fp32))
    assert err < 0.05


def test_every_int8_layer_fuses_its_dequantization_into_the_gemm() -> None:
    g, _ = _mlp(16)
    qg = gc.quantize_dynamic(g)
    sig = qg.signatures["main"]
    low = pipeline.lower(qg, sig, gc.CompileOptions(threads=1), "optimized")
    assert low.optimized is not None and low.optimized_signature is not None
    program = fuse_module.fuse(low.optimized, low.optimized_signature)
    gemms = [k for k in program.kernels if k.kind == KernelKind.MATMUL]
    assert len(gemms) == 3
    for k in gemms:
        assert k.anchor is not None and k.anchor.op == "matmul_integer"
        ops = {n.op for n in k.nodes}
        # zero-point correction, dequantization and the bias add in the epilogue
        assert {"sub", "cast", "mul", "add"} <= ops, ops
        assert k.root.dtype == gc.float32


def test_batch1_weights_are_stored_by_output_channel() -> None:
    g, _ = _mlp(1)
    qg = gc.quantize_dynamic(g)
    accs = [n for n in qg.nodes if n.op == "matmul_integer"]
    assert all(a.attrs["transpose_b"] for a in accs)
    g8, _ = _mlp(8)
    accs = [n for n in gc.quantize_dynamic(g8).nodes if n.op == "matmul_integer"]
    assert not any(a.attrs["transpose_b"] for a in accs)


def test_layers_that_stay_float_are_explained() -> None:
    rng = np.random.default_rng(3)
    with gc.Graph("mixed") as g:
        x = gc.placeholder((4, 8), name="x")
        w = gc.placeholder((8, 8), name="w")
        v = gc.variable(rng.standard_normal((8, 8)).astype(np.float32), name="v")
        a = gc.matmul(x, w, name="by_input")
        b = gc.matmul(a, v, name="by_variable")
        c = gc.matmul(b, x, transpose_a=True, name="transposed")
    g.add_signature("main", [x, w], [c])
    result = quantize(g, "dynamic")
    why = {layer.name: (layer.precision, layer.reason) for layer in result.layers}
    assert why["by_input"] == ("float32", "weight depends on the input %w")
    assert why["by_variable"][0] == "int8"
    assert why["transposed"] == ("float32", "transpose_a")
    frozen = quantize(g, "dynamic", freeze_variables=False)
    assert {la.name: la.precision for la in frozen.layers}["by_variable"] == "float32"
    assert "freeze_variables" in {la.name: la.reason for la in frozen.layers}["by_variable"]


def test_frozen_variable_weights_are_a_snapshot() -> None:
    g, ws = _mlp(2, variables=True)
    qg = gc.quantize_dynamic(g)
    assert len(_exact_nodes(qg)) == 3
    assert not any(n.op == "matmul" for n in qg.nodes)
    xs = np.random.default_rng(6).standard_normal((2, 40)).astype(np.float32)
    f = gc.compile(qg, signature="main", options=gc.CompileOptions(threads=1))
    before = f(xs)[0]
    g.variables["w0"] = np.zeros_like(ws[0])  # the int8 weights were taken before this
    np.testing.assert_array_equal(f(xs)[0], before)


def test_static_quantization_fixes_scales_and_fuses_the_quantize() -> None:
    g, ws = _mlp(32, (64, 48, 32, 10))
    rng = np.random.default_rng(4)
    batches = [rng.standard_normal((32, 64)).astype(np.float32) for _ in range(3)]
    qg = gc.quantize_static(g, batches)
    assert not any(n.op in ("min", "max") for n in qg.nodes)  # nothing measured at run time
    xs = batches[0]
    f = gc.compile(qg, signature="main", options=gc.CompileOptions(threads=1))
    got = f(xs)[0]
    np.testing.assert_allclose(got, gc.reference(qg, signature="main")(xs)[0],
                               rtol=1e-5, atol=1e-5)
    fp32 = gc.reference(g, signature="main")(xs)[0]
    assert np.max(np.abs(got - fp32)) / np.max(np.abs(fp32)) < 0.05
    # The first layer's input range is all calibration inputs' min and max.
    lo = min(float(b.min()) for b in batches)
    hi = max(float(b.max()) for b in batches)
    scale, zp = activation_params(lo, hi)
    q = np.clip(np.round(xs / scale) + zp, 0, 255).astype(np.uint8)
    acc = next(n for n in qg.nodes if n.op == "matmul_integer")
    fa = gc.compile(qg, [qg["x"]], [acc.inputs[0], acc],
                    options=gc.CompileOptions(threads=1))
    qs, accs = fa(xs)
    np.testing.assert_array_equal(qs, q)
    np.testing.assert_array_equal(accs, q.astype(np.int64) @ weight_scales(ws[0])[0])
    # Layer 2's input quantization fuses into layer 1's GEMM, which then stores uint8.
    low = pipeline.lower(qg, qg.signatures["main"], gc.CompileOptions(threads=1), "optimized")
    assert low.optimized is not None and low.optimized_signature is not None
    program = fuse_module.fuse(low.optimized, low.optimized_signature)
    gemms = [k for k in program.kernels if k.kind == KernelKind.MATMUL]
    assert [k.root.dtype for k in gemms] == [gc.uint8, gc.uint8, gc.float32]


def test_percentile_calibration_clips_outliers() -> None:
    g, _ = _mlp(64, (16, 8))
    rng = np.random.default_rng(5)
    xs = rng.standard_normal((64, 16)).astype(np.float32)
    xs[0, 0] = 1000.0
    minmax = calibrate(g, [xs])
    pct = calibrate(g, [xs], "percentile", percentile=99.0)
    (name,) = minmax
    assert minmax[name].hi == 1000.0
    assert pct[name].hi == pytest.approx(float(np.percentile(xs, 99.0)))
    assert pct[name].lo == pytest.approx(float(np.percentile(xs, 1.0)))
    # Spending the 256 levels on the bulk instead of the outlier: the rows without it are
    # far more accurate than with the min/max range.
    fp32 = gc.reference(g, signature="main")(xs)[0][1:]
    errors = []
    for method in ("minmax", "percentile"):
        qg = quantize(g, "static", [xs], method, percentile=99.9).graph
        got = gc.compile(qg, signature="main", options=gc.CompileOptions(threads=1))(xs)[0]
        errors.append(float(np.sqrt(np.mean((got[1:] - fp32) ** 2))))
    assert errors[1] < 0.2 * errors[0], errors


def test_calibration_errors() -> None:
    g, _ = _mlp(4, (8, 4))
    xs = np.random.default_rng(10).standard_normal((4, 8)).astype(np.float32)
    by_reference = quantize(g, "static", [xs], compiled=False).graph
    by_compiled = quantize(g, "static", [xs]).graph
    assert gc.format_graph(by_reference) == gc.format_graph(by_compiled)
    with pytest.raises(gc.GraphcError, match="input 'x' expected shape"):
        gc.quantize_static(g, [xs[:2]])
    with pytest.raises(gc.GraphcError, match="method"):
        gc.quantize_static(g, [np.zeros((4, 8), np.float32)], method="entropy")
    with pytest.raises(gc.GraphcError, match="no calibration batches"):
        gc.quantize_static(g, [])
    with pytest.raises(gc.GraphcError, match="2 arrays"):
        gc.quantize_static(g, [(np.zeros((4, 8), np.float32),) * 2])


@pytest.mark.parametrize("m,k,n,tb", [(1, 784, 512, True), (1, 784, 512, False),
                                      (1, 5, 3, True), (1, 67, 33, True), (2, 130, 17, True),
                                      (4, 64, 48, False), (3, 1, 70, False)])
@pytest.mark.parametrize("features", [(), NO_VNNI, AVX2_ONLY, NO_AVX2])
def test_gemv_exact(m: int, k: int, n: int, tb: bool, features: tuple[str, ...]) -> None:
    rng = np.random.default_rng(m * 1000 + k + n)
    a = rng.integers(0, 256, (m, k), dtype=np.uint8)
    w = rng.integers(-128, 128, (n, k) if tb else (k, n), dtype=np.int8)
    bias = rng.standard_normal(n).astype(np.float32)
    with gc.Graph("gemv") as g:
        pa = gc.placeholder((m, k), gc.uint8)
        acc = gc.matmul_integer(pa, gc.constant(w), transpose_b=tb)
        y = gc.relu(gc.cast(acc, gc.float32) * 0.25 + bias)
    f = gc.compile(g, [pa], [acc, y],
                   options=gc.CompileOptions(threads=1, disable_features=features))
    got, gy = f(a)
    want = a.astype(np.int64) @ (w.T if tb else w).astype(np.int64)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(gy, np.maximum(want.astype(np.float32) * 0.25 + bias, 0))


@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("features", [(), NO_VNNI, AVX2_ONLY, NO_AVX2])
def test_gemv_extremes_do_not_saturate(tb: bool, features: tuple[str, ...]) -> None:
    """Bytes of 255 against -128 and 127, whose pair sums leave int16 (what `pmaddubsw`
    saturates), sum exactly in every GEMV variant; odd K pairs the last row with zero."""
    rng = np.random.default_rng(11)
    m, k, n = 2, 301, 75
    a = np.where(rng.random((m, k)) < 0.9, 255, 0).astype(np.uint8)
    w = rng.choice(np.array([-128, 127, -1], np.int8), (n, k) if tb else (k, n))
    with gc.Graph("gemv_sat") as g:
        pa = gc.placeholder((m, k), gc.uint8)
        acc = gc.matmul_integer(pa, gc.constant(w), transpose_b=tb)
    (got,) = gc.compile(g, [pa], [acc],
                        options=gc.CompileOptions(threads=1, disable_features=features))(a)
    np.testing.assert_array_equal(got, a.astype(np.int64) @ (w.T if tb else w).astype(np.int64))


def test_gemv_transposed_vector_operand() -> None:
    rng = np.random.default_rng(7)
    a = rng.integers(0, 256, (50, 1), dtype=np.uint8)
    w = rng.integers(-128, 128, (50, 20), dtype=np.int8)
    with gc.Graph("gemv_ta") as g:
        pa = gc.placeholder((50, 1), gc.uint8)
        acc = gc.matmul_integer(pa, gc.constant(w), transpose_a=True)
    got = gc.compile(g, [pa], acc, options=gc.CompileOptions(threads=1))(a)
    np.testing.assert_array_equal(got, a.T.astype(np.int64) @ w)


@pytest.mark.parametrize("dtype", [gc.uint8, gc.int8])
def test_float_to_byte_cast_saturates_in_vectors(dtype: gc.DType) -> None:
    values = np.array([np.nan, np.inf, -np.inf, 300.7, -5.5, 254.9, 127.9, -128.9, -0.5,
                       0.5, 1e9, -1e9, 3.0, -3.0, 255.0, 128.0], np.float32)
    xs = np.tile(values, 8)
    with gc.Graph("cast") as g:
        x = gc.placeholder(xs.shape)
        y = gc.cast(x * 1.0, dtype)
    got = gc.compile(g, [x], y, options=gc.CompileOptions(threads=1))(xs)
    np.testing.assert_array_equal(got, gc.reference(g, [x], y)(xs))


def _np_conv_int(q: np.ndarray, zp: int, wq: np.ndarray, stride: tuple[int, int],
                 pads: tuple[int, int], dilation: int) -> np.ndarray:
    """sum over (c, i, j) of (q_pad - zp) * wq in int64, q_pad padded with zp (float 0)."""
    n, _, h, w = q.shape
    o, _, kh, kw = wq.shape
    qp = np.pad(q.astype(np.int64) - zp, ((0, 0), (0, 0), (pads[0],) * 2, (pads[1],) * 2))
    ho = (h + 2 * pads[0] - dilation * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * pads[1] - dilation * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((n, o, ho, wo), np.int64)
    for i in range(kh):
        for j in range(kw):
            tap = qp[:, :, i * dilation:i * dilation + (ho - 1) * stride[0] + 1:stride[0],
                     j * dilation:j * dilation + (wo - 1) * stride[1] + 1:stride[1]]
            out += np.einsum("nchw,oc->nohw", tap, wq[:, :, i, j].astype(np.int64))
    return out


@pytest.mark.parametrize("shape,k,stride,pads,dilation", [
    ((2, 3, 8, 8), 3, (1, 1), (1, 1), 1), ((1, 4, 9, 7), 3, (2, 1), (1, 2), 1),
    ((3, 2, 7, 6), 2, (1, 2), (0, 0), 2), ((1, 8, 5, 5), 1, (1, 1), (0, 0), 1)])
def test_conv_integer_part_is_exact(shape: tuple[int, ...], k: int, stride: tuple[int, int],
                                    pads: tuple[int, int], dilation: int) -> None:
    rng = np.random.default_rng(8)
    xs = rng.standard_normal(shape).astype(np.float32)
    w = (rng.standard_normal((6, shape[1], k, k)) * 0.3).astype(np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    with gc.Graph("conv") as g:
        x = gc.placeholder(shape, name="x")
        y = gc.conv2d(x, gc.constant(w), stride=stride, padding=pads, dilation=dilation,
                      name="conv")
        y = gc.relu(y + gc.reshape(gc.constant(bias), (6, 1, 1)))
    g.add_signature("main", [x], [y])
    qg = gc.quantize_dynamic(g)
    assert not any(n.op == "conv2d" for n in qg.nodes)
    (exact,) = _exact_nodes(qg)
    f = gc.compile(qg, [qg["x"]], [exact, qg[y.name]], options=gc.CompileOptions(threads=1))
    got, out = f(xs)
    q, _, zp = _np_quantize(xs)
    wq, _ = weight_scales(w.transpose(2, 3, 1, 0).reshape(-1, 6))  # the (tap, c) x O matrix
    wq4 = wq.reshape(k, k, shape[1], 6).transpose(3, 2, 0, 1)
    want = _np_conv_int(q, int(zp), wq4, stride, pads, dilation)
    np.testing.assert_array_equal(got.transpose(0, 3, 1, 2), want)
    fp32 = gc.reference(g, signature="main")(xs)[0]
    assert np.max(np.abs(out - fp32)) < 0.05 * np.max(np.abs(fp32))


def test_grouped_conv_stays_float() -> None:
    with gc.Graph("gconv") as g:
        x = gc.placeholder((1, 4, 6, 6), name="x")
        gc.conv2d(x, gc.constant(np.ones((4, 2, 3, 3), np.float32)), groups=2, name="conv")
    (layer,) = quantize(g, "dynamic").layers
    assert (layer.precision, layer.reason) == ("float32", "grouped convolution")


def test_rank3_activations_merge_rows() -> None:
    rng = np.random.default_rng(11)
    w = rng.standard_normal((16, 24)).astype(np.float32)
    with gc.Graph("seq") as g:
        x = gc.placeholder((5, 3, 16), name="x")
        y = gc.matmul(x, gc.constant(w), name="proj")
    g.add_signature("main", [x], [y])
    qg = gc.quantize_dynamic(g)
    xs = rng.standard_normal((5, 3, 16)).astype(np.float32)
    got = gc.compile(qg, signature="main", options=gc.CompileOptions(threads=1))(xs)[0]
    np.testing.assert_allclose(got, gc.reference(qg, signature="main")(xs)[0], rtol=1e-5,
                               atol=1e-5)
    assert np.max(np.abs(got - xs @ w)) < 0.05 * np.max(np.abs(xs @ w))


def test_gemv_split_across_threads_is_exact() -> None:
    rng = np.random.default_rng(9)
    a = rng.integers(0, 256, (1, 784), dtype=np.uint8)
    w = rng.integers(-128, 128, (512, 784), dtype=np.int8)
    with gc.Graph("gemv2") as g:
        pa = gc.placeholder((1, 784), gc.uint8)
        acc = gc.matmul_integer(pa, gc.constant(w), transpose_b=True)
    got = gc.compile(g, [pa], acc, options=gc.CompileOptions(threads=2))(a)
    np.testing.assert_array_equal(got, a.astype(np.int64) @ w.T.astype(np.int64))


# --- int8 generation ------------------------------------------------------------------------

def test_int8_generator_tracks_float32_and_compiles_once() -> None:
    """Generator(precision="int8") decodes through gc.quantize_dynamic: teacher-forced with
    float32's greedy sequence, its logits stay close and its top-1 token agrees at most
    steps; its matmuls are matmul_integer; decoding never recompiles; it samples from the
    seed as float32 does (the quantized graphs share the caches' and the seed's arrays)."""
    gpt = gc.nn.GPT(97, 64, 2, 4, 128, max_len=96, seed=3)
    one = gc.CompileOptions(threads=1, cache_dir=None)
    gens = {p: gc.nn.Generator(gpt, max_len=96, temperature=0.0, precision=p,
                               return_logits=True, name=f"gen_{p}", options=one)
            for p in ("float32", "int8")}
    tokens = gens["float32"].generate(np.arange(5)[None, :], 80)[0]
    logits = {}
    for p, gen in gens.items():
        gen.prefill(tokens[None, :5])
        logits[p] = np.array([gen.step(tokens[i:i + 1], i)[1][0] for i in range(5, 84)])
        assert gen.compiles == 2
    a, b = logits["float32"], logits["int8"]
    assert not np.array_equal(a, b)
    assert np.abs(a - b).max() <= 0.1 * np.abs(a).max()
    assert np.mean(a.argmax(1) == b.argmax(1)) >= 0.9
    decode = gens["int8"]._graph_for(gens["int8"].decode_signature.name)
    assert "matmul_integer" in {n.op for n in decode.nodes}
    sampler = gc.nn.Generator(gpt, max_len=32, temperature=1.0, precision="int8", options=one)
    first, again = sampler.generate([1, 2], 20, seed=1), sampler.generate([1, 2], 20, seed=1)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, sampler.generate([1, 2], 20, seed=2))
