"""Low-precision dtypes and kernels: bf16 rounding, ops that refuse them, the bf16 GEMM
(vdpbf16ps) and the integer GEMM (vpdpbusd), natively and on their fallback paths."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.codegen.target import host_target
from graphc.options import CompileOptions

NO_LOWP = ("avx512bf16", "avx512vnni")
# No AVX-512 and no AVX2: the widened pairs' product in plain IR on 128-bit vectors.
NO_AVX2 = (*NO_LOWP, "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd", "avx512vbmi",
           "avx512vbmi2", "avx512bitalg", "avx512vpopcntdq", "avx512ifma", "avxvnni", "avx2")
TARGETS = [pytest.param((), id="native"), pytest.param(NO_LOWP, id="fallback")]


def _needs(feature: str) -> None:
    if not host_target().has(feature):
        pytest.skip(f"needs a host with {feature}")


def _special_floats() -> np.ndarray:
    """Ties, subnormals, NaNs (quiet and signalling), infinities, overflow, random bits."""
    bits = np.array([0x3F808000, 0x3F818000, 0x3F808001, 0x00000001, 0x807FFFFF,
                     0x00800000, 0x7F800001, 0xFFC00001, 0x7F800000, 0xFF800000,
                     0x7F7FFFFF, 0x7F7F7FFF, 0x80000000, 0], np.uint32)
    rand = np.random.default_rng(0).integers(0, 2**32, 4096, dtype=np.uint64)
    return np.concatenate([bits, rand.astype(np.uint32)]).view(np.float32)


@pytest.mark.parametrize("disabled", TARGETS)
def test_compiled_bf16_rounding_equals_the_reference_bit_for_bit(disabled) -> None:
    """vcvtneps2bf16 (native) and the integer sequence (fallback) round exactly as
    gc.to_bfloat16: nearest-even, NaN quieted, subnormals to zero."""
    _needs("avx512bf16")
    x = _special_floats()
    with gc.Graph("round") as g:
        p = gc.placeholder(x.shape, gc.float32, name="x")
        y = gc.cast(p, gc.bfloat16)
    got = gc.compile(g, inputs=[p], outputs=y,
                     options=CompileOptions(disable_features=disabled))(x)
    want = gc.to_bfloat16(x)
    assert np.array_equal(got, want)
    assert want[0] == 0x3F80 and want[1] == 0x3F82  # ties to even, both ways
    assert want[3] == 0 and want[4] == 0x8000  # subnormals flush to signed zero
    assert want[6] == 0x7FC0 and want[10] == 0x7F80  # sNaN quieted; overflow to inf
    assert np.array_equal(gc.to_bfloat16(gc.from_bfloat16(want)), want)


def test_bf16_elementwise_and_reduction_match_the_reference() -> None:
    rng = np.random.default_rng(1)
    xv = rng.standard_normal((9, 70)).astype(np.float32)
    with gc.Graph("ew") as g:
        x = gc.placeholder(xv.shape, gc.float32, name="x")
        xb = gc.cast(x, gc.bfloat16)
        y = gc.tanh(xb * xb - 0.5)
        s = gc.max(gc.transpose(y), axis=0)
    outs = [y, s]
    got = gc.compile(g, inputs=[x], outputs=outs)(xv)
    ref = gc.reference(g, inputs=[x], outputs=outs)(xv)
    assert got[0].dtype == np.uint16 and y.dtype == gc.bfloat16
    # tanh is a polynomial in both; the rounding to bf16 is the same, so at most 1 ulp.
    assert np.abs(got[0].astype(int) - ref[0].astype(int)).max() <= 1
    assert np.abs(got[1].astype(int) - ref[1].astype(int)).max() <= 1
    with gc.Graph("sum"), pytest.raises(gc.DTypeError, match="sum does not support bfloat16"):
        gc.sum(gc.placeholder((4,), gc.bfloat16))


@pytest.mark.parametrize("build", [
    lambda x: gc.softmax(x),
    lambda x: gc.conv2d(gc.reshape(x, (1, 1, 4, 4)), gc.reshape(x, (1, 1, 4, 4))),
    lambda x: gc.take(x, gc.constant(np.array([0, 1], np.int32))),
])
def test_ops_without_bf16_support_refuse_it_by_name(build) -> None:
    with gc.Graph("refuse"), pytest.raises(gc.DTypeError, match=r"does not support bfloat16.*"
                                                                r"gc\.cast"):
        build(gc.placeholder((4, 4), gc.bfloat16))


def test_integer_ops_refuse_quantized_dtypes() -> None:
    with gc.Graph("refuse"):
        a = gc.placeholder((4,), gc.int8)
        with pytest.raises(gc.DTypeError, match="add does not support int8"):
            _ = a + a
        assert gc.reshape(a, (2, 2)).dtype == gc.int8  # layout ops move any dtype


def test_bf16_inputs_are_checked_and_constants_round() -> None:
    with gc.Graph("args") as g:
        x = gc.placeholder((3,), gc.bfloat16, name="x")
        c = gc.constant([1.0, 1.00390625, 3.0], dtype=gc.bfloat16)
        y = gc.cast(x + c, gc.float32)
    exe = gc.compile(g, inputs=[x], outputs=y)
    with pytest.raises(gc.ArgumentError, match="to_bfloat16"):
        exe(np.ones(3, np.float32))
    np.testing.assert_array_equal(exe(gc.to_bfloat16([1.0, 2.0, 3.0])), [2.0, 3.0, 6.0])


def _bf16_graph(m: int, k: int, n: int, ta: bool, tb: bool):
    with gc.Graph("bf16mm") as g:
        a = gc.placeholder((k, m) if ta else (m, k), gc.bfloat16, name="a")
        b = gc.placeholder((n, k) if tb else (k, n), gc.bfloat16, name="b")
        bias = gc.placeholder((n,), gc.float32, name="bias")
        y = gc.matmul(a, b, transpose_a=ta, transpose_b=tb)
        z = gc.cast(gc.relu(y + bias), gc.bfloat16)
    return g, [a, b, bias], [y, z]


@pytest.mark.parametrize("disabled", TARGETS)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("m,k,n,ta,tb", [(5, 7, 3, False, False), (37, 65, 70, True, False),
                                         (64, 301, 96, False, True), (100, 33, 130, True, True)])
def test_bf16_gemm(m, k, n, ta, tb, threads, disabled) -> None:
    """f32 accumulation: within K·2^-24 relative (to Σ|a||b|) of the exact f64 product of
    the bf16 operands; the fused epilogue (bias, relu, rounding to bf16) equals the
    reference's rounding of the same f32 values."""
    _needs("avx512bf16")
    g, ins, outs = _bf16_graph(m, k, n, ta, tb)
    rng = np.random.default_rng(m + k + n)
    av = gc.to_bfloat16(rng.standard_normal(ins[0].shape))
    bv = gc.to_bfloat16(rng.standard_normal(ins[1].shape))
    biasv = rng.standard_normal(n).astype(np.float32)
    opts = CompileOptions(threads=threads, disable_features=disabled)
    y, z = gc.compile(g, inputs=ins, outputs=outs, options=opts)(av, bv, biasv)
    a64, b64 = gc.from_bfloat16(av).astype(np.float64), gc.from_bfloat16(bv).astype(np.float64)
    a64, b64 = (a64.T if ta else a64), (b64.T if tb else b64)
    bound = k * 2.0**-24 * (np.abs(a64) @ np.abs(b64)) + 1e-30
    assert y.dtype == np.float32 and np.all(np.abs(y - a64 @ b64) <= bound)
    assert np.array_equal(z, gc.to_bfloat16(np.maximum(y + biasv, 0)))


@pytest.mark.parametrize("disabled", TARGETS)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("m,k,n,tb,zp", [(5, 7, 3, False, True), (33, 1, 70, True, True),
                                         (64, 130, 96, False, False), (100, 301, 130, True, True)])
def test_integer_gemm_is_bit_exact(m, k, n, tb, zp, threads, disabled) -> None:
    """u8 x s8 -> s32 equals the integer numpy sum exactly (with the zero point), with
    `vpdpbusd` and with the widened pairs of `pmaddwd` (every x86 host); a dequantizing
    epilogue fuses into the kernel."""
    if not disabled:
        _needs("avx512vnni")
    rng = np.random.default_rng(m * n + k)
    with gc.Graph("q") as g:
        a = gc.placeholder((m, k), gc.uint8, name="a")
        b = gc.placeholder((n, k) if tb else (k, n), gc.int8, name="b")
        z = gc.placeholder((), gc.uint8, name="z")
        scale = gc.placeholder((n,), gc.float32, name="scale")
        acc = gc.matmul_integer(a, b, z if zp else None, transpose_b=tb)
        deq = gc.relu(gc.cast(acc, gc.float32) * scale)
    av = rng.integers(0, 256, (m, k), dtype=np.uint8)
    bv = rng.integers(-128, 128, b.shape, dtype=np.int8)
    zv, sv = np.uint8(rng.integers(0, 256)), rng.random(n).astype(np.float32)
    opts = CompileOptions(threads=threads, disable_features=disabled)
    exe = gc.compile(g, inputs=[a, b, z, scale], outputs=[acc, deq], options=opts)
    got_acc, got_deq = exe(av, bv, zv, sv)
    want = (av.astype(np.int64) - (int(zv) if zp else 0)) @ (bv.T if tb else bv)
    assert np.array_equal(got_acc, want.astype(np.int32))
    np.testing.assert_array_equal(got_deq, np.maximum(want.astype(np.float32) * sv, 0))


@pytest.mark.parametrize("disabled", [pytest.param((), id="vnni"),
                                      pytest.param(NO_LOWP, id="pairs"),
                                      pytest.param(NO_AVX2, id="plain-ir")])
@pytest.mark.parametrize("tb", [False, True])
def test_integer_gemm_extremes_do_not_saturate(disabled, tb) -> None:
    """Products of 255 and -128 or 127 in every lane, whose pair sums overflow int16 (the
    class `pmaddubsw` saturates), sum exactly: with `vpdpbusd`, with `pmaddwd` on widened
    pairs, and with the plain-IR pair product of a target without AVX2."""
    if not disabled:
        _needs("avx512vnni")
    m, k, n = 13, 1001, 37
    rng = np.random.default_rng(k)
    av = np.where(rng.random((m, k)) < 0.9, 255, rng.integers(0, 256, (m, k))).astype(np.uint8)
    bv = rng.choice(np.array([-128, 127, -127, 1], np.int8), (n, k) if tb else (k, n))
    with gc.Graph("sat") as g:
        a = gc.placeholder((m, k), gc.uint8, name="a")
        b = gc.placeholder(bv.shape, gc.int8, name="b")
        z = gc.placeholder((), gc.uint8, name="z")
        acc = gc.matmul_integer(a, b, z, transpose_b=tb)
    opts = CompileOptions(disable_features=disabled)
    (got,) = gc.compile(g, inputs=[a, b, z], outputs=[acc], options=opts)(av, bv, np.uint8(3))
    want = (av.astype(np.int64) - 3) @ (bv.T if tb else bv).astype(np.int64)
    assert np.array_equal(got, want.astype(np.int32))


def test_integer_gemm_packs_widened_pairs_without_vnni() -> None:
    """The plan packs k-quads for `vpdpbusd` only with 512-bit VNNI; else A's bytes widened
    to int16 pairs (B's stay byte pairs, `test_integer_prepack`), with `pmaddwd` where the
    target has it for its width."""
    from graphc.codegen.gemm.lowp import LowpSpec, plan_lowp
    from graphc.codegen.gemm.lowp_kernels import U8S8_PAIRS, U8S8_QUADS
    from graphc.codegen.target import Target

    host = host_target()
    spec = LowpSpec(64, 96, 130, U8S8_QUADS, False, False, 130, 96, 96, gc.int32)
    vnni = Target(host.triple, "znver4", "+avx2,+avx512f,+avx512bw,+avx512vnni", 512)
    avx2 = Target(host.triple, "znver3", "+avx2,-avx512f,-avx512vnni", 256)
    plain = Target(host.triple, "x86-64", "-avx2,-avx512f", 256)
    kinds = [(p.kind, p.native, p.kg) for p in map(lambda t: plan_lowp(spec, t),
                                                     (vnni, avx2, plain))]
    assert kinds == [(U8S8_QUADS, True, 33), (U8S8_PAIRS, True, 65), (U8S8_PAIRS, False, 65)]


def test_dequantize_epilogue_fuses_into_the_integer_gemm() -> None:
    from graphc.pipeline import lower
    with gc.Graph("fuse") as g:
        a = gc.placeholder((8, 16), gc.uint8, name="a")
        b = gc.constant(np.ones((16, 4), np.int8))
        y = gc.cast(gc.relu(gc.cast(gc.matmul_integer(a, b), gc.float32) * 0.5), gc.bfloat16)
    sig = gc.Signature("s", (a,), (y,), ())
    fused = lower(g, sig, CompileOptions(), "fused").fused
    assert fused is not None and len(fused.kernels) == 1


def test_cast_gradient_passes_through_bf16() -> None:
    with gc.Graph("grad") as g:
        x = gc.placeholder((5,), gc.float32, name="x")
        xb = gc.cast(x, gc.bfloat16)
        loss = gc.sum(gc.cast(xb * xb, gc.float32))
        (dx,) = gc.grad(loss, [x])
    xv = np.array([1.0, 2.0, -3.0, 0.5, 1.00390625], np.float32)  # the last rounds to 1.0
    np.testing.assert_array_equal(gc.reference(g, inputs=[x], outputs=dx)(xv),
                                  [2.0, 4.0, -6.0, 1.0, 2.0])


def test_low_precision_values_survive_save_and_load(tmp_path) -> None:
    with gc.Graph("io") as g:
        w = gc.variable(np.arange(-3, 3, dtype=np.int8), name="w")
        c = gc.constant([0.1, 2.5, -7.0], dtype=gc.bfloat16, name="c")
        y = gc.cast(gc.cast(w, gc.int32), gc.float32)
        g.add_signature("main", inputs=[], outputs=[y, gc.cast(c, gc.float32)])
    gc.save(g, tmp_path / "m.gcg")
    g2 = gc.load(tmp_path / "m.gcg")
    assert g2.variables["w"].dtype == np.int8
    assert np.array_equal(g2.constants["c"], gc.to_bfloat16([0.1, 2.5, -7.0]))
    assert "bf16[3]" in gc.format_graph(g2)


def test_exported_library_declares_low_precision_ports(tmp_path) -> None:
    with gc.Graph("lowpexp") as g:
        a = gc.placeholder((4, 8), gc.uint8, name="a")
        b = gc.variable(np.ones((8, 3), np.int8), name="b", trainable=False)
        x = gc.placeholder((4, 3), gc.bfloat16, name="x")
        y = gc.cast(gc.cast(gc.matmul_integer(a, b), gc.float32) + gc.cast(x, gc.float32),
                    gc.bfloat16)
    gc.export(g, tmp_path / "liblowp.so", inputs=[a, x], outputs=[y])
    header = (tmp_path / "lowp.h").read_text()
    assert "const uint8_t *in_a" in header and "const uint16_t *in_x" in header
    lib = gc.runtime.load(tmp_path / "liblowp.so")
    av = np.arange(32, dtype=np.uint8).reshape(4, 8)
    (got,) = lib(av, gc.to_bfloat16(np.zeros((4, 3))))
    np.testing.assert_array_equal(gc.from_bfloat16(got), np.repeat(av.sum(1, keepdims=True)
                                                                  .astype(np.float32), 3, 1))
