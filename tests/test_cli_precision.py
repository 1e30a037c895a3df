"""`graphc compile MODEL --precision bf16`: the exported library runs the autocast graph
(bf16 weights stored in it, float32 accumulation) and the decisions are printed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import graphc as gc
from graphc.cli.exported import main_export
from graphc.codegen.target import host_target
from graphc.runtime.library import read_metadata

MODEL_PY = """
import numpy as np
import graphc as gc

def build():
    rng = np.random.default_rng(0)
    with gc.Graph("mlp") as g:
        x = gc.placeholder((1, 40), gc.float32, name="x")
        y = gc.placeholder((1,), gc.int32, name="y")
        w = gc.variable(rng.standard_normal((40, 24)).astype(np.float32), name="w")
        out = gc.matmul(x, w, name="out")
        loss = gc.mean(gc.softmax_cross_entropy(out, y), name="loss")
        updates = gc.optim.SGD(lr=0.1).minimize(loss)
    g.add_signature("predict", [x], [out])
    g.add_signature("train", [x, y], [loss], updates)
    return g
"""


def test_compile_precision_bf16(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not host_target().has("avx512bf16"):
        pytest.skip("needs a host with avx512bf16")
    model = tmp_path / "model.py"
    model.write_text(MODEL_PY)
    spec = f"{model}:build"
    f32, b16 = tmp_path / "libf32.so", tmp_path / "libb16.so"
    assert main_export(["compile", spec, "-o", str(f32)]) == 0
    capsys.readouterr()
    assert main_export(["compile", spec, "-o", str(b16), "--precision", "bf16"]) == 0
    err = capsys.readouterr().err
    assert "%out (matmul): bfloat16" in err and "frozen weight stored bf16" in err
    measured = float(err.split("%out: bf16 output error ")[1].split()[0])
    assert 0 < measured < 2e-2
    assert read_metadata(b16)["signature"] == "predict"
    x = np.random.default_rng(1).standard_normal((1, 40)).astype(np.float32)
    (want,) = gc.runtime.load(f32)(x)
    (got,) = gc.runtime.load(b16)(x)
    w = np.random.default_rng(0).standard_normal((40, 24)).astype(np.float32)
    xb = gc.from_bfloat16(gc.to_bfloat16(x)).astype(np.float64)
    wb = gc.from_bfloat16(gc.to_bfloat16(w)).astype(np.float64)
    assert np.all(np.abs(got - xb @ wb) <= 40 * 2.0**-24 * (np.abs(xb) @ np.abs(wb)))
    assert not np.array_equal(got, want)
    # --inputs/--outputs become a signature of their own; --train casts the masters.
    assert main_export(["compile", spec, "--inputs", "x", "--outputs", "out", "-o",
                        str(tmp_path / "libio.so"), "--precision", "bf16"]) == 0
    (again,) = gc.runtime.load(tmp_path / "libio.so")(x)
    assert np.array_equal(again, got)
    assert main_export(["compile", spec, "--train", "-o", str(tmp_path / "libt.so"),
                        "--precision", "bf16"]) == 0
    err = capsys.readouterr().err
    assert "trained weight (float32 master) cast per call" in err
    assert "not measured: the inputs are not all floating point" in err  # y: int32 labels
    assert main_export(["compile", spec, "-o", str(b16), "--precision", "fp8"]) == 2
