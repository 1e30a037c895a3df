"""conv2d_grad_weight: the weight gradient of a 2-D convolution (NCHW x, OIHW weights).

    dw[o, c_l, i, j] = sum_{n, p, q} g[n, o, p, q] * x[n, grp*Cg + c_l, p*sh + i*dh - pt,
                                                       q*sw + j*dw - pl]

A reduction over batch and output positions, vectorized over the output width (see
`window`): a register block is OB output channels x (CB input channels x JB kernel columns)
of one kernel row; per chunk of output columns it loads OB g vectors and CB*JB x vectors
and does OB*CB*JB `llvm.fma`s into vector accumulators, which are summed horizontally at
the end. Rows of x outside the input are skipped, columns masked (they read 0), and the
partial last chunk of a row masks both operands. Summation order differs from numpy's.
"""

from __future__ import annotations

import llvmlite.ir as ir

from graphc.codegen.context import KernelContext
from graphc.codegen.fused.row_reduction import horizontal
from graphc.codegen.index import Idx, IndexBuilder
from graphc.codegen.llvm_types import storage_type
from graphc.codegen.loops import entry_alloca, for_range
from graphc.codegen.parallel import parallel_range
from graphc.codegen.window import (
    Run,
    blocks,
    const_splat,
    element_ptr,
    emit_chunks,
    fma,
    i64,
    in_range,
    lin,
    loop,
    pick_lanes,
    plan_chunks,
    safe_outputs,
)
from graphc.ir import Node
from graphc.ops.geometry import Window

GW_OUT_BLOCK = 4  # OB output channels x GW_X_BLOCK (input channel, kernel column) pairs
GW_X_BLOCK = 4  # per register block: 16 vector accumulators


def emit_grad_weight(ctx: KernelContext) -> None:
    """The conv2d_grad_weight kernel (see the module docstring)."""
    node = ctx.kernel.anchor
    assert node is not None
    x, gnode = node.inputs
    dtype = node.dtype
    kh, kw = node.shape[2:]
    n_batch = x.shape[0]
    ho, wo = gnode.shape[2:]
    lanes = pick_lanes(ctx.target.lanes(dtype.itemsize), wo)
    vt = ir.VectorType(storage_type(dtype), lanes)
    jb = min(kw, GW_X_BLOCK)
    cb = max(1, GW_X_BLOCK // jb)
    # Kernel rows are independent outputs: split them across threads (each row still sums
    # over the batch in one fixed order, so results do not depend on the thread count).
    macs = node.size * n_batch * ho * wo
    grain = kh if macs < (1 << 18) else 1
    parallel_range(ctx, kh, grain, lambda c, lo, hi: _rows(
        c, node, lo, hi, lanes, vt, jb, cb))


def _rows(c: KernelContext, node: Node, i_lo: ir.Value, i_hi: ir.Value, lanes: int,
          vt: ir.Type, jb: int, cb: int) -> None:
    """The grad_weight loop nest for kernel rows [i_lo, i_hi)."""
    b = c.b
    x, gnode = node.inputs
    dtype = node.dtype
    o_total, cg, kh, kw = node.shape
    n_batch, c_total, h, wdt = x.shape
    _, _, ho, wo = gnode.shape
    groups = node.attrs["groups"]
    og = o_total // groups
    win = Window.from_attrs(node.attrs, kernel=(kh, kw))
    (sh, sw), (dh, dw), ((pt, _), (pl, _)) = win.strides, win.dilation, win.pads
    xp, gp, out = c.ptr(x), c.ptr(gnode), c.out
    ix = IndexBuilder(b, 1)

    def per_block(grp: ir.Value, ob: ir.Value, n_o: int, cl: ir.Value, n_c: int,
                  i: ir.Value, j0: int, n_j: int) -> None:
        # accs[o][c][j]
        accs = [[[entry_alloca(b, vt, name="acc") for _ in range(n_j)] for _ in range(n_c)]
                for _ in range(n_o)]
        for a in (a for per_o in accs for per_c in per_o for a in per_c):
            b.store(const_splat(dtype, 0.0, lanes), a)
        plan = plan_chunks(wo, lanes, safe_outputs(sw, j0 * dw - pl, (j0 + n_j - 1) * dw - pl,
                                                   wdt))
        cin = lin(b, [(grp, cg), (cl, 1)])
        o0 = lin(b, [(grp, og), (ob, 1)])
        with loop(b, n_batch, "n") as n, for_range(b, 0, ho, 1, name="p") as p:
            r = lin(b, [(p, sh), (i, dh)], -pt)
            with b.if_then(in_range(b, r, 0, h)):
                x_rows = [element_ptr(b, xp, dtype, b.mul(
                    lin(b, [(n, c_total * h), (cin, h), (r, 1)], c * h), i64(wdt)))
                    for c in range(n_c)]
                g_rows = [element_ptr(b, gp, dtype, b.mul(
                    lin(b, [(n, o_total * ho), (o0, ho), (p, 1)], k * ho), i64(wo)))
                    for k in range(n_o)]

                def chunk(q0: ir.Value, checked: bool, limit: ir.Value | None) -> None:
                    gv = [Run(b, lanes, q0, 1, wo, False, limit).load(gr, dtype, 0.0)
                          for gr in g_rows]
                    for c, x_row in enumerate(x_rows):
                        for jj in range(n_j):
                            col0 = lin(b, [(q0, sw)], (j0 + jj) * dw - pl)
                            xv = Run(b, lanes, col0, sw, wdt, checked, limit).load(
                                x_row, dtype, 0.0)
                            for k in range(n_o):
                                a = accs[k][c][jj]
                                b.store(fma(b, gv[k], xv, b.load(a)), a)

                emit_chunks(b, plan, chunk)
        for k in range(n_o):
            for c in range(n_c):
                for jj in range(n_j):
                    total = horizontal(b, "sum", dtype, b.load(accs[k][c][jj]), lanes)
                    offset = lin(b, [(o0, cg * kh * kw), (cl, kh * kw), (i, kw)],
                                 (k * cg + c) * kh * kw + j0 + jj)
                    ix.store(out, dtype, Idx(offset), total)

    with loop(b, groups, "grp") as grp:
        def out_block(ob: ir.Value, n_o: int) -> None:
            def in_block(cl: ir.Value, n_c: int) -> None:
                with for_range(b, i_lo, i_hi, 1, name="i") as i:
                    for j0 in range(0, kw, jb):
                        per_block(grp, ob, n_o, cl, n_c, i, j0, min(jb, kw - j0))

            blocks(b, cg, cb, in_block, name="cl")

        blocks(b, og, GW_OUT_BLOCK, out_block, name="ob")
