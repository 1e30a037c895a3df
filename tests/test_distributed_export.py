"""Exporting a data-parallel training step (graphc/export/communicator.py).

The library gets ``NAME_set_communicator`` and its header ``NAME_comm``; it still needs only
libc. Alone (no communicator) it trains like the compiled step. Under ``mpiexec -n 2``,
`examples/distributed_c/main.c` (MPI bound in C) gives the bytes the Python run gives, and
so does the library loaded by `gc.runtime.load` (which binds the process's MPI). Skipped
with the reason where a C compiler, mpicc (the mpich wheel ships it with mpi.h) or mpiexec
is missing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import graphc as gc

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "distributed_c"
BIN = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
CC, MPICC, MPIEXEC, LDD = (shutil.which(t, path=BIN) for t in ("cc", "mpicc", "mpiexec", "ldd"))
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler (cc) to link the library")


def _export(tmp_path: Path) -> Path:
    done = subprocess.run([sys.executable, str(EXAMPLE / "model.py"), "--export", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return tmp_path / "libdp.so"


@needs_cc
def test_exported_step_has_a_communicator_slot_and_needs_only_libc(tmp_path: Path) -> None:
    lib = _export(tmp_path)
    header = (tmp_path / "dp.h").read_text()
    assert "typedef struct dp_comm {" in header
    assert "void dp_set_communicator(const dp_comm *comm);" in header
    loaded = gc.runtime.load(lib)
    assert loaded.metadata["entry_points"]["set_communicator"] == "dp_set_communicator"
    if LDD is not None:
        needed = subprocess.run([LDD, str(lib)], capture_output=True, text=True).stdout
        names = {line.split()[0] for line in needed.splitlines() if line.strip()}
        assert names <= {"linux-vdso.so.1", "libc.so.6", "libm.so.6",
                         "/lib64/ld-linux-x86-64.so.2"} | {n for n in names if "ld-linux" in n}, \
            needed
    # an ordinary step gets no slot
    with gc.Graph("plain") as g:
        x = gc.placeholder((2,), gc.float32, name="x")
        w = gc.variable(np.ones(2, np.float32), name="w")
        updates = gc.optim.SGD(0.1).minimize(gc.sum(x * w))
    plain = gc.export(g, tmp_path / "libplain.so", inputs=[x], outputs=[], updates=updates)
    assert "set_communicator" not in plain.metadata["entry_points"]
    assert "plain_comm" not in plain.header.read_text()


@needs_cc
def test_exported_step_alone_trains_like_the_compiled_step(tmp_path: Path) -> None:
    sys.path.insert(0, str(EXAMPLE))
    try:
        import model  # examples/distributed_c/model.py
    finally:
        sys.path.remove(str(EXAMPLE))
    lib = gc.runtime.load(_export(tmp_path))
    g, x, y, loss, updates = model.build()
    step = gc.compile(g, inputs=[x, y], outputs=[loss], updates=updates)
    xs, ys = model.data(1)
    for s in range(5):
        np.testing.assert_array_equal(lib(xs[s], ys[s]), step(xs[s], ys[s]))
    for name in g.variables:
        np.testing.assert_array_equal(lib.variables[name], g.variables[name], err_msg=name)


@needs_cc
@pytest.mark.skipif(MPICC is None or MPIEXEC is None
                    or importlib.util.find_spec("mpi4py") is None,
                    reason="MPI with headers is not installed (pip install mpi4py mpich: the "
                           "wheel ships mpicc and mpi.h)")
def test_c_example_on_two_ranks_gives_the_python_weights(tmp_path: Path) -> None:
    assert MPICC is not None and MPIEXEC is not None
    _export(tmp_path)
    train = tmp_path / "train"
    built = subprocess.run([MPICC, "-O2", "-std=c11", "-Wall", "-Wextra", "-Werror",
                            "-I", str(tmp_path), "-o", str(train), str(EXAMPLE / "main.c"),
                            "-L", str(tmp_path), "-ldp", f"-Wl,-rpath,{tmp_path}"],
                           capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    runs = {
        "c": [str(train), str(tmp_path)],
        "py": [sys.executable, str(EXAMPLE / "model.py"), "--train", str(tmp_path)],
        "lib": [sys.executable, str(EXAMPLE / "model.py"), "--train", str(tmp_path),
                "--library"],
    }
    for what, argv in runs.items():
        done = subprocess.run([MPIEXEC, "-n", "2", *argv], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, (what, done.stderr)
    c = (tmp_path / "weights_c.bin").read_bytes()
    assert c == (tmp_path / "weights_py.bin").read_bytes()
    assert c == (tmp_path / "weights_lib.bin").read_bytes()
    # and the run trained: the weights left their initial values
    start = gc.runtime.load(tmp_path / "libdp.so").variables["w1"]
    w1 = np.frombuffer(c, np.float32, count=start.size, offset=_offset(tmp_path, "w1"))
    assert np.max(np.abs(w1 - start.ravel())) > 1e-3


def _offset(tmp_path: Path, name: str) -> int:
    """Byte offset of variable `name` in a weights file (variables in library order)."""
    meta = gc.runtime.load(tmp_path / "libdp.so").metadata["variables"]
    offset = 0
    for v in meta:
        if v["name"] == name:
            return offset
        offset += v["bytes"]
    raise KeyError(name)
