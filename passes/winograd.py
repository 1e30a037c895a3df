"""winograd: 3x3 convolutions with constant weights as Winograd F(2x2, 3x3).

An inference graph's stride-1 3x3 convolution (groups 1, no dilation) whose weights are a
constant becomes, with B, G, A the F(2x2, 3x3) matrices of Lavin & Gray (2015):

    U = G w G^T            (16, O, C), computed here with numpy: a new constant
    d = the 4x4 input tiles, 2 apart (16 strided slices of the zero-padded input)
    V = B^T d B            (16, C, tiles): adds and subtracts of the slices
    M = U @ V              16 GEMMs (O x C) @ (C x tiles), in one batched matmul (as
                           V^T U^T with 32 tiles or more)
    Y = A^T M A            (4 outputs per tile), interleaved back to (N, O, Ho, Wo)

2.25 multiply-adds of the direct convolution's per output become one: the GEMMs do 16 per
2x2 tile instead of 36. The transforms are elementwise kernels and copies over the tiles;
they are cheap next to the GEMMs when there are many channels (`applies`), so small
convolutions keep their direct kernels. The rewritten convolution's epilogue (bias,
activation, residual add) fuses into the kernel that interleaves Y.

Accuracy: U's entries are sums of at most 9 weights times 1/4, 1/2 or 1, computed in the
weights' dtype; V and Y add at most 4 and 9 terms with coefficients +-1, so results differ
from the direct convolution by a few ulps of the largest terms (F(2x2, 3x3) is the most
accurate Winograd variant; larger tiles lose accuracy fast and are not used).

Only with `CompileOptions.conv_algorithm == "auto"`; training graphs (variable weights)
are untouched. Idempotent: no convolution it would rewrite remains.
"""

from __future__ import annotations

import numpy as np

from graphc.ir import Graph, Node, Signature
from graphc.ops.geometry import Window

from .rewrite import PassContext, PassDef, Pending, Rebuilder

__all__ = ["applies", "winograd"]

BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)
# Below these channel counts the transforms cost more than the GEMMs save.
MIN_CHANNELS = 64


def applies(p: Pending, weights: np.ndarray | None) -> bool:
    """Whether conv2d `p` is rewritten: float, 3x3, stride 1, no dilation, one group,
    constant weights, at least MIN_CHANNELS input and output channels, 2x2 outputs."""
    if p.op != "conv2d" or weights is None or not p.dtype.is_float:
        return False
    o, c, kh, kw = weights.shape
    win = Window.from_attrs(p.attrs, kernel=(kh, kw))
    return ((kh, kw) == (3, 3) and win.strides == (1, 1) and win.dilation == (1, 1)
            and p.attrs["groups"] == 1 and min(o, c) >= MIN_CHANNELS
            and min(p.shape[2:]) >= 2)


def weight_transform(w: np.ndarray) -> np.ndarray:
    """U (16, O, C): U[4r + s] = (G w G^T)[r, s] for every (O, C) kernel."""
    o, c = w.shape[:2]
    # As two 2-D products over all kernels at once, in w's dtype (einsum took 25 ms for a
    # 512 x 512 layer, numpy's batched 3x3 matmuls 11; float64 temporaries of every layer
    # cost more in page faults than the rounding they save): t = w G^T, (G t)^T = t^T G^T.
    gt = G.T.astype(w.dtype)
    t = (w.reshape(-1, 3) @ gt).reshape(o * c, 3, 4)
    u = (t.transpose(0, 2, 1).reshape(-1, 3) @ gt).reshape(o * c, 4, 4)  # [oc, s, r]
    return np.ascontiguousarray(u.transpose(2, 1, 0).reshape(16, o, c))


def _combine(rb: Rebuilder, p: Pending, terms: list[tuple[float, Node]]) -> Node:
    """sum(coef * node) for coefficients +-1 (zero terms already dropped)."""
    coef, out = terms[0]
    if coef < 0:
        out = rb.emit("neg", (out,), at=p)
    for coef, node in terms[1:]:
        out = rb.emit("add" if coef > 0 else "sub", (out, node), at=p)
    return out


def _apply(rb: Rebuilder, p: Pending, m: np.ndarray, xs: list[Node]) -> list[Node]:
    """The rows of m @ xs: one node per row, a +-1 combination of the nodes xs."""
    return [_combine(rb, p, [(float(c), x) for c, x in zip(row, xs) if c != 0]) for row in m]


def rewrite(rb: Rebuilder, p: Pending, weights: np.ndarray) -> Node:
    """The F(2x2, 3x3) form of conv2d `p` (see the module docstring)."""
    x = p.inputs[0]
    n, c, h, w = x.shape
    o = weights.shape[0]
    ho, wo = p.shape[2:]
    (pt, _), (pl, _) = Window.from_attrs(p.attrs, kernel=(3, 3)).pads
    th, tw = -(-ho // 2), -(-wo // 2)
    hp, wp = 2 * th + 2, 2 * tw + 2
    pads = ((0, 0, 0), (0, 0, 0), (pt, hp - h - pt, 0), (pl, wp - w - pl, 0))
    xp = rb.emit("pad", (x,), {"pads": pads, "value": 0.0}, at=p) if any(
        lo or hi for lo, hi, _ in pads) else x
    # d[i][j]: element (i, j) of every tile, (N, C, th, tw).
    d = [[rb.emit("slice", (xp,), {"starts": (0, 0, i, j),
                                   "stops": (n, c, i + 2 * th - 1, j + 2 * tw - 1),
                                   "steps": (1, 1, 2, 2)}, at=p) for j in range(4)]
         for i in range(4)]
    # V = B^T d B: rows first (t[r][j] = sum_i BT[r, i] d[i][j]), then columns.
    cols = [_apply(rb, p, BT, [d[i][j] for i in range(4)]) for j in range(4)]  # [j][r]
    v = [_apply(rb, p, BT, [cols[j][r] for j in range(4)]) for r in range(4)]  # [r][s]
    tiles = th * tw
    if n == 1:
        parts = [rb.emit("reshape", (v[r][s],), {"shape": (1, c, tiles)}, at=p)
                 for r in range(4) for s in range(4)]
        vs = rb.emit("concat", tuple(parts), {"axis": 0}, at=p)
    else:
        parts = [rb.emit("reshape", (v[r][s],), {"shape": (1, n, c, tiles)}, at=p)
                 for r in range(4) for s in range(4)]
        stacked = rb.emit("concat", tuple(parts), {"axis": 0}, at=p)
        moved = rb.emit("transpose", (stacked,), {"perm": (0, 2, 1, 3)}, at=p)
        vs = rb.emit("reshape", (moved,), {"shape": (16, c, n * tiles)}, at=p)
    u = rb.constant(weight_transform(weights), at=p)
    # With 32 tiles or more, M^T = V^T U^T (16, N * tiles, O): the tiles are the GEMMs' rows
    # and the output channels fill whole 32-wide column blocks (both operands read
    # transposed by the packing, no copy): 10% faster on 14x14 and 28x28 maps. With fewer
    # (a 7x7 map has 16), U @ V, whose 16 columns are one block, was 40% faster.
    transposed = n * tiles >= 32
    if transposed:
        mm = rb.emit("matmul", (vs, u), {"transpose_a": True, "transpose_b": True}, at=p)
    else:
        mm = rb.emit("matmul", (u, vs), {"transpose_a": False, "transpose_b": False}, at=p)
    # M[r][s]: (1, N * tiles, O) or (1, O, N * tiles) slices of the batched product.
    rows_cols = (n * tiles, o) if transposed else (o, n * tiles)
    ms = [[rb.emit("slice", (mm,), {"starts": (4 * r + s, 0, 0),
                                    "stops": (4 * r + s + 1, *rows_cols),
                                    "steps": (1, 1, 1)}, at=p) for s in range(4)]
          for r in range(4)]
    # Y = A^T M A: rows, then columns; y[a][b] is output (2ty + a, 2tx + b) of each tile.
    rows = [_apply(rb, p, AT, [ms[r][s] for r in range(4)]) for s in range(4)]  # [s][a]
    y = [_apply(rb, p, AT, [rows[s][a] for s in range(4)]) for a in range(2)]  # [a][b]
    tile_shape = (n, th, tw, o) if transposed else (o, n, th, tw)
    parts = [rb.emit("reshape", (y[a][b],), {"shape": (1, *tile_shape)}, at=p)
             for a in range(2) for b in range(2)]
    stacked = rb.emit("concat", tuple(parts), {"axis": 0}, at=p)
    grid = rb.emit("reshape", (stacked,), {"shape": (2, 2, *tile_shape)}, at=p)
    # To (N, O, th, 2, tw, 2): the 2x2 outputs of each tile interleaved into the map.
    perm = (2, 5, 3, 0, 4, 1) if transposed else (3, 2, 4, 0, 5, 1)
    moved = rb.emit("transpose", (grid,), {"perm": perm}, at=p)
    if (2 * th, 2 * tw) == (ho, wo):
        return rb.emit("reshape", (moved,), {"shape": (n, o, ho, wo)}, at=p, name=p.name)
    full = rb.emit("reshape", (moved,), {"shape": (n, o, 2 * th, 2 * tw)}, at=p)
    return rb.emit("slice", (full,), {"starts": (0, 0, 0, 0), "stops": (n, o, ho, wo),
                                      "steps": (1, 1, 1, 1)}, at=p, name=p.name)


def winograd(graph: Graph, sig: Signature, ctx: PassContext) -> tuple[Graph, Signature]:
    """Rewrite every convolution `applies` accepts (with conv_algorithm "auto")."""
    enabled = ctx.options.conv_algorithm == "auto"

    def visit(p: Pending, rb: Rebuilder) -> Node:
        weights = rb.value(p.inputs[1]) if p.op == "conv2d" else None
        if enabled and applies(p, weights):
            assert weights is not None
            ctx.hit(rewrite)
            return rewrite(rb, p, weights)
        return rb.keep(p)

    return Rebuilder(graph, visit).run().finish(sig)


PASS = PassDef("winograd", winograd,
               "3x3 convolutions with constant weights as Winograd F(2x2, 3x3) GEMMs",
               enabled_by=frozenset({"constant_fold"}))  # folding makes weights constant
