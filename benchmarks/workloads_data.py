"""The inputs every benchmark peer sees: workload shapes, parameters and batches.

Each helper draws from its own fixed seed, so the graphc, numpy and torch setups
(workloads.py, workloads_torch.py) and the peers in workloads_jax.py, workloads_ort.py and
workloads_torch_compile.py all run on the same data, and a call returns fresh arrays that
a setup may mutate (the numpy and torch training steps update their parameters in place).
"""

from __future__ import annotations

import itertools

import numpy as np

# --- elementwise chain --------------------------------------------------------------------------

EW_SHAPE = (4096, 1024)


def _ew_data() -> tuple[np.ndarray, np.float32, np.float32]:
    rng = np.random.default_rng(0)
    return rng.standard_normal(EW_SHAPE).astype(np.float32), np.float32(0.7), np.float32(0.1)


# --- the MLP 784-512-512-10 ---------------------------------------------------------------

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


# --- square GEMM --------------------------------------------------------------------------

def _gemm_data(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    return (rng.standard_normal((n, n)).astype(np.float32),
            rng.standard_normal((n, n)).astype(np.float32))


# --- LeNet-5 ---------------------------------------------------------------------------------

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


# --- LSTM ------------------------------------------------------------------------------

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
