"""ONNX's signal ops: DFT and STFT as matmuls with cosine/sine matrices, the window
functions (Hann, Hamming, Blackman) and MelWeightMatrix folded at import.

A signal's last axis holds [real] or [real, imaginary]. The DFT along an axis of length L
(zero-padded or cut to `dft_length`) is X_k = sum_n x_n·e^(-2πi·kn/L): with C = cos(2πkn/L)
and S = sin(2πkn/L), Re X = xr·C + xi·S and Im X = xi·C - xr·S, computed in float64 (the
matrices too, at import) and converted back. `onesided` keeps bins 0..L/2; the inverse
divides by L, and its one-sided form (irfft) rebuilds a real signal from the half spectrum
(bins 1..L/2-1 counted twice). Window sizes, DFT lengths and STFT frame steps must be
known at import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from graphc import builder as gb
from graphc.ir import Node
from graphc.onnx.convert import Context, Value, axis_of, rule
from graphc.onnx.model import NUMPY_DTYPES, graphc_dtype
from graphc.ops import elementwise as ew
from graphc.ops import gather, join, layout, linalg, slicing

Inputs = list[Value | None]


def _known_int(ctx: Context, inputs: Inputs, i: int, what: str) -> int | None:
    v = inputs[i] if len(inputs) > i else None
    if v is None:
        return None
    return int(ctx.need_known(v, what).reshape(-1)[0])


def _fit(x: Node, n: int) -> Node:
    """`x` cut or zero-padded to length `n` along its last axis."""
    have = x.shape[-1]
    if have > n:
        return slicing.slice(x, [0], [n], axes=[x.ndim - 1])
    if have < n:
        zeros = gb.constant(np.zeros((*x.shape[:-1], n - have), x.dtype.np))
        return join.concat([x, zeros], x.ndim - 1)
    return x


def dft_last(re: Node, im: Node | None, length: int, inverse: bool,
             onesided: bool) -> tuple[Node, Node | None]:
    """The DFT of the float64 signal (re, im) along its last axis: (real, imaginary), the
    imaginary part None for the real output of a one-sided inverse."""
    if inverse and onesided:  # irfft: bins 0..L/2 of a Hermitian spectrum -> real signal
        bins = length // 2 + 1
        k = np.arange(bins)[:, None]
        n = np.arange(length)[None, :]
        weight = np.full((bins, 1), 2.0)
        weight[0] = 1.0
        if length % 2 == 0:
            weight[-1] = 1.0
        angle = 2 * np.pi * k * n / length
        out = linalg.matmul(_fit(re, bins), gb.constant(weight * np.cos(angle) / length))
        if im is not None:
            out = ew.sub(out, linalg.matmul(_fit(im, bins),
                                            gb.constant(weight * np.sin(angle) / length)))
        return out, None
    bins = length // 2 + 1 if onesided else length
    angle = 2 * np.pi * np.arange(length)[:, None] * np.arange(bins)[None, :] / length
    scale = 1.0 / length if inverse else 1.0
    c, s = gb.constant(np.cos(angle) * scale), gb.constant(np.sin(angle) * scale)
    sign = 1.0 if inverse else -1.0  # e^(+-iθ) = cos θ +- i sin θ
    xr = _fit(re, length)
    real, imag = linalg.matmul(xr, c), ew.mul(linalg.matmul(xr, s), sign)
    if im is not None:
        xi = _fit(im, length)
        real = ew.sub(real, ew.mul(linalg.matmul(xi, s), sign))
        imag = ew.add(imag, linalg.matmul(xi, c))
    return real, imag


def _dft(ctx: Context, x: Node, axis: int, length: int | None, inverse: bool,
         onesided: bool) -> Node:
    """ONNX's DFT of `x` (..., 1 or 2) along `axis` (not the last)."""
    if x.shape[-1] not in (1, 2):
        raise ctx.error(f"the last axis holds [real] or [real, imaginary]; it has "
                        f"{x.shape[-1]} values")
    axis = axis_of(axis, x.ndim, ctx)
    if axis == x.ndim - 1:
        raise ctx.error("axis must not be the last (complex) axis")
    if length is None:
        length = 2 * (x.shape[axis] - 1) if inverse and onesided else x.shape[axis]
    if length <= 0:
        raise ctx.error(f"dft_length {length} must be positive")
    rank = x.ndim - 1  # without the complex axis
    perm = [d for d in range(rank) if d != axis] + [axis]
    wide = ew.cast(x, "float64") if x.dtype.name != "float64" else x
    parts = [layout.transpose(layout.squeeze(slicing.slice(wide, [i], [i + 1], axes=[rank]),
                                             rank), perm) for i in range(x.shape[-1])]
    real, imag = dft_last(parts[0], parts[1] if len(parts) > 1 else None, length, inverse,
                          onesided)
    back = list(np.argsort(perm))
    out = [layout.transpose(p, back) for p in (real, imag) if p is not None]
    y = join.stack(out, rank) if len(out) > 1 else layout.expand_dims(out[0], rank)
    return ew.cast(y, x.dtype) if x.dtype.name != "float64" else y


@rule("DFT", 17)
def _dft17(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """DFT-17/19: the axis is an attribute (default 1)."""
    return [_dft(ctx, ctx.node(inputs[0]), int(attrs.get("axis", 1)),
                 _known_int(ctx, inputs, 1, "dft_length"), bool(int(attrs.get("inverse", 0))),
                 bool(int(attrs.get("onesided", 0))))]


@rule("DFT", 20)
def _dft20(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """DFT-20: the axis is an input (default -2, the last axis before the complex one)."""
    axis = _known_int(ctx, inputs, 2, "axis")
    return [_dft(ctx, ctx.node(inputs[0]), -2 if axis is None else axis,
                 _known_int(ctx, inputs, 1, "dft_length"), bool(int(attrs.get("inverse", 0))),
                 bool(int(attrs.get("onesided", 0))))]


@rule("STFT", 17)
def _stft(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """Frames of `frame_length` every `frame_step` samples of the signal (B, L, 1 or 2),
    each weighted by `window` (default ones) and transformed: (B, frames, bins, 2)."""
    x = ctx.node(inputs[0])
    step = _known_int(ctx, inputs, 1, "frame_step")
    window = ctx.node(inputs[2]) if len(inputs) > 2 and inputs[2] is not None else None
    length = _known_int(ctx, inputs, 3, "frame_length")
    if length is None:
        length = window.shape[0] if window is not None else x.shape[1]
    if x.ndim != 3 or step is None or step <= 0 or not 0 < length <= x.shape[1]:
        raise ctx.error(f"signal {tuple(x.shape)}, frame_step {step}, frame_length {length}: "
                        "expected (batch, length, 1 or 2), a positive step and a frame "
                        "within the signal")
    frames = 1 + (x.shape[1] - length) // step
    index = np.arange(frames)[:, None] * step + np.arange(length)[None, :]
    framed = gather.take(x, gb.constant(index.astype(np.int64)), 1)  # (B, F, len, c)
    if window is not None:
        if tuple(window.shape) != (length,):
            raise ctx.error(f"window {tuple(window.shape)}; expected ({length},)")
        framed = ew.mul(framed, layout.reshape(window, [1, 1, length, 1]))
    return [_dft(ctx, framed, 2, length, False, bool(int(attrs.get("onesided", 1))))]


def _window(op: str, values: Callable[[np.ndarray, int], np.ndarray]) -> None:
    def convert(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
        size = _known_int(ctx, inputs, 0, "size")
        if size is None or size < 0:
            raise ctx.error(f"size {size} must be a non-negative integer")
        n = np.arange(size, dtype=np.float64)
        span = size if int(attrs.get("periodic", 1)) else size - 1
        dtype = NUMPY_DTYPES[graphc_dtype(int(attrs.get("output_datatype", 1)),
                                          f"{op} node '{ctx.node_name}'")]
        with np.errstate(divide="ignore", invalid="ignore"):
            return [np.asarray(values(n, span), dtype=dtype)]
    rule(op, 17)(convert)


_window("HannWindow", lambda n, span: np.sin(np.pi * n / span) ** 2)
_window("HammingWindow", lambda n, span: 25 / 46 - (21 / 46) * np.cos(2 * np.pi * n / span))
_window("BlackmanWindow", lambda n, span: 0.42 - 0.5 * np.cos(2 * np.pi * n / span)
        + 0.08 * np.cos(4 * np.pi * n / span))


@rule("MelWeightMatrix", 17)
def _mel_weights(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    """(dft_length/2 + 1, num_mel_bins) triangular filters evenly spaced on the mel scale,
    as ONNX's reference computes them (edges rounded down to whole bins)."""
    mels = _known_int(ctx, inputs, 0, "num_mel_bins")
    dft = _known_int(ctx, inputs, 1, "dft_length")
    rate = _known_int(ctx, inputs, 2, "sample_rate")
    lo = float(ctx.need_known(inputs[3], "lower_edge_hertz").reshape(-1)[0])
    hi = float(ctx.need_known(inputs[4], "upper_edge_hertz").reshape(-1)[0])
    if not mels or not dft or not rate or mels <= 0 or dft <= 0 or rate <= 0:
        raise ctx.error("num_mel_bins, dft_length and sample_rate must be positive")
    low_mel = 2595 * np.log1p(lo / 700) / np.log(10)
    high_mel = 2595 * np.log1p(hi / 700) / np.log(10)
    edges = np.arange(mels + 2) * ((high_mel - low_mel) / (mels + 2)) + low_mel
    edges = 700 * np.expm1(edges / 2595 * np.log(10))
    bins = (((dft + 1) * edges) // rate).astype(int)
    out = np.zeros((dft // 2 + 1, mels))
    for i in range(mels):
        left, center, right = bins[i], bins[i + 1], bins[i + 2]
        if center == left:
            out[center, i] = 1
        else:
            j = np.arange(left, center + 1)
            out[j, i] = (j - left) / (center - left)
        if right > center:
            j = np.arange(center, right)
            out[j, i] = (right - j) / (right - center)
    dtype = NUMPY_DTYPES[graphc_dtype(int(attrs.get("output_datatype", 1)),
                                      f"MelWeightMatrix node '{ctx.node_name}'")]
    return [out.astype(dtype)]
