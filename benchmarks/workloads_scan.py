"""Loop workloads (issue 16): the LSTM training step with its recurrence in one `gc.scan`,
at the `lstm_train` shape (T=32, against the unrolled graph of that row) and at T=1024
(against PyTorch's `nn.LSTM`), and the compile time of a `gc.Model` with `LSTM(64)` over
T = 32, 1024 and 4096 steps (cold: no compile cache).

The scan step computes what `lstm_graphc` computes: the input projection of every step is
one GEMM before the loop, the body adds ``h @ W_hh`` and applies the gates.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from benchmarks.workloads_data import LSTM_BATCH, LSTM_HIDDEN, LSTM_IN
from benchmarks.workloads_data import _lstm_params as _params

Runner = Callable[[], object]

LONG_SEQ = 1024
COMPILE_SEQS = (32, 1024, 4096)


def _batch(seq: int) -> tuple[np.ndarray, np.ndarray]:
    """`lstm_train`'s batch at another length (the same generator and seed)."""
    rng = np.random.default_rng(7)
    return (rng.standard_normal((seq, LSTM_BATCH, LSTM_IN)).astype(np.float32),
            rng.integers(0, 10, LSTM_BATCH).astype(np.int32))


def flops(seq: int) -> float:
    """Forward + backward (3x) of the input and recurrent products."""
    return 3 * 2 * seq * LSTM_BATCH * 4 * LSTM_HIDDEN * (LSTM_IN + LSTM_HIDDEN)


def graphc_scan(seq: int) -> Callable[[int], Runner]:
    def setup(threads: int) -> Runner:
        import graphc as gc

        hid = LSTM_HIDDEN
        with gc.Graph("lstm_scan") as g:
            x = gc.placeholder((seq, LSTM_BATCH, LSTM_IN), gc.float32, name="x")
            y = gc.placeholder((LSTM_BATCH,), gc.int32, name="y")
            wx, wh, b, wo, bo = (gc.variable(a, name=f"p{i}") for i, a in enumerate(_params()))
            xs = gc.reshape(gc.reshape(x, (seq * LSTM_BATCH, LSTM_IN)) @ wx + b,
                            (seq, LSTM_BATCH, 4 * hid))

            def cell(state: tuple, xt: gc.Node) -> tuple:
                h, c = state
                z = xt + h @ wh
                i, f = gc.sigmoid(z[:, :hid]), gc.sigmoid(z[:, hid:2 * hid])
                gg, o = gc.tanh(z[:, 2 * hid:3 * hid]), gc.sigmoid(z[:, 3 * hid:])
                c = f * c + i * gg
                return (o * gc.tanh(c), c), None

            zero = gc.constant(np.zeros((LSTM_BATCH, hid), np.float32))
            (h, _), _ = gc.scan(cell, (zero, zero), xs)
            loss = gc.mean(gc.softmax_cross_entropy(h @ wo + bo, y))
            updates = gc.optim.SGD(lr=0.01, momentum=0.9).minimize(loss)
        f = gc.compile(g, [x, y], [loss], updates=updates,
                       options=gc.CompileOptions(threads=threads))
        xb, yb = _batch(seq)
        return lambda: f(xb, yb)

    return setup


def torch_nn_lstm(seq: int) -> Callable[[int], Runner]:
    """PyTorch eager with its fused `nn.LSTM` (the same weights, SGD momentum)."""

    def setup(threads: int) -> Runner:
        import torch

        torch.set_num_threads(threads)
        wx, wh, b, wo, bo = (torch.from_numpy(a.copy()) for a in _params())
        lstm = torch.nn.LSTM(LSTM_IN, LSTM_HIDDEN)
        head = torch.nn.Linear(LSTM_HIDDEN, 10)
        with torch.no_grad():  # PyTorch stores W^T and two biases
            lstm.weight_ih_l0.copy_(wx.T)
            lstm.weight_hh_l0.copy_(wh.T)
            lstm.bias_ih_l0.copy_(b)
            lstm.bias_hh_l0.zero_()
            head.weight.copy_(wo.T)
            head.bias.copy_(bo)
        params = [*lstm.parameters(), *head.parameters()]
        opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
        xb_np, yb_np = _batch(seq)
        xb, yb = torch.from_numpy(xb_np), torch.from_numpy(yb_np.astype(np.int64))

        def step() -> float:
            opt.zero_grad(set_to_none=True)
            _, (h, _) = lstm(xb)
            loss = torch.nn.functional.cross_entropy(head(h[0]), yb)
            loss.backward()
            opt.step()
            return float(loss.detach())

        return step

    return setup


def compile_model(seq: int) -> Callable[[int], Runner]:
    """gc.Model(LSTM(64) -> Dense(10)) training step over `seq` steps of 16 features,
    batch 32: build and compile, no compile cache."""

    def setup(threads: int) -> Runner:
        import graphc as gc
        from graphc import nn

        def run() -> object:
            model = gc.Model(nn.Sequential([nn.LSTM(64), nn.Dense(10)]), (seq, 16),
                             compile_options=gc.CompileOptions(threads=threads,
                                                               cache_dir=None))
            return model.train_step_fn(32)

        return run

    return setup
