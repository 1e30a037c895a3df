"""Native loops: a scan compiled once into a body function called per step (`codegen/loop.py`),
checked against the reference interpreter (float64, 1e-12): forward, gradients, reverse,
nested, matmuls in the body, 1 and 2 threads, odd and even lengths (the carry's double
buffer), results nobody reads, pass-through carries, constants inside bodies, errors inside
bodies, exported libraries, and a program whose size does not grow with the length."""

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


def _options(threads: int) -> gc.CompileOptions:
    return dataclasses.replace(OPTIONS, threads=threads)


def _check(g: gc.Graph, args: list[np.ndarray], threads: int = 1, sig: str = "f") -> None:
    expected = gc.reference(g, signature=sig)(*args)
    got = gc.compile(g, signature=sig, options=_options(threads))(*args)
    if not isinstance(expected, (list, tuple)):
        expected, got = [expected], [got]
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def _rnn(steps: int, reverse: bool = False, width: int = 4, batch: int = 3) -> gc.Graph:
    """h' = tanh(h @ w + x): carry, stacked outputs, and the gradients of w, xs and h0."""
    with gc.Graph("rnn") as g:
        xs = gc.placeholder((steps, batch, width), gc.float64, name="xs")
        h0 = gc.placeholder((batch, width), gc.float64, name="h0")
        w = gc.variable(np.random.default_rng(0).normal(size=(width, width)) / width,
                        name="w")

        def step(h: gc.Node, x: gc.Node) -> tuple[gc.Node, gc.Node]:
            h2 = gc.tanh(h @ w + x)
            return h2, h2 * 2.0

        h_t, ys = gc.scan(step, h0, xs, reverse=reverse)
        loss = gc.sum(ys * ys) + gc.sum(h_t)
        dw, dxs, dh0 = gc.grad(loss, [w, xs, h0])
        g.add_signature("f", [xs, h0], [h_t, ys, loss, dw, dxs, dh0])
    return g


def _rnn_args(steps: int, width: int = 4, batch: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.normal(size=(steps, batch, width)), rng.normal(size=(batch, width))]


def _scans(g: gc.Graph, sig: str = "f") -> int:
    lowered = lower(g, g.signatures[sig], OPTIONS, "fused")
    assert lowered.fused is not None
    return sum(k.kind == KernelKind.LOOP for k in lowered.fused.kernels)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("steps", [5, 6])
def test_compiled_scan_equals_the_reference_with_gradients(steps: int, reverse: bool,
                                                           threads: int) -> None:
    _check(_rnn(steps, reverse), _rnn_args(steps), threads)


def test_gradient_runs_the_forward_loop_once() -> None:
    # The forward scan merges into the residual-saving twin its gradient builds: one loop
    # forward, one backward.
    assert _scans(_rnn(7)) == 2


def test_unroll_to_the_length_leaves_no_loop() -> None:
    with gc.Graph("g") as g:
        xs = gc.placeholder((4, 3), gc.float64, name="xs")
        c, ys = gc.scan(lambda c, x: (c * x + 1.0, c), gc.constant(np.ones(3)), xs, unroll=4)
        g.add_signature("f", [xs], [c, ys])
    assert _scans(g) == 0
    _check(g, [np.arange(12.0).reshape(4, 3) / 7])


@pytest.mark.parametrize("threads", [1, 2])
def test_body_with_parallel_matmuls(threads: int) -> None:
    # Big enough that the body's GEMMs and elementwise kernels split across the pool.
    _check(_rnn(3, width=96, batch=64), _rnn_args(3, width=96, batch=64), threads)


def test_nested_scan_reading_outer_values() -> None:
    with gc.Graph("nested") as g:
        w = gc.placeholder((3, 3), gc.float64, name="w")
        xs = gc.placeholder((4, 5, 3), gc.float64, name="xs")

        def outer(h: gc.Node, row: gc.Node) -> tuple[gc.Node, gc.Node]:
            inner, zs = gc.scan(lambda d, z: (gc.tanh(d @ w + z), d * h), h, row)
            return inner, gc.sum(zs, axis=0)

        h, ys = gc.scan(outer, gc.constant(np.full(3, 0.1)), xs)
        dw = gc.grad(gc.sum(ys) + gc.sum(h * h), [w])[0]
        g.add_signature("f", [w, xs], [h, ys, dw])
    rng = np.random.default_rng(2)
    _check(g, [rng.normal(size=(3, 3)) / 3, rng.normal(size=(4, 5, 3))], threads=2)


def test_unread_results_pass_through_carries_and_body_constants() -> None:
    table = np.linspace(-1.0, 1.0, 12).reshape(4, 3)
    with gc.Graph("g") as g:
        xs = gc.placeholder((5, 4, 3), gc.float64, name="xs")
        k0 = gc.placeholder((4, 3), gc.float64, name="k0")

        def step(c: tuple[gc.Node, gc.Node], x: gc.Node) -> tuple[tuple[gc.Node, gc.Node],
                                                                  tuple[gc.Node, ...]]:
            keep, acc = c
            # A constant array inside the body, a carry passed through, an unread y.
            acc = acc * gc.constant(table) + x
            return (keep, acc), (acc, keep, x * 3.0)

        (keep, acc), (ys, kept, _unread) = gc.scan(step, (k0, k0 * 0.5), xs)
        g.add_signature("f", [xs, k0], [keep, acc, ys, kept])
    rng = np.random.default_rng(3)
    _check(g, [rng.normal(size=(5, 4, 3)), rng.normal(size=(4, 3))])


def test_index_out_of_range_inside_a_body_is_an_error() -> None:
    with gc.Graph("g") as g:
        x = gc.placeholder((6,), gc.float64, name="x")
        idx = gc.placeholder((3, 2), gc.int64, name="idx")
        s, ys = gc.scan(lambda c, i: (c + gc.sum(gc.take(x, i, axis=0)), c),
                        gc.constant(np.float64(0.0)), idx)
        g.add_signature("f", [x, idx], [s, ys])
    run = gc.compile(g, signature="f", options=OPTIONS)
    xv = np.arange(6.0)
    good = np.array([[0, 1], [5, 2], [3, 3]])
    np.testing.assert_allclose(run(xv, good)[0], gc.reference(g, signature="f")(xv, good)[0])
    with pytest.raises(GraphcError, match="out of range"):
        run(xv, np.array([[0, 1], [6, 2], [3, 3]]))


def test_program_size_does_not_grow_with_the_length() -> None:
    def functions(steps: int) -> tuple[int, int]:
        g = _rnn(steps)
        lowered = lower(g, g.signatures["f"], OPTIONS, "llvm")
        assert lowered.fused is not None and lowered.module is not None
        text = lowered.module.ir_text
        return len(lowered.fused.kernels), text.count("\ndefine ")

    short, long = functions(32), functions(4096)
    assert short[0] == long[0]  # the same kernels, whatever the length
    # Outside the loops, kernels over (T, ...) arrays may split into parallel tasks at
    # T = 4096 (a few more functions); an unrolled body would add thousands.
    assert short[1] > 2 and long[1] <= 1.5 * short[1]


def test_exported_library_runs_the_loop(tmp_path: Path) -> None:
    g = _rnn(6)
    sig = g.signatures["f"]
    lib = gc.export(g, tmp_path / "librnn.so", signature="f", options=OPTIONS)
    loaded = gc.runtime.load(lib.library)
    args = _rnn_args(6)
    for a, b in zip(loaded(*args), gc.reference(g, sig.inputs, sig.outputs)(*args)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_fused_stage_shows_the_loop_kernel() -> None:
    from graphc.viz.fused import KIND_STYLE, fused_to_dot

    g = _rnn(5)
    lowered = lower(g, g.signatures["f"], OPTIONS, "planned")
    assert lowered.fused is not None and lowered.plan is not None
    loops = [k for k in lowered.fused.kernels if k.kind == KernelKind.LOOP]
    assert all(len(k.bodies) == 1 and k.bodies[0].plan.program.kernels for k in loops)
    assert KIND_STYLE[KernelKind.LOOP][0] in fused_to_dot(lowered.fused)
    assert "[loop] anchor=%scan" in lowered.fused.format()
