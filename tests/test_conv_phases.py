"""The direct conv2d kernel reading a strided input from its phase rows (`conv.phases`).

On 16-register targets a conv2d with a column stride > 1 on the direct path copies its
input once into phase rows (horizontal padding materialized), then loads whole vectors
from them. The cases cover strides 2, 3 and 5 (the copy's gather), dilation, asymmetric
padding, groups, rows that end in a partial vector, batches and thread splits, float32 and
float64, with and without an epilogue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import graphc as gc
from graphc.codegen.conv import phases
from graphc.codegen.target import Target
from graphc.options import CompileOptions
from tests import targets


@dataclass(frozen=True)
class Case:
    x: tuple[int, int, int, int]
    out_ch: int
    kernel: tuple[int, int]
    stride: Any
    padding: Any = 0
    dilation: Any = 1
    groups: int = 1


CASES = {
    "stem_7x7_s2": Case((1, 3, 30, 30), 16, (7, 7), 2, 3),
    "3x3_s2_partial_rows": Case((2, 3, 13, 21), 10, (3, 3), 2, 1),
    "s3_dil2_asym": Case((1, 4, 14, 29), 6, (3, 3), (1, 3), ((1, 0), (2, 3)), 2),
    "s5_gather_g2": Case((2, 4, 11, 40), 6, (3, 3), 5, 1, groups=2),
    "1x1_s2": Case((1, 5, 6, 37), 11, (1, 1), 2),
    "wide_s2": Case((1, 2, 5, 70), 9, (3, 5), 2, ((0, 2), (2, 1))),
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(CASES))
def test_strided_direct_convolutions_read_phase_rows(
        monkeypatch: pytest.MonkeyPatch, name: str, dtype: str, threads: int) -> None:
    target = targets.avx2(monkeypatch)
    c = CASES[name]
    rng = np.random.default_rng(len(name))
    xv = rng.standard_normal(c.x).astype(dtype)
    wv = rng.standard_normal((c.out_ch, c.x[1] // c.groups, *c.kernel)).astype(dtype)
    with gc.Graph(name) as g:
        x = gc.placeholder(c.x, dtype, name="x")
        w = gc.placeholder(wv.shape, dtype, name="w")
        raw = gc.conv2d(x, w, stride=c.stride, padding=c.padding, dilation=c.dilation,
                        groups=c.groups)
        bias = gc.constant(rng.standard_normal((1, c.out_ch, 1, 1)).astype(dtype))
        y = gc.minimum(gc.maximum(raw + bias, 0.0), 6.0)
    assert phases.layout(raw, target) is not None
    taps = _count_taps(monkeypatch)
    want = gc.reference(g, [x, w], [raw, y])(xv, wv)
    got = gc.compile(g, [x, w], [raw, y], options=CompileOptions(
        cache_dir=None, threads=threads, conv_algorithm="direct"))(xv, wv)
    assert taps, "the kernel did not read its phase rows"
    tol = 1e-4 if dtype == "float32" else 1e-11
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def _count_taps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one per phase-row tap a kernel emits (`PhaseRows.tap`)."""
    calls: list[int] = []
    tap = phases.PhaseRows.tap

    def counted(self: phases.PhaseRows, j: int) -> tuple[int, int]:
        calls.append(j)
        return tap(self, j)

    monkeypatch.setattr(phases.PhaseRows, "tap", counted)
    return calls


def test_empty_rows_and_large_inputs_keep_strided_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """An input without rows (the output is all padding) compiles and gives the reference's
    zeros; an input whose phase rows would exceed MAX_BYTES is read in place."""
    target = targets.avx2(monkeypatch)
    with gc.Graph("empty") as g:
        x = gc.placeholder((1, 3, 0, 40), name="x")
        w = gc.placeholder((2, 3, 1, 1), name="w")
        y = gc.conv2d(x, w, stride=(1, 2), padding=1)
        big = gc.conv2d(gc.placeholder((8, 3, 512, 512)), gc.placeholder((4, 3, 3, 3)),
                        stride=2)
    assert phases.layout(y, target) is None and phases.layout(big, target) is None
    xv, wv = np.zeros((1, 3, 0, 40), np.float32), np.ones((2, 3, 1, 1), np.float32)
    (got,) = gc.compile(g, [x, w], [y], options=CompileOptions(
        cache_dir=None, conv_algorithm="direct"))(xv, wv)
    np.testing.assert_array_equal(got, gc.reference(g, [x, w], [y])(xv, wv)[0])


def test_phase_rows_only_for_strided_columns_with_16_registers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit column stride keeps the plain loads, and so do 32-register targets; a phase
    row holds whole vectors up to the last output's last tap."""
    target = targets.avx2(monkeypatch)
    with gc.Graph("probe"):
        x = gc.placeholder((1, 3, 224, 224))
        stem = gc.conv2d(x, gc.placeholder((64, 3, 7, 7)), stride=2, padding=3)
        rows_only = gc.conv2d(x, gc.placeholder((8, 3, 3, 3)), stride=(2, 1), padding=1)
    layout = phases.layout(stem, target)
    assert layout is not None and layout.lanes == 8
    # 112 outputs (14 vectors) plus the reach of taps 0..6 two apart (3), in whole vectors.
    assert layout.width == 120 and layout.rows == 3 * 224
    assert [layout.tap(j) for j in range(7)] == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2),
                                                 (1, 2), (0, 3)]
    assert layout.used == (0, 1)
    with gc.Graph("probe"):  # 1x1, stride 2: only phase 0 is read, so only it is filled
        one = gc.conv2d(gc.placeholder((1, 3, 224, 224)), gc.placeholder((8, 3, 1, 1)),
                        stride=2)
    one_layout = phases.layout(one, target)
    assert one_layout is not None and one_layout.used == (0,)
    assert phases.layout(rows_only, target) is None
    wide = Target(target.triple, target.cpu, target.features, 512)
    assert phases.layout(stem, wide) is None
