"""im2col as graph ops: a convolution's input as the rows of a GEMM (int8 rewrites).

conv2d(x, w) (NCHW x OIHW, one group) = rows @ W, with K ordered (tap, channel):
W[t*C + c, o] = w[o, c, i, j] for tap t = i*kw + j, and

    xp   = pad(transpose(x, NHWC))                       (zeros: float padding)
    xq   = quantize(xp)                                  the caller's, elementwise: uint8
    rows = concat_t(xq[:, i*dh : : sh, j*dw : : sw, :], axis=-1)   (N, Ho, Wo, kh*kw*C)

The transpose, pad and quantize fuse into one kernel writing the uint8 image channels
last; the taps are strided slices of it, a run of C bytes per output pixel, gathered by one
concat. Padding is 0 in float, which quantizes to the zero point exactly (what the float
convolution's padding means). `gc.quantize_*` (graphc.quant) and the qdq pass share this;
nodes are made by the caller's `emit(op, inputs, attrs)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from graphc.ir import Attrs, Node
from graphc.ops.geometry import Window

__all__ = ["Emit", "channels_last_padded", "gather_taps", "weight_matrix"]

Emit = Callable[[str, Sequence[Node], dict[str, Any]], Node]


def weight_matrix(w: np.ndarray) -> np.ndarray:
    """(kh*kw*C, O): W[t*C + c, o] = w[o, c, i, j]."""
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0]))


def _window(w_shape: tuple[int, ...], attrs: Attrs) -> Window:
    return Window.from_attrs(attrs, kernel=(w_shape[2], w_shape[3]))


def channels_last_padded(emit: Emit, x: Node, w_shape: tuple[int, ...], attrs: Attrs) -> Node:
    """x as (N, H + pads, W + pads, C), zero padded (float)."""
    (pt, pb), (pl, pr) = _window(w_shape, attrs).pads
    xt = emit("transpose", (x,), {"perm": (0, 2, 3, 1)})
    if pt or pb or pl or pr:
        pads = ((0, 0, 0), (pt, pb, 0), (pl, pr, 0), (0, 0, 0))
        xt = emit("pad", (xt,), {"pads": pads, "value": 0.0})
    return xt


def gather_taps(emit: Emit, xq: Node, w_shape: tuple[int, ...], attrs: Attrs,
                out_shape: tuple[int, ...]) -> Node:
    """The (N, Ho, Wo, kh*kw*C) rows from the padded channels-last image `xq`."""
    win = _window(w_shape, attrs)
    sh, sw = win.strides
    dh, dw = win.dilation
    n, _, _, c = xq.shape
    ho, wo = out_shape[2:]
    taps = []
    for i in range(w_shape[2]):
        for j in range(w_shape[3]):
            h0, w0 = i * dh, j * dw
            taps.append(emit("slice", (xq,), {
                "starts": (0, h0, w0, 0),
                "stops": (n, h0 + (ho - 1) * sh + 1, w0 + (wo - 1) * sw + 1, c),
                "steps": (1, sh, sw, 1)}))
    return taps[0] if len(taps) == 1 else emit("concat", taps, {"axis": 3})
