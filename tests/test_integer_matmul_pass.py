"""passes/integer_matmul.py: int32 matmuls of 8-bit values (ONNX MatMulInteger as imported)
become `matmul_integer`, with the same exact int32 sums.

Checked: the dynamic-quantization pattern (a clip into [0, 255], its integer cast, minus a
rounded zero point) compiles onto the int8 GEMM and equals the int32 reference exactly, at 1
and 2 threads, with and without the zero point, B transposed, a batch of rows; what cannot
be proven stays an int32 matmul (values outside uint8 or int8, a per-row zero point, a B
that is not a constant); `byte_bounds` through clips, roundings and casts; ONNX
MatMulInteger models built with onnx.helper and ONNX Runtime's `quantize_dynamic` output,
against ONNX's reference implementation and the imported graph's reference.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest

import graphc as gc
from graphc.ir import Graph
from graphc.options import CompileOptions
from graphc.passes import integer_matmul
from graphc.passes.rewrite import Rebuilder
from graphc.passes.value_bounds import value_bounds


def _ops(exe: gc.Executable) -> set[str]:
    return {n.op for n in exe.compiled_graph.nodes}


def _quantized(x: gc.Node) -> tuple[gc.Node, gc.Node]:
    """ONNX's DynamicQuantizeLinear as imported: (q, zero point), both int32."""
    hi = gc.maximum(gc.max(x), 0.0)
    lo = gc.minimum(gc.min(x), 0.0)
    scale = (hi - lo) / 255.0
    zp = gc.round(gc.clip(-(lo / scale), 0.0, 255.0))
    q = gc.clip(gc.round(x / scale) + zp, 0.0, 255.0)
    return gc.cast(q, gc.int32), gc.cast(zp, gc.int32)


def _graph(shape: tuple[int, ...], w: np.ndarray, zp: bool, tb: bool = False
           ) -> tuple[Graph, gc.Node]:
    with gc.Graph("mmint") as g:
        x = gc.placeholder(shape, name="x")
        q, z = _quantized(x)
        a = q - z if zp else q
        acc = gc.matmul(a, gc.constant(w.astype(np.int32)), transpose_b=tb)
    g.add_signature("main", [x], [acc])
    return g, acc


@pytest.mark.parametrize("zp", [True, False])
@pytest.mark.parametrize("shape,tb", [((64, 96), False), ((3, 96), True), ((2, 5, 96), False)])
def test_quantized_int32_matmul_runs_on_the_int8_gemm_exactly(shape, tb, zp) -> None:
    rng = np.random.default_rng(len(shape) + tb)
    w = rng.integers(-128, 128, (48, 96) if tb else (96, 48), dtype=np.int8)
    g, _ = _graph(shape, w, zp, tb)
    xv = rng.standard_normal(shape).astype(np.float32)
    want = gc.reference(g, signature="main")(xv)[0]
    assert want.dtype == np.int32 and np.abs(want).max() > 1000
    for threads in (1, 2):
        exe = gc.compile(g, signature="main", options=CompileOptions(threads=threads,
                                                                     cache_dir=None))
        assert "matmul_integer" in _ops(exe) and "matmul" not in _ops(exe)
        np.testing.assert_array_equal(exe(xv)[0], want)


@pytest.mark.parametrize("zp", [-7, None])
def test_int8_activations_are_shifted_into_uint8(zp: int | None) -> None:
    """A and Z in [-128, 127]: A - Z = (A + 128) - (Z + 128) on the uint8 GEMM, exactly."""
    rng = np.random.default_rng(2)
    w = rng.integers(-128, 128, (64, 32)).astype(np.int32)
    with gc.Graph("s8") as g:
        x = gc.placeholder((32, 64), name="x")
        q = gc.cast(gc.clip(gc.round(x * 60.0), -128.0, 127.0), gc.int32)
        acc = gc.matmul(q - gc.constant(np.int32(zp)) if zp is not None else q,
                        gc.constant(w))
    exe = gc.compile(g, [x], [acc], options=CompileOptions(threads=1, cache_dir=None))
    assert "matmul_integer" in _ops(exe) and "matmul" not in _ops(exe)
    xv = rng.standard_normal((32, 64)).astype(np.float32)
    want = gc.reference(g, [x], [acc])(xv)[0]
    assert (np.abs(np.clip(np.round(xv * 60), -128, 127)) == 128).any()  # both ends hit
    np.testing.assert_array_equal(exe(xv)[0], want)


def test_what_cannot_be_proven_stays_an_int32_matmul() -> None:
    rng = np.random.default_rng(1)
    w = rng.integers(-128, 128, (32, 16)).astype(np.int32)
    wide = w.copy()
    wide[3, 4] = 200  # outside int8
    cases = {}
    with gc.Graph("wide") as g:
        x = gc.placeholder((8, 32), name="x")
        q, z = _quantized(x)
        cases["the weight does not fit int8"] = (g, [x], gc.matmul(q - z, gc.constant(wide)))
    with gc.Graph("unbounded") as g:
        a = gc.placeholder((8, 32), gc.int32, name="a")
        cases["not provably 8-bit (bounds [-2.14748e+09, 2.14748e+09])"] = (
            g, [a], gc.matmul(a, gc.constant(w)))
    with gc.Graph("clip300") as g:
        x = gc.placeholder((8, 32), name="x")
        cases["not provably 8-bit (bounds [0, 300])"] = (g, [x], gc.matmul(
            gc.cast(gc.clip(x, 0.0, 300.0), gc.int32), gc.constant(w)))
    with gc.Graph("per_row") as g:
        x = gc.placeholder((8, 32), name="x")
        q, _ = _quantized(x)
        rows = gc.cast(gc.clip(gc.round(gc.sum(x, axis=1, keepdims=True)), 0.0, 255.0),
                       gc.int32)
        cases["the zero point is not one scalar"] = (g, [x], gc.matmul(q - rows,
                                                                        gc.constant(w)))
    with gc.Graph("runtime_b") as g:
        x = gc.placeholder((8, 32), name="x")
        b = gc.placeholder((32, 16), gc.int32, name="b")
        q, z = _quantized(x)
        cases["the weight is not a constant"] = (g, [x, b], gc.matmul(q - z, b))
    for why, (g, inputs, y) in cases.items():
        exe = gc.compile(g, inputs, [y], options=CompileOptions(threads=1, cache_dir=None))
        assert "matmul_integer" not in _ops(exe), why
        # `graphc dump --stage optimized --explain` says why.
        (line,) = integer_matmul.explain(exe.compiled_graph)
        assert line.startswith(f"%{y.name} (matmul, int32): ") and why in line, (why, line)
        args = [rng.standard_normal(i.shape).astype(np.float32) if i.dtype == gc.float32
                else rng.integers(-300, 300, i.shape).astype(np.int32) for i in inputs]
        np.testing.assert_array_equal(exe(*args)[0], gc.reference(g, inputs, [y])(*args)[0])


def test_byte_bounds_follow_clips_roundings_and_casts() -> None:
    with gc.Graph("bounds") as g:
        x = gc.placeholder((4,), name="x")
        clipped = gc.clip(x, -2.5, 250.2)
        rounded = gc.round(clipped)
        as_int = gc.cast(rounded, gc.int32)
        shifted = gc.cast(gc.clip(x, 0.0, 1e10), gc.int32)  # may not fit int32
        small = gc.cast(gc.clip(x, 0.0, 255.0), gc.int8)  # int8 wraps 128..255
        u8 = gc.placeholder((4,), gc.uint8, name="u")
        unbounded = gc.cast(gc.round(x * 2.0), gc.int32)
    rb = Rebuilder(g).run()  # the bounds read constants of the graph being built

    def bounds(node: gc.Node) -> tuple[float, float]:
        return value_bounds(rb.graph[node.name], rb.value)

    assert bounds(clipped) == (-2.5, float(np.float32(250.2)))
    assert bounds(rounded) == (-3, 251)
    assert bounds(as_int) == (-3, 251)
    assert bounds(shifted) == (-2.0**31, 2.0**31 - 1)
    assert bounds(small) == (-128, 127)
    assert bounds(u8) == (0, 255)
    assert bounds(x) == (-np.inf, np.inf)
    assert bounds(unbounded) == (-2.0**31, 2.0**31 - 1)


def _onnx_model(zp: int | None, w: np.ndarray) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    from tests.onnx_helpers import model_bytes, value_info

    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
             helper.make_node("MatMulInteger", ["q", "w", "z", "wz"] if zp is not None
                              else ["q", "w", "z"], ["acc"]),
             helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["accf", "s"], ["y"])]
    inits = [numpy_helper.from_array(w, "w")]
    if zp is not None:
        inits.append(numpy_helper.from_array(np.full(w.shape[1], zp, np.int8), "wz"))
    return model_bytes(nodes, [value_info("x", [16, w.shape[0]])],
                       [value_info("y", [16, w.shape[1]])], inits)


@pytest.mark.parametrize("weight_zp", [None, 0, 3])
def test_onnx_matmul_integer_imports_onto_the_int8_gemm(weight_zp) -> None:
    pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(4)
    w = rng.integers(-100, 100, (64, 32), dtype=np.int8)
    model = _onnx_model(weight_zp, w)
    g = gc.onnx.load(model, trainable=False)
    exe = gc.compile(g, signature="main", options=CompileOptions(threads=1, cache_dir=None))
    assert "matmul_integer" in _ops(exe)
    xv = rng.standard_normal((16, 64)).astype(np.float32)
    want = ReferenceEvaluator(model).run(None, {"x": xv})[0]
    np.testing.assert_allclose(exe(xv)[0], want, rtol=1e-6, atol=1e-6)


def test_onnx_qlinear_matmul_of_int8_activations_runs_on_the_int8_gemm() -> None:
    """QuantizeLinear to int8 -> QLinearMatMul -> DequantizeLinear (ONNX Runtime's static
    QOperator format): the int8 activations are shifted into uint8; ONNX's reference
    implementation gives the same outputs."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    from tests.onnx_helpers import model_bytes, value_info

    rng = np.random.default_rng(6)
    w = rng.integers(-128, 128, (64, 32), dtype=np.int8)
    f32 = np.float32
    inits = [numpy_helper.from_array(v, n) for n, v in (
        ("s", f32(0.02)), ("z", np.int8(3)), ("w", w), ("ws", f32(0.01)), ("wz", np.int8(0)),
        ("ys", f32(2.0)), ("yz", np.int8(-1)))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("QLinearMatMul", ["q", "s", "z", "w", "ws", "wz", "ys", "yz"],
                              ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])]
    model = model_bytes(nodes, [value_info("x", [8, 64])],
                        [value_info("y", [8, 32], TensorProto.FLOAT)], inits, opset=21)
    g = gc.onnx.load(model, trainable=False)
    exe = gc.compile(g, signature="main", options=CompileOptions(threads=1, cache_dir=None))
    assert "matmul_integer" in _ops(exe)
    xv = rng.standard_normal((8, 64)).astype(np.float32) * 2
    want = ReferenceEvaluator(model).run(None, {"x": xv})[0]
    np.testing.assert_array_equal(exe(xv)[0], want)


def test_onnx_runtime_quantized_mlp_runs_on_the_int8_gemm() -> None:
    """ONNX Runtime's `quantize_dynamic` of an MLP (DynamicQuantizeLinear -> MatMulInteger
    -> Cast -> Mul, per-channel weights): every MatMulInteger runs on the int8 GEMM, with
    the imported graph's reference outputs."""
    pytest.importorskip("onnx")
    ort_quant = pytest.importorskip("onnxruntime.quantization")
    torch = pytest.importorskip("torch")

    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(),
                                torch.nn.Linear(48, 32))
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "mlp.onnx"), Path(tmp, "mlp_int8.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation
            torch.onnx.export(model, (torch.zeros(16, 64),), str(src), dynamo=False,
                              input_names=["x"], output_names=["y"])
        ort_quant.quantize_dynamic(str(src), str(dst), per_channel=True,
                                   weight_type=ort_quant.QuantType.QInt8)
        g = gc.onnx.load(dst.read_bytes(), trainable=False)
    exe = gc.compile(g, signature="main", options=CompileOptions(threads=1, cache_dir=None))
    ops = [n.op for n in exe.compiled_graph.nodes]
    assert ops.count("matmul_integer") == 2 and "matmul" not in ops
    xv = np.random.default_rng(5).standard_normal((16, 64)).astype(np.float32)
    np.testing.assert_allclose(exe(xv)[0], gc.reference(g, signature="main")(xv)[0],
                               rtol=1e-5, atol=1e-5)


# --- ConvInteger: a float64 convolution of centered 8-bit values, cast to int32 -----------

def _conv_graph(w: np.ndarray, attrs: dict, zp: bool, groups: int = 1
                ) -> tuple[Graph, gc.Node, gc.Node]:
    """ONNX ConvInteger as imported: cast(conv2d(f64(q) - f64(z), f64(w)), int32)."""
    with gc.Graph("convint") as g:
        x = gc.placeholder((2, w.shape[1] * groups, 9, 10), name="x")
        q, z = _quantized(x)
        xc = gc.cast(q, gc.float64) - gc.cast(z, gc.float64) if zp else gc.cast(q, gc.float64)
        acc = gc.cast(gc.conv2d(xc, gc.cast(gc.constant(w.astype(np.int32)), gc.float64),
                                groups=groups, **attrs), gc.int32)
    return g, x, acc


CONV_CASES = [({"padding": 1}, (8, 3, 3, 3)), ({"stride": 2, "padding": 2}, (16, 4, 3, 3)),
              ({"dilation": 2, "padding": (1, 2)}, (8, 2, 3, 2)), ({}, (16, 8, 1, 1))]


@pytest.mark.parametrize("zp", [True, False])
@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_integer_convolutions_run_on_the_int8_gemm_exactly(case: int, zp: bool) -> None:
    """Padding included: the padded taps hold the zero point and contribute nothing."""
    attrs, shape = CONV_CASES[case]
    rng = np.random.default_rng(case)
    g, x, acc = _conv_graph(rng.integers(-128, 128, shape).astype(np.int8), attrs, zp)
    xv = rng.standard_normal(x.shape).astype(np.float32) + 0.5  # a zero point inside
    want = gc.reference(g, [x], [acc])(xv)[0]
    assert np.abs(want).max() > 1000
    for threads in (1, 2):
        exe = gc.compile(g, [x], [acc], options=CompileOptions(threads=threads,
                                                               cache_dir=None))
        assert "matmul_integer" in _ops(exe) and "conv2d" not in _ops(exe)
        np.testing.assert_array_equal(exe(xv)[0], want)


def test_convolutions_that_are_not_8bit_integers_stay_float() -> None:
    rng = np.random.default_rng(9)
    w = rng.integers(-100, 100, (8, 3, 3, 3)).astype(np.int8)
    grouped = rng.integers(-100, 100, (9, 1, 3, 3)).astype(np.int8)
    cases = {"grouped": _conv_graph(grouped, {"padding": 1}, True, groups=3)}
    with gc.Graph("fractional") as g:
        x = gc.placeholder((1, 3, 8, 8), name="x")
        q, z = _quantized(x)
        xc = gc.cast(q, gc.float64) - gc.cast(z, gc.float64)
        acc = gc.cast(gc.conv2d(xc, gc.constant(w.astype(np.float64) + 0.5)), gc.int32)
    cases["fractional weights"] = (g, x, acc)
    with gc.Graph("any_int") as g:
        x = gc.placeholder((1, 3, 8, 8), gc.int32, name="x")
        acc = gc.cast(gc.conv2d(gc.cast(x, gc.float64), gc.constant(w.astype(np.float64))),
                      gc.int32)
    cases["activations of any int32"] = (g, x, acc)
    reasons = {"grouped": "a grouped convolution",
               "fractional weights": "the weight is not whole numbers",
               "activations of any int32": "not provably 8-bit"}
    for why, (g, x, acc) in cases.items():
        exe = gc.compile(g, [x], [acc], options=CompileOptions(threads=1, cache_dir=None))
        assert "matmul_integer" not in _ops(exe), why
        (line,) = integer_matmul.explain(exe.compiled_graph)
        assert "(conv2d, float64)" in line and reasons[why] in line, (why, line)
        xv = (rng.integers(-300, 300, x.shape).astype(np.int32) if x.dtype == gc.int32
              else rng.standard_normal(x.shape).astype(np.float32))
        np.testing.assert_array_equal(exe(xv)[0], gc.reference(g, [x], [acc])(xv)[0])


def test_onnx_runtime_quantized_cnn_runs_on_the_int8_gemm() -> None:
    """ONNX Runtime's `quantize_dynamic` of a CNN (DynamicQuantizeLinear -> ConvInteger ->
    Cast -> Mul): every ConvInteger and MatMulInteger on the int8 GEMM, with the imported
    graph's reference outputs, and ONNX Runtime's within int8 saturation error."""
    pytest.importorskip("onnx")
    ort_quant = pytest.importorskip("onnxruntime.quantization")
    torch = pytest.importorskip("torch")

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(32 * 8 * 8, 10)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "cnn.onnx"), Path(tmp, "cnn_int8.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation
            torch.onnx.export(model, (torch.zeros(2, 3, 16, 16),), str(src), dynamo=False,
                              input_names=["x"], output_names=["y"])
        ort_quant.quantize_dynamic(str(src), str(dst), per_channel=True,
                                   weight_type=ort_quant.QuantType.QInt8)
        data = dst.read_bytes()
    g = gc.onnx.load(data, trainable=False)
    assert {n.op for n in g.nodes} >= {"conv2d"}
    exe = gc.compile(g, signature="main", options=CompileOptions(threads=1, cache_dir=None))
    ops = [n.op for n in exe.compiled_graph.nodes]
    assert ops.count("matmul_integer") == 3 and "conv2d" not in ops and "matmul" not in ops
    xv = np.random.default_rng(8).standard_normal((2, 3, 16, 16)).astype(np.float32)
    got = exe(xv)[0]
    np.testing.assert_allclose(got, gc.reference(g, signature="main")(xv)[0],
                               rtol=1e-5, atol=1e-5)


# --- regressions found in review ----------------------------------------------------------

def test_shifted_int8_activations_truncate_before_the_shift() -> None:
    """clip(x, -128, 127) cast to int32 truncates toward zero (-0.5 -> 0); the shift by
    128 comes after that cast, not before (trunc(127.5) = 127 would be wrong)."""
    rng = np.random.default_rng(11)
    w = rng.integers(-128, 128, (16, 8)).astype(np.int32)
    for zp in (None, -7):
        with gc.Graph("trunc") as g:
            x = gc.placeholder((4, 16), name="x")
            q = gc.cast(gc.clip(x, -128.0, 127.0), gc.int32)
            acc = gc.matmul(q - gc.constant(np.int32(zp)) if zp is not None else q,
                            gc.constant(w))
        exe = gc.compile(g, [x], [acc], options=CompileOptions(threads=1, cache_dir=None))
        assert "matmul_integer" in _ops(exe)
        for xv in (np.full((4, 16), -0.5, np.float32),
                   (rng.standard_normal((4, 16)) * 50).astype(np.float32)):
            np.testing.assert_array_equal(exe(xv)[0], gc.reference(g, [x], [acc])(xv)[0])


def test_bfloat16_clips_give_no_bounds() -> None:
    """bf16 constants are bit patterns: a clip to [-5, 0] in bf16 is not [0, 0]."""
    w = np.random.default_rng(12).integers(-128, 128, (8, 4)).astype(np.int32)
    with gc.Graph("bf16") as g:
        x = gc.placeholder((2, 8), name="x")
        xb = gc.cast(x, gc.bfloat16)
        lo = gc.cast(gc.constant(np.float32(-5.0)), gc.bfloat16)
        hi = gc.cast(gc.constant(np.float32(0.0)), gc.bfloat16)
        acc = gc.matmul(gc.cast(gc.round(gc.minimum(gc.maximum(xb, lo), hi)), gc.int32),
                        gc.constant(w))
    exe = gc.compile(g, [x], [acc], options=CompileOptions(threads=1, cache_dir=None))
    assert "matmul_integer" not in _ops(exe)
    xv = np.linspace(-6, 1, 16, dtype=np.float32).reshape(2, 8)
    np.testing.assert_array_equal(exe(xv)[0], gc.reference(g, [x], [acc])(xv)[0])


def test_a_convolution_whose_sums_may_leave_int32_stays_float() -> None:
    """255 * sum |W| >= 2^31: the float64 sums saturate in the int32 cast, the GEMM's would
    wrap, so the convolution is left as it is."""
    c = 70000
    with gc.Graph("wide") as g:
        x = gc.placeholder((1, c, 1, 1), name="x")
        q, z = _quantized(x)
        xc = gc.cast(q, gc.float64) - gc.cast(z, gc.float64)
        acc = gc.cast(gc.conv2d(xc, gc.constant(np.full((1, c, 1, 1), -128.0))), gc.int32)
    exe = gc.compile(g, [x], [acc], options=CompileOptions(threads=1, cache_dir=None))
    assert "matmul_integer" not in _ops(exe)
    (line,) = integer_matmul.explain(exe.compiled_graph)
    assert "sums may leave int32" in line


def test_float_convolutions_are_not_explained() -> None:
    """A float64 convolution of floats is no integer convolution left behind."""
    with gc.Graph("f64") as g:
        x = gc.placeholder((1, 3, 8, 8), gc.float64, name="x")
        y = gc.conv2d(x, gc.constant(np.ones((4, 3, 3, 3))))
    exe = gc.compile(g, [x], [y], options=CompileOptions(threads=1, cache_dir=None))
    assert integer_matmul.explain(exe.compiled_graph) == []


def test_a_constant_zero_point_of_a_convolution_folds_too() -> None:
    rng = np.random.default_rng(13)
    w = rng.integers(-128, 128, (8, 3, 3, 3)).astype(np.float64)
    with gc.Graph("const_zp") as g:
        x = gc.placeholder((1, 3, 8, 8), name="x")
        q = gc.cast(gc.clip(gc.round(x * 40.0 + 100.0), 0.0, 255.0), gc.int32)
        xc = gc.cast(q, gc.float64) - gc.constant(np.float64(100.0))
        acc = gc.cast(gc.conv2d(xc, gc.constant(w), padding=1), gc.int32)
    exe = gc.compile(g, [x], [acc], options=CompileOptions(threads=1, cache_dir=None))
    assert "matmul_integer" in _ops(exe) and "conv2d" not in _ops(exe)
    xv = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(exe(xv)[0], gc.reference(g, [x], [acc])(xv)[0])


@pytest.mark.parametrize("kind", ["matmul", "conv"])
def test_the_default_pipeline_reaches_a_fixed_point_after_the_rewrite(kind: str) -> None:
    from graphc.io.textir import graph_diff
    from graphc.passes.manager import run_pipeline

    rng = np.random.default_rng(14)
    if kind == "matmul":
        g, _ = _graph((8, 32), rng.integers(-128, 128, (32, 16), dtype=np.int8), True)
        sig = g.signatures["main"]
    else:
        g, x, acc = _conv_graph(rng.integers(-128, 128, (8, 3, 3, 3)).astype(np.int8),
                                {"padding": 1}, True)
        sig = g.add_signature("main", [x], [acc])
    once = run_pipeline(g, sig)
    assert any(n.op == "matmul_integer" for n in once.graph.nodes)
    twice = run_pipeline(once.graph, once.signature)
    assert graph_diff(twice.graph, once.graph) is None


def test_onnx_qlinear_conv_runs_on_the_int8_gemm() -> None:
    """QuantizeLinear (uint8) -> QLinearConv (per-channel weights, int32 bias, padding) ->
    DequantizeLinear: the convolution runs on the int8 GEMM; ONNX's reference
    implementation gives the same outputs."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    from tests.onnx_helpers import model_bytes, value_info

    rng = np.random.default_rng(15)
    w = rng.integers(-128, 128, (8, 3, 3, 3), dtype=np.int8)
    f32 = np.float32
    inits = [numpy_helper.from_array(v, n) for n, v in (
        ("s", f32(0.02)), ("z", np.uint8(120)), ("w", w),
        ("ws", rng.uniform(0.005, 0.02, 8).astype(f32)), ("wz", np.zeros(8, np.int8)),
        ("ys", f32(1.5)), ("yz", np.uint8(128)), ("b", rng.integers(-500, 500, 8, np.int32)))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("QLinearConv", ["q", "s", "z", "w", "ws", "wz", "ys", "yz", "b"],
                              ["yq"], pads=[1, 1, 1, 1], strides=[2, 1]),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])]
    model = model_bytes(nodes, [value_info("x", [2, 3, 9, 8])],
                        [value_info("y", None, TensorProto.FLOAT)], inits, opset=21)
    g = gc.onnx.load(model, trainable=False)
    exe = gc.compile(g, signature="main", options=CompileOptions(threads=1, cache_dir=None))
    assert "matmul_integer" in _ops(exe) and "conv2d" not in _ops(exe)
    xv = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    want = ReferenceEvaluator(model).run(None, {"x": xv})[0]
    np.testing.assert_array_equal(exe(xv)[0], want)


def test_dump_explains_matmul_integers_left_off_the_int8_gemm(tmp_path: Path, capsys) -> None:
    """`graphc dump MODEL.onnx --stage optimized --explain` names an ONNX MatMulInteger whose
    uint8 weights (200 > 127, zero point 0) do not fit int8, and why."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from graphc.cli.main import main as cli_main
    from tests.onnx_helpers import model_bytes, value_info

    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
             helper.make_node("MatMulInteger", ["q", "w", "z", "wz"], ["acc"]),
             helper.make_node("Cast", ["acc"], ["y"], to=TensorProto.FLOAT)]
    inits = [numpy_helper.from_array(np.full((16, 8), 200, np.uint8), "w"),
             numpy_helper.from_array(np.uint8(0), "wz")]
    path = tmp_path / "wide.onnx"
    path.write_bytes(model_bytes(nodes, [value_info("x", [4, 16])],
                                 [value_info("y", [4, 8])], inits))
    assert cli_main(["dump", str(path), "--stage", "optimized", "--explain"]) == 0
    out = capsys.readouterr().out
    section = out[out.index("integer matmuls and convolutions not on the int8 GEMM"):]
    assert "(matmul, int32): the weight does not fit int8" in section
