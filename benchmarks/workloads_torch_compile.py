"""The torch.compile peer ("torch-compile"): the torch eager functions of
benchmarks.workloads_torch wrapped in torch.compile (default mode, inductor), timed in steady
state.

Inference runners compile the forward function; training runners compile the whole step
(zero_grad, forward, loss, backward, optimizer step): dynamo splits it at `loss.backward()`,
so the forward and the SGD-momentum update are inductor graphs and the backward is the one
AOTAutograd compiled with the forward. `float(loss)` stays outside the compiled function.

Setup checks the first compiled call against a fresh torch eager runner (1e-4 of the
largest |value|), then warms up until a call compiles no new graph, so the timed calls never
include compilation (the optimizer's first step, which creates the momentum buffers, is a
second compilation).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from benchmarks import workloads_torch as wt

Runner = Callable[[], object]
RTOL = 1e-4
MAX_WARMUP = 10


def _as_array(value: object) -> np.ndarray:
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().numpy()
    return np.asarray(value, dtype=np.float64)


def _compiled(make: Callable[[bool], Callable[[int], Runner]]) -> Callable[[int], Runner]:
    """The setup of the torch-compile peer from `make(compiled) -> setup`."""

    def setup(threads: int) -> Runner:
        from torch._dynamo.utils import counters

        expected = _as_array(make(False)(threads)())
        run = make(True)(threads)
        got = _as_array(run())
        err = np.max(np.abs(got - expected)) / max(float(np.max(np.abs(expected))), 1e-30)
        if not np.isfinite(err) or err > RTOL:
            raise AssertionError(f"torch.compile result differs from torch eager: max error "
                                 f"{err:.2e} relative to max |expected| (tolerance {RTOL:g})")
        for _ in range(MAX_WARMUP):
            graphs = counters["stats"]["unique_graphs"]
            run()
            if counters["stats"]["unique_graphs"] == graphs:
                return run
        raise RuntimeError(f"torch.compile still compiles new graphs after {MAX_WARMUP} calls")

    return setup


def _flat(fn: Callable[..., Runner]) -> Callable[[bool], Callable[[int], Runner]]:
    """Adapt `fn(threads, compiled=...)` to the `make(compiled)` shape of `_compiled`."""
    return lambda compiled: lambda threads: fn(threads, compiled=compiled)


PEERS: dict[str, Callable[[int], Runner]] = {
    "ew": _compiled(_flat(wt.ew_torch)),
    "mlp_infer_1": _compiled(lambda c: wt.mlp_infer_torch(1, compiled=c)),
    "mlp_infer_256": _compiled(lambda c: wt.mlp_infer_torch(256, compiled=c)),
    "mlp_train": _compiled(_flat(wt.mlp_train_torch)),
    "lenet_train": _compiled(lambda c: wt.lenet_torch(64, True, compiled=c)),
    "lenet_infer_1": _compiled(lambda c: wt.lenet_torch(1, False, compiled=c)),
    "lenet_infer_64": _compiled(lambda c: wt.lenet_torch(64, False, compiled=c)),
    "lstm_train": _compiled(_flat(wt.lstm_torch)),
    "gpt_infer_1": _compiled(wt.gpt_infer_torch),
    "gpt_train_8": _compiled(_flat(wt.gpt_train_torch)),
    "attention_1024": _compiled(_flat(wt.attention_torch)),
}
