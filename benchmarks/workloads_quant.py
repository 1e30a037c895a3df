"""Quantized inference of the MLP 784-512-512-10 (the issue's acceptance rows).

graphc float32 (the baseline: the same graph as `mlp_infer_*`, weights as variables) and
graphc int8 (`gc.quantize_dynamic` of that graph: per-channel int8 weights, uint8
activations with scales computed at run time, `vpdpbusd` GEMMs and GEMVs; and
`gc.quantize_static`, calibrated on four other batches of the same distribution). Peer: ONNX
Runtime's dynamic int8 quantization (`onnxruntime.quantization.quantize_dynamic` of the
float ONNX model: DynamicQuantizeLinear + MatMulInteger), when onnxruntime and onnx are
installed. The `reduce_range` rows quantize the weights to 7 bits on both sides (the option
of both quantizers): then neither integer GEMM can saturate, and graphc's uses
`pmaddubsw` without VNNI as ONNX Runtime's does for any weights. Every setup checks its
output against numpy's float32 MLP first: float within 1e-4, int8 within 5% of the largest
logit (quantization error, not a bug).
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.workloads_data import SIZES, _mlp_batch, _mlp_params

Runner = Callable[[], object]
INT8_RTOL = 5e-2


def flops(batch: int) -> int:
    return 2 * batch * sum(a * b for a, b in itertools.pairwise(SIZES))


def _numpy(batch: int) -> np.ndarray:
    w1, b1, w2, b2, w3, b3 = _mlp_params()
    xb, _ = _mlp_batch(batch)
    h = np.maximum(xb @ w1 + b1, 0)
    h = np.maximum(h @ w2 + b2, 0)
    return h @ w3 + b3


def _check(name: str, got: np.ndarray, want: np.ndarray, rtol: float) -> None:
    err = float(np.max(np.abs(got - want))) / max(float(np.max(np.abs(want))), 1e-30)
    if not err <= rtol:
        raise AssertionError(f"{name}: max error {err:.3g} of max |expected| (tolerance {rtol})")


def _graph(batch: int):
    import graphc as gc

    with gc.Graph("mlp") as g:
        x = gc.placeholder((batch, SIZES[0]), gc.float32, name="x")
        h = x
        params = _mlp_params()
        for i in range(0, len(params), 2):
            h = h @ gc.variable(params[i], name=f"p{i}") + gc.variable(params[i + 1],
                                                                       name=f"p{i + 1}")
            if i + 2 < len(params):
                h = gc.relu(h)
    g.add_signature("main", [x], [h])
    return g


def graphc_f32(batch: int) -> Callable[[int], Runner]:
    def setup(threads: int) -> Runner:
        import graphc as gc

        f = gc.compile(_graph(batch), signature="main",
                       options=gc.CompileOptions(threads=threads))
        xb, _ = _mlp_batch(batch)
        _check("graphc f32", f(xb)[0], _numpy(batch), 1e-4)
        return lambda: f(xb)

    return setup


def _calibration(batch: int) -> list[np.ndarray]:
    """Four batches of the benchmark's input distribution (not the timed batch itself)."""
    return [np.random.default_rng(100 + i).standard_normal((batch, SIZES[0])).astype(
        np.float32) for i in range(4)]


def graphc_int8(batch: int, static: bool = False, reduce_range: bool = False
                ) -> Callable[[int], Runner]:
    def setup(threads: int) -> Runner:
        import graphc as gc

        g = _graph(batch)
        q = (gc.quantize_static(g, _calibration(batch), reduce_range=reduce_range) if static
             else gc.quantize_dynamic(g, reduce_range=reduce_range))
        f = gc.compile(q, signature="main", options=gc.CompileOptions(threads=threads))
        xb, _ = _mlp_batch(batch)
        _check("graphc int8", f(xb)[0], _numpy(batch), INT8_RTOL)
        return lambda: f(xb)

    return setup


def _ort_quantized(batch: int, reduce_range: bool = False) -> bytes:
    """The float MLP as ONNX, through ONNX Runtime's `quantize_dynamic` (per-channel int8
    weights: DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from benchmarks.workloads_ort import _dense_nodes, _model

    xb, _ = _mlp_batch(batch)
    model = _model(_dense_nodes("x", 3), [("x", xb.shape)], ("y", (batch, SIZES[-1])),
                   {f"p{i}": p for i, p in enumerate(_mlp_params())})
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "mlp.onnx"), Path(tmp, "mlp_int8.onnx")
        src.write_bytes(model)
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8,
                         per_channel=True, reduce_range=reduce_range)
        return onnx.load(str(dst)).SerializeToString()


def graphc_int8_onnx(batch: int) -> Callable[[int], Runner]:
    """graphc on ONNX Runtime's quantized model file, imported (`gc.onnx.load`: its
    MatMulIntegers run on the int8 GEMM, `passes/integer_matmul.py`)."""
    def setup(threads: int) -> Runner:
        import graphc as gc

        g = gc.onnx.load(_ort_quantized(batch), trainable=False)
        f = gc.compile(g, signature="main", options=gc.CompileOptions(threads=threads))
        xb, _ = _mlp_batch(batch)
        _check("graphc int8 (ORT's model)", f(xb)[0], _numpy(batch), INT8_RTOL)
        return lambda: f(xb)

    return setup


def _ort_runner(model: bytes, x: np.ndarray, want: np.ndarray, threads: int) -> Runner:
    """An ONNX Runtime session of the quantized `model` (input "x"), I/O bound to arrays,
    checked against `want` within int8 error."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])
    out = np.empty(want.shape, np.float32)
    binding = sess.io_binding()
    binding.bind_cpu_input("x", x)
    binding.bind_output(sess.get_outputs()[0].name, "cpu", 0, np.float32, out.shape,
                        out.ctypes.data)
    sess.run_with_iobinding(binding)
    _check("ort int8", out, want, INT8_RTOL)

    def run() -> object:
        sess.run_with_iobinding(binding)
        return out, x  # keeps the bound arrays alive

    return run


def ort_int8(batch: int, reduce_range: bool = False) -> Callable[[int], Runner]:
    def setup(threads: int) -> Runner:
        xb, _ = _mlp_batch(batch)
        return _ort_runner(_ort_quantized(batch, reduce_range), xb, _numpy(batch), threads)

    return setup


def main() -> None:
    """Print graphc int8 against graphc float32 at both batches (1 thread, medians)."""
    import time

    for batch in (256, 1):
        times = {}
        for name, setup in (("f32", graphc_f32(batch)), ("int8", graphc_int8(batch)),
                            ("static", graphc_int8(batch, static=True))):
            run = setup(1)
            for _ in range(10):
                run()
            samples = []
            stop = time.perf_counter() + 2.0
            while time.perf_counter() < stop or len(samples) < 20:
                t0 = time.perf_counter()
                run()
                samples.append(time.perf_counter() - t0)
            times[name] = float(np.median(samples))
        print(f"MLP 784-512-512-10 batch {batch}: graphc f32 {times['f32'] * 1e3:.4f} ms, "
              f"int8 dynamic {times['int8'] * 1e3:.4f} ms ({times['f32'] / times['int8']:.2f}x),"
              f" static {times['static'] * 1e3:.4f} ms ({times['f32'] / times['static']:.2f}x)")


if __name__ == "__main__":
    main()


# --- the imported 2-layer transformer encoder (issue 17's int8 encoder row) -------------------

def encoder_graphc_int8(threads: int) -> Runner:
    """The `onnx_encoder` model imported, then `gc.quantize_dynamic`."""
    import graphc as gc
    from benchmarks.workloads_onnx import model_file

    path, x, y = model_file("encoder")
    q = gc.quantize_dynamic(gc.onnx.load(path, trainable=False))
    f = gc.compile(q, signature="main", options=gc.CompileOptions(threads=threads))
    _check("graphc int8 encoder", f(x)[0], y, INT8_RTOL)
    return lambda: f(x)


def encoder_ort_int8(threads: int) -> Runner:
    """ONNX Runtime on `onnxruntime.quantization.quantize_dynamic` of the same file
    (per-channel int8 weights), sequential with `threads` intra-op threads."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from benchmarks.workloads_onnx import model_file

    path, x, y = model_file("encoder")
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp, "encoder_int8.onnx")
        quantize_dynamic(str(path), str(dst), weight_type=QuantType.QInt8, per_channel=True)
        quantized = dst.read_bytes()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(quantized, sess_options=so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    _check("ort int8 encoder", sess.run(None, {name: x})[0], y, INT8_RTOL)
    return lambda: sess.run(None, {name: x})


# --- ONNX Runtime's quantize_dynamic of the imported CNN (ConvInteger) ----------------------

def _ort_quantized_net(name: str) -> bytes:
    """`benchmarks.workloads_onnx`'s model `name` through ONNX Runtime's `quantize_dynamic`
    (per-channel int8 weights: DynamicQuantizeLinear -> ConvInteger / MatMulInteger)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from benchmarks.workloads_onnx import model_file

    path, _, _ = model_file(name)
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp, f"{name}_int8.onnx")
        quantize_dynamic(str(path), str(dst), weight_type=QuantType.QInt8, per_channel=True)
        return dst.read_bytes()


def net_graphc_int8(name: str) -> Callable[[int], Runner]:
    """graphc on ONNX Runtime's quantized file (its ConvIntegers on the int8 GEMM:
    `passes/integer_matmul.py`)."""
    def setup(threads: int) -> Runner:
        import graphc as gc
        from benchmarks.workloads_onnx import model_file

        _, x, y = model_file(name)
        g = gc.onnx.load(_ort_quantized_net(name), trainable=False)
        f = gc.compile(g, signature="main", options=gc.CompileOptions(threads=threads))
        _check(f"graphc int8 {name}", f(x)[0], y, INT8_RTOL)
        return lambda: f(x)

    return setup


def net_ort_int8(name: str) -> Callable[[int], Runner]:
    def setup(threads: int) -> Runner:
        from benchmarks.workloads_onnx import model_file

        _, x, y = model_file(name)
        return _ort_runner(_ort_quantized_net(name), x, y, threads)

    return setup
