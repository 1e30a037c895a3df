"""A convolution computed transposed: Out^T = X^T W^T (X: the image of a 1x1, or a Col),
then moved into NCHW.

On a small map the output positions fill the GEMM's vector columns badly (7x7: 49 columns
in 64, 77%; 14x14: 196 in 224), while its rows take any count with little padding
(`gemm.spec.fitted_rows`: 49 = 7 x 7). So `im2col` may compute Out^T (positions x output
channels, row-major) into scratch with the positions as the GEMM's rows and the channels as
its vector columns, and `store_transposed` moves it into the NCHW output, where the
epilogue sweep then runs in place as on the ordinary path. With 16 registers a convolution
that needs a Col (kxk, strided) on a small map does the same from its Col (`col_worth_it`).

`store_transposed` transposes L x L tiles (L = the vector width) in registers: L row loads,
log2(L) rounds of L two-source interleaves (the perfect shuffle: applied log2(L) times it
transposes; each is one `vpermt2ps` with AVX-512), L column stores. Positions past P are
masked on both sides. Gathers would do the same with one strided access per element,
which LLVM scalarizes on Zen 4 (measured ~4x slower than this).
"""

from __future__ import annotations

from collections.abc import Callable

import llvmlite.ir as ir

from graphc.codegen.gemm.helpers import lane_mask
from graphc.codegen.llvm_types import I32, storage_type
from graphc.codegen.loops import for_range
from graphc.codegen.window import element_ptr, i64, masked_store
from graphc.ir import DType

# With 16 vector registers (AVX2), maps of up to this many positions compute Out^T.
NARROW_MAX_POSITIONS = 256


def worth_it(image_is_col: bool, groups: int, positions: int, cols: int, lanes: int, *,
             wide: bool) -> bool:
    """Whether conv2d should compute Out^T: a 1x1 convolution whose image is its own Col,
    one group, a channel block of whole vectors, and positions that waste at least 10% of
    the 2-vector column panels of the ordinary orientation. Measured on MobileNetV2's
    7x7 and 14x14 layers (Zen 4, one thread): the GEMM 61-80 -> 95-105 GFLOP/s.

    With 16 registers (`wide` False: 256-bit targets, a 6 x 16 block) every map of up to
    NARROW_MAX_POSITIONS positions: on Zen 3 (one thread, bias + ReLU) 14x14 layers ran
    4-17% faster transposed than in the ordinary orientation (576 -> 96: 373 -> 347 us,
    384 -> 64: 203 -> 168), although 196 positions fill 16-wide panels to 94%."""
    if not (image_is_col and groups == 1 and cols % lanes == 0):
        return False
    if not wide:
        return positions <= NARROW_MAX_POSITIONS
    padded = -(-positions // (2 * lanes)) * (2 * lanes)
    return 10 * padded >= 11 * positions


def col_worth_it(groups: int, positions: int, cols: int, lanes: int, *, wide: bool) -> bool:
    """Whether a conv2d that needs a Col (kxk, strided or padded) and runs through the GEMM
    should compute Out^T from it: with 16 registers, a map of up to NARROW_MAX_POSITIONS
    positions, one group and a channel block of whole vectors. Measured on Zen 3 (one
    thread) as GEMMs of ResNet-18's strided 3x3 layers: 512 x 2304 x 49 1849 -> 1490 us
    transposed, 256 x 1152 x 196 1408 -> 1316 us. (Untried with 32 registers.)"""
    return (not wide and groups == 1 and cols % lanes == 0
            and positions <= NARROW_MAX_POSITIONS)


def _interleave(b: ir.IRBuilder, lo_half: bool, x: ir.Value, y: ir.Value, lanes: int
                ) -> ir.Value:
    """[x0, y0, x1, y1, ...] over the low (or high) halves of x and y."""
    base = 0 if lo_half else lanes // 2
    idx = []
    for t in range(lanes // 2):
        idx += [base + t, lanes + base + t]
    mask = ir.Constant(ir.VectorType(I32, lanes), [ir.Constant(I32, i) for i in idx])
    return b.shuffle_vector(x, y, mask)


def _transpose(b: ir.IRBuilder, rows: list[ir.Value], lanes: int) -> list[ir.Value]:
    """The columns of the lanes x lanes tile whose rows are `rows`."""
    v = rows
    half = lanes // 2
    for _ in range(lanes.bit_length() - 1):
        nxt: list[ir.Value] = []
        for i in range(half):
            nxt += [_interleave(b, True, v[i], v[i + half], lanes),
                    _interleave(b, False, v[i], v[i + half], lanes)]
        v = nxt
    return v


Put = Callable[[ir.Value, ir.Value, ir.Value, int], None]
"""put(o, p0, column, live): store `column`, positions [p0, p0 + live) of channel o (lanes
past `live` are dead), in place of the plain store (a convolution's epilogue)."""


def store_transposed(b: ir.IRBuilder, dtype: DType, lanes: int, src: ir.Value, cols: int,
                     dst: ir.Value, positions: int, dst_stride: int | None = None,
                     put: Put | None = None) -> None:
    """dst[o * dst_stride + p] = src[p * cols + o] for o < cols, p < positions (dst_stride:
    `positions` unless given; a block of an image's positions has the whole plane's), or
    `put` of each vector of channel o's positions instead of the store.

    `cols` is a multiple of `lanes`; src rows are whole vectors (`cols` elements each).
    """
    stride = positions if dst_stride is None else dst_stride
    assert cols % lanes == 0 and lanes & (lanes - 1) == 0
    ety = storage_type(dtype)
    vty = ir.VectorType(ety, lanes)
    full, tail = divmod(positions, lanes)

    def tile(p0: ir.Value, live: int) -> None:
        """Positions [p0, p0 + live) of every channel."""
        mask = None if live == lanes else lane_mask(b, lanes, 0, live)
        zero = ir.Constant(vty, None)
        with for_range(b, 0, cols, lanes, name="to") as o0:
            rows = []
            for r in range(lanes):
                if r >= live:
                    rows.append(zero)
                    continue
                at = b.add(b.mul(b.add(p0, i64(r)), i64(cols)), o0)
                rows.append(b.load(element_ptr(b, src, dtype, at), typ=vty,
                                   align=dtype.itemsize))
            for j, col in enumerate(_transpose(b, rows, lanes)):
                if put is not None:
                    put(b.add(o0, i64(j)), p0, col, live)
                    continue
                at = b.add(b.mul(b.add(o0, i64(j)), i64(stride)), p0)
                ptr = element_ptr(b, dst, dtype, at)
                if mask is None:
                    b.store(col, ptr, align=dtype.itemsize)
                else:
                    masked_store(b, ptr, dtype, mask, col)

    if full:
        with for_range(b, 0, full * lanes, lanes, name="tp") as p0:
            tile(p0, lanes)
    if tail:
        tile(i64(full * lanes), tail)

