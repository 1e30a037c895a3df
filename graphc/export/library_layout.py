"""Where everything of an exported library lives: ports, weights blob, context memory.

A library's *context* is one 64-byte-aligned block of memory:

    [ header: magic, flags, the entry table (one pointer per table slot) ]  header_bytes
    [ state: the values the context owns (see below)                     ]  state_bytes
    [ arena: temporaries of one call (GeneratedModule.arena_bytes)       ]  arena_bytes

The *weights blob* holds every variable and large constant the code reads, each at a
64-byte-aligned offset, in table order. Which of them the context owns (copies into its
state) depends on the export:
- embedded weights, no updates: nothing; the table points into the read-only blob, so any
  number of contexts share one copy of the weights;
- embedded weights with updates (training): the variables (parameters and optimizer state,
  initialized from the blob at context creation); constants stay in the blob;
- external weights: everything; the state *is* the blob, read from NAME.bin, so state
  offsets equal blob offsets.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from graphc.codegen.module import GeneratedModule
from graphc.errors import GraphcError
from graphc.ir import Graph, Signature, TensorType
from graphc.passes.memory_plan import Space

ALIGN = 64
# Upper bound of the C context struct without its table (magic, flags, two pointers);
# the generated C checks it with a _Static_assert.
_HEADER_FIXED_BYTES = 64


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class PortSpec:
    """An input or output: its graph name, its C name, its type."""

    name: str
    cname: str
    type: TensorType

    @property
    def nbytes(self) -> int:
        return self.type.size * self.type.dtype.itemsize


@dataclass(frozen=True)
class BufferSpec:
    """A variable or large constant the code reads through table slot `slot`.

    `state_offset` is None when the buffer is read in place from the (read-only) blob.
    """

    kind: str  # "variable" | "constant"
    name: str
    cname: str
    slot: int
    type: TensorType
    blob_offset: int
    state_offset: int | None
    updated: bool

    @property
    def nbytes(self) -> int:
        return self.type.size * self.type.dtype.itemsize


@dataclass(frozen=True)
class Layout:
    """Everything the C wrapper and the header need to know about one library."""

    name: str
    external: bool
    inputs: tuple[PortSpec, ...]
    outputs: tuple[PortSpec, ...]
    buffers: tuple[BufferSpec, ...]  # variables first (by name), then constants (by name)
    table_len: int
    blob_bytes: int
    state_bytes: int
    arena_bytes: int
    header_bytes: int
    entry_symbol: str
    threads: int = 1  # the code's thread count (compile option `threads`)
    pool_shutdown: str | None = None  # the worker pool's stop function, if the code has one
    # (status the entry point returns, what it means): kernels that check their inputs.
    failures: tuple[tuple[int, str], ...] = ()
    communicator: bool = False  # a data-parallel step: NAME_set_communicator (communicator.py)

    @property
    def variables(self) -> tuple[BufferSpec, ...]:
        return tuple(b for b in self.buffers if b.kind == "variable")

    @property
    def context_bytes(self) -> int:
        return self.header_bytes + self.state_bytes + self.arena_bytes

    @property
    def trains(self) -> bool:
        return any(b.updated for b in self.buffers)


def c_identifier(text: str) -> str:
    """`text` with every character outside [A-Za-z0-9_] replaced by '_', never digit-led."""
    s = re.sub(r"[^A-Za-z0-9_]", "_", text)
    return s if s and not s[0].isdigit() else f"_{s}"


def unique_cnames(names: Sequence[str]) -> list[str]:
    """C names for `names`, distinct even after upper-casing (the header's macros are)."""
    out: list[str] = []
    seen: set[str] = set()
    for name in names:
        base = c_identifier(name)
        cname, n = base, 1
        while cname.upper() in seen:
            n += 1
            cname = f"{base}_{n}"
        seen.add(cname.upper())
        out.append(cname)
    return out


def check_library_name(name: str) -> str:
    """`name` if it can prefix C identifiers, else a GraphcError saying what to pass."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", name):
        raise GraphcError(f"library name {name!r} is not a C identifier (letters, digits, "
                          "'_', not digit-led, at most 64 characters): pass name=...")
    return name


def build_layout(name: str, compiled: Graph, sig: Signature, generated: GeneratedModule,
                 external: bool) -> tuple[Layout, bytes]:
    """The layout of library `name` and its weights blob (each array 64-byte aligned).

    `sig` is the signature as the user gave it (its names are the ports'; passes may rename
    an output node), `compiled` the optimized graph whose variables and constants the
    generated code reads (`generated.table` names them).
    """
    in_names = unique_cnames([n.name for n in sig.inputs])
    out_names = unique_cnames([n.name for n in sig.outputs])
    inputs = tuple(PortSpec(n.name, c, n.type) for n, c in zip(sig.inputs, in_names))
    outputs = tuple(PortSpec(n.name, c, n.type) for n, c in zip(sig.outputs, out_names))
    updated = {var.name for var, _ in sig.updates}
    slots = [(i, e) for i, e in enumerate(generated.table)
             if e.space in (Space.VARIABLE, Space.CONSTANT)]
    buf_names = unique_cnames([str(e.key) for _, e in slots])
    chunks: list[bytes] = []
    buffers: list[BufferSpec] = []
    blob = state = 0
    for (slot, e), cname in zip(slots, buf_names):
        key = str(e.key)
        is_var = e.space == Space.VARIABLE
        array = compiled.variables[key] if is_var else compiled.constants[key]
        data = np.ascontiguousarray(array).tobytes()
        ttype = TensorType(array.shape, array.dtype)
        owned = external or (is_var and bool(sig.updates))
        state_offset: int | None = None
        if external:
            state_offset = blob
        elif owned:
            state_offset = state
            state = _align(state + len(data))
        buffers.append(BufferSpec("variable" if is_var else "constant", key, cname, slot,
                                  ttype, blob, state_offset, key in updated))
        chunks.append(data + bytes(_align(len(data)) - len(data)))
        blob += _align(len(data))
    if external:
        state = blob
    table_len = len(generated.table)
    layout = Layout(
        name=name, external=external, inputs=inputs, outputs=outputs,
        buffers=tuple(buffers), table_len=table_len, blob_bytes=blob, state_bytes=state,
        arena_bytes=_align(generated.arena_bytes),
        header_bytes=_align(_HEADER_FIXED_BYTES + 8 * table_len),
        entry_symbol=generated.entry,
    )
    return layout, b"".join(chunks)


_K1 = np.uint64(0x9E3779B97F4A7C15)
_K2 = np.uint64(0xBF58476D1CE4E5B9)
CHECKSUM_C = """\
/* checksum64: the word-wise hash gc.export computes with numpy (export_layout.checksum64). */
static uint64_t checksum64(const unsigned char *data, size_t nbytes) {
    uint64_t sum = 0;
    for (size_t i = 0; i < nbytes / 8; i++) {
        uint64_t w;
        memcpy(&w, data + 8 * i, 8);
        uint64_t x = w ^ ((uint64_t)i * UINT64_C(0x9E3779B97F4A7C15));
        x = (x ^ (x >> 31)) * UINT64_C(0xBF58476D1CE4E5B9);
        sum += x ^ (x >> 29);
    }
    return sum;
}
"""


def checksum64(data: bytes) -> int:
    """A position-dependent 64-bit checksum of `data` (a multiple of 8 bytes).

    Not cryptographic: it tells a wrong, truncated or corrupted external weights file from
    the right one. Vectorized here, a plain loop in C (`CHECKSUM_C`), same result.
    """
    if len(data) % 8:
        raise ValueError("checksum64 needs a multiple of 8 bytes")
    words = np.frombuffer(data, np.uint64)
    total = np.uint64(0)
    step = 1 << 20
    with np.errstate(over="ignore"):
        for start in range(0, len(words), step):
            w = words[start:start + step]
            i = np.arange(start, start + len(w), dtype=np.uint64)
            x = w ^ (i * _K1)
            x = (x ^ (x >> np.uint64(31))) * _K2
            total += np.sum(x ^ (x >> np.uint64(29)), dtype=np.uint64)
    return int(total)
