"""What an exported library says it is: its JSON metadata in the `.graphc_meta` ELF
section, read and checked from the outside before the file is ever opened (`load` in
`runtime.library`), and the ABI constants the exporter writes (`graphc.export`).

`read_metadata` finds the section by parsing the ELF section table with bounded reads only,
so a file that is not a graphc library never reaches `dlopen`; `check_compatible` refuses
an ABI version this graphc does not know, another architecture, or CPU features this
machine lacks. Every failure is a `GraphcError` naming the file and the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from graphc.codegen.target import host_target
from graphc.errors import GraphcError
from graphc.ir import DType, TensorType

# Version 2: the code carries what it was compiled for (NAME_num_ports, NAME_port_info,
# NAME_arena_bytes, NAME_weights_bytes, NAME_weights_checksum64, NAME_metadata_sha256) and
# `load` refuses metadata that disagrees; version 1 libraries lack them: re-export.
ABI_VERSION = 2
SUPPORTED_ABI_VERSIONS = frozenset({ABI_VERSION})
META_SECTION = ".graphc_meta"
META_FORMAT = "graphc-library"
MAX_META_BYTES = 16 << 20  # the metadata of a huge graph is far below this

_SHN_XINDEX = 0xFFFF

# The C ABI's element type codes (`NAME_port.dtype`, the header's NAME_DTYPE_* constants)
# and port kinds (the `kind` of NAME_num_ports / NAME_port_info), by code. Part of the ABI:
# changing a code changes ABI_VERSION.
DTYPE_CODES: dict[DType, int] = {
    DType.float32: 1, DType.float64: 2, DType.int32: 3, DType.int64: 4, DType.bool: 5,
    DType.bfloat16: 6, DType.int8: 7, DType.uint8: 8,
}
PORT_KINDS: tuple[str, ...] = ("input", "output", "variable")


def metadata_text(meta: Mapping[str, Any]) -> str:
    """The canonical JSON text of a library's metadata (sorted keys, ASCII only).

    `gc.export` stores exactly this text (in `.graphc_meta`, returned by ``NAME_metadata``)
    and compiles its `metadata_sha256` into the code. Parsing the text and calling this on
    the result gives the same text back, so a loader can recompute the digest from the
    metadata it parsed: equal digests mean equal metadata, whatever the whitespace.
    """
    return json.dumps(meta, sort_keys=True)


def metadata_sha256(meta: Mapping[str, Any]) -> str:
    """The sha256 (hex) of `metadata_text(meta)`, which the library's code carries."""
    return hashlib.sha256(metadata_text(meta).encode("ascii")).hexdigest()


# --- reading the metadata without loading the file ------------------------------------------

def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON metadata embedded in a graphc library, read by parsing the ELF file.

    Raises GraphcError if `path` is not a readable ELF file, is truncated, or has no valid
    graphc metadata. Does not check compatibility with this machine (see `check_compatible`).
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            raw = _read_meta_section(f, p)
    except OSError as exc:
        raise GraphcError(f"cannot read {p}: {exc.strerror or exc}") from None
    text = raw.rstrip(b"\0")
    try:
        meta = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GraphcError(f"{p}: the {META_SECTION} section is not valid JSON ({exc})") from None
    check_schema(meta, p)
    return meta


def _read_meta_section(f: Any, p: Path) -> bytes:
    size = os.fstat(f.fileno()).st_size

    def read_at(offset: int, n: int, what: str) -> bytes:
        if offset < 0 or n < 0 or offset + n > size:
            raise GraphcError(f"{p} is truncated or corrupt: its {what} lies outside the file "
                              f"(bytes {offset}..{offset + n} of {size})")
        f.seek(offset)
        data = f.read(n)
        if len(data) != n:
            raise GraphcError(f"{p} is truncated: could not read its {what}")
        return data

    if size < 16 or read_at(0, 4, "ELF magic") != b"\x7fELF":
        raise GraphcError(f"{p} is not a graphc library: not an ELF file")
    ident = read_at(0, 16, "ELF identification")
    if ident[4] not in (1, 2) or ident[5] not in (1, 2):
        raise GraphcError(f"{p} is not a valid ELF file (class {ident[4]}, data {ident[5]})")
    is64 = ident[4] == 2
    end = "<" if ident[5] == 1 else ">"
    hfmt = end + ("HHIQQQIHHHHHH" if is64 else "HHIIIIIHHHHHH")
    fields = struct.unpack(hfmt, read_at(16, struct.calcsize(hfmt), "ELF header"))
    e_type, shoff, shentsize, shnum, shstrndx = fields[0], fields[5], fields[10], fields[11], \
        fields[12]
    if e_type != 3:  # ET_DYN
        raise GraphcError(f"{p} is not a graphc library: not a shared object (ELF type {e_type})")
    sfmt = end + ("IIQQQQIIQQ" if is64 else "IIIIIIIIII")
    if shoff == 0 or shentsize < struct.calcsize(sfmt):
        raise GraphcError(f"{p} is not a graphc library: it has no section table")

    def section(i: int) -> tuple[int, ...]:
        return struct.unpack(sfmt, read_at(shoff + i * shentsize, struct.calcsize(sfmt),
                                           f"section header {i}"))

    if shnum == 0:  # more than 0xff00 sections: the count is in section 0
        shnum = section(0)[5]
    if shstrndx == _SHN_XINDEX:
        shstrndx = section(0)[6]
    if shnum > 1 << 20 or shstrndx >= shnum:
        raise GraphcError(f"{p} is corrupt: bad section count {shnum} or name index {shstrndx}")
    # sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, ...
    names_hdr = section(shstrndx)
    names = read_at(names_hdr[4], names_hdr[5], "section name table")
    wanted = META_SECTION.encode()
    for i in range(shnum):
        hdr = section(i)
        name_end = names.find(b"\0", hdr[0])
        if hdr[0] < len(names) and names[hdr[0]:name_end if name_end >= 0 else None] == wanted:
            if hdr[5] > MAX_META_BYTES:
                raise GraphcError(f"{p}: its {META_SECTION} section is implausibly large "
                                  f"({hdr[5]} bytes)")
            return read_at(hdr[4], hdr[5], f"{META_SECTION} section")
    raise GraphcError(f"{p} is not a graphc library: it has no {META_SECTION} section "
                      "(export libraries with gc.export or `graphc compile`)")


_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "format": str, "abi_version": int, "name": str, "graphc_version": str,
    "inputs": list, "outputs": list, "variables": list, "single_output": bool,
    "entry_points": dict, "target": dict, "weights": dict, "context_bytes": int,
}


def check_schema(meta: Any, p: Path) -> None:
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise GraphcError(f"{p} is not a graphc library: its metadata is not {META_FORMAT!r}")
    for key, kind in _REQUIRED.items():
        if not isinstance(meta.get(key), kind):
            raise GraphcError(f"{p}: invalid graphc metadata: {key!r} is missing or not a "
                              f"{getattr(kind, '__name__', kind)}")
    if not meta["name"].isidentifier() or not meta["name"].isascii():
        raise GraphcError(f"{p}: invalid graphc metadata: library name {meta['name']!r}")
    try:
        for port in (*meta["inputs"], *meta["outputs"], *meta["variables"]):
            tensor_type(port)
            if not isinstance(port["name"], str):
                raise TypeError("name")
    except (KeyError, TypeError, ValueError, GraphcError) as exc:
        raise GraphcError(f"{p}: invalid graphc metadata: bad tensor entry ({exc})") from None


def tensor_type(entry: Mapping[str, Any]) -> TensorType:
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"shape {shape!r}")
    return TensorType(tuple(shape), DType.of(entry["dtype"]))


def check_compatible(meta: Mapping[str, Any], path: str | os.PathLike[str] = "library") -> None:
    """Raise GraphcError unless this graphc and this machine can run the library."""
    abi = meta["abi_version"]
    if abi not in SUPPORTED_ABI_VERSIONS:
        raise GraphcError(
            f"{path}: graphc library ABI version {abi} is not supported by graphc "
            f"(supported: {', '.join(map(str, sorted(SUPPORTED_ABI_VERSIONS)))}); it was built "
            f"by graphc {meta['graphc_version']}: re-export it with this version")
    host = host_target()
    target = meta["target"]
    lib_arch = str(target.get("triple", "")).split("-")[0]
    host_arch = host.triple.split("-")[0]
    if lib_arch != host_arch:
        raise GraphcError(f"{path} was built for {target.get('triple')}, this machine is "
                          f"{host.triple}")
    have = {f[1:] for f in host.features.split(",") if f.startswith("+")}
    need = [f[1:] for f in str(target.get("features", "")).split(",") if f.startswith("+")]
    missing = [f for f in need if f not in have]
    if missing:
        raise GraphcError(
            f"{path} was built for CPU {target.get('cpu')!r} with features this machine "
            f"({host.cpu}) lacks: {', '.join(missing)}; re-export it on this machine")


# --- the loaded library --------------------------------------------------------------------
