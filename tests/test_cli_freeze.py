"""`graphc compile MODEL --freeze`: the library holds the weights as constants (no weight
variables in its metadata) and computes what the unfrozen library computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import graphc as gc
from graphc.cli.exported import main_export
from graphc.runtime.library import read_metadata
from tests.test_cli_precision import MODEL_PY  # predict (batch 1) and train signatures


def test_compile_freeze(tmp_path: Path) -> None:
    model = tmp_path / "model.py"
    # Batch 4: the matmul runs on the packed GEMM, whose frozen weight is prepacked.
    model.write_text(MODEL_PY.replace("(1, 40)", "(4, 40)").replace("(1,)", "(4,)"))
    spec = f"{model}:build"
    plain, frozen, io = (tmp_path / f"lib{n}.so" for n in ("plain", "frozen", "io"))
    assert main_export(["compile", spec, "-o", str(plain)]) == 0
    assert main_export(["compile", spec, "-o", str(frozen), "--freeze"]) == 0
    assert main_export(["compile", spec, "--inputs", "x", "--outputs", "out", "-o", str(io),
                        "--freeze"]) == 0
    assert "w" in [v["name"] for v in read_metadata(plain)["variables"]]
    for lib in (frozen, io):
        assert "w" not in [v["name"] for v in read_metadata(lib)["variables"]]
    x = np.random.default_rng(1).standard_normal((4, 40)).astype(np.float32)
    (want,) = gc.runtime.load(plain)(x)
    for lib in (frozen, io):
        (got,) = gc.runtime.load(lib)(x)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_compile_freeze_refuses_what_would_need_the_weights_variable(tmp_path: Path) -> None:
    model = tmp_path / "model.py"
    model.write_text(MODEL_PY)
    spec = f"{model}:build"
    out = str(tmp_path / "lib.so")
    assert main_export(["compile", spec, "-o", out, "--freeze", "--train"]) == 2
    assert main_export(["compile", spec, "-o", out, "--freeze", "--weights", "external"]) == 2
    assert main_export(["compile", spec, "-o", out, "--freeze", "--signature", "train"]) == 2
    assert not Path(out).exists()


def test_compile_freeze_after_autocast_keeps_its_bf16_weight_copies(tmp_path: Path) -> None:
    """--precision bf16 stores the weight as a bf16 snapshot of its own (`w/bf16_t`, laid
    out for the batch-1 GEMV); --freeze runs after it and fixes what is left."""
    model = tmp_path / "model.py"
    model.write_text(MODEL_PY)
    lib = tmp_path / "lib.so"
    assert main_export(["compile", f"{model}:build", "-o", str(lib), "--freeze",
                        "--precision", "bf16"]) == 0
    names = [v["name"] for v in read_metadata(lib)["variables"]]
    assert "w/bf16_t" in names and "w" not in names
