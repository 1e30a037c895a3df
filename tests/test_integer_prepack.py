"""codegen.gemm.prepack on `matmul_integer`: constant int8 weights stored at compile time in
the grouped panels the integer GEMM packs B into (`b_groups` = (panel, group)).

The compiled graph's matmul_integer then reads B in place (bytes: quads for `vpdpbusd`,
pairs sign-extended for `pmaddwd` without VNNI); results stay exact integer sums, with and
without a zero point, B transposed or not, merged batches, at 1 and 2 threads, on both
kernels, and on the GEMV of few rows over the panels; what must stay unpacked stays (a
partial group or panel, variables); the reference reads the layout; another target's
layout is a CompileError.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

import graphc as gc
from graphc import pipeline
from graphc.builder import apply
from graphc.codegen.gemm import lowp_panel_gemv
from graphc.codegen.gemm.lowp import LowpSpec, b_groups, plan_lowp
from graphc.codegen.gemm.lowp_kernels import S8_PAIRS, U8S8_QUADS
from graphc.codegen.gemm.matmul import anchor_spec
from graphc.codegen.target import host_target
from graphc.errors import AttrError
from graphc.ops.linalg import MATMUL_INTEGER
from graphc.ops.panels import pack_groups, unpack_groups
from graphc.options import CompileOptions
from tests.int8_helpers import integer_matmul_graph as _graph

NO_VNNI = ("avx512bf16", "avx512vnni")
KERNELS = [pytest.param((), id="host"), pytest.param(NO_VNNI, id="pairs")]

# (a shape, k, n, transpose_b, zero point)
CASES = [
    ((256, 96), 96, 64, False, False),
    ((64, 128), 128, 96, True, True),  # B stored (n, k), a runtime zero point
    ((4, 33, 64), 64, 128, False, True),  # a merged batch: one (132, 64) GEMM, odd rows
    ((37, 200), 200, 64, True, False),
    # Few rows: the panel GEMV (`lowp_panel_gemv`), B big enough to split its columns.
    ((1, 512), 512, 512, False, False),
    ((3, 136), 136, 160, True, False),  # 10 panels of 16 or 5 of 32: a partial block
    ((2, 64), 64, 64, False, True),  # with a zero point: the GEMM on the panels
]


def _integer_matmuls(exe: gc.Executable) -> list[gc.Node]:
    return [n for n in exe.compiled_graph.nodes if n.op == "matmul_integer"]


@pytest.mark.parametrize("disabled", KERNELS)
@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_packed_int8_weights_give_exact_sums_at_any_thread_count(case, disabled) -> None:
    a_shape, k, n, tb, zp = case
    rng = np.random.default_rng(k * n)
    w = rng.integers(-128, 128, (n, k) if tb else (k, n), dtype=np.int8)
    g, inputs, acc = _graph(a_shape, w, tb, zp)
    av = rng.integers(0, 256, a_shape, dtype=np.uint8)
    zv = np.uint8(rng.integers(0, 256))
    args = (av, zv) if zp else (av,)
    want = ((av.astype(np.int64) - (int(zv) if zp else 0)) @ (w.T if tb else w).astype(np.int64))
    for threads in (1, 2):
        exe = gc.compile(g, inputs, [acc], options=CompileOptions(
            threads=threads, cache_dir=None, disable_features=disabled))
        (mm,) = _integer_matmuls(exe)
        panel, group = mm.attrs["b_groups"]
        assert not mm.attrs["transpose_b"] and (k % group, n % panel) == (0, 0)
        few_rows = int(np.prod(a_shape[:-1])) <= lowp_panel_gemv.MAX_ROWS and not zp
        assert lowp_panel_gemv.applies(anchor_spec(mm, gc.int32)) == few_rows
        assert np.array_equal(exe(*args)[0], want.astype(np.int32))
        # The compiled graph's reference reads the grouped panels as the kernel does.
        cg = exe.compiled_graph
        ref = gc.reference(cg, [cg[i.name] for i in inputs], [cg[acc.name]])(*args)[0]
        assert np.array_equal(ref, want.astype(np.int32))


@pytest.mark.parametrize("disabled", KERNELS)
def test_a_quantized_mlp_reads_its_weights_in_place(disabled) -> None:
    """`gc.quantize_dynamic` of an MLP: its layers' int8 weights are stored packed (the
    GEMM packs no B and needs no scratch for it) and its outputs equal the reference's on
    the quantized graph as built (B as it is)."""
    rng = np.random.default_rng(7)
    w1 = rng.standard_normal((128, 256)).astype(np.float32) / 10
    w2 = rng.standard_normal((256, 64)).astype(np.float32) / 10
    with gc.Graph("mlp") as g:
        x = gc.placeholder((64, 128), name="x")
        y = gc.relu(x @ gc.constant(w1)) @ gc.constant(w2)
    g.add_signature("main", [x], [y])
    q = gc.quantize_dynamic(g)
    opts = CompileOptions(threads=1, cache_dir=None, disable_features=disabled)
    exe = gc.compile(q, signature="main", options=opts)
    packed = _integer_matmuls(exe)
    assert len(packed) == 2 and all(mm.attrs["b_groups"] for mm in packed)
    for mm in packed:
        spec = anchor_spec(mm, gc.int32)
        assert isinstance(spec, LowpSpec) and spec.b_panels
        assert plan_lowp(spec, host_target()).a_offset == 0  # no scratch for B
    xv = rng.standard_normal((64, 128)).astype(np.float32)
    got = exe(xv)[0]
    ref = gc.reference(q, signature="main")(xv)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_what_must_stay_unpacked_stays() -> None:
    rng = np.random.default_rng(1)
    host = host_target()
    spec = LowpSpec(64, 64, 64, U8S8_QUADS, False, False, 64, 64, 64, gc.int32)
    panel, group = b_groups(spec, host)
    cases = {
        "partial group": ((64, group * 16 + 1), (group * 16 + 1, 4 * panel)),
        "partial panel": ((64, 64), (64, 4 * panel + 1)),
        "few rows, partial panel": ((1, 64), (64, 4 * panel + 1)),
    }
    for why, (a_shape, w_shape) in cases.items():
        g, inputs, acc = _graph(a_shape, rng.integers(-128, 128, w_shape, dtype=np.int8),
                                False, False)
        exe = gc.compile(g, inputs, [acc], options=CompileOptions(threads=1, cache_dir=None))
        (mm,) = _integer_matmuls(exe)
        assert mm.attrs["b_groups"] == (), why
    # A variable is never packed (training and VariableStore.bind replace it).
    with gc.Graph("var") as g:
        a = gc.placeholder((64, 64), gc.uint8, name="a")
        acc = gc.matmul_integer(a, gc.variable(np.ones((64, 4 * panel), np.int8), name="w"))
    exe = gc.compile(g, [a], [acc], options=CompileOptions(threads=1, cache_dir=None))
    assert _integer_matmuls(exe)[0].attrs["b_groups"] == ()


def test_pack_groups_round_trips_and_matches_the_kernels_byte_order() -> None:
    """Element B[q*g + t, p*P + j] at ((p*(k/g) + q)*P + j)*g + t: the packed layout of
    `lowp_kernels` (group t of a lane at byte t), for the pairs and the quads."""
    rng = np.random.default_rng(2)
    for panel, group in ((16, 2), (32, 4), (8, 1)):
        k, n = 6 * group, 3 * panel
        b = rng.integers(-128, 128, (k, n), dtype=np.int8)
        flat = pack_groups(b, panel, group)
        for q, t, p, j in ((0, 0, 0, 0), (5, group - 1, 2, panel - 1), (3, 0, 1, 5)):
            assert flat[((p * (k // group) + q) * panel + j) * group + t] == b[q * group + t,
                                                                              p * panel + j]
        np.testing.assert_array_equal(unpack_groups(flat, k, n, panel, group), b)
    with pytest.raises(ValueError, match="multiple of the group"):
        pack_groups(np.zeros((5, 32), np.int8), 16, 2)


def test_pairs_kernel_packs_b_as_bytes() -> None:
    """Without VNNI, A is packed as widened int16 pairs and B as byte pairs (`S8_PAIRS`),
    sign-extended as the micro-kernel loads them: half the bytes of widened pairs."""
    from graphc.codegen.target import Target

    host = host_target()
    avx2 = Target(host.triple, "znver3", "+avx2,-avx512f,-avx512vnni", 256)
    spec = LowpSpec(64, 96, 130, U8S8_QUADS, False, False, 130, 96, 96, gc.int32)
    plan = plan_lowp(spec, avx2)
    assert plan.b_kind is S8_PAIRS and plan.b_kind.word_bytes == 2
    assert plan.a_offset == 96 * 65 * 2  # B: 96 columns x 65 pairs of bytes (64-aligned)
    assert b_groups(spec, avx2) == (16, 2)


def test_bad_b_groups_are_attribute_errors() -> None:
    for attrs, shape in (({"b_groups": (16, 2), "transpose_b": True}, (32, 64)),
                         ({"b_groups": (16, 2)}, (63, 32)),
                         ({"b_groups": (16, 2)}, (64, 40)),
                         ({"b_groups": (16,)}, (64, 32))):
        with gc.Graph("bad"), pytest.raises(AttrError, match="b_groups"):
            a = gc.placeholder((8, shape[1] if attrs.get("transpose_b") else shape[0]),
                               gc.uint8)
            apply(MATMUL_INTEGER, [a, gc.constant(np.ones(shape, np.int8))],
                  {"transpose_a": False, "transpose_b": False, **attrs})


def test_groups_of_another_target_are_a_compile_error() -> None:
    """A graph compiled where the GEMM packs one layout, compiled again where it packs
    another: a CompileError naming the matmul_integer, not a wrong result."""
    spec = LowpSpec(64, 128, 64, U8S8_QUADS, False, False, 64, 128, 128, gc.int32)
    panel, group = b_groups(spec, host_target())
    other = (2 * panel, group)
    b = np.ones((64, 128), np.int8)
    with gc.Graph("moved") as g:
        a = gc.placeholder((64, 64), gc.uint8, name="a")
        y = apply(MATMUL_INTEGER, [a, gc.constant(pack_groups(b, *other).reshape(64, 128))],
                  {"transpose_a": False, "transpose_b": False, "b_groups": other})
    with pytest.raises(gc.CompileError, match=r"matmul_integer %.*b_groups") as info:
        gc.compile(g, [a], [y], options=CompileOptions(cache_dir=None))
    assert info.value.op == "matmul_integer"


def test_onnx_export_refuses_the_packed_layout(tmp_path) -> None:
    """A compiled graph's packed weights are not ONNX's MatMulInteger B: saving it is an
    OnnxError naming the node, not a model with scrambled weights."""
    pytest.importorskip("onnx")
    from graphc.onnx import OnnxError

    g, inputs, acc = _graph((64, 64), np.ones((64, 128), np.int8), False, False)
    exe = gc.compile(g, inputs, [acc], options=CompileOptions(threads=1, cache_dir=None))
    cg = exe.compiled_graph
    cg.add_signature("main", [cg[i.name] for i in inputs], [cg[acc.name]])
    with pytest.raises(OnnxError, match=r"matmul_integer node .*\(b_groups="):
        gc.onnx.save(cg, tmp_path / "packed.onnx")
    assert not (tmp_path / "packed.onnx").exists()


_VECTOR_LOAD = re.compile(r"load <(\d+) x i(?:8|32)>, ptr %\"[^\"]+\", align (\d+)")


@pytest.mark.parametrize("vnni", [False, True], ids=["pairs", "vnni-ir"])
@pytest.mark.parametrize("m", [64, 1])
def test_packed_weights_are_read_with_element_alignment(monkeypatch: pytest.MonkeyPatch,
                                                        vnni: bool, m: int) -> None:
    """A constant is a numpy buffer, aligned to its element only: the GEMM and the GEMV
    read it in place with unaligned vector loads (an aligned 512-bit load of it faults).
    Checked on the generated IR, also for a 512-bit VNNI target this host need not have
    (never run here): every vector load of this program's integer data is `align 1`."""
    if vnni:
        host = pipeline.host_target()
        extra = ",".join(f"+{f}" for f in ("avx512f", "avx512bw", "avx512dq", "avx512vl",
                                           "avx512vnni"))
        target = dataclasses.replace(host, vector_bits=512, features=f"{host.features},{extra}")
        monkeypatch.setattr(pipeline, "host_target", lambda: target)
    rng = np.random.default_rng(3)
    g, inputs, acc = _graph((m, 256), rng.integers(-128, 128, (256, 128), dtype=np.int8),
                            False, False)
    g.add_signature("s", inputs, [acc])
    low = pipeline.lower(g, g.signatures["s"], CompileOptions(threads=1, cache_dir=None))
    (mm,) = [n for n in low.optimized.nodes if n.op == "matmul_integer"]
    assert mm.attrs["b_groups"] == ((32, 4) if vnni else b_groups(
        anchor_spec(mm, gc.int32), pipeline.host_target()))
    loads = _VECTOR_LOAD.findall(low.ir_text)
    assert loads and all(align == "1" for _, align in loads), loads


@pytest.mark.parametrize("zp", [False, True])
@pytest.mark.parametrize("m", [1, 64])
def test_an_empty_k_gives_zero_sums(m: int, zp: bool) -> None:
    """K = 0: nothing to pack (no scratch at all without a zero point), every sum is 0."""
    g, inputs, acc = _graph((m, 0), np.zeros((0, 32), np.int8), False, zp)
    exe = gc.compile(g, inputs, [acc], options=CompileOptions(threads=1, cache_dir=None))
    args = (np.zeros((m, 0), np.uint8), np.uint8(3)) if zp else (np.zeros((m, 0), np.uint8),)
    np.testing.assert_array_equal(exe(*args)[0], np.zeros((m, 32), np.int32))
