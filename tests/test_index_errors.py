"""Out-of-range indices (issue 13.9): one behaviour everywhere -- the reference interpreter,
compiled code (at any thread count) and exported libraries all raise a `GraphcError`
naming the op and the user's line; compiled code never reads or writes out of bounds, and
a training step stops before any variable update.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import graphc as gc
from graphc.ops import gather

Build = Callable[[gc.Node, gc.Node], gc.Node]

# (name, x shape, index shape, axis size, build(x, indices))
CASES: list[tuple[str, tuple[int, ...], tuple[int, ...], int, Build]] = [
    ("take", (6, 40), (3,), 6, lambda x, i: gc.take(x, i, axis=0)),
    ("take_inner", (40, 6), (5, 2), 6, lambda x, i: gc.take(x, i, axis=1)),
    ("take_along_axis", (40, 6), (40, 1), 6, lambda x, i: gc.take_along_axis(x, i, axis=1)),
    ("take_grad", (3, 40), (3,), 6,
     lambda g, i: gather.take_grad(g, i, axis=0, size=6)),
    ("take_along_axis_grad", (40, 1), (40, 1), 6,
     lambda g, i: gather.take_along_axis_grad(g, i, axis=1, shape=(40, 6))),
    ("cross_entropy", (40, 6), (40,), 6,
     lambda x, i: gc.mean(gc.softmax_cross_entropy(x, i))),
]


def _indices(shape: tuple[int, ...], size: int, bad: int | None, position: int,
             dtype: np.dtype) -> np.ndarray:
    rng = np.random.default_rng(position)
    values = rng.integers(-size, size, size=shape).astype(dtype)  # negative: wrapped once
    if bad is not None:
        values.reshape(-1)[position % values.size] = bad
    return values


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("name", "x_shape", "i_shape", "size", "build"), CASES,
                         ids=[c[0] for c in CASES])
def test_out_of_range_indices_raise_in_reference_and_compiled_code(
        name: str, x_shape: tuple[int, ...], i_shape: tuple[int, ...], size: int,
        build: Build, threads: int) -> None:
    for dtype in (np.int32, np.int64):
        with gc.Graph(name) as g:
            x = gc.placeholder(x_shape, gc.float32, name="x")
            ind = gc.placeholder(i_shape, gc.DType.of(dtype), name="ind")
            out = build(x, ind)
        ref = gc.reference(g, [x, ind], out)
        run = gc.compile(g, [x, ind], out, options=gc.CompileOptions(threads=threads))
        xb = np.random.default_rng(0).standard_normal(x_shape).astype(np.float32)
        good = _indices(i_shape, size, None, 0, dtype)
        np.testing.assert_allclose(run(xb, good), ref(xb, good), rtol=1e-5, atol=1e-6)
        bads = [size, -size - 1, 2**31 - 1, -(2**31)]
        if dtype == np.int64:
            bads += [2**40, -(2**62)]
        for position, bad in enumerate(bads):
            ind_b = _indices(i_shape, size, bad, 7 * position + 3, dtype)
            with pytest.raises(gc.GraphcError, match="out of range") as ref_err:
                ref(xb, ind_b)
            with pytest.raises(gc.GraphcError, match="out of range") as run_err:
                run(xb, ind_b)
            assert run_err.value.op == ref_err.value.op and run_err.value.loc is not None
            np.testing.assert_allclose(run(xb, good), ref(xb, good), rtol=1e-5, atol=1e-6)


def _classifier() -> tuple[gc.Graph, gc.Node, gc.Node, gc.Node, dict[gc.Node, gc.Node]]:
    rng = np.random.default_rng(1)
    with gc.Graph("clf") as g:
        x = gc.placeholder((8, 5), gc.float32, name="x")
        y = gc.placeholder((8,), gc.int32, name="y")
        w = gc.variable(rng.standard_normal((5, 4)).astype(np.float32), name="w")
        loss = gc.mean(gc.softmax_cross_entropy(x @ w, y))
        updates = gc.optim.SGD(lr=0.1, momentum=0.9).minimize(loss)
    return g, x, y, loss, updates


def test_a_training_step_with_a_bad_label_stops_before_updating() -> None:
    g, x, y, loss, updates = _classifier()
    step = gc.compile(g, [x, y], [loss], updates=updates)
    before = {k: v.copy() for k, v in g.variables.items()}
    xb = np.ones((8, 5), np.float32)
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 9], np.int32)
    with pytest.raises(gc.GraphcError, match=r"take_along_axis.*out of range.*stopped"):
        step(xb, labels)
    for k, v in before.items():
        np.testing.assert_array_equal(g.variables[k], v)
    step(xb, labels % 4)  # the executable still works
    assert not np.array_equal(g.variables["w"], before["w"])


@pytest.mark.skipif(shutil.which("cc") is None, reason="gc.export needs a C compiler `cc`")
def test_exported_libraries_report_the_failure(tmp_path: Path) -> None:
    g, x, y, loss, _ = _classifier()
    gc.export(g, tmp_path / "libclf.so", inputs=[x, y], outputs=[loss])
    lib = gc.runtime.load(tmp_path / "libclf.so")
    xb = np.ones((8, 5), np.float32)
    good = np.arange(8, dtype=np.int32) % 4
    np.testing.assert_allclose(lib(xb, good), gc.reference(g, [x, y], [loss])(xb, good))
    with pytest.raises(gc.GraphcError, match=r"take_along_axis: an index .* out of range.*"
                                             r"stopped"):
        lib(xb, np.full(8, -5, np.int32))
    np.testing.assert_allclose(lib(xb, good), gc.reference(g, [x, y], [loss])(xb, good))


def test_the_loaders_status_code_is_the_headers() -> None:
    from graphc.export.header import STATUS
    from graphc.runtime import library

    assert STATUS[library._ERR_COMPUTE][0] == "ERR_COMPUTE"
