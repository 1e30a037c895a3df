"""`gc.onnx.load` on bad input: a clear `GraphcError`, never a raw exception.

Missing onnx package, malformed bytes, unsupported ops (all listed in one error), unbound
symbolic dims, inputs bound by `dims`/`shapes`/`constants`, names made valid, external data,
the command line; opset-6 broadcasting, and the windows composed from 2-D kernels (3-D
convolution, dilated and ceil-mode pooling). The conversions of single ops ONNX's node
suite checks only lightly are in tests/test_onnx_import_ops.py.
"""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest

import graphc as gc
from graphc.onnx.model import OnnxError


def test_without_onnx_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now fails
    with pytest.raises(gc.GraphcError, match=r"pip install 'graphc\[onnx\]'"):
        gc.onnx.load(b"\x08\x07")


onnx = pytest.importorskip("onnx", reason="needs onnx: pip install 'graphc[onnx]'")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from tests.onnx_helpers import model_bytes as _model  # noqa: E402
from tests.onnx_helpers import value_info as _vi  # noqa: E402


@pytest.mark.parametrize("data", [b"", b"\xff\xff\xff", b"\x0a\x05abc", bytes(range(256))])
def test_malformed_bytes_are_a_graphc_error(data: bytes) -> None:
    with pytest.raises(OnnxError):
        gc.onnx.load(data)


def test_truncated_models_are_graphc_errors() -> None:
    good = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [2, 3])], [_vi("y", [2, 3])])
    for cut in range(0, len(good), 3):
        try:
            gc.onnx.load(good[:cut])
        except gc.GraphcError:
            pass  # refused cleanly (or, for some cuts, still a valid prefix)


def test_every_unsupported_op_is_listed_at_once() -> None:
    data = _model([helper.make_node("Relu", ["x"], ["a"]),
                   helper.make_node("StringSplit", ["a"], ["b"], name="u1"),
                   helper.make_node("RegexFullMatch", ["b"], ["c"], name="nz"),
                   helper.make_node("StringSplit", ["c"], ["y"], name="u2")],
                  [_vi("x", [4])], [_vi("y", [None])])
    with pytest.raises(OnnxError) as info:
        gc.onnx.load(data)
    text = str(info.value)
    assert "2 unsupported op(s)" in text
    assert "StringSplit (opset 17): nodes 'u1', 'u2'" in text and "RegexFullMatch" in text


def test_symbolic_dims_are_bound_or_named_in_the_error() -> None:
    data = _model([helper.make_node("Relu", ["x:0"], ["y"])], [_vi("x:0", ["batch", 3])],
                  [_vi("y", ["batch", 3])])
    with pytest.raises(OnnxError, match="dimension 0 is 'batch' and unbound"):
        gc.onnx.load(data)
    g = gc.onnx.load(data, dims={"batch": 5})
    (x,) = g.signatures["main"].inputs
    assert x.shape == (5, 3) and x.name == "x_0"  # ':' is not a graphc name character
    g = gc.onnx.load(data, shapes={"x:0": (2, 3)})
    assert g.signatures["main"].inputs[0].shape == (2, 3)


def test_a_shape_input_given_as_a_constant() -> None:
    data = _model([helper.make_node("Reshape", ["x", "s"], ["y"])],
                  [_vi("x", [2, 6]), _vi("s", [2], TensorProto.INT64)], [_vi("y", [3, 4])])
    with pytest.raises(OnnxError, match="'shape' must be known"):
        gc.onnx.load(data)
    g = gc.onnx.load(data, constants={"s": [3, 4]})
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    (y,) = gc.reference(g, signature="main")(x)
    np.testing.assert_array_equal(y, x.reshape(3, 4))


def test_float16_is_computed_in_float32() -> None:
    data = _model([helper.make_node("Add", ["x", "x"], ["y"])],
                  [_vi("x", [3], TensorProto.FLOAT16)], [_vi("y", [3], TensorProto.FLOAT16)])
    g = gc.onnx.load(data)
    assert g.signatures["main"].inputs[0].dtype == gc.float32


def test_initializers_are_variables_or_constants() -> None:
    w = numpy_helper.from_array(np.ones((3, 3), np.float32), "w")
    data = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [_vi("x", [1, 3])],
                  [_vi("y", [1, 3])], [w])
    assert [v.name for v in gc.onnx.load(data).trainable_variables] == ["w"]
    assert gc.onnx.load(data, trainable=False).trainable_variables == []


def test_a_wrong_attribute_value_is_a_graphc_error() -> None:
    data = _model([helper.make_node("Transpose", ["x"], ["y"], perm=[0, 0])], [_vi("x", [2, 3])],
                  [_vi("y", [3, 2])])
    with pytest.raises(OnnxError, match=r"Transpose node .*perm"):
        gc.onnx.load(data)


def test_opset_6_broadcasts_only_when_asked() -> None:
    """Before opset 7, Add broadcasts only with broadcast=1, aligning B at `axis`."""
    b = numpy_helper.from_array(np.arange(3, dtype=np.float32), "b")
    asked = _model([helper.make_node("Add", ["x", "b"], ["y"], broadcast=1, axis=1)],
                   [_vi("x", [2, 3, 4])], [_vi("y", [2, 3, 4])], [b], opset=6)
    x = np.zeros((2, 3, 4), np.float32)
    (y,) = gc.reference(gc.onnx.load(asked), signature="main")(x)
    np.testing.assert_array_equal(y, np.broadcast_to(np.arange(3.0)[:, None], (2, 3, 4)))
    unasked = _model([helper.make_node("Add", ["x", "b"], ["y"], name="plus")],
                     [_vi("x", [2, 3, 4])], [_vi("y", [2, 3, 4])], [b], opset=6)
    with pytest.raises(OnnxError, match=r"Add node 'plus'.*without broadcast=1"):
        gc.onnx.load(unasked)


@pytest.mark.parametrize("include_pad", [0, 1])
def test_pooling_with_ceil_mode_dilation_and_3d_matches_onnx_reference(include_pad: int
                                                                       ) -> None:
    """Windows graphc's 2-D kernels do not take (3-D, dilated, ceil_mode with counted pads)
    go through strided slices; onnx's reference evaluator is the oracle."""
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(0)
    cases = [("AveragePool", [1, 2, 7, 6], dict(kernel_shape=[3, 2], strides=[2, 2],
                                                pads=[1, 0, 1, 1], ceil_mode=1,
                                                count_include_pad=include_pad)),
             ("MaxPool", [1, 2, 9, 8], dict(kernel_shape=[2, 3], dilations=[2, 2],
                                            strides=[1, 2], pads=[1, 1, 0, 1])),
             ("AveragePool", [1, 2, 5, 6, 7], dict(kernel_shape=[2, 3, 2], strides=[2, 1, 2],
                                                   pads=[0, 1, 1, 1, 1, 0],
                                                   count_include_pad=include_pad))]
    for op, shape, attrs in cases:
        data = _model([helper.make_node(op, ["x"], ["y"], **attrs)], [_vi("x", shape)],
                      [_vi("y", None)])
        x = rng.normal(size=shape).astype(np.float32)
        (want,) = ReferenceEvaluator(onnx.load_from_string(data)).run(None, {"x": x})
        g = gc.onnx.load(data)
        (got,) = gc.reference(g, signature="main")(x)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=op)
        f = gc.compile(g, signature="main", options=gc.CompileOptions(threads=1,
                                                                       cache_dir=None))
        np.testing.assert_allclose(f(x)[0], want, rtol=1e-5, atol=1e-6, err_msg=op)


def test_conv_3d_matches_onnx_reference_and_has_gradients() -> None:
    from onnx.reference import ReferenceEvaluator

    from graphc.onnx.convert import Context
    from graphc.onnx.rules.windows import conv3d

    rng = np.random.default_rng(1)
    w = rng.normal(size=(4, 1, 2, 3, 2)).astype(np.float32)
    data = _model([helper.make_node("Conv", ["x", "w"], ["y"], group=2, strides=[2, 1, 2],
                                    pads=[1, 0, 1, 0, 1, 1], dilations=[1, 2, 1])],
                  [_vi("x", [2, 2, 5, 7, 6])], [_vi("y", None)],
                  [numpy_helper.from_array(w, "w")])
    x = rng.normal(size=(2, 2, 5, 7, 6)).astype(np.float32)
    (want,) = ReferenceEvaluator(onnx.load_from_string(data)).run(None, {"x": x})
    g = gc.onnx.load(data)
    (got,) = gc.reference(g, signature="main")(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # A gradient flows through the composition (2-D convolutions of depth slices): the
    # weight gradient of <y, r> matches central differences in float64.
    r = rng.normal(size=want.shape)
    with gc.Graph("conv3d") as g64:
        xp = gc.placeholder(x.shape, gc.float64, name="x")
        wv = gc.variable(w.astype(np.float64), name="w")
        attrs = dict(group=2, strides=[2, 1, 2], pads=[1, 0, 1, 0, 1, 1], dilations=[1, 2, 1])
        y = conv3d(Context(g64, 17), xp, wv, None, attrs)
        loss = gc.sum(y * gc.constant(r))
        gw = gc.grad(loss, wv)
    fn = gc.reference(g64, inputs=[xp], outputs=[loss, gw])
    x64 = x.astype(np.float64)
    _, got_gw = fn(x64)
    idx, eps = (1, 0, 1, 2, 0), 1e-6

    def loss_at(delta: float) -> float:
        w2 = w.astype(np.float64)
        w2[idx] += delta
        return float(np.sum(ReferenceEvaluator(onnx.load_from_string(_model(
            [helper.make_node("Conv", ["x", "w"], ["y"], **attrs)],
            [_vi("x", list(x.shape), TensorProto.DOUBLE)], [_vi("y", None, TensorProto.DOUBLE)],
            [numpy_helper.from_array(w2, "w")]))).run(None, {"x": x64})[0] * r))
    numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    assert got_gw[idx] == pytest.approx(numeric, rel=1e-6)


def test_a_path_that_is_not_a_file(tmp_path: object) -> None:
    with pytest.raises(OnnxError, match="not a regular file"):
        gc.onnx.load(str(tmp_path))


def test_the_command_line_takes_onnx_models(tmp_path: object) -> None:
    from pathlib import Path

    from graphc.cli import main as cli

    tmp = Path(str(tmp_path))
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "w")
    data = _model([helper.make_node("MatMul", ["x", "w"], ["h"]),
                   helper.make_node("Relu", ["h"], ["y"])],
                  [_vi("x", ["batch", 4])], [_vi("y", ["batch", 3])], [w])
    model = tmp / "tiny.onnx"
    model.write_bytes(data)
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    np.save(tmp / "x.npy", x)
    assert cli.main(["dump", str(model), "--dim", "batch=2", "--stage", "fused"]) == 0
    assert cli.main(["dump", str(model)]) == 1  # batch unbound: a GraphcError, exit 1
    assert cli.main(["dump", str(model), "--dim", "batch"]) == 2  # usage
    assert cli.main(["convert", str(model), str(tmp / "tiny.gcg"), "--dim", "batch=2"]) == 0
    g = gc.load(str(tmp / "tiny.gcg"))
    assert list(g.variables) == ["w"]  # converted to fine-tune: its weights stay variables
    (y,) = gc.reference(g, signature="main")(x)
    np.testing.assert_allclose(y, np.maximum(x @ (np.arange(12).reshape(4, 3) / 10), 0),
                               rtol=1e-6)
    out = tmp / "out.npz"
    assert cli.main(["run", str(model), "--dim", "batch=2", "--input", f"x={tmp / 'x.npy'}",
                     "--output", str(out)]) == 0
    np.testing.assert_allclose(next(iter(np.load(out).values())), y, rtol=1e-6)
    back = tmp / "back.onnx"
    assert cli.main(["convert", str(model), str(back), "--dim", "batch=2"]) == 0
    (y2,) = gc.reference(gc.onnx.load(str(back)), signature="main")(x)
    np.testing.assert_allclose(y2, y, rtol=1e-6)
    assert cli.main(["convert", str(model), str(tmp / "out.txt"), "--dim", "batch=2"]) == 2
    # And back from the .gcg graph to ONNX.
    assert cli.main(["convert", str(tmp / "tiny.gcg"), str(tmp / "again.onnx")]) == 0
    (y3,) = gc.reference(gc.onnx.load(str(tmp / "again.onnx")), signature="main")(x)
    np.testing.assert_allclose(y3, y, rtol=1e-6)
    # Drawn (a .dot file needs no Graphviz) and compiled to a library with its header.
    assert cli.main(["viz", str(model), "--dim", "batch=2", "--stage", "fused", "-o",
                     str(tmp / "tiny.dot")]) == 0
    assert "digraph" in (tmp / "tiny.dot").read_text()
    if shutil.which("cc"):
        assert cli.main(["compile", str(model), "--dim", "batch=2", "-o",
                         str(tmp / "libtiny.so")]) == 0
        # Compiled for inference, as ONNX Runtime would: the weights are constants.
        lib = gc.runtime.load(tmp / "libtiny.so")
        assert not lib.variables
        (got,) = lib(x)
        np.testing.assert_allclose(got, y, rtol=1e-6)
        # Asked for external weights, the library keeps the model's as variables in NAME.bin.
        assert cli.main(["compile", str(model), "--dim", "batch=2", "--weights", "external",
                         "-o", str(tmp / "libtinyx.so")]) == 0
        assert list(gc.runtime.load(tmp / "libtinyx.so").variables) == ["w"]
        assert (tmp / "libtiny.so").exists() and (tmp / "tiny.h").exists()


def _external_model(tmp: object, location: str = "weights.bin") -> object:
    """A MatMul model whose weight lives in an external file `location` beside it."""
    from pathlib import Path

    folder = Path(str(tmp))
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    tensor = numpy_helper.from_array(w, "w")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(w.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    data = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [_vi("x", [2, 4])],
                  [_vi("y", [2, 3])], [tensor])
    (folder / "model.onnx").write_bytes(data)
    return folder, w


def test_external_data_is_read_from_the_model_folder(tmp_path: object) -> None:
    folder, w = _external_model(tmp_path)
    (folder / "weights.bin").write_bytes(w.tobytes())
    g = gc.onnx.load(str(folder / "model.onnx"))
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(gc.reference(g, signature="main")(x)[0], x @ w)
    with pytest.raises(OnnxError, match="load the model from its path"):
        gc.onnx.load((folder / "model.onnx").read_bytes())
    (folder / "weights.bin").write_bytes(w.tobytes()[:20])
    with pytest.raises(OnnxError, match="ends after 20 of 48 bytes"):
        gc.onnx.load(str(folder / "model.onnx"))


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "sub/../../x.bin"])
def test_external_data_never_escapes_the_model_folder(tmp_path: object, location: str) -> None:
    from pathlib import Path

    inner = Path(str(tmp_path)) / "model"
    inner.mkdir()
    (Path(str(tmp_path)) / "outside.bin").write_bytes(bytes(48))
    folder, _ = _external_model(inner, location)
    with pytest.raises(OnnxError, match=r"relative path|outside the model's folder"):
        gc.onnx.load(str(folder / "model.onnx"))


def test_external_data_through_a_symlink_out_is_refused(tmp_path: object) -> None:
    from pathlib import Path

    inner = Path(str(tmp_path)) / "model"
    inner.mkdir()
    (Path(str(tmp_path)) / "secret.bin").write_bytes(bytes(48))
    (inner / "weights.bin").symlink_to(Path(str(tmp_path)) / "secret.bin")
    folder, _ = _external_model(inner)
    with pytest.raises(OnnxError, match="outside the model's folder"):
        gc.onnx.load(str(folder / "model.onnx"))
