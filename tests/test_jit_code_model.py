"""JIT objects use the large code model: every relocation is a 64-bit absolute address
(`codegen.target.create_target_machine`). LLVM's JIT memory manager maps an object's code
and its constants separately; in a process holding a lot of memory they can land more
than 2 GiB apart, where a 32-bit PC-relative reference cannot reach and LLVM aborts the
process while loading. Shared-library objects stay position-independent (small model)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

import graphc as gc
from graphc.codegen.target import host_target
from graphc.runtime.jit import optimize_and_emit

R_X86_64_64 = 1
SHT_RELA = 4


def relocation_types(obj: bytes) -> set[int]:
    """The relocation types of an ELF64 little-endian object (all its SHT_RELA sections)."""
    assert obj[:4] == b"\x7fELF" and obj[4] == 2 and obj[5] == 1
    shoff, = struct.unpack_from("<Q", obj, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", obj, 0x3A)
    types = set()
    for i in range(shnum):
        sh_type, = struct.unpack_from("<I", obj, shoff + i * shentsize + 4)
        if sh_type != SHT_RELA:
            continue
        offset, size, _, _, _, entsize = struct.unpack_from("<QQIIQQ", obj,
                                                            shoff + i * shentsize + 0x18)
        for at in range(offset, offset + size, entsize):
            info, = struct.unpack_from("<Q", obj, at + 8)
            types.add(info & 0xFFFFFFFF)
    return types


def program_ir() -> str:
    """A module with constants in loops (vector math) and calls to shared GEMM functions."""
    from graphc.pipeline import lower
    from graphc.runtime.arguments import resolve_signature

    rng = np.random.default_rng(0)
    with gc.Graph() as g:
        x = gc.placeholder((64, 96), name="x")
        y = gc.gelu(x @ gc.constant(rng.standard_normal((96, 80)).astype(np.float32)))
        out = gc.exp(gc.tanh(y) * 0.5)
    sig, _ = resolve_signature(g, [x], [out], None, None)
    return lower(g, sig, gc.CompileOptions(threads=2, cache_dir=None), "llvm").ir_text


@pytest.mark.skipif(not host_target().triple.startswith("x86_64"), reason="x86-64 ELF only")
def test_jit_objects_reach_everything_with_64_bit_addresses() -> None:
    text = program_ir()
    jit_types = relocation_types(optimize_and_emit(text, host_target(), 2))
    assert jit_types == {R_X86_64_64}
    # A shared library's object is PIC: PC-relative references (that the system linker
    # lays out), so the two emissions really differ.
    so_types = relocation_types(optimize_and_emit(text, host_target(), 2, shared_object=True))
    assert R_X86_64_64 not in so_types and so_types


def test_a_large_model_program_computes_the_reference() -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((96, 80))
    with gc.Graph() as g:
        x = gc.placeholder((64, 96), gc.float64, name="x")
        out = gc.exp(gc.tanh(gc.gelu(x @ gc.constant(w))) * 0.5)
    xv = rng.standard_normal((64, 96))
    want = gc.reference(g, [x], [out])(xv)[0]
    for threads in (1, 2):
        exe = gc.compile(g, [x], [out], options=gc.CompileOptions(threads=threads,
                                                                   cache_dir=None))
        np.testing.assert_allclose(exe(xv)[0], want, rtol=1e-12)
