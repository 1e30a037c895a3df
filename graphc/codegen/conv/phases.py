"""A strided conv2d's input rows split by column phase once, for the direct kernel.

With a column stride s > 1, output q of a row reads input column q*s + j*d - pl under
kernel column j: every vector of L outputs is L elements s apart. The direct kernel would
load L*s contiguous elements and de-interleave them with a shuffle at every tap (kh*kw*C
times per output vector), and mask the loads that cross the row's left or right edge.
Here each input row is copied once into scratch as s phase rows, with the horizontal
zero padding materialized:

    phase[n, c, r, f, t] = x[n, c, r, t*s + f - pl]     (0 outside [0, Wi))

so tap j reads phase f = (j*d) % s at t = q + (j*d) // s: one contiguous vector load, no
shuffle, no mask. Each phase row holds `width` elements, whole vectors past the last
output's last tap, so a partial last chunk of outputs still loads whole vectors (its dead
lanes read zeros of the padding; their results are never stored). Rows are not padded
vertically: the direct kernel skips the taps of kernel rows outside the image.

The copy costs one strided read and one write of the input, which the kernel then reads
once per tap and block of output channels. Measured on Zen 3 (AVX2, one thread, bias +
ReLU, alternated in one process): ResNet-18's stem (3 -> 64, 7x7, stride 2, 224x224)
4348 -> 3295 us, MobileNetV2's (3 -> 32, 3x3) 633 -> 572 us. It is used with 16 vector
registers only, where it was measured; with AVX-512 the de-interleave is one two-source
permute, and this was not tried there.
"""

from __future__ import annotations

from dataclasses import dataclass

import llvmlite.ir as ir

from graphc.codegen.context import KernelContext
from graphc.codegen.llvm_types import I32, storage_type
from graphc.codegen.loops import for_range
from graphc.codegen.parallel import parallel_range
from graphc.codegen.target import Target
from graphc.codegen.window import (
    Run,
    element_ptr,
    emit_chunks,
    i64,
    lin,
    pick_lanes,
    plan_chunks,
    safe_outputs,
)
from graphc.ir import DType, Node
from graphc.ops.geometry import Window

# Rows copied per task at least (a row of a 224-wide image is ~1 KB).
_ROWS_PER_TASK = 64
# A conv2d's phase rows take at most this much scratch (ResNet's stem: 0.6 MB per image);
# a larger input (high resolution, big batches) keeps the strided loads.
MAX_BYTES = 8 << 20


@dataclass(frozen=True)
class PhaseRows:
    """The phase rows of one conv2d's input (see the module docstring)."""

    stride: int  # s: phases per input row
    pad_left: int
    dilation: int
    width: int  # elements per phase row, a multiple of `lanes`
    lanes: int  # the direct kernel's vector width along an output row
    rows: int  # N * C * Hi input rows
    in_width: int  # Wi
    used: tuple[int, ...]  # the phases some kernel column reads (only these are filled)

    def tap(self, j: int) -> tuple[int, int]:
        """(phase, first element) of kernel column j for output 0."""
        padded = j * self.dilation
        return padded % self.stride, padded // self.stride

    def row_offset(self, b: ir.IRBuilder, row: ir.Value, phase: int) -> ir.Value:
        """Element offset of phase row `phase` of input row `row` (= (n*C + c)*Hi + r)."""
        return lin(b, [(row, self.stride * self.width)], phase * self.width)

    @property
    def elements(self) -> int:
        return self.rows * self.stride * self.width


def row_layout(anchor: Node, target: Target, rows: int) -> PhaseRows:
    """Phase rows of `rows` input rows of conv2d `anchor` (strided along its columns), for
    vectors as wide as a kernel's along its output rows (`pick_lanes`)."""
    x, w = anchor.inputs
    kw = w.shape[3]
    win = Window.from_attrs(anchor.attrs, kernel=(w.shape[2], kw))
    sw, dw, pl = win.strides[1], win.dilation[1], win.pads[1][0]
    wo = anchor.shape[3]
    lanes = pick_lanes(target.lanes(anchor.dtype.itemsize), wo)
    reach = -(-wo // lanes) * lanes + (kw - 1) * dw // sw  # elements a phase row must hold
    width = -(-reach // lanes) * lanes
    used = tuple(sorted({j * dw % sw for j in range(kw)}))
    return PhaseRows(sw, pl, dw, width, lanes, rows, x.shape[3], used)


def layout(anchor: Node, target: Target) -> PhaseRows | None:
    """The phase rows of all input rows of conv2d `anchor` on the direct path, or None where
    it keeps strided loads (unit column stride, 32 vector registers, an empty input or
    output, or phase rows beyond MAX_BYTES)."""
    x = anchor.inputs[0]
    if anchor.op != "conv2d" or target.registers != 16 or anchor.size == 0 or x.size == 0:
        return None
    win = Window.from_attrs(anchor.attrs, kernel=anchor.inputs[1].shape[2:])
    if win.strides[1] == 1:
        return None
    n, c, hi, _ = x.shape
    rows = row_layout(anchor, target, n * c * hi)
    return rows if rows.elements * anchor.dtype.itemsize <= MAX_BYTES else None


def scratch_bytes(anchor: Node, target: Target) -> int:
    """Scratch of the phase rows of conv2d `anchor` on the direct path (0: none)."""
    rows = layout(anchor, target)
    return 0 if rows is None else (rows.elements * anchor.dtype.itemsize + 63) // 64 * 64


def copy_rows(b: ir.IRBuilder, src: ir.Value, dst: ir.Value, rows: PhaseRows,
              dtype: DType, start: ir.Value, stop: ir.Value) -> None:
    """Phase rows [start, stop) of the row-major rows at `src` (`rows.in_width` elements
    each) into `dst`, laid out as `rows.row_offset` says."""
    s, lanes = rows.stride, rows.lanes
    wide = ir.VectorType(storage_type(dtype), lanes * s)
    pick = ir.Constant(ir.VectorType(I32, lanes), [t * s for t in range(lanes)])
    with for_range(b, start, stop, 1, name="row") as row:
        line = element_ptr(b, src, dtype, b.mul(row, i64(rows.in_width)))
        for phase in rows.used:
            out = element_ptr(b, dst, dtype, rows.row_offset(b, row, phase))
            first = phase - rows.pad_left  # input column of element 0
            # Masks only where a vector's L*s elements would leave the row (its ends, with
            # constant masks); the middle loads them plainly and keeps every s-th.
            plan = plan_chunks(rows.width, lanes,
                               safe_outputs(s, first, first + s - 1, rows.in_width))

            def chunk(t0: ir.Value, checked: bool, limit: ir.Value | None,
                      out: ir.Value = out, first: int = first) -> None:
                col0 = lin(b, [(t0, s)], first)
                if checked or s > 4:  # a border, or a gather (`Run`)
                    v = Run(b, lanes, col0, s, rows.in_width, checked).load(line, dtype, 0.0)
                else:
                    whole = b.load(element_ptr(b, line, dtype, col0), typ=wide,
                                   align=dtype.itemsize)
                    v = b.shuffle_vector(whole, ir.Constant(wide, ir.Undefined), pick)
                b.store(v, element_ptr(b, out, dtype, t0), align=dtype.itemsize)

            emit_chunks(b, plan, chunk, ends_apart=True)


def emit_copy(ctx: KernelContext, anchor: Node, rows: PhaseRows) -> None:
    """Fill the phase rows of `anchor`'s input at the start of the kernel's scratch (rows
    split across the threads)."""
    assert ctx.scratch is not None
    x = anchor.inputs[0]

    def body(c: KernelContext, start: ir.Value, stop: ir.Value) -> None:
        assert c.scratch is not None
        copy_rows(c.b, c.ptr(x), c.scratch, rows, anchor.dtype, start, stop)

    parallel_range(ctx, rows.rows, _ROWS_PER_TASK, body)
