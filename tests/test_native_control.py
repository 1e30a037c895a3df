"""Native while_loop and cond kernels (`codegen/while_loop.py`, `codegen/branch.py`),
checked against the reference interpreter in float32 and float64: generation-style loops
(counter, accumulation, zero, odd and even trip counts: the carries' double buffer),
bodies with matmuls and nested scans, errors inside regions, exported libraries, and
conds that run only the taken branch (forward, gradients, training steps)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

import graphc as gc
from graphc.errors import GraphcError
from graphc.passes.kernels import KernelKind
from graphc.pipeline import lower

OPTIONS = gc.CompileOptions(cache_dir=None)
TOL = {"float32": 1e-5, "float64": 1e-12}


def _close(got: list[np.ndarray], expected: list[np.ndarray], dtype: str) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=TOL[dtype], atol=TOL[dtype])


def _loop_kernels(g: gc.Graph, sig: str = "f") -> list[str]:
    lowered = lower(g, g.signatures[sig], OPTIONS, "fused")
    assert lowered.fused is not None
    return [k.anchor.op for k in lowered.fused.kernels  # type: ignore[union-attr]
            if k.kind == KernelKind.LOOP]


def _generate(dtype: str, width: int = 4) -> gc.Graph:
    """A generation-style loop: a counter, a state and an accumulated sum, until the
    counter reaches `n` (a runtime input)."""
    rng = np.random.default_rng(0)
    with gc.Graph("gen") as g:
        n = gc.placeholder((), gc.int32, name="n")
        h0 = gc.placeholder((2, width), dtype, name="h0")
        w = gc.constant((rng.normal(size=(width, width)) / width).astype(dtype))

        def body(c: tuple[gc.Node, gc.Node, gc.Node]) -> tuple[gc.Node, gc.Node, gc.Node]:
            i, h, acc = c
            h2 = gc.tanh(h @ w + 0.1)
            return i + 1, h2, acc + gc.sum(h2, axis=0)

        i, h, acc = gc.while_loop(lambda c: c[0] < n, body,
                                  (gc.constant(np.int32(0)), h0,
                                   gc.constant(np.zeros(width, dtype))))
        g.add_signature("f", [n, h0], [i, h, acc])
    return g


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_while_loop_generation_zero_odd_and_even_trips(dtype: str) -> None:
    g = _generate(dtype)
    assert _loop_kernels(g) == ["while_loop"]
    run = gc.compile(g, signature="f", options=OPTIONS)
    ref = gc.reference(g, signature="f")
    h0 = np.random.default_rng(1).normal(size=(2, 4)).astype(dtype)
    for n in (0, 1, 2, 7, 8):
        got, expected = run(np.int32(n), h0), ref(np.int32(n), h0)
        _close(list(got), list(expected), dtype)
        assert int(got[0]) == n
    np.testing.assert_array_equal(run(np.int32(0), h0)[1], h0)  # zero trips: init


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_while_body_with_matmul_and_nested_scan(dtype: str, threads: int) -> None:
    rng = np.random.default_rng(2)
    with gc.Graph("g") as g:
        limit = gc.placeholder((), dtype, name="limit")
        xs = gc.placeholder((5, 48, 32), dtype, name="xs")
        w = gc.placeholder((32, 32), dtype, name="w")

        def body(c: tuple[gc.Node, gc.Node]) -> tuple[gc.Node, gc.Node]:
            h, total = c
            h2, ys = gc.scan(lambda d, x: (gc.tanh(d @ w + x), gc.sum(d)), h, xs)
            return h2 * 0.9, total + gc.sum(ys) * 0.01 + 1.0

        h, total = gc.while_loop(lambda c: c[1] < limit, body,
                                 (gc.placeholder((48, 32), dtype, name="h0"),
                                  gc.constant(np.zeros((), dtype))))
        g.add_signature("f", [limit, xs, w, g["h0"]], [h, total])
    args = [rng.normal(size=(5, 48, 32)).astype(dtype),
            (rng.normal(size=(32, 32)) / 8).astype(dtype),
            rng.normal(size=(48, 32)).astype(dtype)]
    run = gc.compile(g, signature="f",
                     options=dataclasses.replace(OPTIONS, threads=threads))
    ref = gc.reference(g, signature="f")
    for limit in (0.5, 2.5, 3.5):
        lv = np.asarray(limit, dtype)
        _close(list(run(lv, *args)), list(ref(lv, *args)), dtype)


def test_while_loop_consts_pass_through_and_unread_carries() -> None:
    with gc.Graph("g") as g:
        x = gc.placeholder((3,), gc.float64, name="x")
        k = gc.placeholder((3,), gc.float64, name="k")
        # k is captured (a const), one carry passes through, one is never read outside.
        i, keep, v, _unread = gc.while_loop(
            lambda c: c[0] < 3,
            lambda c: (c[0] + 1, c[1], c[2] * k + c[1], c[3] + 1.0),
            (gc.constant(np.int64(0)), x, x * 2.0, x))
        g.add_signature("f", [x, k], [i, keep, v])
    args = [np.array([1.0, -2.0, 0.5]), np.array([0.5, 1.5, -1.0])]
    _close(list(gc.compile(g, signature="f", options=OPTIONS)(*args)),
           list(gc.reference(g, signature="f")(*args)), "float64")


def test_index_error_inside_a_while_body_is_reported() -> None:
    with gc.Graph("g") as g:
        table = gc.placeholder((5,), gc.float64, name="table")
        start = gc.placeholder((), gc.int64, name="start")
        i, s = gc.while_loop(lambda c: c[0] < 4,
                             lambda c: (c[0] + 1, c[1] + gc.take(table, c[0], axis=0)),
                             (start, gc.constant(np.float64(0.0))))
        g.add_signature("f", [table, start], [i, s])
    run = gc.compile(g, signature="f", options=OPTIONS)
    t = np.arange(5.0)
    np.testing.assert_allclose(run(t, np.int64(1))[1], 1.0 + 2.0 + 3.0)
    with pytest.raises(GraphcError, match="out of range"):
        run(t, np.int64(-9))


def test_exported_library_runs_the_while_loop(tmp_path: Path) -> None:
    g = _generate("float64")
    lib = gc.export(g, tmp_path / "libgen.so", signature="f", options=OPTIONS)
    loaded = gc.runtime.load(lib.library)
    ref = gc.reference(g, signature="f")
    h0 = np.random.default_rng(3).normal(size=(2, 4))
    for n in (0, 3, 6):
        _close(list(loaded(np.int32(n), h0)), list(ref(np.int32(n), h0)), "float64")


# --- cond as a branch -------------------------------------------------------------------

def _gather_cond(dtype: str) -> gc.Graph:
    """cond(i < 5, take(x, i), 2 * x[0]): the true branch is out of range for i >= 5."""
    with gc.Graph("g") as g:
        x = gc.placeholder((5, 3), dtype, name="x")
        i = gc.placeholder((), gc.int64, name="i")
        (y,) = gc.cond(i < 5, lambda a, j: (gc.take(a, j, axis=0) * 3.0,),
                       lambda a, j: (a[0] * 2.0,), x, i)
        g.add_signature("f", [x, i], [y])
    return g


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cond_runs_only_the_taken_branch(dtype: str) -> None:
    g = _gather_cond(dtype)
    assert _loop_kernels(g) == ["cond"]
    run = gc.compile(g, signature="f", options=OPTIONS)
    ref = gc.reference(g, signature="f")
    x = np.random.default_rng(4).normal(size=(5, 3)).astype(dtype)
    for i in (0, 4, 5, 99):  # 5 and 99: the gather would be out of range
        _close(list(run(x, np.int64(i))), list(ref(x, np.int64(i))), dtype)


def test_cond_error_in_the_taken_branch_is_reported() -> None:
    with gc.Graph("g") as g:
        x = gc.placeholder((5,), gc.float64, name="x")
        i = gc.placeholder((), gc.int64, name="i")
        (y,) = gc.cond(i > 0, lambda a, j: (gc.take(a, j, axis=0),),
                       lambda a, j: (gc.sum(a),), x, i)
        g.add_signature("f", [x, i], [y])
    run = gc.compile(g, signature="f", options=OPTIONS)
    assert float(run(np.arange(5.0), np.int64(3))[0]) == 3.0
    assert float(run(np.arange(5.0), np.int64(-3))[0]) == 10.0  # false branch: no gather
    with pytest.raises(GraphcError, match="out of range"):
        run(np.arange(5.0), np.int64(7))


def test_cheap_branches_stay_a_select() -> None:
    with gc.Graph("g") as g:
        x = gc.placeholder((3,), gc.float64, name="x")
        (y,) = gc.cond(gc.sum(x) > 0.0, lambda a: (a * 2.0 + 1.0,), lambda a: (gc.exp(a),), x)
        g.add_signature("f", [x], [y])
    assert _loop_kernels(g) == []
    for sign in (1.0, -1.0):
        xv = np.array([0.5, 1.0, 2.0]) * sign
        _close(list(gc.compile(g, signature="f", options=OPTIONS)(xv)),
               list(gc.reference(g, signature="f")(xv)), "float64")


def _mlp_cond_graph(dtype: str) -> tuple[gc.Graph, gc.Node, gc.Node, dict]:
    """A model whose hidden layer is one of two matmul branches, picked per batch."""
    rng = np.random.default_rng(5)
    with gc.Graph("m") as g:
        x = gc.placeholder((8, 6), dtype, name="x")
        flag = gc.placeholder((), "bool", name="flag")
        w1 = gc.variable((rng.normal(size=(6, 5)) / 3).astype(dtype), name="w1")
        w2 = gc.variable((rng.normal(size=(6, 5)) / 3).astype(dtype), name="w2")
        v = gc.variable((rng.normal(size=(5, 1)) / 3).astype(dtype), name="v")
        (h,) = gc.cond(flag, lambda a: (gc.tanh(a @ w1),), lambda a: (gc.relu(a @ w2) * 0.5,),
                       x)
        loss = gc.mean((h @ v) ** 2.0)
        updates = gc.optim.SGD(lr=0.1, momentum=0.9).minimize(loss)
    return g, x, flag, {"loss": loss, "updates": updates}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cond_gradients_through_compiled_training(dtype: str) -> None:
    g_ref, x_r, f_r, parts_r = _mlp_cond_graph(dtype)
    g_cmp, x_c, f_c, parts_c = _mlp_cond_graph(dtype)
    ref = gc.reference(g_ref, [x_r, f_r], parts_r["loss"], parts_r["updates"])
    run = gc.compile(g_cmp, [x_c, f_c], parts_c["loss"], parts_c["updates"], options=OPTIONS)
    rng = np.random.default_rng(6)
    for step in range(6):
        xv = rng.normal(size=(8, 6)).astype(dtype)
        flag = np.bool_(step % 3 != 0)
        _close([np.asarray(run(xv, flag))], [np.asarray(ref(xv, flag))], dtype)
    for name in ("w1", "w2", "v"):
        _close([g_cmp.variables[name]], [g_ref.variables[name]], dtype)
    assert not np.array_equal(g_cmp.variables["w2"], _mlp_cond_graph(dtype)[0].variables["w2"])


def test_cond_branch_inside_a_scan_with_gradients() -> None:
    rng = np.random.default_rng(7)
    with gc.Graph("g") as g:
        xs = gc.placeholder((6, 4), gc.float64, name="xs")
        w = gc.placeholder((4, 4), gc.float64, name="w")

        def step(h: gc.Node, x: gc.Node) -> tuple[gc.Node, gc.Node]:
            (h2,) = gc.cond(gc.sum(x) > 0.0, lambda a, b: (gc.tanh(a @ w + b),),
                            lambda a, b: (gc.sin(a) @ w * 0.5,), h, x)
            return h2, gc.sum(h2)

        h, ys = gc.scan(step, gc.constant(np.full(4, 0.2)), xs)
        dw, dxs = gc.grad(gc.sum(ys) + gc.sum(h * h), [w, xs])
        g.add_signature("f", [xs, w], [h, ys, dw, dxs])
    args = [rng.normal(size=(6, 4)), rng.normal(size=(4, 4)) / 2]
    _close(list(gc.compile(g, signature="f", options=OPTIONS)(*args)),
           list(gc.reference(g, signature="f")(*args)), "float64")


# --- what the passes leave: printable, loadable, stable ---------------------------------

def _all_three() -> gc.Graph:
    with gc.Graph("three") as g:
        xs = gc.placeholder((7, 3), gc.float64, name="xs")
        n = gc.placeholder((), gc.int64, name="n")
        h, _ = gc.scan(lambda c, x: (gc.tanh(c + x),) * 2, gc.constant(np.zeros(3)), xs,
                       unroll=3)
        (pick,) = gc.cond(n > 2, lambda a, m: (gc.take(a, m, axis=0),),
                          lambda a, m: (gc.sum(a, axis=0),), xs, n)
        _, total = gc.while_loop(lambda c: c[0] < n, lambda c: (c[0] + 1, c[1] + h),
                                 (gc.constant(np.int64(0)), pick))
        g.add_signature("f", [xs, n], [total])
    return g


def test_lowered_regions_round_trip_and_the_pass_is_idempotent(tmp_path: Path) -> None:
    from graphc.io.rebuild import value_items
    from graphc.io.textir import format_graph, graph_diff, parse_graph
    from graphc.passes.manager import run_pipeline

    g = _all_three()
    gc.save(g, tmp_path / "three.gcg")
    assert graph_diff(g, gc.load(tmp_path / "three.gcg")) is None
    options = gc.CompileOptions(verify_each=True)
    lowered = run_pipeline(g, "f", options)
    assert sorted(n.op for n in lowered.graph.nodes if n.regions) == ["cond", "scan",
                                                                      "while_loop"]
    text = format_graph(lowered.graph)
    values = {key: (m.graph.constants if m.op == "constant" else m.graph.variables)[m.name]
              for key, m in value_items(lowered.graph)}
    assert graph_diff(lowered.graph, parse_graph(text, values)) is None
    again = run_pipeline(lowered.graph, "f", options)
    assert format_graph(again.graph) == text
    xv = np.random.default_rng(8).normal(size=(7, 3))
    run, ref = gc.compile(g, signature="f", options=OPTIONS), gc.reference(g, signature="f")
    for n in (0, 1, 4):
        _close(list(run(xv, np.int64(n))), list(ref(xv, np.int64(n))), "float64")


def test_exported_library_runs_only_the_taken_branch(tmp_path: Path) -> None:
    g = _gather_cond("float64")
    lib = gc.export(g, tmp_path / "libcond.so", signature="f", options=OPTIONS)
    loaded = gc.runtime.load(lib.library)
    ref = gc.reference(g, signature="f")
    x = np.random.default_rng(9).normal(size=(5, 3))
    for i in (2, 50):
        _close(list(loaded(x, np.int64(i))), list(ref(x, np.int64(i))), "float64")


def test_while_loop_inside_a_scan_body() -> None:
    with gc.Graph("g") as g:
        xs = gc.placeholder((4, 3), gc.float64, name="xs")

        def step(c: gc.Node, x: gc.Node) -> tuple[gc.Node, gc.Node]:
            # Halve until below 1: a trip count that differs per step.
            (v,) = gc.while_loop(lambda s: gc.sum(s[0] * s[0]) > 1.0,
                                 lambda s: (s[0] * 0.5,), (c + x,))
            return v, gc.sum(v)

        h, ys = gc.scan(step, gc.constant(np.zeros(3)), xs)
        g.add_signature("f", [xs], [h, ys])
    xv = np.random.default_rng(10).normal(size=(4, 3)) * 5.0
    _close(list(gc.compile(g, signature="f", options=OPTIONS)(xv)),
           list(gc.reference(g, signature="f")(xv)), "float64")
