"""The im2col + GEMM convolution path: its choice, and identical results for any thread count.

Its values on the full shape grid (strides, pads, dilation, groups, depthwise, 1x1, float32
and float64, with epilogues) are checked in tests/test_codegen_ops.py, which runs every
convolution through both lowerings.
"""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.codegen.conv import im2col
from graphc.codegen.target import Target, host_target
from graphc.options import CompileOptions
from tests import targets


def _conv(x: tuple[int, ...], out_ch: int, k: int, **kw: object) -> gc.Node:
    with gc.Graph("probe"):
        w = gc.placeholder((out_ch, x[1] // int(kw.get("groups", 1)), k, k))  # type: ignore
        return gc.conv2d(gc.placeholder(x), w, **kw)


def test_auto_takes_the_gemm_on_narrow_rows_with_many_channels() -> None:
    target = host_target()
    narrow = _conv((8, 128, 4, 4), 128, 3, padding=1)
    wide = _conv((8, 32, 32, 32), 32, 3, padding=1)
    few_channels = _conv((8, 4, 4, 4), 8, 3, padding=1)
    assert im2col.choose(narrow, target)
    assert not im2col.choose(wide, target)
    assert not im2col.choose(few_channels, target)
    assert im2col.choose(wide, target, "gemm")
    assert not im2col.choose(narrow, target, "direct")
    with gc.Graph("probe"):
        other = gc.relu(gc.placeholder((3, 4)))
    assert not im2col.choose(other, target, "gemm")


def test_bad_algorithm_is_rejected() -> None:
    with pytest.raises(gc.GraphcError, match="conv_algorithm"):
        CompileOptions(conv_algorithm="winograd")


@pytest.fixture(scope="module")
def training_graph() -> tuple[gc.Graph, list[gc.Node], list[gc.Node], np.ndarray]:
    rng = np.random.default_rng(0)
    xv = rng.standard_normal((4, 32, 6, 6)).astype(np.float32)
    with gc.Graph("conv_gemm") as g:
        x = gc.placeholder(xv.shape, "float32", name="x")
        w = gc.variable(rng.standard_normal((32, 32, 3, 3)).astype(np.float32) * 0.1, name="w")
        b = gc.variable(rng.standard_normal(32).astype(np.float32), name="b")
        y = gc.relu(gc.conv2d(x, w, padding=1, bias=b))
        gx, gw = gc.grad(gc.sum(y * y), [x, w])
    return g, [x], [y, gx, gw], xv


def test_gemm_path_splits_work_and_gives_identical_bits_for_any_thread_count(
        training_graph: tuple[gc.Graph, list[gc.Node], list[gc.Node], np.ndarray]) -> None:
    g, ins, outs, xv = training_graph
    # The shape is big enough that every op really is split across two threads.
    for node in gc.ir.ancestors(outs):
        if node.op in im2col.OPS:
            assert im2col._split(node, host_target(), 2).tasks == 2, node.op
    results = []
    for threads in (1, 2):
        opts = CompileOptions(cache_dir=None, threads=threads, conv_algorithm="gemm")
        results.append(gc.compile(g, ins, outs, options=opts)(xv))
    expected = gc.reference(g, ins, outs)(xv)
    for one, two, ref in zip(*results, expected):
        np.testing.assert_array_equal(one, two)
        np.testing.assert_allclose(one, ref, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("algorithm", ["gemm", "direct"])
def test_one_image_is_split_across_threads_with_identical_bits(algorithm: str) -> None:
    """Batch-1 inference: the GEMM path splits the output channels, the direct kernels
    the output rows, so both threads work; the bits do not depend on the split."""
    from graphc.codegen.conv import direct

    rng = np.random.default_rng(1)
    xv = rng.standard_normal((1, 64, 14, 14)).astype(np.float32)
    with gc.Graph("one_image") as g:
        x = gc.placeholder(xv.shape, "float32", name="x")
        w = gc.constant(rng.standard_normal((64, 64, 3, 3)).astype(np.float32) * 0.1)
        y = gc.relu(gc.conv2d(x, w, padding=1) + 0.5)
    conv = next(n for n in gc.ir.ancestors([y]) if n.op == "conv2d")
    if algorithm == "gemm":
        s = im2col._split(conv, host_target(), 2)
        assert (s.blocks, s.tasks) == (2, 2)
    else:
        bands, grain = direct._split(conv, conv.inputs[1], 2)
        assert bands > 1 and bands // grain >= 2
    outs = [gc.compile(g, [x], [y], options=CompileOptions(
        cache_dir=None, threads=threads, conv_algorithm=algorithm))(xv) for threads in (1, 2)]
    np.testing.assert_array_equal(outs[0], outs[1])
    want = gc.reference(g, [x], [y])(xv)
    np.testing.assert_allclose(outs[0], want, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("width", [5, 7, 14, 20])
def test_epilogue_of_partial_row_chunks_reads_operands_masked(width: int) -> None:
    """Rows narrower than (or not a multiple of) a vector end in a partial chunk, whose
    float epilogue (bias, a residual read from a user input, clip) is evaluated on the
    whole vector with masked operand loads: the values match the reference, whatever the
    row width, for both conv paths."""
    rng = np.random.default_rng(width)
    xv = rng.standard_normal((2, 8, width, width)).astype(np.float32)
    rv = rng.standard_normal((2, 16, width, width)).astype(np.float32)
    with gc.Graph("partial") as g:
        x = gc.placeholder(xv.shape, "float32", name="x")
        r = gc.placeholder(rv.shape, "float32", name="r")
        w = gc.constant(rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.2)
        b = gc.constant(rng.standard_normal((1, 16, 1, 1)).astype(np.float32))
        y = gc.minimum(gc.maximum(gc.conv2d(x, w, padding=1) + b + r, 0.0), 6.0)
    want = gc.reference(g, [x, r], [y])(xv, rv)
    for algorithm in ("direct", "gemm"):
        got = gc.compile(g, [x, r], [y], options=CompileOptions(
            cache_dir=None, threads=1, conv_algorithm=algorithm))(xv, rv)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=algorithm)


def test_narrow_rows_path_packs_weights_in_parallel_with_identical_bits() -> None:
    """Rows narrower than a vector (7x7) run vectorized over output channels, after a copy
    of the weights into lane-major chunks that two threads share: same bits as one."""
    from graphc.codegen.conv import channels

    rng = np.random.default_rng(3)
    xv = rng.standard_normal((1, 160, 7, 7)).astype(np.float32)
    with gc.Graph("narrow") as g:
        x = gc.placeholder(xv.shape, "float32", name="x")
        w = gc.constant(rng.standard_normal((200, 160, 1, 1)).astype(np.float32) * 0.1)
        y = gc.relu(gc.conv2d(x, w) + 0.5)
    conv = next(n for n in gc.ir.ancestors([y]) if n.op == "conv2d")
    assert channels.applies(conv, host_target())
    outs = [gc.compile(g, [x], [y], options=CompileOptions(
        cache_dir=None, threads=threads, conv_algorithm="direct"))(xv) for threads in (1, 2)]
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_allclose(outs[0], gc.reference(g, [x], [y])(xv), rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("batch", "hw", "threads"),
                         [(1, 7, 1), (1, 7, 2), (3, 5, 2), (2, 6, 1), (1, 3, 1)])
def test_1x1_on_small_maps_runs_transposed_and_matches_the_reference(
        dtype: str, batch: int, hw: int, threads: int) -> None:
    """A 1x1 convolution whose positions fill the GEMM's vector columns badly (49, 25, 36, 9, for
    2-vector panels of 8 to 32 lanes) computes Out^T with the positions as rows and is transposed
    into NCHW in register tiles (`conv.transposed`): every position (whole tiles and the masked
    tail) and channel block lands in place, under an epilogue with a bias, a residual and a clip,
    for any thread split, with the same bits for one and two threads."""
    rng = np.random.default_rng(hw)
    cin, cout = 48, 64
    xv = rng.standard_normal((batch, cin, hw, hw)).astype(dtype)
    rv = rng.standard_normal((batch, cout, hw, hw)).astype(dtype)
    with gc.Graph("flipped") as g:
        x = gc.placeholder(xv.shape, dtype, name="x")
        r = gc.placeholder(rv.shape, dtype, name="r")
        w = gc.constant(rng.standard_normal((cout, cin, 1, 1)).astype(dtype) * 0.2)
        b = gc.constant(rng.standard_normal((1, cout, 1, 1)).astype(dtype))
        raw = gc.conv2d(x, w)
        y = gc.minimum(gc.maximum(raw + b + r, 0.0), 6.0)
    conv = next(n for n in gc.ir.ancestors([y]) if n.op == "conv2d")
    assert im2col._split(conv, host_target(), threads).transposed
    want = gc.reference(g, [x, r], [y, raw])(xv, rv)
    runs = []
    for t in sorted({1, threads}):
        runs.append(gc.compile(g, [x, r], [y, raw], options=CompileOptions(
            cache_dir=None, threads=t, conv_algorithm="gemm"))(xv, rv))
    tol = 1e-5 if dtype == "float32" else 1e-12
    for got, ref in zip(runs[-1], want):
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)
    for one, other in zip(runs[0], runs[-1]):
        np.testing.assert_array_equal(one, other)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("batch", "hw", "k", "stride", "threads"),
                         [(2, 14, 3, 2, 1), (2, 14, 3, 2, 2), (2, 9, 3, 1, 2), (2, 13, 1, 2, 1),
                          (2, 5, 3, 2, 2), (1, 14, 3, 2, 2), (1, 10, 3, 1, 2)])
def test_strided_convolutions_compute_out_transposed_from_their_col(
        monkeypatch: pytest.MonkeyPatch, dtype: str, batch: int, hw: int, k: int,
        stride: int, threads: int) -> None:
    """With 16 registers a convolution that needs a Col (3x3, strided 1x1) on a small map
    builds the Col, computes Out^T from it with the positions as the GEMM's rows, and
    moves it into NCHW (`conv.transposed.col_worth_it`): every position, channel block and
    thread split lands in place, with constant (prepacked) and placeholder weights, under
    an epilogue with a bias, a residual and a clip; one and two threads give the same
    bits. One image at 2 threads splits the output channels (each block its own Col and
    its own prepacked panels)."""
    target = targets.avx2(monkeypatch)
    rng = np.random.default_rng(hw * 10 + k)
    cin, cout = 24, 32
    xv = rng.standard_normal((batch, cin, hw, hw)).astype(dtype)
    wv = (rng.standard_normal((cout, cin, k, k)) * 0.2).astype(dtype)
    with gc.Graph("flipped_col") as g:
        x = gc.placeholder(xv.shape, dtype, name="x")
        wp = gc.placeholder(wv.shape, dtype, name="w")
        b = gc.constant(rng.standard_normal((1, cout, 1, 1)).astype(dtype))
        conv = gc.conv2d(x, gc.constant(wv), stride=stride, padding=k // 2)
        r = gc.placeholder(conv.shape, dtype, name="r")
        y = gc.minimum(gc.maximum(conv + b + r, 0.0), 6.0)
        free = gc.conv2d(x, wp, stride=stride, padding=k // 2)
    rv = rng.standard_normal(conv.shape).astype(dtype)
    for t in (1, threads):
        split = im2col._split(conv, target, t)
        assert split.transposed and split.im2col_bytes
        assert split.blocks == (2 if batch < t else 1)
    want = gc.reference(g, [x, wp, r], [y, free])(xv, wv, rv)
    runs = []
    for t in sorted({1, threads}):
        runs.append(gc.compile(g, [x, wp, r], [y, free], options=CompileOptions(
            cache_dir=None, threads=t, conv_algorithm="gemm"))(xv, wv, rv))
    tol = 1e-5 if dtype == "float32" else 1e-12
    for got, ref in zip(runs[-1], want):
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)
    for one, other in zip(runs[0], runs[-1]):
        np.testing.assert_array_equal(one, other)


def test_auto_takes_the_transposed_gemm_for_1x1_on_small_maps() -> None:
    """MobileNetV2's 1x1 layers on 7x7 and 14x14 maps, deep and expanding, go through the
    transposed GEMM (measured faster on Zen 4, AVX-512); K < 16 and wide maps stay
    direct. With 256-bit vectors (16 registers, Zen 3) every 1x1 layer with K >= 16 takes
    the GEMM, transposed up to 256 positions, but for shallow ones on maps of 56x56 or
    more (K <= 16, or K <= 32 into at most 16 channels)."""
    host = host_target()
    narrow = Target(host.triple, host.cpu, host.features, 256)
    for shape, o, flipped in (((1, 576, 14, 14), 96, True), ((1, 160, 7, 7), 960, True),
                              ((1, 32, 28, 28), 192, False), ((1, 144, 56, 56), 24, False)):
        conv = _conv(shape, o, 1)
        assert im2col.choose(conv, narrow)
        assert im2col._split(conv, narrow, 1).transposed == flipped
    assert not im2col.choose(_conv((1, 8, 7, 7), 64, 1), narrow)
    for shape, o, gemm in (((1, 16, 112, 112), 96, False), ((1, 32, 112, 112), 16, False),
                           ((1, 16, 56, 56), 64, False), ((1, 32, 56, 56), 16, False),
                           ((1, 16, 28, 28), 96, True),  # a smaller map
                           ((1, 32, 112, 112), 64, True),  # into more channels
                           ((1, 48, 56, 56), 16, True)):  # deeper
        assert im2col.choose(_conv(shape, o, 1), narrow) == gemm, (shape, o)
    target = Target(host.triple, host.cpu, host.features, 512)  # only the width matters
    assert im2col.choose(_conv((1, 576, 14, 14), 96, 1), target)
    assert im2col.choose(_conv((1, 160, 7, 7), 960, 1), target)
    assert im2col.choose(_conv((1, 320, 7, 7), 1280, 1), target)
    assert im2col.choose(_conv((1, 64, 14, 14), 384, 1), target)
    assert not im2col.choose(_conv((1, 8, 7, 7), 64, 1), target)
    assert not im2col.choose(_conv((1, 576, 32, 32), 96, 1), target)  # 1024 positions
    # A strided or padded 1x1 needs a Col: never transposed.
    assert not im2col._split(_conv((1, 576, 14, 14), 96, 1, stride=2), target, 1).transposed


def test_auto_takes_the_gemm_for_strided_convolutions_with_16_registers() -> None:
    """ResNet's strided layers (a 3x3 and the 1x1 downsample) go through the GEMM with
    256-bit vectors, where the direct kernel pays a shuffle per tap; a stem with 3 input
    channels, a depthwise layer and AVX-512 targets keep the direct kernels."""
    host = host_target()
    narrow = Target(host.triple, host.cpu, host.features, 256)
    wide = Target(host.triple, host.cpu, host.features, 512)
    layer = _conv((1, 64, 56, 56), 128, 3, stride=2, padding=1)
    downsample = _conv((1, 64, 56, 56), 128, 1, stride=2)
    assert im2col.choose(layer, narrow) and im2col.choose(downsample, narrow)
    assert not im2col.choose(layer, wide) and not im2col.choose(downsample, wide)
    stem = _conv((1, 3, 224, 224), 64, 7, stride=2, padding=3)
    depthwise = _conv((1, 64, 56, 56), 64, 3, stride=2, padding=1, groups=64)
    unit_stride = _conv((1, 64, 56, 56), 64, 3, padding=1)
    rows_only = _conv((1, 64, 56, 56), 128, 3, stride=(2, 1), padding=1)  # no shuffle
    huge = _conv((1, 64, 512, 512), 128, 3, stride=2, padding=1)  # a 150 MB Col
    for conv in (stem, depthwise, unit_stride, rows_only, huge):
        assert not im2col.choose(conv, narrow)
    # One image on 2 threads: only channel blocks of whole vectors split the GEMM; 24
    # channels would leave a thread idle, so the direct kernel (which splits rows) stays.
    odd = _conv((1, 32, 56, 56), 24, 3, stride=2, padding=1)
    assert im2col.choose(odd, narrow, threads=1) and not im2col.choose(odd, narrow, threads=2)
    assert im2col.choose(layer, narrow, threads=2)


@pytest.mark.parametrize("operand", [(1, 24, 1, 1), (2, 24, 7, 7), (24, 1, 1), (1, 1, 7, 1),
                                     (1, 1, 1, 7), (7, 1)])
@pytest.mark.parametrize("algorithm", ["gemm", "direct"])
def test_epilogue_sweeps_planes_only_where_its_operands_allow(
        operand: tuple[int, ...], algorithm: str) -> None:
    """The GEMM path applies the epilogue a whole (H, W) plane at a time when every operand
    spans the plane or is broadcast over all of it (a bias, a residual), else a row at a
    time (an operand varying along only H or W): values match the reference either way."""
    from graphc.codegen.conv.epilogue import reads_planes
    from graphc.pipeline import lower
    from graphc.runtime.arguments import resolve_signature

    rng = np.random.default_rng(len(operand))
    xv = rng.standard_normal((2, 16, 7, 7)).astype(np.float32)
    with gc.Graph("planes") as g:
        x = gc.placeholder(xv.shape, "float32", name="x")
        w = gc.constant(rng.standard_normal((24, 16, 1, 1)).astype(np.float32) * 0.3)
        other = gc.constant(rng.standard_normal(operand).astype(np.float32))
        y = gc.minimum(gc.maximum(gc.conv2d(x, w) * other + 0.25, 0.0), 6.0)
    options = CompileOptions(cache_dir=None, threads=1, conv_algorithm=algorithm)
    sig, _ = resolve_signature(g, [x], [y], None, None)
    fused = lower(g, sig, options, "fused").fused
    assert fused is not None
    (kernel,) = [k for k in fused.kernels if k.anchor is not None and k.anchor.op == "conv2d"]
    spans = tuple((1, 1, *operand)[-2:]) in {(1, 1), (7, 7)}
    assert reads_planes(kernel) == spans
    got = gc.compile(g, [x], [y], options=options)(xv)
    np.testing.assert_allclose(got, gc.reference(g, [x], [y])(xv), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("operand", ["plane", "row"])
def test_1x1_in_the_ordinary_orientation_splits_its_rows_when_channels_cannot(
        operand: str) -> None:
    """At 2 threads a 1x1 convolution whose 24 output channels are not two whole vectors
    per thread (MobileNetV2's 144 -> 24 on 56x56, here 40 -> 24 on 29x29: blocks of 15 and
    14 rows) splits its positions: each task computes all channels of a block of output
    rows, the image's and the output's columns read in place, and sweeps its epilogue over
    them. Values are the reference's, and the bits those of one thread."""
    rng = np.random.default_rng(5)
    xv = rng.standard_normal((1, 40, 29, 29)).astype(np.float32)
    shape = (1, 24, 29, 29) if operand == "plane" else (1, 24, 29, 1)
    with gc.Graph("plain_rows") as g:
        x = gc.placeholder(xv.shape, "float32", name="x")
        w = gc.constant((rng.standard_normal((24, 40, 1, 1)) / 6).astype(np.float32))
        r = gc.constant(rng.standard_normal(shape).astype(np.float32))
        y = gc.relu(gc.conv2d(x, w) + r)
    conv = next(n for n in gc.ir.ancestors([y]) if n.op == "conv2d")
    s = im2col._split(conv, host_target(), 2)
    assert (s.rows, s.blocks, s.cols, s.transposed, s.tasks) == (15, 2, 24, False, 2)
    want = gc.reference(g, [x], [y])(xv)
    one, two = (gc.compile(g, [x], [y], options=CompileOptions(
        cache_dir=None, threads=t, conv_algorithm="gemm"))(xv) for t in (1, 2))
    np.testing.assert_allclose(two, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(one, two)
