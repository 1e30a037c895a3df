"""The depthwise conv2d kernel (`codegen/conv/depthwise.py`): which layers take it, and
values equal to the reference over the shapes that reach each of its branches (row ends
checked with constant masks, a loop of unchecked chunks or a single one, rows in the
vertical padding read as zeros, stride 1 and 2, asymmetric padding, epilogues), for both
float dtypes and any thread count (the same bits for one and two threads)."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc import pipeline
from graphc.codegen.conv import depthwise, phases
from graphc.codegen.target import Target, host_target
from graphc.options import CompileOptions
from tests import targets


def _depthwise(shape: tuple[int, int, int, int], k: int, dtype: str = "float32",
               **kw: object) -> gc.Node:
    with gc.Graph("probe"):
        w = gc.placeholder((shape[1], 1, k, k), dtype)
        return gc.conv2d(gc.placeholder(shape, dtype), w, groups=shape[1], **kw)


@pytest.mark.parametrize("bits", [256, 512])
def test_applies_to_depthwise_layers_on_wide_rows_only(bits: int) -> None:
    host = host_target()  # only the vector width matters to the choice
    target = Target(host.triple, host.cpu, host.features, bits)
    narrow = bits // 64 - 1  # rows shorter than half a vector
    assert depthwise.applies(_depthwise((1, 144, 56, 56), 3, padding=1), target)
    assert depthwise.applies(_depthwise((1, 96, 112, 112), 3, stride=2, padding=1), target)
    assert depthwise.applies(_depthwise((1, 960, narrow + 1, narrow + 1), 3, padding=1),
                             target)
    assert not depthwise.applies(_depthwise((1, 960, narrow, narrow), 3, padding=1), target)
    assert not depthwise.applies(_depthwise((1, 32, 40, 40), 3, dilation=2), target)
    assert not depthwise.applies(_depthwise((1, 32, 40, 40), 3, stride=3), target)
    with gc.Graph("probe"):  # two output channels per group: not depthwise
        grouped = gc.conv2d(gc.placeholder((1, 8, 30, 30)), gc.placeholder((16, 1, 3, 3)),
                            groups=8)
    assert not depthwise.applies(grouped, target)


CASES = [
    # (batch, channels, height, width, kernel, stride, padding)
    (1, 5, 56, 56, 3, 1, 1),      # checked ends, a loop of unchecked chunks, a partial end
    (2, 3, 20, 20, 3, 2, 1),      # stride 2, a single unchecked chunk
    (1, 4, 9, 14, 3, 1, 1),       # one checked chunk per row
    (1, 3, 33, 40, 5, 1, 2),      # 5x5 taps, two rows of padding
    (1, 3, 17, 35, 3, 2, 0),      # no padding, odd sizes
    (1, 2, 12, 31, 3, 1, ((0, 2), (2, 1))),  # asymmetric padding
    (3, 6, 16, 64, 3, 2, 1),      # several images, whole chunks only
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_matches_the_reference_with_an_epilogue(case: tuple, dtype: str) -> None:
    _check_against_reference(case, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", [c for c in CASES if c[5] == 2] + [(2, 3, 21, 13, 3, 2, 2)],
                         ids=str)
def test_stride_2_reads_phase_rows_with_16_registers(
        monkeypatch: pytest.MonkeyPatch, case: tuple, dtype: str) -> None:
    """With 16 registers each plane's rows are split by column phase once (`phases`),
    then every tap loads whole vectors; also with more padding than a vector's reach."""
    target = targets.avx2(monkeypatch)
    n, c, h, w_, k, stride, padding = case
    with gc.Graph("probe"):
        conv = gc.conv2d(gc.placeholder((n, c, h, w_)), gc.placeholder((c, 1, k, k)),
                         stride=stride, padding=padding, groups=c)
    assert depthwise._phase_rows(conv, target) is not None
    taps: list[int] = []
    tap = phases.PhaseRows.tap
    monkeypatch.setattr(phases.PhaseRows, "tap", lambda self, j: taps.append(j) or tap(self, j))
    _check_against_reference(case, dtype)
    assert taps, "the kernel did not read its phase rows"


def _check_against_reference(case: tuple, dtype: str) -> None:
    n, c, h, w_, k, stride, padding = case
    rng = np.random.default_rng(h * w_ + k)
    xv = rng.standard_normal((n, c, h, w_)).astype(dtype)
    with gc.Graph("dw") as g:
        x = gc.placeholder(xv.shape, dtype, name="x")
        w = gc.constant(rng.standard_normal((c, 1, k, k)).astype(dtype))
        b = gc.constant(rng.standard_normal((1, c, 1, 1)).astype(dtype))
        raw = gc.conv2d(x, w, stride=stride, padding=padding, groups=c)
        y = gc.minimum(gc.maximum(raw + b, 0.0), 6.0)
    conv = next(node for node in gc.ir.ancestors([y]) if node.op == "conv2d")
    assert depthwise.applies(conv, pipeline.host_target())
    want = gc.reference(g, [x], [y, raw])(xv)
    runs = [gc.compile(g, [x], [y, raw], options=CompileOptions(
        cache_dir=None, threads=t, conv_algorithm="direct"))(xv) for t in (1, 2)]
    tol = 1e-5 if dtype == "float32" else 1e-12
    for got, ref in zip(runs[0], want):
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)
    for one, two in zip(*runs):
        np.testing.assert_array_equal(one, two)


def test_padding_rows_read_zeros_not_neighbouring_planes() -> None:
    """Rows above and below the image contribute nothing even where the neighbouring
    plane in memory holds huge values (a wrong row pointer would pick them up)."""
    xv = np.zeros((1, 3, 10, 40), np.float32)
    xv[0, 0] = 1e30
    xv[0, 2] = -1e30
    with gc.Graph("zeros") as g:
        x = gc.placeholder(xv.shape, "float32", name="x")
        y = gc.conv2d(x, gc.constant(np.ones((3, 1, 3, 3), np.float32)), padding=1, groups=3)
    (got,) = gc.compile(g, [x], [y], options=CompileOptions(cache_dir=None))(xv)
    np.testing.assert_array_equal(got[0, 1], np.zeros((10, 40), np.float32))
