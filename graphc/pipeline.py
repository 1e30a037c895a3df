"""The one stage sequence from a graph signature to an LLVM module: `lower`.

    input      the graph as built
    optimized  after the pass pipeline (passes.manager: simplify, constant_fold, winograd, cse,
               prune), then the target's layouts of constant weights (codegen.conv.prepack:
               `conv2d ... weight_panels=(block, panel)` on a prepacked constant;
               codegen.gemm.prepack: `matmul ... b_panels=NR`)
    fused      kernels (passes.fuse); each region of a loop kernel (a scan, while_loop or
               cond run natively) goes through these same stages up to `planned`, as a
               program of its own
    planned    the memory plan (passes.memory_plan, told by codegen which kernels apply
               their epilogue once per element)
    llvm       the LLVM module (codegen.module.build_module)

Everything that turns a graph into code goes through `lower`: `gc.compile` (then the
program cache, the JIT and an Executable), `gc.export` (then the object file, the C wrapper
and the linker) and every `graphc dump` / `graphc viz` stage. So the code the CLI shows,
the code `gc.compile` runs and the code `gc.export` links are the same for the same
options, but for where the worker pool lives (an export embeds its own; the JIT's programs
call the process's). `CodegenSettings` holds every option that changes the generated code;
the program cache keys on it, so nothing can change the code without changing the key.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace

from graphc.codegen.conv.prepack import prepack_weights
from graphc.codegen.gemm.prepack import prepack_matmul_weights
from graphc.codegen.loop import NATIVE_REGION_OPS
from graphc.codegen.lowering import epilogue_writes_once
from graphc.codegen.module import ENTRY, GeneratedModule, arena_layout, build_module
from graphc.codegen.target import Target, host_target
from graphc.errors import CompileError, GraphcError
from graphc.ir import Graph, Node, Region, Signature
from graphc.options import CompileOptions
from graphc.passes.fuse import fuse
from graphc.passes.kernels import FusedProgram, KernelKind, LoopBody
from graphc.passes.manager import PipelineReport, run_pipeline
from graphc.passes.memory_plan import MemoryPlan, check_no_overlap, plan_memory
from graphc.runtime.jit import default_cache_dir

# What `gc.compile` and `gc.export` use when given no options: O2, the on-disk cache.
DEFAULT_OPTIONS = CompileOptions(opt_level=2, cache_dir=str(default_cache_dir()))

STAGES = ("input", "optimized", "fused", "planned", "llvm")


def default_threads() -> int:
    """The number of cores this process may run on (`CompileOptions.threads=None`)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class CodegenSettings:
    """Every option that changes the generated code, resolved (no None left)."""

    threads: int
    conv_algorithm: str
    profile: bool
    opt_level: int
    # Whether the module defines a worker pool of its own (an exported library) or calls the
    # process's pool of its thread count (the JIT: `runtime.process_pool`).
    embedded_pool: bool = False

    @classmethod
    def of(cls, options: CompileOptions, embedded_pool: bool = False) -> CodegenSettings:
        threads = default_threads() if options.threads is None else max(1, int(options.threads))
        return cls(threads, options.conv_algorithm, options.profile, options.opt_level,
                   embedded_pool)

    @property
    def key(self) -> str:
        """A stable text of the settings, for cache keys."""
        pool = "embedded" if self.embedded_pool else "process"
        return (f"threads={self.threads};conv={self.conv_algorithm};profile={self.profile};"
                f"O{self.opt_level};pool={pool}")


@dataclass
class Lowered:
    """What each stage produced so far; `reached` names the last stage run."""

    graph: Graph
    signature: Signature  # as the user gave it
    options: CompileOptions
    settings: CodegenSettings
    target: Target
    entry: str
    reached: str = "input"
    optimized: Graph | None = None
    optimized_signature: Signature | None = None
    report: PipelineReport | None = None
    fused: FusedProgram | None = None
    plan: MemoryPlan | None = None
    module: GeneratedModule | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    carries: dict[int, int] = field(default_factory=dict)  # a loop body's: output -> input

    @property
    def ir_text(self) -> str:
        if self.module is None:
            raise GraphcError(f"the LLVM module is built at stage 'llvm', not {self.reached!r}")
        return self.module.ir_text


def lower(graph: Graph, signature: Signature, options: CompileOptions, until: str = "llvm",
          *, entry: str = ENTRY, carries: dict[int, int] | None = None,
          embedded_pool: bool = False) -> Lowered:
    """Run the compiler on `signature` of `graph` up to stage `until` (see STAGES).

    `entry` names the module's entry-point symbol (exported libraries prefix it with the
    library's name so that two libraries can live in one process). `carries` is for a
    loop body: which outputs its loop feeds back into which inputs (the memory plan may
    write them in place, `passes.in_place.in_place_carries`). `embedded_pool`: the module
    defines its own worker pool (an exported library must be self-contained); otherwise its
    parallel kernels call the process's pool, which the JIT's loader provides.
    """
    target = host_target().without(options.disable_features)
    state = Lowered(graph, signature, options, CodegenSettings.of(options, embedded_pool),
                    target, entry, carries=dict(carries or {}))
    return advance(state, until)


def advance(state: Lowered, until: str) -> Lowered:
    """Run the stages after `state.reached` up to `until` (a no-op if already there)."""
    if until not in STAGES:
        raise GraphcError(f"unknown stage {until!r} (stages: {', '.join(STAGES)})")
    stop = STAGES.index(until)
    for stage in STAGES[STAGES.index(state.reached) + 1:stop + 1]:
        start = time.perf_counter()
        _RUN[stage](state)
        state.seconds[stage] = time.perf_counter() - start
        state.reached = stage
    return state


def _optimize(s: Lowered) -> None:
    graph, sig, s.report = run_pipeline(s.graph, replace(s.signature, name="main"), s.options)
    cs = s.settings
    # The target's layouts of constant weights (after the target-independent passes).
    graph, sig = prepack_weights(graph, sig, s.target, cs.threads, cs.conv_algorithm)
    graph, sig = prepack_matmul_weights(graph, sig, s.target, cs.threads)
    s.optimized, s.optimized_signature = graph, sig


def _fuse(s: Lowered) -> None:
    assert s.optimized is not None and s.optimized_signature is not None
    for node in s.optimized_signature.needed_nodes():
        if node.regions and node.op not in NATIVE_REGION_OPS:
            raise CompileError(f"{node.op} %{node.name} reached code generation, which runs "
                               f"only {', '.join(NATIVE_REGION_OPS)} natively; run the pass "
                               "lower_control first (the default pipeline does)", op=node.op,
                               loc=node.loc)
    s.fused = fuse(s.optimized, s.optimized_signature)
    for kernel in s.fused.kernels:
        if kernel.kind == KernelKind.LOOP:
            assert kernel.anchor is not None
            kernel.bodies = [_lower_body(s, region, _carries(kernel.anchor, i))
                             for i, region in enumerate(kernel.anchor.regions)]


def _carries(node: Node, region: int) -> dict[int, int]:
    """Which results of region `region` of a loop the loop feeds back into which params:
    a scan body's and a while_loop body's carries (params after the consts)."""
    if (node.op, region) not in (("scan", 0), ("while_loop", 1)):
        return {}
    nc = node.attrs["num_consts"]
    nk = node.attrs["num_carry"] if node.op == "scan" else len(node.type)  # type: ignore[arg-type]
    return {c: nc + c for c in range(nk)}


def _lower_body(s: Lowered, region: Region, carries: dict[int, int]) -> LoopBody:
    """A region of a loop kernel through the same stages, up to its memory plan: a program
    whose inputs are the region's params and whose outputs are its results. Its own loops
    are lowered the same way, recursively (nesting is bounded by
    `verify.MAX_REGION_DEPTH`)."""
    body = lower(region.graph, Signature("body", region.params, region.results), s.options,
                 "planned", carries=carries)
    assert body.plan is not None
    cs = s.settings
    layout = arena_layout(body.plan, s.target, cs.threads, cs.conv_algorithm)
    return LoopBody(body.plan, layout.arena_bytes)


def _plan(s: Lowered) -> None:
    assert s.fused is not None
    target = s.target
    s.plan = plan_memory(s.fused, lambda k: epilogue_writes_once(k, target), s.carries)
    if s.options.verify_each:
        check_no_overlap(s.plan)  # cheap, and it guards every plan the test suite makes


def _build(s: Lowered) -> None:
    assert s.plan is not None
    cs = s.settings
    s.module = build_module(s.plan, s.target, name=s.graph.name, entry=s.entry,
                            threads=cs.threads, profile=cs.profile, conv=cs.conv_algorithm,
                            embedded_pool=cs.embedded_pool)


_RUN = {"optimized": _optimize, "fused": _fuse, "planned": _plan, "llvm": _build}
