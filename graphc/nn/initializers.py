"""Initializers by name for layers: ``get("glorot_uniform")(shape, seed=..., dtype=...)``.

Every initializer is a function ``(shape, *, seed, dtype) -> np.ndarray``. The names are
`graphc.init`'s functions plus ``"orthogonal"`` (for recurrent kernels, as in Keras) and
``"uniform"`` (U(-0.05, 0.05), Keras' Embedding default). A callable with that signature is
accepted wherever a name is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from graphc import init
from graphc.errors import AttrError
from graphc.ir import DType

__all__ = ["Initializer", "InitializerLike", "get", "orthogonal"]

Initializer = Callable[..., np.ndarray]
InitializerLike = str | Initializer


def orthogonal(shape: Sequence[int], *, seed: int = 0, gain: float = 1.0,
               dtype: DType | str = "float32") -> np.ndarray:
    """A (semi-)orthogonal matrix: the Q factor of a Gaussian matrix's QR decomposition with
    the signs fixed by R's diagonal (Saxe et al. 2014), reshaped to `shape` (rows = shape[0],
    columns = the product of the rest)."""
    shape = tuple(shape)
    if len(shape) < 2:
        raise AttrError(f"orthogonal needs a shape of rank >= 2, got {shape}", op="orthogonal")
    rows, cols = shape[0], int(np.prod(shape[1:]))
    a = np.random.default_rng(seed).standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return np.ascontiguousarray((gain * q).reshape(shape), dtype=DType.of(dtype).np)


def _zeros(shape: Sequence[int], *, seed: int = 0, dtype: DType | str = "float32"
           ) -> np.ndarray:
    return init.zeros(shape, dtype)


def _ones(shape: Sequence[int], *, seed: int = 0, dtype: DType | str = "float32") -> np.ndarray:
    return init.ones(shape, dtype)


def _uniform(shape: Sequence[int], *, seed: int = 0, dtype: DType | str = "float32"
             ) -> np.ndarray:
    return init.uniform(shape, -0.05, 0.05, seed=seed, dtype=dtype)


def _normal(shape: Sequence[int], *, seed: int = 0, dtype: DType | str = "float32"
            ) -> np.ndarray:
    return init.normal(shape, 0.0, 0.05, seed=seed, dtype=dtype)


_BY_NAME: dict[str, Initializer] = {
    "zeros": _zeros,
    "ones": _ones,
    "uniform": _uniform,
    "normal": _normal,
    "glorot_uniform": init.glorot_uniform,
    "glorot_normal": init.glorot_normal,
    "he_uniform": init.he_uniform,
    "he_normal": init.he_normal,
    "xavier_uniform": init.glorot_uniform,
    "xavier_normal": init.glorot_normal,
    "kaiming_uniform": init.he_uniform,
    "kaiming_normal": init.he_normal,
    "orthogonal": orthogonal,
}


def get(spec: InitializerLike) -> Initializer:
    """The initializer named `spec` (or `spec` itself if it is callable)."""
    if callable(spec):
        return spec
    try:
        return _BY_NAME[spec]
    except (KeyError, TypeError):
        known = ", ".join(sorted(_BY_NAME))
        raise AttrError(f"unknown initializer {spec!r} (known: {known})",
                        op="initializer") from None
