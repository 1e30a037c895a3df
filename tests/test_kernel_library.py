"""Shared GEMM functions are compiled once per process and linked into every graph that
uses them (`runtime.kernel_library`), and no object reaches LLVM's loader with a call that
nothing defines (`runtime.object_symbols`, `runtime.jit`)."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import graphc as gc
from graphc.codegen.target import host_target
from graphc.pipeline import lower
from graphc.runtime import jit, kernel_library
from graphc.runtime.arguments import resolve_signature
from graphc.runtime.object_symbols import object_symbols

OPTIONS = gc.CompileOptions(cache_dir=None, threads=1)


def mlp(batch: int, hidden: int, seed: int) -> tuple[gc.Graph, gc.Node, gc.Node]:
    """A two-layer MLP; different sizes give different kernels but the same shared GEMM
    functions (the micro-kernels and packers take sizes as arguments)."""
    rng = np.random.default_rng(seed)
    with gc.Graph(f"mlp{hidden}") as g:
        x = gc.placeholder((batch, 64), gc.float32, name="x")
        w1 = gc.variable(rng.standard_normal((64, hidden)).astype(np.float32), name="w1")
        w2 = gc.variable(rng.standard_normal((hidden, 48)).astype(np.float32), name="w2")
        y = gc.relu(x @ w1) @ w2
    return g, x, y


def ir_of(g: gc.Graph, x: gc.Node, y: gc.Node) -> str:
    sig, _ = resolve_signature(g, [x], [y], None, None)
    return lower(g, sig, OPTIONS, "llvm").ir_text


def test_split_moves_each_shared_function_into_a_module_that_stands_alone() -> None:
    text = ir_of(*mlp(96, 128, 0))
    split = kernel_library.split_module(text, host_target(), 2)
    assert len(split.library) >= 3  # packers and micro-kernels
    for module in split.library:
        assert f'define linkonce_odr hidden void @"{module.name}"' in text
        assert f'@"{module.name}"' in split.program
        assert f'define linkonce_odr hidden void @"{module.name}"' not in split.program
        assert f'declare hidden void @"{module.name}"' in split.program
        jit._parse(module.text)  # verifies alone: its intrinsics and metadata came along
        obj = jit.optimize_and_emit(module.text, host_target(), 2)
        assert object_symbols(obj).defined == {module.name}
    jit._parse(split.program)


def test_library_modules_do_not_depend_on_the_graph() -> None:
    """The same shared function from two different graphs is the same text (metadata
    renumbered from !0), so its object is found, not compiled again."""
    a = kernel_library.split_module(ir_of(*mlp(96, 128, 0)), host_target(), 2)
    b = kernel_library.split_module(ir_of(*mlp(40, 256, 1)), host_target(), 2)
    keys_a = {m.name: m.key for m in a.library}
    keys_b = {m.name: m.key for m in b.library}
    common = keys_a.keys() & keys_b.keys()
    assert common
    assert all(keys_a[n] == keys_b[n] for n in common)
    assert any("!0 = " in m.text for m in a.library)  # loop metadata travelled along


def test_a_second_graph_compiles_no_shared_function_again() -> None:
    kernel_library.forget_library_objects()
    first = mlp(96, 128, 0)
    second = mlp(96, 256, 1)  # other sizes, same specialisations
    runs = []
    for g, x, y in (first, second):
        f = gc.compile(g, [x], [y], options=OPTIONS)
        xv = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
        np.testing.assert_allclose(f(xv), gc.reference(g, [x], [y])(xv), rtol=1e-4,
                                   atol=1e-4)
        runs.append(f.report.jit.stats)
    assert runs[0].library_compiled == runs[0].library_objects > 0
    assert runs[1].library_objects > 0 and runs[1].library_compiled == 0


def test_a_warm_cache_links_library_objects_from_disk(tmp_path: Path) -> None:
    """A new process (here: forgotten objects) with a warm cache reads library objects from
    it, and a program-cache hit links against them."""
    options = gc.CompileOptions(cache_dir=str(tmp_path), threads=1)
    g, x, y = mlp(96, 128, 0)
    kernel_library.forget_library_objects()
    cold = gc.compile(g, [x], [y], options=options)
    assert cold.report.jit.stats.library_compiled > 0
    assert len(list(tmp_path.glob("*.lib.o"))) == cold.report.jit.stats.library_objects
    kernel_library.forget_library_objects()
    warm = gc.compile(g, [x], [y], options=options)
    assert warm.report.jit.key == "program-cache"
    assert warm.report.jit.libraries == cold.report.jit.libraries
    kernel_library.forget_library_objects()
    g2, x2, y2 = mlp(96, 256, 1)
    assert gc.compile(g2, [x2], [y2], options=options).report.jit.stats.library_compiled == 0
    xv = np.ones(x.shape, np.float32)
    np.testing.assert_array_equal(warm(xv), cold(xv))


def test_object_symbols_never_fails_otherwise_than_with_value_error() -> None:
    """Damaged objects (truncated, bit-flipped, random) give symbols or ValueError."""
    obj = jit.optimize_and_emit(ir_of(*mlp(96, 128, 0)), host_target(), 2)
    good = object_symbols(obj)
    assert "graphc_entry" in good.defined  # the whole module: shared functions are weak
    assert any(name.startswith("graphc.gemm.") for name in good.defined)
    rng = random.Random(0)
    for trial in range(3000):
        data = bytearray(obj)
        if trial % 3 == 0:
            data = data[:rng.randrange(len(data))]
        else:
            for _ in range(rng.randrange(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            object_symbols(bytes(data))
        except ValueError:
            pass


UNRESOLVED = """
import llvmlite.binding  # noqa: F401
from graphc.errors import CompileError
from graphc.runtime import jit
IR = '''declare void @"graphc.gemm.no.such.function"(ptr)
define i32 @entry(ptr %t) {
  call void @"graphc.gemm.no.such.function"(ptr %t)
  ret i32 0
}
'''
try:
    jit.jit_compile(IR, opt_level=0, symbols=["entry"])
except CompileError as exc:
    print("refused:", exc)
"""


def test_a_call_nothing_defines_is_refused_not_a_crash() -> None:
    """LLVM's loader aborts the process on an unresolved call; graphc refuses the object
    first (in a subprocess, so that a regression is a failure, not a dead test session)."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(UNRESOLVED)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused:" in done.stdout and "graphc.gemm.no.such.function" in done.stdout


@pytest.mark.parametrize("threads", [1, 2])
def test_executables_keep_their_library_code_alive(threads: int) -> None:
    """Each engine loads its own copy of the library objects: forgetting them, or freeing
    another executable that linked the same ones, leaves an executable working."""
    options = gc.CompileOptions(cache_dir=None, threads=threads)
    g, x, y = mlp(96, 128, 0)
    f1 = gc.compile(g, [x], [y], options=options)
    f2 = gc.compile(g, [x], [y], options=options)
    xv = np.random.default_rng(3).standard_normal(x.shape).astype(np.float32)
    want = f1(xv)
    del f1
    kernel_library.forget_library_objects()
    np.testing.assert_array_equal(f2(xv), want)
