"""ONNX's own backend node tests through `graphc.onnx.backend.GraphcBackend`.

`onnx.backend.test.BackendTest` runs every case `tests/onnx_conformance.json` lists as
passing (the numpy reference interpreter behind the importer); every other case is excluded
there with its reason (regenerate both with `python tools/onnx_conformance.py`). A sample of
the passing cases is also compiled and run natively. Skipped without onnx.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the ONNX tests need onnx: pip install 'graphc[onnx]'")

from onnx.backend.test import BackendTest  # noqa: E402
from onnx.backend.test.loader import load_model_tests  # noqa: E402
from onnx.backend.test.runner import Runner, _normalize_tensor  # noqa: E402

import graphc as gc  # noqa: E402
from graphc.onnx.backend import GraphcBackend  # noqa: E402

EXPECT = json.loads((Path(__file__).parent / "onnx_conformance.json").read_text())
PASSING: list[str] = EXPECT["passing"]
EXCLUDED: dict[str, str] = EXPECT["excluded"]

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the case generators' numpy warnings
    _backend_test = BackendTest(GraphcBackend, __name__)
    CASES = {case.name: case for case in load_model_tests(kind="node")}
_backend_test.include(r"^test_.*_cpu$")
for _name in EXCLUDED:
    _backend_test.exclude(rf"^{re.escape(_name)}_cpu$")
# The node cases only (the real and pytorch model suites are in test_onnx_model_suites.py), and
# only the ones that run: the CUDA variants and the excluded cases (whose reasons are in the
# JSON file) are removed rather than reported as a thousand skips.
OnnxBackendNodeModelTest = _backend_test.test_cases["OnnxBackendNodeModelTest"]
for _attr in list(vars(OnnxBackendNodeModelTest)):
    if _attr.startswith("test_") and (
            not _attr.endswith("_cpu") or _attr.removesuffix("_cpu") in EXCLUDED):
        delattr(OnnxBackendNodeModelTest, _attr)


def test_every_node_case_loads_and_is_classified() -> None:
    assert len(CASES) >= 1800, f"only {len(CASES)} ONNX node cases loaded"
    unknown = sorted(set(CASES) - set(PASSING) - set(EXCLUDED))
    assert not unknown, f"cases in neither list (run tools/onnx_conformance.py): {unknown[:10]}"
    assert all(reason.strip() for reason in EXCLUDED.values())
    assert not set(PASSING) & set(EXCLUDED)


def test_conformance_floor() -> None:
    # The share that passes only goes up: lower this only with a reason in the commit.
    assert len(PASSING) >= 1797, len(PASSING)


def _run(case: Any, mode: str, options: gc.CompileOptions | None) -> None:
    rep = GraphcBackend.prepare(case.model, mode=mode, options=options)
    for inputs, outputs in case.data_sets:
        got = rep.run([_normalize_tensor(i) for i in inputs])
        Runner.assert_similar_outputs([_normalize_tensor(o) for o in outputs], list(got),
                                      rtol=case.rtol, atol=case.atol)


# Every 20th passing case, compiled (the compile cache is shared across the session).
SAMPLE = PASSING[::20]


@pytest.fixture(scope="module")
def compile_options(tmp_path_factory: pytest.TempPathFactory) -> gc.CompileOptions:
    return gc.CompileOptions(threads=1, cache_dir=str(tmp_path_factory.mktemp("onnx-cache")))


@pytest.mark.parametrize("name", SAMPLE)
def test_compiled_sample(name: str, compile_options: gc.CompileOptions) -> None:
    _run(CASES[name], "compile", compile_options)


def test_an_excluded_case_fails_with_its_reason() -> None:
    """The exclusions are real: an unsupported-op case raises the listed GraphcError."""
    name = next(n for n, r in EXCLUDED.items() if r.startswith("unsupported:"))
    with pytest.raises(gc.GraphcError, match="unsupported op"):
        _run(CASES[name], "reference", None)


def test_reference_and_compiled_agree_on_an_mlp_model() -> None:
    """A small model built with onnx.helper: Gemm, Relu, Softmax over two layers."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(8, 16)).astype(np.float32)
    w2 = rng.normal(size=(16, 4)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["z"]),
             helper.make_node("Softmax", ["z"], ["y"], axis=-1)]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    g = gc.onnx.load(model.SerializeToString(), dims={"batch": 3})
    x = rng.normal(size=(3, 8)).astype(np.float32)
    h = np.maximum(x @ w1, 0) @ w2
    want = np.exp(h - h.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    (ref,) = gc.reference(g, signature="main")(x)  # a signature returns a tuple
    np.testing.assert_allclose(ref, want, rtol=1e-5)
    f = gc.compile(g, signature="main", options=gc.CompileOptions(threads=1, cache_dir=None))
    (got,) = f(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # The weights are trainable variables, as the importer promises.
    assert {v.name for v in g.trainable_variables} == {"w1", "w2"}
