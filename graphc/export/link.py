"""Object code and the system linker: from LLVM IR text and C text to a shared object.

`object_code` emits the optimized module as a position-independent object for the host CPU
(the same `runtime.jit.optimize_and_emit` that the JIT uses, so the kernels are the JIT's
instructions, only addressing their constants and callees PC-relative where the JIT's use
64-bit addresses), reusing the compile cache after verifying its entry. `link_shared`
compiles the wrapper with the system C compiler and links it with the object into a shared
library that exports only the ABI functions (a version script makes everything else local,
so two libraries never resolve each other's symbols) and needs nothing but libc and libm.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from graphc.codegen.target import Target
from graphc.errors import CompileError, GraphcError
from graphc.runtime.jit import (
    cache_key,
    defines,
    load_cached_object,
    optimize_and_emit,
    store_cached_object,
)

COMPILERS = ("cc", "gcc", "clang")

INSTALL_CC = (
    "no C compiler found: gc.export links libraries with the system C compiler `cc` "
    "(tried: {tried}); install one (Debian/Ubuntu: `apt-get install gcc`, Fedora: "
    "`dnf install gcc`, Alpine: `apk add build-base`, macOS: `xcode-select --install`)"
)


def find_c_compiler() -> str:
    """The path of `cc` (or gcc, clang) on PATH, else a GraphcError saying how to install."""
    for name in COMPILERS:
        found = shutil.which(name)
        if found:
            return found
    raise GraphcError(INSTALL_CC.format(tried=", ".join(COMPILERS)))


def object_code(ir_text: str, target: Target, opt_level: int, cache_dir: Path | None,
                symbols: Sequence[str] = ()) -> bytes:
    """The PIC object file of `ir_text` (from the compile cache when it has it).

    A cache entry is used only if it verifies (`runtime.jit.load_cached_object`) and, when
    `symbols` are given, LLVM loads it and it defines them all; otherwise the object is
    emitted again and written over the entry.
    """
    key = cache_key(ir_text, target, opt_level, shared_object=True)
    if cache_dir is not None:
        obj = load_cached_object(cache_dir, key)
        if obj is not None and (not symbols or defines(obj, target, opt_level, symbols)):
            return obj
    obj = optimize_and_emit(ir_text, target, opt_level, shared_object=True)
    if cache_dir is not None:
        store_cached_object(cache_dir, key, obj)  # a full or read-only cache is ignored
    return obj


def link_shared(cc: str, workdir: Path, name: str, obj: bytes, source: str, header: str,
                blob: bytes | None, exports: Sequence[str], *, pthread: bool = False) -> Path:
    """Build `workdir/libNAME.so` from the object, the wrapper source and the weights blob.

    The wrapper `.incbin`s ``weights.bin`` relative to `workdir` (the compiler runs there,
    so no user path ever appears inside assembler text).
    """
    (workdir / "model.o").write_bytes(obj)
    (workdir / f"{name}.c").write_text(source)
    (workdir / f"{name}.h").write_text(header)
    if blob is not None:
        (workdir / "weights.bin").write_bytes(blob)
    (workdir / "exports.map").write_text(
        "{\n  global:\n" + "".join(f"    {s};\n" for s in exports) + "  local: *;\n};\n")
    out = f"lib{name}.so"
    cmd = [
        cc, "-shared", "-fPIC", "-O2", "-fvisibility=hidden", "-o", out, f"{name}.c", "model.o",
        # libgcc statically (no libgcc_s), only ABI symbols exported, calls between them
        # bound inside the library (-Bsymbolic: another library's `NAME_init` never
        # interposes, even for two libraries of the same NAME), no executable stack (the
        # LLVM object carries no .note.GNU-stack), libm only if something needs it.
        "-static-libgcc", "-Wl,--version-script=exports.map", "-Wl,-Bsymbolic",
        "-Wl,-z,noexecstack",
        "-Wl,--as-needed", "-lm",
        *(["-pthread"] if pthread else []),  # the code's worker pool (libc's on glibc 2.34+)
    ]
    try:
        done = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise GraphcError(f"cannot run the C compiler {cc}: {exc.strerror or exc}") from None
    if done.returncode != 0:
        raise CompileError(f"linking lib{name}.so failed ({' '.join(cmd)} in {workdir}, exit "
                           f"{done.returncode}):\n{(done.stderr or done.stdout).strip()}")
    return workdir / out
