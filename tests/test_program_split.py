"""A program compiled at several threads is split into modules that LLVM compiles
concurrently (`runtime.program_split`, `runtime.parallel_llvm`): the pieces are valid
modules that together define what the program did, the split keeps shared state in the
main module, the concurrent compile gives the objects a serial one gives, and the program
runs and is cached as before."""

from __future__ import annotations

import re
import sys
import threading
from pathlib import Path

import llvmlite.binding as llvm
import llvmlite.ir as ir
import numpy as np
import pytest

import graphc as gc
from graphc.codegen.target import host_target
from graphc.errors import CompileError
from graphc.pipeline import lower
from graphc.runtime import jit, kernel_library, parallel_llvm
from graphc.runtime.arguments import resolve_signature
from graphc.runtime.ir_text import definitions
from graphc.runtime.jit import optimize_and_emit
from graphc.runtime.program_split import PART_BYTES, part_count, split_program

F32 = ir.FloatType()
PTR = ir.PointerType()


def training_step() -> tuple[gc.Graph, list[gc.Node], list[gc.Node], dict[gc.Node, gc.Node]]:
    rng = np.random.default_rng(0)
    with gc.Graph("split") as g:
        x = gc.placeholder((64, 48), gc.float32, name="x")
        y = gc.placeholder((64,), gc.int32, name="y")
        w1 = gc.variable(rng.standard_normal((48, 96)).astype(np.float32) * 0.1, name="w1")
        w2 = gc.variable(rng.standard_normal((96, 10)).astype(np.float32) * 0.1, name="w2")
        h = gc.tanh(x @ w1)
        loss = gc.mean(gc.softmax_cross_entropy(gc.exp(h * 0.5) @ w2, y))
        updates = gc.optim.Adam(lr=0.01).minimize(loss)
    return g, [x, y], [loss], updates


@pytest.fixture
def two_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compile at 2 threads on 2 LLVM threads also where this process may use one core
    (which leaves programs whole)."""
    monkeypatch.setattr(sys.modules["graphc.compile"], "_compile_workers", lambda t: t)


@pytest.fixture(scope="module")
def program_text() -> str:
    """The generated module at 2 threads, its shared GEMM functions moved out (as
    `compile_program` splits it)."""
    g, inputs, outputs, updates = training_step()
    sig, _ = resolve_signature(g, inputs, outputs, updates, None)
    text = lower(g, sig, gc.CompileOptions(threads=2, cache_dir=None), "llvm").ir_text
    return kernel_library.split_module(text, host_target(), 3).program


def defined(text: str) -> dict[str, str]:
    """name -> linkage-and-signature header of every definition."""
    return {d.name: d.head for d in definitions(text)}


def verify(text: str) -> None:
    module = llvm.parse_assembly(text, context=llvm.create_context())
    module.verify()


@pytest.mark.parametrize("parts", [2, 3, 8])
def test_the_pieces_are_modules_that_define_the_program(program_text: str, parts: int) -> None:
    split = split_program(program_text, parts)
    assert 1 <= len(split.parts) <= parts - 1
    for text in (split.main, *split.parts):
        verify(text)
    original = defined(program_text)
    main = defined(split.main)
    moved = [name for text in split.parts for name, head in defined(text).items()
             if head.startswith("hidden ")]
    assert moved and len(moved) == len(set(moved)), "each moved kernel is in one part"
    for name in moved:
        assert original[name].startswith("internal "), name  # only kernels move
        assert name not in main
        assert re.search(rf'\ndeclare hidden void @"{re.escape(name)}"\(', split.main), name
    # Every function survives in some piece; the entry point stays in the main module.
    pieces = set(main) | {n for text in split.parts for n in defined(text)}
    assert set(original) - pieces == set()
    assert "graphc_entry" in main and all("graphc_entry" not in defined(t) for t in split.parts)


def test_the_split_is_balanced(program_text: str) -> None:
    split = split_program(program_text, 2)
    sizes = [len(split.main), *map(len, split.parts)]
    assert max(sizes) < 0.8 * len(program_text), sizes


def test_one_part_or_nothing_movable_leaves_the_text_alone(program_text: str) -> None:
    assert split_program(program_text, 1).main == program_text
    alone = _module(state_in_every_kernel=True)
    assert split_program(alone, 4).parts == ()


def _module(state_in_every_kernel: bool = False) -> str:
    """A hand-made program: an entry point calling kernels that read a private constant,
    a mutable global, call a helper, or are called twice."""
    m = ir.Module("hand")
    m.triple = llvm.get_process_triple()
    const = ir.GlobalVariable(m, F32, "c")
    const.linkage, const.global_constant, const.initializer = "private", True, ir.Constant(F32, 2)
    state = ir.GlobalVariable(m, F32, "state")
    state.initializer = ir.Constant(F32, 0)
    helper = ir.Function(m, ir.FunctionType(F32, [F32]), "helper")
    helper.linkage = "internal"
    hb = ir.IRBuilder(helper.append_basic_block())
    hb.ret(hb.fmul(helper.args[0], hb.load(const)))
    pointed = ir.Function(m, ir.FunctionType(ir.VoidType(), []), "pointed")
    pointed.linkage = "internal"
    ir.IRBuilder(pointed.append_basic_block()).ret_void()
    table = ir.GlobalVariable(m, ir.ArrayType(PTR, 1), "table")
    table.linkage, table.global_constant = "private", True
    table.initializer = ir.Constant(ir.ArrayType(PTR, 1), [pointed])
    kernels = []
    for name in ("k_const", "k_state", "k_helper", "k_twice", "k_table"):
        fn = ir.Function(m, ir.FunctionType(ir.VoidType(), [PTR]), name)
        fn.linkage = "internal"
        b = ir.IRBuilder(fn.append_basic_block())
        value = b.load(fn.args[0], typ=F32)
        if name == "k_const":
            value = b.fadd(value, b.load(const))
        if name == "k_state" or state_in_every_kernel:
            value = b.fadd(value, b.load(state))
        if name == "k_helper":
            value = b.call(helper, [value])
        if name == "k_table":  # reads a constant that points to a function
            b.store(b.load(table, typ=PTR), fn.args[0])
        b.store(value, fn.args[0])
        b.ret_void()
        kernels.append(fn)
    entry = ir.Function(m, ir.FunctionType(ir.IntType(32), [PTR]), "graphc_entry")
    b = ir.IRBuilder(entry.append_basic_block())
    for fn in [*kernels, kernels[-1]]:
        b.call(fn, [entry.args[0]])
    b.ret(ir.Constant(ir.IntType(32), 0))
    return str(m)


def test_state_stays_and_helpers_and_constants_travel() -> None:
    text = _module()
    split = split_program(text, 8)
    moved = {name for t in split.parts for name, head in defined(t).items()
             if head.startswith("hidden ")}
    # Mutable state is the whole program's: its kernel stays; so does one reading a
    # constant that points to a function (the constant is not copied), and the function
    # stays with it. A kernel called twice by the entry point moves (the calls are the
    # entry's).
    assert moved == {"k_const", "k_helper", "k_twice"}
    assert {"k_state", "k_table", "pointed"} <= set(defined(split.main))
    part_of = {n: t for t in split.parts for n in defined(t)}
    assert '@"c" = private constant float' in part_of["k_const"]
    assert "helper" in defined(part_of["k_helper"])
    assert "helper" not in defined(split.main), "a helper only moved kernels used is dropped"
    for t in (split.main, *split.parts):
        verify(t)


def test_the_concurrent_compile_gives_the_serial_objects(program_text: str) -> None:
    split = split_program(program_text, 2)
    texts = [split.main, *split.parts]
    target = host_target()
    serial = [optimize_and_emit(t, target, 2) for t in texts]
    assert parallel_llvm.compile_objects(texts, target, 2, workers=2) == serial


def test_llvm_runs_outside_llvmlites_lock() -> None:
    """The raw functions are reachable, so the compile is concurrent, not only correct."""
    from llvmlite.binding import ffi

    for name in ("LLVMPY_RunNewModulePassManager", "LLVMPY_TargetMachineEmitToMemory"):
        assert parallel_llvm._unlocked(name) is not getattr(ffi.lib, name), name


def test_a_split_program_trains_like_the_reference_and_is_cached(tmp_path: Path,
                                                                 two_workers: None) -> None:
    g, inputs, outputs, updates = training_step()
    rng = np.random.default_rng(1)
    args = (rng.standard_normal((64, 48)).astype(np.float32),
            rng.integers(0, 10, 64).astype(np.int32))
    initial = {n: v.copy() for n, v in g.variables.items()}

    def run(step) -> list[np.ndarray]:
        for n, v in initial.items():
            g.variables[n] = v
        losses = [np.asarray(step(*args)[0]) for _ in range(3)]
        return losses + [g.variables[n].copy() for n in sorted(initial)]

    expected = run(gc.reference(g, inputs, outputs, updates=updates))
    options = gc.CompileOptions(threads=2, cache_dir=str(tmp_path))
    kernel_library.forget_library_objects()  # so that every library object is stored here
    cold = gc.compile(g, inputs, outputs, updates=updates, options=options)
    assert cold.report.jit.parts, "the program was not split"
    stats = cold.report.jit.stats
    libraries = len(list(tmp_path.glob("*.lib.o")))
    assert (stats.part_objects, stats.library_objects) == (len(cold.report.jit.parts),
                                                           libraries)
    warm = gc.compile(g, inputs, outputs, updates=updates, options=options)
    assert warm.report.jit.key == "program-cache"
    assert warm.report.jit.parts == cold.report.jit.parts
    # Without the program entry, the main object and the parts come from the object cache:
    # nothing is compiled again.
    for f in tmp_path.glob("*.prog.*"):
        f.unlink()
    kernel_library.forget_library_objects()
    objects = gc.compile(g, inputs, outputs, updates=updates, options=options)
    assert objects.report.jit.stats.cache_hit and objects.report.jit.stats.library_compiled == 0
    assert objects.report.jit.parts == cold.report.jit.parts
    for exe in (cold, warm, objects):
        for got, want in zip(run(exe), expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_compiles_in_several_python_threads_at_once(program_text: str) -> None:
    """Concurrent compiles, each concurrent itself, give the serial objects."""
    split = split_program(program_text, 2)
    texts = [split.main, *split.parts]
    target = host_target()
    serial = [optimize_and_emit(t, target, 1) for t in texts]
    results: list[list[bytes]] = []
    lock = threading.Lock()

    def compile_all() -> None:
        objs = parallel_llvm.compile_objects(texts, target, 1, workers=2)
        with lock:
            results.append(objs)

    threads = [threading.Thread(target=compile_all) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [serial] * 4


def test_a_module_llvm_rejects_is_a_compile_error(program_text: str) -> None:
    broken = "define void @f() {\n  ret i32 0\n}\n"
    with pytest.raises(CompileError, match="LLVM rejected"):
        parallel_llvm.compile_objects([program_text, broken], host_target(), 1, workers=2)


def test_compile_stats_name_the_parts(two_workers: None) -> None:
    g, inputs, outputs, updates = training_step()
    exe = gc.compile(g, inputs, outputs, updates=updates,
                     options=gc.CompileOptions(threads=2, cache_dir=None))
    assert isinstance(exe.report.jit, jit.JitModule)
    assert exe.report.jit.stats.part_objects == len(exe.report.jit.parts) >= 1
    assert "2 modules compiled concurrently" in exe.report.format()


@pytest.mark.parametrize("profile", [False, True])
def test_loops_and_profiles_split_and_match_the_reference(two_workers: None,
                                                          profile: bool) -> None:
    """A scan (its body functions travel with the loop kernel) next to dense layers, with
    profiling counters (mutable state that keeps its readers in the main module)."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((32, 32)) * 0.2
    with gc.Graph("loop") as g:
        xs = gc.placeholder((12, 4, 32), gc.float64, name="xs")
        h0 = gc.placeholder((4, 32), gc.float64, name="h0")
        wv = gc.constant(w)
        h, ys = gc.scan(lambda c, x: (gc.tanh(c @ wv + x), c * 2.0), h0, xs)
        out = gc.sum(gc.exp(gc.tanh(h @ wv) * 0.5)) + gc.sum(ys * ys)
    args = (rng.standard_normal((12, 4, 32)), rng.standard_normal((4, 32)))
    want = gc.reference(g, [xs, h0], [out])(*args)[0]
    exe = gc.compile(g, [xs, h0], [out],
                     options=gc.CompileOptions(threads=2, cache_dir=None, profile=profile))
    assert exe.report.jit.parts
    np.testing.assert_allclose(exe(*args)[0], want, rtol=1e-10)
    if profile:
        assert exe.profile() is not None


def test_part_count_comes_in_rounds_of_one_part_per_worker() -> None:
    assert part_count(10**7, 1) == 1
    assert part_count(1000, 2) == 2
    assert part_count(8 * PART_BYTES, 2) == 8
    assert part_count(100 * PART_BYTES, 2) == 8  # at most four rounds
    assert all(part_count(n * PART_BYTES // 3, w) % w == 0 for n in range(40) for w in (2, 3))
