"""ONNX's model suites beyond the node cases, through `GraphcBackend`, interpreted and
compiled: the 9 `light` real networks (AlexNet, GoogLeNet, ResNet-50, VGG-19, ...; their
weights are constants, their inputs the runner's deterministic dummy data and their expected
outputs ship with onnx), the 82 pytorch-converted and the 35 pytorch-operator cases (most at
opset 6, whose legacy broadcasting the importer honours). Skipped without onnx.
"""

from __future__ import annotations

import glob
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the ONNX tests need onnx: pip install 'graphc[onnx]'")
threadpool_limits = pytest.importorskip(
    "threadpoolctl", reason="needs threadpoolctl (a dev dependency: pip install -e '.[dev]')"
).threadpool_limits

from onnx import numpy_helper  # noqa: E402
from onnx.backend.test.loader import load_model_tests  # noqa: E402
from onnx.backend.test.runner import Runner  # noqa: E402

import graphc as gc  # noqa: E402
from graphc.onnx.backend import GraphcBackend  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    SUITES = {kind: {c.name: c for c in load_model_tests(kind=kind)}
              for kind in ("real", "pytorch-converted", "pytorch-operator")}
ONNX_DIR = Path(onnx.__file__).parent
CASES = [(kind, name) for kind, cases in SUITES.items() for name in sorted(cases)]


def _tensor(path: str) -> np.ndarray:
    return numpy_helper.to_array(onnx.load_tensor(path))


def _model_and_data(kind: str, case: Any) -> tuple[Any, list[tuple[list[np.ndarray],
                                                                   list[np.ndarray]]]]:
    if kind == "real":
        # A light model: its inputs are the runner's dummy data, its output file sits next
        # to it (what onnx's own BackendTest does, without writing to ~/.onnx).
        path = (ONNX_DIR / case.url.removeprefix("onnx/")).resolve()
        model = onnx.load(str(path))
        inits = {i.name for i in model.graph.initializer}
        feeds = [Runner.generate_dummy_data(x, seed=0, name=case.model_name, random=False)
                 for x in model.graph.input if x.name not in inits]
        outs = [_tensor(f"{path.with_suffix('')}_output_{i}.pb")
                for i in range(len(model.graph.output))]
        return model, [(feeds, outs)]
    model = onnx.load(os.path.join(case.model_dir, "model.onnx"))
    data = []
    for folder in sorted(glob.glob(os.path.join(case.model_dir, "test_data_set_*"))):
        data.append(([_tensor(f) for f in sorted(glob.glob(f"{folder}/input_*.pb"))],
                     [_tensor(f) for f in sorted(glob.glob(f"{folder}/output_*.pb"))]))
    return model, data


def test_the_suites_load_in_full() -> None:
    assert {k: len(v) for k, v in SUITES.items()} == {
        "real": 9, "pytorch-converted": 82, "pytorch-operator": 35}


@pytest.fixture(scope="module")
def options(tmp_path_factory: pytest.TempPathFactory) -> gc.CompileOptions:
    # One thread: the light models end in a softmax over logits of ~1e12 that are equal in
    # exact arithmetic, which only an evaluation order identical for every column keeps
    # uniform (at 2 threads the columns at the end of each thread's share may round by an
    # ulp differently, and the softmax turns that into 0 vs 1/8).
    return gc.CompileOptions(threads=1, cache_dir=str(tmp_path_factory.mktemp("suites")))


@pytest.mark.parametrize("mode", ["reference", "compile"])
@pytest.mark.parametrize(("kind", "name"), CASES)
def test_model_case(kind: str, name: str, mode: str, options: gc.CompileOptions) -> None:
    case = SUITES[kind][name]
    model, data = _model_and_data(kind, case)
    assert data, f"{name}: no test data"
    rep = GraphcBackend.prepare(model, mode=mode,
                                options=options if mode == "compile" else None)
    for inputs, outputs in data:
        # The reference interpreter's convolutions are numpy's BLAS: one thread, for the
        # reason `options` gives (OpenBLAS's Haswell kernel splits them over two).
        with threadpool_limits(1, user_api="blas"):
            got = rep.run(inputs)
        Runner.assert_similar_outputs(outputs, list(got), rtol=case.rtol, atol=case.atol)


@pytest.mark.parametrize("name", sorted(SUITES["real"]))
def test_light_real_networks_match_onnxruntime(name: str, options: gc.CompileOptions) -> None:
    """The light networks (files nobody on this project wrote) against ONNX Runtime on the
    same input: graphc compiled, ORT with all its graph optimizations."""
    ort = pytest.importorskip("onnxruntime")
    model, data = _model_and_data("real", SUITES["real"][name])
    (inputs, _), = data
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: x for i, x in zip(sess.get_inputs(), inputs)}
    theirs = sess.run(None, feeds)
    mine = GraphcBackend.prepare(model, mode="compile", options=options).run(inputs)
    for a, b in zip(mine, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6)
