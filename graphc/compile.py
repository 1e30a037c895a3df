"""`gc.compile`: the pipeline's LLVM module, JIT-compiled, as a callable `Executable`.

    pipeline.lower (passes -> fuse -> memory plan) -> program cache hit?
        yes: load the cached object           no: pipeline.advance to "llvm"
             with its library objects             -> runtime.kernel_library.compile_program
             and parts                               (on `threads` threads)
    -> runtime.Executable

The shared GEMM functions are library objects compiled once per process
(`runtime.kernel_library`); a program object is always loaded beside the ones it declares.
A program compiled for `threads` > 1 is split into modules that LLVM compiles on that
many threads (`runtime.program_split`, `runtime.parallel_llvm`).
A program-cache entry is used only if it verifies (`runtime.program_cache.load`: hashes,
key, and exactly the layout this compile's memory plan implies), its library objects are at
hand and LLVM loads it with the entry point defined; anything else is a miss, compiled
again and written over the entry.
"""

from __future__ import annotations

import gc as _pygc
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from graphc.ir import Graph, Node, Signature
from graphc.options import CompileOptions
from graphc.pipeline import DEFAULT_OPTIONS, Lowered, advance, default_threads, lower
from graphc.runtime import process_pool, program_cache
from graphc.runtime.arguments import resolve_signature
from graphc.runtime.executable import CompileReport, Executable
from graphc.runtime.jit import JitModule
from graphc.runtime.kernel_library import compile_program, load_program


def compile(
    graph: Graph,
    inputs: Sequence[Node] | None = None,
    outputs: Sequence[Node] | Node | None = None,
    updates: Mapping[Node, Node] | Sequence[tuple[Node, Node]] | None = None,
    *,
    signature: str | None = None,
    options: CompileOptions | None = None,
) -> Executable:
    """Compile what to run into native code; call the result like `gc.reference(...)`.

    `options=None` uses `DEFAULT_OPTIONS` (O2, the compile cache in ~/.cache/graphc).
    """
    options = options or DEFAULT_OPTIONS
    sig, single = resolve_signature(graph, inputs, outputs, updates, signature)
    return compile_signature(graph, sig, single, options)


def compile_signature(graph: Graph, sig: Signature, single: bool,
                      options: CompileOptions) -> Executable:
    """`compile` for a resolved signature (`single`: return one array, not a tuple)."""
    with _cyclic_gc_paused():
        return _compile_signature(graph, sig, single, options)


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for the duration (if it is enabled).

    Code generation allocates tens of thousands of llvmlite IR objects that live until the
    module is printed; the collector's full passes over them cost 20-70 ms in one compile out
    of three (an MLP training step: median 507 -> 487 ms, one thread). Nothing a compile
    allocates needs collecting before it ends; reference counting still frees the rest.
    """
    if not _pygc.isenabled():
        yield
        return
    _pygc.disable()
    try:
        yield
    finally:
        _pygc.enable()


def _compile_signature(graph: Graph, sig: Signature, single: bool,
                       options: CompileOptions) -> Executable:
    lowered = lower(graph, sig, options, "planned")
    assert lowered.optimized is not None and lowered.plan is not None
    assert lowered.optimized_signature is not None and lowered.report is not None
    slot = _cache_slot(lowered)
    start = time.perf_counter()
    # The program's parallel kernels call the process pool of its thread count: the loader
    # must find it defined.
    process_pool.ensure(lowered.settings.threads)
    hit = _program_cache_hit(lowered, slot) if slot is not None else None
    layout: program_cache.Layout
    if hit is not None:  # skip generating IR entirely
        jit, layout = hit
        codegen = 0.0
    else:
        advance(lowered, "llvm")
        generated = lowered.module
        assert generated is not None
        codegen = lowered.seconds["llvm"]
        start = time.perf_counter()
        jit = compile_program(generated.ir_text, opt_level=options.opt_level,
                              cache_dir=slot.directory if slot is not None else None,
                              target=lowered.target, symbols=(generated.entry,),
                              workers=_compile_workers(lowered.settings.threads))
        layout = program_cache.Layout(generated.entry, tuple(generated.table),
                                      generated.arena_bytes, generated.scratch_offset)
        # An entry whose layout is not the expected one could never be loaded: skip it.
        if slot is not None and layout == slot.expected:
            program_cache.store(slot.directory, slot.key, jit.object_code, layout,
                                jit.libraries, jit.parts)
    seconds = {"passes": lowered.seconds["optimized"],
               "fuse_plan": lowered.seconds["fused"] + lowered.seconds["planned"],
               "codegen": codegen, "llvm": time.perf_counter() - start}
    report = CompileReport(lowered.report, lowered.plan,
                           lowered.module if lowered.module is not None else layout, jit,
                           seconds)
    return Executable(graph, lowered.optimized, lowered.optimized_signature, single, layout,
                      jit, report)


def _compile_workers(threads: int) -> int:
    """How many threads LLVM may compile on: the program's own thread count (what the user
    gave it of this machine), at most the cores this process may run on."""
    return max(1, min(threads, default_threads()))


@dataclass(frozen=True)
class _CacheSlot:
    """Where a compile's program-cache entry lives and the layout it must record."""

    directory: Path
    key: str
    expected: program_cache.Layout


def _cache_slot(lowered: Lowered) -> _CacheSlot | None:
    """The program-cache slot of a planned compile, or None if its options disable caching."""
    if not lowered.options.cache_dir:
        return None
    assert lowered.optimized is not None and lowered.plan is not None
    settings = lowered.settings
    key = program_cache.program_key(lowered.optimized, lowered.target, settings.key)
    expected = program_cache.expected_layout(lowered.plan, lowered.target, settings.threads,
                                             settings.conv_algorithm, lowered.entry)
    return _CacheSlot(Path(lowered.options.cache_dir), key, expected)


def _program_cache_hit(lowered: Lowered, slot: _CacheSlot
                       ) -> tuple[JitModule, program_cache.Layout] | None:
    """The loaded machine code and layout of a verified entry, or None (a miss)."""
    hit = program_cache.load(slot.directory, slot.key, slot.expected)
    if hit is None:
        return None
    # None if LLVM rejects it, the entry point, a part or a library object is missing:
    # compile over it
    jit = load_program(hit.obj, hit.libraries, hit.parts, lowered.target,
                       lowered.options.opt_level, slot.directory, (slot.expected.entry,))
    return (jit, slot.expected) if jit is not None else None
