"""Compiled executables: calling convention, argument checks, state, threads, the cache."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import graphc as gc
from graphc.passes.memory_plan import check_no_overlap


@pytest.fixture(scope="module")
def small() -> tuple[gc.Graph, gc.Node, gc.Node, gc.Node, gc.Executable]:
    with gc.Graph("small") as g:
        x = gc.placeholder((4, 3), gc.float32, name="x")
        i = gc.placeholder((4,), gc.int32, name="i")
        w = gc.variable(np.full((3,), 2.0, np.float32), name="w")
        y = gc.tanh(x * w) + gc.cast(i, gc.float32)[:, None]
    exe = gc.compile(g, inputs=[x, i], outputs=y)
    return g, x, i, y, exe


def test_positional_keyword_and_single_output(small) -> None:
    g, x, i, y, exe = small
    xa = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    ia = np.arange(4, dtype=np.int32)
    expected = gc.reference(g, [x, i], y)(xa, ia)
    np.testing.assert_allclose(exe(xa, ia), expected, rtol=1e-6)
    np.testing.assert_allclose(exe(i=ia, x=xa), expected, rtol=1e-6)
    np.testing.assert_allclose(exe(xa, i=ia), expected, rtol=1e-6)
    out1, out2 = exe(xa, ia), exe(xa, ia)
    assert out1 is not out2 and isinstance(out1, np.ndarray)


def test_non_contiguous_inputs_are_copied(small) -> None:
    g, x, i, y, exe = small
    big = np.random.default_rng(1).standard_normal((8, 6)).astype(np.float32)
    view = big[::2, ::2]
    assert not view.flags.c_contiguous
    ia = np.zeros(4, np.int32)
    np.testing.assert_allclose(exe(view, ia), gc.reference(g, [x, i], y)(view, ia), rtol=1e-6)


def _malformed_calls() -> list[tuple[tuple, dict]]:
    good_x = np.zeros((4, 3), np.float32)
    good_i = np.zeros(4, np.int32)
    bad_values = [
        np.zeros((3, 4), np.float32), np.zeros((4, 3), np.float64), np.zeros((4, 3, 1)),
        np.zeros(()), "text", None, object(), [[1, 2, 3]], np.zeros((0, 3), np.float32),
        np.zeros((4, 3), np.complex64), np.zeros((4, 3), np.int32),
    ]
    bad_i = [np.zeros(4, np.float32), np.zeros(5, np.int32), np.array([2**40] * 4),
             np.zeros((4, 1), np.int32), "x", None]
    calls: list[tuple[tuple, dict]] = []
    for v in bad_values:
        calls += [((v, good_i), {}), ((), {"x": v, "i": good_i})]
    for v in bad_i:
        calls += [((good_x, v), {}), ((good_x,), {"i": v})]
    calls += [((), {}), ((good_x,), {}), ((good_x, good_i, good_i), {}),
              ((good_x, good_i), {"x": good_x}), ((), {"x": good_x, "j": good_i}),
              ((), {"i": good_i})]
    return calls


def test_a_hundred_malformed_calls_raise_and_the_process_survives(small) -> None:
    _, _, _, _, exe = small
    calls = _malformed_calls()
    rng = np.random.default_rng(2)
    while len(calls) < 100:  # random shapes and dtypes on top of the systematic cases
        shape = tuple(int(d) for d in rng.integers(0, 6, rng.integers(0, 4)))
        dtype = rng.choice(["float32", "float64", "int32", "int64", "bool", "uint8"])
        if shape == (4, 3) and dtype == "float32":
            continue  # that one is a valid call
        calls.append(((np.zeros(shape, dtype), np.zeros(4, np.int32)), {}))
    for args, kwargs in calls[:100]:
        with pytest.raises(gc.GraphcError):
            exe(*args, **kwargs)
    assert exe(np.zeros((4, 3), np.float32), np.zeros(4, np.int32)).shape == (4, 3)


def test_updates_write_the_graphs_variables_in_place() -> None:
    with gc.Graph("upd") as g:
        x = gc.placeholder((5,), gc.float32, name="x")
        w = gc.variable(np.ones(5, np.float32), name="w")
        v = gc.variable(np.zeros(5, np.float32), name="v")
        loss = gc.sum(w * x)
    arr_w, arr_v = g.variables["w"], g.variables["v"]
    step = gc.compile(g, [x], [loss], updates={w: w - 0.5 * x, v: v + w})
    xa = np.arange(5, dtype=np.float32)
    (l1,) = step(xa)
    assert float(l1) == pytest.approx(float(np.sum(xa)))
    assert g.variables["w"] is arr_w and g.variables["v"] is arr_v
    np.testing.assert_allclose(arr_w, 1 - 0.5 * xa)
    np.testing.assert_allclose(arr_v, np.ones(5))  # simultaneous: v saw the old w
    check_no_overlap(step.report.plan)


def test_two_executables_share_the_variables() -> None:
    with gc.Graph("share") as g:
        x = gc.placeholder((2,), gc.float32, name="x")
        w = gc.variable(np.ones(2, np.float32), name="w")
        y = x * w
    train = gc.compile(g, [x], [], updates={w: w + x})
    predict = gc.compile(g, [x], y)
    train(np.ones(2, np.float32))
    np.testing.assert_allclose(predict(np.ones(2, np.float32)), [2, 2])
    g.variables["w"] = np.array([5, 6], np.float32)
    np.testing.assert_allclose(predict(np.ones(2, np.float32)), [5, 6])


def test_outputs_that_are_inputs_variables_or_views() -> None:
    with gc.Graph("views") as g:
        x = gc.placeholder((2, 3), gc.float32, name="x")
        w = gc.variable(np.arange(6, dtype=np.float32).reshape(3, 2), name="w")
        r = gc.reshape(x, (3, 2))
    f = gc.compile(g, [x], [x, w, r, r, gc.reshape(w, (6,))], updates={w: r})
    xa = np.arange(6, dtype=np.float32).reshape(2, 3) + 10
    outs = f(xa)
    np.testing.assert_array_equal(outs[0], xa)
    np.testing.assert_array_equal(outs[1], np.arange(6).reshape(3, 2))  # the old value
    np.testing.assert_array_equal(outs[2], xa.reshape(3, 2))
    np.testing.assert_array_equal(outs[3], xa.reshape(3, 2))
    np.testing.assert_array_equal(outs[4], np.arange(6))
    np.testing.assert_array_equal(g.variables["w"], xa.reshape(3, 2))


def test_concurrent_calls_from_threads(small) -> None:
    g, x, i, y, exe = small
    ref = gc.reference(g, [x, i], y)
    rng = np.random.default_rng(3)
    inputs = [(rng.standard_normal((4, 3)).astype(np.float32), rng.integers(0, 9, 4)
               .astype(np.int32)) for _ in range(8)]
    expected = [ref(a, b) for a, b in inputs]
    errors: list[str] = []

    def worker(k: int) -> None:
        for _ in range(200):
            got = exe(*inputs[k])
            # tanh(2x) + i cancels near 0: an absolute tolerance for a few ulp of tanh.
            if not np.allclose(got, expected[k], rtol=1e-6, atol=1e-6):
                errors.append(f"thread {k}")
                return

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_the_compile_cache_skips_llvm(tmp_path) -> None:
    with gc.Graph("cache") as g:
        x = gc.placeholder((7,), gc.float32, name="x")
        y = gc.exp(x) * 3.0
    options = gc.CompileOptions(cache_dir=str(tmp_path))
    first = gc.compile(g, [x], y, options=options)
    second = gc.compile(g, [x], y, options=options)
    assert not first.report.jit.stats.cache_hit
    assert second.report.jit.stats.cache_hit
    assert second.report.jit.key == "program-cache"  # not even LLVM IR was generated
    assert list(tmp_path.glob("*.o"))
    xa = np.linspace(-1, 1, 7, dtype=np.float32)
    np.testing.assert_array_equal(first(xa), second(xa))
    # A damaged program-cache record is a miss: the object cache (keyed by IR) answers.
    for record in tmp_path.glob("*.prog.json"):
        record.write_text("{not json")
    third = gc.compile(g, [x], y, options=options)
    assert third.report.jit.stats.cache_hit and third.report.jit.key != "program-cache"
    np.testing.assert_array_equal(third(xa), first(xa))


def test_compile_report_mentions_every_stage(small) -> None:
    text = small[4].report.format()
    for word in ("simplify", "kernels", "arena", "llvm"):
        assert word in text


def test_profile_counts_cycles_per_kernel() -> None:
    with gc.Graph("prof") as g:
        x = gc.placeholder((64, 64), gc.float32, name="x")
        y = gc.sum(gc.tanh(x @ x), axis=1)
    f = gc.compile(g, [x], y, options=gc.CompileOptions(profile=True))
    for _ in range(3):
        f(np.ones((64, 64), np.float32))
    table = f.profile(reset=True)
    assert "matmul" in table and "Mcycles" in table
    kernels = f.report.plan.program.kernels
    assert all(k.name in table for k in kernels)
    plain = gc.compile(g, [x], y)
    with pytest.raises(gc.GraphcError, match="profile=True"):
        plain.profile()


def test_executables_follow_a_rebound_variable() -> None:
    """Issue 13.7: `g.variables.bind` after compiling: predictions read the new array and
    training updates land in it (not in the array the executable saw first)."""
    with gc.Graph("rebind") as g:
        x = gc.placeholder((2,), gc.float32, name="x")
        w = gc.variable(np.ones(2, np.float32), name="w")
        y = x * w
    predict = gc.compile(g, [x], y)
    train = gc.compile(g, [x], [y], updates={w: w + 1.0})
    old = g.variables["w"]
    new = np.full(2, 5.0, np.float32)
    g.variables.bind("w", new)
    np.testing.assert_array_equal(predict(np.ones(2, np.float32)), [5.0, 5.0])
    train(np.ones(2, np.float32))
    np.testing.assert_array_equal(new, [6.0, 6.0])
    np.testing.assert_array_equal(old, [1.0, 1.0])
    assert g.variables["w"] is new


@pytest.mark.parametrize(("array", "pattern"), [
    (np.ones(3, np.float32), "expected shape"),
    (np.ones(2, np.float64), "expected float32"),
    (np.ones(4, np.float32)[::2], "C-contiguous, writable"),
    (np.frombuffer(np.ones(2, np.float32).tobytes(), np.float32), "C-contiguous, writable"),
    ([1.0, 2.0], "takes a numpy array"),
])
def test_bind_checks_the_array(array: object, pattern: str) -> None:
    with gc.Graph("bind") as g:
        gc.variable(np.ones(2, np.float32), name="w")
    with pytest.raises(gc.GraphcError, match=pattern):
        g.variables.bind("w", array)  # type: ignore[arg-type]


def test_numpy_scalars_bind_scalar_inputs() -> None:
    """A numpy scalar of exactly a scalar input's dtype takes the fast path and computes
    what the 0-d array computes; a scalar of another dtype still goes through the checks
    (an int32 converts, a float64 for an int64 input is refused by name)."""
    with gc.Graph("scalars") as g:
        pos = gc.placeholder((), gc.int64, name="pos")
        x = gc.placeholder((3,), gc.float32, name="x")
        out = x * gc.cast(pos, gc.float32)
    f = gc.compile(g, [x, pos], [out])
    xv = np.arange(3, dtype=np.float32)
    want = f(xv, np.array(5, np.int64))
    for value in (np.int64(5), np.int32(5), 5):
        np.testing.assert_array_equal(f(xv, value), want)
    with pytest.raises(gc.ArgumentError, match="pos"):
        f(xv, np.float64(5.0))
    # The fast path copies the scalar into the executable's own buffer under the call's
    # lock: threads passing different positions each get their own result.
    def right_every_time(k: int) -> bool:
        return all(np.array_equal(f(xv, np.int64(k))[0], xv * k) for _ in range(300))

    with ThreadPoolExecutor(6) as pool:
        assert all(pool.map(right_every_time, range(6)))


def test_array_addresses_are_the_arrays_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """`_address` (the data pointer read from the array object when its offset was
    verified at import) equals numpy's own for every kind of array a call passes, and calls
    give the same results through the ctypes fallback used when the offset is unknown."""
    import sys

    from graphc.runtime import executable

    if sys.implementation.name == "cpython" and sys.maxsize > 2**32:
        assert executable._DATA_OFFSET > 0  # the fast path is on where it can be
    base = np.zeros((6, 8), np.float32)
    readonly = np.arange(5.0)
    readonly.flags.writeable = False
    cases = [base, base[2:], base[:, 3:][1:], np.zeros(0, np.int64), readonly,
             np.empty((), np.int64), np.ascontiguousarray(np.ones((3, 3)).T)]
    for a in cases:
        assert executable._address(a) == a.ctypes.data
    with gc.Graph("fallback") as g:
        pos = gc.placeholder((), gc.int64, name="pos")
        x = gc.placeholder((4,), gc.float32, name="x")
        out = x * gc.cast(pos, gc.float32)
    f = gc.compile(g, [x, pos], out)
    xv = np.arange(4, dtype=np.float32)
    want = f(xv, np.int64(3))
    monkeypatch.setattr(executable, "_DATA_OFFSET", 0)
    np.testing.assert_array_equal(f(xv, np.int64(3)), want)
    np.testing.assert_array_equal(want, xv * 3)
