"""Benchmark workloads, each implemented once per peer (graphc, numpy, torch).

A workload implementation is a function `setup(threads) -> Callable[[], object]` returning
the thing to time (one call = one iteration). Setup (building graphs, compiling, allocating
inputs) is not timed, except by the compile-time workload, which times it. Inputs are
generated with a fixed seed so every peer sees the same data (the peers in
workloads_jax.py, workloads_ort.py and workloads_torch_compile.py reuse the helpers here).

The torch setups take `compiled`: False is torch eager; True wraps the same function in
torch.compile (the torch-compile peer), so both peers run the same Python code.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Runner = Callable[[], object]


def _torch_fn(fn: Callable[..., object], compiled: bool) -> Callable[..., object]:
    """`fn` itself (torch eager) or torch.compile(fn) in the default mode (torch-compile)."""
    if not compiled:
        return fn
    import torch

    return torch.compile(fn)


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    flops: float  # per call (0 if not meaningful)
    bytes: float  # memory traffic per call (for GB/s; 0 if not meaningful)
    peers: dict[str, Callable[[int], Runner]]


# --- (a) elementwise chain --------------------------------------------------------------------

EW_SHAPE = (4096, 1024)


def _ew_data() -> tuple[np.ndarray, np.float32, np.float32]:
    rng = np.random.default_rng(0)
    return rng.standard_normal(EW_SHAPE).astype(np.float32), np.float32(0.7), np.float32(0.1)


def ew_graphc(threads: int) -> Runner:
    import graphc as gc

    x_val, a, b = _ew_data()
    with gc.Graph("ew") as g:
        x = gc.placeholder(EW_SHAPE, gc.float32, name="x")
        y = gc.tanh(x * float(a) + float(b)) * gc.sigmoid(x) + 0.5 * x * x
    f = gc.compile(g, [x], y, options=gc.CompileOptions(threads=threads))
    return lambda: f(x_val)


def ew_numpy(threads: int) -> Runner:
    x, a, b = _ew_data()
    return lambda: np.tanh(x * a + b) * (1 / (1 + np.exp(-x))) + np.float32(0.5) * x * x


def ew_torch(threads: int, compiled: bool = False) -> Runner:
    import torch

    torch.set_num_threads(threads)
    x_val, a, b = _ew_data()
    x = torch.from_numpy(x_val)
    # Python floats: float() of a numpy scalar inside torch.compile is a graph break.
    af, bf = float(a), float(b)

    def chain() -> object:
        return torch.tanh(x * af + bf) * torch.sigmoid(x) + 0.5 * x * x

    f = _torch_fn(chain, compiled)

    def run() -> object:
        with torch.no_grad():
            return f()

    return run


# --- (b, c) the MLP 784-512-512-10 -------------------------------------------------------------

SIZES = (784, 512, 512, 10)


def _mlp_params() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    params = []
    for n_in, n_out in itertools.pairwise(SIZES):
        params.append((rng.standard_normal((n_in, n_out)) * np.sqrt(2 / n_in)).astype(np.float32))
        params.append(np.zeros(n_out, np.float32))
    return params


def _mlp_batch(batch: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    return (rng.standard_normal((batch, SIZES[0])).astype(np.float32),
            rng.integers(0, 10, batch).astype(np.int32))


def _mlp_graph(batch: int, train: bool):
    import graphc as gc

    params = _mlp_params()
    with gc.Graph("mlp") as g:
        x = gc.placeholder((batch, SIZES[0]), gc.float32, name="x")
        y = gc.placeholder((batch,), gc.int32, name="y")
        ws = [gc.variable(p, name=f"p{i}") for i, p in enumerate(params)]
        h = x
        for i in range(0, len(ws), 2):
            h = h @ ws[i] + ws[i + 1]
            if i + 2 < len(ws):
                h = gc.relu(h)
        loss = gc.mean(gc.softmax_cross_entropy(h, y))
        updates = gc.optim.SGD(lr=0.01, momentum=0.9).minimize(loss) if train else None
    return g, x, y, h, loss, updates


def mlp_infer_graphc(batch: int) -> Callable[[int], Runner]:
    def setup(threads: int) -> Runner:
        import graphc as gc

        g, x, _, logits, _, _ = _mlp_graph(batch, train=False)
        f = gc.compile(g, [x], logits, options=gc.CompileOptions(threads=threads))
        xb, _ = _mlp_batch(batch)
        return lambda: f(xb)

    return setup


def mlp_infer_numpy(batch: int) -> Callable[[int], Runner]:
    def setup(threads: int) -> Runner:
        w1, b1, w2, b2, w3, b3 = _mlp_params()
        xb, _ = _mlp_batch(batch)

        def run() -> object:
            h = np.maximum(xb @ w1 + b1, 0)
            h = np.maximum(h @ w2 + b2, 0)
            return h @ w3 + b3

        return run

    return setup


def mlp_infer_torch(batch: int, compiled: bool = False) -> Callable[[int], Runner]:
    def setup(threads: int) -> Runner:
        import torch

        torch.set_num_threads(threads)
        p = [torch.from_numpy(a) for a in _mlp_params()]
        xb = torch.from_numpy(_mlp_batch(batch)[0])

        def forward() -> object:
            h = torch.relu(torch.addmm(p[1], xb, p[0]))
            h = torch.relu(torch.addmm(p[3], h, p[2]))
            return torch.addmm(p[5], h, p[4])

        f = _torch_fn(forward, compiled)

        def run() -> object:
            with torch.no_grad():
                return f().numpy()

        return run

    return setup


def mlp_train_graphc(threads: int) -> Runner:
    import graphc as gc

    g, x, y, _, loss, updates = _mlp_graph(128, train=True)
    f = gc.compile(g, [x, y], [loss], updates=updates,
                   options=gc.CompileOptions(threads=threads))
    xb, yb = _mlp_batch(128)
    return lambda: f(xb, yb)


def mlp_train_numpy(threads: int) -> Runner:
    """A hand-written forward/backward with SGD momentum (what a numpy user would write)."""
    params = _mlp_params()
    velocity = [np.zeros_like(p) for p in params]
    xb, yb = _mlp_batch(128)
    n = len(yb)
    lr, mom = np.float32(0.01), np.float32(0.9)

    def run() -> object:
        w1, b1, w2, b2, w3, b3 = params
        z1 = xb @ w1 + b1
        h1 = np.maximum(z1, 0)
        z2 = h1 @ w2 + b2
        h2 = np.maximum(z2, 0)
        logits = h2 @ w3 + b3
        m = logits.max(axis=1, keepdims=True)
        e = np.exp(logits - m)
        s = e.sum(axis=1, keepdims=True)
        loss = float(np.mean(np.log(s[:, 0]) + m[:, 0] - logits[np.arange(n), yb]))
        d = e / s
        d[np.arange(n), yb] -= 1
        d /= n
        grads = [None] * 6
        grads[4], grads[5] = h2.T @ d, d.sum(0)
        d = (d @ w3.T) * (z2 > 0)
        grads[2], grads[3] = h1.T @ d, d.sum(0)
        d = (d @ w2.T) * (z1 > 0)
        grads[0], grads[1] = xb.T @ d, d.sum(0)
        for p, v, gr in zip(params, velocity, grads):
            v *= mom
            v += gr
            p -= lr * v
        return loss

    return run


def mlp_train_torch(threads: int, compiled: bool = False) -> Runner:
    import torch

    torch.set_num_threads(threads)
    p = [torch.from_numpy(a.copy()).requires_grad_(True) for a in _mlp_params()]
    opt = torch.optim.SGD(p, lr=0.01, momentum=0.9)
    xb_np, yb_np = _mlp_batch(128)
    xb, yb = torch.from_numpy(xb_np), torch.from_numpy(yb_np.astype(np.int64))

    def step() -> object:
        opt.zero_grad(set_to_none=True)
        h = torch.relu(torch.addmm(p[1], xb, p[0]))
        h = torch.relu(torch.addmm(p[3], h, p[2]))
        loss = torch.nn.functional.cross_entropy(torch.addmm(p[5], h, p[4]), yb)
        loss.backward()
        opt.step()
        return loss.detach()

    f = _torch_fn(step, compiled)
    return lambda: float(f())


# --- (d) compile time ---------------------------------------------------------------------------

def compile_graphc(cached: bool) -> Callable[[int], Runner]:
    """Time gc.compile of the MLP training step, with an empty or a warm cache."""

    def setup(threads: int) -> Runner:
        import tempfile

        import graphc as gc

        cache = tempfile.mkdtemp(prefix="graphc-bench-cache-")
        g, x, y, _, loss, updates = _mlp_graph(128, train=True)
        options = gc.CompileOptions(cache_dir=cache, threads=threads)
        if cached:
            gc.compile(g, [x, y], [loss], updates=updates, options=options)

        def run() -> object:
            if not cached:
                for f in __import__("pathlib").Path(cache).glob("*.o"):
                    f.unlink()
            return gc.compile(g, [x, y], [loss], updates=updates, options=options)

        return run

    return setup


def compile_jax_like_first_call(threads: int) -> Runner:
    """torch.compile's first call is the closest installed peer to JAX's jit compile."""
    import torch

    torch.set_num_threads(threads)

    def run() -> object:
        torch._dynamo.reset()
        p = [torch.from_numpy(a.copy()).requires_grad_(True) for a in _mlp_params()]
        xb_np, yb_np = _mlp_batch(128)
        xb, yb = torch.from_numpy(xb_np), torch.from_numpy(yb_np.astype(np.int64))

        @torch.compile
        def step(xb: object, yb: object) -> object:
            h = torch.relu(torch.addmm(p[1], xb, p[0]))
            h = torch.relu(torch.addmm(p[3], h, p[2]))
            loss = torch.nn.functional.cross_entropy(torch.addmm(p[5], h, p[4]), yb)
            loss.backward()
            return loss

        t = time.perf_counter()
        step(xb, yb)
        return time.perf_counter() - t

    return run


WORKLOADS: list[Workload] = [
    Workload("ew", "elementwise tanh(x*a+b)*sigmoid(x)+0.5*x*x, 4096x1024 f32", 0,
             2 * 4 * EW_SHAPE[0] * EW_SHAPE[1],
             {"graphc": ew_graphc, "numpy": ew_numpy, "torch": ew_torch}),
    Workload("mlp_infer_1", "MLP 784-512-512-10 inference, batch 1",
             2 * (784 * 512 + 512 * 512 + 512 * 10), 0,
             {"graphc": mlp_infer_graphc(1), "numpy": mlp_infer_numpy(1),
              "torch": mlp_infer_torch(1)}),
    Workload("mlp_infer_256", "MLP 784-512-512-10 inference, batch 256",
             2 * 256 * (784 * 512 + 512 * 512 + 512 * 10), 0,
             {"graphc": mlp_infer_graphc(256), "numpy": mlp_infer_numpy(256),
              "torch": mlp_infer_torch(256)}),
    Workload("mlp_train", "MLP training step, batch 128, SGD momentum",
             3 * 2 * 128 * (784 * 512 + 512 * 512 + 512 * 10), 0,
             {"graphc": mlp_train_graphc, "numpy": mlp_train_numpy, "torch": mlp_train_torch}),
    Workload("compile_cold", "compile MLP training step, empty cache (torch: torch.compile "
             "first call)", 0, 0,
             {"graphc": compile_graphc(False), "torch": compile_jax_like_first_call}),
    Workload("compile_cached", "compile MLP training step, warm cache", 0, 0,
             {"graphc": compile_graphc(True)}),
]


# --- (e) square GEMM --------------------------------------------------------------------------

def _gemm_data(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    return (rng.standard_normal((n, n)).astype(np.float32),
            rng.standard_normal((n, n)).astype(np.float32))


def gemm_graphc(n: int) -> Callable[[int], Runner]:
    def setup(threads: int) -> Runner:
        import graphc as gc

        a_val, b_val = _gemm_data(n)
        with gc.Graph("gemm") as g:
            a = gc.placeholder((n, n), gc.float32, name="a")
            b = gc.placeholder((n, n), gc.float32, name="b")
            c = a @ b
        f = gc.compile(g, [a, b], c, options=gc.CompileOptions(threads=threads))
        return lambda: f(a_val, b_val)

    return setup


def gemm_numpy(n: int) -> Callable[[int], Runner]:
    def setup(threads: int) -> Runner:
        a, b = _gemm_data(n)
        return lambda: a @ b

    return setup


def gemm_torch(n: int) -> Callable[[int], Runner]:
    def setup(threads: int) -> Runner:
        import torch

        torch.set_num_threads(threads)
        a, b = (torch.from_numpy(v) for v in _gemm_data(n))
        return lambda: a @ b

    return setup


# --- (c) LeNet-5 ---------------------------------------------------------------------------------

LENET_CONV = [(6, 1, 5, 5), (16, 6, 5, 5)]
LENET_DENSE = [(400, 120), (120, 84), (84, 10)]


def _lenet_params() -> list[np.ndarray]:
    rng = np.random.default_rng(4)
    params = []
    for shape in LENET_CONV:
        fan_in = shape[1] * shape[2] * shape[3]
        params += [(rng.standard_normal(shape) * np.sqrt(2 / fan_in)).astype(np.float32),
                   np.zeros(shape[0], np.float32)]
    for shape in LENET_DENSE:
        params += [(rng.standard_normal(shape) * np.sqrt(2 / shape[0])).astype(np.float32),
                   np.zeros(shape[1], np.float32)]
    return params


def _lenet_batch(batch: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    return (rng.standard_normal((batch, 1, 28, 28)).astype(np.float32),
            rng.integers(0, 10, batch).astype(np.int32))


def lenet_graphc(batch: int, train: bool) -> Callable[[int], Runner]:
    def setup(threads: int) -> Runner:
        import graphc as gc

        p = _lenet_params()
        with gc.Graph("lenet") as g:
            x = gc.placeholder((batch, 1, 28, 28), gc.float32, name="x")
            y = gc.placeholder((batch,), gc.int32, name="y")
            v = [gc.variable(a, name=f"p{i}") for i, a in enumerate(p)]
            h = gc.max_pool2d(gc.relu(gc.conv2d(x, v[0], padding=2, bias=v[1])), 2)
            h = gc.max_pool2d(gc.relu(gc.conv2d(h, v[2], bias=v[3])), 2)
            h = gc.reshape(h, (batch, 400))
            h = gc.relu(h @ v[4] + v[5])
            h = gc.relu(h @ v[6] + v[7])
            logits = h @ v[8] + v[9]
            loss = gc.mean(gc.softmax_cross_entropy(logits, y))
            updates = gc.optim.SGD(lr=0.01, momentum=0.9).minimize(loss) if train else None
        options = gc.CompileOptions(threads=threads)
        xb, yb = _lenet_batch(batch)
        if train:
            f = gc.compile(g, [x, y], [loss], updates=updates, options=options)
            return lambda: f(xb, yb)
        f = gc.compile(g, [x], logits, options=options)
        return lambda: f(xb)

    return setup


def lenet_torch(batch: int, train: bool, compiled: bool = False) -> Callable[[int], Runner]:
    def setup(threads: int) -> Runner:
        import torch
        import torch.nn.functional as F  # noqa: N812

        torch.set_num_threads(threads)
        p = [torch.from_numpy(a.copy()).requires_grad_(train) for a in _lenet_params()]
        xb_np, yb_np = _lenet_batch(batch)
        xb, yb = torch.from_numpy(xb_np), torch.from_numpy(yb_np.astype(np.int64))
        opt = torch.optim.SGD(p, lr=0.01, momentum=0.9) if train else None

        def forward() -> object:
            h = F.max_pool2d(F.relu(F.conv2d(xb, p[0], p[1], padding=2)), 2)
            h = F.max_pool2d(F.relu(F.conv2d(h, p[2], p[3])), 2).reshape(batch, 400)
            h = F.relu(torch.addmm(p[5], h, p[4]))
            h = F.relu(torch.addmm(p[7], h, p[6]))
            return torch.addmm(p[9], h, p[8])

        if not train:
            fwd = _torch_fn(forward, compiled)

            def infer() -> object:
                with torch.no_grad():
                    return fwd().numpy()
            return infer

        def step() -> object:
            assert opt is not None
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(forward(), yb)
            loss.backward()
            opt.step()
            return loss.detach()

        f = _torch_fn(step, compiled)
        return lambda: float(f())

    return setup


# --- (f) LSTM ------------------------------------------------------------------------------

LSTM_IN, LSTM_HIDDEN, LSTM_SEQ, LSTM_BATCH = 64, 128, 32, 32


def _lstm_params() -> list[np.ndarray]:
    rng = np.random.default_rng(6)
    s = 1 / np.sqrt(LSTM_HIDDEN)
    return [rng.uniform(-s, s, (LSTM_IN, 4 * LSTM_HIDDEN)).astype(np.float32),
            rng.uniform(-s, s, (LSTM_HIDDEN, 4 * LSTM_HIDDEN)).astype(np.float32),
            np.zeros(4 * LSTM_HIDDEN, np.float32),
            rng.uniform(-s, s, (LSTM_HIDDEN, 10)).astype(np.float32),
            np.zeros(10, np.float32)]


def _lstm_batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return (rng.standard_normal((LSTM_SEQ, LSTM_BATCH, LSTM_IN)).astype(np.float32),
            rng.integers(0, 10, LSTM_BATCH).astype(np.int32))


def lstm_graphc(threads: int) -> Runner:
    import graphc as gc

    p = _lstm_params()
    hid = LSTM_HIDDEN
    with gc.Graph("lstm") as g:
        x = gc.placeholder((LSTM_SEQ, LSTM_BATCH, LSTM_IN), gc.float32, name="x")
        y = gc.placeholder((LSTM_BATCH,), gc.int32, name="y")
        wx, wh, b, wo, bo = (gc.variable(a, name=f"p{i}") for i, a in enumerate(p))
        h = gc.constant(np.zeros((LSTM_BATCH, hid), np.float32))
        c = h
        # The input projection of all steps is one GEMM; the recurrence is one per step.
        xs = gc.reshape(gc.reshape(x, (LSTM_SEQ * LSTM_BATCH, LSTM_IN)) @ wx + b,
                        (LSTM_SEQ, LSTM_BATCH, 4 * hid))
        for t in range(LSTM_SEQ):
            z = xs[t] + h @ wh
            i, f = gc.sigmoid(z[:, :hid]), gc.sigmoid(z[:, hid:2 * hid])
            gg, o = gc.tanh(z[:, 2 * hid:3 * hid]), gc.sigmoid(z[:, 3 * hid:])
            c = f * c + i * gg
            h = o * gc.tanh(c)
        loss = gc.mean(gc.softmax_cross_entropy(h @ wo + bo, y))
        updates = gc.optim.SGD(lr=0.01, momentum=0.9).minimize(loss)
    f = gc.compile(g, [x, y], [loss], updates=updates, options=gc.CompileOptions(threads=threads))
    xb, yb = _lstm_batch()
    return lambda: f(xb, yb)


def lstm_torch(threads: int, compiled: bool = False) -> Runner:
    import torch

    torch.set_num_threads(threads)
    p = [torch.from_numpy(a.copy()).requires_grad_(True) for a in _lstm_params()]
    opt = torch.optim.SGD(p, lr=0.01, momentum=0.9)
    xb_np, yb_np = _lstm_batch()
    xb, yb = torch.from_numpy(xb_np), torch.from_numpy(yb_np.astype(np.int64))
    hid = LSTM_HIDDEN

    def step() -> object:
        opt.zero_grad(set_to_none=True)
        h = torch.zeros(LSTM_BATCH, hid)
        c = torch.zeros(LSTM_BATCH, hid)
        xs = (xb.reshape(-1, LSTM_IN) @ p[0] + p[2]).reshape(LSTM_SEQ, LSTM_BATCH, 4 * hid)
        for t in range(LSTM_SEQ):
            z = xs[t] + h @ p[1]
            i, f = torch.sigmoid(z[:, :hid]), torch.sigmoid(z[:, hid:2 * hid])
            gg, o = torch.tanh(z[:, 2 * hid:3 * hid]), torch.sigmoid(z[:, 3 * hid:])
            c = f * c + i * gg
            h = o * torch.tanh(c)
        loss = torch.nn.functional.cross_entropy(h @ p[3] + p[4], yb)
        loss.backward()
        opt.step()
        return loss.detach()

    f = _torch_fn(step, compiled)
    return lambda: float(f())


def _lenet_flops(batch: int) -> float:
    conv1 = 2 * 28 * 28 * 6 * 25
    conv2 = 2 * 10 * 10 * 16 * 6 * 25
    dense = 2 * (400 * 120 + 120 * 84 + 84 * 10)
    return batch * (conv1 + conv2 + dense)


WORKLOADS += [
    *(Workload(f"gemm_{n}", f"GEMM {n}x{n} f32", 2 * n**3, 0,
               {"graphc": gemm_graphc(n), "numpy": gemm_numpy(n), "torch": gemm_torch(n)})
      for n in (256, 512, 1024)),
    Workload("lenet_train", "LeNet-5 training step, batch 64", 3 * _lenet_flops(64), 0,
             {"graphc": lenet_graphc(64, True), "torch": lenet_torch(64, True)}),
    Workload("lenet_infer_1", "LeNet-5 inference, batch 1", _lenet_flops(1), 0,
             {"graphc": lenet_graphc(1, False), "torch": lenet_torch(1, False)}),
    Workload("lenet_infer_64", "LeNet-5 inference, batch 64", _lenet_flops(64), 0,
             {"graphc": lenet_graphc(64, False), "torch": lenet_torch(64, False)}),
    Workload("lstm_train", "LSTM (in 64, hidden 128, seq 32, batch 32) training step",
             3 * 2 * LSTM_SEQ * LSTM_BATCH * 4 * LSTM_HIDDEN * (LSTM_IN + LSTM_HIDDEN), 0,
             {"graphc": lstm_graphc, "torch": lstm_torch}),
]
