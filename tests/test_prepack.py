"""Constant convolution weights prepacked into the GEMM's panels at compile time
(`graphc.codegen.conv.prepack`, `graphc.ops.panels`, `conv2d`'s `weight_panels`).

The compiled results are checked against the reference interpreter on the graph as built
(unpacked weights), so a layout that the packer and the GEMM disagree on fails here; which
convolutions get packed (and which must not) is read from the `optimized` stage.
"""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.codegen.conv import im2col
from graphc.codegen.gemm.emit import kernel_shape
from graphc.codegen.target import host_target
from graphc.ops.panels import pack_conv_weights, pack_panels, unpack_conv_weights, unpack_panels
from graphc.options import CompileOptions
from graphc.pipeline import lower


def _options(threads: int, **kw: object) -> CompileOptions:
    return CompileOptions(cache_dir=None, threads=threads, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("k,n,panel", [(5, 64, 32), (7, 80, 32), (3, 16, 16), (4, 9, 32),
                                       (1, 1, 8), (6, 48, 16)])
def test_panel_layout_is_the_documented_one_and_inverts(k: int, n: int, panel: int) -> None:
    b = np.arange(k * n, dtype=np.float64).reshape(k, n)
    flat = pack_panels(b, panel)
    full = n - n % panel
    for p in range(k):
        for j in range(n):
            at = ((j // panel) * panel * k + p * panel + j % panel) if j < full \
                else full * k + p * (n - full) + (j - full)
            assert flat[at] == b[p, j]
    np.testing.assert_array_equal(unpack_panels(flat, k, n, panel), b)


def test_conv_weights_pack_per_block_and_invert() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((96, 20, 1, 1)).astype(np.float32)
    packed = pack_conv_weights(w, 48, 32)
    assert packed.shape == w.shape and packed.dtype == w.dtype
    # Each block of 48 output channels holds its own W^T panels.
    second = packed.reshape(2, -1)[1]
    np.testing.assert_array_equal(second, pack_panels(w.reshape(96, 20)[48:].T, 32))
    np.testing.assert_array_equal(unpack_conv_weights(packed, 48, 32), w)
    with pytest.raises(ValueError, match="does not divide"):
        pack_conv_weights(w, 40, 32)


def _net(dtype: str, weights: str = "constant", shared: bool = False
         ) -> tuple[gc.Graph, gc.Node, list[gc.Node], np.ndarray]:
    """1x1 convolutions on 7x7 maps (the transposed path): an expansion with a bias and
    relu6, a projection with a residual, and channel counts whose blocks end in a narrower
    float32 panel (80 = 2 x 32 + 16; 96 at 2 threads: blocks of 48 = 32 + 16)."""
    rng = np.random.default_rng(3)
    np_dt = np.dtype(dtype)
    xv = rng.standard_normal((1, 32, 7, 7)).astype(np_dt)

    def weight(o: int, c: int) -> gc.Node:
        value = (rng.standard_normal((o, c, 1, 1)) / np.sqrt(c)).astype(np_dt)
        return gc.variable(value) if weights == "variable" else gc.constant(value)

    with gc.Graph("prepack") as g:
        x = gc.placeholder(xv.shape, dtype, name="x")
        w1, w2, w3, w4 = weight(192, 32), weight(96, 192), weight(80, 96), weight(32, 80)
        b1 = gc.constant(rng.standard_normal((1, 192, 1, 1)).astype(np_dt))
        h = gc.minimum(gc.maximum(gc.conv2d(x, w1) + b1, 0.0), 6.0)
        y = gc.conv2d(gc.conv2d(h, w2), w3)
        z = gc.conv2d(y, w4) + x
        outs = [y, z]
        if shared:  # w4 is also read by something else
            outs.append(w4 * gc.sum(x))
    return g, x, outs, xv


def _prepacked(g: gc.Graph, x: gc.Node, outs: list[gc.Node], options: CompileOptions
               ) -> dict[tuple[int, ...], tuple[int, ...]]:
    """{weights shape: weight_panels} of the optimized graph's convolutions."""
    sig = g.add_signature("probe", [x], outs)
    s = lower(g, sig, options, "optimized")
    assert s.optimized_signature is not None
    return {n.inputs[1].shape: n.attrs["weight_panels"]
            for n in s.optimized_signature.needed_nodes() if n.op == "conv2d"}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("threads", [1, 2])
def test_prepacked_convolutions_match_the_reference(dtype: str, threads: int) -> None:
    g, x, outs, xv = _net(dtype)
    target = host_target()
    layouts = _prepacked(g, x, outs, _options(threads))
    splits = {n.inputs[1].shape: im2col._split(n, target, threads)
              for n in gc.ir.ancestors(outs) if n.op == "conv2d"}
    # Each in the layout its lowering reads: the channels of a task (all of them, or at 2
    # threads a block of them, or all of them for a block of output rows), NR-wide panels.
    assert len(layouts) == 4
    for shape, layout in layouts.items():
        s = splits[shape]
        assert layout == (s.cols, kernel_shape(gc.DType.of(dtype), target, s.cols)[1])
        assert s.cols == shape[0] // (s.blocks if not s.rows else 1)
    wide = target.registers == 32
    if threads == 2 and (wide or dtype == "float32"):  # both splits, each over two tasks
        # (float64 on 4-lane AVX2 splits only channels: its 8-wide panels pad 49 positions
        # too little for the transposed path to pay for rows.)
        assert any(s.rows and s.tasks == 2 for s in splits.values())
        assert any(s.blocks == 2 and not s.rows and s.tasks == 2 for s in splits.values())
    got = gc.compile(g, [x], outs, options=_options(threads))(xv)
    want = gc.reference(g, [x], outs)(xv)
    tol = 1e-5 if dtype == "float32" else 1e-12
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_thread_counts_give_identical_bits() -> None:
    g, x, outs, xv = _net("float32")
    one, two = (gc.compile(g, [x], outs, options=_options(t))(xv) for t in (1, 2))
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


def test_variables_shared_constants_and_direct_convolutions_are_not_packed() -> None:
    g, x, outs, xv = _net("float32", weights="variable")
    assert set(_prepacked(g, x, outs, _options(1)).values()) == {()}
    g, x, outs, xv = _net("float32", shared=True)
    layouts = _prepacked(g, x, outs, _options(1))
    assert layouts[(32, 80, 1, 1)] == () and layouts[(96, 192, 1, 1)] != ()
    got = gc.compile(g, [x], outs, options=_options(1))(xv)
    for a, b in zip(got, gc.reference(g, [x], outs)(xv)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    g, x, outs, xv = _net("float32")
    assert set(_prepacked(g, x, outs, _options(1, conv_algorithm="direct")).values()) == {()}


def _packed_conv(layout: tuple[int, int], groups: int = 1) -> tuple[gc.Graph, gc.Node,
                                                                   gc.Node]:
    rng = np.random.default_rng(5)
    w = rng.standard_normal((64, 128 // groups, 1, 1)).astype(np.float32)
    with gc.Graph("hand") as g:
        x = gc.placeholder((1, 128, 7, 7), "float32", name="x")
        packable = groups == 1 and 64 % layout[0] == 0
        wc = gc.constant(pack_conv_weights(w, *layout) if packable else w)
        y = gc.ops.registry.get("conv2d")
        node = gc.builder.apply(y, [x, wc], {"strides": (1, 1), "pads": ((0, 0), (0, 0)),
                                             "dilation": (1, 1), "groups": groups,
                                             "weight_panels": layout})
    return g, x, node


def test_a_hand_written_layout_is_the_reference_and_checked_by_the_compiler() -> None:
    rng = np.random.default_rng(5)
    w = rng.standard_normal((64, 128, 1, 1)).astype(np.float32)
    xv = rng.standard_normal((1, 128, 7, 7)).astype(np.float32)
    with gc.Graph("plain") as plain:
        xp = gc.placeholder((1, 128, 7, 7), "float32", name="x")
        yp = gc.conv2d(xp, gc.constant(w))
    want = gc.reference(plain, [xp], [yp])(xv)
    nr = kernel_shape(gc.DType.float32, host_target(), 64)[1]
    g, x, y = _packed_conv((64, nr))
    np.testing.assert_allclose(gc.reference(g, [x], [y])(xv), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gc.compile(g, [x], [y], options=_options(1))(xv), want,
                               rtol=1e-5, atol=1e-5)
    # A layout that is not the one the lowering reads is refused, never misread (at 2
    # threads each computes 32 of the 64 channels).
    for layout, threads in (((64, nr // 2), 1), ((32, nr), 1), ((64, nr), 2)):
        g, x, y = _packed_conv(layout)
        with pytest.raises(gc.CompileError, match="weight_panels"):
            gc.compile(g, [x], [y], options=_options(threads))
    with pytest.raises(gc.GraphcError, match="block"):
        _packed_conv((48, nr))
    with pytest.raises(gc.GraphcError, match="one group"):
        _packed_conv((64, nr), groups=2)


def test_prepacked_convolutions_have_no_gradient_and_no_onnx_form(tmp_path: object) -> None:
    nr = kernel_shape(gc.DType.float32, host_target(), 64)[1]
    g, x, y = _packed_conv((64, nr))
    with g, pytest.raises(gc.GraphcError, match="no gradient"):
        gc.grad(gc.sum(y), [x])
    pytest.importorskip("onnx")
    g.add_signature("main", [x], [y])
    with pytest.raises(gc.GraphcError, match="weight_panels"):
        gc.onnx.save(g, str(tmp_path) + "/m.onnx")  # type: ignore[operator]


def test_weight_layout_is_only_for_the_transposed_path() -> None:
    target = host_target()
    with gc.Graph("probe"):
        small = gc.conv2d(gc.placeholder((1, 64, 7, 7)), gc.constant(np.ones((128, 64, 1, 1),
                                                                              np.float32)))
        big_map = gc.conv2d(gc.placeholder((1, 64, 56, 56)),
                            gc.constant(np.ones((128, 64, 1, 1), np.float32)))
        three = gc.conv2d(gc.placeholder((1, 64, 7, 7)),
                          gc.constant(np.ones((128, 64, 3, 3), np.float32)), padding=1)
    assert im2col.weight_layout(small, target, 1, "auto") is not None
    assert im2col.weight_layout(big_map, target, 1, "auto") is None
    assert im2col.weight_layout(three, target, 1, "auto") is None
    assert im2col.weight_layout(small, target, 1, "direct") is None


@pytest.mark.parametrize("operand", ["plane", "row"])
def test_blocks_of_output_rows_sweep_their_epilogue_in_place(operand: str) -> None:
    """At 2 threads a 1x1 convolution on a 14x14 map (576 -> 96, MobileNetV2's; with AVX-512) splits
    its output rows, not its channels: each task computes all 96 channels of 7 rows. Its epilogue
    reads an operand that spans each plane (swept a block of rows at a time) or varies along H only
    (swept row by row); either way the values are the reference's and the bits those of one thread.
    A 7x7 map (7 rows: blocks of 4 and 3) and a 6x6 one (3 and 3) likewise, on 256-bit targets too
    (where 14x14 keeps the channel split)."""
    rng = np.random.default_rng(7)
    wide = host_target().registers == 32
    for c, o, hw in ((576, 96, 14), (192, 80, 7), (192, 80, 6))[0 if wide else 1:]:
        xv = rng.standard_normal((1, c, hw, hw)).astype(np.float32)
        shape = (1, o, hw, hw) if operand == "plane" else (1, o, hw, 1)
        with gc.Graph("rows") as g:
            x = gc.placeholder(xv.shape, "float32", name="x")
            w = gc.constant((rng.standard_normal((o, c, 1, 1)) / np.sqrt(c)).astype(np.float32))
            r = gc.constant(rng.standard_normal(shape).astype(np.float32))
            y = gc.relu(gc.conv2d(x, w) + r)
        conv = next(n for n in gc.ir.ancestors([y]) if n.op == "conv2d")
        s = im2col._split(conv, host_target(), 2)
        assert s.rows == -(-hw // 2) and s.blocks == 2 and s.cols == o, (c, o, hw)
        want = gc.reference(g, [x], [y])(xv)
        one, two = (gc.compile(g, [x], [y], options=_options(t))(xv) for t in (1, 2))
        np.testing.assert_allclose(two, want, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(one, two)


def test_channel_blocks_stay_where_they_waste_less() -> None:
    """320 -> 1280 on 7x7 at 2 threads: 640 channels each (20 whole panels over 49 rows)
    pad less than 25 and 24 rows of all 1280, so the channels are split."""
    with gc.Graph("probe"):
        conv = gc.conv2d(gc.placeholder((1, 320, 7, 7)),
                         gc.constant(np.ones((1280, 320, 1, 1), np.float32)))
    s = im2col._split(conv, host_target(), 2)
    assert (s.rows, s.blocks, s.cols) == (0, 2, 640)
