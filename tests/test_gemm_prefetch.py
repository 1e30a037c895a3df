"""The packed GEMM prefetches the next in-place B panel while a column of tiles computes
(`codegen/gemm/packed.py`, `_prefetch_panel_part`).

A weight read once per call arrives from L3 or DRAM; without the prefetch a column's first
tile waits on it line by line (GPT inference: 4-6 % slower). The prefetches are hints with
locality 1, a kind no other GEMM code emits, so the generated IR shows whether they are
there: at both call sites (A packed per block, and A read in place beside a B in panels,
which only 32-register targets plan: checked on their IR, not run) and in both layouts (a
contiguous prepacked panel, a row-major B read in place). Results must not change
(prefetches never fault, even past B's last panel).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

import graphc as gc
from graphc import pipeline
from graphc.codegen.gemm.spec import kernel_shape
from graphc.ir import DType
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


def _avx512_ir(monkeypatch: pytest.MonkeyPatch) -> None:
    """Generate code (IR only: never run here) for a 512-bit target with 32 registers,
    whose GEMM plans read A in place beside a B in panels (the driver's other call site)."""
    host = pipeline.host_target()
    extra = ",".join(f"+{f}" for f in ("avx512f", "avx512bw", "avx512dq", "avx512vl"))
    target = dataclasses.replace(host, vector_bits=512, features=f"{host.features},{extra}")
    monkeypatch.setattr(pipeline, "host_target", lambda: target)


def test_a_prepacked_weight_read_by_many_row_tiles_is_prefetched() -> None:
    assert _prefetches(*_graph(128, 256, 768, constant=True)[:3]) > 0


def test_columns_of_few_tiles_are_not_prefetched() -> None:
    # The packed path with prepacked panels, 3 row tiles of 6 (AVX2) or 8 rows: nothing to
    # hide the prefetch behind; from 4 tiles on it is there.
    assert _prefetches(*_graph(16, 256, 768, constant=True)[:3]) == 0
    assert _prefetches(*_graph(48, 256, 768, constant=True)[:3]) > 0


def _prefetch_offsets(text: str) -> set[int]:
    """The constants added to the element index of each next-panel prefetch's address (0
    for none): the address is a GEP whose index is `add i64 %row, C` or a plain value."""
    offsets = set()
    for function in text.split("\ndefine ")[1:]:  # value names are per function
        defs = dict(re.findall(r'^\s*(%"[^"]+") = (.*)$', function, re.M))
        for ptr in re.findall(r'llvm\.prefetch\.p0"\(ptr (%"[^"]+"), i32 0, i32 1, i32 1\)',
                              function):
            index = re.search(r'i64 (%"[^"]+"|\d+)$', defs[ptr])
            assert index is not None, defs[ptr]
            added = re.fullmatch(r'add i64 %"[^"]+", (\d+)', defs.get(index.group(1), ""))
            offsets.add(int(added.group(1)) if added else 0)
    return offsets


def test_a_row_major_b_read_in_place_prefetches_both_ends_of_each_row() -> None:
    g, inputs, y, _ = _graph(32, 256, 256, constant=False)
    g.add_signature("s", inputs, [y])
    text = lower(g, g.signatures["s"], gc.CompileOptions(threads=1, cache_dir=None)).ir_text
    nr = kernel_shape(DType.float32, pipeline.host_target(), 256)[1]
    assert _prefetch_offsets(text) == {0, nr - 1}


def test_the_in_place_a_path_of_32_register_targets_prefetches(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _avx512_ir(monkeypatch)
    rng = np.random.default_rng(1)
    with gc.Graph("prefetch_ta") as g:
        a = gc.placeholder((300, 64), gc.float64, name="a")  # read transposed: (64, 300)
        y = gc.matmul(a, gc.constant(rng.standard_normal((300, 96))), transpose_a=True)
    assert _prefetches(g, [a], y) > 0


@pytest.mark.parametrize(("m", "k", "n", "constant", "dtype"), [
    (128, 256, 768, True, "float32"),  # prepacked panels, the last one's successor past B
    (130, 96, 200, True, "float32"),  # a narrower last panel and a partial row tile
    (64, 300, 96, True, "float64"),
    (32, 256, 256, False, "float32"),  # a row-major B read in place
    (24, 300, 200, False, "float64"),  # rows not line-aligned
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


# A read prefetch into L1 (locality 3): the epilogue's streams emit them (other code of the
# program may too: the tests compare programs that differ only in the streams).
_STREAM = re.compile(r'call void @"llvm\.prefetch\.p0"\(ptr %"[^"]+", i32 0, i32 3, i32 1\)')


@pytest.mark.parametrize("threads", [1, 2])
def test_an_epilogue_reading_arrays_shaped_like_c_prefetches_their_tiles(threads: int) -> None:
    """A fused epilogue that reads an array laid out like C (a residual, the activation a
    backward multiplies by) reads it tile by tile, a pattern no hardware prefetcher follows:
    the driver prefetches those tiles with C's, on one thread and in each thread's block
    (rows or columns). A bias broadcast along the rows is no such array, nor are A and B;
    results do not change."""
    rng = np.random.default_rng(5)
    m, k, n = 192, 128, 256
    av, bv = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
    rv, cv = rng.standard_normal((m, n), np.float32), rng.standard_normal(n).astype(np.float32)

    def build(residual: bool) -> tuple[gc.Graph, list[gc.Node], gc.Node]:
        with gc.Graph("epilogue") as g:
            a = gc.placeholder((m, k), name="a")
            b = gc.placeholder((k, n), name="b")
            extra = gc.placeholder((m, n) if residual else (n,), name="r")
            y = gc.relu(gc.matmul(a, b) + extra)
        return g, [a, b, extra], y

    counts = {}
    for residual in (True, False):
        g, inputs, y = build(residual)
        g.add_signature("s", inputs, [y])
        opts = gc.CompileOptions(threads=threads, cache_dir=None)
        counts[residual] = len(_STREAM.findall(lower(g, g.signatures["s"], opts).ir_text))
        args = [av, bv, rv if residual else cv]
        (got,) = gc.compile(g, signature="s", options=opts)(*args)
        want = np.maximum(av @ bv + args[2], 0)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert counts[True] > counts[False]
