"""`gc.onnx.save`: every exportable graphc op, at the lowest and highest opset written,
passes ONNX's full checker, matches graphc's reference in ONNX Runtime (when installed) and
imports back to the same outputs; signatures it cannot write fail with one clear error."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import graphc as gc

onnx = pytest.importorskip("onnx", reason="needs onnx: pip install 'graphc[onnx]'")

from graphc.codegen.target import host_target  # noqa: E402
from graphc.onnx.exporter import EMIT, MAX_SAVE_OPSET, MIN_SAVE_OPSET  # noqa: E402
from graphc.onnx.model import OnnxError  # noqa: E402

RNG = np.random.default_rng(7)
F = gc.float32


def _x(shape: tuple[int, ...], lo: float = -2.0, hi: float = 2.0) -> np.ndarray:
    return RNG.uniform(lo, hi, shape).astype(np.float32)


Build = Callable[[gc.Node, gc.Node], gc.Node]
# op -> (how to build it from two (3, 4) float inputs a and b, input ranges)
CASES: dict[str, Build] = {
    "abs": lambda a, b: gc.abs(a), "ceil": lambda a, b: gc.ceil(a),
    "cos": lambda a, b: gc.cos(a), "erf": lambda a, b: gc.erf(a),
    "exp": lambda a, b: gc.exp(a), "floor": lambda a, b: gc.floor(a),
    "log": lambda a, b: gc.log(gc.abs(a) + 0.5), "neg": lambda a, b: gc.neg(a),
    "reciprocal": lambda a, b: gc.reciprocal(gc.abs(a) + 0.5), "relu": lambda a, b: gc.relu(a),
    "round": lambda a, b: gc.round(a * 3.0), "sigmoid": lambda a, b: gc.sigmoid(a),
    "sign": lambda a, b: gc.sign(a), "sin": lambda a, b: gc.sin(a),
    "sqrt": lambda a, b: gc.sqrt(gc.abs(a)), "tanh": lambda a, b: gc.tanh(a),
    "softplus": lambda a, b: gc.softplus(a), "selu": lambda a, b: gc.selu(a),
    "logical_not": lambda a, b: gc.cast(gc.logical_not(gc.less(a, 0.0)), F),
    "stop_gradient": lambda a, b: gc.stop_gradient(a) * 2.0,
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "div": lambda a, b: a / (gc.abs(b) + 0.5), "pow": lambda a, b: gc.pow(gc.abs(a), b),
    "equal": lambda a, b: gc.cast(gc.equal(gc.round(a), gc.round(b)), F),
    "less": lambda a, b: gc.cast(gc.less(a, b), F),
    "less_equal": lambda a, b: gc.cast(gc.less_equal(a, b), F),
    "greater": lambda a, b: gc.cast(gc.greater(a, b), F),
    "greater_equal": lambda a, b: gc.cast(gc.greater_equal(a, b), F),
    "logical_and": lambda a, b: gc.cast(gc.logical_and(gc.less(a, 0.0), gc.less(b, 0.0)), F),
    "logical_or": lambda a, b: gc.cast(gc.logical_or(gc.less(a, 0.0), gc.less(b, 0.0)), F),
    "maximum": lambda a, b: gc.maximum(a, b), "minimum": lambda a, b: gc.minimum(a, b),
    "where": lambda a, b: gc.where(gc.less(a, b), a, b),
    "not_equal": lambda a, b: gc.cast(gc.not_equal(gc.round(a), gc.round(b)), F),
    "expm1": lambda a, b: gc.expm1(a), "log1p": lambda a, b: gc.log1p(gc.abs(a)),
    "rsqrt": lambda a, b: gc.rsqrt(gc.abs(a) + 0.5), "square": lambda a, b: gc.square(a),
    "elu": lambda a, b: gc.elu(a, 0.7), "leaky_relu": lambda a, b: gc.leaky_relu(a, 0.2),
    "gelu": lambda a, b: gc.gelu(a) + gc.gelu(b, "tanh"),
    "mod": lambda a, b: gc.mod(a, gc.abs(b) + 0.5),
    "cast": lambda a, b: gc.cast(gc.cast(a * 4.0, gc.int32), F),
    # uint8 x int8 with a zero point, both operands from floats in about [-3, 3].
    "matmul_integer": lambda a, b: gc.cast(gc.matmul_integer(
        gc.cast(a * 20.0 + 100.0, gc.uint8), gc.cast(b * 20.0, gc.int8),
        gc.cast(gc.constant(np.float32(7.0)), gc.uint8), transpose_b=True), F),
    "matmul": lambda a, b: gc.matmul(a, b, transpose_b=True) + gc.sum(
        gc.matmul(a, b, transpose_a=True)),
    "reshape": lambda a, b: gc.reshape(a, (4, 3)), "transpose": lambda a, b: gc.transpose(a),
    "broadcast_to": lambda a, b: gc.broadcast_to(gc.sum(a, 0), (2, 4)),
    "concat": lambda a, b: gc.concat([a, b], 1),
    "slice": lambda a, b: gc.slice(a, [1, 0], [3, 4], [1, 2]),
    "reverse": lambda a, b: gc.reverse(a, 1),
    "pad": lambda a, b: gc.pad(a, ((1, 0), (0, 2)), 0.5),
    "take": lambda a, b: gc.take(a, np.array([2, 0, -1]), 0),
    "take_along_axis": lambda a, b: gc.take_along_axis(a, np.array([[0], [3], [1]]), 1),
    "sum": lambda a, b: gc.sum(a, 1, keepdims=True), "max": lambda a, b: gc.max(a, 0),
    "min": lambda a, b: gc.min(a), "prod": lambda a, b: gc.prod(a * 0.5 + 1.0, 1),
    "argmax": lambda a, b: gc.cast(gc.argmax(a, 1), F),
    "argmin": lambda a, b: gc.cast(gc.argmin(a, 0, keepdims=True), F),
    "softmax": lambda a, b: gc.softmax(a, 0), "log_softmax": lambda a, b: gc.log_softmax(a),
    "layer_norm": lambda a, b: gc.layer_norm(a, beta=np.linspace(-1, 1, 4, dtype=F.np))
    + gc.layer_norm(b, np.full((3, 4), 1.5, F.np), np.ones((3, 4), F.np), axis=(0, 1)),
    "rms_norm": lambda a, b: gc.rms_norm(a, eps=0.1) + gc.rms_norm(b, np.full(4, 2.0, F.np)),
    "conv2d": lambda a, b: gc.conv2d(gc.reshape(a, (1, 1, 3, 4)),
                                     np.ones((2, 1, 2, 2), np.float32), padding=((1, 0), (0, 1)),
                                     stride=(1, 2)),
    "max_pool2d": lambda a, b: gc.max_pool2d(gc.reshape(a, (1, 1, 3, 4)), 2, padding=1),
    "avg_pool2d": lambda a, b: gc.avg_pool2d(gc.reshape(a, (1, 1, 3, 4)), 2, padding=1,
                                             count_include_pad=False),
    "attention": lambda a, b: gc.reshape(gc.attention(
        gc.reshape(a, (1, 2, 3, 2)), gc.reshape(b, (1, 1, 3, 4))[..., :2],
        gc.reshape(a * b, (1, 1, 3, 4)), causal=True, mask=gc.less(b[:, :3], 1.5)), (3, 8)),
    "iota": lambda a, b: a * gc.iota((3, 4), 1, F) + gc.cast(gc.iota((3, 4), 0), F),
    "dynamic_slice": lambda a, b: gc.dynamic_slice(
        gc.concat([a, b], 0), (gc.cast(gc.sum(gc.floor(b * 0.0)), gc.int64) + 2, 0),
        (3, 4)),
    "scan": lambda a, b: _scan_case(a, b), "get": lambda a, b: _scan_case(a, b),
    "cond": lambda a, b: _cond_case(a, b), "while_loop": lambda a, b: _while_case(a, b),
}


def _scan_case(a: gc.Node, b: gc.Node) -> gc.Node:
    """A reverse scan over a's rows with a carry, reading b (captured) and a body constant."""
    carry, ys = gc.scan(lambda c, x: (gc.tanh(c * 0.5 + x * b[0]), c * np.arange(4.0, dtype=F.np)),
                        b[1], a, reverse=True)
    return ys + carry


def _cond_case(a: gc.Node, b: gc.Node) -> gc.Node:
    """A run-time predicate; the true branch reads b (captured), the false one a constant
    and passes its operand through."""
    y, z = gc.cond(gc.less(gc.sum(a), gc.sum(b)),
                   lambda x: (gc.tanh(x) * b, x),
                   lambda x: (x - np.linspace(0, 1, 4, dtype=F.np), x), a)
    return y + z


def _while_case(a: gc.Node, b: gc.Node) -> gc.Node:
    """A data-dependent trip count (at most 6), a counter and a matrix carried, b
    captured by both the test and the body."""
    def test(carry: tuple[gc.Node, gc.Node]) -> gc.Node:
        i, x = carry
        return gc.logical_and(gc.less(i, 6), gc.less(gc.sum(gc.abs(x)), gc.sum(b * b) + 30.0))

    _, x = gc.while_loop(test, lambda c: (c[0] + 1, c[1] * 1.5 + b), (np.array(0), a))
    return x


def test_every_emitted_op_has_a_case() -> None:
    assert set(EMIT) <= set(CASES), sorted(set(EMIT) - set(CASES))


def _graph(op: str) -> gc.Graph:
    with gc.Graph(f"g_{op}") as g:
        a = gc.placeholder((3, 4), F, name="a")
        b = gc.placeholder((3, 4), F, name="b")
        y = CASES[op](a, b)
    g.add_signature("main", [a, b], [y])
    return g


@pytest.mark.parametrize("opset", [MIN_SAVE_OPSET, MAX_SAVE_OPSET])
@pytest.mark.parametrize("op", sorted(CASES))
def test_op_exports_checks_and_round_trips(op: str, opset: int) -> None:
    g = _graph(op)
    model = gc.onnx.to_model(g, "main", opset)
    onnx.checker.check_model(model, full_check=True)
    a, b = _x((3, 4)), _x((3, 4))
    (want,) = gc.reference(g, signature="main")(a, b)
    (back,) = gc.reference(gc.onnx.load(model), signature="main")(a, b)
    np.testing.assert_allclose(back, want, rtol=1e-6, atol=1e-6)
    ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is the oracle of this check")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"a": a, "b": b})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_save_writes_a_file_that_loads(tmp_path: Path) -> None:
    g = _graph("matmul")
    path = tmp_path / "m.onnx"
    gc.onnx.save(g, path)
    a, b = _x((3, 4)), _x((3, 4))
    np.testing.assert_allclose(gc.reference(gc.onnx.load(path), signature="main")(a, b)[0],
                               gc.reference(g, signature="main")(a, b)[0], rtol=1e-6)


def test_what_cannot_be_written_is_refused() -> None:
    with gc.Graph("bad") as g:
        x = gc.placeholder((2,), F, name="x")
        w = gc.variable(np.ones(2, np.float32), name="w")
        y = x * w + gc.random_uniform((2,), seed=1)
        loss = gc.sum(y)
    g.add_signature("main", [x], [y])
    with pytest.raises(OnnxError, match=r"no ONNX form for graphc op.*random_uniform"):
        gc.onnx.to_model(g)
    with pytest.raises(OnnxError, match="opset 12"):
        gc.onnx.to_model(g, "main", 12)
    with pytest.raises(OnnxError, match="no signature 'other'"):
        gc.onnx.to_model(g, "other")
    with g:
        updates = gc.optim.SGD(lr=0.1).minimize(loss)
    g.add_signature("train", [x], [loss], updates)
    with pytest.raises(OnnxError, match="updates variables"):
        gc.onnx.to_model(g, "train")


def test_a_gpt_from_the_layers_saves_as_onnx(tmp_path: Path) -> None:
    """Embedding, learned positions, causal pre-norm encoder layers with grouped-query
    attention, final norm and head: ONNX Runtime matches graphc; imported back, the
    attention pass fuses the spelled-out attention again."""
    with gc.Graph("gpt") as g:
        ids = gc.placeholder((2, 6), gc.int64, name="ids")
        net = gc.nn.Sequential([
            gc.nn.Embedding(50, 16), gc.nn.PositionalEmbedding(8, 16),
            gc.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, causal=True,
                                          num_kv_heads=2),
            gc.nn.LayerNorm(), gc.nn.Dense(50)])
        logits = net(ids)
    g.add_signature("main", [ids], [logits])
    x = np.random.default_rng(3).integers(0, 50, (2, 6))
    (want,) = gc.reference(g, signature="main")(x)
    path = tmp_path / "gpt.onnx"
    gc.onnx.save(g, path)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    back = gc.onnx.load(path, trainable=False)  # initializers as constants, for inference
    exe = gc.compile(back, signature="main")
    np.testing.assert_allclose(exe(x)[0], want, rtol=1e-5, atol=1e-5)
    assert "attention" in {n.op for n in exe.compiled_graph.nodes}
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"ids": x})[0], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("module", "builder", "shape"), [
    ("train_digits_mlp", "build_model", (8, 64)),
    ("train_digits_cnn", "build_model", (8, 1, 8, 8)),
    ("train_sequence_lstm", "lstm_model", (8, 10, 2)),
])
def test_every_example_model_saves_as_onnx(module: str, builder: str, shape: tuple[int, ...],
                                           tmp_path: Path) -> None:
    """The examples' models (MLP; CNN with batch norm and dropout, in inference mode; LSTM)
    written from their predict signature: the full checker passes and ONNX Runtime (when
    installed) matches graphc's predictions within 1e-5."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        module, Path(__file__).resolve().parent.parent / "examples" / f"{module}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = getattr(mod, builder)(10) if builder == "lstm_model" else getattr(mod, builder)()
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    want = model.predict(x, batch_size=shape[0])
    path = tmp_path / f"{module}.onnx"
    gc.onnx.save(model.graph, path, signature=f"predict_b{shape[0]}")
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    (back,) = gc.reference(gc.onnx.load(path), signature="main")(x)
    np.testing.assert_allclose(back, want, rtol=1e-5, atol=1e-5)
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# --- narrow types ---------------------------------------------------------------------------

def test_int8_quantized_graph_exports_and_runs_in_onnx_runtime() -> None:
    """gc.quantize_dynamic's graph (uint8 activations, int8 weights, matmul_integer) writes
    as an ONNX model of UINT8/INT8 tensors and MatMulInteger that ONNX Runtime runs to
    graphc's outputs."""
    rng = np.random.default_rng(8)
    with gc.Graph("mlp") as g:
        x = gc.placeholder((5, 16), gc.float32, name="x")
        w1 = gc.constant(rng.normal(size=(16, 32)).astype(np.float32) / 4)
        w2 = gc.constant(rng.normal(size=(32, 8)).astype(np.float32) / 4)
        out = gc.relu(x @ w1) @ w2
        g.add_signature("main", [x], [out])
    q = gc.quantize_dynamic(g)
    assert "matmul_integer" in {n.op for n in q.nodes}
    model = gc.onnx.to_model(q, "main")
    onnx.checker.check_model(model, full_check=True)
    elems = {t.data_type for t in model.graph.initializer}
    assert onnx.TensorProto.INT8 in elems
    assert "MatMulInteger" in {n.op_type for n in model.graph.node}
    xv = rng.normal(size=(5, 16)).astype(np.float32)
    (want,) = gc.compile(q, signature="main")(xv)
    ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is the oracle of this check")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"x": xv})
    assert got.shape == want.shape
    # The written model, read back, computes graphc's values (the reference of the import).
    (back,) = gc.reference(gc.onnx.load(model.SerializeToString()), signature="main")(xv)
    np.testing.assert_allclose(back, want, rtol=1e-5, atol=1e-5)
    host = host_target()
    if not (host.has("avx512vnni") or host.has("avxvnni")):
        # Without VNNI, ONNX Runtime multiplies u8 x s8 with vpmaddubsw, whose int16 pair
        # sums saturate: 0.17 off here, so it is no oracle of the values on this host.
        pytest.skip("ONNX Runtime's u8s8 MatMulInteger saturates on a host without VNNI")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_bfloat16_casts_and_constants_export_as_bfloat16() -> None:
    """A bf16 constant is a BFLOAT16 initializer of the same bits; casts to and from bf16
    round as graphc does (ONNX Runtime agrees bit for bit)."""
    with gc.Graph("bf") as g:
        x = gc.placeholder((4, 8), gc.float32, name="x")
        c = gc.cast(gc.constant(np.linspace(-2, 2, 8, dtype=np.float32)), gc.bfloat16)
        out = gc.cast(gc.cast(x, gc.bfloat16), gc.float32) + gc.cast(c, gc.float32)
        g.add_signature("main", [x], [out])
    folded = gc.reference(g, signature="main")
    model = gc.onnx.to_model(g, "main")
    onnx.checker.check_model(model, full_check=True)
    xv = np.random.default_rng(9).normal(size=(4, 8)).astype(np.float32)
    (want,) = folded(xv)
    ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is the oracle of this check")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"x": xv})
    np.testing.assert_array_equal(got, want)
