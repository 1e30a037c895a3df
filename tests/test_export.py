"""Exported libraries (gc.export, gc.runtime.load, the C ABI, `graphc compile/info/run`).

Numerics: an exported library runs the machine code `gc.compile` runs (same graph, same
passes, same LLVM module up to the entry point's name, emitted by the same target machine
for this CPU), so every comparison with the JIT below is *bitwise* (np.array_equal), from
Python through ctypes and from C programs alike. Comparisons with the numpy reference are
within float32 rounding.

Libraries are exported once per module (fixtures) to keep the file fast; each export is a
fresh path, because the dynamic loader identifies libraries by path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

import graphc as gc
from graphc.cli.exported import main_export
from graphc.codegen.target import host_target
from graphc.io.textir import format_graph
from graphc.pipeline import DEFAULT_OPTIONS
from graphc.runtime.library import ABI_VERSION, read_metadata

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "examples" / "c_client" / "main.c"
CC = shutil.which("cc")
pytestmark = pytest.mark.skipif(CC is None, reason="needs a C compiler `cc`")


@dataclass
class Exported:
    graph: gc.Graph
    inputs: list[gc.Node]
    outputs: gc.Node
    lib: gc.ExportedLibrary
    jit: gc.Executable

    @property
    def dir(self) -> Path:
        return self.lib.library.parent


def _mlp_graph(batch: int = 8) -> tuple[gc.Graph, gc.Node, gc.Node]:
    with gc.Graph("mlp") as g:
        x = gc.placeholder((batch, 64), gc.float32, name="x")
        w1 = gc.variable(gc.init.he_normal((64, 32), seed=0), name="w1")
        b1 = gc.variable(np.linspace(-0.1, 0.1, 32, dtype=np.float32), name="b1")
        w2 = gc.variable(gc.init.he_normal((32, 10), seed=1), name="w2")
        b2 = gc.variable(np.linspace(0.2, -0.2, 10, dtype=np.float32), name="b2")
        logits = gc.add(gc.tanh(x @ w1 + b1) @ w2, b2, name="logits")
    return g, x, logits


def _cnn_graph(batch: int = 4) -> tuple[gc.Graph, gc.Node, gc.Node]:
    with gc.Graph("cnn") as g:
        x = gc.placeholder((batch, 1, 8, 8), gc.float32, name="x")
        w1 = gc.variable(gc.init.he_normal((6, 1, 3, 3), seed=2), name="w1")
        b1 = gc.variable(np.linspace(-0.1, 0.1, 6, dtype=np.float32), name="b1")
        w2 = gc.variable(gc.init.he_normal((6 * 4 * 4, 10), seed=3), name="w2")
        h = gc.max_pool2d(gc.relu(gc.conv2d(x, w1, padding=1, bias=b1)), 2)
        logits = gc.matmul(gc.flatten(h), w2, name="logits")
    return g, x, logits


def _export(tmp: Path, build: Callable[[], tuple[gc.Graph, gc.Node, gc.Node]], name: str,
            **kwargs: object) -> Exported:
    g, x, out = build()
    tmp.mkdir(parents=True, exist_ok=True)
    lib = gc.export(g, tmp / f"lib{name}.so", [x], out, **kwargs)
    return Exported(g, [x], out, lib, gc.compile(g, [x], out))


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    return _export(tmp_path_factory.mktemp("mlp"), _mlp_graph, "mlp")


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    return _export(tmp_path_factory.mktemp("cnn"), _cnn_graph, "cnn")


def _images(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _cc(out: Path, sources: list[Path], libdir: Path, libs: list[str],
        defines: tuple[str, ...] = ()) -> Path:
    cmd = [str(CC), "-O2", "-std=c99", "-Wall", "-Wextra", "-Werror", *defines,
           f"-I{libdir}", "-o", str(out), *map(str, sources), f"-L{libdir}",
           *[f"-l{n}" for n in libs], f"-Wl,-rpath,{libdir}"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return out


def _run_client(ex: Exported, x: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Build examples/c_client/main.c against the library, run it on `x` (as .npy)."""
    name = ex.lib.name
    exe = ex.dir / f"{name}_client"
    if not exe.exists():
        _cc(exe, [CLIENT], ex.dir, [name], (f"-DMODEL={name}", f"-DMODEL_UP={name.upper()}"))
    npy = ex.dir / "input.npy"
    np.save(npy, x)
    done = subprocess.run([str(exe), str(npy)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    rows = [line.split("\t") for line in done.stdout.splitlines()]
    values = np.array([[np.float32(v) for v in vals.split()] for _, vals in rows], np.float32)
    return values, [int(k) for k, _ in rows]


# --- the C client --------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_c_client_output_is_bitwise_the_jit_and_close_to_the_reference(
        which: str, request: pytest.FixtureRequest) -> None:
    ex: Exported = request.getfixturevalue(which)
    x = _images(ex.inputs[0].shape, seed=5)
    values, argmax = _run_client(ex, x)
    jit = ex.jit(x)
    out_rows = jit.reshape(-1, jit.shape[-1])
    assert np.array_equal(values, out_rows), "the C client must reproduce the JIT bit for bit"
    assert argmax == list(np.argmax(out_rows, axis=1))
    ref = gc.reference(ex.graph, ex.inputs, ex.outputs)(x)
    np.testing.assert_allclose(values, ref.reshape(values.shape), rtol=1e-5, atol=1e-5)


def test_c_client_rejects_input_of_the_wrong_dtype(mlp: Exported) -> None:
    _run_client(mlp, _images(mlp.inputs[0].shape, 0))  # builds the client
    bad = mlp.dir / "bad.npy"
    np.save(bad, np.zeros(mlp.inputs[0].shape, np.int32))  # same byte size, wrong dtype
    done = subprocess.run([str(mlp.dir / "mlp_client"), str(bad)], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 1 and "<f4" in done.stderr


# --- dependencies and symbols --------------------------------------------------------------

def test_library_needs_only_libc_libm_and_exports_only_its_abi(mlp: Exported,
                                                               cnn: Exported) -> None:
    allowed = re.compile(r"^(libc\.so\.\d+|libm\.so\.\d+|libpthread\.so\.\d+|ld-linux.*)$")
    for ex in (mlp, cnn):
        path = str(ex.lib.library)
        if shutil.which("readelf"):
            dyn = subprocess.run(["readelf", "-d", path], capture_output=True, text=True,
                                 check=True).stdout
            needed = re.findall(r"\(NEEDED\).*\[(.+?)\]", dyn)
            assert needed and all(allowed.match(n) for n in needed), needed
            assert "SYMBOLIC" in dyn  # calls between its own functions never interposed
        if shutil.which("ldd"):
            ldd = subprocess.run(["ldd", path], capture_output=True, text=True,
                                 check=True).stdout
            assert "python" not in ldd and "LLVM" not in ldd and "not found" not in ldd, ldd
        if shutil.which("nm"):
            nm = subprocess.run(["nm", "-D", "--defined-only", path], capture_output=True,
                                text=True, check=True).stdout
            exported = {line.split()[-1] for line in nm.splitlines() if line.strip()}
            assert exported == set(ex.lib.metadata["entry_points"].values())


# --- runtime.load ---------------------------------------------------------------------------

def test_loaded_library_is_called_like_the_executable(mlp: Exported) -> None:
    lib = gc.runtime.load(mlp.lib.library)
    x = _images((8, 64), seed=1)
    assert lib.input_names == ["x"] and lib.output_names == ["logits"]
    assert np.array_equal(lib(x), mlp.jit(x))  # single output node -> one array
    assert np.array_equal(lib(x=x), mlp.jit(x))
    cases: list[tuple[tuple, dict, str]] = [
        ((x[:4],), {}, r"input 'x' expected shape \(8, 64\)"),
        ((x.astype(np.float64),), {}, r"expected dtype float32"),
        ((), {}, r"missing input\(s\): x"),
        ((x, x), {}, r"takes 1 input"),
        ((), {"y": x}, r"no input named 'y'"),
    ]
    for args, kwargs, pattern in cases:
        for fn in (lib, mlp.jit):  # the same checks as the JIT's
            with pytest.raises(gc.ArgumentError, match=pattern):
                fn(*args, **kwargs)
    x_nc = np.asfortranarray(x)
    assert np.array_equal(lib(x_nc), mlp.jit(x))


def test_loaded_library_metadata_and_read_only_variables(mlp: Exported) -> None:
    meta = read_metadata(mlp.lib.library)
    assert meta == mlp.lib.metadata
    assert meta["abi_version"] == ABI_VERSION and meta["graphc_version"] == gc.__version__
    assert meta["inputs"] == [{"name": "x", "c_name": "x", "dtype": "float32",
                               "shape": [8, 64], "bytes": 8 * 64 * 4}]
    assert meta["target"]["features"] == host_target().features
    assert meta["graph_sha256"] == hashlib.sha256(format_graph(mlp.graph).encode()).hexdigest()
    lib = gc.runtime.load(mlp.lib.library)
    native = ctypes.CDLL(str(mlp.lib.library)).mlp_metadata
    native.restype = ctypes.c_char_p
    assert json.loads(native()) == meta
    assert sorted(lib.variables) == ["b1", "b2", "w1", "w2"]
    assert np.array_equal(lib.variables["w1"], mlp.graph.variables["w1"])
    with pytest.raises(gc.GraphcError, match="read-only"):
        lib.variables["w1"] = np.zeros((64, 32), np.float32)
    with pytest.raises(gc.GraphcError, match="no variable 'nope'"):
        lib.variables["nope"]
    header = mlp.lib.header.read_text()
    for macro in ("#define MLP_CONTEXT_BYTES", "#define MLP_INPUT0_BYTES 2048u",
                  "#define MLP_INPUT_X_BYTES", "#define MLP_OUTPUT_LOGITS_ELEMENTS",
                  "MLP_ERR_SIZE = ",
                  "int mlp_run(mlp_context *ctx, const float *in_x, float *out_logits);"):
        assert macro in header


def test_header_compiles_as_strict_c_and_cpp(mlp: Exported, tmp_path: Path) -> None:
    src = tmp_path / "use.c"
    # The compiled-in facts (what gc.runtime.load checks the metadata against) agree with
    # the header's macros.
    src.write_text(r"""#include <string.h>
#include "mlp.h"
int main(void) {
    const mlp_port *x = mlp_port_info(MLP_PORT_INPUT, 0);
    const mlp_port *w = mlp_port_info(MLP_PORT_VARIABLE, MLP_VARIABLE_W1);
    if (mlp_abi_version() != MLP_ABI_VERSION) return 1;
    if (mlp_num_ports(MLP_PORT_INPUT) != MLP_NUM_INPUTS || mlp_num_ports(7) != -1) return 2;
    if (x == NULL || strcmp(x->name, MLP_INPUT0_NAME) != 0 || x->bytes != MLP_INPUT0_BYTES ||
        x->dtype != MLP_DTYPE_FLOAT32 || x->rank != 2 || x->shape[1] != 64) return 3;
    if (w == NULL || w->bytes != MLP_VARIABLE_W1_BYTES || strcmp(w->name, "w1") != 0) return 4;
    if (mlp_port_info(MLP_PORT_OUTPUT, MLP_NUM_OUTPUTS) != NULL) return 5;
    if (mlp_port_info(-1, 0) != NULL || strlen(mlp_metadata_sha256()) != 64) return 6;
    return mlp_arena_bytes() >= MLP_CONTEXT_BYTES;
}
""")
    _cc(tmp_path / "use", [src], mlp.dir, ["mlp"], ("-pedantic",))
    assert subprocess.run([str(tmp_path / "use")], check=False).returncode == 0
    cxx = shutil.which("c++")
    if cxx:
        done = subprocess.run([cxx, "-fsyntax-only", "-Wall", "-Werror", f"-I{mlp.dir}",
                               "-x", "c++", str(src)], capture_output=True, text=True,
                              check=False)
        assert done.returncode == 0, done.stderr


def test_two_libraries_in_one_process_and_contexts_in_threads(mlp: Exported,
                                                               cnn: Exported) -> None:
    a, b = gc.runtime.load(mlp.lib.library), gc.runtime.load(cnn.lib.library)
    a2 = gc.runtime.load(mlp.lib.library)  # a second context of the same library
    xs = [_images((8, 64), seed=s) for s in range(4)]
    zs = [_images((4, 1, 8, 8), seed=s) for s in range(4)]
    for x, z in zip(xs, zs):  # interleaved calls
        assert np.array_equal(a(x), mlp.jit(x))
        assert np.array_equal(b(z), cnn.jit(z))
    results: dict[int, bool] = {}

    def work(i: int, lib: gc.runtime.Library) -> None:
        results[i] = all(np.array_equal(lib(x), mlp.jit(x)) for x in xs * 10)

    threads = [threading.Thread(target=work, args=(i, lib)) for i, lib in enumerate((a, a2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {0: True, 1: True}


def test_one_c_program_links_two_libraries(mlp: Exported, cnn: Exported,
                                           tmp_path: Path) -> None:
    # Both libraries in the global symbol namespace: their generated entry points are local,
    # so neither resolves to the other's code.
    for lib in (mlp.lib.library, cnn.lib.library):
        shutil.copy(lib, tmp_path)
        shutil.copy(lib.parent / f"{lib.name[3:-3]}.h", tmp_path)
    src = tmp_path / "both.c"
    src.write_text(r"""
#include <stdio.h>
#include "mlp.h"
#include "cnn.h"
int main(void) {
    static float x[MLP_INPUT0_ELEMENTS], y[MLP_OUTPUT0_ELEMENTS];
    static float u[CNN_INPUT0_ELEMENTS], v[CNN_OUTPUT0_ELEMENTS];
    for (unsigned i = 0; i < MLP_INPUT0_ELEMENTS; i++) x[i] = (float)(i % 7) - 3.0f;
    for (unsigned i = 0; i < CNN_INPUT0_ELEMENTS; i++) u[i] = (float)(i % 5) - 2.0f;
    mlp_context *a; cnn_context *b;
    if (mlp_create(&a) || cnn_create(&b)) return 1;
    if (mlp_run(a, x, y) || cnn_run(b, u, v)) return 2;
    if (mlp_run((mlp_context *)(void *)b, x, y) != MLP_ERR_BAD_CONTEXT) return 3;
    printf("%.9g %.9g\n", (double)y[0], (double)v[0]);
    mlp_destroy(a); cnn_destroy(b);
    return 0;
}
""")
    exe = _cc(tmp_path / "both", [src], tmp_path, ["mlp", "cnn"])
    done = subprocess.run([str(exe)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, (done.returncode, done.stderr)
    y0, v0 = map(np.float32, done.stdout.split())
    x = (np.arange(8 * 64) % 7 - 3).astype(np.float32).reshape(8, 64)
    u = (np.arange(4 * 64) % 5 - 2).astype(np.float32).reshape(4, 1, 8, 8)
    assert y0 == mlp.jit(x).flat[0] and v0 == cnn.jit(u).flat[0]


def test_threaded_export_has_its_own_pool_and_same_results(tmp_path: Path) -> None:
    with gc.Graph("wide") as g:
        x = gc.placeholder((256, 256), gc.float32, name="x")  # big enough to be split
        out = gc.tanh(x * 2.0 + 1.0, name="out")
    options = replace(DEFAULT_OPTIONS, threads=4)
    ex = gc.export(g, tmp_path / "libwide.so", [x], out, options=options)
    assert ex.metadata["threads"] == 4 and ex.metadata["worker_pool"]
    dyn = subprocess.run(["readelf", "-d", str(ex.library)], capture_output=True, text=True,
                         check=False).stdout if shutil.which("readelf") else ""
    assert all(re.match(r"lib(c|m|pthread)\.so", n) or n.startswith("ld-linux")
               for n in re.findall(r"\(NEEDED\).*\[(.+?)\]", dyn))
    single = gc.export(g, tmp_path / "libwide1.so", [x], out)  # default: no pool
    assert single.metadata["threads"] == 1 and not single.metadata["worker_pool"]
    xs = [_images((256, 256), seed=s) for s in range(3)]
    want = [gc.compile(g, [x], out)(v) for v in xs]
    libs = [gc.runtime.load(ex.library) for _ in range(3)] + [gc.runtime.load(single.library)]
    ok: list[bool] = []

    def work(lib: gc.runtime.Library) -> None:  # concurrent runs share (or skip) the pool
        ok.append(all(np.array_equal(lib(v), w) for _ in range(20) for v, w in zip(xs, want)))

    threads = [threading.Thread(target=work, args=(lib,)) for lib in libs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ok == [True] * 4


# --- training export ---------------------------------------------------------------------

TRAIN_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include "mlptrain.h"
/* No malloc: the context lives in static memory (one extra line to test misalignment). */
static unsigned char memory[MLPTRAIN_CONTEXT_BYTES + 64] __attribute__((aligned(64)));

int main(int argc, char **argv) {
    if (argc != 5) return 9;
    mlptrain_context *ctx;
    if (mlptrain_init(memory + 8, MLPTRAIN_CONTEXT_BYTES, &ctx) != MLPTRAIN_ERR_MISALIGNED)
        return 10;
    if (mlptrain_init(memory, MLPTRAIN_CONTEXT_BYTES - 1, &ctx) != MLPTRAIN_ERR_SIZE) return 11;
    if (mlptrain_init(memory, MLPTRAIN_CONTEXT_BYTES, &ctx) != MLPTRAIN_OK) return 12;
    FILE *fx = fopen(argv[1], "rb"), *fy = fopen(argv[2], "rb");
    if (fx == NULL || fy == NULL) return 13;
    static float x[MLPTRAIN_INPUT_X_ELEMENTS];
    static int32_t y[MLPTRAIN_INPUT_Y_ELEMENTS];
    float loss;
    for (int step = 0; step < atoi(argv[3]); step++) {
        if (fread(x, 1, sizeof x, fx) != sizeof x || fread(y, 1, sizeof y, fy) != sizeof y)
            return 14;
        int rc = mlptrain_run(ctx, x, y, &loss);  /* one training step */
        if (rc != MLPTRAIN_OK) { fprintf(stderr, "%s\n", mlptrain_error_string(rc)); return 15; }
        printf("%.9g\n", (double)loss);
    }
    FILE *out = fopen(argv[4], "wb");
    static unsigned char buf[1 << 20];
    for (int i = 0; i < mlptrain_num_variables(); i++) {
        size_t n = mlptrain_variable_bytes(i);
        if (mlptrain_get_variable(ctx, i, buf, n + 1) != MLPTRAIN_ERR_SIZE) return 16;
        if (n > sizeof buf || mlptrain_get_variable(ctx, i, buf, n) != MLPTRAIN_OK) return 17;
        fwrite(buf, 1, n, out);
    }
    fclose(out);
    if (mlptrain_variable_index("w1") != MLPTRAIN_VARIABLE_W1) return 18;
    if (mlptrain_get_variable(ctx, mlptrain_num_variables(), buf, 4) != MLPTRAIN_ERR_BAD_INDEX)
        return 19;
    mlptrain_destroy(ctx);  /* not malloc'ed: only invalidates it */
    if (mlptrain_run(ctx, x, y, &loss) != MLPTRAIN_ERR_BAD_CONTEXT) return 20;
    return 0;
}
"""

STEPS = 20


def _train_graph() -> tuple[gc.Graph, list[gc.Node], gc.Node, dict]:
    with gc.Graph("mlp_train") as g:
        x = gc.placeholder((16, 64), gc.float32, name="x")
        y = gc.placeholder((16,), gc.int32, name="y")
        w1 = gc.variable(gc.init.he_normal((64, 32), seed=4), name="w1")
        b1 = gc.variable(np.zeros(32, np.float32), name="b1")
        w2 = gc.variable(gc.init.he_normal((32, 10), seed=5), name="w2")
        b2 = gc.variable(np.zeros(10, np.float32), name="b2")
        logits = gc.relu(x @ w1 + b1) @ w2 + b2
        loss = gc.mean(gc.softmax_cross_entropy(logits, y), name="loss")
        updates = gc.optim.SGD(lr=0.05, momentum=0.9).minimize(loss)
    return g, [x, y], loss, updates


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Export the training step, then train 20 steps three ways: C, runtime.load, compile."""
    d = tmp_path_factory.mktemp("train")
    g, inputs, loss, updates = _train_graph()
    initial = {n: g.variables[n].copy() for n in g.variables}
    lib = gc.export(g, d / "libmlptrain.so", inputs, [loss], updates=updates)
    assert np.array_equal(g.variables["w1"], initial["w1"])  # exporting trains nothing
    data = gc.datasets.digits()
    rng = np.random.default_rng(0)
    batches = [rng.choice(len(data), 16, replace=False) for _ in range(STEPS)]
    xs = np.stack([data.images[b] for b in batches]).astype(np.float32)
    ys = np.stack([data.labels[b] for b in batches]).astype(np.int32)
    xs.tofile(d / "x.bin")
    ys.tofile(d / "y.bin")

    src = d / "train.c"
    src.write_text(TRAIN_C)
    exe = _cc(d / "train", [src], d, ["mlptrain"])
    done = subprocess.run([str(exe), str(d / "x.bin"), str(d / "y.bin"), str(STEPS),
                           str(d / "params.bin")], capture_output=True, text=True, check=False)
    assert done.returncode == 0, (done.returncode, done.stderr)
    c_losses = np.array([np.float32(v) for v in done.stdout.split()], np.float32)
    raw = (d / "params.bin").read_bytes()
    c_params, at = {}, 0
    for v in lib.metadata["variables"]:
        c_params[v["name"]] = np.frombuffer(raw[at:at + v["bytes"]], v["dtype"]).reshape(
            v["shape"])
        at += v["bytes"]
    assert at == len(raw)

    loaded = gc.runtime.load(lib.library)
    lib_losses = np.array([loaded(xs[i], ys[i])[0] for i in range(STEPS)], np.float32)
    lib_params = {n: loaded.variables[n] for n in loaded.variables}

    step = gc.compile(g, inputs, [loss], updates=updates)
    jit_losses = np.array([step(xs[i], ys[i])[0] for i in range(STEPS)], np.float32)
    return {"lib": lib, "loaded": loaded, "initial": initial, "graph": g, "xs": xs, "ys": ys,
            "c": (c_losses, c_params), "load": (lib_losses, lib_params),
            "jit": (jit_losses, {n: g.variables[n].copy() for n in g.variables})}


def test_trained_in_c_matches_compile_bitwise(trained: dict) -> None:
    jit_losses, jit_params = trained["jit"]
    c_losses, c_params = trained["c"]
    meta = trained["lib"].metadata
    updated = {v["name"] for v in meta["variables"] if v["updated"]}
    # parameters, momentum buffers, the optimizer's step counter
    assert meta["trains"] and {"w1", "b1", "w2", "b2", "w1/momentum"} <= updated
    # Every variable (updated or not, e.g. the learning rate), 20 steps later.
    assert set(c_params) == set(jit_params)
    for name, value in jit_params.items():
        assert np.array_equal(c_params[name], value), name
        if name in updated:
            assert not np.array_equal(value, trained["initial"][name]), f"{name} did not train"
    assert np.array_equal(c_losses, jit_losses)
    assert jit_losses[-1] < jit_losses[0]


def test_training_through_runtime_load_matches_compile(trained: dict) -> None:
    jit_losses, jit_params = trained["jit"]
    lib_losses, lib_params = trained["load"]
    assert np.array_equal(lib_losses, jit_losses)
    for name, value in jit_params.items():
        assert np.array_equal(lib_params[name], value), name
    # Variables are writable in a training library: reset and retrain gives the same run.
    loaded = trained["loaded"]
    for name, value in trained["initial"].items():
        loaded.variables[name] = value
    assert np.array_equal(loaded.variables["w2"], trained["initial"]["w2"])
    first = loaded(trained["xs"][0], trained["ys"][0])[0]
    assert first == jit_losses[0]
    with pytest.raises(gc.ArgumentError, match="expected shape"):
        loaded.variables["w1"] = np.zeros((2, 2), np.float32)


# --- external weights ------------------------------------------------------------------------

def test_external_weights(mlp: Exported, tmp_path: Path) -> None:
    d = tmp_path / "ext"
    d.mkdir()
    ext = gc.export(mlp.graph, d / "libmlpext.so", mlp.inputs, mlp.outputs,
                    weights="external")
    assert ext.weights == d / "mlpext.bin" and ext.weights.is_file()
    blob = ext.metadata["weights"]["bytes"]
    assert ext.weights.stat().st_size == 64 + blob
    w1 = mlp.graph.variables["w1"].tobytes()  # the weights are in the file, not the library
    assert w1 in mlp.lib.library.read_bytes() and w1 not in ext.library.read_bytes()
    assert w1 in ext.weights.read_bytes()
    x = _images((8, 64), seed=3)
    lib = gc.runtime.load(ext.library)  # finds mlpext.bin beside the library (dladdr)
    assert np.array_equal(lib(x), mlp.jit(x))
    assert ext.metadata["variables"][0]["writable"]

    moved = tmp_path / "weights_copy.bin"
    shutil.copy(ext.weights, moved)
    lib2 = gc.runtime.load(ext.library, weights=moved)
    lib2.variables["b2"] = np.ones(10, np.float32)  # external weights live in the context
    assert np.array_equal(lib2.variables["b2"], np.ones(10, np.float32))
    assert np.array_equal(lib(x), mlp.jit(x))  # another context: unchanged

    data = bytearray(moved.read_bytes())
    data[64 + 100] ^= 0x40
    moved.write_bytes(bytes(data))
    with pytest.raises(gc.GraphcError, match="not this library's"):
        gc.runtime.load(ext.library, weights=moved)
    moved.write_bytes(bytes(data[:1000]))
    with pytest.raises(gc.GraphcError, match="not this library's"):
        gc.runtime.load(ext.library, weights=moved)
    moved.write_bytes(ext.weights.read_bytes() + bytes(64))  # longer than its header says
    with pytest.raises(gc.GraphcError, match="not this library's"):
        gc.runtime.load(ext.library, weights=moved)
    with pytest.raises(gc.GraphcError, match="cannot open or read the weights file"):
        gc.runtime.load(ext.library, weights=tmp_path / "missing.bin")
    with pytest.raises(gc.ArgumentError, match="embeds its weights"):
        gc.runtime.load(mlp.lib.library, weights=moved)


# --- refusing what is not a loadable graphc library -----------------------------------------

def _libm_path() -> Path:
    name = ctypes.util.find_library("m")
    assert name is not None
    ctypes.CDLL(name)
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split()[-1]
        if "/" in path and re.match(r"libm[-.]", Path(path).name):  # not libmlp.so
            return Path(path)
    pytest.skip("cannot locate libm's file")


def test_bad_files_give_graphc_errors(mlp: Exported, tmp_path: Path) -> None:
    good = mlp.lib.library.read_bytes()
    meta = mlp.lib.metadata
    cases: dict[str, tuple[bytes | Path, str]] = {
        "truncated_half": (good[:len(good) // 2], "truncated or corrupt"),
        "truncated_header": (good[:40], "truncated or corrupt"),
        "three_bytes": (good[:3], "not an ELF file"),
        "empty": (b"", "not an ELF file"),
        "text": (b"this is not a library\n" * 10, "not an ELF file"),
        "libm": (_libm_path(), "no .graphc_meta section"),
    }
    abi = f'"abi_version": {ABI_VERSION},'.encode()
    assert good.count(abi) == 1
    cases["abi"] = (good.replace(abi, b'"abi_version": 7,'), "ABI version 7 is not supported")
    feature = next(f[1:] for f in meta["target"]["features"].split(",") if f.startswith("+"))
    old = f'"features": "{meta["target"]["features"]}"'.encode()
    assert good.count(old) == 1
    fake = "q" * len(feature)
    cases["features"] = (good.replace(old, old.replace(f"+{feature},".encode(),
                                                       f"+{fake},".encode(), 1)),
                         f"lacks: {fake}")
    for label, (content, message) in cases.items():
        if isinstance(content, Path):
            path = content
        else:
            path = tmp_path / f"lib{label}.so"
            path.write_bytes(content)
        with pytest.raises(gc.GraphcError, match=re.escape(message)):
            gc.runtime.load(path)
    assert main_export(["info", str(_libm_path())]) == 1
    # The process is fine and the real library still works.
    x = _images((8, 64), seed=9)
    assert np.array_equal(gc.runtime.load(mlp.lib.library)(x), mlp.jit(x))


def test_export_errors(mlp: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    g, inputs, out = mlp.graph, mlp.inputs, mlp.outputs
    with pytest.raises(gc.GraphcError, match="not a C identifier"):
        gc.export(g, tmp_path / "lib1bad.so", inputs, out)
    with pytest.raises(gc.GraphcError, match="does not exist"):
        gc.export(g, tmp_path / "nope" / "libx.so", inputs, out)
    with pytest.raises(gc.ArgumentError, match="weights must be one of"):
        gc.export(g, tmp_path / "libx.so", inputs, out, weights="nowhere")
    monkeypatch.setenv("PATH", str(tmp_path))  # no C compiler on PATH
    with pytest.raises(gc.GraphcError) as err:
        gc.export(g, tmp_path / "libx.so", inputs, out)
    assert "`cc`" in str(err.value) and "apt-get install gcc" in str(err.value)
    assert not (tmp_path / "libx.so").exists()


def test_odd_names_scalar_and_integer_ports(tmp_path: Path) -> None:
    with gc.Graph("odd-graph") as g:
        a = gc.placeholder((3,), gc.float32, name="in.a")
        k = gc.placeholder((3,), gc.int32, name="in/A")  # same C name as in.a, upper-cased
        total = gc.sum(a * 2.0, name="out.sum")  # rank 0
        twice = gc.mul(k, 2, name="k2")
    ex = gc.export(g, tmp_path, [a, k], [total, twice, twice], name="odd")
    assert ex.library == tmp_path / "libodd.so"
    header = ex.header.read_text()
    assert "#define ODD_INPUT_IN_A_INDEX 0" in header
    assert "#define ODD_INPUT_IN_A_2_INDEX 1" in header
    assert "#define ODD_OUTPUT_K2_2_INDEX 2" in header and "ODD_OUTPUT0_SHAPE" not in header
    assert "int odd_run(odd_context *ctx, const float *in_in_a, const int32_t *in_in_A_2, " \
        "float *out_out_sum, int32_t *out_k2, int32_t *out_k2_2);" in header
    src = tmp_path / "use.c"
    src.write_text('#include "odd.h"\nint main(void) { float s; int32_t r[3], q[3];\n'
                   '  const float a[3] = {1, 2, 3}; const int32_t k[3] = {4, 5, 6};\n'
                   '  odd_context *c; if (odd_create(&c)) return 1;\n'
                   '  if (odd_run(c, a, k, &s, r, q)) return 2;\n'
                   '  return !(s == 12.0f && r[2] == 12 && q[0] == 8);\n}\n')
    exe = _cc(tmp_path / "use", [src], tmp_path, ["odd"], ("-pedantic",))
    assert subprocess.run([str(exe)], check=False).returncode == 0
    lib = gc.runtime.load(ex.library)
    av, kv = np.array([1, 2, 3], np.float32), np.array([4, 5, 6], np.int32)
    got, want = lib(av, kv), gc.compile(g, [a, k], [total, twice, twice])(av, kv)
    assert len(got) == 3 and all(np.array_equal(p, q) and p.dtype == q.dtype
                                 for p, q in zip(got, want))
    assert got[0].shape == () and lib(**{"in.a": av, "in/A": kv.astype(np.int64)})[0] == 12


# --- the CLI ---------------------------------------------------------------------------------

MODEL_PY = """
import numpy as np
import graphc as gc

def build():
    with gc.Graph("tiny") as g:
        x = gc.placeholder((2, 3), gc.float32, name="x")
        y = gc.placeholder((2,), gc.int32, name="y")
        w = gc.variable(np.arange(12, dtype=np.float32).reshape(3, 4) / 10, name="w")
        out = gc.matmul(x, w, name="out")
        loss = gc.mean(gc.softmax_cross_entropy(out, y), name="loss")
        updates = gc.optim.SGD(lr=0.1).minimize(loss)
    g.add_signature("predict", [x], [out])
    g.add_signature("train", [x, y], [loss], updates)
    return g
"""


def test_cli_compile_info_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "model.py"
    model.write_text(MODEL_PY)
    spec = f"{model}:build"
    lib = tmp_path / "libtiny.so"
    assert main_export(["compile", spec, "-o", str(lib)]) == 0  # the inference signature
    assert f"wrote {lib}" in capsys.readouterr().err
    assert main_export(["info", str(lib)]) == 0
    text = capsys.readouterr().out
    assert "library tiny" in text and "x: float32[2, 3]" in text and \
        "runs on this machine: yes" in text
    assert main_export(["info", str(lib), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["signature"] == "predict"
    assert main_export(["info", spec]) == 0
    assert "signature train: (x, y) -> (loss) updates optim/step, w" in capsys.readouterr().out

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.save(tmp_path / "x.npy", x)
    for target, out in ((str(lib), "a.npz"), (spec, "b.npz")):
        assert main_export(["run", target, "--input", f"x={tmp_path / 'x.npy'}",
                            "--output", str(tmp_path / out)]) == 0
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert np.array_equal(a["out"], b["out"])
    np.testing.assert_allclose(a["out"], x @ (np.arange(12).reshape(3, 4) / 10), rtol=1e-6)
    assert main_export(["run", str(lib), "--input", f"x={tmp_path / 'x.npy'}"]) == 0
    assert capsys.readouterr().out.startswith("out: float32[2, 4]\n")

    trainlib = tmp_path / "libtinytrain.so"
    assert main_export(["compile", spec, "--train", "-o", str(trainlib), "-O", "1",
                        "--threads", "2", "--conv-algorithm", "gemm"]) == 0
    assert read_metadata(trainlib)["trains"] is True
    assert read_metadata(trainlib)["threads"] == 2
    assert main_export(["compile", spec, "--inputs", "x", "--outputs", "out,out",
                        "-o", str(tmp_path / "libtwo.so")]) == 0
    assert [p["name"] for p in read_metadata(tmp_path / "libtwo.so")["outputs"]] == \
        ["out", "out"]
    capsys.readouterr()
    # usage errors (2) and GraphcErrors (1), reported without a traceback
    for argv, code, message in [
        (["run", str(lib), "--input", "x"], 2, "NAME=FILE.npy"),
        (["compile", spec, "-o", str(lib), "--signature", "predict", "--inputs", "x"], 2,
         "not both"),
        (["run", str(lib), "--signature", "predict"], 2, "a library runs what it was"),
        (["run", str(lib), "--input", f"y={tmp_path / 'x.npy'}"], 1, "no input named 'y'"),
        (["info", str(tmp_path / "x.npy")], 1, "not a graphc graph file"),
        (["info", str(tmp_path / "missing.so")], 2, "is not a .gcg file"),
        (["compile", f"{model}:nothing", "-o", str(lib)], 1, "has no function 'nothing'"),
    ]:
        assert main_export(argv) == code, argv
        err = capsys.readouterr().err
        assert err.startswith("graphc: error:") and message in err, err


def test_example_build_script(tmp_path: Path) -> None:
    """examples/c_client/build.sh: export the trained digits MLP, build the client, run it."""
    done = subprocess.run(["sh", str(CLIENT.parent / "build.sh"), str(tmp_path)],
                          capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    labels = [int(v) for v in lines[0].removeprefix("labels:").split()]
    predicted = [int(line.split("\t")[0]) for line in lines[1:]]
    assert len(labels) == len(predicted) == 16
    assert sum(p == t for p, t in zip(predicted, labels)) >= 13  # it learned the digits
    lib = gc.runtime.load(tmp_path / "libmlp.so")
    (logits,) = lib(np.load(tmp_path / "digits.npy"))  # signature= -> a tuple, like compile
    assert list(np.argmax(logits, axis=1)) == predicted
