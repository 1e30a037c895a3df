"""`graphc dump`, `graphc viz`: every stage of compilation as text or as a picture.

    graphc dump MODEL [--stage input|optimized|fused|planned|llvm|asm] [--format text|json|dot]
                      [--signature NAME] [--pipeline P] [--print-after PASS]
                      [--print-after-all] [--stats] [--explain] [--optimized-ir]
    graphc viz MODEL -o FILE.{dot,svg,png} [--stage input|optimized|fused|planned]

`viz` draws the graph as built (input) or optimized, the fused kernels (fused: one cluster
per kernel, every unfused edge labelled with the reason), or the memory plan (planned:
arena offset over the schedule). `.dot` is DOT text and always works; `.svg` and `.png` run
Graphviz's `dot`, except the planned `.svg`, which graphc draws itself. The llvm and asm
stages are text: `graphc dump` prints them.

MODEL and the options that change code (`--signature`, `-O`, `--threads`,
`--conv-algorithm`) are as in `graphc compile`: the stages shown are those `gc.compile`
runs with the same options (`pipeline.lower`).

Wiring: `add_subcommands(subparsers)` adds both commands to `graphc`'s parser, each with
``handler=`` set to its function in `COMMANDS` (as `exported.py` does).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from graphc.cli.command import MODEL_HELP, UsageError, add_dim_argument, load_model
from graphc.errors import GraphcError
from graphc.io.atomic import atomic_write
from graphc.io.gcg import dumps_json
from graphc.io.textir import format_graph
from graphc.ir import Graph
from graphc.options import CONV_ALGORITHMS
from graphc.passes import integer_matmul, qdq
from graphc.passes.manager import select_signature
from graphc.pipeline import DEFAULT_OPTIONS, Lowered, lower
from graphc.pipeline import STAGES as PIPELINE_STAGES
from graphc.runtime.jit import emit_assembly, optimized_ir
from graphc.viz.dot import to_dot
from graphc.viz.fused import fused_to_dot
from graphc.viz.memory import plan_to_dot, plan_to_svg

__all__ = ["COMMANDS", "FORMATS", "STAGES", "VIZ_STAGES", "add_subcommands"]

# The stages `dump` can show: the pipeline's, then the machine code of its LLVM module.
STAGES = (*PIPELINE_STAGES, "asm")
GRAPH_STAGES = ("input", "optimized")  # stages whose result is a graph (any format)
VIZ_STAGES = ("input", "optimized", "fused", "planned")  # the others are text only
# output format -> the text of a graph in it.
FORMATS: dict[str, Callable[[Graph], str]] = {
    "text": format_graph,
    "json": dumps_json,
    "dot": to_dot,
}
# `graphc viz` output suffix -> the Graphviz output format (None: DOT text, no Graphviz).
VIZ_SUFFIXES: dict[str, str | None] = {".dot": None, ".gv": None, ".svg": "svg", ".png": "png"}

INSTALL_GRAPHVIZ = (
    "the Graphviz `dot` program is not on PATH; install Graphviz (Debian/Ubuntu: "
    "`apt-get install graphviz`, macOS: `brew install graphviz`, others: "
    "https://graphviz.org/download/), or write DOT text with `-o FILE.dot`, which always works"
)


def add_subcommands(subparsers: Any) -> None:
    """Add `dump` and `viz` to a `graphc` subparsers object (handler= each)."""
    dump = subparsers.add_parser("dump", help="print a stage of compilation as text, JSON or "
                                              "DOT")
    _model_args(dump)
    dump.add_argument("--format", choices=sorted(FORMATS), default="text",
                      help="output format of graph stages (default: text)")
    dump.add_argument("--pipeline", default=None,
                      help="comma-separated passes (default: the default pipeline)")
    dump.add_argument("--print-after", action="append", default=[], metavar="PASS",
                      help="also print the graph after this pass (repeatable)")
    dump.add_argument("--print-after-all", action="store_true",
                      help="also print the graph after every pass")
    dump.add_argument("--stats", action="store_true",
                      help="print per-pass statistics (nodes before/after, time, rule hits)")
    dump.add_argument("--explain", action="store_true",
                      help="with --stage fused: say why each unfused pair was not fused; "
                           "with --stage optimized: why each quantize/dequantize pair, and "
                           "each integer matmul or convolution (ONNX MatMulInteger, "
                           "ConvInteger), was not put on an int8 kernel")
    dump.add_argument("--optimized-ir", action="store_true",
                      help="with --stage llvm: the IR after LLVM's optimizer")
    dump.set_defaults(handler=_dump)

    viz = subparsers.add_parser(
        "viz", help="draw a stage: the graph, the fused kernels or the memory plan (.dot "
                    "always; .svg/.png need Graphviz, except the memory plan's .svg)")
    _model_args(viz, stages=VIZ_STAGES)
    viz.add_argument("-o", "--output", required=True, metavar="FILE",
                     help=f"output file: {', '.join(VIZ_SUFFIXES)}")
    viz.set_defaults(handler=_viz)


def _model_args(parser: argparse.ArgumentParser, stages: tuple[str, ...] = STAGES) -> None:
    parser.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    add_dim_argument(parser)
    # Every stage is a choice (viz explains why it cannot draw llvm or asm); the help lists
    # the stages the command shows.
    parser.add_argument("--stage", choices=list(STAGES), default="input",
                        metavar="{" + ",".join(stages) + "}",
                        help="which stage of compilation to show (default: input)")
    parser.add_argument("--signature", default=None, metavar="NAME",
                        help="the signature to compile (default: the only one, or all sinks)")
    # The options that change code, as `graphc compile` spells them: the stages shown are
    # those `gc.compile` runs with the same options.
    parser.add_argument("-O", dest="opt_level", type=int, choices=range(4), default=2,
                        help="LLVM optimization level (default 2)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="worker threads of the code (default: as gc.compile, one per "
                             "core)")
    parser.add_argument("--conv-algorithm", choices=CONV_ALGORITHMS, default="auto",
                        help="how convolutions are computed (default auto: per layer)")


def _lowered(args: argparse.Namespace, stage: str) -> Lowered:
    """Run the pipeline on MODEL up to `stage` with the options the flags give."""
    graph = load_model(args.model, args.dim)
    options = replace(
        DEFAULT_OPTIONS,
        pipeline=getattr(args, "pipeline", None),
        print_after=tuple(getattr(args, "print_after", ()) or ()),
        print_after_all=bool(getattr(args, "print_after_all", False)),
        print_stream=sys.stdout,
        opt_level=args.opt_level,
        threads=args.threads,
        conv_algorithm=args.conv_algorithm,
    )
    sig = select_signature(graph, args.signature)
    return lower(graph, sig, options, "llvm" if stage == "asm" else stage)


def _dump(args: argparse.Namespace) -> int:
    stage = args.stage
    if stage not in GRAPH_STAGES and args.format != "text":
        raise UsageError(f"--format {args.format} applies to graph stages "
                         f"({', '.join(GRAPH_STAGES)}); stage {stage!r} prints text")
    stages = _lowered(args, stage)
    out = sys.stdout
    if stage == "input":
        out.write(FORMATS[args.format](stages.graph))
    elif stage == "optimized":
        assert stages.optimized is not None
        out.write(FORMATS[args.format](stages.optimized))
        if args.explain:
            out.write("\nquantize/dequantize pairs not folded (dequantize -/-> consumer: "
                      "reason):\n" + ("\n".join(qdq.explain(stages.graph)) or "none") + "\n")
            out.write("\ninteger matmuls and convolutions not on the int8 GEMM (node: "
                      "reason):\n" + ("\n".join(integer_matmul.explain(stages.optimized))
                                       or "none") + "\n")
    elif stage == "fused":
        assert stages.fused is not None
        out.write(stages.fused.format() + "\n")
        if args.explain:
            out.write("\nunfused edges (producer -/-> consumer: reason):\n")
            out.write(stages.fused.explain() + "\n")
    elif stage == "planned":
        assert stages.plan is not None
        out.write(stages.plan.format() + "\n")
    elif stage == "llvm" and not args.optimized_ir:
        out.write(stages.ir_text)
    elif stage == "llvm":
        out.write(optimized_ir(stages.ir_text, stages.target, stages.settings.opt_level))
    else:
        out.write(emit_assembly(stages.ir_text, stages.target, stages.settings.opt_level))
    if args.stats and stages.report is not None:
        out.write("\n" + stages.report.format_table())
    elif args.stats:
        out.write("\n(--stats: no passes run at stage 'input')\n")
    out.flush()
    return 0


def _viz(args: argparse.Namespace) -> int:
    out = Path(args.output)
    suffix = out.suffix.lower()
    if suffix not in VIZ_SUFFIXES:
        raise UsageError(f"cannot write {out.name!r}: the output must end in "
                         f"{', '.join(VIZ_SUFFIXES)}")
    fmt = VIZ_SUFFIXES[suffix]
    if args.stage not in VIZ_STAGES:
        raise UsageError(f"viz draws stages {', '.join(VIZ_STAGES)}; stage {args.stage!r} is "
                         f"text: print it with `graphc dump MODEL --stage {args.stage}`")
    direct_svg = args.stage == "planned" and fmt == "svg"  # drawn here, without Graphviz
    dot_exe = shutil.which("dot") if fmt is not None and not direct_svg else None
    if fmt is not None and not direct_svg and dot_exe is None:
        raise GraphcError(INSTALL_GRAPHVIZ)  # before compiling: fail fast
    stages = _lowered(args, args.stage)
    if args.stage == "planned":
        assert stages.plan is not None
        if direct_svg:
            _write(out, plan_to_svg(stages.plan).encode())
            return 0
        text = plan_to_dot(stages.plan)
    elif args.stage == "fused":
        assert stages.fused is not None
        text = fused_to_dot(stages.fused)
    else:
        graph = stages.optimized if args.stage == "optimized" else stages.graph
        assert graph is not None
        text = to_dot(graph)
    if fmt is None:
        data = text.encode()
    else:
        assert dot_exe is not None
        # The memory plan's boxes carry fixed positions: lay them out with neato -n.
        layout = ["-Kneato", "-n"] if args.stage == "planned" else []
        done = subprocess.run([dot_exe, *layout, f"-T{fmt}"], input=text.encode(),
                              capture_output=True, check=False)
        if done.returncode != 0:
            raise GraphcError(f"Graphviz `dot -T{fmt}` failed (exit {done.returncode}): "
                              f"{done.stderr.decode(errors='replace').strip()}")
        data = done.stdout
    _write(out, data)
    return 0


def _write(out: Path, data: bytes) -> None:
    try:
        atomic_write(out, lambda f: f.write(data))
    except OSError as exc:
        raise GraphcError(f"cannot write {out}: {exc.strerror or exc}") from None
    print(f"wrote {out}", file=sys.stderr)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "dump": _dump,
    "viz": _viz,
}
