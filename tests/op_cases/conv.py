"""Op-table rows for the conv family.

The numpy expressions are direct, slow definitions written independently of graphc's
references: they enumerate every (output position, kernel offset) pair with explicit bounds
checks instead of padding arrays, and accumulate channel products one tap at a time. Shapes
are tiny so the Python loops stay cheap.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

import graphc as gc
from tests.op_table import Arg, OpCase

P2 = tuple[int, int]
PADS = tuple[P2, P2]
NO_PAD: PADS = ((0, 0), (0, 0))


def same_pads(hw: P2, kernel: P2, stride: P2, dilation: P2 = (1, 1)) -> PADS:
    """TensorFlow's "same": out = ceil(size/stride), the odd pad at the end."""
    pads = []
    for size, k, s, d in zip(hw, kernel, stride, dilation):
        out = (size + s - 1) // s
        need = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        pads.append((need // 2, need - need // 2))
    return (pads[0], pads[1])


def taps(hw: P2, kernel: P2, stride: P2, pads: PADS, dilation: P2 = (1, 1)
         ) -> tuple[P2, list[tuple[int, int, int, int, int, int]]]:
    """Output size and every (oy, ox, i, j, iy, ix): output (oy, ox) reads input (iy, ix)
    through kernel offset (i, j); reads of padding are left out."""
    out = tuple((n + lo + hi - d * (k - 1) - 1) // s + 1
                for n, (lo, hi), k, s, d in zip(hw, pads, kernel, stride, dilation))
    found = []
    for oy in range(out[0]):
        for ox in range(out[1]):
            for i in range(kernel[0]):
                for j in range(kernel[1]):
                    iy = oy * stride[0] - pads[0][0] + i * dilation[0]
                    ix = ox * stride[1] - pads[1][0] + j * dilation[1]
                    if 0 <= iy < hw[0] and 0 <= ix < hw[1]:
                        found.append((oy, ox, i, j, iy, ix))
    return (out[0], out[1]), found


def _group_slices(c: int, o: int, groups: int) -> Iterator[tuple[slice, slice]]:
    cg, og = c // groups, o // groups
    for g in range(groups):
        yield slice(g * cg, (g + 1) * cg), slice(g * og, (g + 1) * og)


def np_conv2d(x: np.ndarray, w: np.ndarray, stride: P2 = (1, 1), pads: PADS = NO_PAD,
              dilation: P2 = (1, 1), groups: int = 1) -> np.ndarray:
    out, found = taps(x.shape[2:], w.shape[2:], stride, pads, dilation)
    y = np.zeros((x.shape[0], w.shape[0], *out))
    for oy, ox, i, j, iy, ix in found:
        for cs, os in _group_slices(x.shape[1], w.shape[0], groups):
            y[:, os, oy, ox] += x[:, cs, iy, ix] @ w[os, :, i, j].T
    return y


def np_conv2d_grad_input(g: np.ndarray, w: np.ndarray, x_shape: tuple[int, ...],
                         stride: P2 = (1, 1), pads: PADS = NO_PAD, dilation: P2 = (1, 1),
                         groups: int = 1) -> np.ndarray:
    _, found = taps(x_shape[2:], w.shape[2:], stride, pads, dilation)
    dx = np.zeros(x_shape)
    for oy, ox, i, j, iy, ix in found:
        for cs, os in _group_slices(x_shape[1], w.shape[0], groups):
            dx[:, cs, iy, ix] += g[:, os, oy, ox] @ w[os, :, i, j]
    return dx


def np_conv2d_grad_weight(x: np.ndarray, g: np.ndarray, w_shape: tuple[int, ...],
                          stride: P2 = (1, 1), pads: PADS = NO_PAD, dilation: P2 = (1, 1),
                          groups: int = 1) -> np.ndarray:
    _, found = taps(x.shape[2:], w_shape[2:], stride, pads, dilation)
    dw = np.zeros(w_shape)
    for oy, ox, i, j, iy, ix in found:
        for cs, os in _group_slices(x.shape[1], w_shape[0], groups):
            dw[os, :, i, j] += g[:, os, oy, ox].T @ x[:, cs, iy, ix]
    return dw


def _windows(hw: P2, kernel: P2, stride: P2, pads: PADS
             ) -> tuple[P2, dict[P2, list[tuple[int, int]]]]:
    """Output size and, per output position, its input positions in row-major kernel order."""
    out, found = taps(hw, kernel, stride, pads)
    per_out: dict[P2, list[tuple[int, int]]] = {}
    for oy, ox, _, _, iy, ix in found:
        per_out.setdefault((oy, ox), []).append((iy, ix))
    return out, per_out


def np_max_pool2d(x: np.ndarray, kernel: P2, stride: P2, pads: PADS = NO_PAD) -> np.ndarray:
    out, per_out = _windows(x.shape[2:], kernel, stride, pads)
    y = np.empty((*x.shape[:2], *out))
    for (oy, ox), pos in per_out.items():
        y[:, :, oy, ox] = np.stack([x[:, :, iy, ix] for iy, ix in pos]).max(axis=0)
    return y


def _first_max(x: np.ndarray, pos: list[tuple[int, int]]) -> np.ndarray:
    return np.stack([x[:, :, iy, ix] for iy, ix in pos]).argmax(axis=0)


def np_max_pool2d_grad(x: np.ndarray, g: np.ndarray, kernel: P2, stride: P2,
                       pads: PADS = NO_PAD) -> np.ndarray:
    _, per_out = _windows(x.shape[2:], kernel, stride, pads)
    dx = np.zeros(x.shape)
    for (oy, ox), pos in per_out.items():
        best = _first_max(x, pos)
        for t, (iy, ix) in enumerate(pos):
            dx[:, :, iy, ix] += np.where(best == t, g[:, :, oy, ox], 0.0)
    return dx


def np_max_pool2d_gather(x: np.ndarray, h: np.ndarray, kernel: P2, stride: P2,
                         pads: PADS = NO_PAD) -> np.ndarray:
    out, per_out = _windows(x.shape[2:], kernel, stride, pads)
    y = np.empty((*x.shape[:2], *out))
    for (oy, ox), pos in per_out.items():
        values = np.stack([h[:, :, iy, ix] for iy, ix in pos])
        y[:, :, oy, ox] = np.take_along_axis(values, _first_max(x, pos)[None], axis=0)[0]
    return y


def np_avg_pool2d(x: np.ndarray, kernel: P2, stride: P2, pads: PADS = NO_PAD,
                  include_pad: bool = True) -> np.ndarray:
    out, per_out = _windows(x.shape[2:], kernel, stride, pads)
    y = np.empty((*x.shape[:2], *out))
    for (oy, ox), pos in per_out.items():
        div = kernel[0] * kernel[1] if include_pad else len(pos)
        y[:, :, oy, ox] = sum(x[:, :, iy, ix] for iy, ix in pos) / div
    return y


def np_avg_pool2d_grad(g: np.ndarray, x_shape: tuple[int, ...], kernel: P2, stride: P2,
                       pads: PADS = NO_PAD, include_pad: bool = True) -> np.ndarray:
    _, per_out = _windows(x_shape[2:], kernel, stride, pads)
    dx = np.zeros(x_shape)
    for (oy, ox), pos in per_out.items():
        div = kernel[0] * kernel[1] if include_pad else len(pos)
        for iy, ix in pos:
            dx[:, :, iy, ix] += g[:, :, oy, ox] / div
    return dx


# --- rows -------------------------------------------------------------------------------

# float32 sums of a few dozen products: allow round-off near zero.
_TOL32: dict[str, Any] = {"rtol32": 1e-5, "atol32": 2e-5}


def _conv(id: str, x: tuple[int, ...], w: tuple[int, ...], numpy_kw: dict[str, Any],
          **gc_kw: Any) -> OpCase:
    return OpCase(id, ("conv2d",), lambda a, b: gc.conv2d(a, b, **gc_kw),
                  lambda a, b: np_conv2d(a, b, **numpy_kw), (Arg(x), Arg(w)), **_TOL32)


def _conv_gi(id: str, x: tuple[int, ...], w: tuple[int, ...], g: tuple[int, ...],
             numpy_kw: dict[str, Any], **gc_kw: Any) -> OpCase:
    return OpCase(id, ("conv2d_grad_input",),
                  lambda a, b: gc.conv2d_grad_input(a, b, x, **gc_kw),
                  lambda a, b: np_conv2d_grad_input(a, b, x, **numpy_kw),
                  (Arg(g), Arg(w)), **_TOL32)


def _conv_gw(id: str, x: tuple[int, ...], w: tuple[int, ...], g: tuple[int, ...],
             numpy_kw: dict[str, Any], grad_tol: float = 1e-6, **gc_kw: Any) -> OpCase:
    return OpCase(id, ("conv2d_grad_weight",),
                  lambda a, b: gc.conv2d_grad_weight(a, b, w, **gc_kw),
                  lambda a, b: np_conv2d_grad_weight(a, b, w, **numpy_kw),
                  (Arg(x), Arg(g)), grad_tol=grad_tol, **_TOL32)


CONV_CASES: list[OpCase] = [
    _conv("conv2d", (2, 3, 5, 5), (4, 3, 3, 3), {}),
    _conv("conv2d:batch1_1x1", (1, 3, 4, 3), (2, 3, 1, 1), {}),
    _conv("conv2d:stride2_same", (1, 3, 7, 6), (2, 3, 3, 3),
          {"stride": (2, 2), "pads": ((1, 1), (0, 1))}, stride=2, padding="same"),
    _conv("conv2d:same_even_kernel", (2, 2, 5, 4), (3, 2, 2, 4),
          {"pads": same_pads((5, 4), (2, 4), (1, 1))}, padding="same"),
    _conv("conv2d:valid_nonsquare_stride", (2, 2, 6, 7), (3, 2, 2, 3),
          {"stride": (1, 2)}, stride=(1, 2), padding="valid"),
    _conv("conv2d:asymmetric_pads", (1, 2, 5, 4), (2, 2, 3, 2),
          {"pads": ((1, 0), (2, 1))}, padding=((1, 0), (2, 1))),
    _conv("conv2d:pair_padding", (1, 2, 4, 4), (2, 2, 3, 3),
          {"pads": ((2, 2), (1, 1))}, padding=(2, 1)),
    _conv("conv2d:dilation2", (1, 2, 7, 7), (2, 2, 3, 3),
          {"pads": ((2, 2), (2, 2)), "dilation": (2, 2)}, padding=2, dilation=2),
    _conv("conv2d:same_stride_dilation", (2, 2, 8, 7), (2, 2, 3, 2),
          {"stride": (2, 2), "dilation": (2, 3),
           "pads": same_pads((8, 7), (3, 2), (2, 2), (2, 3))},
          stride=2, dilation=(2, 3), padding="same"),
    _conv("conv2d:groups2", (2, 4, 5, 5), (6, 2, 3, 3),
          {"pads": ((1, 1), (1, 1)), "groups": 2}, padding=1, groups=2),
    _conv("conv2d:depthwise", (1, 3, 5, 5), (3, 1, 3, 3),
          {"pads": ((1, 1), (1, 1)), "groups": 3}, padding="same", groups=3),
    _conv("conv2d:depthwise_multiplier_stride2", (2, 2, 6, 5), (4, 1, 2, 3),
          {"stride": (2, 2), "groups": 2}, stride=2, groups=2),
    OpCase("conv2d:bias", ("conv2d",), lambda a, b, c: gc.conv2d(a, b, padding=1, bias=c),
           lambda a, b, c: np_conv2d(a, b, pads=((1, 1), (1, 1))) + c[:, None, None],
           (Arg((2, 2, 4, 4)), Arg((3, 2, 3, 3)), Arg((3,))), **_TOL32),
    _conv_gi("conv2d_grad_input", (2, 3, 5, 5), (4, 3, 3, 3), (2, 4, 3, 3), {}),
    # (W - kw) is odd with stride 2: the last input column is read by no window: zero gradient.
    _conv_gi("conv2d_grad_input:stride2_uncovered", (1, 2, 6, 5), (3, 2, 3, 2), (1, 3, 3, 2),
             {"stride": (2, 2), "pads": ((1, 0), (0, 0))}, stride=2, padding=((1, 0), (0, 0))),
    _conv_gi("conv2d_grad_input:groups2_dilation", (2, 4, 6, 6), (4, 2, 2, 2), (2, 4, 6, 6),
             {"pads": ((1, 1), (1, 1)), "dilation": (2, 2), "groups": 2},
             padding=1, dilation=2, groups=2),
    _conv_gi("conv2d_grad_input:depthwise_same", (1, 3, 5, 4), (3, 1, 3, 3), (1, 3, 3, 2),
             {"stride": (2, 2), "pads": same_pads((5, 4), (3, 3), (2, 2)), "groups": 3},
             stride=2, padding="same", groups=3),
    _conv_gw("conv2d_grad_weight", (2, 3, 5, 5), (4, 3, 3, 3), (2, 4, 3, 3), {}),
    # Bilinear, so finite differences are exact up to round-off (abs error ~2e-9 here), but
    # one random direction gives a small derivative (~1e-3): relative error 2e-6.
    _conv_gw("conv2d_grad_weight:stride2_asym", (2, 2, 6, 5), (3, 2, 3, 2), (2, 3, 3, 2),
             {"stride": (2, 2), "pads": ((1, 0), (0, 0))}, stride=2, padding=((1, 0), (0, 0)),
             grad_tol=1e-5),
    _conv_gw("conv2d_grad_weight:groups2_dilation", (1, 4, 6, 6), (4, 2, 2, 2), (1, 4, 6, 6),
             {"pads": ((1, 1), (1, 1)), "dilation": (2, 2), "groups": 2},
             padding=1, dilation=2, groups=2),
    _conv_gw("conv2d_grad_weight:depthwise_nonsquare", (2, 3, 5, 6), (6, 1, 2, 3),
             (2, 6, 4, 4), {"groups": 3}, groups=3),
]


def _pool_row(id: str, op: str, build: Any, ref: Any, args: tuple[Arg, ...],
              grad: bool = True) -> OpCase:
    return OpCase(id, (op,), build, ref, args, grad=grad, **_TOL32)


_X = Arg((2, 3, 6, 6), "distinct")  # distinct values: no ties, max is differentiable

POOL_CASES: list[OpCase] = [
    _pool_row("max_pool2d", "max_pool2d", lambda x: gc.max_pool2d(x, 2),
              lambda x: np_max_pool2d(x, (2, 2), (2, 2)), (_X,)),
    _pool_row("max_pool2d:k3_s1_pad1", "max_pool2d", lambda x: gc.max_pool2d(x, 3, 1, 1),
              lambda x: np_max_pool2d(x, (3, 3), (1, 1), ((1, 1), (1, 1))),
              (Arg((1, 2, 5, 4), "distinct"),)),
    _pool_row("max_pool2d:same_stride2", "max_pool2d",
              lambda x: gc.max_pool2d(x, 3, 2, "same"),
              lambda x: np_max_pool2d(x, (3, 3), (2, 2), same_pads((7, 5), (3, 3), (2, 2))),
              (Arg((1, 2, 7, 5), "distinct"),)),
    _pool_row("max_pool2d:nonsquare_asym", "max_pool2d",
              lambda x: gc.max_pool2d(x, (2, 3), (1, 2), ((0, 1), (1, 0))),
              lambda x: np_max_pool2d(x, (2, 3), (1, 2), ((0, 1), (1, 0))),
              (Arg((2, 2, 4, 6), "distinct"),)),
    _pool_row("max_pool2d_grad", "max_pool2d_grad",
              lambda x, g: gc.max_pool2d_grad(x, g, 2),
              lambda x, g: np_max_pool2d_grad(x, g, (2, 2), (2, 2)), (_X, Arg((2, 3, 3, 3)))),
    _pool_row("max_pool2d_grad:overlap_pad", "max_pool2d_grad",
              lambda x, g: gc.max_pool2d_grad(x, g, 3, 2, 1),
              lambda x, g: np_max_pool2d_grad(x, g, (3, 3), (2, 2), ((1, 1), (1, 1))),
              (Arg((1, 2, 5, 6), "distinct"), Arg((1, 2, 3, 3)))),
    _pool_row("max_pool2d_gather", "max_pool2d_gather",
              lambda x, h: gc.max_pool2d_gather(x, h, 2),
              lambda x, h: np_max_pool2d_gather(x, h, (2, 2), (2, 2)), (_X, Arg((2, 3, 6, 6)))),
    _pool_row("max_pool2d_gather:overlap_same", "max_pool2d_gather",
              lambda x, h: gc.max_pool2d_gather(x, h, (3, 2), 1, "same"),
              lambda x, h: np_max_pool2d_gather(x, h, (3, 2), (1, 1), ((1, 1), (0, 1))),
              (Arg((1, 2, 4, 5), "distinct"), Arg((1, 2, 4, 5)))),
    _pool_row("avg_pool2d", "avg_pool2d", lambda x: gc.avg_pool2d(x, 2),
              lambda x: np_avg_pool2d(x, (2, 2), (2, 2)), (Arg((2, 3, 6, 6)),)),
    _pool_row("avg_pool2d:pad_included", "avg_pool2d", lambda x: gc.avg_pool2d(x, 3, 2, 1),
              lambda x: np_avg_pool2d(x, (3, 3), (2, 2), ((1, 1), (1, 1))),
              (Arg((1, 2, 5, 6)),)),
    _pool_row("avg_pool2d:pad_excluded", "avg_pool2d",
              lambda x: gc.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
              lambda x: np_avg_pool2d(x, (3, 3), (2, 2), ((1, 1), (1, 1)), include_pad=False),
              (Arg((1, 2, 5, 6)),)),
    _pool_row("avg_pool2d:same_nonsquare", "avg_pool2d",
              lambda x: gc.avg_pool2d(x, (2, 3), (2, 1), "same", count_include_pad=False),
              lambda x: np_avg_pool2d(x, (2, 3), (2, 1), same_pads((5, 4), (2, 3), (2, 1)),
                                      include_pad=False),
              (Arg((2, 2, 5, 4)),)),
    _pool_row("avg_pool2d_grad", "avg_pool2d_grad",
              lambda g: gc.avg_pool2d_grad(g, (2, 3, 6, 6), 2),
              lambda g: np_avg_pool2d_grad(g, (2, 3, 6, 6), (2, 2), (2, 2)),
              (Arg((2, 3, 3, 3)),)),
    _pool_row("avg_pool2d_grad:pad_excluded", "avg_pool2d_grad",
              lambda g: gc.avg_pool2d_grad(g, (1, 2, 5, 6), 3, 2, 1, count_include_pad=False),
              lambda g: np_avg_pool2d_grad(g, (1, 2, 5, 6), (3, 3), (2, 2), ((1, 1), (1, 1)),
                                           include_pad=False),
              (Arg((1, 2, 3, 3)),)),
    _pool_row("global_avg_pool2d", "global_avg_pool2d", gc.global_avg_pool2d,
              lambda x: np.einsum("nchw->nc", x) / (x.shape[2] * x.shape[3]),
              (Arg((2, 3, 4, 5)),)),
    _pool_row("global_avg_pool2d:keepdims", "global_avg_pool2d",
              lambda x: gc.global_avg_pool2d(x, keepdims=True),
              lambda x: np.einsum("nchw->nc", x)[:, :, None, None] / (x.shape[2] * x.shape[3]),
              (Arg((1, 2, 3, 3)),)),
]

# --- the Winograd transforms --------------------------------------------------------------

_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]])
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]])


def np_winograd_input(x: np.ndarray, pads: PADS) -> np.ndarray:
    """Tile by tile: d[i, j] = x[n, c, 2ty + i - pt, 2tx + j - pl] (0 outside), B^T d B."""
    n, c, h, w = x.shape
    (pt, pb), (pl, pr) = pads
    th, tw = -(-(h + pt + pb - 2) // 2), -(-(w + pl + pr - 2) // 2)
    out = np.zeros((16, c, n * th * tw), x.dtype)
    for b in range(n):
        for ch in range(c):
            for ty in range(th):
                for tx in range(tw):
                    d = np.zeros((4, 4), x.dtype)
                    for i in range(4):
                        for j in range(4):
                            iy, ix = 2 * ty + i - pt, 2 * tx + j - pl
                            if 0 <= iy < h and 0 <= ix < w:
                                d[i, j] = x[b, ch, iy, ix]
                    out[:, ch, (b * th + ty) * tw + tx] = (_BT @ d @ _BT.T).reshape(16)
    return out


def np_winograd_output(m: np.ndarray, size: tuple[int, int, int], transposed: bool
                       ) -> np.ndarray:
    """Tile by tile: y = A^T M A, its 2x2 values at (2ty + a, 2tx + b) when inside."""
    n, ho, wo = size
    th, tw = -(-ho // 2), -(-wo // 2)
    o = m.shape[2] if transposed else m.shape[1]
    out = np.zeros((n, o, ho, wo), m.dtype)
    for b in range(n):
        for ch in range(o):
            for ty in range(th):
                for tx in range(tw):
                    t = (b * th + ty) * tw + tx
                    vals = m[:, t, ch] if transposed else m[:, ch, t]
                    y = _AT @ vals.reshape(4, 4) @ _AT.T
                    for a in range(2):
                        for bb in range(2):
                            if 2 * ty + a < ho and 2 * tx + bb < wo:
                                out[b, ch, 2 * ty + a, 2 * tx + bb] = y[a, bb]
    return out


def _wino_in(pads: PADS) -> object:
    from graphc.ops.winograd import winograd_input
    return lambda x: winograd_input(x, pads)


def _wino_out(size: tuple[int, int, int], transposed: bool) -> object:
    from graphc.ops.winograd import winograd_output
    return lambda m: winograd_output(m, size, transposed)


WINOGRAD_CASES: list[OpCase] = [
    OpCase("winograd_input", ("winograd_input",), _wino_in(((1, 1), (1, 1))),
           lambda x: np_winograd_input(x, ((1, 1), (1, 1))), (Arg((2, 3, 5, 6)),), **_TOL32),
    OpCase("winograd_input:asymmetric_pads", ("winograd_input",),
           _wino_in(((0, 2), (1, 0))), lambda x: np_winograd_input(x, ((0, 2), (1, 0))),
           (Arg((1, 2, 6, 7)),), **_TOL32),
    OpCase("winograd_output", ("winograd_output",), _wino_out((2, 5, 6), False),
           lambda m: np_winograd_output(m, (2, 5, 6), False), (Arg((16, 3, 18)),), **_TOL32),
    OpCase("winograd_output:transposed", ("winograd_output",), _wino_out((1, 4, 3), True),
           lambda m: np_winograd_output(m, (1, 4, 3), True), (Arg((16, 4, 5)),), **_TOL32),
]

CASES: list[OpCase] = CONV_CASES + POOL_CASES + WINOGRAD_CASES
