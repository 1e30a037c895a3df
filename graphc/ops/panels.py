"""The panel layout of a GEMM operand, for constant weights packed once at compile time.

The packed GEMM (`graphc.codegen.gemm`) reads its B operand (k x n) in column panels of NR,
each k x NR row-major, so that its micro-kernel loads one contiguous NR-wide row of B per
step. A B that is a constant can be stored that way once, when the program is compiled,
instead of being packed again at every call (ONNX Runtime's MLAS prepacks its weights the
same way when a session is created):

    pack_panels(b, panel)        B (k x n) -> a flat array: panel q (columns [q*P, q*P + P))
                                 at q*P*k, each k x P row-major; a narrower last panel is
                                 k x (n mod P) row-major after the full ones
    unpack_panels(flat, k, n, panel)     the inverse

Low-precision B operands (`matmul_integer`'s attribute `b_groups` = (panel, group), set by
`graphc.codegen.gemm.prepack` on constant int8 weights) are stored the way the integer GEMM
packs them (`graphc.codegen.gemm.lowp_kernels`): panels of `panel` columns, each k/group
rows of `group` consecutive k elements per column, column after column:

    pack_groups(b, panel, group)          element B[q*group + t, p*panel + j] at flat index
                                          ((p*(k/group) + q)*panel + j)*group + t
    unpack_groups(flat, k, n, panel, group)       the inverse

(k a multiple of `group`, n of `panel`: no padding, so the array keeps B's shape.)

A convolution whose weights are stored so (`conv2d`'s attribute `weight_panels` =
(block, panel), set by `graphc.codegen.conv.prepack` on constant weights) holds, for each
block of `block` output channels, B = W[block]^T (K x block, W the weights as an O x K
matrix, K = C*kh*kw) in panels of `panel`; the blocks are the channel ranges that the
threads of the compiled code compute. The array keeps the weights' shape (O, C, kh, kw).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["pack_conv_weights", "pack_groups", "pack_panels", "unpack_conv_weights",
           "unpack_groups", "unpack_panels"]


def pack_panels(b: np.ndarray, panel: int) -> np.ndarray:
    """B (k x n) in panels of `panel` columns (see the module docstring), as a flat array."""
    k, n = b.shape
    full = n - n % panel
    parts = [b[:, :full].reshape(k, full // panel, panel).transpose(1, 0, 2).ravel(),
             b[:, full:].ravel()]
    return np.concatenate(parts)


def unpack_panels(flat: np.ndarray, k: int, n: int, panel: int) -> np.ndarray:
    """B (k x n) from its panel layout: the inverse of `pack_panels`."""
    full = n - n % panel
    out = np.empty((k, n), flat.dtype)
    out[:, :full] = (flat[:full * k].reshape(full // panel, k, panel).transpose(1, 0, 2)
                     .reshape(k, full))
    out[:, full:] = flat[full * k:k * n].reshape(k, n - full)
    return out


def _group_shape(k: int, n: int, panel: int, group: int) -> tuple[int, int, int, int]:
    if panel < 1 or group < 1 or k % group or n % panel:
        raise ValueError(f"a {k} x {n} b in panels of {panel} columns and groups of {group} "
                         "rows needs k a multiple of the group and n of the panel")
    return k // group, group, n // panel, panel


def pack_groups(b: np.ndarray, panel: int, group: int) -> np.ndarray:
    """B (k x n) in the grouped panels of the integer GEMM (module docstring), flat."""
    kg, g, np_, p = _group_shape(*b.shape, panel, group)
    return np.ascontiguousarray(b.reshape(kg, g, np_, p).transpose(2, 0, 3, 1)).ravel()


def unpack_groups(flat: np.ndarray, k: int, n: int, panel: int, group: int) -> np.ndarray:
    """B (k x n) from its grouped panels: the inverse of `pack_groups`."""
    kg, g, np_, p = _group_shape(k, n, panel, group)
    return np.ascontiguousarray(flat.reshape(np_, kg, p, g).transpose(1, 3, 0, 2)).reshape(k, n)


def _blocks(shape: Sequence[int], block: int) -> tuple[int, int, int]:
    o = shape[0]
    k = int(np.prod(shape[1:]))
    if block < 1 or o % block:
        raise ValueError(f"a block of {block} output channels does not divide {o}")
    return o // block, k, block


def pack_conv_weights(w: np.ndarray, block: int, panel: int) -> np.ndarray:
    """Convolution weights (O, C, kh, kw) in the layout `weight_panels=(block, panel)`
    describes (same shape, same values, another order)."""
    nb, k, _ = _blocks(w.shape, block)
    rows = w.reshape(nb, block, k)
    flat = np.concatenate([pack_panels(rows[i].T, panel) for i in range(nb)])
    return flat.reshape(w.shape)


def unpack_conv_weights(w: np.ndarray, block: int, panel: int) -> np.ndarray:
    """The OIHW weights of weights stored as `weight_panels=(block, panel)` says."""
    nb, k, _ = _blocks(w.shape, block)
    flat = w.reshape(nb, block * k)
    rows = [unpack_panels(flat[i], k, block, panel).T for i in range(nb)]
    return np.ascontiguousarray(np.stack(rows).reshape(w.shape))
