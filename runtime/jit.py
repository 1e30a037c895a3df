"""From LLVM IR to callable machine code: verify, optimize, emit, cache, load.

`jit_compile(module_ir, options)` parses the IR text, runs LLVM's verifier, optimizes it with
the new pass manager at the requested level, emits an object file, and loads that object into
an MCJIT engine of its own (each engine owns its own target machine: engines take ownership
and a shared one crashes when the first engine is freed).

The on-disk compile cache maps sha256(IR text, target key, opt level, llvmlite version) to
the object file, so rerunning a program skips LLVM entirely: a cache hit parses nothing and
only links the cached object. Cache files are written atomically and are only ever handed to
LLVM's object loader (never executed as Python, never unpickled).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import llvmlite
import llvmlite.binding as llvm

from graphc.codegen.target import Target, create_target_machine, host_target
from graphc.errors import CompileError
from graphc.io.atomic import atomic_write


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
    _keepalive: list[object] = field(default_factory=list)

    def optional_address(self, name: str) -> int:
        """The address of `name`, or 0 if the module does not define it."""
        return self.engine.get_function_address(name)

    def address(self, name: str) -> int:
        addr = self.engine.get_function_address(name)
        if not addr:
            raise CompileError(f"symbol {name!r} not found in the compiled module")
        return addr


def cache_key(ir_text: str, target: Target, opt_level: int) -> str:
    h = hashlib.sha256()
    for part in (ir_text, target.key, str(opt_level), llvmlite.__version__, "graphc-jit-1"):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def optimize_and_emit(ir_text: str, target: Target, opt_level: int,
                      stats: CompileStats | None = None) -> bytes:
    """Parse, verify, optimize and emit an object file (no cache)."""
    stats = stats if stats is not None else CompileStats()
    t0 = time.perf_counter()
    mod = _parse(ir_text)
    t1 = time.perf_counter()
    tm = create_target_machine(target, opt_level, jit=False)
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
) -> JitModule:
    """Compile `ir_text` for `target` (the host by default) and load it for calling."""
    target = target or host_target()
    key = cache_key(ir_text, target, opt_level)
    stats = CompileStats()
    obj: bytes | None = None
    cache_file = cache_dir / f"{key}.o" if cache_dir is not None else None
    if cache_file is not None and cache_file.is_file():
        try:
            obj = cache_file.read_bytes()
            stats.cache_hit = True
        except OSError:
            obj = None
    if obj is None:
        obj = optimize_and_emit(ir_text, target, opt_level, stats)
        if cache_file is not None:
            try:
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(cache_file, lambda f: f.write(obj))
            except OSError:
                pass  # a read-only or full cache directory must not break compilation
    t0 = time.perf_counter()
    engine = _load_object(obj, target, opt_level)
    stats.load = time.perf_counter() - t0
    stats.object_bytes = len(obj)
    return JitModule(engine, obj, key, stats)


def load_object(obj: bytes, target: Target, opt_level: int) -> JitModule:
    """Load an object file produced earlier (a cache hit of `runtime.program_cache`)."""
    t0 = time.perf_counter()
    engine = _load_object(obj, target, opt_level)
    stats = CompileStats(cache_hit=True, load=time.perf_counter() - t0, object_bytes=len(obj))
    return JitModule(engine, obj, "program-cache", stats)


def _load_object(obj: bytes, target: Target, opt_level: int) -> llvm.ExecutionEngine:
    tm = create_target_machine(target, opt_level, jit=True)
    engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), tm)
    try:
        engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        engine.finalize_object()
    except RuntimeError as exc:
        raise CompileError(f"could not load the compiled object: {exc}") from None
    return engine
