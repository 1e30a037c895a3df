"""codegen.gemm.prepack: a constant matmul B stored in the GEMM's panels at compile time.

The compiled graph's matmul then reads `b_panels=NR` (the reference reads that layout too);
results match the reference and are bit-identical across thread counts, with B transposed or
not, a partial last panel, odd row counts, float64 and merged batches; what must stay
unpacked stays (variables, a constant something else reads, matrix-vector products, a split
the panels would take from the threads); a packed matmul has no gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import graphc as gc
from graphc.builder import apply
from graphc.codegen.gemm.matmul import split, split_spec
from graphc.codegen.gemm.prepack import panel_width
from graphc.codegen.gemm.spec import GemmSpec, kernel_shape
from graphc.codegen.target import host_target
from graphc.errors import GraphcError
from graphc.ir import DType
from graphc.ops.linalg import MATMUL
from graphc.ops.panels import pack_panels

# (a shape, k, n, transpose_b, dtype, how 2 threads split it: rows, whole panels or not)
CASES = [
    ((128, 300), 300, 256, False, "float32", "m"),
    ((128, 300), 300, 250, True, "float32", "m"),  # a narrower last panel; B stored (n, k)
    ((37, 64), 64, 40, False, "float32", None),  # odd rows, one row tile partial
    ((4, 32, 96), 96, 130, False, "float32", "m"),  # a merged batch: one (128, 96) GEMM
    ((96, 80), 80, 72, True, "float64", "m"),
    ((37, 300), 300, 512, True, "float32", "n"),  # odd rows: columns, in whole panels
    ((45, 100), 100, 256, True, "float64", "n"),
]


def _matmuls(exe: gc.Executable) -> list[gc.Node]:
    return [n for n in exe.compiled_graph.nodes if n.op == "matmul"]


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_packed_weights_match_the_reference_at_any_thread_count(
        case: tuple[tuple[int, ...], int, int, bool, str, str | None]) -> None:
    a_shape, k, n, tb, dtype, split_dim = case
    rng = np.random.default_rng(k + n)
    w = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    with gc.Graph("prepack") as g:
        x = gc.placeholder(a_shape, dtype, name="x")
        y = gc.relu(gc.matmul(x, gc.constant(w), transpose_b=tb) - 0.25)
    xv = rng.standard_normal(a_shape).astype(dtype)
    want = gc.reference(g, [x], [y])(xv)[0]
    nr = kernel_shape(DType(dtype), host_target(), n)[1]
    results = []
    for threads in (1, 2):
        exe = gc.compile(g, [x], [y], options=gc.CompileOptions(threads=threads,
                                                                cache_dir=None))
        (mm,) = _matmuls(exe)
        assert mm.attrs["b_panels"] == nr and not mm.attrs["transpose_b"]
        if threads == 2:
            (kernel,) = [kern for kern in exe.report.plan.program.kernels
                         if kern.anchor is not None and kern.anchor.name == mm.name]
            s = split(kernel, 2)
            assert (s.dim if s is not None else None) == split_dim
        results.append(exe(xv)[0])
        # The compiled graph's reference reads the panels as the kernel does.
        ref = gc.reference(exe.compiled_graph, [exe.compiled_graph["x"]],
                           [exe.compiled_graph[y.name]])(xv)[0]
        np.testing.assert_allclose(ref, want, rtol=1e-12 if dtype == "float64" else 1e-5)
    np.testing.assert_array_equal(results[0], results[1])
    tol = 1e-12 if dtype == "float64" else 1e-4
    np.testing.assert_allclose(results[1], want, rtol=tol, atol=tol * np.sqrt(k))


def test_the_reference_reads_b_panels() -> None:
    rng = np.random.default_rng(3)
    a = rng.standard_normal((5, 7))
    b = rng.standard_normal((7, 20))
    with gc.Graph("ref") as g:
        x = gc.placeholder((5, 7), "float64", name="x")
        packed = gc.constant(pack_panels(b, 8).reshape(7, 20))
        y = apply(MATMUL, [x, packed], {"b_panels": 8})
    np.testing.assert_allclose(gc.reference(g, [x], [y])(a)[0], a @ b, rtol=1e-13)


Build = Callable[[], tuple[gc.Node, list[gc.Node]]]


def _compiled_panels(build: Build) -> list[int]:
    with gc.Graph("keep") as g:
        x, outs = build()
    exe = gc.compile(g, [x], outs, options=gc.CompileOptions(threads=2, cache_dir=None))
    return [m.attrs["b_panels"] for m in _matmuls(exe)]


def test_what_must_stay_unpacked_stays() -> None:
    w = np.random.default_rng(5).standard_normal((64, 256)).astype(np.float32)

    def variable() -> tuple[gc.Node, list[gc.Node]]:
        x = gc.placeholder((128, 64), name="x")
        return x, [x @ gc.variable(w, name="w", trainable=False)]

    def shared() -> tuple[gc.Node, list[gc.Node]]:
        # the constant is also read by an elementwise op (not foldable)
        x = gc.placeholder((128, 64), name="x")
        c = gc.constant(w)
        return x, [x @ c, c * x[:, :1][:64]]

    def two_layouts() -> tuple[gc.Node, list[gc.Node]]:  # read as B and as B^T
        x = gc.placeholder((128, 64), name="x")
        c = gc.constant(w[:, :64].copy())
        return x, [x @ c, gc.matmul(x, c, transpose_b=True)]

    def gemv() -> tuple[gc.Node, list[gc.Node]]:  # one row reads B in place
        x = gc.placeholder((1, 64), name="x")
        return x, [x @ gc.constant(w)]

    assert _compiled_panels(variable) == [0]
    assert _compiled_panels(shared) == [0]
    assert _compiled_panels(two_layouts) == [0, 0]
    assert _compiled_panels(gemv) == [0]


def test_panels_never_cost_the_threads_their_split() -> None:
    """33 rows cannot split by rows at 2 threads, and 36 columns a thread are not whole
    panels: packing B would leave one thread idle, so B stays as it is."""
    target = host_target()
    with gc.Graph("split"):
        x = gc.placeholder((33, 256), name="x")
        y = x @ gc.constant(np.ones((256, 72), np.float32))
    spec = GemmSpec(33, 72, 256, DType.float32, False, False, 256, 72, 72)
    nr = kernel_shape(DType.float32, target, 72)[1]
    assert split_spec(spec, 2) is not None
    assert split_spec(GemmSpec(33, 72, 256, DType.float32, False, False, 256, 72, 72,
                               b_panels=nr), 2) is None
    assert panel_width(y, target, 2) == 0
    assert panel_width(y, target, 1) == nr


def test_a_packed_matmul_has_no_gradient() -> None:
    with gc.Graph("grad") as g:
        x = gc.placeholder((128, 64), name="x")
        y = gc.sum(x @ gc.constant(np.ones((64, 256), np.float32)))
    exe = gc.compile(g, [x], [y], options=gc.CompileOptions(threads=1, cache_dir=None))
    cg = exe.compiled_graph
    with cg, pytest.raises(GraphcError, match=r"matmul %.*prepacked b \(b_panels=") as info:
        gc.grad(cg[y.name], [cg["x"]])
    assert info.value.op == "matmul"


def test_panels_of_another_target_are_a_compile_error() -> None:
    """A graph compiled for one machine's panel width, compiled again where the GEMM reads
    another width: a CompileError naming the matmul, not a wrong result."""
    b = np.ones((64, 256), np.float32)
    nr = kernel_shape(DType.float32, host_target(), 256)[1]
    with gc.Graph("moved") as g:
        x = gc.placeholder((128, 64), name="x")
        y = apply(MATMUL, [x, gc.constant(pack_panels(b, 2 * nr).reshape(64, 256))],
                  {"b_panels": 2 * nr})
    with pytest.raises(gc.CompileError, match=r"matmul %.* panels of") as info:
        gc.compile(g, [x], [y], options=gc.CompileOptions(cache_dir=None))
    assert info.value.op == "matmul"


def test_autocast_leaves_a_packed_matmul_in_float32() -> None:
    with gc.Graph("cast") as g:
        x = gc.placeholder((128, 64), name="x")
        y = x @ gc.constant(np.random.default_rng(1).standard_normal((64, 256))
                            .astype(np.float32))
    exe = gc.compile(g, [x], [y], options=gc.CompileOptions(threads=1, cache_dir=None))
    cast = gc.autocast(exe.compiled_graph)
    (mm,) = [n for n in cast.nodes if n.op == "matmul"]
    assert mm.attrs["b_panels"] and mm.inputs[1].dtype == DType.float32
