"""The global symbols an ELF64 object file defines and the ones it needs, read in Python.

LLVM's JIT loader aborts the process ("Program used external function ... which could not
be resolved") when a loaded object calls a symbol that no loaded object defines and the
process cannot resolve. Cached objects are untrusted input, so before one reaches the
loader `runtime.jit` checks that every symbol it needs is defined by an object loaded with
it or resolvable in the process. This module only reads bytes: every offset and size is
checked against the file, and anything malformed raises ValueError.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_ELF64_LE = b"\x7fELF\x02\x01"
_SHT_SYMTAB = 2
_SHN_UNDEF = 0
_STB_GLOBAL, _STB_WEAK = 1, 2
_SECTION = struct.Struct("<IIQQQQIIQQ")
_SYMBOL = struct.Struct("<IBBHQQ")


@dataclass(frozen=True)
class ObjectSymbols:
    """Global and weak symbols of one object: those it defines and those it needs."""

    defined: frozenset[str]
    undefined: frozenset[str]


def is_elf64(obj: bytes) -> bool:
    """Whether `obj` claims to be a little-endian ELF64 file (the host's object format)."""
    return obj[:6] == _ELF64_LE


def object_symbols(obj: bytes) -> ObjectSymbols:
    """The global symbols of the ELF64 little-endian object `obj`; ValueError if malformed."""
    if not is_elf64(obj) or len(obj) < 64:
        raise ValueError("not an ELF64 little-endian object")
    shoff, = struct.unpack_from("<Q", obj, 0x28)
    shentsize, shnum, _ = struct.unpack_from("<HHH", obj, 0x3A)
    if shentsize != _SECTION.size or shoff + shnum * shentsize > len(obj):
        raise ValueError("section table outside the file")
    sections = [_SECTION.unpack_from(obj, shoff + i * shentsize) for i in range(shnum)]
    defined: set[str] = set()
    undefined: set[str] = set()
    for sh_type, offset, size, link, entsize in (
            (s[1], s[4], s[5], s[6], s[9]) for s in sections):
        if sh_type != _SHT_SYMTAB:
            continue
        if entsize != _SYMBOL.size or offset + size > len(obj) or link >= shnum:
            raise ValueError("symbol table outside the file")
        strings = _section_bytes(obj, sections[link])
        for at in range(offset, offset + size - _SYMBOL.size + 1, _SYMBOL.size):
            name_at, info, _, shndx, _, _ = _SYMBOL.unpack_from(obj, at)
            if info >> 4 not in (_STB_GLOBAL, _STB_WEAK):
                continue
            name = _string(strings, name_at)
            if name:
                (undefined if shndx == _SHN_UNDEF else defined).add(name)
    return ObjectSymbols(frozenset(defined), frozenset(undefined))


def _section_bytes(obj: bytes, section: tuple[int, ...]) -> bytes:
    offset, size = section[4], section[5]
    if offset + size > len(obj):
        raise ValueError("string table outside the file")
    return obj[offset:offset + size]


def _string(table: bytes, at: int) -> str:
    end = table.find(b"\0", at)
    if at >= len(table) or end < 0:
        raise ValueError("symbol name outside its string table")
    return table[at:end].decode("utf-8", errors="strict")
