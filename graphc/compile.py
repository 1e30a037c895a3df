"""`gc.compile`: the pipeline's LLVM module, JIT-compiled, as a callable `Executable`.

    pipeline.lower (passes -> fuse -> memory plan) -> program cache hit?
        yes: load the cached object           no: pipeline.advance to "llvm" -> runtime.jit
    -> runtime.Executable
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from graphc.ir import Graph, Node, Signature
from graphc.options import CompileOptions
from graphc.pipeline import DEFAULT_OPTIONS, advance, lower
from graphc.runtime import program_cache
from graphc.runtime.arguments import resolve_signature
from graphc.runtime.executable import CompileReport, Executable
from graphc.runtime.jit import jit_compile, load_object


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
    lowered = lower(graph, sig, options, "planned")
    assert lowered.optimized is not None and lowered.plan is not None
    assert lowered.optimized_signature is not None and lowered.report is not None
    cache = Path(options.cache_dir) if options.cache_dir else None
    key = program_cache.program_key(lowered.optimized, lowered.target,
                                    lowered.settings.key) if cache is not None else ""
    hit = program_cache.load(cache, key) if cache is not None else None
    start = time.perf_counter()
    layout: program_cache.Layout
    if hit is not None:  # skip generating IR entirely
        obj, layout = hit
        jit = load_object(obj, lowered.target, options.opt_level)
        codegen = 0.0
    else:
        advance(lowered, "llvm")
        generated = lowered.module
        assert generated is not None
        codegen = lowered.seconds["llvm"]
        start = time.perf_counter()
        jit = jit_compile(generated.ir_text, opt_level=options.opt_level, cache_dir=cache,
                          target=lowered.target)
        layout = program_cache.Layout(generated.entry, tuple(generated.table),
                                      generated.arena_bytes, generated.scratch_offset)
        if cache is not None:
            program_cache.store(cache, key, jit.object_code, layout)
    seconds = {"passes": lowered.seconds["optimized"],
               "fuse_plan": lowered.seconds["fused"] + lowered.seconds["planned"],
               "codegen": codegen, "llvm": time.perf_counter() - start}
    report = CompileReport(lowered.report, lowered.plan,
                           lowered.module if lowered.module is not None else layout, jit,
                           seconds)
    return Executable(graph, lowered.optimized, lowered.optimized_signature, single, layout,
                      jit, report)
