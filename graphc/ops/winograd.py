"""The two transforms of a Winograd F(2x2, 3x3) convolution (`graphc.passes.winograd`).

    winograd_input(x, pads)       x (N, C, H, W) -> V (16, C, N*th*tw)
        V[4r + s, c, (n, ty, tx)] = (B^T d B)[r, s], d the 4x4 tile of the zero-padded x
        whose top-left corner is (2ty, 2tx); th x tw tiles cover the 3x3 convolution's
        (H + pt + pb - 2) x (W + pl + pr - 2) output, 2x2 outputs a tile.
    winograd_output(m, size, transposed)   M -> Y (N, O, Ho, Wo), size = (N, Ho, Wo)
        Y[n, o, 2ty + a, 2tx + b] = (A^T M A)[a, b] of the tile's 16 values of M, which is
        (16, O, N*th*tw), or (16, N*th*tw, O) when `transposed`.

Between them, the 16 GEMMs M = U V (U the transformed weights). Both ops are linear: their
gradients are the adjoint transforms, written with matmul, pad and slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from graphc.builder import Operand, apply
from graphc.errors import AttrError, ShapeError
from graphc.ir import Attrs, Node, TensorType
from graphc.ir.attrs import AttrSpec, Kind
from graphc.ir.opdef import Fusion, OpDef
from graphc.ops import layout, linalg, slicing
from graphc.ops.common import FLOATS, check_dtype

__all__ = ["AT", "BT", "winograd_input", "winograd_output"]

OPS: list[OpDef] = []

BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)
BB = np.kron(BT, BT)  # V = BB @ d over the 16 tile elements (index 4i + j)
AA = np.kron(AT, AT)  # Y = AA @ M over the 16 values (index 4r + s)


def tiles(h: int, w: int, pads: Sequence[Sequence[int]]) -> tuple[int, int, int, int]:
    """(Ho, Wo, th, tw): the 3x3 convolution's output size and the tiles covering it."""
    (pt, pb), (pl, pr) = pads
    ho, wo = h + pt + pb - 2, w + pl + pr - 2
    return ho, wo, -(-ho // 2), -(-wo // 2)


# --- winograd_input -------------------------------------------------------------------------

def _input_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    (x,) = types
    check_dtype(x, FLOATS, "x")
    if x.ndim != 4:
        raise ShapeError(f"x must be (N, C, H, W), got {x}")
    ho, wo, th, tw = tiles(x.shape[2], x.shape[3], attrs["pads"])
    if ho < 1 or wo < 1:
        raise AttrError(f"pads {attrs['pads']} leave no 3x3 output for x {x}")
    n, c = x.shape[:2]
    return TensorType((16, c, n * th * tw), x.dtype)


def _padded_tiles(x: np.ndarray, pads: Any) -> tuple[np.ndarray, int, int]:
    """d (16, N, C, th, tw): element (i, j) of every tile of the padded x."""
    n, c, h, w = x.shape
    _, _, th, tw = tiles(h, w, pads)
    (pt, _), (pl, _) = pads
    xp = np.zeros((n, c, 2 * th + 2, 2 * tw + 2), x.dtype)
    rows, cols = min(h, 2 * th + 2 - pt), min(w, 2 * tw + 2 - pl)
    xp[:, :, pt:pt + rows, pl:pl + cols] = x[:, :, :rows, :cols]
    d = np.stack([xp[:, :, i:i + 2 * th:2, j:j + 2 * tw:2] for i in range(4) for j in range(4)])
    return d, th, tw


def _input_ref(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    x = arrays[0]
    d, th, tw = _padded_tiles(x, attrs["pads"])
    v = np.tensordot(BB.astype(x.dtype), d, axes=1)  # (16, N, C, th, tw)
    n, c = x.shape[:2]
    return np.ascontiguousarray(v.transpose(0, 2, 1, 3, 4).reshape(16, c, n * th * tw))


def _input_grad(node: Node, g: Node) -> list[Node | None]:
    """The adjoint: each tile element's gradient (BB^T g) placed back at its input
    positions (pad with interior 1 spreads a (th, tw) grid 2 apart), summed, unpadded."""
    x = node.inputs[0]
    n, c, h, w = x.shape
    _, _, th, tw = tiles(h, w, node.attrs["pads"])
    (pt, _), (pl, _) = node.attrs["pads"]
    flat = layout.reshape(g, (16, c * n * th * tw))
    back = linalg.matmul(_constant(BB.T, x), flat)
    parts = layout.reshape(back, (16, c, n, th, tw))
    total: Node | None = None
    for k in range(16):
        i, j = divmod(k, 4)
        piece = layout.reshape(slicing.slice(parts, (k,), (k + 1,), None, (0,)),
                               (c, n, th, tw))
        spread = slicing.pad_interior(piece, ((0, 0, 0), (0, 0, 0), (i, 3 - i, 1),
                                              (j, 3 - j, 1)))
        total = spread if total is None else total + spread
    assert total is not None
    rows, cols = min(h, 2 * th + 2 - pt), min(w, 2 * tw + 2 - pl)
    grad = layout.transpose(slicing.slice(total, (0, 0, pt, pl), (c, n, pt + rows, pl + cols)),
                            (1, 0, 2, 3))
    if (rows, cols) != (h, w):  # input rows/columns no tile reads get no gradient
        grad = slicing.pad_interior(grad, ((0, 0, 0), (0, 0, 0), (0, h - rows, 0),
                                           (0, w - cols, 0)))
    return [grad]


def _constant(value: np.ndarray, like: Node) -> Node:
    from graphc import builder as gb

    return gb.constant(value.astype(np.dtype(like.dtype.name)))


PADS = AttrSpec("pads", Kind.INT_ROWS, low=0, length=2, width=2)
WINOGRAD_INPUT = OpDef("winograd_input", "conv", 1, _input_infer, _input_ref, Fusion.OPAQUE,
                       _input_grad, doc="Winograd F(2x2, 3x3) input transform B^T d B of "
                       "every 4x4 tile, (16, C, N*tiles)", attrs=(PADS,))
OPS.append(WINOGRAD_INPUT)


def winograd_input(x: Operand, pads: Any) -> Node:
    """V (16, C, N*th*tw) of x (N, C, H, W) for a 3x3, stride-1 convolution padded by
    `pads` ((top, bottom), (left, right))."""
    return apply(WINOGRAD_INPUT, [x], {"pads": pads})


# --- winograd_output ------------------------------------------------------------------------

def _output_infer(types: Sequence[TensorType], attrs: Attrs) -> TensorType:
    (m,) = types
    check_dtype(m, FLOATS, "m")
    n, ho, wo = attrs["size"]
    count = n * -(-ho // 2) * -(-wo // 2)
    if m.ndim != 3 or m.shape[0] != 16 or m.shape[2 if not attrs["transposed"] else 1] != count:
        layout_ = "(16, N*tiles, O)" if attrs["transposed"] else "(16, O, N*tiles)"
        raise ShapeError(f"m must be {layout_} with N*tiles = {count} for size "
                         f"{attrs['size']}, got {m}")
    o = m.shape[2] if attrs["transposed"] else m.shape[1]
    return TensorType((n, o, ho, wo), m.dtype)


def _output_ref(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    m = arrays[0]
    n, ho, wo = attrs["size"]
    th, tw = -(-ho // 2), -(-wo // 2)
    if attrs["transposed"]:
        o = m.shape[2]
        planes = m.reshape(16, n, th, tw, o).transpose(0, 1, 4, 2, 3)  # (16, N, O, th, tw)
    else:
        o = m.shape[1]
        planes = m.reshape(16, o, n, th, tw).transpose(0, 2, 1, 3, 4)
    y = np.tensordot(AA.astype(m.dtype), planes, axes=1).reshape(2, 2, n, o, th, tw)
    full = y.transpose(2, 3, 4, 0, 5, 1).reshape(n, o, 2 * th, 2 * tw)
    return np.ascontiguousarray(full[:, :, :ho, :wo])


def _output_grad(node: Node, g: Node) -> list[Node | None]:
    """The adjoint: the output gradient regrouped by tile position (a, b), times AA^T."""
    m = node.inputs[0]
    n, ho, wo = node.attrs["size"]
    o = node.shape[1]
    th, tw = -(-ho // 2), -(-wo // 2)
    full = g
    if (ho, wo) != (2 * th, 2 * tw):  # outputs cut from the last tiles: zero gradient
        full = slicing.pad_interior(g, ((0, 0, 0), (0, 0, 0), (0, 2 * th - ho, 0),
                                        (0, 2 * tw - wo, 0)))
    grid = layout.reshape(full, (n, o, th, 2, tw, 2))
    if node.attrs["transposed"]:
        by_tap = layout.transpose(grid, (3, 5, 0, 2, 4, 1))  # (2, 2, N, th, tw, O)
    else:
        by_tap = layout.transpose(grid, (3, 5, 1, 0, 2, 4))  # (2, 2, O, N, th, tw)
    flat = layout.reshape(by_tap, (4, m.size // 16))
    back = linalg.matmul(_constant(AA.T, m), flat)
    return [layout.reshape(back, m.shape)]


WINOGRAD_OUTPUT = OpDef(
    "winograd_output", "conv", 1, _output_infer, _output_ref, Fusion.OPAQUE, _output_grad,
    doc="Winograd F(2x2, 3x3) output transform A^T M A of every tile, interleaved to "
    "(N, O, Ho, Wo)",
    attrs=(AttrSpec("size", Kind.INTS, low=1, length=3), AttrSpec("transposed", Kind.BOOL)))
OPS.append(WINOGRAD_OUTPUT)


def winograd_output(m: Operand, size: Sequence[int], transposed: bool = False) -> Node:
    """Y (N, O, Ho, Wo) from the 16 GEMM results `m` of the tiles; size = (N, Ho, Wo)."""
    return apply(WINOGRAD_OUTPUT, [m], {"size": tuple(int(s) for s in size),
                                         "transposed": bool(transposed)})
