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
from typing import NoReturn

from graphc.errors import GraphcError
from graphc.io.gcg import load
from graphc.ir import Graph

__all__ = ["Parser", "UsageError", "fail", "load_model", "run_command"]


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
