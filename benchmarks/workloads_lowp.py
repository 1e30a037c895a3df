"""Low-precision GEMMs at M=512, K=N=1024 (the issue's shape): float32 (the baseline),
bfloat16 (f32 accumulation and output) and int8 (uint8 x int8 -> exact int32).

graphc: `matmul` of float32 or bfloat16 placeholders, `matmul_integer` of uint8 x int8.
Peers: torch (float32; bfloat16 tensors through oneDNN; `torch._int_mm`, int8 x int8 ->
int32, the same work with a signed left operand) and ONNX Runtime's `MatMulInteger`
(uint8 x int8 -> int32). Every setup checks its result before timing: int8 exactly against
numpy's int64 product, bf16 within the bound of bf16 inputs with f32 sums, f32 to 1e-4.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Runner = Callable[[], object]
M, N, K = 512, 1024, 1024
FLOPS = 2 * M * N * K


def _floats() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(17)
    return (rng.standard_normal((M, K)).astype(np.float32),
            rng.standard_normal((K, N)).astype(np.float32))


def _ints() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(18)
    return (rng.integers(0, 256, (M, K), dtype=np.uint8),
            rng.integers(-128, 128, (K, N), dtype=np.int8))


def _check(name: str, got: np.ndarray, want: np.ndarray, rtol: float) -> None:
    err = float(np.max(np.abs(got.astype(np.float64) - want)))
    scale = max(float(np.max(np.abs(want))), 1e-30)
    if not err <= rtol * scale:
        raise AssertionError(f"{name}: max error {err:.3g} exceeds {rtol:g} x {scale:.3g}")


def _bf16_exact() -> np.ndarray:
    """The float64 product of the bf16-rounded inputs (what a bf16 GEMM approximates)."""
    import graphc as gc

    a, b = _floats()
    return (gc.from_bfloat16(gc.to_bfloat16(a)).astype(np.float64)
            @ gc.from_bfloat16(gc.to_bfloat16(b)).astype(np.float64))


def f32_graphc(threads: int) -> Runner:
    import graphc as gc

    a, b = _floats()
    with gc.Graph("gemm_f32") as g:
        pa, pb = gc.placeholder(a.shape), gc.placeholder(b.shape)
        out = gc.matmul(pa, pb)
    f = gc.compile(g, [pa, pb], out, options=gc.CompileOptions(threads=threads))
    _check("graphc f32", f(a, b), a.astype(np.float64) @ b, 1e-4)
    return lambda: f(a, b)


def bf16_graphc(threads: int) -> Runner:
    import graphc as gc

    a, b = (gc.to_bfloat16(x) for x in _floats())
    with gc.Graph("gemm_bf16") as g:
        pa, pb = gc.placeholder(a.shape, gc.bfloat16), gc.placeholder(b.shape, gc.bfloat16)
        out = gc.matmul(pa, pb)  # float32 result, float32 accumulation
    f = gc.compile(g, [pa, pb], out, options=gc.CompileOptions(threads=threads))
    _check("graphc bf16", f(a, b), _bf16_exact(), 1e-4)
    return lambda: f(a, b)


def int8_graphc(threads: int) -> Runner:
    import graphc as gc

    a, b = _ints()
    with gc.Graph("gemm_int8") as g:
        pa, pb = gc.placeholder(a.shape, gc.uint8), gc.placeholder(b.shape, gc.int8)
        out = gc.matmul_integer(pa, pb)
    f = gc.compile(g, [pa, pb], out, options=gc.CompileOptions(threads=threads))
    _check("graphc int8", f(a, b), a.astype(np.int64) @ b.astype(np.int64), 0.0)
    return lambda: f(a, b)


def f32_torch(threads: int) -> Runner:
    import torch

    torch.set_num_threads(threads)
    a, b = (torch.from_numpy(x) for x in _floats())
    return lambda: a @ b


def bf16_torch(threads: int) -> Runner:
    import torch

    torch.set_num_threads(threads)
    a, b = (torch.from_numpy(x).bfloat16() for x in _floats())
    _check("torch bf16", (a @ b).float().numpy(), _bf16_exact(), 1e-2)  # bf16 output
    return lambda: a @ b


def int8_torch(threads: int) -> Runner:
    import torch

    torch.set_num_threads(threads)
    ua, b = _ints()
    a = (ua.astype(np.int16) - 128).astype(np.int8)  # signed: what _int_mm takes
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    _check("torch int8", torch._int_mm(ta, tb).numpy(),
           a.astype(np.int64) @ b.astype(np.int64), 0.0)
    return lambda: torch._int_mm(ta, tb)


def int8_ort(threads: int) -> Runner:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    a, b = _ints()
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "gemm_int8",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [M, K]),
         helper.make_tensor_value_info("b", TensorProto.INT8, [K, N])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [M, N])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(model.SerializeToString(), sess_options=so,
                                providers=["CPUExecutionProvider"])
    out = np.empty((M, N), np.int32)
    binding = sess.io_binding()
    binding.bind_cpu_input("a", a)
    binding.bind_cpu_input("b", b)
    binding.bind_output("y", "cpu", 0, np.int32, (M, N), out.ctypes.data)
    sess.run_with_iobinding(binding)
    _check("ort int8", out, a.astype(np.int64) @ b.astype(np.int64), 0.0)

    def run() -> object:
        sess.run_with_iobinding(binding)
        return out, a, b  # keeps the bound arrays alive

    return run
