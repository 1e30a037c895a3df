"""im2col as graph ops: a convolution's input as rows of a GEMM, for the int8 rewrite.

conv2d(x, w) (NCHW x OIHW, one group) = rows @ W, with K ordered (tap, channel):
W[t*C + c, o] = w[o, c, i, j] for tap t = i*kw + j, and

    xq   = quantize(pad(transpose(x, NHWC)))      one kernel: uint8, channels last
    rows = concat_t(xq[:, i*dh : : sh, j*dw : : sw, :], axis=-1)   (N, Ho, Wo, kh*kw*C)

Padding is 0 in float, which quantizes to the zero point exactly (what the float
convolution's padding means). The taps are strided slices of the uint8 image, each a run
of C bytes per output pixel, gathered by one concat kernel.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from graphc.ir import Attrs, Node
from graphc.ops import join, layout, slicing
from graphc.ops.geometry import Window

__all__ = ["channels_last_padded", "gather_taps", "weight_matrix"]


def weight_matrix(w: np.ndarray) -> np.ndarray:
    """(kh*kw*C, O): W[t*C + c, o] = w[o, c, i, j]."""
    o = w.shape[0]
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(-1, o))


def _window(w_shape: tuple[int, ...], attrs: Attrs) -> Window:
    return Window.from_attrs(attrs, kernel=(w_shape[2], w_shape[3]))


def channels_last_padded(x: Node, w_shape: tuple[int, ...], attrs: Attrs,
                         fresh: Callable[[str], str]) -> Node:
    """x as (N, H + pads, W + pads, C), zero padded (float)."""
    (pt, pb), (pl, pr) = _window(w_shape, attrs).pads
    xt = layout.transpose(x, (0, 2, 3, 1), name=fresh("nhwc"))
    if pt or pb or pl or pr:
        xt = slicing.pad(xt, ((0, 0), (pt, pb), (pl, pr), (0, 0)), name=fresh("nhwc_pad"))
    return xt


def gather_taps(xq: Node, w_shape: tuple[int, ...], attrs: Attrs,
                out_shape: tuple[int, ...], fresh: Callable[[str], str]) -> Node:
    """The (N, Ho, Wo, kh*kw*C) rows from the padded channels-last image `xq`."""
    win = _window(w_shape, attrs)
    sh, sw = win.strides
    dh, dw = win.dilation
    ho, wo = out_shape[2:]
    taps = []
    for i in range(w_shape[2]):
        for j in range(w_shape[3]):
            h0, w0 = i * dh, j * dw
            taps.append(slicing.slice(xq, [h0, w0], [h0 + (ho - 1) * sh + 1,
                                                      w0 + (wo - 1) * sw + 1],
                                      [sh, sw], axes=[1, 2], name=fresh("tap")))
    return taps[0] if len(taps) == 1 else join.concat(taps, axis=3, name=fresh("im2col"))
