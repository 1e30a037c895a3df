"""Compiled convolution, pooling and gather/scatter kernels against the reference interpreter.

Each family is one graph per dtype with many outputs (one LLVM compile each, module-scoped
fixtures); every output is then compared separately. float32 inputs are small integers, so
every sum is exact in any order and the comparison (rtol 1e-5, atol 1e-6) checks indexing,
not summation order; float64 inputs are normal and compared at rtol 1e-12. Shapes exercise
vector tails (odd widths), borders (padding), interior chunks (wide rows), every stride
form (1, 2-4, > 4), dilation, groups and depthwise, and batch 1 and 3.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest

import graphc as gc
from graphc.codegen.conv import channels
from graphc.codegen.target import host_target
from graphc.compile import compile as gc_compile
from graphc.errors import GraphcError
from graphc.ops.gather import take_along_axis_grad, take_grad
from graphc.options import CompileOptions
from graphc.passes.kernels import KernelKind

OPTIONS = CompileOptions(cache_dir=None)  # always run LLVM: the code under test
DTYPES = ("float32", "float64")


def _data(rng: np.random.Generator, shape: tuple[int, ...], dtype: str, lo: int = -3,
          hi: int = 3) -> np.ndarray:
    if dtype == "float32":
        return rng.integers(lo, hi + 1, shape).astype(np.float32)
    return rng.standard_normal(shape)


def _close(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    if expected.dtype == np.float32:
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
    elif expected.dtype == np.float64:
        np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12)
    else:
        np.testing.assert_array_equal(actual, expected)


@dataclass
class Compiled:
    """One graph with many outputs, run compiled and on the reference."""

    labels: list[str]
    actual: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]
    exe: Any


def _compile_many(name: str, arrays: list[np.ndarray],
                  build: Callable[[list[gc.Node]], dict[str, gc.Node]],
                  options: CompileOptions = OPTIONS) -> Compiled:
    with gc.Graph(name) as g:
        phs = [gc.placeholder(a.shape, a.dtype.name, name=f"in{i}") for i, a in enumerate(arrays)]
        outs = build(phs)
    labels = list(outs)
    nodes = [outs[k] for k in labels]
    exe = gc_compile(g, phs, nodes, options=options)
    actual = exe(*arrays)
    expected = gc.reference(g, phs, nodes)(*arrays)
    return Compiled(labels, dict(zip(labels, actual)), dict(zip(labels, expected)), exe)


# --- convolution ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Conv:
    id: str
    x: tuple[int, int, int, int]
    out_ch: int
    kernel: tuple[int, int]
    stride: Any = 1
    padding: Any = 0
    dilation: Any = 1
    groups: int = 1

    def kwargs(self) -> dict[str, Any]:
        return {"stride": self.stride, "padding": self.padding, "dilation": self.dilation,
                "groups": self.groups}

    @property
    def w(self) -> tuple[int, int, int, int]:
        return (self.out_ch, self.x[1] // self.groups, *self.kernel)


CONVS = [
    Conv("3x3_pad1_b1_odd", (1, 3, 8, 13), 5, (3, 3), padding=1),
    Conv("3x3_s2_same_g2_b3", (3, 4, 9, 21), 6, (3, 3), stride=2, padding="same", groups=2),
    Conv("asym_pad_dil2_g2", (2, 4, 10, 19), 4, (3, 3), padding=((1, 2), (0, 3)), dilation=2,
         groups=2),
    Conv("depthwise", (3, 6, 7, 17), 6, (3, 3), padding=1, groups=6),
    Conv("depthwise_mult2_s2", (1, 4, 9, 18), 8, (3, 3), stride=2, padding=1, groups=4),
    Conv("1x1_wide", (2, 5, 6, 37), 7, (1, 1)),
    Conv("1x1_s2", (2, 5, 6, 37), 11, (1, 1), stride=2),
    Conv("5x5_pad2", (1, 2, 11, 23), 3, (5, 5), padding=2),
    Conv("5x5_s3_valid_g2", (3, 4, 12, 16), 4, (5, 5), stride=3, padding="valid", groups=2),
    Conv("rect_s2x1_dil1x2", (2, 3, 9, 20), 9, (2, 5), stride=(2, 1), dilation=(1, 2),
         padding=((0, 1), (3, 2))),
    Conv("stride5_gather", (1, 2, 11, 40), 3, (3, 3), stride=5, padding=1),
    Conv("out_width_1", (3, 2, 5, 3), 2, (3, 3)),
    Conv("wide_interior", (1, 2, 4, 70), 3, (3, 3), padding=1),
    Conv("many_channels", (1, 20, 5, 9), 19, (3, 3), padding=1),
    # Narrow rows, many channels: conv2d vectorized over output channels (channels),
    # with a masked last channel chunk.
    Conv("narrow_rows", (2, 6, 6, 4), 19, (3, 3), padding=1),
    Conv("narrow_s2_g2", (1, 8, 7, 7), 24, (3, 3), stride=2, padding=1, groups=2),
    Conv("spatial_1x1", (3, 16, 1, 1), 20, (1, 1)),
    Conv("narrow_dil2_asym", (2, 3, 7, 6), 17, (3, 3), dilation=2, padding=((2, 1), (3, 0))),
    # Rows of 10 and 15 outputs (under one 16-lane vector): also the channel path.
    Conv("rows_10_lenet2", (2, 6, 14, 14), 16, (5, 5)),
    Conv("rows_15_s1", (1, 5, 9, 15), 17, (3, 3), padding=1),
]


def _conv_out_shape(c: Conv) -> tuple[int, ...]:
    with gc.Graph("probe"):
        y = gc.conv2d(gc.placeholder(c.x), gc.placeholder(c.w), **c.kwargs())
    return y.shape


# Every convolution runs through both lowerings: the direct kernels and im2col + GEMM, with
# two threads (images / K split across them) and, in float32, with one.
CONV_PARAMS = [(d, a) for d in DTYPES for a in ("direct", "gemm")]
CONV_RUNS = [(d, a, 2) for d, a in CONV_PARAMS] + [("float32", a, 1) for a in ("direct", "gemm")]


@pytest.fixture(scope="module", params=CONV_RUNS,
                ids=[f"{d}-{a}-{t}t" for d, a, t in CONV_RUNS])
def conv_run(request: pytest.FixtureRequest) -> Compiled:
    dtype, algorithm, threads = request.param
    rng = np.random.default_rng(0)
    arrays: list[np.ndarray] = []
    for c in CONVS:
        arrays += [_data(rng, c.x, dtype), _data(rng, c.w, dtype, -2, 2),
                   _data(rng, _conv_out_shape(c), dtype, -2, 2)]

    def build(phs: list[gc.Node]) -> dict[str, gc.Node]:
        outs = {}
        for k, c in enumerate(CONVS):
            x, w, g = phs[3 * k: 3 * k + 3]
            outs[f"{c.id}/conv2d"] = gc.conv2d(x, w, **c.kwargs())
            outs[f"{c.id}/grad_input"] = gc.conv2d_grad_input(g, w, c.x, **c.kwargs())
            outs[f"{c.id}/grad_weight"] = gc.conv2d_grad_weight(x, g, c.w, **c.kwargs())
        return outs

    return _compile_many(f"convs_{dtype}", arrays, build,
                         replace(OPTIONS, conv_algorithm=algorithm, threads=threads))


CONV_LABELS = [f"{c.id}/{op}" for c in CONVS for op in ("conv2d", "grad_input", "grad_weight")]


@pytest.mark.parametrize("label", CONV_LABELS)
def test_conv(conv_run: Compiled, label: str) -> None:
    _close(conv_run.actual[label], conv_run.expected[label])


@pytest.fixture(scope="module", params=CONV_PARAMS, ids=["-".join(p) for p in CONV_PARAMS])
def epilogue_run(request: pytest.FixtureRequest) -> Compiled:
    dtype, algorithm = request.param
    rng = np.random.default_rng(1)
    x = _data(rng, (3, 4, 9, 21), dtype)
    w1 = _data(rng, (6, 4, 3, 3), dtype, -2, 2)
    w2 = _data(rng, (6, 4, 3, 3), dtype, -2, 2)
    bias = _data(rng, (6,), dtype)
    res = _data(rng, (3, 6, 9, 21), dtype)
    # Narrow rows: the channel-vectorized conv2d, its epilogue on channel vectors.
    xn = _data(rng, (2, 5, 6, 3), dtype)
    wn = _data(rng, (19, 5, 3, 3), dtype, -2, 2)
    bn = _data(rng, (19,), dtype)
    rn = _data(rng, (2, 19, 6, 3), dtype)

    def build(phs: list[gc.Node]) -> dict[str, gc.Node]:
        x, w1, w2, bias, res, xn, wn, bn, rn = phs
        return {
            "bias_relu": gc.relu(gc.conv2d(x, w1, padding=1, bias=bias)),
            # A residual read at the output index: full vectors and the scalar tail.
            "residual": gc.relu(gc.conv2d(x, w2, padding=2, dilation=2) + res) * 0.5,
            "narrow": gc.relu(gc.conv2d(xn, wn, padding=1, bias=bn) - rn),
        }

    return _compile_many(f"epilogue_{dtype}", [x, w1, w2, bias, res, xn, wn, bn, rn], build,
                         replace(OPTIONS, conv_algorithm=algorithm))


def test_narrow_rows_take_the_channel_path() -> None:
    """The narrow configurations above really exercise `channels` (float32)."""
    narrow = [c for c in CONVS if c.id.startswith("narrow") or c.id == "spatial_1x1"]
    for c in narrow:
        with gc.Graph("probe"):
            y = gc.conv2d(gc.placeholder(c.x), gc.placeholder(c.w), **c.kwargs())
        assert channels.applies(y, host_target()), c.id


@pytest.mark.parametrize("label", ["bias_relu", "residual", "narrow"])
def test_conv_epilogue_values(epilogue_run: Compiled, label: str) -> None:
    _close(epilogue_run.actual[label], epilogue_run.expected[label])


def test_conv_epilogue_is_fused(epilogue_run: Compiled) -> None:
    kernels = epilogue_run.exe.report.plan.program.kernels
    # One kernel per output: the bias reshape is a view, add/relu/mul ride on the conv.
    assert len(kernels) == 3
    ops = sorted([n.op for n in k.nodes] for k in kernels)
    assert ops == [["conv2d", "add", "relu"], ["conv2d", "add", "relu", "mul"],
                   ["conv2d", "add", "sub", "relu"]]
    for k in kernels:
        assert k.kind == KernelKind.CONV
        assert k.anchor is not None and k.anchor.op == "conv2d"
        assert k.root.op in ("relu", "mul")


# --- pooling ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PoolCase:
    id: str
    x: tuple[int, int, int, int]
    kernel: Any
    stride: Any
    padding: Any
    include_pad: bool


POOLS = [
    PoolCase("2x2_s2", (3, 2, 10, 19), 2, 2, 0, True),
    PoolCase("3x3_s1_pad1_b1", (1, 3, 9, 21), 3, 1, 1, True),
    PoolCase("3x3_s2_asym_nopadcount", (3, 2, 10, 19), 3, 2, ((1, 0), (2, 1)), False),
    PoolCase("3x3_same", (2, 2, 8, 17), 3, 1, "same", False),
    PoolCase("rect", (2, 2, 9, 23), (2, 5), (1, 3), ((1, 1), (2, 4)), True),
    PoolCase("stride5_gather", (1, 2, 11, 29), 3, 5, 2, False),
    PoolCase("wide_interior", (1, 2, 5, 70), 2, 1, 0, True),
    PoolCase("out_width_1", (3, 2, 4, 3), 3, 1, 0, True),
]


@pytest.fixture(scope="module", params=DTYPES)
def pool_run(request: pytest.FixtureRequest) -> Compiled:
    dtype = request.param
    rng = np.random.default_rng(2)
    arrays: list[np.ndarray] = []
    for c in POOLS:
        with gc.Graph("probe"):
            shape = gc.max_pool2d(gc.placeholder(c.x), c.kernel, c.stride, c.padding).shape
        # Few distinct values: many ties, which must resolve to the first max.
        x = rng.integers(-3, 4, c.x).astype(dtype)
        arrays += [x, _data(rng, shape, dtype, -2, 2), _data(rng, c.x, dtype)]

    def build(phs: list[gc.Node]) -> dict[str, gc.Node]:
        outs = {}
        for k, c in enumerate(POOLS):
            x, g, h = phs[3 * k: 3 * k + 3]
            win = (c.kernel, c.stride, c.padding)
            outs[f"{c.id}/max"] = gc.max_pool2d(x, *win)
            outs[f"{c.id}/max_grad"] = gc.max_pool2d_grad(x, g, *win)
            outs[f"{c.id}/max_gather"] = gc.max_pool2d_gather(x, h, *win)
            outs[f"{c.id}/avg"] = gc.avg_pool2d(x, *win, count_include_pad=c.include_pad)
            outs[f"{c.id}/avg_grad"] = gc.avg_pool2d_grad(g, c.x, *win,
                                                          count_include_pad=c.include_pad)
        return outs

    return _compile_many(f"pools_{dtype}", arrays, build)


POOL_LABELS = [f"{c.id}/{op}" for c in POOLS
               for op in ("max", "max_grad", "max_gather", "avg", "avg_grad")]


@pytest.mark.parametrize("label", POOL_LABELS)
def test_pool(pool_run: Compiled, label: str) -> None:
    _close(pool_run.actual[label], pool_run.expected[label])


def test_max_pool_nan_and_infinities() -> None:
    """NaN wins a window (numpy max/argmax); an all -inf window whose first position is
    padding routes its gradient nowhere and gathers 0, exactly like the reference."""
    x = np.arange(2 * 7 * 11, dtype=np.float64).reshape(1, 2, 7, 11) % 5
    x[0, 0, 2, 3] = np.nan
    x[0, 0, 0:2, 0:2] = -np.inf
    x[0, 1, 4, :] = -np.inf
    x[0, 1, 5, 6] = np.nan
    g = np.random.default_rng(3).integers(-3, 4, (1, 2, 4, 6)).astype(np.float64)  # exact sums
    h = np.random.default_rng(4).standard_normal(x.shape)

    def build(phs: list[gc.Node]) -> dict[str, gc.Node]:
        x, g, h = phs
        return {"max": gc.max_pool2d(x, 3, 2, 1), "grad": gc.max_pool2d_grad(x, g, 3, 2, 1),
                "gather": gc.max_pool2d_gather(x, h, 3, 2, 1)}

    run = _compile_many("nan_pool", [x, g, h], build)
    for label in run.labels:
        np.testing.assert_array_equal(run.actual[label], run.expected[label])
    assert np.isnan(run.actual["max"][0, 0, 1, 2])


def test_empty_batch() -> None:
    """N = 0: empty outputs, and a weight gradient of zeros (an empty sum)."""
    x = np.zeros((0, 2, 5, 7), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    g = np.zeros((0, 3, 5, 7), np.float32)
    with gc.Graph("empty") as graph:
        px, pw, pg = (gc.placeholder(a.shape, name=n) for a, n in zip((x, w, g), "xwg"))
        pooled = gc.max_pool2d(px, 2)
        outs = [gc.conv2d(px, pw, padding=1), gc.conv2d_grad_input(pg, pw, x.shape, padding=1),
                gc.conv2d_grad_weight(px, pg, w.shape, padding=1), pooled,
                gc.max_pool2d_grad(px, pooled, 2), gc.avg_pool2d_grad(pooled, x.shape, 2)]
    got = gc_compile(graph, [px, pw, pg], outs, options=OPTIONS)(x, w, g)
    assert [a.shape for a in got] == [o.shape for o in outs]
    np.testing.assert_array_equal(got[2], np.zeros(w.shape, np.float32))


# --- gathers and scatter-adds ---------------------------------------------------------------

X_SHAPE = (4, 7, 37)
IDX = {  # name -> (array, negative and repeated entries included)
    "i_take1": np.array([[0, -1, 3], [3, 3, -4]], np.int32),
    "i_take2": np.array([5, -2, 5, 0, 36, -37, 5], np.int64),
    "i_along1": np.random.default_rng(5).integers(-7, 7, (4, 5, 37)).astype(np.int32),
    "i_along2": np.random.default_rng(6).integers(-37, 37, (4, 7, 1)).astype(np.int64),
    "i_along0": np.random.default_rng(7).integers(-4, 4, (3, 1, 1)).astype(np.int32),
    "i_scalar": np.array(-2, np.int64),
}


def _gather_graph(phs: list[gc.Node]) -> dict[str, gc.Node]:
    x, i1, i2, ia1, ia2, ia0, isc = phs
    t1 = gc.take(x, i1, axis=1)
    t2 = gc.take(x, i2, axis=2)
    t0 = gc.take(x, i1, axis=0)
    a1 = gc.take_along_axis(x, ia1, axis=1)
    a2 = gc.take_along_axis(x, ia2, axis=2)
    a0 = gc.take_along_axis(x, ia0, axis=0)
    return {
        "take_axis1": t1, "take_last": t2, "take_axis0": t0,
        "take_scalar": gc.take(x, isc, axis=2),
        "along_axis1": a1, "along_last": a2, "along_axis0_broadcast": a0,
        # The scatter-adds take the gathered values back (duplicates accumulate).
        "take_grad_axis1": take_grad(t1, i1, 1, 7),
        "take_grad_last": take_grad(t2, i2, 2, 37),
        "take_grad_axis0": take_grad(t0, i1, 0, 4),
        "along_grad_axis1": take_along_axis_grad(a1, ia1, 1, X_SHAPE),
        "along_grad_last": take_along_axis_grad(a2, ia2, 2, X_SHAPE),
        "along_grad_axis0_broadcast": take_along_axis_grad(a0, ia0, 0, X_SHAPE),
    }


GATHER_LABELS = [
    "take_axis1", "take_last", "take_axis0", "take_scalar", "along_axis1", "along_last",
    "along_axis0_broadcast", "take_grad_axis1", "take_grad_last", "take_grad_axis0",
    "along_grad_axis1", "along_grad_last", "along_grad_axis0_broadcast"]


@pytest.fixture(scope="module", params=["float32", "float64", "int32", "bool"])
def gather_run(request: pytest.FixtureRequest) -> Compiled:
    dtype = request.param
    rng = np.random.default_rng(8)
    x = (rng.standard_normal(X_SHAPE) * 5).astype(dtype)
    return _compile_many(f"gather_{dtype}", [x, *IDX.values()], _gather_graph)


@pytest.mark.parametrize("label", GATHER_LABELS)
def test_gather(gather_run: Compiled, label: str) -> None:
    _close(gather_run.actual[label], gather_run.expected[label])


def test_out_of_range_indices_raise_like_the_reference() -> None:
    """Compiled gathers and scatter-adds wrap negative indices once, like the reference, and
    raise where it raises (an index outside [-n, n)); see tests/test_index_errors.py."""
    x = np.arange(5 * 6, dtype=np.float64).reshape(5, 6)
    g = np.arange(5 * 9, dtype=np.float64).reshape(5, 9)
    ga = np.ones((5, 1))
    with gc.Graph("wrap") as graph:
        px = gc.placeholder(x.shape, "float64", name="x")
        pi = gc.placeholder((9,), "int64", name="i")
        pia = gc.placeholder((5, 1), "int32", name="ia")
        pg = gc.placeholder(g.shape, "float64", name="g")
        pga = gc.placeholder(ga.shape, "float64", name="ga")
        outs = [gc.take(px, pi, axis=1), gc.take_along_axis(px, pia, axis=1),
                take_grad(pg, pi, 1, 6), take_along_axis_grad(pga, pia, 1, (5, 6))]
    inputs = [px, pi, pia, pg, pga]
    run = gc_compile(graph, inputs, outs, options=OPTIONS)
    ref = gc.reference(graph, inputs, outs)
    i = np.array([-6, -5, -1, 0, 1, 5, 4, -3, 2], np.int64)
    ia = np.array([[5], [-6], [2], [0], [-1]], np.int32)
    for got, want in zip(run(x, i, ia, g, ga), ref(x, i, ia, g, ga)):
        np.testing.assert_array_equal(got, want)
    for bad_i, bad_ia in ((np.where(i == 5, 6, i), ia), (i, np.where(ia == 5, -7, ia))):
        with pytest.raises(GraphcError, match="out of range"):
            run(x, bad_i, bad_ia, g, ga)
        with pytest.raises(GraphcError, match="out of range"):
            ref(x, bad_i, bad_ia, g, ga)


# --- a training step --------------------------------------------------------------------------

def _cnn(dtype: str) -> tuple[gc.Graph, list[gc.Node], list[gc.Node], list[np.ndarray]]:
    rng = np.random.default_rng(9)

    def param(shape: tuple[int, ...], scale: float) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(dtype)

    with gc.Graph(f"cnn_{dtype}") as g:
        x = gc.placeholder((3, 3, 12, 13), dtype, name="x")
        y = gc.placeholder((3,), "int32", name="y")
        w1 = gc.variable(param((8, 3, 3, 3), 0.3), name="w1")
        b1 = gc.variable(param((8,), 0.1), name="b1")
        w2 = gc.variable(param((8, 4, 3, 3), 0.3), name="w2")
        b2 = gc.variable(param((8,), 0.1), name="b2")
        w3 = gc.variable(param((8 * 3 * 2, 5), 0.2), name="w3")
        h = gc.relu(gc.conv2d(x, w1, padding=1, bias=b1))
        h = gc.max_pool2d(h, 2, padding=((0, 0), (0, 1)))  # 6 x 7
        h = gc.relu(gc.conv2d(h, w2, stride=(1, 2), groups=2, padding=((1, 1), (0, 1)),
                              bias=b2))  # 6 x 3
        h = gc.avg_pool2d(h, 2, padding=((0, 0), (1, 1)), count_include_pad=False)  # 3 x 2
        logits = gc.reshape(h, (3, 8 * 3 * 2)) @ w3
        loss = gc.mean(gc.softmax_cross_entropy(logits, y))
        grads = gc.grad(loss, [w1, b1, w2, b2, w3])
    data = [rng.standard_normal((3, 3, 12, 13)).astype(dtype), np.array([0, 4, 2], np.int32)]
    return g, [x, y], [loss, *grads], data


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-10), ("float32", 1e-4)])
def test_cnn_training_step(dtype: str, rtol: float) -> None:
    g, inputs, outputs, data = _cnn(dtype)
    got = gc_compile(g, inputs, outputs, options=OPTIONS)(*data)
    want = gc.reference(g, inputs, outputs)(*data)
    assert np.isfinite(want[0]) and all(np.any(w != 0) for w in want[1:])
    for a, e in zip(got, want):
        scale = np.max(np.abs(e))
        np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * scale)
