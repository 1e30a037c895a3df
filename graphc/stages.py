"""Every stage of compilation, on demand, for `graphc dump` / `graphc viz`.

`lower(graph, signature, options, until)` runs the compiler up to a stage and returns a
`Stages` record holding what each stage produced; the CLI prints the one asked for:

    input      the graph as built (text IR)
    optimized  after the pass pipeline (text IR)
    fused      kernels (`--explain`: why each adjacent pair was left unfused)
    planned    the memory plan (buffers, arena offsets, live intervals)
    llvm       the generated LLVM IR (before LLVM's optimizer; `--optimized` after)
    asm        the machine code as assembly
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from graphc.codegen.module import GeneratedModule, build_module
from graphc.codegen.target import host_target
from graphc.errors import GraphcError
from graphc.ir import Graph, Signature
from graphc.options import CompileOptions
from graphc.passes.fuse import FusedProgram, fuse
from graphc.passes.manager import PipelineReport, run_pipeline
from graphc.passes.memory_plan import MemoryPlan, plan_memory
from graphc.runtime import jit

STAGES = ("input", "optimized", "fused", "planned", "llvm", "asm")


@dataclass
class Stages:
    graph: Graph
    signature: Signature
    optimized: Graph | None = None
    optimized_signature: Signature | None = None
    report: PipelineReport | None = None
    fused: FusedProgram | None = None
    plan: MemoryPlan | None = None
    module: GeneratedModule | None = None


def lower(graph: Graph, signature: Signature, options: CompileOptions, until: str) -> Stages:
    """Run the compiler on `signature` of `graph` up to stage `until` (see STAGES)."""
    if until not in STAGES:
        raise GraphcError(f"unknown stage {until!r} (stages: {', '.join(STAGES)})")
    out = Stages(graph, signature)
    if until == "input":
        return out
    result = run_pipeline(graph, replace(signature, name="main"), options)
    out.optimized, out.optimized_signature, out.report = result
    if until == "optimized":
        return out
    out.fused = fuse(result.graph, result.signature)
    if until == "fused":
        return out
    out.plan = plan_memory(out.fused)
    if until == "planned":
        return out
    out.module = build_module(out.plan, host_target(), name=graph.name)
    return out


def llvm_text(stages: Stages, options: CompileOptions, optimized: bool = False) -> str:
    assert stages.module is not None
    text = stages.module.ir_text
    if optimized:
        return jit.optimized_ir(text, host_target(), options.opt_level)
    return text


def asm_text(stages: Stages, options: CompileOptions) -> str:
    assert stages.module is not None
    return jit.emit_assembly(stages.module.ir_text, host_target(), options.opt_level)
