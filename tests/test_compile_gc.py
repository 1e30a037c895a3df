"""`gc.compile` pauses Python's cyclic garbage collector while it runs and always restores
the caller's setting: enabled after a compile, after a failing compile, and still disabled
after a compile made with it disabled."""

from __future__ import annotations

import gc as pygc
import importlib

import numpy as np
import pytest

import graphc as gc

COMPILE = importlib.import_module("graphc.compile")  # `gc.compile` is the function


def _graph() -> tuple[gc.Graph, gc.Node, gc.Node]:
    with gc.Graph("gc_pause") as g:
        x = gc.placeholder((3, 4), gc.float32, name="x")
        y = gc.tanh(x) * 2.0
    return g, x, y


def test_compile_pauses_and_restores_the_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    lower = COMPILE.lower

    def spying_lower(*args: object, **kwargs: object) -> object:
        seen.append(pygc.isenabled())
        return lower(*args, **kwargs)

    monkeypatch.setattr(COMPILE, "lower", spying_lower)
    g, x, y = _graph()
    assert pygc.isenabled()
    f = gc.compile(g, [x], y, options=gc.CompileOptions(cache_dir=None))
    assert seen == [False]  # paused while compiling
    assert pygc.isenabled()  # and enabled again after
    a = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_allclose(f(a), np.tanh(a) * 2.0, rtol=1e-6)


def test_a_failing_compile_restores_the_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_lower(*args: object, **kwargs: object) -> object:
        raise gc.CompileError("failed on purpose")

    monkeypatch.setattr(COMPILE, "lower", failing_lower)
    g, x, y = _graph()
    with pytest.raises(gc.CompileError, match="on purpose"):
        gc.compile(g, [x], y, options=gc.CompileOptions(cache_dir=None))
    assert pygc.isenabled()


def test_a_disabled_collector_stays_disabled() -> None:
    g, x, y = _graph()
    pygc.disable()
    try:
        gc.compile(g, [x], y, options=gc.CompileOptions(cache_dir=None))
        assert not pygc.isenabled()
    finally:
        pygc.enable()
