"""The `graphc` command: inspect graphs at every stage of compilation, and the registries.

    graphc dump MODEL [--stage input|optimized|fused|planned|llvm|asm] [--format text|json|dot]
                      [--signature NAME] [--pipeline P] [--print-after PASS]
                      [--print-after-all] [--stats] [--explain] [--optimized-ir]
    graphc viz MODEL -o FILE.{dot,svg,png} [--stage input|optimized|fused|planned]
    graphc ops [--list]
    graphc passes [--list]
    graphc mpi                        (under mpiexec: which MPI, this rank, how many ranks)
    graphc compile | info | run ...   (exported libraries: see `exported.py`)
    graphc convert MODEL OUT.gcg|OUT.onnx [--dim NAME=SIZE ...] [--signature S] [--opset N]

MODEL is a saved graph (a `.gcg` file), an ONNX model (`.onnx`; `--dim NAME=SIZE` binds its
symbolic dimensions) or ``path/to/file.py:function``: the file is imported from its path and
the function called with no arguments; it must return a `gc.Graph`.
`--signature` picks what to compile (default: the only signature, else every placeholder as
input and every sink as output). `viz --stage fused` draws each kernel as a cluster and
labels every unfused edge with the reason; `viz --stage planned -o FILE.svg` draws the
memory plan without Graphviz (see `stages.py`).

Exit codes: 0 success, 1 a `GraphcError` (bad model, bad file, missing tool), 2 bad usage.
Errors print ``graphc: error: ...`` on stderr, without a traceback: they are the user's to
fix, not graphc's bugs.

This module assembles the parser and runs `ops` and `passes`; `stages.py` (dump, viz) and
`exported.py` (compile, info, run) each provide `add_subcommands` and `COMMANDS`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from graphc import comm
from graphc.cli.command import (
    MODEL_HELP,
    Parser,
    UsageError,
    add_dim_argument,
    load_model,
    run_command,
)
from graphc.cli.exported import COMMANDS as EXPORT_COMMANDS
from graphc.cli.exported import add_subcommands as add_export_commands
from graphc.cli.stages import COMMANDS as STAGE_COMMANDS
from graphc.cli.stages import FORMATS, STAGES
from graphc.cli.stages import add_subcommands as add_stage_commands
from graphc.errors import GraphcError
from graphc.io.gcg import save
from graphc.ops import registry
from graphc.passes.manager import format_pass_list

__all__ = ["FORMATS", "STAGES", "build_parser", "load_model", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="graphc", description="graphc: a static-graph deep-learning "
                     "compiler for the CPU.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    add_stage_commands(sub)
    ops = sub.add_parser("ops", help="the op registry")
    ops.add_argument("--list", action="store_true",
                     help="list every op (the default)")
    passes = sub.add_parser("passes", help="the pass registry and the default pipeline")
    passes.add_argument("--list", action="store_true", help="list every pass (the default)")
    sub.add_parser("mpi", help="the MPI library and ranks found (run it under mpiexec)")
    add_export_commands(sub)
    convert = sub.add_parser("convert", help="save MODEL as a .gcg graph or an .onnx model")
    convert.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    convert.add_argument("output", metavar="OUT.gcg|OUT.onnx", help="the file to write")
    add_dim_argument(convert)
    convert.add_argument("--signature", default=None, metavar="NAME",
                         help="the signature written to ONNX (default: main, or the only one)")
    convert.add_argument("--opset", type=int, default=17, help="the ONNX opset (17-21)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return the exit code (0 ok, 1 GraphcError, 2 usage)."""
    return run_command(build_parser(), argv, _COMMANDS)


def _ops(args: argparse.Namespace) -> int:
    rows = [("NAME", "FAMILY", "ARITY", "FUSION", "GRAD", "ATTRS", "DOC")]
    for op in registry.OPS.values():
        rows.append((op.name, op.family, "n" if op.arity is None else str(op.arity),
                     op.fusion.value, "yes" if op.differentiable else "no",
                     ",".join(a.name for a in op.attrs) or "-", op.doc))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths)]
        print("  ".join([*cells, row[-1]]).rstrip())
    return 0


def _convert(args: argparse.Namespace) -> int:
    graph = load_model(args.model, args.dim, trainable=True)
    if args.output.endswith(".gcg"):
        save(graph, args.output)
        return 0
    if not args.output.endswith(".onnx"):
        raise UsageError(f"OUT {args.output!r} must end in .gcg or .onnx")
    names = list(graph.signatures)
    signature = args.signature or ("main" if "main" in names else
                                   names[0] if len(names) == 1 else None)
    if signature is None:
        raise GraphcError(f"the model has signatures {', '.join(names) or 'none'}; pick one "
                          "with --signature")
    from graphc.onnx import save as save_onnx

    save_onnx(graph, args.output, signature=signature, opset=args.opset)
    return 0


def _mpi(args: argparse.Namespace) -> int:
    # Initializes MPI when mpi4py is present, as a training script's gc.distributed.init does.
    world = comm.init()
    if world.comm is None:
        print("MPI: none (mpi4py is not installed: pip install 'graphc[distributed]'); "
              "a world of one process")
    else:
        print(f"MPI: {world.library}; rank {world.rank} of {world.size}")
    return 0


def _passes(args: argparse.Namespace) -> int:
    sys.stdout.write(format_pass_list())
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    **STAGE_COMMANDS,
    "ops": _ops,
    "passes": _passes,
    "mpi": _mpi,
    "convert": _convert,
    **EXPORT_COMMANDS,
}

