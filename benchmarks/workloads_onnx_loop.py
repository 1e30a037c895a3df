"""An ONNX Loop imported onto graphc's scan: import + compile time, and the run, against
ONNX Runtime on the same model (issue 16: compile time that does not grow with the trip
count).

The model is an Elman RNN written as an ONNX Loop, as exporters write `for t in range(T)`:
h <- tanh(h W + x[t] U + b) for T = 1024 steps (hidden 64, input 32, batch 1), x[t] a
Gather on the iteration counter, every h stacked as the Loop's scan output. graphc imports
it as one scan node (the body converted once) and compiles a native loop; before, the
importer unrolled it into T copies of the body. Every setup checks its outputs against a
numpy loop (relative error at most 1e-4) and raises otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Runner = Callable[[], object]
STEPS, HIDDEN, INPUT = 1024, 64, 32
RTOL = 1e-4


def _data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(16)
    return {"xs": rng.standard_normal((STEPS, 1, INPUT)).astype(np.float32),
            "h0": np.zeros((1, HIDDEN), np.float32),
            "W": (rng.standard_normal((HIDDEN, HIDDEN)) / 8).astype(np.float32),
            "U": (rng.standard_normal((INPUT, HIDDEN)) / 6).astype(np.float32),
            "b": (rng.standard_normal(HIDDEN) / 10).astype(np.float32)}


def model_bytes() -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    data = _data()

    def vi(name: str, shape: list[int], elem: int = TensorProto.FLOAT) -> object:
        return helper.make_tensor_value_info(name, elem, shape)

    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]),
         helper.make_node("Gather", ["xs", "i"], ["x_t"], axis=0),
         helper.make_node("MatMul", ["h_in", "W"], ["hw"]),
         helper.make_node("MatMul", ["x_t", "U"], ["xu"]),
         helper.make_node("Add", ["hw", "xu"], ["s"]),
         helper.make_node("Add", ["s", "b"], ["sb"]),
         helper.make_node("Tanh", ["sb"], ["h_out"]),
         helper.make_node("Identity", ["h_out"], ["h_t"])], "cell",
        [vi("i", [], TensorProto.INT64), vi("c_in", [], TensorProto.BOOL),
         vi("h_in", [1, HIDDEN])],
        [vi("c_out", [], TensorProto.BOOL), vi("h_out", [1, HIDDEN]),
         vi("h_t", [1, HIDDEN])])
    inits = [numpy_helper.from_array(data[k], k) for k in ("W", "U", "b")]
    inits += [numpy_helper.from_array(np.array(STEPS, np.int64), "M"),
              numpy_helper.from_array(np.array(True), "go")]
    graph = helper.make_graph(
        [helper.make_node("Loop", ["M", "go", "h0"], ["h", "hs"], body=body)], "rnn_loop",
        [vi("xs", [STEPS, 1, INPUT]), vi("h0", [1, HIDDEN])],
        [vi("h", [1, HIDDEN]), vi("hs", [STEPS, 1, HIDDEN])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9  # what the installed ONNX Runtime reads
    return model.SerializeToString()  # type: ignore[no-any-return]


def _want() -> np.ndarray:
    d = _data()
    h, hs = d["h0"], []
    for t in range(STEPS):
        h = np.tanh(h @ d["W"] + d["xs"][t] @ d["U"] + d["b"])
        hs.append(h)
    return np.stack(hs)


def _check(peer: str, got: np.ndarray) -> None:
    want = _want()
    err = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
    if err > RTOL:
        raise AssertionError(f"{peer}: relative error {err:.2e} against the numpy loop")


def graphc_compile(threads: int) -> Runner:
    """gc.onnx.load + gc.compile, no compile cache."""
    import graphc as gc

    model = model_bytes()
    options = gc.CompileOptions(cache_dir=None, threads=threads)

    def run() -> object:
        return gc.compile(gc.onnx.load(model, trainable=False), signature="main",
                          options=options)

    d = _data()
    _check("graphc", run()(d["xs"], d["h0"])[1])
    return run


def graphc_run(threads: int) -> Runner:
    import graphc as gc

    exe = gc.compile(gc.onnx.load(model_bytes(), trainable=False), signature="main",
                     options=gc.CompileOptions(threads=threads))
    d = _data()
    _check("graphc", exe(d["xs"], d["h0"])[1])
    return lambda: exe(d["xs"], d["h0"])


def _ort_session(threads: int) -> object:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model_bytes(), opts, providers=["CPUExecutionProvider"])


def ort_session(threads: int) -> Runner:
    """Creating an ONNX Runtime session of the model."""
    d = _data()
    feeds = {"xs": d["xs"], "h0": d["h0"]}
    _check("ort", _ort_session(threads).run(None, feeds)[1])  # type: ignore[attr-defined]
    return lambda: _ort_session(threads)


def ort_run(threads: int) -> Runner:
    sess = _ort_session(threads)
    d = _data()
    feeds = {"xs": d["xs"], "h0": d["h0"]}
    _check("ort", sess.run(None, feeds)[1])  # type: ignore[attr-defined]
    return lambda: sess.run(None, feeds)  # type: ignore[attr-defined]


# The ORT peers of these workloads (merged into workloads_ort.PEERS).
ORT_PEERS: dict[str, Callable[[int], Runner]] = {
    "onnx_loop_compile": ort_session,
    "onnx_loop_run": ort_run,
}
