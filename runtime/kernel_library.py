"""The GEMM kernel library: shared GEMM functions compiled once per process, not per graph.

A module's shared GEMM functions (`codegen/gemm/kernels.py`: micro-kernels, packers, tile
stores; `linkonce_odr hidden`, named `graphc.gemm.*` after their specialisation) are the same
text in every graph that uses them, and they cost about a third of a cold compile's LLVM
time (an MLP training step: ~160 of ~370 ms on one core). So `split_module` moves each one
into a module of its own (its "library module"), leaving a declaration in the program.
Each library module is compiled once per process (and stored in the object cache, keyed
like any object by its text, target and opt level); every engine then loads the program's
object next to the library objects it declares, and MCJIT resolves the calls between them.
A library module is self-contained: the declarations of the intrinsics it calls and its
own metadata, renumbered from !0, so its text does not depend on the graph it came from.

Like XLA's CPU runtime calling precompiled Eigen kernels, a second graph in a process (an
evaluation graph beside a training step, a generator's prefill and decode graphs, a model
compiled again after an edit) pays only for its own kernels.

Exports (`gc.export`) and `graphc dump` keep compiling the whole module: a shared library
must be self-contained and the dumps show what the graph generated.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from graphc.codegen.target import Target
from graphc.errors import CompileError
from graphc.runtime.ir_text import (
    declarations,
    definitions,
    metadata_nodes,
    references,
    renumbered_metadata,
)
from graphc.runtime.ir_text import header as ir_text_header
from graphc.runtime.jit import (
    CompileStats,
    JitModule,
    cache_key,
    defines,
    link_objects,
    load_cached_object,
    load_object,
    read_entry,
    store_cached_object,
    write_entry,
)
from graphc.runtime.parallel_llvm import compile_objects
from graphc.runtime.program_split import part_count, split_program

_SHARED_START = "\ndefine linkonce_odr hidden "


@dataclass(frozen=True)
class LibraryModule:
    """One shared function as a module of its own; `key` is its object-cache key."""

    name: str
    text: str
    key: str


@dataclass(frozen=True)
class SplitModule:
    """A module's program part (shared functions declared, not defined) and its library."""

    program: str
    library: tuple[LibraryModule, ...]


def split_module(ir_text: str, target: Target, opt_level: int) -> SplitModule:
    """Move every self-contained shared GEMM function of `ir_text` into a library module.

    A shared function stays in the program if its body refers to anything but functions
    declared in `ir_text` (intrinsics) and numbered metadata (a global constant, another
    shared function): its library object must load and be checked alone.
    """
    head = ir_text_header(ir_text)
    declared = declarations(ir_text)
    metadata = metadata_nodes(ir_text)
    pieces: list[str] = []
    library: list[LibraryModule] = []
    done = 0  # ir_text[:done] is in `pieces`
    for d in definitions(ir_text, _SHARED_START):
        if not d.name.startswith("graphc.gemm."):
            continue
        signature = d.head[len("linkonce_odr hidden "):]
        body = "define hidden " + ir_text[d.start + len(_SHARED_START):d.end] + "\n"
        text = _library_text(head, d.name, body, declared, metadata)
        if text is None:
            continue
        pieces += [ir_text[done:d.start], f"\ndeclare hidden {signature}"]
        done = d.end
        library.append(LibraryModule(d.name, text, cache_key(text, target, opt_level)))
    pieces.append(ir_text[done:])
    return SplitModule("".join(pieces), tuple(library))


def _library_text(head: str, name: str, body: str, declared: dict[str, str],
                  metadata: dict[int, str]) -> str | None:
    """The library module of one shared function, or None if it is not self-contained."""
    needed: list[str] = []
    for callee in sorted(references(body) - {name}):
        if callee not in declared:
            return None  # a global, or another shared function: not loadable alone
        needed.append(declared[callee])
    renumbered = renumbered_metadata(body, metadata)
    if renumbered is None:
        return None
    body, nodes = renumbered
    return head + "".join(line + "\n" for line in needed) + "\n" + body + nodes


def compile_program(ir_text: str, *, opt_level: int, cache_dir: Path | None, target: Target,
                    symbols: Sequence[str], workers: int = 1) -> JitModule:
    """A graph's module compiled and loaded: its shared GEMM functions as library objects
    (compiled in this process before, cached, or compiled now) and the rest split into
    modules for `workers` threads (`runtime.program_split.part_count`), each looked up in
    the object cache by its own text; whatever is missing is compiled on `workers` threads
    (`runtime.parallel_llvm`), stored, and everything loaded into one engine.
    `JitModule.libraries` and `JitModule.parts` name what was loaded beside the main object.

    A cached object that LLVM rejects or that leaves a call unresolved is a miss: the
    program's modules are then all compiled again and overwritten.
    """
    split = split_module(ir_text, target, opt_level)
    program = split_program(split.program, part_count(len(split.program), workers))
    pieces = [program.main, *program.parts]
    keys = [cache_key(text, target, opt_level) for text in pieces]
    stats = CompileStats()
    libs = {m.key: cached_library_object(m.key, m.name, target, opt_level, cache_dir)
            for m in split.library}
    cached = [load_cached_object(cache_dir, k) if cache_dir is not None else None
              for k in keys]
    missing_libs = [m for m in split.library if libs[m.key] is None]
    missing = [i for i, obj in enumerate(cached) if obj is None]
    objects = compile_objects([m.text for m in missing_libs] + [pieces[i] for i in missing],
                              target, opt_level, workers, stats)
    for m, obj in zip(missing_libs, objects):
        _keep_library_object(m, obj, cache_dir)
        libs[m.key] = obj
    stats.library_compiled = len(missing_libs)
    fresh = dict(zip(missing, objects[len(missing_libs):]))
    for i, obj in fresh.items():
        if cache_dir is not None:
            store_cached_object(cache_dir, keys[i], obj)
    stats.cache_hit = not missing
    lib_pairs = [(m.key, libs[m.key]) for m in split.library]

    def link(objs: list[bytes]) -> JitModule:
        jit = link_objects(objs[0], target, opt_level, keys[0], symbols, stats, lib_pairs,
                           list(zip(keys[1:], objs[1:])))
        jit.libraries = tuple(f"{m.key}:{m.name}" for m in split.library)
        jit.parts = tuple(keys[1:])
        return jit

    objs = [fresh[i] if i in fresh else cached[i] for i in range(len(pieces))]
    try:
        return link(objs)  # type: ignore[arg-type]  (every piece is fresh or cached)
    except CompileError:
        if len(fresh) == len(pieces):
            raise  # freshly compiled: not a damaged cache entry
    stats.cache_hit = False
    objs = compile_objects(pieces, target, opt_level, workers, stats)
    for key, obj in zip(keys, objs):
        if cache_dir is not None:
            store_cached_object(cache_dir, key, obj)
    return link(objs)


def load_program(obj: bytes, libraries: Sequence[str], parts: Sequence[str], target: Target,
                 opt_level: int, cache_dir: Path | None, symbols: Sequence[str]
                 ) -> JitModule | None:
    """A program-cache object loaded with the library objects `libraries` names
    ("key:function", as `compile_program` records them) and its parts (object-cache keys);
    None (a miss) if one of them is neither in this process nor in the object cache, or if
    LLVM rejects an object, a call is unresolved or `symbols` are missing."""
    part_pairs = []
    for key in parts:
        part = load_cached_object(cache_dir, key) if cache_dir is not None else None
        if part is None:
            return None
        part_pairs.append((key, part))
    pairs = []
    for entry in libraries:
        key, _, name = entry.partition(":")
        lib = cached_library_object(key, name, target, opt_level, cache_dir)
        if lib is None:
            return None
        pairs.append((key, lib))
    try:
        jit = load_object(obj, target, opt_level, symbols, pairs, part_pairs)
    except CompileError:
        return None
    jit.libraries = tuple(libraries)
    jit.parts = tuple(parts)
    return jit


# --- the process's library objects ----------------------------------------------------------

# Library objects by object-cache key (which covers text, target and opt level). Each is
# about 2-10 KB; a process holds one per specialisation it ever compiled.
_objects: dict[str, bytes] = {}
_lock = threading.Lock()

# The object cache stores a library object as `<key>.lib.o` with a record naming the one
# function it defines (so a program-cache hit can check what it links against).
LIBRARY_FORMAT = "graphc.library/1"


def _keep_library_object(module: LibraryModule, obj: bytes, cache_dir: Path | None) -> None:
    """Keep a freshly compiled library object in this process and in the object cache."""
    with _lock:
        _objects[module.key] = obj
    if cache_dir is not None:
        write_entry(cache_dir, f"{module.key}.lib",
                    {"format": LIBRARY_FORMAT, "key": module.key, "symbol": module.name}, obj)


def cached_library_object(key: str, name: str, target: Target, opt_level: int,
                          cache_dir: Path | None) -> bytes | None:
    """The library object of `name` stored under `key` in this process or in the object
    cache, or None. An object read from the cache must verify (`runtime.jit.read_entry`),
    name `name` and define it when loaded alone (library objects call only intrinsics, so
    they load alone): a program linked against it then never has an unresolved call, which
    LLVM's loader answers by aborting the process."""
    with _lock:
        obj = _objects.get(key)
    if obj is not None or cache_dir is None:
        return obj
    hit = read_entry(cache_dir, f"{key}.lib", LIBRARY_FORMAT, key, {"symbol": str})
    if hit is None or hit[1]["symbol"] != name or not defines(hit[0], target, opt_level, [name]):
        return None
    with _lock:
        _objects[key] = hit[0]
    return hit[0]


def forget_library_objects() -> None:
    """Drop this process's library objects (tests of cold compiles and of the cache)."""
    with _lock:
        _objects.clear()
