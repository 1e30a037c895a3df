"""Loop carries updated in place (`memory_plan.in_place_carries`): a body's carry written
over the buffer it read, one buffer instead of two, where that is safe -- a cache updated
by dynamic_update_slice, an elementwise accumulator -- and not where it is not (a carry
also returned as y, read transposed, read after its update). Compiled vs reference."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.passes.kernels import KernelKind
from graphc.pipeline import lower

OPTIONS = gc.CompileOptions(cache_dir=None)


def _in_place(g: gc.Graph) -> list[list[int]]:
    """The in-place carries of every loop body (by kernel, then region)."""
    lowered = lower(g, g.signatures["f"], OPTIONS, "planned")
    assert lowered.fused is not None
    return [body.plan.in_place_carries for k in lowered.fused.kernels
            if k.kind == KernelKind.LOOP for body in k.bodies]


def _check(g: gc.Graph, *args: np.ndarray) -> None:
    got = gc.compile(g, signature="f", options=OPTIONS)(*args)
    for a, b in zip(got, gc.reference(g, signature="f")(*args)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def _cache_scan(steps: int) -> gc.Graph:
    """A generation loop filling a cache row by row (dynamic_update_slice at step t) and
    an accumulator (elementwise): both carries in place."""
    with gc.Graph("g") as g:
        xs = gc.placeholder((steps, 8), gc.float64, name="xs")

        def step(c: tuple[gc.Node, gc.Node, gc.Node], x: gc.Node) -> tuple[tuple, gc.Node]:
            cache, acc, t = c
            seen = gc.sum(cache)  # read before the update (a reader after it: two buffers)
            row = gc.reshape(gc.tanh(x + gc.sum(acc)), (1, 8))
            return (gc.dynamic_update_slice(cache, row, (t, 0)), acc * 0.5 + x, t + 1), seen

        (cache, acc, _), ys = gc.scan(step, (gc.constant(np.zeros((steps, 8))),
                                             gc.constant(np.zeros(8)),
                                             gc.constant(np.int64(0))), xs)
        g.add_signature("f", [xs], [cache, acc, ys])
    return g


@pytest.mark.parametrize("steps", [5, 6])
def test_cache_and_accumulator_carries_are_in_place(steps: int) -> None:
    g = _cache_scan(steps)
    assert _in_place(g) == [[0, 1, 2]]
    _check(g, np.random.default_rng(0).normal(size=(steps, 8)))


def test_while_loop_cache_in_place() -> None:
    with gc.Graph("g") as g:
        n = gc.placeholder((), gc.int64, name="n")
        seed = gc.placeholder((4,), gc.float64, name="seed")

        def body(c: tuple[gc.Node, gc.Node, gc.Node]) -> tuple[gc.Node, gc.Node, gc.Node]:
            t, cache, h = c
            h2 = gc.sin(h) + 0.5
            return t + 1, gc.dynamic_update_slice(cache, gc.reshape(h2, (1, 4)), (t, 0)), h2

        _, cache, h = gc.while_loop(lambda c: c[0] < n, body,
                                    (gc.constant(np.int64(0)), gc.constant(np.zeros((9, 4))),
                                     seed))
        g.add_signature("f", [n, seed], [cache, h])
    # The body's (the cond has no carries); t + 1 runs before the update reads t: not t.
    assert _in_place(g)[1] == [1, 2]
    for trips in (0, 3, 4, 9):
        _check(g, np.int64(trips), np.array([0.1, -0.4, 1.0, 2.0]))


def test_carries_that_must_not_be_in_place() -> None:
    with gc.Graph("g") as g:
        xs = gc.placeholder((5, 3, 3), gc.float64, name="xs")

        def step(c: tuple[gc.Node, gc.Node, gc.Node], x: gc.Node) -> tuple[tuple, tuple]:
            a, b, d = c
            # a: returned as y too (copied after the kernels); b: read transposed;
            # d: its old value read by a kernel after the one writing the new one.
            d2 = d * 2.0 + x
            return (a + x, gc.transpose(b) + x, d2), (a, gc.sum(d @ x) + gc.sum(d2))

        carry, ys = gc.scan(step, (xs[0], xs[1] * 2.0, xs[2] * 3.0), xs)
        g.add_signature("f", [xs], [*carry, *ys])
    assert 1 not in _in_place(g)[0]  # a transposed read is never in place
    _check(g, np.random.default_rng(1).normal(size=(5, 3, 3)))
