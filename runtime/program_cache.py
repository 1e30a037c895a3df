"""A second, earlier level of the compile cache: optimized graph -> machine code.

The object cache of `runtime.jit` is keyed by LLVM IR, so a hit still pays for generating
that IR in Python (most of a cached compile). This cache is keyed by what the IR is a
function of: the optimized graph's text IR (which includes its signature and the values of
small constants; large constants and variables are passed by pointer), the target, the
options that change code (opt level, threads, profiling), and a fingerprint of the code
generator's own source files, so that editing graphc can never return stale code.

An entry is a `runtime.jit` cache entry (so verified the same way before LLVM sees a byte)
with stem `<key>.prog`: the object `<key>.prog.o` and the record `<key>.prog.json`, whose
fields beyond the common ones are the entry point's layout:

    {"format": "graphc.program/3", "key": ..., "object_sha256": ..., "object_bytes": ...,
     "entry": "graphc_entry", "table": [["input", 0], ..., ["variable", "w1"], ...,
     ["arena", 0]], "arena_bytes": <int>, "scratch_offset": <int>,
     "libraries": ["<object-cache key>:<function>", ...], "parts": ["<object-cache key>", ...],
     "record_sha256": ...}

`libraries` are the shared GEMM functions the object declares, each with the object-cache
key of its library object (`runtime.kernel_library`); `parts` are the object-cache keys of
the modules a concurrent compile split off the program (`runtime.program_split`). A hit
needs every one of them, from this process or from the object cache, or it is a miss.

The layout is trusted by the Executable (table order, arena size) and by the machine code
(which reads the table and writes the arena up to `arena_bytes`), so `load` demands that it
be exactly the layout the caller's memory plan implies (`expected_layout`), not merely
well-formed.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import graphc.codegen as codegen
import graphc.ir as ir
import graphc.ops as ops
import graphc.passes as passes
from graphc._version import __version__
from graphc.codegen.module import ENTRY, TableEntry, arena_layout
from graphc.codegen.target import Target
from graphc.io.textir import format_graph
from graphc.ir import Graph
from graphc.passes.memory_plan import MemoryPlan
from graphc.runtime.jit import canonical_json, read_entry, write_entry

# The sources the generated code is a function of: these packages (wherever they are
# installed: passes/ and runtime/ sit beside graphc/ in an editable install, inside it
# otherwise), the stage sequence and the JIT.
_CODEGEN_PACKAGES = (codegen, ir, ops, passes)
_CODEGEN_FILES = (Path(ir.__file__).resolve().parent.parent / "pipeline.py",
                  *(Path(__file__).resolve().parent / name
                    for name in ("jit.py", "kernel_library.py", "ir_text.py",
                                 "program_split.py", "parallel_llvm.py")))

# The record format of this cache; a record of any other format is a miss.
FORMAT = "graphc.program/3"

# The layout fields of a record and their JSON types (`runtime.jit.read_entry` checks them).
_LAYOUT_FIELDS: dict[str, type] = {"entry": str, "table": list, "arena_bytes": int,
                                   "scratch_offset": int}
_FIELDS: dict[str, type] = {**_LAYOUT_FIELDS, "libraries": list, "parts": list}
_LIBRARY = re.compile(r"[0-9a-f]{64}:graphc\.gemm\.[\w.]+")
_PART = re.compile(r"[0-9a-f]{64}")


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


def _region_constants(graph: Graph) -> str:
    """sha256 over the values of the constants inside `graph`'s regions (loop bodies and
    branches, at any depth), which `codegen.body_call` compiles into the code as globals."""
    h = hashlib.sha256()

    def visit(g: Graph, top: bool) -> None:
        for node in g.nodes:
            if node.op == "constant" and not top:
                value = np.ascontiguousarray(g.constants[node.name])
                h.update(f"%{node.name}:{value.dtype.str}:{value.shape}".encode())
                h.update(value.tobytes())
            for region in node.regions:
                visit(region.graph, False)

    visit(graph, True)
    return h.hexdigest()


def program_key(graph: Graph, target: Target, settings: str) -> str:
    """The key of an optimized graph compiled for `target` with code-changing `settings`
    (`pipeline.CodegenSettings.key`: every option that changes the generated code)."""
    h = hashlib.sha256()
    # Without source locations: the code does not depend on them (errors found at run
    # time are reported from the graph the executable holds), and a graph built again
    # from another line of a script (an import in a loop) hits the same entry. The text
    # shows constants of up to `INLINE_LIMIT` elements; larger ones at the top level are
    # passed by pointer, but a region's are compiled into the code: their bytes count.
    for part in (format_graph(graph, locations=False), _region_constants(graph), target.key,
                 settings, codegen_fingerprint()):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def expected_layout(plan: MemoryPlan, target: Target, threads: int, conv: str,
                    entry: str = ENTRY) -> Layout:
    """The layout `codegen.module.build_module` gives `plan` with these settings (both use
    `codegen.module.arena_layout`)."""
    arena = arena_layout(plan, target, threads, conv)
    return Layout(entry, arena.table, arena.arena_bytes, arena.scratch_offset)


@dataclass(frozen=True)
class Hit:
    """A verified entry: the main object, its libraries ("key:function") and parts (keys)."""

    obj: bytes
    libraries: tuple[str, ...]
    parts: tuple[str, ...]


def load(cache_dir: Path, key: str, expected: Layout) -> Hit | None:
    """The cached object for `key` and the keys of the objects it is loaded with, if its
    entry verifies and records exactly `expected`; None otherwise (missing, damaged, another
    key's or another layout's entry: a miss)."""
    hit = read_entry(cache_dir, f"{key}.prog", FORMAT, key, _FIELDS)
    if hit is None:
        return None
    obj, record = hit
    recorded = {name: record[name] for name in _LAYOUT_FIELDS}
    # Compared as canonical JSON text, so types must match too (`true` is not 1).
    if canonical_json(recorded) != canonical_json(_fields(expected)):
        return None
    libraries, parts = record["libraries"], record["parts"]
    if not all(type(k) is str and _LIBRARY.fullmatch(k) for k in libraries):
        return None
    if not all(type(k) is str and _PART.fullmatch(k) for k in parts):
        return None
    if len(set(parts)) != len(parts):
        return None  # loading one object twice defines its symbols twice
    return Hit(obj, tuple(libraries), tuple(parts))


def store(cache_dir: Path, key: str, obj: bytes, layout: Layout,
          libraries: Sequence[str] = (), parts: Sequence[str] = ()) -> None:
    """Write the entry for `key` atomically, replacing any entry there (errors ignored)."""
    write_entry(cache_dir, f"{key}.prog", {"format": FORMAT, "key": key, **_fields(layout),
                                           "libraries": list(libraries), "parts": list(parts)},
                obj)


def _fields(layout: Layout) -> dict[str, Any]:
    """The record fields of `layout` (JSON values)."""
    return {"entry": layout.entry, "arena_bytes": layout.arena_bytes,
            "scratch_offset": layout.scratch_offset,
            "table": [[e.space.value, e.key] for e in layout.table]}
