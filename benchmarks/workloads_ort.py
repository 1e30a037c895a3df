"""The ONNX Runtime peer of the inference workloads (used when onnxruntime is installed).

Each model is built with onnx.helper from the same weights and data as the other peers
(the `_*_params`/`_*_batch` helpers of benchmarks.workloads_data); the weights are
initializers, as a deployed ONNX model would carry them. Sessions use the CPU execution provider,
`intra_op_num_threads = threads`, one inter-op thread, sequential execution and
ORT_ENABLE_ALL graph optimizations.

One call = `sess.run_with_iobinding` with the input bound once to its preallocated numpy
array and the output bound to a preallocated numpy array, so no call allocates or copies
its input/output (measured ~6 us per call faster than `sess.run(None, feeds)` on the
batch-1 models, the same within noise on the others). Setup checks one call's output against
the numpy peer's (for LeNet, which has no numpy peer, against a plain numpy forward pass here)
and raises if it differs by more than 1e-4 of the largest |value|: a wrong peer is worse
than none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from benchmarks import workloads as w
from benchmarks import workloads_data as d
from benchmarks import workloads_lowp, workloads_onnx, workloads_onnx_loop, workloads_quant

Runner = Callable[[], object]
OPSET = 17
# onnx.helper would write the newest IR version, which an older ORT may refuse; IR 9
# (onnx 1.14) carries opset 17 and loads in any ORT >= 1.15.
IR_VERSION = 9
RTOL = 1e-4


def _model(nodes: list, inputs: list[tuple[str, tuple[int, ...]]], output: tuple[str, tuple],
           initializers: dict[str, np.ndarray]) -> bytes:
    """A float32 ONNX model (serialized) of `nodes`, checked by onnx.checker."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes, "bench",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(output[0], TensorProto.FLOAT, output[1])],
        initializer=[numpy_helper.from_array(np.ascontiguousarray(a), name=n)
                     for n, a in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION, producer_name="graphc-benchmarks")
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _runner(model: bytes, inputs: dict[str, np.ndarray], out_shape: tuple[int, ...],
            expected: np.ndarray, threads: int) -> Runner:
    """A session of `model` with I/O bound to preallocated arrays; checks one call first."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])
    out = np.empty(out_shape, np.float32)
    arrays = {name: np.ascontiguousarray(value) for name, value in inputs.items()}
    binding = sess.io_binding()
    for name, value in arrays.items():
        binding.bind_cpu_input(name, value)
    binding.bind_output(sess.get_outputs()[0].name, "cpu", 0, np.float32, out_shape,
                        out.ctypes.data)
    sess.run_with_iobinding(binding)
    err = np.max(np.abs(out - expected)) / max(float(np.max(np.abs(expected))), 1e-30)
    if not np.isfinite(err) or err > RTOL:
        raise AssertionError(f"onnxruntime output differs from numpy: max error {err:.2e} "
                             f"relative to max |expected| (tolerance {RTOL:g})")

    return _Bound(sess, binding, out, arrays)


@dataclass
class _Bound:
    """One timed call: run `sess` on its bound I/O. Holds the bound arrays, which ORT
    reads and writes by pointer, for as long as the runner lives."""

    sess: object
    binding: object
    out: np.ndarray
    inputs: dict[str, np.ndarray]

    def __call__(self) -> object:
        self.sess.run_with_iobinding(self.binding)  # type: ignore[attr-defined]
        return self.out


def _node(op: str, inputs: list[str], output: str, **attrs: object) -> object:
    from onnx import helper

    return helper.make_node(op, inputs, [output], **attrs)


# --- elementwise chain ----------------------------------------------------------------------

def ew(threads: int) -> Runner:
    x, a, b = d._ew_data()
    nodes = [_node("Mul", ["x", "a"], "xa"), _node("Add", ["xa", "b"], "xab"),
             _node("Tanh", ["xab"], "t"), _node("Sigmoid", ["x"], "s"),
             _node("Mul", ["t", "s"], "ts"), _node("Mul", ["x", "x"], "xx"),
             _node("Mul", ["xx", "half"], "hxx"), _node("Add", ["ts", "hxx"], "y")]
    consts = {"a": np.array(a, np.float32), "b": np.array(b, np.float32),
              "half": np.array(0.5, np.float32)}
    model = _model(nodes, [("x", d.EW_SHAPE)], ("y", d.EW_SHAPE), consts)
    return _runner(model, {"x": x}, d.EW_SHAPE, w.ew_numpy(threads)(), threads)


# --- MLP 784-512-512-10 ---------------------------------------------------------------------

def _dense_nodes(inp: str, n_layers: int, prefix: str = "p", first: int = 0) -> list:
    """Gemm(+bias) layers on `inp`, ReLU between them; the last output is named "y"."""
    nodes, h = [], inp
    for k in range(n_layers):
        out = "y" if k == n_layers - 1 else f"z{k}"
        nodes.append(_node("Gemm", [h, f"{prefix}{first + 2 * k}", f"{prefix}{first + 2 * k + 1}"],
                           out))
        if k < n_layers - 1:
            nodes.append(_node("Relu", [out], f"h{k}"))
            h = f"h{k}"
    return nodes


def mlp_infer(batch: int) -> Callable[[int], Runner]:
    def setup(threads: int) -> Runner:
        params = d._mlp_params()
        xb, _ = d._mlp_batch(batch)
        model = _model(_dense_nodes("x", 3), [("x", xb.shape)], ("y", (batch, d.SIZES[-1])),
                       {f"p{i}": p for i, p in enumerate(params)})
        expected = w.mlp_infer_numpy(batch)(threads)()
        return _runner(model, {"x": xb}, (batch, d.SIZES[-1]), expected, threads)

    return setup


# --- GEMM -------------------------------------------------------------------------------------

def gemm(n: int) -> Callable[[int], Runner]:
    def setup(threads: int) -> Runner:
        a, b = d._gemm_data(n)
        model = _model([_node("MatMul", ["a", "b"], "y")], [("a", (n, n)), ("b", (n, n))],
                       ("y", (n, n)), {})
        return _runner(model, {"a": a, "b": b}, (n, n), w.gemm_numpy(n)(threads)(), threads)

    return setup


# --- LeNet-5 ------------------------------------------------------------------------------------

def _lenet_numpy(p: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    """LeNet-5 forward in plain numpy (im2col convolutions), to check the ONNX model."""
    from numpy.lib.stride_tricks import sliding_window_view

    def conv(h: np.ndarray, k: np.ndarray, bias: np.ndarray, pad: int) -> np.ndarray:
        h = np.pad(h.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        win = sliding_window_view(h, k.shape[2:], axis=(2, 3))  # n, c, oh, ow, kh, kw
        return np.einsum("ncyxij,ocij->noyx", win, k) + bias[None, :, None, None]

    def pool(h: np.ndarray) -> np.ndarray:
        n, c, hh, ww = h.shape
        return h.reshape(n, c, hh // 2, 2, ww // 2, 2).max(axis=(3, 5))

    h = pool(np.maximum(conv(x, p[0], p[1], 2), 0))
    h = pool(np.maximum(conv(h, p[2], p[3], 0), 0)).reshape(x.shape[0], 400)
    h = np.maximum(h @ p[4] + p[5], 0)
    h = np.maximum(h @ p[6] + p[7], 0)
    return (h @ p[8] + p[9]).astype(np.float32)


def lenet_infer(batch: int) -> Callable[[int], Runner]:
    def setup(threads: int) -> Runner:
        params = d._lenet_params()
        xb, _ = d._lenet_batch(batch)
        pool = {"kernel_shape": [2, 2], "strides": [2, 2]}
        nodes = [_node("Conv", ["x", "p0", "p1"], "c1", pads=[2, 2, 2, 2]),
                 _node("Relu", ["c1"], "r1"), _node("MaxPool", ["r1"], "m1", **pool),
                 _node("Conv", ["m1", "p2", "p3"], "c2"),
                 _node("Relu", ["c2"], "r2"), _node("MaxPool", ["r2"], "m2", **pool),
                 _node("Flatten", ["m2"], "f", axis=1),
                 *_dense_nodes("f", 3, first=4)]
        out_shape = (batch, 10)
        model = _model(nodes, [("x", xb.shape)], ("y", out_shape),
                       {f"p{i}": p for i, p in enumerate(params)})
        return _runner(model, {"x": xb}, out_shape, _lenet_numpy(params, xb), threads)

    return setup


# --- the GPT (benchmarks.workloads_gpt) ----------------------------------------------------

def gpt_infer(threads: int) -> Runner:
    """The causal GPT as torch exported it (TorchScript exporter, opset 17; int64 ids),
    checked against workloads_gpt's float64 numpy forward."""
    from benchmarks import workloads_gpt as wg

    expected = wg.infer_reference()
    return _runner(wg.onnx_file().read_bytes(), {"ids": wg.onnx_ids()}, expected.shape,
                   expected, threads)


PEERS: dict[str, Callable[[int], Runner]] = {
    "ew": ew,
    "mlp_infer_1": mlp_infer(1),
    "mlp_infer_256": mlp_infer(256),
    "gemm_256": gemm(256),
    "gemm_512": gemm(512),
    "gemm_1024": gemm(1024),
    "lenet_infer_1": lenet_infer(1),
    "lenet_infer_64": lenet_infer(64),
    **workloads_onnx.ORT_PEERS,
    **workloads_onnx_loop.ORT_PEERS,
    "gpt_infer_1": gpt_infer,
    "gpt_infer_1_onnx": gpt_infer,
    "gemm_int8": workloads_lowp.int8_ort,
    "mlp_int8_1": workloads_quant.ort_int8(1),
    "mlp_int8_256": workloads_quant.ort_int8(256),
    "mlp_int8_7bit_1": workloads_quant.ort_int8(1, reduce_range=True),
    "mlp_int8_onnx_256": workloads_quant.ort_int8(256),
    "onnx_resnet18_int8": workloads_quant.net_ort_int8("resnet18"),
    "mlp_int8_7bit_256": workloads_quant.ort_int8(256, reduce_range=True),
    "onnx_encoder_int8": workloads_quant.encoder_ort_int8,
}
