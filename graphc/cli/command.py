"""What every `graphc` subcommand shares: usage errors, the parser class, MODEL loading.

Kept apart from `main.py` so the subcommand modules (`stages.py`, `exported.py`) and `main.py` all
import it without importing each other.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from graphc.errors import GraphcError
from graphc.io.gcg import load
from graphc.ir import Graph

__all__ = ["MODEL_HELP", "Parser", "UsageError", "add_dim_argument", "fail", "load_model",
           "parse_dims", "run_command", "selected_signature"]


class UsageError(Exception):
    """Bad command-line usage (exit code 2)."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises UsageError instead of printing and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}\n{self.format_usage().rstrip()}")


def fail(message: str, code: int) -> int:
    print(f"graphc: error: {message}", file=sys.stderr)
    return code


# --- MODEL ------------------------------------------------------------------------------------

MODEL_HELP = "a saved graph (.gcg), an ONNX model (.onnx) or path/to/file.py:function"


def add_dim_argument(parser: argparse.ArgumentParser) -> None:
    """`--dim NAME=SIZE`, repeatable: binds an ONNX model's symbolic dimension."""
    parser.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                        help="bind a symbolic dimension of an ONNX model (repeat for each)")


def parse_dims(specs: Sequence[str]) -> dict[str, int]:
    """{"batch": 8} from ["batch=8"]; UsageError for anything else."""
    dims: dict[str, int] = {}
    for spec in specs:
        name, sep, size = spec.partition("=")
        if not sep or not name or not size.strip().isdigit():
            raise UsageError(f"--dim {spec!r}: expected NAME=SIZE with a non-negative size")
        dims[name] = int(size)
    return dims


def load_model(spec: str, dims: Sequence[str] = (), *, trainable: bool = False) -> Graph:
    """The graph named by MODEL: a `.gcg` file, an `.onnx` model (symbolic dims bound by
    `dims`, "NAME=SIZE" each), or ``file.py:function`` called with no args.

    An ONNX model's float initializers become constants unless `trainable` (`convert`
    keeps them variables, to fine-tune the saved graph, and so does `compile --weights
    external`, whose NAME.bin holds the model's weights): the commands that compile, run,
    dump or draw it see what an inference runtime sees, so constant-weight rewrites
    (Winograd, prepacked convolution weights, folding) apply. Loaded with variables,
    ResNet-18 ran 1.5x slower on Zen 3.

    Raises UsageError for a MODEL that is none of these, GraphcError when the file is
    missing or fails to import, the function is missing or fails, or returns something else
    than a Graph.
    """
    if spec.endswith(".onnx"):
        from graphc.onnx import load as load_onnx

        return load_onnx(spec, dims=parse_dims(dims), trainable=trainable)
    if dims:
        raise UsageError("--dim applies to ONNX models (.onnx) only")
    path_text, sep, func = spec.rpartition(":")
    if sep and path_text.endswith(".py"):
        return _graph_from_function(Path(path_text), func)
    if spec.endswith(".py"):
        raise UsageError(f"MODEL {spec!r} names a Python file but no function: "
                         f"write {spec}:FUNCTION")
    path = Path(spec)
    if path.suffix != ".gcg" and not path.is_file():
        raise UsageError(f"MODEL {spec!r} is not a .gcg file, an .onnx model or "
                         "path/to/file.py:function")
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


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                commands: Mapping[str, Callable[[argparse.Namespace], int]]) -> int:
    """Parse `argv` and run its command; exit code 0 ok, 1 GraphcError, 2 usage."""
    try:
        args = parser.parse_args(argv)
        return commands[args.command](args)
    except UsageError as exc:
        return fail(str(exc), 2)
    except GraphcError as exc:
        return fail(str(exc), 1)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except BrokenPipeError:  # `graphc dump ... | head`
        return 0


def selected_signature(graph: Graph, what: Mapping[str, Any], base: str) -> str:
    """The name of the signature that `what` (`gc.compile`/`gc.export` keyword arguments,
    `exported.select`) selects: its "signature", or one added to `graph` for its
    inputs, outputs and updates, named `base` (then base_, base__, ... while taken)."""
    if "signature" in what:
        return str(what["signature"])
    name = base
    while name in graph.signatures:
        name += "_"
    graph.add_signature(name, what.get("inputs", []), what["outputs"], what.get("updates"))
    return name
