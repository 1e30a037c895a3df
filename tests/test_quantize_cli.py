"""`graphc compile MODEL --quantize dynamic|static --calibration data.npz` and its report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import graphc as gc
from graphc.cli.exported import main_export

MODEL_PY = """
import numpy as np
import graphc as gc

def build():
    rng = np.random.default_rng(0)
    with gc.Graph("qmlp") as g:
        x = gc.placeholder((8, 32), name="x")
        w1 = gc.constant(rng.standard_normal((32, 24)).astype(np.float32) / 6, name="w1")
        w2 = gc.constant(rng.standard_normal((24, 5)).astype(np.float32) / 5, name="w2")
        h = gc.relu(gc.matmul(x, w1, name="fc1"))
        out = gc.matmul(h, w2, name="fc2")
        gc.matmul(x, x, transpose_a=True, name="gram")
    g.add_signature("predict", [x], [out])
    return g
"""


@pytest.fixture
def model(tmp_path: Path) -> str:
    path = tmp_path / "model.py"
    path.write_text(MODEL_PY)
    return f"{path}:build"


def _calibration(tmp_path: Path, count: int = 3, **extra: np.ndarray) -> Path:
    rng = np.random.default_rng(1)
    path = tmp_path / "calib.npz"
    np.savez(path, x=rng.standard_normal((count, 8, 32)).astype(np.float32), **extra)
    return path


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_quantized_library_and_report(model: str, tmp_path: Path, mode: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    lib = tmp_path / f"libq{mode}.so"
    calib = _calibration(tmp_path)
    assert main_export(["compile", model, "-o", str(lib), "--quantize", mode,
                        "--calibration", str(calib)]) == 0
    err = capsys.readouterr().err
    assert f"quantized ({mode}, minmax over 3 batches): 2 of 3 matmuls in int8" in err
    rows = {line.split()[0]: line.split() for line in err.splitlines()[2:5]}
    assert set(rows) == {"fc1", "fc2", "gram"}
    gram = rows.pop("gram")
    assert gram[2] == "float32" and gram[-1] == "transpose_a"
    assert float(gram[3]) == 0.0  # a float layer fed by no quantized layer: exact
    for name, row in rows.items():
        assert row[1] == {"fc1": "8x32x24", "fc2": "8x24x5"}[name] and row[2] == "int8"
        assert 0.0 < float(row[3]) and 0.0 < float(row[4]) < 0.05  # max |err|, rel. RMS
    # The library runs the quantized graph: int8 error against float32, not float32 itself.
    x = np.load(calib)["x"][0]
    got = gc.runtime.load(lib)(x)
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((32, 24)).astype(np.float32) / 6
    w2 = rng.standard_normal((24, 5)).astype(np.float32) / 5
    want = np.maximum(x @ w1, 0) @ w2
    assert 0 < np.max(np.abs(got - want)) < 0.05 * np.max(np.abs(want))


def test_dynamic_without_calibration_reports_no_errors(model: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    assert main_export(["compile", model, "-o", str(tmp_path / "libd.so"),
                        "--quantize", "dynamic"]) == 0
    err = capsys.readouterr().err
    assert "quantized (dynamic): 2 of 3 matmuls in int8" in err
    assert any(line.startswith("fc1") and " - " in line for line in err.splitlines())


def test_cli_refusals(model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lib = str(tmp_path / "libbad.so")
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((2, 8, 31), np.float32))
    other = tmp_path / "other.npz"
    np.savez(other, y=np.zeros((8, 32), np.float32))
    not_zip = tmp_path / "not.npz"
    not_zip.write_bytes(b"hello")
    for argv, code, message in [
        (["--quantize", "static"], 2, "needs --calibration"),
        (["--calibration", str(wrong)], 2, "--calibration needs --quantize"),
        (["--reduce-range"], 2, "--reduce-range needs --quantize"),
        (["--quantize", "static", "--calibration", str(wrong)], 1,
         "input 'x' is f32[8,32]"),
        (["--quantize", "static", "--calibration", str(other)], 1,
         "has no array for input 'x' (it has: y)"),
        (["--quantize", "static", "--calibration", str(not_zip)], 1, "not a zip archive"),
        (["--quantize", "static", "--calibration", str(tmp_path / "missing.npz")], 1,
         "cannot read calibration data"),
    ]:
        assert main_export(["compile", model, "-o", lib, *argv]) == code, argv
        err = capsys.readouterr().err
        assert err.startswith("graphc: error:") and message in err, err


def test_reduce_range_exports_7bit_weights(model: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """--reduce-range: the library runs other (7-bit) weights, within int8 error."""
    libs = {}
    for flag in ((), ("--reduce-range",)):
        lib = tmp_path / ("libseven.so" if flag else "libfull.so")
        assert main_export(["compile", model, "-o", str(lib), "--quantize", "dynamic",
                            *flag]) == 0
        libs[bool(flag)] = gc.runtime.load(lib)
    assert "quantized (dynamic, 7-bit weights): 2 of 3 matmuls in int8" in (
        capsys.readouterr().err)
    x = np.random.default_rng(3).standard_normal((8, 32)).astype(np.float32)
    full, reduced = libs[False](x), libs[True](x)
    assert not np.array_equal(full, reduced)  # other weights, the same model within error
    np.testing.assert_allclose(reduced, full, atol=0.05 * np.max(np.abs(full)))
