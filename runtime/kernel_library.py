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

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from graphc.codegen.target import Target
from graphc.errors import CompileError
from graphc.runtime.jit import (
    CompileStats,
    JitModule,
    cache_key,
    defines,
    jit_compile,
    load_object,
    optimize_and_emit,
    read_entry,
    write_entry,
)

# llvmlite prints a function as its header line, "{", the body and "}" on lines of their
# own; declarations one per line; numbered metadata after every function. The module is
# scanned with str.find for these line starts (full-text multiline regexes cost ~4 ms each
# on a 600 KB module).
_SHARED_START = "\ndefine linkonce_odr hidden "
_NAME = re.compile(r'@"([^"]+)"')
_METADATA = re.compile(r"^!(\d+) = ([^\n]*)$", re.M)
_GLOBAL_REF = re.compile(r'@"([^"]+)"|@([\w.$]+)')
_METADATA_REF = re.compile(r"!(\d+)\b")


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
    header = "".join(line + "\n" for line in ir_text.splitlines()[:4]
                     if line.startswith("target "))
    declarations = dict(_declarations(ir_text))
    first_metadata = ir_text.find("\n!")
    metadata = ({int(m.group(1)): m.group(2)
                 for m in _METADATA.finditer(ir_text, first_metadata + 1)}
                if first_metadata >= 0 else {})
    pieces: list[str] = []
    library: list[LibraryModule] = []
    done = 0  # ir_text[:done] is in `pieces`
    for start, end, head in _shared_functions(ir_text):
        name_match = _NAME.search(head)
        if name_match is None or not name_match.group(1).startswith("graphc.gemm."):
            continue
        name = name_match.group(1)
        body = "define hidden " + ir_text[start + len(_SHARED_START):end] + "\n"
        text = _library_text(header, name, body, declarations, metadata)
        if text is None:
            continue
        pieces += [ir_text[done:start], f"\ndeclare hidden {head}"]
        done = end
        library.append(LibraryModule(name, text, cache_key(text, target, opt_level)))
    pieces.append(ir_text[done:])
    return SplitModule("".join(pieces), tuple(library))


def _declarations(ir_text: str) -> list[tuple[str, str]]:
    """(name, line) of every `declare` line."""
    out = []
    at = ir_text.find("\ndeclare ")
    while at >= 0:
        end = ir_text.find("\n", at + 1)
        line = ir_text[at + 1:end if end >= 0 else len(ir_text)]
        found = _NAME.search(line)
        if found is not None:
            out.append((found.group(1), line))
        at = ir_text.find("\ndeclare ", at + 1)
    return out


def _shared_functions(ir_text: str) -> list[tuple[int, int, str]]:
    """(start, end, header after the linkage) of every `define linkonce_odr hidden`
    function: ir_text[start:end] is "\ndefine ... }" (its last line), end at the newline
    after the closing brace."""
    out = []
    at = ir_text.find(_SHARED_START)
    while at >= 0:
        head_end = ir_text.find("\n", at + 1)
        close = ir_text.find("\n}\n", head_end)
        if head_end < 0 or close < 0:
            break
        out.append((at, close + 2, ir_text[at + len(_SHARED_START):head_end]))
        at = ir_text.find(_SHARED_START, close)
    return out


def _library_text(header: str, name: str, body: str, declarations: dict[str, str],
                  metadata: dict[int, str]) -> str | None:
    """The library module of one shared function, or None if it is not self-contained."""
    needed: list[str] = []
    for ref in _GLOBAL_REF.finditer(body):
        callee = ref.group(1) or ref.group(2)
        if callee == name:
            continue
        if callee not in declarations:
            return None  # a global, or another shared function: not loadable alone
        line = declarations[callee]
        if line not in needed:
            needed.append(line)
    renumbered = _renumbered_metadata(body, metadata)
    if renumbered is None:
        return None
    body, nodes = renumbered
    return header + "".join(line + "\n" for line in needed) + "\n" + body + nodes


def _renumbered_metadata(body: str, metadata: dict[int, str]) -> tuple[str, str] | None:
    """`body` with its metadata numbered from !0 in order of first use, and the nodes it
    reaches (transitively) as definition lines; None if a node is undefined."""
    order: list[int] = []

    def visit(number: int) -> bool:
        if number in order:
            return True
        if number not in metadata:
            return False
        order.append(number)
        return all(visit(int(r)) for r in _METADATA_REF.findall(metadata[number]))

    if not all(visit(int(r)) for r in _METADATA_REF.findall(body)):
        return None
    new = {old: i for i, old in enumerate(order)}

    def renumber(text: str) -> str:
        return _METADATA_REF.sub(lambda r: f"!{new[int(r.group(1))]}", text)

    nodes = "".join(f"!{new[old]} = {renumber(metadata[old])}\n" for old in order)
    return renumber(body), nodes


def compile_program(ir_text: str, *, opt_level: int, cache_dir: Path | None, target: Target,
                    symbols: Sequence[str]) -> JitModule:
    """`runtime.jit.jit_compile` of a graph's module, its shared GEMM functions compiled
    (or found) as library objects and loaded beside it; `JitModule.libraries` names them."""
    split = split_module(ir_text, target, opt_level)
    stats = CompileStats()
    pairs = [(module.key, library_object(module, target, opt_level, cache_dir, stats))
             for module in split.library]
    jit = jit_compile(split.program, opt_level=opt_level, cache_dir=cache_dir, target=target,
                      symbols=symbols, libraries=pairs, stats=stats)
    jit.libraries = tuple(f"{m.key}:{m.name}" for m in split.library)
    return jit


def load_program(obj: bytes, libraries: Sequence[str], target: Target, opt_level: int,
                 cache_dir: Path | None, symbols: Sequence[str]) -> JitModule | None:
    """A program-cache object loaded with the library objects `libraries` names
    ("key:function", as `compile_program` records them); None (a miss) if one of them is
    neither in this process nor in the object cache, or if LLVM rejects the object or it
    lacks one of `symbols`."""
    pairs = []
    for entry in libraries:
        key, _, name = entry.partition(":")
        lib = cached_library_object(key, name, target, opt_level, cache_dir)
        if lib is None:
            return None
        pairs.append((key, lib))
    try:
        jit = load_object(obj, target, opt_level, symbols, pairs)
    except CompileError:
        return None
    jit.libraries = tuple(libraries)
    return jit


# --- the process's library objects ----------------------------------------------------------

# Library objects by object-cache key (which covers text, target and opt level). Each is
# about 2-10 KB; a process holds one per specialisation it ever compiled.
_objects: dict[str, bytes] = {}
_lock = threading.Lock()

# The object cache stores a library object as `<key>.lib.o` with a record naming the one
# function it defines (so a program-cache hit can check what it links against).
LIBRARY_FORMAT = "graphc.library/1"


def library_object(module: LibraryModule, target: Target, opt_level: int,
                   cache_dir: Path | None, stats: CompileStats) -> bytes:
    """The object of `module`: compiled in this process before, read from the object cache
    (verified), or compiled now (and kept in both)."""
    obj = cached_library_object(module.key, module.name, target, opt_level, cache_dir)
    if obj is None:
        obj = optimize_and_emit(module.text, target, opt_level, stats)
        stats.library_compiled += 1
        with _lock:
            _objects[module.key] = obj
        if cache_dir is not None:
            write_entry(cache_dir, f"{module.key}.lib",
                        {"format": LIBRARY_FORMAT, "key": module.key, "symbol": module.name},
                        obj)
    return obj


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
