"""The machine code is generated for: CPU name, features, vector width.

`host_target()` reads them from LLVM once per process. Code generation only needs
`vector_bits` (the SIMD register width used for `<W x T>` loops) and the names LLVM wants.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import llvmlite.binding as llvm


@dataclass(frozen=True)
class Target:
    """A code generation target. `features` is LLVM's "+avx2,-avx512f,..." string."""

    triple: str
    cpu: str
    features: str
    vector_bits: int

    def lanes(self, itemsize: int) -> int:
        """Vector lanes for elements of `itemsize` bytes (16 float32 lanes with AVX-512)."""
        return max(1, self.vector_bits // (8 * itemsize))

    def without(self, features: tuple[str, ...]) -> Target:
        """This target with `features` (LLVM names, no sign) turned off."""
        if not features:
            return self
        off = set(features)
        flags = [f"-{f[1:]}" if f[1:] in off else f for f in self.features.split(",")]
        return replace(self, features=",".join(flags))

    @property
    def registers(self) -> int:
        """Vector registers: 32 with 512-bit vectors (AVX-512), else 16 (AVX2). Register
        blocks and the GEMM's in-place layouts are chosen by it."""
        return 32 if self.vector_bits >= 512 else 16

    def has(self, feature: str) -> bool:
        return f"+{feature}" in self.features.split(",")

    @property
    def key(self) -> str:
        """What compiled code depends on (part of the compile-cache key)."""
        return f"{self.triple}|{self.cpu}|{self.features}"


@functools.cache
def _init_llvm() -> None:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()


@functools.cache
def host_target() -> Target:
    """The CPU this process runs on."""
    _init_llvm()
    features = llvm.get_host_cpu_features().flatten()
    flags = set(features.split(","))
    if "+avx512f" in flags:
        bits = 512
    elif "+avx2" in flags or "+avx" in flags:
        bits = 256
    else:
        bits = 128
    return Target(llvm.get_process_triple(), llvm.get_host_cpu_name(), features, bits)


def create_target_machine(target: Target, opt_level: int, *, jit: bool,
                          shared_object: bool = False) -> llvm.TargetMachine:
    """A new target machine. Each JIT engine must own its own: engines take ownership.

    Objects for the JIT (`jit` False, `shared_object` False) use the large code model: every
    reference is a 64-bit absolute address. LLVM's JIT memory manager maps an object's code
    and its constants separately, and in a process holding a lot of memory the two can land
    more than 2 GiB apart, beyond the small model's 32-bit PC-relative reach; LLVM then
    aborts the process while loading (seen once in CI, after ONNX's big model suites).
    Objects linked into a shared library (`shared_object`) are position-independent code
    in the small model, as a system linker expects."""
    _init_llvm()
    if jit or shared_object:
        reloc, model = "pic", ("jitdefault" if jit else "default")
    else:
        reloc, model = "static", "large"
    return llvm.Target.from_triple(target.triple).create_target_machine(
        cpu=target.cpu,
        features=target.features,
        opt=opt_level,
        reloc=reloc,
        codemodel=model,
        jit=jit,
    )
