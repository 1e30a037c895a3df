"""Compiling several LLVM modules at once, on threads.

llvmlite serializes every call into LLVM on one process-wide lock (its `ffi.lib` wrapper):
LLVM's global context and some of its C API are not thread-safe. LLVM's optimizer and code
generator are, for modules that live in LLVM contexts of their own and use target
machines of their own (the contract that ORC's concurrent compilation rests on). So
`compile_objects` parses each module into a fresh context (through the lock: cheap), then
calls the two expensive entry points, running the pass pipeline and emitting the object,
on the raw ctypes functions under the wrapper. ctypes releases the GIL during the call,
and these calls touch only the module, its context, its target machine and its pass
builder, all owned by the calling thread.

If the wrapper ever stops exposing the raw function (`_cfn`), the locked one is used: the
objects are the same, only the compile is no longer concurrent. The objects do not depend
on the number of threads (`tests/test_program_split.py` compares the bytes).
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import llvmlite.binding as llvm
from llvmlite.binding import ffi

from graphc.codegen.target import Target
from graphc.errors import CompileError
from graphc.runtime.jit import CompileStats, create_target_machine, optimize_and_emit


def _unlocked(name: str) -> Callable[..., Any]:
    """llvmlite's C function `name` without its global lock (see the module doc)."""
    fn = getattr(ffi.lib, name)
    return getattr(fn, "_cfn", fn)  # type: ignore[no-any-return]


def compile_objects(texts: Sequence[str], target: Target, opt_level: int, workers: int,
                    stats: CompileStats | None = None) -> list[bytes]:
    """The object of each module in `texts` (verified, optimized at `opt_level`, emitted
    for `target`), compiled on up to `workers` threads, largest module first.

    Raises CompileError if LLVM rejects a module. `stats` sums the threads' times.
    """
    stats = stats if stats is not None else CompileStats()
    if workers <= 1 or len(texts) <= 1:
        return [optimize_and_emit(t, target, opt_level, stats) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    results: list[bytes] = [b""] * len(texts)
    timings: list[tuple[float, float, float]] = []
    with ThreadPoolExecutor(max_workers=min(workers, len(texts)),
                            thread_name_prefix="graphc-llvm") as pool:
        futures = {i: pool.submit(_compile_one, texts[i], target, opt_level) for i in order}
        for i, future in futures.items():
            results[i], timing = future.result()
            timings.append(timing)
    stats.parse_verify += sum(t[0] for t in timings)
    stats.optimize += sum(t[1] for t in timings)
    stats.emit += sum(t[2] for t in timings)
    return results


def _compile_one(text: str, target: Target, opt_level: int
                 ) -> tuple[bytes, tuple[float, float, float]]:
    """One module's object, in an LLVM context of its own; (parse, optimize, emit) seconds."""
    t0 = time.perf_counter()
    context = llvm.create_context()
    try:
        module = llvm.parse_assembly(text, context=context)
        module.verify()
    except RuntimeError as exc:
        raise CompileError(f"LLVM rejected the generated module: {exc}") from None
    try:
        tm = create_target_machine(target, opt_level, jit=False)
        t1 = time.perf_counter()
        if opt_level > 0:
            pto = llvm.create_pipeline_tuning_options(speed_level=opt_level)
            pb = llvm.create_pass_builder(tm, pto)
            mpm = pb.getModulePassManager()
            _unlocked("LLVMPY_RunNewModulePassManager")(mpm, module, pb)
            mpm.close()
            pb.close()
        t2 = time.perf_counter()
        obj = _emit(tm, module)
        t3 = time.perf_counter()
    finally:
        module.close()
    return obj, (t1 - t0, t2 - t1, t3 - t2)


def _emit(tm: llvm.TargetMachine, module: llvm.ModuleRef) -> bytes:
    """`tm.emit_object(module)`, with the emission itself outside llvmlite's lock."""
    with ffi.OutputString() as error:
        buffer = _unlocked("LLVMPY_TargetMachineEmitToMemory")(tm, module, 1, error)
        if not buffer:
            raise CompileError(f"LLVM could not emit the module: {error}")
    try:
        start = ffi.lib.LLVMPY_GetBufferStart(buffer)
        size = ffi.lib.LLVMPY_GetBufferSize(buffer)
        return ctypes.string_at(start, size)
    finally:
        ffi.lib.LLVMPY_DisposeMemoryBuffer(buffer)
