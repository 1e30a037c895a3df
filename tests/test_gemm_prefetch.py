"""The packed GEMM prefetches the next in-place B panel while a column of tiles computes
(`codegen/gemm/packed.py`, `_prefetch_panel_part`).

A weight read once per call arrives from L3 or DRAM; without the prefetch a column's first
tile waits on it line by line (GPT inference: 4-6 % slower). The prefetches are hints with
locality 1, a kind no other GEMM code emits, so the generated IR shows whether they are
there. Results must not change (prefetches never fault, even past B's last panel).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import graphc as gc
from graphc.pipeline import lower

# A read prefetch with locality 1: only the next-panel prefetch emits it.
_NEXT_PANEL = re.compile(r'call void @"llvm\.prefetch\.p0"\(ptr %"[^"]+", i32 0, i32 1, i32 1\)')


def _graph(m: int, k: int, n: int, constant: bool, dtype: str = "float32"
           ) -> tuple[gc.Graph, list[gc.Node], gc.Node, list[np.ndarray]]:
    rng = np.random.default_rng(m * 7 + n)
    bv = rng.standard_normal((k, n)).astype(dtype)
    av = rng.standard_normal((m, k)).astype(dtype)
    with gc.Graph("prefetch") as g:
        a = gc.placeholder((m, k), dtype, name="a")
        if constant:
            y = gc.matmul(a, gc.constant(bv))
            return g, [a], y, [av]
        b = gc.placeholder((k, n), dtype, name="b")
        y = gc.matmul(a, b)
    return g, [a, b], y, [av, bv]


def _prefetches(g: gc.Graph, inputs: list[gc.Node], y: gc.Node, threads: int = 1) -> int:
    g.add_signature("s", inputs, [y])
    text = lower(g, g.signatures["s"], gc.CompileOptions(threads=threads, cache_dir=None)).ir_text
    return len(_NEXT_PANEL.findall(text))


def test_a_prepacked_weight_read_by_many_row_tiles_is_prefetched() -> None:
    assert _prefetches(*_graph(128, 256, 768, constant=True)[:3]) > 0


def test_columns_of_few_tiles_are_not_prefetched() -> None:
    # one or two row tiles: nothing to hide the prefetch behind
    assert _prefetches(*_graph(8, 256, 1024, constant=True)[:3]) == 0


@pytest.mark.parametrize(("m", "k", "n", "constant", "dtype"), [
    (128, 256, 768, True, "float32"),  # prepacked panels, the last one's successor past B
    (130, 96, 200, True, "float32"),  # a narrower last panel and a partial row tile
    (64, 300, 96, True, "float64"),
    (96, 64, 48, False, "float32"),  # a row-major B read in place, if the plan does
])
def test_results_are_unchanged(m: int, k: int, n: int, constant: bool, dtype: str) -> None:
    g, inputs, y, values = _graph(m, k, n, constant, dtype)
    want = gc.reference(g, inputs, [y])(*values)[0]
    tol = 1e-4 if dtype == "float32" else 1e-10
    for threads in (1, 2):
        got = gc.compile(g, inputs, [y], options=gc.CompileOptions(
            threads=threads, cache_dir=None))(*values)
        got = got[0] if isinstance(got, (list, tuple)) else got
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
