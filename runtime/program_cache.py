"""A second, earlier level of the compile cache: optimized graph -> machine code.

The object cache of `runtime.jit` is keyed by LLVM IR, so a hit still pays for generating
that IR in Python (most of a cached compile). This cache is keyed by what the IR is a
function of: the optimized graph's text IR (which includes its signature and the values of
small constants; large constants and variables are passed by pointer), the target, the
options that change code (opt level, threads, profiling), and a fingerprint of the code
generator's own source files, so that editing graphc can never return stale code.
An entry is the object file plus a small JSON record of the entry point's table layout.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import graphc.codegen as codegen
import graphc.ir as ir
import graphc.ops as ops
import graphc.passes as passes
from graphc._version import __version__
from graphc.codegen.module import TableEntry
from graphc.codegen.target import Target
from graphc.io.atomic import atomic_write
from graphc.io.textir import format_graph
from graphc.ir import Graph
from graphc.passes.memory_plan import Space

# The sources the generated code is a function of: these packages (wherever they are
# installed: passes/ and runtime/ sit beside graphc/ in an editable install, inside it
# otherwise), the stage sequence and the JIT.
_CODEGEN_PACKAGES = (codegen, ir, ops, passes)
_CODEGEN_FILES = (Path(ir.__file__).resolve().parent.parent / "pipeline.py",
                  Path(__file__).resolve().parent / "jit.py")


@dataclass(frozen=True)
class Layout:
    """What an Executable needs besides the machine code."""

    entry: str
    table: tuple[TableEntry, ...]
    arena_bytes: int
    scratch_offset: int


@functools.cache
def codegen_fingerprint() -> str:
    """sha256 over the code generator's source files (read once per process)."""
    h = hashlib.sha256(__version__.encode())
    files: list[Path] = []
    for package in _CODEGEN_PACKAGES:
        files += sorted(Path(package.__file__).resolve().parent.rglob("*.py"))
    for f in (*files, *_CODEGEN_FILES):
        if f.is_file():
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def program_key(graph: Graph, target: Target, settings: str) -> str:
    """The key of an optimized graph compiled for `target` with code-changing `settings`
    (`pipeline.CodegenSettings.key`: every option that changes the generated code)."""
    h = hashlib.sha256()
    for part in (format_graph(graph), target.key, settings, codegen_fingerprint()):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def load(cache_dir: Path, key: str) -> tuple[bytes, Layout] | None:
    """The cached object and layout for `key`, or None (a damaged entry is a miss)."""
    obj_file, meta_file = cache_dir / f"{key}.prog.o", cache_dir / f"{key}.prog.json"
    try:
        meta = json.loads(meta_file.read_text())
        layout = Layout(meta["entry"], tuple(TableEntry(Space(s), k) for s, k in meta["table"]),
                        int(meta["arena_bytes"]), int(meta["scratch_offset"]))
        return obj_file.read_bytes(), layout
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store(cache_dir: Path, key: str, obj: bytes, layout: Layout) -> None:
    """Write an entry (object first, then the record that makes it visible)."""
    meta = {"entry": layout.entry, "arena_bytes": layout.arena_bytes,
            "scratch_offset": layout.scratch_offset,
            "table": [[e.space.value, e.key] for e in layout.table]}
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(cache_dir / f"{key}.prog.o", lambda f: f.write(obj))
        atomic_write(cache_dir / f"{key}.prog.json", lambda f: f.write(json.dumps(meta).encode()))
    except OSError:
        pass  # a read-only or full cache directory must not break compilation
