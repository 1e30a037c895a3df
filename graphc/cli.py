"""The `graphc` command: inspect graphs and the op registry.

    graphc dump MODEL [--format text|json|dot] [--stage input]
    graphc viz MODEL -o FILE.{dot,svg,png} [--stage input]
    graphc ops [--list]

MODEL is a saved graph (a `.gcg` file) or ``path/to/file.py:function``: the file is imported
from its path and the function called with no arguments; it must return a `gc.Graph`.

Exit codes: 0 success, 1 a `GraphcError` (bad model, bad file, missing tool), 2 bad usage.
Errors print ``graphc: error: ...`` on stderr, without a traceback: they are the user's to
fix, not graphc's bugs.

Stages and formats are tables (`STAGES`, `FORMATS`): a later stage (optimized, fused,
planned, ...) is one entry mapping a graph to its form after that stage.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from graphc.dot import to_dot
from graphc.errors import GraphcError
from graphc.fileio import atomic_write
from graphc.ir import Graph
from graphc.ops import registry
from graphc.serialize import dumps_json, load
from graphc.textir import format_graph

__all__ = ["FORMATS", "STAGES", "load_model", "main"]

# stage name -> the graph after that stage. "input" is the graph as the user built it.
STAGES: dict[str, Callable[[Graph], Graph]] = {"input": lambda g: g}
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


class UsageError(Exception):
    """Bad command-line usage (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises UsageError instead of printing and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}\n{self.format_usage().rstrip()}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="graphc", description="graphc: a static-graph deep-learning "
                     "compiler for the CPU.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    dump = sub.add_parser("dump", help="print a graph as text IR, JSON or DOT")
    _model_args(dump)
    dump.add_argument("--format", choices=sorted(FORMATS), default="text",
                      help="output format (default: text)")

    viz = sub.add_parser("viz", help="draw a graph (.dot always; .svg/.png need Graphviz)")
    _model_args(viz)
    viz.add_argument("-o", "--output", required=True, metavar="FILE",
                     help=f"output file: {', '.join(VIZ_SUFFIXES)}")

    ops = sub.add_parser("ops", help="the op registry")
    ops.add_argument("--list", action="store_true",
                     help="list every op (the default)")
    return parser


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL",
                        help="a saved graph (.gcg) or path/to/file.py:function")
    parser.add_argument("--stage", choices=list(STAGES), default="input",
                        help="which form of the graph (default: input)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return the exit code (0 ok, 1 GraphcError, 2 usage)."""
    try:
        args = build_parser().parse_args(argv)
        return _COMMANDS[args.command](args)
    except UsageError as exc:
        return _fail(str(exc), 2)
    except GraphcError as exc:
        return _fail(str(exc), 1)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except BrokenPipeError:  # `graphc dump ... | head`
        return 0


def _fail(message: str, code: int) -> int:
    print(f"graphc: error: {message}", file=sys.stderr)
    return code


def _dump(args: argparse.Namespace) -> int:
    graph = STAGES[args.stage](load_model(args.model))
    sys.stdout.write(FORMATS[args.format](graph))
    sys.stdout.flush()
    return 0


def _viz(args: argparse.Namespace) -> int:
    out = Path(args.output)
    suffix = out.suffix.lower()
    if suffix not in VIZ_SUFFIXES:
        raise UsageError(f"cannot write {out.name!r}: the output must end in "
                         f"{', '.join(VIZ_SUFFIXES)}")
    fmt = VIZ_SUFFIXES[suffix]
    dot_exe = shutil.which("dot") if fmt is not None else None
    if fmt is not None and dot_exe is None:
        raise GraphcError(INSTALL_GRAPHVIZ)
    text = to_dot(STAGES[args.stage](load_model(args.model)))
    if fmt is None:
        data = text.encode()
    else:
        assert dot_exe is not None
        done = subprocess.run([dot_exe, f"-T{fmt}"], input=text.encode(), capture_output=True,
                              check=False)
        if done.returncode != 0:
            raise GraphcError(f"Graphviz `dot -T{fmt}` failed (exit {done.returncode}): "
                              f"{done.stderr.decode(errors='replace').strip()}")
        data = done.stdout
    try:
        atomic_write(out, lambda f: f.write(data))
    except OSError as exc:
        raise GraphcError(f"cannot write {out}: {exc.strerror or exc}") from None
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _ops(args: argparse.Namespace) -> int:
    rows = [("NAME", "FAMILY", "ARITY", "FUSION", "GRAD", "DOC")]
    for op in registry.OPS.values():
        rows.append((op.name, op.family, "n" if op.arity is None else str(op.arity),
                     op.fusion.value, "yes" if op.differentiable else "no", op.doc))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths)]
        print("  ".join([*cells, row[-1]]).rstrip())
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "dump": _dump,
    "viz": _viz,
    "ops": _ops,
}


# --- MODEL ------------------------------------------------------------------------------------

def load_model(spec: str) -> Graph:
    """The graph named by MODEL: a `.gcg` file, or ``file.py:function`` called with no args.

    Raises UsageError for a MODEL that is neither, GraphcError when the file is missing or
    fails to import, the function is missing or fails, or returns something else than a Graph.
    """
    path_text, sep, func = spec.rpartition(":")
    if sep and path_text.endswith(".py"):
        return _graph_from_function(Path(path_text), func)
    if spec.endswith(".py"):
        raise UsageError(f"MODEL {spec!r} names a Python file but no function: "
                         f"write {spec}:FUNCTION")
    path = Path(spec)
    if path.suffix != ".gcg" and not path.is_file():
        raise UsageError(f"MODEL {spec!r} is neither a .gcg file nor path/to/file.py:function")
    return load(path)


def _graph_from_function(path: Path, func: str) -> Graph:
    if not func.isidentifier():
        raise UsageError(f"{func!r} after ':' in MODEL is not a function name")
    if not path.is_file():
        raise GraphcError(f"model file {path} does not exist")
    module_name = f"_graphc_model_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise GraphcError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    # Like `python file.py`: the file's folder is importable (for its sibling modules), and
    # the module is registered (dataclasses and pickle-free introspection look it up).
    sys.modules[module_name] = module
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        try:
            spec.loader.exec_module(module)
        except GraphcError:
            raise
        except (Exception, SystemExit) as exc:
            raise GraphcError(f"importing {path} failed: {_describe(exc, path)}") from None
        fn = getattr(module, func, None)
        if fn is None or not callable(fn):
            names = sorted(n for n, v in vars(module).items()
                           if callable(v) and getattr(v, "__module__", None) == module_name)
            raise GraphcError(f"{path} has no function {func!r} "
                              f"(functions: {', '.join(names) or 'none'})")
        try:
            graph = fn()
        except GraphcError:
            raise
        except (Exception, SystemExit) as exc:
            raise GraphcError(f"{path}:{func}() failed: {_describe(exc, path)}") from None
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    if not isinstance(graph, Graph):
        raise GraphcError(f"{path}:{func}() returned {type(graph).__name__}, not a gc.Graph")
    return graph


def _describe(exc: BaseException, path: Path) -> str:
    """``TypeError: message (at file.py:12)``: the innermost frame inside the user's file."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if Path(f.filename).resolve() == path.resolve()]
    at = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{at}"


if __name__ == "__main__":
    sys.exit(main())
