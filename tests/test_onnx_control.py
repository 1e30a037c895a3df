"""ONNX If, Scan and Loop imported onto graphc's region ops (cond, scan, while_loop) and
written back: models built with onnx.helper, run by graphc's reference interpreter and
compiled code against ONNX Runtime; the imported graph holds one body whatever the trip
count; what must still unroll (or be refused) does so."""

from __future__ import annotations

import collections
import time
from typing import Any

import numpy as np
import pytest

import graphc as gc
from graphc.onnx.model import OnnxError

onnx = pytest.importorskip("onnx", reason="needs onnx: pip install 'graphc[onnx]'")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from tests.onnx_helpers import value_info as _vi  # noqa: E402

F, I64, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
RNG = np.random.default_rng(16)
OPTIONS = gc.CompileOptions(threads=1, cache_dir=None)


def _model(nodes: list, inputs: list, outputs: list, inits: list | None = None) -> Any:
    graph = helper.make_graph(nodes, "m", inputs, outputs, inits or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _const(name: str, value: Any, dtype: Any = np.int64) -> Any:
    return helper.make_node("Constant", [], [name],
                            value=numpy_helper.from_array(np.array(value, dtype)))


def _ort(model: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is the oracle")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)  # type: ignore[no-any-return]


def _ops(g: gc.Graph | Any, depth: int = 0) -> collections.Counter[str]:
    """Ops of `g`'s nodes and, keyed "op@depth", of every body at every depth."""
    count: collections.Counter[str] = collections.Counter()
    for n in g.nodes:
        count[n.op if depth == 0 else f"{n.op}@{depth}"] += 1
        for region in n.regions:
            count += _ops(region.graph, depth + 1)
    return count


def _check(model: Any, feeds: dict[str, np.ndarray], mode: str, rtol: float = 1e-5,
           atol: float = 1e-5) -> gc.Graph:
    """Import `model`, run it in `mode` ("reference" or "compiled") and compare every
    output with ONNX Runtime's; returns the imported graph."""
    g = gc.onnx.load(model)
    if mode == "reference":
        run = gc.reference(g, signature="main")
    else:
        run = gc.compile(g, signature="main", options=OPTIONS)
    got = run(*feeds.values())
    for a, b in zip(got, _ort(model, feeds), strict=True):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
    return g


MODES = ["reference", "compiled"]


# --- Scan -----------------------------------------------------------------------------------

def _scan_model(in_dirs: list[int], out_dirs: list[int]) -> Any:
    """Two scan inputs: x1 (2, 5, 3) along axis 1, x2 (5, 3) along axis 0; a state (2, 3);
    the body reads w, computed in the enclosing graph; outputs stacked along axes 1 and -1."""
    body = helper.make_graph(
        [helper.make_node("Mul", ["s", "half"], ["a"]),
         helper.make_node("Mul", ["x2_t", "w"], ["b"]),
         helper.make_node("Add", ["a", "x1_t"], ["c"]),
         helper.make_node("Add", ["c", "b"], ["d"]),
         helper.make_node("Tanh", ["d"], ["s_out"]),
         helper.make_node("Identity", ["s_out"], ["y1"]),  # the state, also stacked
         helper.make_node("Mul", ["s_out", "w"], ["y2"])], "body",
        [_vi("s", [2, 3]), _vi("x1_t", [2, 3]), _vi("x2_t", [3])],
        [_vi("s_out", [2, 3]), _vi("y1", [2, 3]), _vi("y2", [2, 3])],
        [numpy_helper.from_array(np.array(0.5, np.float32), "half")])
    scan = helper.make_node("Scan", ["s0", "x1", "x2"], ["s", "ys1", "ys2"], body=body,
                            num_scan_inputs=2, scan_input_axes=[1, 0],
                            scan_input_directions=in_dirs, scan_output_axes=[1, -1],
                            scan_output_directions=out_dirs)
    return _model([helper.make_node("Relu", ["win"], ["w"]), scan],
                  [_vi("s0", [2, 3]), _vi("x1", [2, 5, 3]), _vi("x2", [5, 3]), _vi("win", [3])],
                  [_vi("s", [2, 3]), _vi("ys1", [2, 5, 3]), _vi("ys2", [2, 3, 5])])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("in_dirs", "out_dirs"),
                         [([0, 0], [0, 0]), ([0, 1], [1, 0]), ([1, 1], [1, 0]),
                          ([1, 1], [0, 1])])
def test_scan_axes_and_directions_match_onnxruntime(in_dirs: list[int], out_dirs: list[int],
                                                    mode: str) -> None:
    feeds = {"s0": RNG.standard_normal((2, 3), np.float32),
             "x1": RNG.standard_normal((2, 5, 3), np.float32),
             "x2": RNG.standard_normal((5, 3), np.float32),
             "win": RNG.standard_normal(3, np.float32)}
    g = _check(_scan_model(in_dirs, out_dirs), feeds, mode)
    ops = _ops(g)
    assert ops["scan"] == 1 and ops["tanh@1"] == 1 and "tanh" not in ops  # one body
    assert ops["placeholder@1"] == 4  # w captured (a const), the state, two slices


# --- Loop -----------------------------------------------------------------------------------

def _counting_loop(trip: int) -> Any:
    """y <- 0.9 y + sin(i) x for `trip` iterations (x from the enclosing graph), every y
    stacked: the condition is the body's condition input passed through."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]),
         helper.make_node("Cast", ["i"], ["f"], to=F),
         helper.make_node("Sin", ["f"], ["s"]),
         helper.make_node("Mul", ["s", "x"], ["sx"]),
         helper.make_node("Mul", ["y_in", "decay"], ["d"]),
         helper.make_node("Add", ["d", "sx"], ["y_out"]),
         helper.make_node("Identity", ["y_out"], ["step"])], "body",
        [_vi("i", [], I64), _vi("c_in", [], B), _vi("y_in", [4])],
        [_vi("c_out", [], B), _vi("y_out", [4]), _vi("step", [4])],
        [numpy_helper.from_array(np.array(0.9, np.float32), "decay")])
    return _model([_const("m", trip), _const("c", True, np.bool_),
                   helper.make_node("Loop", ["m", "c", "y0"], ["y", "steps"], body=body)],
                  [_vi("y0", [4]), _vi("x", [4])], [_vi("y", [4]), _vi("steps", [trip, 4])])


@pytest.mark.parametrize("mode", MODES)
def test_a_loop_with_a_known_trip_count_is_one_scan(mode: str) -> None:
    feeds = {"y0": RNG.standard_normal(4, np.float32), "x": RNG.standard_normal(4, np.float32)}
    g = _check(_counting_loop(7), feeds, mode)
    (scan,) = [n for n in g.nodes if n.op == "scan"]
    assert scan.attrs["length"] == 7 and "sin" not in _ops(g)


def test_the_imported_graph_does_not_grow_with_the_trip_count() -> None:
    """A Loop of 1000 iterations imports to as many nodes as one of 10 (one body), and
    compiling it takes about as long (printed, not asserted: the machine is shared)."""
    sizes, seconds = {}, {}
    for trip in (10, 1000):
        g = gc.onnx.load(_counting_loop(trip))
        sizes[trip] = sum(_ops(g).values())
        start = time.perf_counter()
        exe = gc.compile(g, signature="main", options=OPTIONS)
        seconds[trip] = time.perf_counter() - start
        y0, x = np.ones(4, np.float32), np.linspace(-1, 1, 4, dtype=np.float32)
        want = _ort(_counting_loop(trip), {"y0": y0, "x": x})
        np.testing.assert_allclose(exe(y0, x)[1], want[1], rtol=1e-4, atol=1e-5)
    print(f"\nimported nodes {sizes}; compile seconds (indicative) "
          f"{ {k: round(v, 3) for k, v in seconds.items()} }")
    assert sizes[10] == sizes[1000]


def _while_model(with_trip: bool, with_cond: bool) -> Any:
    """y <- 1.5 y + x while sum|y| < limit (and i < M): the condition computed from data."""
    body = helper.make_graph(
        [helper.make_node("Mul", ["y_in", "k"], ["a"]),
         helper.make_node("Add", ["a", "x"], ["y_out"]),
         helper.make_node("Abs", ["y_out"], ["m"]),
         helper.make_node("ReduceSum", ["m"], ["total"], keepdims=0),
         helper.make_node("Less", ["total", "limit"], ["c_out"]),
         helper.make_node("Cast", ["i"], ["fi"], to=F),
         helper.make_node("Add", ["n_in", "fi"], ["n_out"])], "body",
        [_vi("i", [], I64), _vi("c_in", [], B), _vi("y_in", [3]), _vi("n_in", [])],
        [_vi("c_out", [], B), _vi("y_out", [3]), _vi("n_out", [])],
        [numpy_helper.from_array(np.array(1.5, np.float32), "k")])
    inputs = [_vi("y0", [3]), _vi("x", [3]), _vi("limit", [])]
    nodes = [_const("n0", 0.0, np.float32)]
    if with_trip:
        inputs.append(_vi("M", [], I64))
    if with_cond:
        inputs.append(_vi("start", [], B))
    nodes.append(helper.make_node("Loop", ["M" if with_trip else "",
                                           "start" if with_cond else "", "y0", "n0"],
                                  ["y", "n"], body=body))
    return _model(nodes, inputs, [_vi("y", [3]), _vi("n", [])])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("with_trip", "with_cond"), [(True, True), (False, True),
                                                      (True, False)])
def test_a_data_dependent_loop_is_a_while_loop(with_trip: bool, with_cond: bool,
                                               mode: str) -> None:
    """The trip count M and the start condition are run-time inputs (or absent); the body
    stops on its own condition, computed from the carried values."""
    model = _while_model(with_trip, with_cond)
    for limit, m, start in ((40.0, 100, True), (40.0, 2, True), (1e6, 5, True),
                            (40.0, 9, False)):
        feeds = {"y0": np.array([0.5, -1.0, 2.0], np.float32),
                 "x": np.array([1.0, 0.25, -0.5], np.float32),
                 "limit": np.array(limit, np.float32)}
        if with_trip:
            feeds["M"] = np.array(m, np.int64)
        elif limit > 1e5:
            continue  # no trip count: that loop would not end
        if with_cond:
            feeds["start"] = np.array(start)
        g = _check(model, feeds, mode)
        assert _ops(g)["while_loop"] == 1


def test_scan_outputs_of_a_data_dependent_loop_are_refused_then_unrolled_when_given() -> None:
    """Stacked outputs of a loop that stops on data would have a data-dependent length:
    the import says the condition must be known; the ONNX backend then imports again with
    the integer and bool inputs given, and the loop unrolls."""
    from graphc.onnx.backend import GraphcBackend

    body = helper.make_graph(
        [helper.make_node("Add", ["y_in", "x"], ["y_out"]), _const("last", 1),
         helper.make_node("Gather", ["y_out", "last"], ["t"]),  # folds when y is known
         helper.make_node("Less", ["t", "limit"], ["c_out"]),
         helper.make_node("Identity", ["y_out"], ["step"])], "body",
        [_vi("i", [], I64), _vi("c_in", [], B), _vi("y_in", [2])],
        [_vi("c_out", [], B), _vi("y_out", [2]), _vi("step", [2])])
    model = _model([_const("limit", 10.0, np.float32),
                    helper.make_node("Loop", ["M", "", "y0"], ["y", "steps"], body=body)],
                   [_vi("M", [], I64), _vi("y0", [2]), _vi("x", [2])],
                   [_vi("y", [2]), _vi("steps", [None, 2])])
    with pytest.raises(OnnxError, match=r"Loop node.*must be known when the model is "
                                        r"imported.*scan output"):
        gc.onnx.load(model)
    feeds = {"M": np.array(6, np.int64), "y0": np.array([1.0, 0.0], np.float32),
             "x": np.array([1.0, 2.0], np.float32)}
    with pytest.raises(OnnxError, match="condition is computed at run time"):
        gc.onnx.load(model, constants={"M": feeds["M"]})  # the condition still reads x
    rep = GraphcBackend.prepare(model)
    got = rep.run(list(feeds.values()))
    for a, b in zip(got, _ort(model, feeds), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert rep.inputs_given == "all"


# --- If -------------------------------------------------------------------------------------

def _if_model() -> Any:
    """If(sum(x) > 0): then = relu(x) * w (an initializer) + If(b, x, -x) nested, reading x
    and b from the enclosing graph; else = a constant minus x."""
    inner = helper.make_node(
        "If", ["b"], ["z"],
        then_branch=helper.make_graph([helper.make_node("Identity", ["x"], ["z1"])], "t2", [],
                                      [_vi("z1", [2, 3])]),
        else_branch=helper.make_graph([helper.make_node("Neg", ["x"], ["z2"])], "e2", [],
                                      [_vi("z2", [2, 3])]))
    then = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]),
                              helper.make_node("Mul", ["r", "w"], ["rw"]), inner,
                              helper.make_node("Add", ["rw", "z"], ["y1"])], "then", [],
                             [_vi("y1", [2, 3])])
    other = helper.make_graph([_const("k", np.arange(6.0).reshape(2, 3), np.float32),
                               helper.make_node("Sub", ["k", "x"], ["y2"])], "else", [],
                              [_vi("y2", [2, 3])])
    return _model([helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
                   helper.make_node("Greater", ["s", "zero"], ["c"]),
                   helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)],
                  [_vi("x", [2, 3]), _vi("b", [], B)], [_vi("y", [2, 3])],
                  [numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
                   numpy_helper.from_array(RNG.standard_normal((2, 3), np.float32), "w")])


@pytest.mark.parametrize("mode", MODES)
def test_an_if_on_a_runtime_condition_is_a_cond(mode: str) -> None:
    model = _if_model()
    for sign in (1.0, -1.0):
        for b in (True, False):
            x = np.abs(RNG.standard_normal((2, 3), np.float32)) * sign
            g = _check(model, {"x": x, "b": np.array(b)}, mode)
    ops = _ops(g)
    assert ops["cond"] == 1 and ops["cond@1"] == 1  # the nested If is a cond in a branch
    assert "variable" in ops and "relu" not in ops  # w stays a variable, read by capture


def test_branches_of_different_shapes_need_the_condition_at_import() -> None:
    then = helper.make_graph([helper.make_node("Identity", ["x"], ["a"])], "t", [],
                             [_vi("a", [2, 3])])
    other = helper.make_graph([helper.make_node("ReduceSum", ["x"], ["s"], keepdims=1)],
                              "e", [], [_vi("s", [1, 1])])
    model = _model([helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)],
                   [_vi("c", [], B), _vi("x", [2, 3])], [_vi("y", [None, None])])
    with pytest.raises(OnnxError, match=r"If node.*different types.*float32\[2, 3\] / "
                                        r"float32\[1, 1\].*must be known"):
        gc.onnx.load(model)
    x = np.ones((2, 3), np.float32)
    (y,) = gc.reference(gc.onnx.load(model, constants={"c": False}), signature="main")(x)
    np.testing.assert_array_equal(y, [[6.0]])


# --- nesting, and what unrolls ------------------------------------------------------------

def _loop_with_an_if() -> Any:
    """6 iterations; on even i: y * x, else y + w (w an initializer): an If on the
    iteration counter inside the Loop body, both reading the enclosing graph."""
    then = helper.make_graph([helper.make_node("Mul", ["y_in", "x"], ["p"])], "even", [],
                             [_vi("p", [3])])
    other = helper.make_graph([helper.make_node("Add", ["y_in", "w"], ["q"])], "odd", [],
                              [_vi("q", [3])])
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]), _const("two", 2),
         helper.make_node("Mod", ["i", "two"], ["r"]), _const("zero", 0),
         helper.make_node("Equal", ["r", "zero"], ["even"]),
         helper.make_node("If", ["even"], ["y_out"], then_branch=then, else_branch=other),
         helper.make_node("Tanh", ["y_out"], ["step"])], "body",
        [_vi("i", [], I64), _vi("c_in", [], B), _vi("y_in", [3])],
        [_vi("c_out", [], B), _vi("y_out", [3]), _vi("step", [3])])
    return _model([helper.make_node("Loop", ["m", "", "y0"], ["y", "steps"], body=body)],
                  [_vi("y0", [3]), _vi("x", [3])], [_vi("y", [3]), _vi("steps", [6, 3])],
                  [numpy_helper.from_array(np.array(6, np.int64), "m"),
                   numpy_helper.from_array(RNG.standard_normal(3, np.float32), "w")])


@pytest.mark.parametrize("mode", MODES)
def test_a_loop_containing_an_if_is_a_scan_containing_a_cond(mode: str) -> None:
    feeds = {"y0": RNG.standard_normal(3, np.float32), "x": RNG.standard_normal(3, np.float32)}
    g = _check(_loop_with_an_if(), feeds, mode)
    ops = _ops(g)
    assert ops["scan"] == 1 and ops["cond@1"] == 1 and ops["mul@2"] == 1
    assert ops.get("cond", 0) == 0


def test_a_body_that_needs_its_iteration_at_import_unrolls() -> None:
    """Slice's starts are the iteration counter (graphc's Slice needs them at import) and
    a carry grows each step (Concat): both loops unroll, and match ONNX Runtime."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]), _const("one", [1]),
         helper.make_node("Unsqueeze", ["i", "ax"], ["start"]),
         helper.make_node("Add", ["start", "one"], ["end"]),
         helper.make_node("Slice", ["x", "start", "end"], ["piece"]),
         helper.make_node("Add", ["y_in", "piece"], ["y_out"]),
         helper.make_node("Concat", ["grow_in", "piece"], ["grow_out"], axis=0)], "body",
        [_vi("i", [], I64), _vi("c_in", [], B), _vi("y_in", [1]), _vi("grow_in", [None])],
        [_vi("c_out", [], B), _vi("y_out", [1]), _vi("grow_out", [None])],
        [numpy_helper.from_array(np.array([0], np.int64), "ax")])
    model = _model([_const("m", 4), _const("g0", [0.5], np.float32),
                    helper.make_node("Loop", ["m", "", "y0", "g0"], ["y", "grown"], body=body)],
                   [_vi("y0", [1]), _vi("x", [5])], [_vi("y", [1]), _vi("grown", [5])])
    feeds = {"y0": np.array([1.0], np.float32), "x": np.arange(5.0, dtype=np.float32)}
    g = _check(model, feeds, "compiled")
    assert "scan" not in _ops(g) and "while_loop" not in _ops(g)


def test_a_loop_over_known_values_folds_at_import() -> None:
    """A Loop whose operands are all known (n <- 2n, 3 times) folds to an array, so a
    Reshape can take its result as a shape; a Scan over known values folds too."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]), _const("two", 2),
         helper.make_node("Mul", ["n_in", "two"], ["n_out"])], "body",
        [_vi("i", [], I64), _vi("c_in", [], B), _vi("n_in", [1], I64)],
        [_vi("c_out", [], B), _vi("n_out", [1], I64)])
    running = helper.make_graph(
        [helper.make_node("Add", ["s_in", "x_t"], ["s_out"]),
         helper.make_node("Identity", ["s_out"], ["y_t"])], "running",
        [_vi("s_in", [], I64), _vi("x_t", [], I64)], [_vi("s_out", [], I64), _vi("y_t", [], I64)])
    model = _model([_const("m", 3), _const("n0", [1]), _const("one", [1]),
                    helper.make_node("Loop", ["m", "", "n0"], ["n"], body=body),
                    helper.make_node("Concat", ["one", "n"], ["shape"], axis=0),
                    helper.make_node("Reshape", ["x", "shape"], ["y"]),
                    _const("s0", 0), _const("parts", [4, -2]),
                    helper.make_node("Scan", ["s0", "parts"], ["total", "sums"], body=running,
                                     num_scan_inputs=1),  # sums = [4, 2]
                    helper.make_node("Reshape", ["x", "sums"], ["z"])],
                   [_vi("x", [2, 4])], [_vi("y", [1, 8]), _vi("z", [4, 2])])
    g = _check(model, {"x": np.arange(8.0, dtype=np.float32).reshape(2, 4)}, "reference")
    assert "scan" not in _ops(g) and "while_loop" not in _ops(g)


# --- export: cond -> If, while_loop -> Loop, nested ------------------------------------------

def _nested_graph() -> gc.Graph:
    """A scan whose body holds a cond, and a while_loop whose body holds a cond, each
    capturing values of the enclosing graphs."""
    with gc.Graph("nested") as g:
        xs = gc.placeholder((5, 3), gc.float32, name="xs")
        w = gc.placeholder((3,), gc.float32, name="w")

        def step(c: gc.Node, x: gc.Node) -> tuple[gc.Node, gc.Node]:
            y = gc.cond(gc.less(gc.sum(x), 0.0), lambda v: (v * w,), lambda v: (v - w,), x)[0]
            return gc.tanh(c + y), y

        carry, ys = gc.scan(step, w * 0.0, xs)

        def grow(c: tuple[gc.Node, gc.Node]) -> tuple[gc.Node, gc.Node]:
            i, v = c
            return i + 1, gc.cond(gc.less(gc.sum(v), 0.0), lambda u: (u * 2.0 + w,),
                                  lambda u: (u + 1.0,), v)[0]

        _, grown = gc.while_loop(lambda c: gc.logical_and(gc.less(c[0], 8),
                                                          gc.less(gc.sum(gc.abs(c[1])), 50.0)),
                                 grow, (np.array(0), carry))
    g.add_signature("main", [xs, w], [ys, grown])
    return g


@pytest.mark.parametrize("opset", [17, 21])
def test_nested_regions_save_check_and_round_trip(opset: int) -> None:
    g = _nested_graph()
    model = gc.onnx.to_model(g, "main", opset)
    onnx.checker.check_model(model, full_check=True)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["Scan"] == 1 and ops["Loop"] == 1
    feeds = {"xs": RNG.standard_normal((5, 3), np.float32),
             "w": RNG.standard_normal(3, np.float32)}
    want = gc.reference(g, signature="main")(*feeds.values())
    for a, b in zip(_ort(model, feeds), want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    back = gc.onnx.load(model)
    assert {"scan", "while_loop", "cond@1"} <= set(_ops(back))
    for a, b in zip(gc.reference(back, signature="main")(*feeds.values()), want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


# --- training through imported control flow ------------------------------------------------

def test_gradients_flow_through_an_imported_scan_holding_an_if() -> None:
    """A float64 Scan whose body holds an If, both reading the initializer W (a trainable
    variable, captured at two levels): gc.grad of a loss over the stacked outputs, with
    respect to W and to the scanned input, matches central finite differences."""
    f64 = TensorProto.DOUBLE
    then = helper.make_graph([helper.make_node("MatMul", ["h", "W"], ["p"])], "pos", [],
                             [_vi("p", [3], f64)])
    other = helper.make_graph([helper.make_node("MatMul", ["h", "W"], ["q0"]),
                               helper.make_node("Neg", ["q0"], ["q"])], "neg", [],
                              [_vi("q", [3], f64)])
    body = helper.make_graph(
        [helper.make_node("ReduceSum", ["x_t"], ["s"], keepdims=0),
         helper.make_node("Greater", ["s", "zero"], ["c"]),
         helper.make_node("If", ["c"], ["hw"], then_branch=then, else_branch=other),
         helper.make_node("Add", ["hw", "x_t"], ["a"]),
         helper.make_node("Tanh", ["a"], ["h_out"]),
         helper.make_node("Identity", ["h_out"], ["y"])], "body",
        [_vi("h", [3], f64), _vi("x_t", [3], f64)], [_vi("h_out", [3], f64), _vi("y", [3], f64)],
        [numpy_helper.from_array(np.array(0.0), "zero")])
    w = RNG.standard_normal((3, 3)) * 0.5
    model = _model([helper.make_node("Scan", ["h0", "xs"], ["h", "ys"], body=body,
                                     num_scan_inputs=1)],
                   [_vi("h0", [3], f64), _vi("xs", [6, 3], f64)],
                   [_vi("h", [3], f64), _vi("ys", [6, 3], f64)],
                   [numpy_helper.from_array(w, "W")])
    g = gc.onnx.load(model)
    (variable,) = g.trainable_variables
    outputs = g.signatures["main"].outputs
    r = RNG.standard_normal((6, 3))
    with g:
        xs = g.signatures["main"].inputs[1]
        loss = gc.sum(outputs[1] * r)
        dw, dxs = gc.grad(loss, [variable, xs])
    g.add_signature("grads", list(g.signatures["main"].inputs), [loss, dw, dxs])
    run = gc.reference(g, signature="grads")
    h0, x = RNG.standard_normal(3), RNG.standard_normal((6, 3))
    _, got_w, got_x = run(h0, x)
    eps = 1e-6

    def loss_at(wv: np.ndarray, xv: np.ndarray) -> float:
        g.variables[variable.name] = wv
        return float(run(h0, xv)[0])

    num_w = np.zeros_like(w)
    for idx in np.ndindex(*w.shape):
        d = np.zeros_like(w)
        d[idx] = eps
        num_w[idx] = (loss_at(w + d, x) - loss_at(w - d, x)) / (2 * eps)
    num_x = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        d = np.zeros_like(x)
        d[idx] = eps
        num_x[idx] = (loss_at(w, x + d) - loss_at(w, x - d)) / (2 * eps)
    np.testing.assert_allclose(got_w, num_w, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(got_x, num_x, rtol=1e-6, atol=1e-8)
    assert "cond@1" in _ops(g)  # the If is a cond in the scan body (and in its gradient's)


def test_a_loop_that_never_runs_returns_its_initial_values() -> None:
    """M = 0 known at import: the states pass through, whatever the (run-time) condition;
    with scan outputs that would be empty, a clear error."""
    body = helper.make_graph([helper.make_node("Identity", ["c_in"], ["c_out"]),
                              helper.make_node("Neg", ["y_in"], ["y_out"])], "body",
                             [_vi("i", [], I64), _vi("c_in", [], B), _vi("y_in", [2])],
                             [_vi("c_out", [], B), _vi("y_out", [2])])
    model = _model([_const("m", 0), helper.make_node("Loop", ["m", "c", "y0"], ["y"], body=body)],
                   [_vi("c", [], B), _vi("y0", [2])], [_vi("y", [2])])
    _check(model, {"c": np.array(True), "y0": np.array([1.0, 2.0], np.float32)}, "reference")
    body.output.append(_vi("y_t", [2]))
    body.node.append(helper.make_node("Identity", ["y_out"], ["y_t"]))
    empty = _model([_const("m", 0),
                    helper.make_node("Loop", ["m", "c", "y0"], ["y", "ys"], body=body)],
                   [_vi("c", [], B), _vi("y0", [2])], [_vi("y", [2]), _vi("ys", [0, 2])])
    with pytest.raises(OnnxError, match=r"Loop node.*no iteration runs"):
        gc.onnx.load(empty)
