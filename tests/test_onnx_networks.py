"""Full-size networks exported from PyTorch (`benchmarks/torch_nets.py`: ResNet-18 and
MobileNetV2 at 1x3x224x224, a 2-layer d=256 transformer encoder and its causal decoder-only
counterpart at batch 1, 128 tokens) through `gc.onnx.load`:

- compiled at 1 and 2 threads, they match torch within 1e-4;
- exported as a shared library and run by the C client, they give the JIT's bits;
- written back with `gc.onnx.save`, they pass the full checker and ONNX Runtime matches
  graphc within 1e-5;
- the gradient of an imported network with respect to its input matches torch's autograd;
- exported by torch's dynamo exporter instead (with onnxscript), they match torch too.

Skipped without torch or onnx (onnxruntime and a C compiler only where used).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import graphc as gc

torch = pytest.importorskip("torch", reason="the fixtures are PyTorch modules")
onnx = pytest.importorskip("onnx", reason="needs onnx: pip install 'graphc[onnx]'")

from benchmarks.torch_nets import NETS, build, export  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NAMES = sorted(NETS)


class Imported:
    """One network: its ONNX bytes, torch's output, the imported graph and executables."""

    def __init__(self, name: str, cache: Path) -> None:
        self.data, module, x = export(name)
        self.x = x.numpy()
        with torch.no_grad():
            self.want = module(x).numpy()
        self.graph = gc.onnx.load(self.data, trainable=False)
        self.cache = cache
        self._compiled: dict[int, gc.Executable] = {}

    def compiled(self, threads: int) -> gc.Executable:
        if threads not in self._compiled:
            self._compiled[threads] = gc.compile(
                self.graph, signature="main",
                options=gc.CompileOptions(threads=threads, cache_dir=str(self.cache)))
        return self._compiled[threads]


@pytest.fixture(scope="module")
def nets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Imported]:
    cache = tmp_path_factory.mktemp("nets-cache")
    return {name: Imported(name, cache) for name in NAMES}


def _close(got: np.ndarray, want: np.ndarray, tol: float) -> None:
    """Within `tol` of the largest |value| (the logits of a 1000-way classifier are near 0
    for most classes, so a purely relative bound would ask for more than float32 gives)."""
    scale = float(np.max(np.abs(want)))
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", NAMES)
def test_compiled_network_matches_torch(nets: dict[str, Imported], name: str,
                                        threads: int) -> None:
    net = nets[name]
    (got,) = net.compiled(threads)(net.x)
    assert got.shape == net.want.shape
    _close(got, net.want, 1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_network_saved_as_onnx_passes_the_checker_and_runs_in_onnxruntime(
        nets: dict[str, Imported], name: str, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    net = nets[name]
    path = tmp_path / f"{name}.onnx"
    gc.onnx.save(net.graph, path)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    (mine,) = net.compiled(1)(net.x)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (theirs,) = sess.run(None, {sess.get_inputs()[0].name: net.x})
    _close(theirs, mine, 1e-5)
    (again,) = gc.reference(gc.onnx.load(path), signature="main")(net.x)
    _close(again, mine, 1e-5)


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler `cc`")
@pytest.mark.parametrize("name", NAMES)
def test_exported_library_runs_the_network_in_c(nets: dict[str, Imported], name: str,
                                                tmp_path: Path) -> None:
    net = nets[name]
    sig = net.graph.signatures["main"]
    assert [n.name for n in (*sig.inputs, *sig.outputs)] == ["x", "y"]  # the ONNX names
    lib = gc.export(net.graph, tmp_path / "libnet.so", signature="main")
    assert "float *out_y" in (tmp_path / "net.h").read_text()
    exe = tmp_path / "client"
    cmd = ["cc", "-O2", "-std=c99", "-DMODEL=net", "-DMODEL_UP=NET", f"-I{tmp_path}",
           "-o", str(exe), str(ROOT / "examples" / "c_client" / "main.c"), f"-L{tmp_path}",
           "-lnet", f"-Wl,-rpath,{tmp_path}"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    np.save(tmp_path / "x.npy", net.x)
    done = subprocess.run([str(exe), str(tmp_path / "x.npy")], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    rows = [line.split("\t")[1] for line in done.stdout.splitlines()]
    got = np.array([[np.float32(v) for v in row.split()] for row in rows], np.float32)
    assert lib.library.exists()
    (jit,) = net.compiled(1)(net.x)
    np.testing.assert_array_equal(got, jit.reshape(got.shape))  # one plan, the same code
    _close(got, net.want.reshape(got.shape), 1e-4)


def test_input_gradient_of_an_imported_network_matches_torch() -> None:
    """d <y, r> / d x through a small ResNet-18 (32x32 input, batch 2): convolutions,
    batch norm folded by the exporter, residual adds, pooling, the classifier."""
    model, x = build("resnet18", (2, 3, 32, 32), seed=3)
    buf_model, _, _ = export("resnet18", (2, 3, 32, 32), seed=3)
    g = gc.onnx.load(buf_model)
    sig = g.signatures["main"]
    (xin,), (y,) = sig.inputs, sig.outputs
    r = np.random.default_rng(0).standard_normal(y.shape).astype(np.float32)
    with g:
        loss = gc.sum(y * gc.constant(r))
        gx = gc.grad(loss, xin)
    f = gc.compile(g, [xin], [loss, gx], options=gc.CompileOptions(threads=1))
    got_loss, got_gx = f(x.numpy())
    xt = x.clone().requires_grad_(True)
    want_loss = (model(xt) * torch.from_numpy(r)).sum()
    want_loss.backward()
    assert float(got_loss) == pytest.approx(want_loss.item(), rel=1e-4, abs=1e-4)
    _close(got_gx, xt.grad.numpy(), 1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_dynamo_exported_network_matches_torch(name: str, tmp_path: Path) -> None:
    """The same networks through torch's newer exporter (torch.export + onnxscript), whose
    graphs differ (decomposed ops, other opsets and names)."""
    pytest.importorskip("onnxscript", reason="torch's dynamo exporter needs onnxscript")
    data, module, x = export(name, dynamo=True)
    with torch.no_grad():
        want = module(x).numpy()
    g = gc.onnx.load(data, trainable=False)
    f = gc.compile(g, signature="main",
                   options=gc.CompileOptions(threads=1, cache_dir=str(tmp_path)))
    (got,) = f(x.numpy())
    _close(got, want, 1e-4)
