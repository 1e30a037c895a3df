"""From LLVM IR to callable machine code: verify, optimize, emit, cache, load.

`jit_compile(module_ir, options)` parses the IR text, runs LLVM's verifier, optimizes it with
the new pass manager at the requested level, emits an object file, and loads that object into
an MCJIT engine of its own (each engine owns its own target machine: engines take ownership
and a shared one crashes when the first engine is freed).

The on-disk compile cache maps sha256(IR text, target key, opt level, llvmlite version) to
the object file, so rerunning a program skips LLVM entirely: a cache hit parses nothing and
only links the cached object.

A cache entry is untrusted input (another process, a full disk, a crash or a user may have
damaged it), and LLVM's object loader trusts its input: a damaged object crashes the
process. So an entry is two files, `<stem>.o` (the object, as emitted) and `<stem>.json`
(its record), and nothing of it reaches LLVM unless the record verifies:

    {"format": "graphc.object/1", "key": <the key the entry was stored under>,
     "object_sha256": <hex>, "object_bytes": <int>, ...caller's fields...,
     "record_sha256": <sha256 of the canonical JSON of every other field>}

`read_entry` demands exactly these fields with exactly these JSON types, the format and key
the caller asks for, the record's own hash and then the object's size and hash; anything
else is a miss, which the caller answers by compiling again and overwriting the entry.
Files are written atomically (`io.atomic`), the object before the record; as the record
names the object's hash, a reader that pairs an old object with a new record (another
process rewriting the entry meanwhile) sees a mismatch, i.e. a miss, never a wrong pair.
Cache files are only ever handed to LLVM's object loader (never executed as Python, never
unpickled).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llvmlite
import llvmlite.binding as llvm

from graphc.codegen.target import Target, create_target_machine, host_target
from graphc.errors import CompileError
from graphc.io.atomic import atomic_write
from graphc.runtime.object_symbols import is_elf64, object_symbols

# The record format of the object cache; a record of any other format is a miss.
OBJECT_FORMAT = "graphc.object/1"

# The fields every entry's record has, with their JSON types (checked with `type(v) is t`:
# JSON `true` is no int here).
_RECORD_FIELDS: dict[str, type] = {"format": str, "key": str, "object_sha256": str,
                                   "object_bytes": int, "record_sha256": str}


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/graphc or ~/.cache/graphc (read once, by the caller's options)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "graphc"


@dataclass
class CompileStats:
    """Where compile time went (seconds), and whether the cache answered."""

    cache_hit: bool = False
    parse_verify: float = 0.0
    optimize: float = 0.0
    emit: float = 0.0
    load: float = 0.0
    object_bytes: int = 0
    # Shared GEMM functions (`runtime.kernel_library`): how many this compile loaded, and
    # how many of them it had to compile (the others were compiled earlier or cached).
    library_objects: int = 0
    library_compiled: int = 0
    # Modules split off the program for a concurrent compile (`runtime.program_split`),
    # loaded beside it; the times above are then summed over the compiling threads.
    part_objects: int = 0

    @property
    def total(self) -> float:
        return self.parse_verify + self.optimize + self.emit + self.load


@dataclass
class JitModule:
    """Loaded machine code. Keep this object alive while any function pointer is in use."""

    engine: llvm.ExecutionEngine
    object_code: bytes
    key: str
    stats: CompileStats = field(default_factory=CompileStats)
    # The library objects loaded beside `object_code`, as "key:function", and the object-
    # cache keys of the program's parts loaded beside it (`runtime.kernel_library` sets
    # both; `runtime.program_split`).
    libraries: tuple[str, ...] = ()
    parts: tuple[str, ...] = ()
    _keepalive: list[object] = field(default_factory=list)

    def optional_address(self, name: str) -> int:
        """The address of `name`, or 0 if the module does not define it."""
        return self.engine.get_function_address(name)

    def address(self, name: str) -> int:
        addr = self.engine.get_function_address(name)
        if not addr:
            raise CompileError(f"symbol {name!r} not found in the compiled module")
        return addr


def cache_key(ir_text: str, target: Target, opt_level: int,
              shared_object: bool = False) -> str:
    """The object cache's key of `ir_text` emitted for the JIT or, with `shared_object`,
    for a shared library (`create_target_machine`: the two differ in code model)."""
    h = hashlib.sha256()
    kind = "graphc-so-1" if shared_object else "graphc-jit-2"
    for part in (ir_text, target.key, str(opt_level), llvmlite.__version__, kind):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


# --- cache entries: an object file and the record that vouches for it --------------------

def write_entry(cache_dir: Path, stem: str, record: Mapping[str, Any], obj: bytes) -> None:
    """Store `obj` as `<stem>.o` and `record` (which must hold "format" and "key"), completed
    with the object's size and hash and its own hash, as `<stem>.json`.

    Errors are ignored: a read-only or full cache directory must not break compilation.
    """
    full = {**record, "object_sha256": hashlib.sha256(obj).hexdigest(),
            "object_bytes": len(obj)}
    full["record_sha256"] = _record_digest(full)
    text = json.dumps(full, sort_keys=True).encode()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(cache_dir / f"{stem}.o", lambda f: f.write(obj))
        atomic_write(cache_dir / f"{stem}.json", lambda f: f.write(text))
    except OSError:
        pass


def read_entry(cache_dir: Path, stem: str, fmt: str, key: str,
               fields: Mapping[str, type]) -> tuple[bytes, dict[str, Any]] | None:
    """The verified object and record of `<stem>.o`/`<stem>.json`, or None (a miss).

    The record must have exactly the common fields and `fields` (name -> JSON type), format
    `fmt`, key `key` and a matching hash of itself; the object must have the recorded size
    and sha256. The values of `fields` are the caller's to check.
    """
    try:
        record = _verified_record((cache_dir / f"{stem}.json").read_bytes(), fmt, key, fields)
        if record is None:
            return None
        obj = (cache_dir / f"{stem}.o").read_bytes()
    except OSError:
        return None
    if len(obj) != record["object_bytes"] or \
            hashlib.sha256(obj).hexdigest() != record["object_sha256"]:
        return None
    return obj, record


def _verified_record(raw: bytes, fmt: str, key: str,
                     fields: Mapping[str, type]) -> dict[str, Any] | None:
    """`raw` parsed, if it is a record of exactly the expected schema, format, key and hash."""
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested absurdly deep
        return None
    schema = {**_RECORD_FIELDS, **fields}
    if type(record) is not dict or record.keys() != schema.keys():
        return None
    if any(type(record[name]) is not t for name, t in schema.items()):
        return None
    if record["format"] != fmt or record["key"] != key:
        return None  # e.g. another entry's files copied under this name
    body = {name: value for name, value in record.items() if name != "record_sha256"}
    return record if _record_digest(body) == record["record_sha256"] else None


def _record_digest(body: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of `body` (sorted keys, no spaces)."""
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def canonical_json(value: object) -> str:
    """One text per JSON value: sorted keys, no whitespace (for hashing and comparing)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def load_cached_object(cache_dir: Path, key: str) -> bytes | None:
    """The object cache's verified object for `key` (`cache_key`), or None."""
    hit = read_entry(cache_dir, key, OBJECT_FORMAT, key, {})
    return hit[0] if hit is not None else None


def store_cached_object(cache_dir: Path, key: str, obj: bytes) -> None:
    """Store `obj` in the object cache under `key` (overwriting any entry there)."""
    write_entry(cache_dir, key, {"format": OBJECT_FORMAT, "key": key}, obj)


# --- compiling ------------------------------------------------------------------------------

def optimize_and_emit(ir_text: str, target: Target, opt_level: int,
                      stats: CompileStats | None = None, shared_object: bool = False) -> bytes:
    """Parse, verify, optimize and emit an object file (no cache): for the JIT, or with
    `shared_object` for linking into a shared library (`create_target_machine`)."""
    stats = stats if stats is not None else CompileStats()
    t0 = time.perf_counter()
    mod = _parse(ir_text)
    t1 = time.perf_counter()
    tm = create_target_machine(target, opt_level, jit=False, shared_object=shared_object)
    _optimize(mod, tm, opt_level)
    t2 = time.perf_counter()
    obj = tm.emit_object(mod)
    t3 = time.perf_counter()
    stats.parse_verify += t1 - t0
    stats.optimize += t2 - t1
    stats.emit += t3 - t2
    stats.object_bytes = len(obj)
    return obj


def _parse(ir_text: str) -> llvm.ModuleRef:
    """Parse and verify generated IR (llvmlite's builder prints ill-typed IR unchecked)."""
    try:
        mod = llvm.parse_assembly(ir_text)
        mod.verify()
    except RuntimeError as exc:
        raise CompileError(f"LLVM rejected the generated module: {exc}") from None
    return mod


def _optimize(mod: llvm.ModuleRef, tm: llvm.TargetMachine, opt_level: int) -> None:
    """LLVM's default pipeline at `opt_level`, with the new pass manager."""
    if opt_level > 0:
        pto = llvm.create_pipeline_tuning_options(speed_level=opt_level)
        pb = llvm.create_pass_builder(tm, pto)
        pb.getModulePassManager().run(mod, pb)


def _optimized(ir_text: str, target: Target, opt_level: int
               ) -> tuple[llvm.ModuleRef, llvm.TargetMachine]:
    """Parse, verify and optimize `ir_text`; the module and its target machine."""
    mod = _parse(ir_text)
    tm = create_target_machine(target, opt_level, jit=False)
    _optimize(mod, tm, opt_level)
    return mod, tm


def emit_assembly(ir_text: str, target: Target, opt_level: int) -> str:
    """The optimized module as assembly text (`graphc dump --stage asm`)."""
    mod, tm = _optimized(ir_text, target, opt_level)
    return tm.emit_assembly(mod)


def optimized_ir(ir_text: str, target: Target, opt_level: int) -> str:
    """The module after LLVM's optimization pipeline, as IR text."""
    mod, _ = _optimized(ir_text, target, opt_level)
    return str(mod)


def jit_compile(
    ir_text: str,
    *,
    opt_level: int = 3,
    cache_dir: Path | None = None,
    target: Target | None = None,
    symbols: Sequence[str] = (),
    libraries: Sequence[tuple[str, bytes]] = (),
    stats: CompileStats | None = None,
) -> JitModule:
    """Compile `ir_text` for `target` (the host by default) and load it for calling.

    `symbols` are the functions the caller will look up. `libraries` are (key, object)
    pairs loaded into the same engine, defining the functions `ir_text` declares for them
    (`runtime.kernel_library`). A cached object that fails to verify, that LLVM rejects or
    that lacks one of `symbols` is a miss: it is compiled again and overwritten. Raises
    CompileError if the freshly compiled module lacks one.
    """
    target = target or host_target()
    stats = stats if stats is not None else CompileStats()
    key = cache_key(ir_text, target, opt_level)
    obj = load_cached_object(cache_dir, key) if cache_dir is not None else None
    if obj is not None:
        try:
            hit = CompileStats(cache_hit=True, library_objects=stats.library_objects,
                               library_compiled=stats.library_compiled)
            return link_objects(obj, target, opt_level, key, symbols, hit, libraries)
        except CompileError:
            pass  # bytes this key's IR never produced: compile them again, below
    obj = optimize_and_emit(ir_text, target, opt_level, stats)
    if cache_dir is not None:
        store_cached_object(cache_dir, key, obj)
    return link_objects(obj, target, opt_level, key, symbols, stats, libraries)


def load_object(obj: bytes, target: Target, opt_level: int,
                symbols: Sequence[str] = (),
                libraries: Sequence[tuple[str, bytes]] = (),
                parts: Sequence[tuple[str, bytes]] = ()) -> JitModule:
    """Load a verified object of `runtime.program_cache` (a hit of that cache), with the
    library objects it declares and its parts.

    Raises CompileError if LLVM rejects the object or it lacks one of `symbols`; the caller
    treats that as a miss.
    """
    return link_objects(obj, target, opt_level, "program-cache", symbols,
                        CompileStats(cache_hit=True), libraries, parts)


def defines(obj: bytes, target: Target, opt_level: int, symbols: Sequence[str]) -> bool:
    """Whether LLVM loads the (verified) object `obj` and it defines all of `symbols`."""
    try:
        link_objects(obj, target, opt_level, "check", symbols, CompileStats())
    except CompileError:
        return False
    return True


def link_objects(obj: bytes, target: Target, opt_level: int, key: str,
                 symbols: Sequence[str], stats: CompileStats,
                 libraries: Sequence[tuple[str, bytes]] = (),
                 parts: Sequence[tuple[str, bytes]] = ()) -> JitModule:
    """`obj`, `parts` and `libraries` ((key, object) pairs) loaded into an engine of its
    own; CompileError if one of `symbols` is missing or a call is unresolved."""
    t0 = time.perf_counter()
    engine = _load_object([obj, *(o for _, o in parts), *(lib for _, lib in libraries)],
                          target, opt_level)
    stats.load = time.perf_counter() - t0
    stats.object_bytes = len(obj) + sum(len(o) for _, o in parts)
    stats.library_objects = len(libraries)
    stats.part_objects = len(parts)
    jit = JitModule(engine, obj, key, stats)
    missing = [name for name in symbols if not jit.optional_address(name)]
    if missing:
        raise CompileError(f"the compiled module does not define {', '.join(missing)}")
    return jit


def _load_object(objects: Sequence[bytes], target: Target, opt_level: int
                 ) -> llvm.ExecutionEngine:
    tm = create_target_machine(target, opt_level, jit=True)
    # Creating the engine also makes the process's own symbols (libc) resolvable.
    engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), tm)
    _check_links(objects)
    try:
        for obj in objects:
            engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        engine.finalize_object()
    except RuntimeError as exc:
        raise CompileError(f"could not load the compiled object: {exc}") from None
    return engine


def _check_links(objects: Sequence[bytes]) -> None:
    """CompileError unless every symbol the objects call is defined by one of them or by the
    process: LLVM's loader aborts the process on an unresolved call. (Objects of another
    format than ELF64 are left to the loader, which rejects what it cannot read.)"""
    if not all(is_elf64(obj) for obj in objects):
        return
    try:
        tables = [object_symbols(obj) for obj in objects]
    except ValueError as exc:
        raise CompileError(f"could not load the compiled object: {exc}") from None
    defined = set().union(*(t.defined for t in tables))
    needed = set().union(*(t.undefined for t in tables)) - defined
    missing = sorted(n for n in needed if not llvm.address_of_symbol(n))
    if missing:
        raise CompileError(f"the compiled object calls {', '.join(missing)}, which neither "
                           "it, the objects loaded with it nor the process define")
