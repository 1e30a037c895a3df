"""`graphc compile`, `graphc info`, `graphc run`: exported libraries from the command line.

    graphc compile MODEL -o libNAME.so [--signature S | --inputs x,y --outputs a,b]
                   [--train] [--name NAME] [--weights embedded|external] [-O 0-3]
                   [--freeze] [--precision fp32|bf16 | --quantize dynamic|static
                    [--calibration DATA.npz] [--reduce-range]]
    graphc info libNAME.so|MODEL [--json]
    graphc run MODEL|libNAME.so --input x=file.npy ... [--output out.npz]
               [--signature S | --inputs ... --outputs ...] [--train]

MODEL is what `graphc dump` takes (a .gcg file or path/to/file.py:function;
`cli.command.load_model`).
What to compile from a MODEL: `--signature S`; or `--inputs`/`--outputs` node names
(`--train` adds the updates of the graph's training signature, the one with updates); or,
with neither, the graph's only signature, else its only inference signature (its only
training signature with `--train`).

`info` on a library reads its metadata from the file without loading it (so it works for
libraries built for other CPUs) and says whether this machine can run it.

`run` treats its ``--input`` files as untrusted: only regular files are opened (a FIFO or
/dev/zero is refused, never read), and each .npy header is checked against the file's size
and then against the type of the input it names, before any data is read or allocated
(so a header claiming 2**40 elements is an error message, not a MemoryError). All of this
happens before the model is compiled; every failure is a GraphcError (exit code 1).

Wiring: `add_subcommands(subparsers)` adds the three commands to `graphc`'s parser, each
with ``handler=`` set to its function in `COMMANDS`; `main_export(argv)` runs them alone
(``python -m graphc.cli.exported compile ...``) with `graphc`'s exit codes and error format.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import Any, BinaryIO

import numpy as np

from graphc.cli import quantize as quantize_cli
from graphc.cli.command import (
    MODEL_HELP,
    Parser,
    UsageError,
    add_dim_argument,
    load_model,
    run_command,
    selected_signature,
)
from graphc.cli.precision import PRECISIONS, with_precision
from graphc.compile import compile as compile_graph
from graphc.errors import GraphcError, SerializationError
from graphc.export.api import WEIGHTS_MODES, export
from graphc.io.atomic import atomic_write
from graphc.io.untrusted import NpyHeader, npy_array, open_regular_file, read_npy_header
from graphc.ir import Graph
from graphc.options import CONV_ALGORITHMS
from graphc.passes.freeze import freeze, weights
from graphc.pipeline import DEFAULT_OPTIONS
from graphc.runtime.arguments import TensorSpec, resolve_signature
from graphc.runtime.library import check_compatible, load, read_metadata

__all__ = ["COMMANDS", "add_subcommands", "main_export"]


def _names(text: str) -> list[str]:
    return [n for n in text.split(",") if n]


def _what_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--signature", metavar="NAME", help="the graph's signature to compile")
    p.add_argument("--inputs", type=_names, action="extend", metavar="NAMES",
                   help="input placeholder names, comma-separated (with --outputs)")
    p.add_argument("--outputs", type=_names, action="extend", metavar="NAMES",
                   help="output node names, comma-separated")
    p.add_argument("--train", action="store_true",
                   help="compile the training step (the signature with variable updates)")


def add_subcommands(subparsers: Any) -> None:
    """Add `compile`, `info` and `run` to a `graphc` subparsers object (handler= each)."""
    c = subparsers.add_parser("compile", help="export a model as a shared library + C header")
    c.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    add_dim_argument(c)
    c.add_argument("-o", "--output", required=True, metavar="libNAME.so",
                   help="the library to write (NAME.h is written beside it)")
    _what_args(c)
    c.add_argument("--name", help="the C prefix NAME (default: from the output file name)")
    c.add_argument("--weights", choices=WEIGHTS_MODES, default="embedded",
                   help="embed the weights (default) or write NAME.bin beside the library")
    c.add_argument("-O", dest="opt_level", type=int, choices=range(4), default=2,
                   help="LLVM optimization level (default 2)")
    c.add_argument("--threads", type=int, default=None, metavar="N",
                   help="worker threads of the library (default 1: no background threads)")
    c.add_argument("--conv-algorithm", choices=CONV_ALGORITHMS, default="auto",
                   help="how convolutions are computed (default auto: per layer)")
    c.add_argument("--freeze", action="store_true",
                   help="store the trained weights as constants (gc.freeze): fixed in the "
                        "library and kept in the kernels' layouts; not with --train or "
                        "--weights external")
    c.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16: gc.autocast the matmuls (bf16 weights, f32 accumulation)")
    quantize_cli.add_arguments(c)
    c.set_defaults(handler=_compile)

    i = subparsers.add_parser("info", help="print the metadata of a library or a model")
    i.add_argument("target", metavar="libNAME.so|MODEL")
    add_dim_argument(i)
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(handler=_info)

    r = subparsers.add_parser("run", help="run a model or a library on .npy inputs")
    r.add_argument("target", metavar="MODEL|libNAME.so")
    add_dim_argument(r)
    r.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                   help="an input by name (repeat for each)")
    r.add_argument("--output", metavar="OUT.npz", help="write the outputs here (else print)")
    _what_args(r)
    r.set_defaults(handler=_run)


def main_export(argv: Sequence[str] | None = None) -> int:
    """Run one of these commands alone; exit code 0 ok, 1 GraphcError, 2 usage."""
    parser = Parser(prog="graphc", description="graphc: exported libraries")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    add_subcommands(sub)
    return run_command(parser, argv, COMMANDS)


# --- what to compile -------------------------------------------------------------------------

def select(graph: Graph, args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of `gc.compile`/`gc.export` that the flags ask for."""
    if args.signature is not None:
        if args.inputs or args.outputs:
            raise UsageError("give --signature or --inputs/--outputs, not both")
        return {"signature": args.signature}
    sigs = graph.signatures
    if args.inputs is not None or args.outputs is not None:
        if not args.outputs:
            raise UsageError("--inputs needs --outputs (the node names to compute)")
        kwargs: dict[str, Any] = {"inputs": [graph[n] for n in args.inputs or []],
                                  "outputs": [graph[n] for n in args.outputs]}
        if args.train:
            kwargs["updates"] = sigs[_one(graph, train=True)].updates
        return kwargs
    if len(sigs) == 1 and not args.train:
        return {"signature": next(iter(sigs))}
    return {"signature": _one(graph, train=args.train)}


def _one(graph: Graph, *, train: bool) -> str:
    found = [n for n, s in graph.signatures.items() if bool(s.updates) == train]
    if len(found) == 1:
        return found[0]
    kind = "training (with updates)" if train else "inference (without updates)"
    listed = ", ".join(sorted(graph.signatures)) or "none"
    raise UsageError(f"graph {graph.name!r} has {len(found)} {kind} signatures (signatures: "
                     f"{listed}): choose one with --signature or give --inputs/--outputs")


def _is_library(spec: str) -> bool:
    """Whether `spec` is a regular file starting like an ELF shared library.

    Only a regular file is opened (a FIFO named like a model must not block this check).
    """
    try:
        with open_regular_file(spec) as f:
            return f.read(4) == b"\x7fELF"
    except (OSError, SerializationError):
        return False


# --- commands --------------------------------------------------------------------------------

def _compile(args: argparse.Namespace) -> int:
    # External weights are the model's own, replaceable without recompiling: variables.
    graph = load_model(args.model, args.dim, trainable=args.weights == "external")
    options = replace(DEFAULT_OPTIONS, opt_level=args.opt_level, threads=args.threads,
                      conv_algorithm=args.conv_algorithm)
    if args.quantize is not None and args.precision != "fp32":
        raise UsageError("--quantize and --precision bf16 are exclusive: choose one")
    if args.freeze and args.train:
        raise UsageError("--freeze fixes the weights, which --train updates: choose one")
    if args.freeze and args.weights == "external":
        raise UsageError("--freeze stores the weights as constants in the library; "
                         "--weights external keeps them in NAME.bin: choose one")
    graph = quantize_cli.apply(graph, args, select(graph, args), options)
    graph, what = with_precision(graph, select(graph, args), args.precision)
    if args.freeze:  # last: autocast's bf16 weight copies keep the layout it chose
        graph, what = _frozen(graph, what)
    done = export(graph, args.output, **what, name=args.name,
                  weights=args.weights, options=options)
    for path in (done.library, done.header, done.weights):
        if path is not None:
            print(f"wrote {path}", file=sys.stderr)
    return 0


def _frozen(graph: Graph, what: dict[str, Any]) -> tuple[Graph, dict[str, Any]]:
    """(graph, export keyword arguments) for `--freeze`: the selected signature (a new one
    for --inputs/--outputs) kept and frozen. A training step is refused: its weights would
    stay variables, and the flag would do nothing."""
    name = selected_signature(graph, what, "frozen")
    names = {w.name for w in weights(graph)}
    trained = [v.name for v, _ in graph.signatures[name].updates if v.name in names]
    if trained:
        raise UsageError(f"--freeze: signature {name!r} trains weights ({', '.join(trained)}"
                         "), which freezing would fix; freeze an inference signature")
    return freeze(graph, signatures=[name]), {"signature": name}


def _info(args: argparse.Namespace) -> int:
    if _is_library(args.target):
        meta = read_metadata(args.target)
        if args.json:
            print(json.dumps(meta, indent=2, sort_keys=True))
            return 0
        print(_format_library(meta))
        try:
            check_compatible(meta, args.target)
            print("runs on this machine: yes")
        except GraphcError as exc:
            print(f"runs on this machine: no: {exc}")
        return 0
    graph = load_model(args.target, args.dim)
    summary = _graph_summary(graph)
    print(json.dumps(summary, indent=2) if args.json else _format_graph(summary))
    return 0


def _format_library(meta: dict[str, Any]) -> str:
    def port(e: dict[str, Any]) -> str:
        return f"{e['name']}: {e['dtype']}{e['shape']}"

    t, w = meta["target"], meta["weights"]
    lines = [
        f"library {meta['name']} (graph {meta.get('graph')!r}, signature "
        f"{meta.get('signature')!r}{', training step' if meta.get('trains') else ''})",
        f"  abi version {meta['abi_version']}, graphc {meta['graphc_version']}",
        f"  target {t.get('triple')} cpu {t.get('cpu')}",
        f"  inputs:  {', '.join(port(e) for e in meta['inputs']) or 'none'}",
        f"  outputs: {', '.join(port(e) for e in meta['outputs']) or 'none'}",
        f"  variables: {len(meta['variables'])}"
        + "".join(f"\n    {port(v)}{' (updated)' if v.get('updated') else ''}"
                  for v in meta["variables"]),
        f"  weights: {w.get('storage')}, {w.get('bytes')} bytes"
        + (f" in {w['file']}" if w.get("file") else ""),
        f"  context: {meta['context_bytes']} bytes",
        f"  entry points: {', '.join(sorted(meta['entry_points'].values()))}",
        f"  graph sha256 {meta.get('graph_sha256')}",
    ]
    return "\n".join(lines)


def _graph_summary(graph: Graph) -> dict[str, Any]:
    return {
        "graph": graph.name,
        "nodes": len(graph.nodes),
        "placeholders": {n.name: str(n.type) for n in graph.placeholders},
        "variables": {n.name: str(n.type) for n in graph.variable_nodes},
        "signatures": {
            name: {"inputs": [n.name for n in s.inputs], "outputs": [n.name for n in s.outputs],
                   "updates": [v.name for v, _ in s.updates]}
            for name, s in graph.signatures.items()
        },
    }


def _format_graph(summary: dict[str, Any]) -> str:
    lines = [f"graph {summary['graph']}: {summary['nodes']} nodes"]
    for kind in ("placeholders", "variables"):
        items = summary[kind]
        lines.append(f"  {kind}: " + (", ".join(f"{k}: {v}" for k, v in items.items())
                                      or "none"))
    for name, s in summary["signatures"].items():
        upd = f" updates {', '.join(s['updates'])}" if s["updates"] else ""
        lines.append(f"  signature {name}: ({', '.join(s['inputs'])}) -> "
                     f"({', '.join(s['outputs'])}){upd}")
    if not summary["signatures"]:
        lines.append("  signatures: none")
    return "\n".join(lines)


def _parse_input_specs(specs: Sequence[str]) -> list[tuple[str, str]]:
    """``NAME=FILE.npy`` arguments as (name, file) pairs; UsageError if malformed or repeated."""
    pairs: list[tuple[str, str]] = []
    for spec in specs:
        name, sep, file = spec.partition("=")
        if not sep or not name or not file:
            raise UsageError(f"--input {spec!r}: write NAME=FILE.npy")
        if any(name == n for n, _ in pairs):
            raise UsageError(f"--input {name!r} is given twice")
        pairs.append((name, file))
    return pairs


@dataclass
class _NpyInput:
    """An open ``--input`` file whose header has been checked against its size."""

    name: str
    file: str
    stream: BinaryIO
    header: NpyHeader

    def fail(self, what: str) -> GraphcError:
        return GraphcError(f"cannot read input {self.name!r}: {self.file} {what}")


def _open_input(name: str, file: str, stack: ExitStack) -> _NpyInput:
    """Open `file` (a regular file only) and check its .npy header against its size.

    Nothing is allocated from the header: an .npy file may claim any shape, and the size of
    what it claims must equal the bytes it holds. Raises GraphcError naming input and file.
    """
    try:
        stream = stack.enter_context(open_regular_file(file))
        header = read_npy_header(stream)
        size = os.fstat(stream.fileno()).st_size
    except OSError as exc:
        raise GraphcError(f"cannot read input {name!r} from {file}: "
                          f"{exc.strerror or exc}") from None
    except SerializationError as exc:
        raise GraphcError(f"cannot read input {name!r}: {file} {exc.message}") from None
    found = _NpyInput(name, file, stream, header)
    if size - header.offset != header.nbytes:
        raise found.fail(f"has {size - header.offset} bytes of data, a {header.describe()} "
                         f"array needs {header.nbytes} bytes")
    return found


def _check_input(found: _NpyInput, ports: Sequence[TensorSpec], target: str) -> None:
    """Check the header of `found` against the input it is for, before reading its data.

    The shape must be the input's; the dtype the input's (in any byte order), or, for an
    integer input, any integer dtype (the calling convention converts integers that fit).
    """
    port = next((p for p in ports if p.name == found.name), None)
    if port is None:
        names = ", ".join(p.name for p in ports) or "none"
        raise GraphcError(f"input {found.name!r}: {target} has no input named {found.name!r} "
                          f"(inputs: {names})")
    want = port.type
    have = found.header.dtype.newbyteorder("=")
    fits = have == want.dtype.np or (have.kind in "iu" and want.dtype.np.kind == "i")
    if found.header.shape != want.shape or not fits:
        raise found.fail(f"holds {found.header.describe()}, but input {found.name!r} is "
                         f"{want}" + ("" if fits else f" (convert it to {want.dtype.value})"))


def _read_input(found: _NpyInput) -> np.ndarray:
    """The data of a checked input (its size is the header's, checked on opening)."""
    try:
        found.stream.seek(found.header.offset)
        data = found.stream.read(found.header.nbytes)
        return npy_array(data, found.header)
    except OSError as exc:
        raise found.fail(f"cannot be read ({exc.strerror or exc})") from None
    except SerializationError as exc:  # the file changed size since it was opened
        raise found.fail(exc.message) from None


def _run(args: argparse.Namespace) -> int:
    specs = _parse_input_specs(args.input)
    library = _is_library(args.target)
    if library and (args.signature or args.inputs or args.outputs or args.train):
        raise UsageError("--signature/--inputs/--outputs/--train select what to compile "
                         "from a MODEL; a library runs what it was exported with")
    with ExitStack() as stack:
        # Headers first, so a bad input fails before a model is loaded or compiled; the
        # data last, once each header has matched its input's type.
        inputs = [_open_input(name, file, stack) for name, file in specs]
        if library:
            lib = load(args.target)
            ports: Sequence[TensorSpec] = lib.inputs
            what = f"library {args.target}"
        else:
            graph = load_model(args.target, args.dim)
            selection = select(graph, args)
            signature, _ = resolve_signature(
                graph, selection.get("inputs"), selection.get("outputs"),
                selection.get("updates"), selection.get("signature"))
            ports, what = signature.inputs, f"model {args.target}"
        for found in inputs:
            _check_input(found, ports, what)
        arrays = {found.name: _read_input(found) for found in inputs}
    if library:
        fn: Callable[..., Any] = lib
        names = lib.output_names
    else:
        exe = compile_graph(graph, **selection)
        fn, names = exe, [n.name for n in exe.signature.outputs]
    result = fn(**arrays)
    outputs = [result] if isinstance(result, np.ndarray) else list(result)
    if args.output:
        buf = io.BytesIO()
        np.savez(buf, **dict(zip(_unique(names), outputs)))
        try:
            atomic_write(args.output, lambda f: f.write(buf.getvalue()))
        except OSError as exc:
            raise GraphcError(f"cannot write {args.output}: {exc.strerror or exc}") from None
        print(f"wrote {args.output}", file=sys.stderr)
        return 0
    for name, value in zip(names, outputs):
        print(f"{name}: {value.dtype}{list(value.shape)}")
        print(np.array2string(value, threshold=10_000, max_line_width=100))
    return 0


def _unique(names: Sequence[str]) -> list[str]:
    """npz keys: an output listed twice gets a suffix."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return out


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "compile": _compile,
    "info": _info,
    "run": _run,
}

if __name__ == "__main__":
    sys.exit(main_export())
