"""winograd: 3x3 convolutions with constant weights as Winograd F(2x2, 3x3).

An inference graph's stride-1 3x3 convolution (groups 1, no dilation) whose weights are a
constant becomes, with B, G, A the F(2x2, 3x3) matrices of Lavin & Gray (2015):

    U = G w G^T            (16, O, C), computed here with numpy: a new constant
    V = B^T d B            winograd_input: (16, C, tiles), d the 4x4 input tiles, 2 apart
    M = U @ V              16 GEMMs (O x C) @ (C x tiles), in one batched matmul (as
                           V^T U^T with 32 tiles or more)
    Y = A^T M A            winograd_output: 4 outputs per tile, interleaved back to
                           (N, O, Ho, Wo)

2.25 multiply-adds of the direct convolution's per output become one: the GEMMs do 16 per
2x2 tile instead of 36. The two transforms are kernels of their own (`graphc.ops.winograd`,
`graphc.codegen.conv.winograd`), one pass over the input and one over the output; they
are cheap next to the GEMMs when there are many channels (`applies`), so small
convolutions keep their direct kernels. The convolution's epilogue (bias, activation,
residual add) becomes an elementwise kernel after the output transform.

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

__all__ = ["G", "applies", "rewrite", "weight_transform", "winograd"]

G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
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
            and p.attrs["groups"] == 1 and not p.attrs["weight_panels"]
            and min(o, c) >= MIN_CHANNELS and min(p.shape[2:]) >= 2)


def weight_transform(w: np.ndarray) -> np.ndarray:
    """U (16, O, C): U[4r + s] = (G w G^T)[r, s] for every (O, C) kernel."""
    o, c = w.shape[:2]
    # One product kron(G, G) (16 x 9) @ w^T (9 x O*C), in w's dtype, written straight into
    # U's layout (per-kernel 3x3 matrix products, einsum and their temporaries took 25 ms
    # to 0.3 s for a 512 x 512 layer, mostly page faults on fresh memory).
    gg = np.kron(G, G).astype(w.dtype)
    return (gg @ w.reshape(o * c, 9).T).reshape(16, o, c)


def rewrite(rb: Rebuilder, p: Pending, weights: np.ndarray) -> Node:
    """The F(2x2, 3x3) form of conv2d `p` (see the module docstring)."""
    x = p.inputs[0]
    n = x.shape[0]
    ho, wo = p.shape[2:]
    pads = Window.from_attrs(p.attrs, kernel=(3, 3)).pads
    tiles = -(-ho // 2) * -(-wo // 2)
    v = rb.emit("winograd_input", (x,), {"pads": pads}, at=p)  # (16, C, N * tiles)
    u = rb.constant(weight_transform(weights), at=p, copy=False)  # (16, O, C), fresh
    # With 32 tiles or more, M^T = V^T U^T (16, N * tiles, O): the tiles are the GEMMs' rows
    # and the output channels fill whole 32-wide column blocks (both operands read
    # transposed by the packing, no copy): 10% faster on 14x14 and 28x28 maps. With fewer
    # (a 7x7 map has 16), U @ V, whose 16 columns are one block, was 40% faster.
    transposed = n * tiles >= 32
    if transposed:
        mm = rb.emit("matmul", (v, u), {"transpose_a": True, "transpose_b": True}, at=p)
    else:
        mm = rb.emit("matmul", (u, v), {"transpose_a": False, "transpose_b": False}, at=p)
    return rb.emit("winograd_output", (mm,), {"size": (n, ho, wo), "transposed": transposed},
                   at=p, name=p.name)


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
