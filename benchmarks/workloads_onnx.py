"""Imported ONNX models: graphc (`gc.onnx.load` + `gc.compile`) vs ONNX Runtime on the same
`.onnx` file, with PyTorch eager on the module it was exported from.

The networks are `benchmarks.torch_nets` (ResNet-18 and MobileNetV2 at 1x3x224x224, a 2-layer
d=256 transformer encoder at batch 1, 128 tokens), exported once with torch's TorchScript
exporter (opset 17) into `$XDG_CACHE_HOME/graphc-bench/onnx/` together with torch's input and
output; every peer's setup checks its output against torch's (max error relative to the
largest |value| at most 1e-4) and raises otherwise. graphc imports with `trainable=False`
(weights as constants, as ONNX Runtime treats initializers); ONNX Runtime uses the CPU
execution provider, ORT_ENABLE_ALL, sequential execution and I/O bound to preallocated
arrays. The compile workloads time import + compile of ResNet-18 with an empty and a warm
graphc cache (ONNX Runtime: creating the session).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

Runner = Callable[[], object]
RTOL = 1e-4
NETS = {"resnet18": "ResNet-18 inference, 1x3x224x224",
        "mobilenet_v2": "MobileNetV2 inference, 1x3x224x224",
        "encoder": "transformer encoder (2 layers, d=256, 4 heads), batch 1, 128 tokens"}
# Multiply-adds per call (torchvision's published counts; the encoder's from its shapes:
# per layer 4 d^2 T for the projections, 2 T^2 d for attention, 8 d^2 T for the MLP).
MACS = {"resnet18": 1.814e9, "mobilenet_v2": 0.300e9,
        "encoder": 2 * (12 * 256**2 * 128 + 2 * 128**2 * 256)}


def _folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "graphc-bench" / "onnx"


def model_file(name: str) -> tuple[Path, np.ndarray, np.ndarray]:
    """(path of the model, input, torch's output), exported on first use."""
    folder = _folder()
    path, data = folder / f"{name}.onnx", folder / f"{name}.npz"
    if not (path.exists() and data.exists()):
        import torch

        from benchmarks.torch_nets import export

        model_bytes, module, x = export(name)
        with torch.no_grad():
            y = module(x).numpy()
        folder.mkdir(parents=True, exist_ok=True)
        for target, write in ((data, lambda f: np.savez(f, x=x.numpy(), y=y)),
                              (path, lambda f: f.write(model_bytes))):
            fd, tmp = tempfile.mkstemp(dir=folder)
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, target)
    with np.load(data) as z:
        return path, z["x"], z["y"]


def _check(peer: str, got: np.ndarray, want: np.ndarray) -> None:
    err = float(np.max(np.abs(np.asarray(got) - want))) / max(float(np.max(np.abs(want))),
                                                                1e-30)
    if not np.isfinite(err) or err > RTOL:
        raise AssertionError(f"{peer} output differs from torch's: max error {err:.2e} "
                             f"relative to max |expected| (tolerance {RTOL:g})")


def graphc_infer(name: str) -> Callable[[int], Runner]:
    def setup(threads: int) -> Runner:
        import graphc as gc

        path, x, y = model_file(name)
        g = gc.onnx.load(path, trainable=False)
        f = gc.compile(g, signature="main", options=gc.CompileOptions(threads=threads))
        _check("graphc", f(x)[0], y)
        return lambda: f(x)

    return setup


def torch_infer(name: str) -> Callable[[int], Runner]:
    def setup(threads: int) -> Runner:
        import torch

        from benchmarks.torch_nets import build

        _, x, y = model_file(name)
        module, _ = build(name)
        xt = torch.from_numpy(x)

        def run() -> object:
            with torch.no_grad():
                return module(xt)

        _check("torch", run().numpy(), y)
        return run

    return setup


def ort_infer(name: str) -> Callable[[int], Runner]:
    def setup(threads: int) -> Runner:
        from benchmarks.workloads_ort import _runner

        path, x, y = model_file(name)
        return _runner(path.read_bytes(), {"x": x}, y.shape, y, threads)

    return setup


def graphc_import_compile(cached: bool) -> Callable[[int], Runner]:
    """gc.onnx.load + gc.compile of ResNet-18, with an empty or a warm cache."""

    def setup(threads: int) -> Runner:
        import graphc as gc

        path, x, y = model_file("resnet18")
        cache = tempfile.mkdtemp(prefix="graphc-bench-cache-")
        options = gc.CompileOptions(cache_dir=cache, threads=threads)

        def run() -> object:
            if not cached:
                for f in Path(cache).glob("*.o"):
                    f.unlink()
            g = gc.onnx.load(path, trainable=False)
            return gc.compile(g, signature="main", options=options)

        _check("graphc", run()(x)[0], y)
        return run

    return setup


def ort_session(threads: int) -> Runner:
    """Creating an ONNX Runtime session of ResNet-18 (its graph optimizations included)."""
    import onnxruntime as ort

    path, _, _ = model_file("resnet18")
    model = path.read_bytes()

    def run() -> object:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])

    return run


# The ORT peers of these workloads (merged into workloads_ort.PEERS).
ORT_PEERS: dict[str, Callable[[int], Runner]] = {
    **{f"onnx_{name}": ort_infer(name) for name in NETS},
    "onnx_compile_cold": ort_session,
}
