"""The qdq pass: quantize -> dequantize pairs around matmuls folded into the int8 GEMM, and
the explanation of every pair it leaves (`graphc dump --stage optimized --explain`)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

import graphc as gc
from graphc import pipeline
from graphc.cli.main import main as cli_main
from graphc.codegen.target import host_target
from graphc.passes import qdq

M, K, N = 5, 24, 12
SX = np.float32(0.05)


def _weights(per_channel: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    wq = rng.integers(-128, 128, (K, N)).astype(np.int32)
    sw = ((rng.random(N) * 0.02 + 0.01) if per_channel else np.full((), 0.02)).astype(
        np.float32)
    return wq, sw


def _quantize(x: gc.Node, s: gc.Node, z: gc.Node, lo: float, hi: float) -> gc.Node:
    """As the ONNX importer writes QuantizeLinear."""
    q = gc.add(gc.round(gc.div(x, s)), gc.cast(z, gc.float32))
    return gc.cast(gc.clip(q, lo, hi), gc.int32)


def _dequantize(q: gc.Node, s: gc.Node, z: gc.Node) -> gc.Node:
    return gc.mul(gc.sub(gc.cast(q, gc.float32), gc.cast(z, gc.float32)), s)


def _graph(zx: int = 128, lo: float = 0.0, hi: float = 255.0, wzp: int = 0,
           dq_scale: float | None = None, per_channel: bool = True, rows: int = M,
           use: str = "matmul") -> tuple[gc.Graph, np.ndarray, np.ndarray, np.ndarray]:
    wq, sw = _weights(per_channel)
    bias = np.random.default_rng(1).standard_normal(N).astype(np.float32)
    with gc.Graph("qdq") as g:
        x = gc.placeholder((rows, K), name="x")
        sx = gc.variable(np.asarray(SX), name="sx")  # ONNX float initializers are variables
        sxd = sx if dq_scale is None else gc.constant(np.float32(dq_scale))
        z = gc.constant(np.int32(zx))
        xd = _dequantize(_quantize(x, sx, z, lo, hi), sxd, gc.constant(np.int32(zx)))
        wd = gc.mul(gc.sub(gc.cast(gc.constant(wq), gc.float32),
                           gc.cast(gc.constant(np.full(N, wzp, np.int32)), gc.float32)),
                    gc.variable(sw, name="sw"))
        h = gc.matmul(xd, wd, name="mm") if use == "matmul" else gc.matmul(
            gc.add(xd, 1.0, name="plus"), wd, name="mm")
        y = gc.relu(h + gc.constant(bias))
    g.add_signature("main", [x], [y])
    return g, wq - wzp, sw, bias


def _optimized_ops(g: gc.Graph) -> list[str]:
    low = pipeline.lower(g, g.signatures["main"], gc.CompileOptions(threads=1), "optimized")
    assert low.optimized is not None
    return [n.op for n in low.optimized.nodes]


@pytest.mark.parametrize("zx,lo,hi", [(128, 0.0, 255.0), (0, -128.0, 127.0), (3, 0.0, 255.0)])
@pytest.mark.parametrize("rows", [1, M])
def test_folded_matmul_is_the_exact_integer_product(zx: int, lo: float, hi: float,
                                                    rows: int) -> None:
    g, wc, sw, bias = _graph(zx, lo, hi, rows=rows)
    ops = _optimized_ops(g)
    assert "matmul_integer" in ops and "matmul" not in ops
    xs = np.random.default_rng(2).standard_normal((rows, K)).astype(np.float32) * 3
    got = gc.compile(g, signature="main", options=gc.CompileOptions(threads=1))(xs)[0]
    q = np.clip(np.round(xs / SX) + zx, lo, hi).astype(np.int64)
    acc = (q - zx) @ wc.astype(np.int64)  # exact
    want = np.maximum(acc.astype(np.float32) * (SX * sw) + bias, 0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # The float QDQ model computes the same up to float32 rounding.
    ref = gc.reference(g, signature="main")(xs)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_per_tensor_weight_scale_folds() -> None:
    g, _, _, _ = _graph(per_channel=False)
    assert "matmul_integer" in _optimized_ops(g)
    assert qdq.explain(g) == []


@pytest.mark.parametrize("kwargs,reason", [
    ({"wzp": 5}, "the weight minus its zero point does not fit int8"),
    ({"dq_scale": 0.07}, "quantize and dequantize use different scales or zero points"),
    ({"lo": 0.0, "hi": 15.0}, "not uint8's or int8's"),
    ({"use": "add"}, "feeds add, not a matmul or convolution"),
])
def test_pairs_left_alone_are_explained(kwargs: dict, reason: str) -> None:
    g, _, _, _ = _graph(**kwargs)
    ops = _optimized_ops(g)
    assert "matmul_integer" not in ops
    lines = qdq.explain(g)
    if "lo" in kwargs:  # the clip is not a quantize: there is no pair
        assert lines == []
        return
    assert len(lines) == 1 and reason in lines[0], lines
    xs = np.random.default_rng(3).standard_normal((M, K)).astype(np.float32)
    got = gc.compile(g, signature="main", options=gc.CompileOptions(threads=1))(xs)[0]
    np.testing.assert_allclose(got, gc.reference(g, signature="main")(xs)[0], rtol=1e-5,
                               atol=1e-5)


def test_weight_that_is_not_constant_is_explained() -> None:
    with gc.Graph("qdq_w") as g:
        x = gc.placeholder((M, K), name="x")
        w = gc.placeholder((K, N), name="w")
        s, z = gc.constant(SX), gc.constant(np.int32(128))
        xd = _dequantize(_quantize(x, s, z, 0.0, 255.0), s, z)
        y = gc.matmul(xd, w, name="mm")
    g.add_signature("main", [x, w], [y])
    assert qdq.explain(g) == [f"%{xd.name} -/-> %mm: the weight (operand b) is not "
                              "dequantized"]


def test_onnx_qdq_model_imports_folded(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    wq, sw = _weights()
    bias = np.random.default_rng(1).standard_normal(N).astype(np.float32)

    def model(path: Path, wzp: int) -> None:
        inits = [numpy_helper.from_array(wq.astype(np.int8), "wq"),
                 numpy_helper.from_array(sw, "sw"),
                 numpy_helper.from_array(np.full(N, wzp, np.int8), "zw"),
                 numpy_helper.from_array(np.array(SX, np.float32), "sx"),
                 numpy_helper.from_array(np.array(128, np.uint8), "zx"),
                 numpy_helper.from_array(bias, "b")]
        nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
                 helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
                 helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"], axis=1),
                 helper.make_node("MatMul", ["xd", "wd"], ["mm"]),
                 helper.make_node("Add", ["mm", "b"], ["y"])]
        graph = helper.make_graph(
            nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [M, K])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [M, N])],
            initializer=inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=9)
        onnx.checker.check_model(m)
        onnx.save(m, str(path))

    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    model(good, 0)
    model(bad, 120)
    g = gc.onnx.load(str(good))
    assert "matmul_integer" in _optimized_ops(g)
    xs = np.random.default_rng(4).standard_normal((M, K)).astype(np.float32)
    got = gc.compile(g, signature="main", options=gc.CompileOptions(threads=1))(xs)[0]
    q = np.clip(np.round(xs / SX) + 128, 0, 255).astype(np.int64)
    want = ((q - 128) @ wq.astype(np.int64)).astype(np.float32) * (SX * sw) + bias
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)

    assert cli_main(["dump", str(bad), "--stage", "optimized", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "quantize/dequantize pairs not folded" in out
    assert "does not fit int8" in out and "matmul(" in out
    assert cli_main(["dump", str(good), "--stage", "optimized", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "matmul_integer(" in out and out.rstrip().endswith("none")


def _ort_qdq(tmp_path: Path, nodes: list, inits: dict[str, np.ndarray], xs: np.ndarray,
             out_shape: tuple[int, ...]) -> tuple[gc.Graph, np.ndarray]:
    """The float ONNX model of `nodes` quantized by ONNX Runtime to QDQ (static, calibrated
    on xs; per-channel int8 weights, uint8 activations), imported, and ORT's output."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    quantization = pytest.importorskip("onnxruntime.quantization")
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(xs.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    float_model, qdq_model = tmp_path / "net.onnx", tmp_path / "net_qdq.onnx"
    float_model.write_bytes(helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9).SerializeToString())

    class Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": xs}])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    # Without VNNI, ORT multiplies u8 x s8 with vpmaddubsw, whose int16 pair sums saturate
    # with 8-bit weights (its result is then no oracle); 7-bit weights (reduce_range, ORT's
    # own advice for such hosts) keep every pair sum in range.
    host = host_target()
    quantization.quantize_static(
        str(float_model), str(qdq_model), Reader(), quant_format=quantization.QuantFormat.QDQ,
        per_channel=True, activation_type=quantization.QuantType.QUInt8,
        weight_type=quantization.QuantType.QInt8,
        reduce_range=not (host.has("avx512vnni") or host.has("avxvnni")))
    want = ort.InferenceSession(str(qdq_model), providers=["CPUExecutionProvider"]).run(
        None, {"x": xs})[0]
    return gc.onnx.load(str(qdq_model)), want


def _node(op: str, inputs: list[str], output: str, **attrs: object) -> object:
    """An ONNX node; skips the calling test when onnx is not installed (the fixtures are
    built before `_ort_qdq` would skip it)."""
    helper = pytest.importorskip("onnx.helper", reason="needs onnx: pip install "
                                 "'graphc[onnx]'")
    return helper.make_node(op, inputs, [output], **attrs)


def test_onnxruntime_qdq_mlp_runs_on_the_int8_gemm(tmp_path: Path) -> None:
    """ORT's QDQ MLP (int32 biases too): every Gemm folds; the result is ORT's."""
    rng = np.random.default_rng(12)
    sizes = (32, 24, 16, 10)
    inits: dict[str, np.ndarray] = {}
    nodes, h = [], "x"
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        inits[f"w{i}"] = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        inits[f"b{i}"] = (rng.standard_normal(b) * 0.1).astype(np.float32)
        out = "y" if i == len(sizes) - 2 else f"z{i}"
        nodes.append(_node("Gemm", [h, f"w{i}", f"b{i}"], out))
        if out != "y":
            nodes.append(_node("Relu", [out], f"h{i}"))
            h = f"h{i}"
    xs = rng.standard_normal((16, 32)).astype(np.float32)
    g, want = _ort_qdq(tmp_path, nodes, inits, xs, (16, 10))
    ops = _optimized_ops(g)
    assert ops.count("matmul_integer") == 3 and "matmul" not in ops
    assert all("not a matmul" in line for line in qdq.explain(g))  # the output's QDQ only
    got = gc.compile(g, signature="main", options=gc.CompileOptions(threads=1))(xs)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.max(np.abs(want)))


def test_onnxruntime_qdq_cnn_runs_on_the_int8_gemm(tmp_path: Path) -> None:
    """ORT's QDQ CNN (padding, a strided conv): both convolutions fold through im2col."""
    rng = np.random.default_rng(14)
    inits = {"w0": (rng.standard_normal((8, 1, 3, 3)) * 0.5).astype(np.float32),
             "b0": (rng.standard_normal(8) * 0.1).astype(np.float32),
             "w1": (rng.standard_normal((16, 8, 3, 3)) * 0.2).astype(np.float32),
             "b1": (rng.standard_normal(16) * 0.1).astype(np.float32)}
    nodes = [_node("Conv", ["x", "w0", "b0"], "c0", pads=[1, 1, 1, 1]),
             _node("Relu", ["c0"], "r0"),
             _node("Conv", ["r0", "w1", "b1"], "c1", pads=[1, 1, 1, 1], strides=[2, 2]),
             _node("Relu", ["c1"], "y")]
    xs = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
    g, want = _ort_qdq(tmp_path, nodes, inits, xs, (4, 16, 4, 4))
    ops = _optimized_ops(g)
    assert ops.count("matmul_integer") == 2 and "conv2d" not in ops
    got = gc.compile(g, signature="main", options=gc.CompileOptions(threads=1))(xs)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.max(np.abs(want)))


def _int_conv(q: np.ndarray, w: np.ndarray, pad: int) -> np.ndarray:
    """Stride-1 convolution of integer arrays, exactly in int64 (q already centered)."""
    n, _, h, wd = q.shape
    o, _, kh, kw = w.shape
    qp = np.pad(q.astype(np.int64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = h + 2 * pad - kh + 1, wd + 2 * pad - kw + 1
    out = np.zeros((n, o, ho, wo), np.int64)
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nchw,oc->nohw", qp[:, :, i:i + ho, j:j + wo],
                             w[:, :, i, j].astype(np.int64))
    return out


@pytest.mark.parametrize("zx,lo,hi", [(128, 0.0, 255.0), (0, -128.0, 127.0)])
def test_conv_pair_folds_exactly(zx: int, lo: float, hi: float) -> None:
    rng = np.random.default_rng(13)
    wq = rng.integers(-128, 128, (6, 3, 3, 3)).astype(np.int32)
    sw = (rng.random(6) * 0.02 + 0.01).astype(np.float32)
    with gc.Graph("qdq_conv") as g:
        x = gc.placeholder((2, 3, 7, 7), name="x")
        s, z = gc.variable(np.asarray(SX), name="sx"), gc.constant(np.int32(zx))
        xd = _dequantize(_quantize(x, s, z, lo, hi), s, z)
        wd = gc.mul(gc.cast(gc.constant(wq), gc.float32),
                    gc.reshape(gc.variable(sw, name="sw"), (6, 1, 1, 1)))
        y = gc.relu(gc.conv2d(xd, wd, padding=1, name="conv"))
    g.add_signature("main", [x], [y])
    ops = _optimized_ops(g)
    assert "matmul_integer" in ops and "conv2d" not in ops
    assert qdq.explain(g) == []
    xs = rng.standard_normal((2, 3, 7, 7)).astype(np.float32) * 3
    got = gc.compile(g, signature="main", options=gc.CompileOptions(threads=1))(xs)[0]
    q = np.clip(np.round(xs / SX) + zx, lo, hi).astype(np.int64) - zx
    want = np.maximum(_int_conv(q, wq, 1).astype(np.float32)
                      * (SX * sw).reshape(1, 6, 1, 1), 0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got, gc.reference(g, signature="main")(xs)[0], rtol=1e-4,
                               atol=1e-4)


def test_grouped_conv_pair_is_explained() -> None:
    with gc.Graph("qdq_gconv") as g:
        x = gc.placeholder((1, 4, 5, 5), name="x")
        s, z = gc.constant(SX), gc.constant(np.int32(128))
        xd = _dequantize(_quantize(x, s, z, 0.0, 255.0), s, z)
        wd = gc.mul(gc.cast(gc.constant(np.ones((4, 2, 3, 3), np.int32)), gc.float32), 0.5)
        gc.conv2d(xd, wd, groups=2, name="conv")
    assert qdq.explain(g) == [f"%{xd.name} -/-> %conv: a grouped convolution"]
