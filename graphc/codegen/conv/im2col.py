"""Convolution through the packed GEMM: im2col into scratch, then `emit_gemm`.

Per image n and group g (NCHW activations, OIHW weights; Cg = C/groups input and
Og = O/groups output channels per group, K = Cg*kh*kw, P = Ho*Wo output positions), with
Col[(c, i, j), (y, x)] = x[n, g*Cg + c, y*sh + i*dh - pt, x*sw + j*dw - pl] (0 in the padding):

    conv2d       out[n, g]  (Og x P)  = W[g] (Og x K)   @ Col (K x P)
    grad_input   Col'       (K x P)   = W[g]^T          @ dy[n, g] (Og x P);  dx += col2im(Col')
    grad_weight  dW[g]      (Og x K) += dy[n, g] (Og x P) @ Col^T, summed over the images

so every multiply-add runs in the GEMM micro-kernel; W[g]^T and Col^T are read transposed by
the GEMM's packing routines, never materialized. A 1x1 convolution with unit stride and no
padding needs no Col at all: the image itself is the K x P matrix.

im2col and col2im move one output row of one tap at a time with `Run` (vector loads with
masks at the borders, a shuffle or gather for strides > 1). The epilogue of conv2d (bias,
activation, ...) is applied in a sweep over the block the GEMM just stored, while it is
still in cache; a CONV kernel never writes over its inputs (the memory planner reuses
buffers in place only for elementwise kernels), so reading the raw sums back is safe.

Threads: grad_input splits the images; conv2d splits (image, block of output channels)
units, the blocks only when there are fewer images than threads (batch-1 inference: each
block is a GEMM over all of K, so nothing is merged), or, computed transposed, (image,
block of output rows) units where that pads less (`_position_rows`); grad_weight splits K
(the columns of dW: each task builds only its rows of Col and sums all images in the same
order). Results do not depend on the thread count. Each task has its own Col and packing scratch.

`choose` picks this path or the direct kernels (`conv`) per node: `CompileOptions.
conv_algorithm` forces one ("gemm", "direct"); "auto" takes the GEMM where it measured
faster, on narrow output rows with enough channels (see `choose`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import llvmlite.ir as ir

from graphc.codegen.context import KernelContext
from graphc.codegen.conv import transposed as transposed_path
from graphc.codegen.conv.epilogue import EpilogueStore, reads_planes
from graphc.codegen.gemm.emit import GemmSpec, emit_gemm, kernel_shape
from graphc.codegen.gemm.spec import fitted_rows
from graphc.codegen.llvm_types import I8
from graphc.codegen.loops import for_range
from graphc.codegen.parallel import parallel_range, split_plan
from graphc.codegen.target import Target
from graphc.codegen.window import (
    Run,
    element_ptr,
    emit_chunks,
    i64,
    lin,
    memset_zero,
    pick_lanes,
    plan_chunks,
)
from graphc.errors import CompileError
from graphc.ir import DType, Node
from graphc.ops.geometry import Window
from graphc.passes.kernels import Kernel

OPS = ("conv2d", "conv2d_grad_input", "conv2d_grad_weight")
# Below this many multiply-adds per task a split across threads is not worth a wake-up.
_TASK_MACS = 1 << 17
# A strided conv2d with at least this many input channels takes the GEMM on 16-register
# targets (see `choose`), where its Col takes at most COL_MAX_BYTES per task.
STRIDED_MIN_CHANNELS = 16
COL_MAX_BYTES = 8 << 20
# From this many output positions (56 x 56) a shallow 1x1 conv stays direct on 16-register
# targets (`choose`).
SHALLOW_MIN_POSITIONS = 56 * 56


@dataclass(frozen=True)
class Geometry:
    """The static shape of a convolution, whichever of its three ops carries it."""

    batch: int
    cin: int
    hi: int
    wi: int
    cout: int
    ho: int
    wo: int
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    pt: int
    pl: int
    groups: int
    dtype: DType

    @property
    def cg(self) -> int:
        return self.cin // self.groups

    @property
    def og(self) -> int:
        return self.cout // self.groups

    @property
    def k(self) -> int:
        """Rows of Col: (input channel of the group, kernel row, kernel column)."""
        return self.cg * self.kh * self.kw

    @property
    def p(self) -> int:
        """Columns of Col: output positions."""
        return self.ho * self.wo

    @property
    def image_is_col(self) -> bool:
        """1x1, unit stride, no padding: Col is the image itself (P = H*W)."""
        return (self.kh == self.kw == self.sh == self.sw == 1 and self.pt == self.pl == 0
                and self.ho == self.hi and self.wo == self.wi)

    @property
    def macs(self) -> int:
        return self.batch * self.cout * self.p * self.k

    @classmethod
    def of(cls, node: Node) -> Geometry:
        if node.op == "conv2d":
            (x, w), y = node.inputs, node
        elif node.op == "conv2d_grad_input":
            (y, w), x = node.inputs, node
        else:
            (x, y), w = node.inputs, node
        n, c, hi, wi = x.shape
        o, _, kh, kw = w.shape
        win = Window.from_attrs(node.attrs, kernel=(kh, kw))
        (sh, sw), (dh, dw), ((pt, _), (pl, _)) = win.strides, win.dilation, win.pads
        return cls(n, c, hi, wi, o, y.shape[2], y.shape[3], kh, kw, sh, sw, dh, dw, pt, pl,
                   node.attrs["groups"], node.dtype)


def choose(node: Node, target: Target, algorithm: str = "auto", threads: int = 1) -> bool:
    """Whether `node` runs through the GEMM: never unless it is one of OPS; always with
    "gemm", never with "direct"; with "auto" where it measured faster (below), for a
    kernel split across `threads`."""
    if node.op not in OPS or node.size == 0:
        return False
    if algorithm == "gemm" or node.attrs.get("weight_panels"):
        return True  # prepacked weights are only read here (`_conv2d` checks their layout)
    if algorithm == "direct":
        return False
    geo = Geometry.of(node)
    # Measured with benchmarks/bench_conv.py (Zen 5, one thread): on rows of 10 or more
    # outputs the direct kernels run at 50-97 GFLOP/s, at or above this path (im2col plus
    # B packing cost an extra pass over K x P), in all three ops. On narrow rows (up to half
    # a vector) their vectors are mostly idle: 4x4 outputs with 128-256 channels ran at
    # 37-67 GFLOP/s direct and 60-101 here. Few output channels per group or a shallow K
    # leave the GEMM's 8-row register block mostly padding.
    # Batch-1 layers of ResNet-18 and MobileNetV2 (Zen 4, one thread): 3x3 convolutions
    # with K >= 1152 ran 5-10% faster here (14x14x256: 98 vs 89 GFLOP/s; 28x28 stride 2:
    # 94 vs 89), the 1x1 ones with K < 256 on 7x7 maps 10% slower (160 -> 960: 59 vs 66),
    # with 64 channels and a 56x56 map the direct kernels stay ahead (100 vs 93).
    # A 1x1 convolution on a small map computed transposed (`conv.transposed`) beat the
    # direct kernels on every MobileNetV2 layer (7x7: 576 -> 160 in 96 vs 144 us, 320 ->
    # 1280 in 415 vs 507, 160 -> 960 in 166 vs 226; 14x14: 576 -> 96 216 vs 242, 96 -> 576
    # 234 vs 269, 64 -> 384 113 vs 133) and on expansions down to K = 16 (14x14: 16 -> 96
    # 14 vs 18 us, 32 -> 192 36 vs 44; 7x7: 32 -> 128 9 vs 12), once its epilogue sweeps
    # whole planes (`_sweep`).
    # With 16 vector registers (Zen 3, AVX2) the direct kernels are slower on every 1x1
    # layer of MobileNetV2 (one thread, bias + ReLU): 56x56 144 -> 24 534 vs 397 us here,
    # 28x28 32 -> 192 339 vs 189, 14x14 576 -> 96 569 vs 347 (transposed).
    lanes = target.lanes(geo.dtype.itemsize)
    wide = target.registers == 32
    narrow = geo.wo <= lanes // 2
    deep = geo.k >= 1024 and geo.og >= 64 and geo.p <= 256
    flipped = geo.k >= 16 and transposed_path.worth_it(geo.image_is_col, geo.groups, geo.p,
                                                        geo.og, lanes, wide=wide)
    # Not a shallow 1x1 conv on a large map, though (K <= 16, or K <= 32 into at most 16
    # channels, over 56x56 positions or more): there the GEMM does too little work per
    # element of X to pay for streaming its panels (Zen 3, bias + ReLU6, direct vs here,
    # one thread / two: 112x112 16 -> 96 636 vs 714 / 323 vs 386 us, 16 -> 64 414 vs 472 /
    # 258 vs 360, 32 -> 16 218 vs 260 / 150 vs 156, 24 -> 16 157 vs 192 / 85 vs 111; 56x56
    # 16 -> 64 108 vs 123 / 71 vs 86, 32 -> 16 52 vs 64 / 47 vs 62; at 28x28, 16 -> 96
    # stays faster here, 45 vs 62).
    shallow = geo.p >= SHALLOW_MIN_POSITIONS and (
        geo.k <= 16 or (geo.k <= 32 and geo.og <= 16))
    # (measured on inference; gradients keep their rule)
    one_by_one = (not wide and node.op == "conv2d" and geo.image_is_col and geo.groups == 1
                  and geo.k >= 16 and not shallow)
    # Strided rows cost the direct kernel a de-interleaving shuffle per tap, which 16
    # registers cannot amortize over enough output channels. ResNet-18's strided layers on
    # Zen 3 (one thread, bias + ReLU): 3x3 64 -> 128 from 56x56 2833 -> 1506 us here, 1x1
    # downsamples 380 -> 187, 346 -> 182, 328 -> 225. A stem (3 input channels, K = 27 or
    # 147) stays direct: 470 vs 638 us, 4.4 vs 5.4 ms. Not where this path would leave
    # threads idle (with fewer images than threads it splits only whole vectors of output
    # channels; the direct kernel splits rows), nor where each task's Col would exceed
    # COL_MAX_BYTES (high-resolution maps: the direct kernel needs none).
    strided = (not wide and node.op == "conv2d" and geo.sw > 1 and geo.groups == 1
               and geo.cg >= STRIDED_MIN_CHANNELS
               and geo.k * geo.p * geo.dtype.itemsize <= COL_MAX_BYTES
               and (geo.batch >= threads or geo.batch * _channel_blocks(
                   geo, threads, target.lanes(geo.dtype.itemsize)) >= threads))
    return (narrow and geo.og >= 16 and geo.k >= 256) or deep or flipped or one_by_one or strided


# --- scratch --------------------------------------------------------------------------------

def _aligned(n: int) -> int:
    return (n + 63) // 64 * 64


def _specs(geo: Geometry, op: str, cols: int, transposed: bool = False, panel: int = 0,
           rows: int = 0) -> list[GemmSpec]:
    """The GEMM(s) of one task; `cols` is grad_weight's block of K (full block first) and
    conv2d's block of output channels; `transposed`: conv2d computes Out^T
    (`conv.transposed`); `panel`: its weights are prepacked in panels of that width;
    `rows`: it computes blocks of that many output rows (full block first)."""
    m, k, p = geo.og, geo.k, geo.p
    sizes = [p] if not rows else sorted({rows * geo.wo, (geo.ho - (geo.ho - 1) // rows
                                                        * rows) * geo.wo}, reverse=True)
    if op == "conv2d" and transposed:
        # Out^T (positions x cols) = X^T (X stored K x P) @ W^T (W stored cols x K), into
        # scratch; prepacked, W^T is already the GEMM's panels (`graphc.ops.panels`).
        if panel:
            return [GemmSpec(q, cols, k, geo.dtype, True, False, p, cols, cols,
                             b_panels=panel) for q in sizes]
        return [GemmSpec(q, cols, k, geo.dtype, True, True, p, k, cols) for q in sizes]
    if op == "conv2d":  # a block of rows: columns of the image (its own Col) and output
        return [GemmSpec(cols, q, k, geo.dtype, False, False, k, p, p) for q in sizes]
    if op == "conv2d_grad_input":
        return [GemmSpec(k, p, m, geo.dtype, True, False, k, p, p)]
    specs = [GemmSpec(m, cols, p, geo.dtype, False, True, p, p, k)]
    if k % cols:
        specs.append(GemmSpec(m, k % cols, p, geo.dtype, False, True, p, p, k))
    return specs


@dataclass(frozen=True)
class _Split:
    """What one task does and the scratch it owns."""

    count: int  # units: images (grad_input), (image, channel block) pairs (conv2d), K
    # (grad_weight)
    grain: int
    cols: int  # grad_weight's K block per task, conv2d's channel block (K for grad_input)
    col_bytes: int
    gemm_bytes: int
    tasks: int
    chunk: int
    blocks: int = 1  # conv2d: channel (or, with `rows`, position) blocks per image
    rows: int = 0  # conv2d: output rows per position block (0: channel blocks)
    transposed: bool = False  # conv2d: Out^T into the Col scratch (`conv.transposed`)
    panel: int = 0  # conv2d: its weights are prepacked in panels this wide (`weight_layout`)
    im2col_bytes: int = 0  # transposed conv2d that needs a Col: the Col's (after Out^T's)

    @property
    def per_task(self) -> int:
        return self.col_bytes + self.im2col_bytes + self.gemm_bytes


def _channel_blocks(geo: Geometry, threads: int, lanes: int) -> int:
    """conv2d: output channel blocks per image, so that fewer images than threads still
    keep every thread busy (each block is a GEMM over all of K: no sums to merge)."""
    if geo.groups != 1 or geo.batch >= threads or geo.macs < 2 * _TASK_MACS:
        return 1
    blocks = max(1, threads // max(geo.batch, 1))
    while blocks > 1 and geo.og % (blocks * lanes):
        blocks -= 1
    return blocks


def _padded_rows(m: int, dtype: DType, target: Target, n: int) -> int:
    """The rows a GEMM of M = m computes, its last register block padded."""
    fr = fitted_rows(m, kernel_shape(dtype, target, n)[0])
    return -(-m // fr) * fr


def _position_rows(geo: Geometry, threads: int, target: Target) -> int:
    """conv2d computed transposed with fewer images than threads: output rows per block
    when splitting the positions (the GEMM's M) beats splitting the channels, else 0.

    Each thread computes its block of Out^T against all of W^T; it packs only its rows of
    X^T, and its columns are all the channels in whole panels. A channel split packs all of
    X^T in every thread and may end each block in a part-filled panel (14x14, 576 -> 96 at
    2 threads: blocks of 48 = 32 + 16 columns, 25% of the work padding, and 1.3x the one
    thread speed). Cost per thread: padded multiply-adds plus 4 per packed element of X^T
    (a transposing copy). Blocks are whole output rows, so the epilogue sweep works row by
    row or plane by plane as on the whole image."""
    lanes = target.lanes(geo.dtype.itemsize)
    if (geo.groups != 1 or geo.batch >= threads or geo.macs < 2 * _TASK_MACS
            or not geo.image_is_col  # a block of rows reads the image as its own Col
            or not transposed_path.worth_it(True, 1, geo.p, geo.og, lanes,
                                            wide=target.registers == 32)):
        return 0
    rows = -(-geo.ho // max(1, threads // geo.batch))
    nr = kernel_shape(geo.dtype, target, geo.og)[1]
    per_block = rows * geo.wo
    by_rows = (_padded_rows(per_block, geo.dtype, target, geo.og) * -(-geo.og // nr) * nr
               * geo.k + 4 * per_block * geo.k)
    cblocks = _channel_blocks(geo, threads, lanes)
    cols = geo.og // cblocks
    by_cols = (_padded_rows(geo.p, geo.dtype, target, cols) * -(-cols // nr) * nr * geo.k
               + 4 * geo.p * geo.k)
    return rows if by_rows < by_cols else 0


def _plain_rows(geo: Geometry, threads: int, target: Target) -> int:
    """A 1x1 convolution computed in the ordinary orientation (positions are the GEMM's
    columns, read in place) whose channels do not split into whole vectors per thread:
    output rows per block when splitting its positions instead, else 0. Each thread then
    computes all channels of a block of the map's columns (144 -> 24 on a 56x56 map at 2
    threads on Zen 3: its 24 channels ran on one thread; MobileNetV2 at 2 threads, A/B
    in one process: 7.18 / 7.28 -> 6.93 / 7.10 ms)."""
    lanes = target.lanes(geo.dtype.itemsize)
    wide = target.registers == 32
    if (not geo.image_is_col or geo.groups != 1 or geo.batch >= threads
            or geo.macs < 2 * _TASK_MACS or _channel_blocks(geo, threads, lanes) > 1
            or transposed_path.worth_it(True, 1, geo.p, geo.og, lanes, wide=wide)):
        return 0
    return -(-geo.ho // max(1, threads // geo.batch))


def _split(node: Node, target: Target, threads: int) -> _Split:
    geo = Geometry.of(node)
    lanes = target.lanes(geo.dtype.itemsize)
    blocks = 1
    rows = 0
    if node.op == "conv2d_grad_weight":
        count = geo.k
        # Blocks of K rounded to vectors; a block of K gets all images (P each).
        grain = max(lanes, -(-geo.k // max(threads, 1)))
        grain = -(-grain // lanes) * lanes
        if geo.cout * grain * geo.p * geo.batch < _TASK_MACS:
            grain = count
    else:
        if node.op == "conv2d":
            rows = _position_rows(geo, threads, target) or _plain_rows(geo, threads, target)
            blocks = -(-geo.ho // rows) if rows else _channel_blocks(geo, threads, lanes)
        count = geo.batch * blocks
        per_unit = max(1, geo.macs // max(count, 1))
        grain = max(-(-count // max(threads, 1)), -(-_TASK_MACS // per_unit))
    plan = split_plan(count, grain, threads)
    chunk, tasks = plan if plan is not None else (count, 1)
    if node.op == "conv2d_grad_weight":
        cols = min(chunk, geo.k)
    elif node.op == "conv2d":
        cols = geo.og if rows else geo.og // blocks
    else:
        cols = geo.k
    wide = target.registers == 32
    transposed = node.op == "conv2d" and (
        transposed_path.worth_it(geo.image_is_col, geo.groups, geo.p, cols, lanes, wide=wide)
        or (not geo.image_is_col and transposed_path.col_worth_it(
            geo.groups, geo.p, cols, lanes, wide=wide)))
    panels = node.attrs.get("weight_panels") if node.op == "conv2d" else ()
    panel = 0
    if panels:
        layout = (cols, kernel_shape(geo.dtype, target, cols)[1])
        if not transposed or tuple(panels) != layout:
            want = f"weight_panels={layout}" if transposed else "its weights unpacked"
            raise CompileError(f"conv2d %{node.name} has weight_panels={tuple(panels)}, but "
                               f"with {threads} thread(s) on this target it is computed with "
                               f"{want}", op="conv2d", loc=node.loc)
        panel = layout[1]
    col_rows = cols if node.op == "conv2d_grad_weight" or transposed else geo.k
    positions = rows * geo.wo if rows else geo.p
    col_bytes = (_aligned(col_rows * positions * geo.dtype.itemsize)
                 if transposed or not geo.image_is_col else 0)
    im2col_bytes = (_aligned(geo.k * geo.p * geo.dtype.itemsize)
                    if transposed and not geo.image_is_col else 0)
    gemm_bytes = max(_aligned(s.scratch_bytes(target))
                     for s in _specs(geo, node.op, cols, transposed, panel, rows))
    return _Split(count, grain, cols, col_bytes, gemm_bytes, tasks, chunk, blocks, rows,
                  transposed, panel, im2col_bytes)


def weight_layout(node: Node, target: Target, threads: int, algorithm: str
                  ) -> tuple[int, int] | None:
    """The `weight_panels` (block, panel) in which this path would read the weights of
    conv2d `node` if they were prepacked (`conv.prepack`), or None where it reads them
    otherwise: only the transposed paths (`conv.transposed`: a 1x1 conv, or with 16
    registers a conv's Col) take W^T as the GEMM's B, in blocks of `block` output channels
    (all of them, or a thread's share when the threads split the channels) and panels of
    the register block's width."""
    if node.op != "conv2d" or node.attrs.get("weight_panels") or not choose(
            node, target, algorithm, threads):
        return None
    s = _split(node, target, threads)
    if not s.transposed:
        return None
    return s.cols, kernel_shape(node.dtype, target, s.cols)[1]


def scratch_bytes(kernel: Kernel, target: Target, threads: int = 1) -> int:
    assert kernel.anchor is not None
    s = _split(kernel.anchor, target, threads)
    return s.per_task * s.tasks


# --- im2col / col2im ------------------------------------------------------------------------

def _tap_rows(b: ir.IRBuilder, geo: Geometry, p0: ir.Value, p1: ir.Value,
              body: Callable[[ir.Value, ir.Value, ir.Value, ir.Value, ir.Value], None]) -> None:
    """body(row_of_col, channel, y, input_row, first_input_column) for every Col row p in
    [p0, p1) and output row y whose input row lies inside the image; Col rows are numbered
    from p0. Rows of taps that fall in the vertical padding are skipped."""
    taps = geo.kh * geo.kw
    with for_range(b, p0, p1, 1, name="p") as p:
        c = b.sdiv(p, i64(taps))
        r = b.srem(p, i64(taps))
        i = b.sdiv(r, i64(geo.kw))
        j = b.srem(r, i64(geo.kw))
        row = b.sub(p, p0)
        x0 = lin(b, [(j, geo.dw)], -geo.pl)
        with for_range(b, 0, geo.ho, 1, name="y") as y:
            iy = lin(b, [(y, geo.sh), (i, geo.dh)], -geo.pt)
            inside = b.and_(b.icmp_signed(">=", iy, i64(0)), b.icmp_signed("<", iy, i64(geo.hi)))
            with b.if_then(inside):
                body(row, c, y, iy, x0)


def _chunks(b: ir.IRBuilder, geo: Geometry, lanes: int,
            body: Callable[[ir.Value, ir.Value | None, int], None]) -> None:
    """body(q0, live_lanes_or_None, lanes) over the Wo outputs of one output row."""
    plan = plan_chunks(geo.wo, lanes, (0, geo.wo - 1))
    emit_chunks(b, plan, lambda q0, _checked, limit: body(q0, limit, lanes))


def _im2col(b: ir.IRBuilder, geo: Geometry, lanes: int, image: ir.Value, col: ir.Value,
            p0: ir.Value, p1: ir.Value) -> None:
    """Col rows [p0, p1) of the group whose first input channel is at `image`."""
    dt = geo.dtype
    # Taps in the padding stay zero: clear the rows first, then copy the inside.
    memset_zero(b, col, b.mul(b.sub(p1, p0), i64(geo.p * dt.itemsize)))

    def copy(row: ir.Value, c: ir.Value, y: ir.Value, iy: ir.Value, x0: ir.Value) -> None:
        src = element_ptr(b, image, dt, lin(b, [(c, geo.hi * geo.wi), (iy, geo.wi)]))
        dst = element_ptr(b, col, dt, lin(b, [(row, geo.p), (y, geo.wo)]))

        def chunk(q0: ir.Value, limit: ir.Value | None, lanes: int) -> None:
            start = b.add(b.mul(q0, i64(geo.sw)), x0)
            v = Run(b, lanes, start, geo.sw, geo.wi, True, limit).load(src, dt, 0.0)
            Run(b, lanes, q0, 1, geo.wo, False, limit).store(dst, dt, v)

        _chunks(b, geo, lanes, chunk)

    _tap_rows(b, geo, p0, p1, copy)


def _col2im(b: ir.IRBuilder, geo: Geometry, lanes: int, col: ir.Value, image: ir.Value) -> None:
    """image (the group's first input channel) += col2im(Col); the image was zeroed."""
    dt = geo.dtype

    def add(row: ir.Value, c: ir.Value, y: ir.Value, iy: ir.Value, x0: ir.Value) -> None:
        dst = element_ptr(b, image, dt, lin(b, [(c, geo.hi * geo.wi), (iy, geo.wi)]))
        src = element_ptr(b, col, dt, lin(b, [(row, geo.p), (y, geo.wo)]))

        def chunk(q0: ir.Value, limit: ir.Value | None, lanes: int) -> None:
            v = Run(b, lanes, q0, 1, geo.wo, False, limit).load(src, dt, 0.0)
            run = Run(b, lanes, b.add(b.mul(q0, i64(geo.sw)), x0), geo.sw, geo.wi, True, limit)
            run.store(dst, dt, b.fadd(run.load(dst, dt, 0.0), v))

        _chunks(b, geo, lanes, chunk)

    _tap_rows(b, geo, i64(0), i64(geo.k), add)


# --- the three kernels ----------------------------------------------------------------------

def _lanes(c: KernelContext, geo: Geometry) -> int:
    """Vector lanes along an output row: the target's width, narrower for short rows."""
    return pick_lanes(c.target.lanes(geo.dtype.itemsize), geo.wo)


def _task_scratch(c: KernelContext, s: _Split, start: ir.Value
                  ) -> tuple[ir.Value | None, ir.Value | None, ir.Value | None]:
    """(Col or Out^T, transposed conv2d's Col, GEMM scratch) of the task whose range
    starts at `start` (None: not needed)."""
    if s.per_task == 0:
        return None, None, None
    assert c.scratch is not None
    b = c.b
    task = b.sdiv(start, i64(s.chunk)) if s.tasks > 1 else i64(0)
    base = b.gep(c.scratch, [b.mul(task, i64(s.per_task))], inbounds=True, source_etype=I8)
    col = b.gep(base, [i64(s.col_bytes)], inbounds=True, source_etype=I8)
    gemm = b.gep(col, [i64(s.im2col_bytes)], inbounds=True, source_etype=I8)
    return base, col if s.im2col_bytes else None, gemm


def _group_ptr(b: ir.IRBuilder, ptr: ir.Value, dt: DType, n: ir.Value, g: ir.Value,
               channels: int, per_group: int, plane: int) -> ir.Value:
    """&t[n, g*per_group] of an (N, channels, ...) tensor whose channel planes are `plane`."""
    return element_ptr(b, ptr, dt, lin(b, [(n, channels * plane), (g, per_group * plane)]))


def _conv2d(ctx: KernelContext) -> None:
    """Per unit (image n, block of `s.cols` output channels from o0, or with `s.rows` a
    block of output rows from y0) and group: Col, then W[o0:] @ Col into the output, and
    the epilogue swept over it."""
    kernel, node = ctx.kernel, ctx.kernel.anchor
    assert node is not None
    x, w = node.inputs
    geo = Geometry.of(node)
    dt = geo.dtype
    s = _split(node, ctx.target, ctx.threads)
    specs = _specs(geo, node.op, s.cols, s.transposed, s.panel, s.rows)
    spec = specs[0]
    epilogue = kernel.root is not node
    if epilogue:
        ctx.ptrs[node] = ctx.out  # the sweep reads the raw sums back from the output
    # Computed transposed, an epilogue that reads whole planes runs on the transposed
    # vectors as they are stored (`_put`) instead of in a sweep over the stored sums: one
    # pass over the output instead of two (MobileNetV2, A/B in one process: 1% faster at
    # one thread, 5-8% at two).
    in_store = epilogue and s.transposed and reads_planes(kernel)

    def units(c: KernelContext, start: ir.Value, stop: ir.Value) -> None:
        b = c.b
        col, own_col, scratch = _task_scratch(c, s, start)
        store = EpilogueStore(c, dt, True)
        lanes = c.target.lanes(dt.itemsize)
        with for_range(b, start, stop, 1, name="u") as u, \
                for_range(b, 0, geo.groups, 1, name="g") as g:
            n = b.sdiv(u, i64(s.blocks)) if s.blocks > 1 else u
            block = b.srem(u, i64(s.blocks)) if s.blocks > 1 else i64(0)
            o0 = b.mul(block, i64(s.cols)) if s.blocks > 1 and not s.rows else i64(0)
            image = _group_ptr(b, c.ptr(x), dt, n, g, geo.cin, geo.cg, geo.hi * geo.wi)
            weights = element_ptr(b, c.ptr(w), dt, lin(b, [(g, geo.og * geo.k), (o0, geo.k)]))
            out = element_ptr(b, _group_ptr(b, c.out, dt, n, g, geo.cout, geo.og, geo.p), dt,
                              b.mul(o0, i64(geo.p)))
            if s.transposed:  # rows [y0, y0 + spec.m / Wo) of Out^T, moved into the output
                assert col is not None
                y0 = b.mul(block, i64(s.rows)) if s.rows else i64(0)
                source = image
                if not geo.image_is_col:  # all of Col (no row blocks: `_position_rows`)
                    assert own_col is not None and not s.rows
                    _im2col(b, geo, _lanes(c, geo), image, own_col, i64(0), i64(geo.k))
                    source = own_col

                def rows_block(spec: GemmSpec, y0: ir.Value = y0) -> None:
                    at = b.mul(y0, i64(geo.wo))
                    emit_gemm(b, spec, element_ptr(b, source, dt, at), weights, col, scratch,
                              c.target)
                    dst = element_ptr(b, out, dt, at)
                    transposed_path.store_transposed(
                        b, dt, lanes, col, s.cols, dst, spec.m, geo.p,
                        put=_put(c, geo, store, dst, n, g, o0, y0) if in_store else None)
                    if epilogue and not in_store:
                        _sweep(c, geo, store, n, g, o0, s.cols, y0, spec.m // geo.wo)

                _by_block(b, specs, block, s.blocks, rows_block)
            elif s.rows:  # output rows [y0, y0 + spec.n / Wo): columns of image and out
                y0 = b.mul(block, i64(s.rows))
                at = b.mul(y0, i64(geo.wo))

                def columns(spec: GemmSpec, y0: ir.Value = y0, at: ir.Value = at) -> None:
                    emit_gemm(b, spec, weights, element_ptr(b, image, dt, at),
                              element_ptr(b, out, dt, at), scratch, c.target)
                    if epilogue:
                        _sweep(c, geo, store, n, g, o0, s.cols, y0, spec.n // geo.wo)

                _by_block(b, specs, block, s.blocks, columns)
            else:
                if geo.image_is_col:
                    col = image
                else:
                    _im2col(b, geo, _lanes(c, geo), image, col, i64(0), i64(geo.k))
                emit_gemm(b, spec, weights, col, out, scratch, c.target)
                if epilogue:
                    _sweep(c, geo, store, n, g, o0, s.cols)

    parallel_range(ctx, s.count, s.grain, units)


def _by_block(b: ir.IRBuilder, specs: list[GemmSpec], block: ir.Value, blocks: int,
              body: Callable[[GemmSpec], None]) -> None:
    """body(spec) of a block of output rows: specs[0] (the full block), or with a shorter
    last block specs[1] for that one."""
    if len(specs) == 1:
        body(specs[0])
        return
    last = b.icmp_signed("==", block, i64(blocks - 1))
    with b.if_else(last) as (then, otherwise):
        with then:
            body(specs[1])
        with otherwise:
            body(specs[0])


def _put(c: KernelContext, geo: Geometry, store: EpilogueStore, dst: ir.Value, n: ir.Value,
         g: ir.Value, o0: ir.Value, y0: ir.Value) -> transposed_path.Put:
    """The epilogue's store of a transposed vector: positions [p0, p0 + live) after output
    row y0 of channel o0 + o (of group g, image n), whose plane starts at dst + o*P.
    Evaluated at index (n, channel, y0, p0) as along a plane (`epilogue.reads_planes`)."""
    b = c.b
    lanes = c.target.lanes(geo.dtype.itemsize)

    def put(o: ir.Value, p0: ir.Value, value: ir.Value, live: int) -> None:
        co = lin(b, [(g, geo.og), (o0, 1), (o, 1)])
        row = element_ptr(b, dst, geo.dtype, b.mul(o, i64(geo.p)))
        store(row, (n, co, y0), p0, 1, value, lanes, None if live == lanes else i64(live))

    return put


def _sweep(c: KernelContext, geo: Geometry, store: EpilogueStore, n: ir.Value,
           g: ir.Value, o0: ir.Value, count: int, y0: ir.Value | None = None,
           nrows: int | None = None) -> None:
    """Apply the epilogue to output channels [o0, o0 + count) of group g, output rows
    [y0, y0 + nrows) (default: all), in place from their raw sums: all those rows of a
    channel plane at a time where the epilogue allows it (`epilogue.reads_planes`), else a
    row at a time. (On a 7x7 map a row is 7 elements: one masked vector per row made the
    sweep cost a third of a 1x1 layer's time.)"""
    b, dt = c.b, geo.dtype
    lanes = _lanes(c, geo)
    planes = reads_planes(c.kernel)
    first = i64(0) if y0 is None else y0
    nrows = geo.ho if nrows is None else nrows
    width, rows = (nrows * geo.wo, 1) if planes else (geo.wo, nrows)
    plan = plan_chunks(width, lanes, (0, width - 1))
    with for_range(b, 0, count, 1, name="o") as ol, for_range(b, 0, rows, 1, name="y") as y:
        co = lin(b, [(g, geo.og), (o0, 1), (ol, 1)])
        yy = b.add(first, y)
        row = element_ptr(b, c.out, dt, lin(b, [(n, geo.cout * geo.p), (co, geo.p),
                                                 (yy, geo.wo)]))

        def chunk(q0: ir.Value, _checked: bool, limit: ir.Value | None) -> None:
            acc = Run(b, lanes, q0, 1, width, False, limit).load(row, dt, 0.0)
            store(row, (n, co, yy), q0, 1, acc, lanes, limit)

        emit_chunks(b, plan, chunk)


def _grad_input(ctx: KernelContext) -> None:
    node = ctx.kernel.anchor
    assert node is not None
    dy, w = node.inputs
    geo = Geometry.of(node)
    dt = geo.dtype
    s = _split(node, ctx.target, ctx.threads)
    (spec,) = _specs(geo, node.op, geo.k)

    def images(c: KernelContext, start: ir.Value, stop: ir.Value) -> None:
        b = c.b
        col, _, scratch = _task_scratch(c, s, start)
        with for_range(b, start, stop, 1, name="n") as n:
            plane = geo.cin * geo.hi * geo.wi
            if not geo.image_is_col:
                memset_zero(b, element_ptr(b, c.out, dt, b.mul(n, i64(plane))),
                            plane * dt.itemsize)
            with for_range(b, 0, geo.groups, 1, name="g") as g:
                image = _group_ptr(b, c.out, dt, n, g, geo.cin, geo.cg, geo.hi * geo.wi)
                weights = element_ptr(b, c.ptr(w), dt, b.mul(g, i64(geo.og * geo.k)))
                grad = _group_ptr(b, c.ptr(dy), dt, n, g, geo.cout, geo.og, geo.p)
                target = image if geo.image_is_col else col
                emit_gemm(b, spec, weights, grad, target, scratch, c.target)
                if not geo.image_is_col:
                    _col2im(b, geo, _lanes(c, geo), col, image)

    parallel_range(ctx, s.count, s.grain, images)


def _grad_weight(ctx: KernelContext) -> None:
    node = ctx.kernel.anchor
    assert node is not None
    x, dy = node.inputs
    geo = Geometry.of(node)
    dt = geo.dtype
    s = _split(node, ctx.target, ctx.threads)
    specs = _specs(geo, node.op, s.cols)

    def block(c: KernelContext, p0: ir.Value, p1: ir.Value) -> None:
        b = c.b
        col, _, scratch = _task_scratch(c, s, p0)
        with for_range(b, 0, geo.cout, 1, name="o") as o:
            row = element_ptr(b, c.out, dt, lin(b, [(o, geo.k), (p0, 1)]))
            memset_zero(b, row, b.mul(b.sub(p1, p0), i64(dt.itemsize)))
        with for_range(b, 0, geo.groups, 1, name="g") as g, \
                for_range(b, 0, geo.batch, 1, name="n") as n:
            image = _group_ptr(b, c.ptr(x), dt, n, g, geo.cin, geo.cg, geo.hi * geo.wi)
            if geo.image_is_col:
                cols = element_ptr(b, image, dt, b.mul(p0, i64(geo.p)))
            else:
                _im2col(b, geo, _lanes(c, geo), image, col, p0, p1)
                cols = col
            grad = _group_ptr(b, c.ptr(dy), dt, n, g, geo.cout, geo.og, geo.p)
            dw = element_ptr(b, c.out, dt, lin(b, [(g, geo.og * geo.k), (p0, 1)]))
            if len(specs) == 1:
                emit_gemm(b, specs[0], grad, cols, dw, scratch, c.target, accumulate=True)
            else:  # the last block of K is shorter
                full = b.icmp_signed("==", b.sub(p1, p0), i64(specs[0].n))
                with b.if_else(full) as (then, otherwise):
                    for spec, arm in zip(specs, (then, otherwise)):
                        with arm:
                            emit_gemm(b, spec, grad, cols, dw, scratch, c.target,
                                      accumulate=True)

    parallel_range(ctx, s.count, s.grain, block)


# The GEMM path of each op (`conv.direct.LOWERINGS` dispatches between the two paths).
EMIT: dict[str, Callable[[KernelContext], None]] = {
    "conv2d": _conv2d,
    "conv2d_grad_input": _grad_input,
    "conv2d_grad_weight": _grad_weight,
}
