"""The native thread pool: identical results for any thread count, many regions, several
executables, concurrent Python threads, and clean shutdown."""

from __future__ import annotations

import gc as pygc
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import graphc as gc


def _program() -> tuple[gc.Graph, list[gc.Node], list[gc.Node]]:
    with gc.Graph("par") as g:
        x = gc.placeholder((256, 384), gc.float32, name="x")
        w = gc.variable(gc.init.glorot_uniform((384, 256), seed=0), name="w")
        h = gc.tanh(x @ w + 0.25)
        xb = gc.reshape(x, (4, 64, 384))
        # A batched matmul: its GEMMs are split across threads, each task whole GEMMs.
        gram = gc.relu(gc.matmul(xb, xb, transpose_b=True) - 1.0)
        # Pooling and its gradients: the (n, c) planes are split across threads.
        planes = gc.reshape(x, (4, 8, 48, 64))
        pooled = gc.max_pool2d(planes, 3, stride=2, padding=1)
        averaged = gc.avg_pool2d(planes, 2, count_include_pad=False)
        # A direct convolution (wide rows) and its gradients: images / kernel rows split.
        wc = gc.variable(gc.init.glorot_uniform((8, 8, 3, 3), seed=1), name="wc")
        conv = gc.relu(gc.conv2d(planes, wc, padding=1))
        dx, dwc = gc.grad(gc.sum(pooled * pooled) + gc.sum(averaged * averaged)
                          + gc.sum(conv * conv), [x, wc])
        outs = [h, gc.sum(h, axis=0), gc.max(h, axis=1), gc.exp(x) * 0.5, gram, pooled,
                averaged, conv, dx, dwc]
    return g, [x], outs


@pytest.fixture(scope="module")
def executables() -> dict[int, gc.Executable]:
    result = {}
    for threads in (1, 2, 3):
        g, inputs, outputs = _program()
        options = gc.CompileOptions(threads=threads)
        result[threads] = (g, gc.compile(g, inputs, outputs, options=options))
    return result


def test_results_are_identical_for_any_thread_count(executables) -> None:
    x = np.random.default_rng(0).standard_normal((256, 384)).astype(np.float32)
    base = executables[1][1](x)
    for threads in (2, 3):
        for a, b in zip(base, executables[threads][1](x)):
            np.testing.assert_array_equal(a, b)
    g = executables[2][0]
    expected = gc.reference(g, [g["x"]], [g[n.name] for n in _names(executables[2][1])])(x)
    for a, e in zip(executables[2][1](x), expected):
        np.testing.assert_allclose(a, e, rtol=2e-5, atol=2e-5)


def _names(exe: gc.Executable) -> list[gc.Node]:
    return list(exe.signature.outputs)


def test_many_short_parallel_regions(executables) -> None:
    exe = executables[2][1]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((256, 384)).astype(np.float32)
    first = exe(x)
    for _ in range(300):
        again = exe(x)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


def test_concurrent_calls_from_python_threads(executables) -> None:
    rng = np.random.default_rng(2)
    inputs = [rng.standard_normal((256, 384)).astype(np.float32) for _ in range(4)]
    expected = {t: [executables[1][1](x)[0] for x in inputs] for t in (1,)}
    errors: list[str] = []

    def worker(k: int) -> None:
        exe = executables[2 if k % 2 else 3][1]
        for _ in range(25):
            got = exe(inputs[k % 4])[0]
            if not np.array_equal(got, expected[1][k % 4]):
                errors.append(f"worker {k}")
                return

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_dropping_an_executable_leaves_the_process_pool_working() -> None:
    before = threading.active_count()
    g, inputs, outputs = _program()
    exe = gc.compile(g, inputs, outputs, options=gc.CompileOptions(threads=2))
    exe(np.zeros((256, 384), np.float32))
    del exe
    pygc.collect()
    # Native workers are not Python threads; the check is that nothing crashes or hangs
    # after the program's code is freed, and that Python's own thread count is unchanged.
    assert threading.active_count() == before
    g2, inputs2, outputs2 = _program()
    again = gc.compile(g2, inputs2, outputs2, options=gc.CompileOptions(threads=2))
    assert again(np.ones((256, 384), np.float32))[0].shape == (256, 256)


SHARED_POOL = textwrap.dedent("""\
    import os, time
    import numpy as np
    import graphc as gc

    def threads():
        return len(os.listdir("/proc/self/task"))

    def state(tid):
        with open(f"/proc/self/task/{tid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]

    before = threads()
    exes = []
    for k in range(4):
        with gc.Graph(f"g{k}") as g:
            x = gc.placeholder((256, 512), gc.float32, name="x")
            w = gc.variable(np.full((512, 384), 0.01 * (k + 1), np.float32), name="w")
            y = gc.tanh(x @ w)
        exes.append(gc.compile(g, [x], [y], options=gc.CompileOptions(threads=3)))
    x = np.ones((256, 512), np.float32)
    first = []
    for k, exe in enumerate(exes):
        first.append(exe(x)[0])
        np.testing.assert_allclose(first[-1], np.tanh(np.full((256, 384), 0.01 * (k + 1) * 512)),
                                   rtol=1e-6)
    print("workers", threads() - before)
    # Idle workers spin for a moment, then sleep (state S), not forever.
    workers = sorted(int(t) for t in os.listdir("/proc/self/task"))[-2:]
    deadline = time.time() + 10
    while time.time() < deadline and any(state(t) != "S" for t in workers):
        time.sleep(0.01)
    print("asleep", all(state(t) == "S" for t in workers))
    print("again", all(np.array_equal(exe(x)[0], f) for exe, f in zip(exes, first)))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts threads in /proc")
def test_programs_share_one_process_pool() -> None:
    """Four executables at 3 threads start 2 native workers in all (one pool per thread
    count per process), not 2 each; idle workers go to sleep and wake for the next call."""
    done = subprocess.run([sys.executable, "-c", SHARED_POOL], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["workers", "2", "asleep", "True", "again", "True"]


FORKED = textwrap.dedent("""\
    import os
    import numpy as np
    import graphc as gc

    with gc.Graph("fork") as g:
        x = gc.placeholder((256, 512), gc.float32, name="x")
        y = gc.tanh(x @ gc.constant(np.full((512, 384), 0.002, np.float32)))
    f = gc.compile(g, [x], [y], options=gc.CompileOptions(threads=2))
    xs = np.ones((256, 512), np.float32)
    want = f(xs)[0]
    pid = os.fork()
    if pid == 0:
        ok = all(np.array_equal(f(xs)[0], want) for _ in range(20))
        # The parent's worker is not in the child: the pool started one of its own.
        os._exit(0 if ok and len(os.listdir("/proc/self/task")) == 2 else 1)
    _, status = os.waitpid(pid, 0)
    print("child", os.waitstatus_to_exitcode(status), np.array_equal(f(xs)[0], want))
""")


FORK_IN_ENSURE = textwrap.dedent("""\
    import os
    import numpy as np
    import graphc as gc
    from graphc.runtime import process_pool

    # A fork while another thread defines a pool: the child gets the lock held.
    with process_pool._lock:
        pid = os.fork()
        if pid == 0:
            with gc.Graph("child") as g:
                x = gc.placeholder((256, 512), gc.float32, name="x")
                y = gc.tanh(x @ gc.constant(np.full((512, 384), 0.002, np.float32)))
            f = gc.compile(g, [x], [y], options=gc.CompileOptions(threads=3))
            got = f(np.ones((256, 512), np.float32))[0]
            os._exit(0 if np.allclose(got, np.tanh(1.024)) else 1)
    _, status = os.waitpid(pid, 0)
    print("child", os.waitstatus_to_exitcode(status))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forks")
def test_a_fork_while_a_pool_is_being_defined_does_not_hang_the_child() -> None:
    done = subprocess.run([sys.executable, "-c", FORK_IN_ENSURE], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["child", "0"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forks, reads /proc")
def test_a_forked_child_starts_workers_of_its_own() -> None:
    done = subprocess.run([sys.executable, "-c", FORKED], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["child", "0", "True"]


def test_jit_programs_call_the_process_pool_and_exports_embed_one() -> None:
    from graphc.codegen.threadpool import PARALLEL_FOR, process_pool_symbols
    from graphc.pipeline import lower
    from graphc.runtime.arguments import resolve_signature

    g, inputs, outputs = _program()
    sig, _ = resolve_signature(g, inputs, outputs, None, None)
    options = gc.CompileOptions(threads=2)
    jit_ir = lower(g, sig, options, "llvm").ir_text.replace('"', "")
    export_ir = lower(g, sig, options, "llvm", embedded_pool=True).ir_text.replace('"', "")
    shared = process_pool_symbols(2)[0]
    assert f"declare void @{shared}(" in jit_ir and f"call void @{shared}(" in jit_ir
    assert f"define void @{shared}(" not in jit_ir
    assert f"@{PARALLEL_FOR}(" not in jit_ir and "@graphc.pool" not in jit_ir
    assert f"define void @{PARALLEL_FOR}(" in export_ir and shared not in export_ir


def test_clean_exit_with_live_workers() -> None:
    code = textwrap.dedent("""
        import numpy as np, graphc as gc
        with gc.Graph("exit") as g:
            x = gc.placeholder((512, 512), gc.float32, name="x")
            y = gc.tanh(x) @ gc.transpose(x)
        f = gc.compile(g, [x], y, options=gc.CompileOptions(threads=2))
        for _ in range(5):
            f(np.ones((512, 512), np.float32))
        print("done")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "done"


LSTM_VARIANTS = textwrap.dedent("""\
    import itertools
    import numpy as np
    import graphc as gc

    def lstm_step(steps, batch, n_in, hidden, order):
        # An unrolled LSTM whose gates are column slices of one projection (as written by
        # hand): their gradients join in a concat kernel that splits across threads per
        # operand, so one kernel outlines several parallel tasks.
        rng = np.random.default_rng(steps * 1000 + hidden)
        h4 = 4 * hidden
        with gc.Graph("lstm") as g:
            x = gc.placeholder((steps, batch, n_in), gc.float32, name="x")
            y = gc.placeholder((batch,), gc.int32, name="y")
            w_ih = gc.variable(rng.normal(0, 0.1, (n_in, h4)).astype(np.float32), name="w_ih")
            w_hh = gc.variable(rng.normal(0, 0.1, (hidden, h4)).astype(np.float32), name="w_hh")
            b = gc.variable(np.zeros(h4, np.float32), name="b")
            wo = gc.variable(rng.normal(0, 0.1, (hidden, 10)).astype(np.float32), name="wo")
            h = gc.constant(np.zeros((batch, hidden), np.float32))
            c = h
            for t in range(steps):
                z = x[t] @ w_ih + h @ w_hh + b
                gates = [z[:, k * hidden:(k + 1) * hidden] for k in order]
                i, f = gc.sigmoid(gates[0]), gc.sigmoid(gates[1])
                gg, o = gc.tanh(gates[2]), gc.sigmoid(gates[3])
                c = f * c + i * gg
                h = o * gc.tanh(c)
            loss = gc.mean(gc.softmax_cross_entropy(h @ wo, y))
            updates = gc.optim.SGD(lr=0.01, momentum=0.9).minimize(loss)
        xb = rng.normal(size=(steps, batch, n_in)).astype(np.float32)
        yb = rng.integers(0, 10, batch).astype(np.int32)
        return g, [x, y], [loss], updates, (xb, yb)

    count = 0
    orders = itertools.cycle(((0, 1, 2, 3), (3, 1, 0, 2)))
    for steps, batch, (n_in, hidden) in itertools.product(
            (1, 2), (16, 32), ((64, 128), (96, 128))):
        order = next(orders)
        results = []
        for threads in (1, 2):
            g, inputs, outputs, updates, batch_data = lstm_step(steps, batch, n_in, hidden,
                                                                order)
            step = gc.compile(g, inputs, outputs, updates=updates,
                              options=gc.CompileOptions(threads=threads))
            results.append((step(*batch_data)[0], {k: v.copy() for k, v in g.variables.items()}))
        (loss1, vars1), (loss2, vars2) = results
        assert loss1.tobytes() == loss2.tobytes(), (steps, batch, n_in, hidden, order)
        assert all(vars1[k].tobytes() == vars2[k].tobytes() for k in vars1)
        count += 1
    print("variants", count)
""")


def test_unrolled_lstm_variants_compile_at_two_threads() -> None:
    """Issue 13.3: a concat kernel that splits per operand outlined two parallel tasks of one
    name (a raw DuplicatedNameError at 2 threads). Generated variants, in a subprocess so a
    crash of generated code is a failure, not a dead suite; 2 threads == 1 thread bit for bit."""
    done = subprocess.run([sys.executable, "-c", LSTM_VARIANTS], capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "variants 8" in done.stdout
