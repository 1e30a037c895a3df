"""ONNX conversions that ONNX's node suite checks only lightly: casts into narrow types
(float8, int4) rounding inside the graph, and ops written as compositions (Einsum, TopK,
bitwise ops, inverse trigonometry, quantized matmul, Attention's windows and padded keys,
BitCast, TfIdfVectorizer, TreeEnsemble, If/Loop/Scan), mostly against onnx's reference
evaluator on random data, interpreted and compiled.
"""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.onnx.model import OnnxError

onnx = pytest.importorskip("onnx", reason="needs onnx: pip install 'graphc[onnx]'")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from tests.onnx_helpers import model_bytes as _model  # noqa: E402
from tests.onnx_helpers import value_info as _vi  # noqa: E402

# --- narrow element types (float8, float4, int4, int2) ---------------------------------------

def _narrow_grid() -> np.ndarray:
    """Random values over many scales, every finite float8/float4 value, the midpoints
    between neighbours (ties), infinities, NaN, huge values and signed zeros."""
    import ml_dtypes

    rng = np.random.default_rng(0)
    parts = [rng.standard_normal(300).astype(np.float32) * s for s in (1e-4, 1e-2, 1, 1e2, 1e4)]
    for name in ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz",
                 "float4_e2m1fn"):
        values = np.arange(256, dtype=np.uint8).view(getattr(ml_dtypes, name))
        grid = np.unique(values.astype(np.float32)[np.isfinite(values.astype(np.float32))])
        parts += [grid, (grid[1:] + grid[:-1]) / 2]
    parts.append(np.array([np.inf, -np.inf, np.nan, 1e30, -1e30, 0.0, -0.0], np.float32))
    return np.concatenate(parts).astype(np.float32)


@pytest.mark.parametrize("code,name", [(17, "float8_e4m3fn"), (18, "float8_e4m3fnuz"),
                                       (19, "float8_e5m2"), (20, "float8_e5m2fnuz"),
                                       (23, "float4_e2m1fn")])
@pytest.mark.parametrize("saturate", [1, 0])
def test_a_cast_to_a_narrow_float_rounds_inside_the_graph(code: int, name: str,
                                                          saturate: int) -> None:
    """Cast(float8) then Cast(float) in graphc gives exactly ml_dtypes' rounding (nearest
    even), with ONNX's overflow: the largest value when saturating, else inf or NaN."""
    import ml_dtypes

    narrow = getattr(ml_dtypes, name)
    x = _narrow_grid()
    data = _model([helper.make_node("Cast", ["x"], ["q"], to=code, saturate=saturate),
                   helper.make_node("Cast", ["q"], ["y"], to=TensorProto.FLOAT)],
                  [_vi("x", [x.size])], [_vi("y", [x.size])], opset=21)
    (got,) = gc.reference(gc.onnx.load(data), signature="main")(x)
    largest = float(ml_dtypes.finfo(narrow).max)
    clipped = np.clip(x, -largest, largest) if saturate or code == 23 else x
    with np.errstate(invalid="ignore", over="ignore"):
        want = clipped.astype(narrow).astype(np.float32)
    np.testing.assert_array_equal(got, want)


def test_a_cast_to_float8_rounds_the_same_compiled() -> None:
    x = _narrow_grid()
    data = _model([helper.make_node("Cast", ["x"], ["q"], to=19, saturate=0),
                   helper.make_node("Cast", ["q"], ["y"], to=TensorProto.FLOAT)],
                  [_vi("x", [x.size])], [_vi("y", [x.size])], opset=21)
    g = gc.onnx.load(data)
    (want,) = gc.reference(g, signature="main")(x)
    (got,) = gc.compile(g, signature="main")(x)
    np.testing.assert_array_equal(got, want)


def test_casts_to_narrow_integers_truncate_floats_and_wrap_integers() -> None:
    x = np.array([-9.5, -8.7, -2.7, 0.4, 2.7, 7.9, 8.0, np.nan], np.float32)
    i = np.array([-20, -9, -8, 7, 8, 200], np.int32)
    data = _model([helper.make_node("Cast", ["x"], ["a"], to=TensorProto.INT4),
                   helper.make_node("Cast", ["i"], ["b"], to=TensorProto.INT4),
                   helper.make_node("Cast", ["x"], ["c"], to=TensorProto.UINT2)],
                  [_vi("x", [8]), _vi("i", [6], TensorProto.INT32)],
                  [_vi("a", [8], TensorProto.INT4), _vi("b", [6], TensorProto.INT4),
                   _vi("c", [8], TensorProto.UINT2)], opset=21)
    a, b, c = gc.reference(gc.onnx.load(data), signature="main")(x, i)
    np.testing.assert_array_equal(a, [0, -8, -2, 0, 2, 7, 0, 0])  # out of range: 0
    np.testing.assert_array_equal(b, [-4, 7, -8, 7, -8, -8])  # two's complement wrap
    np.testing.assert_array_equal(c, [0, 0, 0, 0, 2, 0, 0, 0])


def test_quantize_to_int4_and_float8_and_back() -> None:
    x = np.array([0.0, 2.5, 4.8, 8.6, -30.0, 100.0, 1e5], np.float32)
    zp4 = numpy_helper.from_array(np.array(1, np.int8), "zp4")
    zp4.data_type = TensorProto.INT4
    data = _model([helper.make_node("QuantizeLinear", ["x", "s", "zp4"], ["q4"]),
                   helper.make_node("QuantizeLinear", ["x", "s"], ["q8"],
                                    output_dtype=TensorProto.FLOAT8E4M3FN),
                   helper.make_node("DequantizeLinear", ["q8", "s"], ["y"])],
                  [_vi("x", [7]), _vi("s", [])],
                  [_vi("q4", [7], TensorProto.INT4), _vi("y", [7])], [zp4], opset=21)
    q4, y = gc.reference(gc.onnx.load(data), signature="main")(x, np.float32(2.0))
    np.testing.assert_array_equal(q4, [1, 2, 3, 5, -8, 7, 7])  # round half even, + 1, clip
    np.testing.assert_array_equal(y, [0.0, 2.5, 5.0, 9.0, -30.0, 96.0, 896.0])


# --- ops written as compositions (Einsum, TopK, bitwise, inverse trigonometry, ...) ----------

def _run_model(nodes: list, inputs: dict, outputs: list, opset: int = 21,
               mode: str = "reference") -> list:
    """Run a one-graph model in graphc; `inputs` maps names to arrays (element types from
    their numpy dtypes), `outputs` lists (name, element type)."""
    from graphc.onnx.backend import GraphcBackend

    types = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE,
             np.dtype(np.int32): TensorProto.INT32, np.dtype(np.int64): TensorProto.INT64,
             np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.uint64): TensorProto.UINT64,
             np.dtype(np.bool_): TensorProto.BOOL, np.dtype(np.float16): TensorProto.FLOAT16,
             np.dtype(np.uint16): TensorProto.UINT16}
    graph = helper.make_graph(
        nodes, "m", [_vi(n, list(a.shape), types[a.dtype]) for n, a in inputs.items()],
        [helper.make_tensor_value_info(n, t, None) for n, t in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return list(GraphcBackend.prepare(model, mode=mode).run(list(inputs.values())))


@pytest.mark.parametrize("equation,shapes", [
    ("ij->ji", [(3, 4)]), ("...ii->...i", [(2, 3, 3)]), ("i,i", [(5,), (5,)]),
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]), ("ij,kl->ijkl", [(2, 3), (4, 5)]),
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (5, 4, 2)]),
    ("abc,cd,de->abe", [(2, 3, 4), (4, 5), (5, 6)]),
    ("iij->j", [(3, 3, 2)]), ("ba,b", [(3, 4), (3,)])])
def test_einsum_matches_numpy(equation: str, shapes: list) -> None:
    rng = np.random.default_rng(0)
    xs = {f"x{i}": rng.standard_normal(s).astype(np.float32) for i, s in enumerate(shapes)}
    (got,) = _run_model([helper.make_node("Einsum", list(xs), ["y"], equation=equation)], xs,
                        [("y", TensorProto.FLOAT)], opset=13)
    np.testing.assert_allclose(got, np.einsum(equation, *xs.values()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["reference", "compile"])
def test_topk_breaks_ties_by_index_even_at_the_fill_value(mode: str) -> None:
    x = np.array([[-np.inf, 2.0, -np.inf, 2.0, 1.0]], np.float32)
    k = numpy_helper.from_array(np.array([5], np.int64), "k")
    graph = helper.make_graph([helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1)], "m",
                              [_vi("x", [1, 5])], [_vi("v", [1, 5]),
                                                   _vi("i", [1, 5], TensorProto.INT64)], [k])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    from graphc.onnx.backend import GraphcBackend

    v, i = GraphcBackend.prepare(model, mode=mode).run([x])
    np.testing.assert_array_equal(i, [[1, 3, 4, 0, 2]])
    np.testing.assert_array_equal(v, [[2, 2, 1, -np.inf, -np.inf]])


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64, np.uint64])
def test_bitwise_ops_match_numpy_over_the_whole_range(dtype: type) -> None:
    info = np.iinfo(dtype)
    rng = np.random.default_rng(1)
    x = rng.integers(info.min, info.max, 64, dtype=dtype, endpoint=True)
    y = rng.integers(info.min, info.max, 64, dtype=dtype, endpoint=True)
    x[:2], y[:2] = [info.min, info.max], [info.max, info.min]
    nodes = [helper.make_node(op, ["x", "y"][:n], [op]) for op, n in
             (("BitwiseAnd", 2), ("BitwiseOr", 2), ("BitwiseXor", 2), ("BitwiseNot", 1))]
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    got = _run_model(nodes, {"x": x, "y": y}, [(n.op_type, elem) for n in nodes], opset=18,
                     mode="compile")
    for out, want in zip(got, (x & y, x | y, x ^ y, ~x)):
        np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inverse_trigonometry_is_accurate_to_a_few_ulps(dtype: type) -> None:
    x = np.concatenate([np.linspace(-1, 1, 2001), np.linspace(-50, 50, 2001),
                        [np.inf, -np.inf, 1.5, 0.66, 2.4142135623730951]]).astype(dtype)
    nodes = [helper.make_node(op, ["x"], [op]) for op in ("Atan", "Asin", "Acos")]
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    got = _run_model(nodes, {"x": x}, [(op, elem) for op in ("Atan", "Asin", "Acos")])
    with np.errstate(invalid="ignore"):
        wants = (np.arctan(x), np.arcsin(x), np.arccos(x))
    for out, want in zip(got, wants):
        np.testing.assert_array_equal(np.isnan(out), np.isnan(want))
        ok = ~np.isnan(want)
        np.testing.assert_allclose(out[ok], want[ok], rtol=4 * np.finfo(dtype).eps, atol=0)


def test_integer_pow_and_requantized_matmul() -> None:
    a = np.array([2, 3, -3, 7], np.int64)
    got = _run_model([helper.make_node("Pow", ["a", "b"], ["p"]),
                      helper.make_node("Pow", ["a", "f"], ["q"])],
                     {"a": a, "b": np.array([10, 4, 3, 0], np.int64),
                      "f": np.array([0.5, 2.0, 3.0, 1.5], np.float32)},
                     [("p", TensorProto.INT64), ("q", TensorProto.INT64)], opset=15)
    np.testing.assert_array_equal(got[0], [1024, 81, -27, 1])
    np.testing.assert_array_equal(got[1], [1, 9, -27, 18])  # truncated: 2**0.5, 7**1.5
    ua = np.array([[208, 236, 0, 238], [3, 214, 255, 29]], np.uint8)
    ub = np.array([[152, 51, 244], [60, 26, 255], [0, 127, 246], [127, 254, 247]], np.uint8)
    scalars = {"sa": np.float32(0.0066), "za": np.uint8(113), "sb": np.float32(0.00705),
               "zb": np.uint8(114), "sy": np.float32(0.0107), "zy": np.uint8(118)}
    inputs = {"a": ua, "sa": scalars["sa"], "za": scalars["za"], "b": ub,
              "sb": scalars["sb"], "zb": scalars["zb"], "sy": scalars["sy"],
              "zy": scalars["zy"]}
    inputs = {n: np.asarray(v) for n, v in inputs.items()}
    (y,) = _run_model([helper.make_node("QLinearMatMul", list(inputs), ["y"])], inputs,
                      [("y", TensorProto.UINT8)])
    acc = (ua.astype(np.int32) - 113) @ (ub.astype(np.int32) - 114)
    want = np.clip(np.rint(acc * (np.float32(0.0066) * np.float32(0.00705) / np.float32(0.0107))
                           + 118), 0, 255)
    np.testing.assert_array_equal(y, want)


def test_attention_sliding_window_and_padded_keys_match_a_numpy_reference() -> None:
    rng = np.random.default_rng(2)
    q = rng.standard_normal((2, 2, 3, 4)).astype(np.float32)
    k = rng.standard_normal((2, 2, 6, 4)).astype(np.float32)
    v = rng.standard_normal((2, 2, 6, 4)).astype(np.float32)
    nonpad = np.array([4, 6], np.int64)
    y, qk = _run_model([helper.make_node("Attention", ["q", "k", "v", "", "", "", "n"],
                                         ["y", "", "", "qk"], is_causal=1, left_window_size=1,
                                         qk_matmul_output_mode=3)],
                       {"q": q, "k": k, "v": v, "n": nonpad},
                       [("y", TensorProto.FLOAT), ("qk", TensorProto.FLOAT)], opset=24)
    scores = q @ k.transpose(0, 1, 3, 2) / 2.0
    i, j = np.arange(3)[:, None], np.arange(6)[None, :]
    for b in range(2):
        diff = i + nonpad[b] - 3 - j  # the query block ends where the keys do
        allowed = (diff >= 0) & (diff <= 1) & (j < nonpad[b])
        s = np.where(allowed, scores[b], -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        np.testing.assert_allclose(qk[b], p, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(y[b], p @ v[b], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["reference", "compile"])
@pytest.mark.parametrize("float_type,int_type", [(np.float64, np.int64), (np.float32, np.int32),
                                                 (np.float16, np.uint16)])
def test_bitcast_round_trips_every_kind_of_float(mode: str, float_type: type,
                                                 int_type: type) -> None:
    """Random bit patterns (NaNs aside), signed zeros, infinities, the extreme normals and
    subnormals: float -> int gives numpy's view, int -> float gives the value back."""
    info = np.finfo(float_type)
    rng = np.random.default_rng(3)
    unsigned = np.dtype(f"u{np.dtype(int_type).itemsize}")
    bits = rng.integers(0, np.iinfo(unsigned).max, 500, dtype=np.uint64).astype(unsigned)
    x = bits.view(float_type)
    x = np.concatenate([x[~np.isnan(x)], np.array(
        [0.0, -0.0, np.inf, -np.inf, info.max, -info.max, info.tiny, info.smallest_subnormal,
         -info.smallest_subnormal], float_type)])
    to_int = helper.np_dtype_to_tensor_dtype(np.dtype(int_type))
    to_float = helper.np_dtype_to_tensor_dtype(np.dtype(float_type))
    (got_bits,) = _run_model([helper.make_node("BitCast", ["x"], ["y"], to=to_int)], {"x": x},
                             [("y", to_int)], opset=26, mode=mode)
    np.testing.assert_array_equal(got_bits, x.view(int_type))
    (back,) = _run_model([helper.make_node("BitCast", ["b"], ["y"], to=to_float)],
                         {"b": x.view(int_type)}, [("y", to_float)], opset=26, mode=mode)
    np.testing.assert_array_equal(back.view(unsigned), x.view(unsigned))


@pytest.mark.parametrize("round_mode", ["up", "down", "nearest"])
@pytest.mark.parametrize("saturate", [1, 0])
def test_a_cast_to_float8e8m0_matches_onnx_for_every_float32(round_mode: str,
                                                            saturate: int) -> None:
    rng = np.random.default_rng(4)
    x = rng.integers(0, 2 ** 32 - 1, 2000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = np.concatenate([x, np.array([0.0, -0.0, 1.5, 3.0, 3.4e38, np.inf, np.nan, 1e-45, -5.0],
                                    np.float32)])
    (got,) = _run_model([helper.make_node("Cast", ["x"], ["q"], to=TensorProto.FLOAT8E8M0,
                                          saturate=saturate, round_mode=round_mode),
                         helper.make_node("Cast", ["q"], ["y"], to=TensorProto.FLOAT)],
                        {"x": x}, [("y", TensorProto.FLOAT)], opset=25)
    want = numpy_helper.to_float8e8m0(x, bool(saturate), round_mode).astype(np.float32)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("mode", ["TF", "IDF", "TFIDF"])
def test_tfidf_vectorizer_matches_onnx_reference_with_skips_and_trigrams(mode: str) -> None:
    from onnx.reference import ReferenceEvaluator

    attrs = {"mode": mode, "min_gram_length": 1, "max_gram_length": 3, "max_skip_count": 2,
             "ngram_counts": [0, 4, 12], "ngram_indexes": [9, 0, 1, 2, 3, 4, 5, 6, 7, 8],
             "pool_int64s": [2, 3, 5, 4, 5, 6, 7, 8, 6, 7, 3, 3, 3, 3, 3, 5, 6, 7],
             "weights": [0.5, 1.5, 2.0, 3.0, 1.0, 1.0, 1.0, 2.0, 4.0, 5.0]}
    x = np.random.default_rng(0).integers(2, 9, (3, 11)).astype(np.int64)
    node = helper.make_node("TfIdfVectorizer", ["x"], ["y"], **attrs)
    (got,) = _run_model([node], {"x": x}, [("y", TensorProto.FLOAT)], opset=13)
    graph = helper.make_graph([node], "m", [_vi("x", [3, 11], TensorProto.INT64)],
                              [_vi("y", [3, 10])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    np.testing.assert_allclose(got, ReferenceEvaluator(model).run(None, {"x": x})[0])


def _reference_cases() -> list:
    """(name, node, inputs, opset) for ops checked against onnx's reference evaluator with
    random data beyond what ONNX's node suite covers."""
    rng = np.random.default_rng(7)
    f32 = np.float32
    boxes = rng.uniform(-2, 12, (5, 4)).astype(f32)
    rois = np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]),
                           np.maximum(boxes[:, :2], boxes[:, 2:])], 1)
    return [
        ("gridsample-cubic-reflection",
         helper.make_node("GridSample", ["x", "g"], ["y"], mode="cubic",
                          padding_mode="reflection"),
         {"x": rng.standard_normal((2, 3, 4, 5)).astype(f32),
          "g": rng.uniform(-1.6, 1.6, (2, 3, 4, 2)).astype(f32)}, 22),
        ("gridsample-3d-nearest-border",
         helper.make_node("GridSample", ["x", "g"], ["y"], mode="nearest",
                          padding_mode="border", align_corners=1),
         {"x": rng.standard_normal((1, 2, 3, 4, 5)).astype(f32),
          "g": rng.uniform(-1.6, 1.6, (1, 2, 3, 2, 3)).astype(f32)}, 22),
        ("roialign-max", helper.make_node("RoiAlign", ["x", "r", "b"], ["y"], mode="max",
                                          output_height=3, output_width=4, sampling_ratio=3,
                                          spatial_scale=0.8),
         {"x": rng.standard_normal((2, 3, 9, 11)).astype(f32), "r": rois,
          "b": rng.integers(0, 2, 5).astype(np.int64)}, 22),
        ("deformconv-groups-mask",
         helper.make_node("DeformConv", ["x", "w", "o", "b", "m"], ["y"], group=2,
                          offset_group=2, pads=[1, 2, 1, 0], strides=[2, 1], kernel_shape=[2, 3]),
         {"x": rng.standard_normal((2, 4, 7, 8)).astype(f32),
          "w": rng.standard_normal((6, 2, 2, 3)).astype(f32),
          "o": rng.uniform(-2, 2, (2, 24, 4, 8)).astype(f32),
          "b": rng.standard_normal(6).astype(f32),
          "m": rng.uniform(0, 1, (2, 12, 4, 8)).astype(f32)}, 22),
        ("scatternd-max-duplicates",
         helper.make_node("ScatterND", ["d", "i", "u"], ["y"], reduction="max"),
         {"d": rng.standard_normal((4, 5, 3)).astype(f32),
          "i": rng.integers(0, 4, (6, 2)).astype(np.int64),
          "u": rng.standard_normal((6, 3)).astype(f32)}, 18),
        ("det-pivoting", helper.make_node("Det", ["x"], ["y"]),
         {"x": np.concatenate([rng.standard_normal((2, 5, 5)),
                               np.zeros((1, 5, 5))]).astype(np.float64)}, 22),
    ]


@pytest.mark.parametrize("mode", ["reference", "compile"])
@pytest.mark.parametrize("case", _reference_cases(), ids=lambda c: c[0])
def test_ops_match_onnx_reference_evaluator(case: tuple, mode: str) -> None:
    from onnx.reference import ReferenceEvaluator

    _, node, inputs, opset = case
    got = _run_model([node], inputs, [("y", TensorProto.FLOAT if node.op_type != "Det"
                                       else TensorProto.DOUBLE)], opset=opset, mode=mode)[0]
    graph = helper.make_graph([node], "m", [
        _vi(n, list(a.shape), helper.np_dtype_to_tensor_dtype(a.dtype)) for n, a in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.UNDEFINED, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    want = ReferenceEvaluator(model).run(None, inputs)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_ops_of_other_domains_import_by_their_domain_and_version() -> None:
    """A training-domain Adam (no default-domain opset) at step 0 and step 3, against onnx's
    reference; an op of an unknown domain is reported with its domain's version."""
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(5)
    inputs = {"r": np.array(0.1, np.float32), "t": np.array(0, np.int64),
              "x": rng.standard_normal(4).astype(np.float32),
              "g": rng.standard_normal(4).astype(np.float32),
              "v": rng.standard_normal(4).astype(np.float32),
              "h": rng.uniform(0.1, 1, 4).astype(np.float32)}
    node = helper.make_node("Adam", list(inputs), ["x2", "v2", "h2"], alpha=0.8, beta=0.9,
                            epsilon=1e-3, norm_coefficient=0.01,
                            domain="ai.onnx.preview.training")
    graph = helper.make_graph([node], "m", [
        _vi(n, list(a.shape), helper.np_dtype_to_tensor_dtype(a.dtype)) for n, a in inputs.items()],
        [_vi(n, [4]) for n in ("x2", "v2", "h2")])
    model = helper.make_model(graph, opset_imports=[
        helper.make_opsetid("ai.onnx.preview.training", 1)])
    from graphc.onnx.backend import GraphcBackend

    rep = GraphcBackend.prepare(model)
    for step in (0, 3):
        inputs["t"] = np.array(step, np.int64)
        want = ReferenceEvaluator(model).run(None, inputs)
        for got, expected in zip(rep.run(list(inputs.values())), want):
            np.testing.assert_allclose(got, expected, rtol=1e-5)
    other = _model([helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")],
                   [_vi("x", [2])], [_vi("y", [2])])
    proto = onnx.load_from_string(other)
    proto.opset_import.append(helper.make_opsetid("com.example", 3))
    with pytest.raises(OnnxError, match=r"com\.example\.Frobnicate \(opset 3\)"):
        gc.onnx.load(proto)


@pytest.mark.parametrize("aggregate", [0, 1, 2, 3])
def test_tree_ensemble_of_two_trees_matches_onnx_reference(aggregate: int) -> None:
    """Two trees (node 0 and node 3 are roots) over two targets, with a missing value sent
    down the true branch; AVERAGE, SUM, MIN and MAX."""
    from onnx.reference import ReferenceEvaluator

    node = helper.make_node(
        "TreeEnsemble", ["X"], ["Y"], domain="ai.onnx.ml", n_targets=2,
        aggregate_function=aggregate, post_transform=0, tree_roots=[0, 3],
        nodes_featureids=[0, 1, 1, 1], nodes_truenodeids=[1, 0, 2, 4],
        nodes_trueleafs=[0, 1, 1, 1], nodes_falsenodeids=[2, 1, 3, 5],
        nodes_falseleafs=[1, 1, 1, 1], nodes_missing_value_tracks_true=[1, 0, 0, 0],
        nodes_modes=numpy_helper.from_array(np.array([0, 3, 0, 1], np.uint8)),
        nodes_splits=numpy_helper.from_array(np.array([0.5, -0.2, 0.0, 0.3], np.float32)),
        leaf_targetids=[0, 1, 0, 1, 0, 1],
        leaf_weights=numpy_helper.from_array(
            np.array([1.5, -2.0, 3.0, 0.25, 7.0, -1.0], np.float32)))
    x = np.random.default_rng(6).standard_normal((8, 2)).astype(np.float32)
    x[0, 0] = np.nan
    graph = helper.make_graph([node], "m", [_vi("X", [8, 2])], [_vi("Y", [8, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("ai.onnx.ml", 5)])
    from graphc.onnx.backend import GraphcBackend

    got = GraphcBackend.prepare(model).run([x])[0]
    np.testing.assert_allclose(got, ReferenceEvaluator(model).run(None, {"X": x})[0],
                               rtol=1e-6)


def test_if_takes_the_branch_its_import_time_condition_selects() -> None:
    """The condition comes from x's shape (known at import); the branch reads x from the
    enclosing graph and nests a second If; a run-time condition selects at run time."""
    def branch(name: str, nodes: list, out: str) -> object:
        return helper.make_graph(nodes, name, [], [_vi(out, None)])

    inner = helper.make_node("If", ["c"], ["z"], then_branch=branch(
        "t2", [helper.make_node("Neg", ["w"], ["z2"])], "z2"), else_branch=branch(
        "e2", [helper.make_node("Abs", ["w"], ["z3"])], "z3"))
    then = branch("t", [helper.make_node("Relu", ["x"], ["w"]), inner,
                        helper.make_node("Identity", ["z"], ["y1"])], "y1")
    other = branch("e", [helper.make_node("Sigmoid", ["x"], ["y2"])], "y2")
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Constant", [], ["i"], value=numpy_helper.from_array(
                 np.array(1, np.int64))),
             helper.make_node("Gather", ["s", "i"], ["n"]),
             helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(
                 np.array(2, np.int64))),
             helper.make_node("Greater", ["n", "k"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    data = _model(nodes, [_vi("x", [2, 3])], [_vi("y", [2, 3])], opset=17)
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    (y,) = gc.reference(gc.onnx.load(data), signature="main")(x)
    np.testing.assert_array_equal(y, -np.maximum(x, 0))  # 3 > 2: then, and inner then
    # A run-time condition: a cond node of both branches (tests/test_onnx_control.py).
    runtime = _model([helper.make_node("If", ["b"], ["y"], then_branch=branch(
        "t", [helper.make_node("Relu", ["x"], ["y1"])], "y1"), else_branch=other)],
        [_vi("b", [], TensorProto.BOOL), _vi("x", [2, 3])], [_vi("y", [2, 3])])
    run = gc.reference(gc.onnx.load(runtime), signature="main")
    np.testing.assert_array_equal(run(np.array(True), x)[0], np.maximum(x, 0))
    np.testing.assert_allclose(run(np.array(False), x)[0], 1 / (1 + np.exp(-x)), rtol=1e-6)


def test_scan_and_loop_unroll_as_onnx_reference_runs_them() -> None:
    """Scan: a running sum (state) over a reversed scan input, the partial sums stacked
    along axis 1 in reverse (which onnx's reference evaluator does not run); Loop: 3
    iterations of y += i with the per-step values."""
    body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "x_t"], ["s_out"]),
         helper.make_node("Identity", ["s_out"], ["y_t"])], "body",
        [_vi("s_in", [2]), _vi("x_t", [2])], [_vi("s_out", [2]), _vi("y_t", [2])])
    scan = helper.make_node("Scan", ["s0", "x"], ["s", "ys"], body=body, num_scan_inputs=1,
                            scan_input_directions=[1], scan_output_axes=[1],
                            scan_output_directions=[1])
    loop_body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]),
         helper.make_node("Cast", ["i"], ["f"], to=TensorProto.FLOAT),
         helper.make_node("Add", ["y_in", "f"], ["y_out"]),
         helper.make_node("Identity", ["y_out"], ["step"])], "loop_body",
        [_vi("i", [], TensorProto.INT64), _vi("c_in", [], TensorProto.BOOL), _vi("y_in", [2])],
        [_vi("c_out", [], TensorProto.BOOL), _vi("y_out", [2]), _vi("step", [2])])
    loop = helper.make_node("Loop", ["m", "c", "s0"], ["y", "steps"], body=loop_body)
    inits = [numpy_helper.from_array(np.array(3, np.int64), "m"),
             numpy_helper.from_array(np.array(True), "c")]
    graph = helper.make_graph([scan, loop], "m", [_vi("s0", [2]), _vi("x", [4, 2])],
                              [_vi("s", [2]), _vi("ys", [2, 4]), _vi("y", [2]),
                               _vi("steps", [3, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"s0": np.array([1.0, -1.0], np.float32),
             "x": np.arange(8, dtype=np.float32).reshape(4, 2)}
    s, ys, y, steps = gc.reference(gc.onnx.load(model), signature="main")(*feeds.values())
    np.testing.assert_array_equal(s, [13, 15])  # 1 + 6 + 4 + 2 + 0, -1 + 7 + 5 + 3 + 1
    np.testing.assert_array_equal(ys, [[13, 13, 11, 7], [15, 14, 11, 6]])
    np.testing.assert_array_equal(y, [4, 2])
    np.testing.assert_array_equal(steps, [[1, -1], [2, 0], [4, 2]])
