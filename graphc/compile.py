"""`compile()`: a graph signature -> optimized graph -> kernels -> LLVM -> an Executable.

    pass pipeline (passes.manager) -> fuse -> plan_memory -> codegen.build_module
    -> runtime.jit.jit_compile (with the on-disk cache) -> runtime.Executable
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from graphc.codegen import matmul
from graphc.codegen.module import GeneratedModule, build_module
from graphc.codegen.target import host_target
from graphc.ir import Graph, Node, Signature
from graphc.options import CompileOptions
from graphc.passes.fuse import fuse
from graphc.passes.manager import run_pipeline
from graphc.passes.memory_plan import check_no_overlap, plan_memory
from graphc.runtime import program_cache
from graphc.runtime.arguments import resolve_signature
from graphc.runtime.executable import CompileReport, Executable
from graphc.runtime.jit import default_cache_dir, jit_compile, load_object

DEFAULT_OPTIONS = CompileOptions(opt_level=2, cache_dir=str(default_cache_dir()))


def resolve_threads(options: CompileOptions) -> int:
    """`options.threads`, or the number of cores this process may run on."""
    if options.threads is not None:
        return max(1, int(options.threads))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


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
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    result = run_pipeline(graph, replace(sig, name="main"), options)
    t1 = time.perf_counter()
    program = fuse(result.graph, result.signature)
    target = host_target()
    plan = plan_memory(program, lambda k: matmul.epilogue_writes_once(k, target))
    if options.verify_each:
        check_no_overlap(plan)  # cheap, and it guards every plan the test suite makes
    t2 = time.perf_counter()
    threads = resolve_threads(options)
    cache = Path(options.cache_dir) if options.cache_dir else None
    key = program_cache.program_key(result.graph, target, options.opt_level, threads,
                                    options.profile, options.conv_algorithm
                                    ) if cache is not None else ""
    hit = program_cache.load(cache, key) if cache is not None else None
    layout: GeneratedModule | program_cache.Layout
    if hit is not None:  # skip generating IR entirely
        obj, layout = hit
        t3 = time.perf_counter()
        jit = load_object(obj, target, options.opt_level)
    else:
        generated = build_module(plan, target, name=graph.name, threads=threads,
                                 profile=options.profile, conv=options.conv_algorithm)
        layout = generated
        t3 = time.perf_counter()
        jit = jit_compile(generated.ir_text, opt_level=options.opt_level, cache_dir=cache,
                          target=target)
        if cache is not None:
            program_cache.store(cache, key, jit.object_code, program_cache.Layout(
                generated.entry, tuple(generated.table), generated.arena_bytes,
                generated.scratch_offset))
    t4 = time.perf_counter()
    seconds.update(passes=t1 - t0, fuse_plan=t2 - t1, codegen=t3 - t2, llvm=t4 - t3)
    report = CompileReport(result.report, plan, layout, jit, seconds)
    return Executable(graph, result.graph, result.signature, single, layout, jit, report)
