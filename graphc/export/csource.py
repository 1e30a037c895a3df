"""The C wrapper of an exported library (NAME.c), which implements the ABI of NAME.h.

The wrapper is plain C compiled by the system compiler next to the LLVM object; it owns
contexts, the weights, the metadata and argument checks, and calls the generated entry
point (`Layout.entry_symbol`, local to the library). The header (`header`) documents the
ABI; its version is `graphc.runtime.library_meta.ABI_VERSION`.

The C text lives in templates (package data, `graphc/export/templates/wrapper*.c.in`,
rendered by `render.render`); this module computes what varies per library (sizes, magic
numbers, the buffer table, the metadata literal) and picks the optional parts: embedded or
external weights, the worker pool's destructor.
"""

from __future__ import annotations

import hashlib
import struct
from string import Template

from graphc.export.header import STATUS, dtype_constant, run_prototype
from graphc.export.library_layout import CHECKSUM_C, BufferSpec, Layout
from graphc.export.render import render
from graphc.ir import TensorType
from graphc.runtime.library_meta import META_SECTION

WEIGHTS_MAGIC = b"GRAPHCW1"
WEIGHTS_HEADER_BYTES = 64

# Short fragments: one or two lines, picked in `source_text`.
_FILE_INCLUDES = "#include <stdio.h>\n#include <dlfcn.h>"  # external weights: fopen, dladdr
_NO_BLOB = "#define BLOB ((const unsigned char *)0)  /* nothing embedded */"
_BUFFER_ROW = Template('{${name}, ${slot}, ${in_state}, ${blob_offset}u, ${state_offset}u, '
                       "${nbytes}u},")
_NO_BUFFERS = '{"", 0, 0, 0, 0, 0},  /* placeholder: C has no empty arrays */'
# The compiled-in description of a port (NAME_port_info) and its dimensions in `dims`.
_PORT_ROW = Template("{${name}, ${dtype}, ${rank}, dims + ${first_dim}, ${elements}u, "
                     "${nbytes}u},  /* ${what} */")
_NO_PORTS = "{NULL, 0, 0, dims, 0, 0},  /* placeholder: C has no empty arrays */"
_DIMS_ROW = Template("${dims},  /* ${what} */")
_NO_DIMS = "0  /* placeholder: C has no empty arrays */"
_STATUS_CASE = Template('case ${NAME}_${suffix}: return "${message}";')
# Embedded weights: init copies the buffers the context owns (the variables of a training
# library) from the read-only blob into its state.
_COPY_FROM_BLOB = "memcpy(ctx->state + b->state_offset, BLOB + b->blob_offset, b->bytes);"
_CREATE_LOADS_WEIGHTS = Template("if (rc == ${NAME}_OK) rc = ${name}_load_weights(*out, NULL);")
_INPUT_ARRAY = Template("const void *inputs[] = {${pointers}};")
_NO_INPUTS = "const void *const *inputs = NULL;"  # C has no empty arrays
_OUTPUT_ARRAY = Template("void *outputs[] = {${pointers}};")
_NO_OUTPUTS = "void *const *outputs = NULL;"


def _c_string(text: str) -> list[str]:
    """`text` as C string literals of its UTF-8 bytes, escaped, at most ~90 columns each:
    the pieces of one string (adjacent literals concatenate). At least one piece, maybe
    ``""``."""
    out: list[str] = []
    line = ""
    for byte in text.encode("utf-8"):
        ch = chr(byte)
        if ch in '"\\':
            piece = "\\" + ch
        elif " " <= ch <= "~" and ch != "?":  # '?' escaped: no trigraphs, ever
            piece = ch
        else:  # three octal digits always: the next character can never extend the escape
            piece = f"\\{byte:03o}"
        line += piece
        if len(line) >= 88:
            out.append(f'"{line}"')
            line = ""
    if line or not out:
        out.append(f'"{line}"')
    return out


def context_magic(layout: Layout, meta_json: str) -> int:
    """The tag of this library's contexts: a context of another library (or another build
    of this one) is refused with ERR_BAD_CONTEXT instead of being run with the wrong code."""
    digest = hashlib.sha256(f"{layout.name}\0{meta_json}".encode()).digest()
    return int.from_bytes(digest[:8], "little") | 1  # never 0, the destroyed state


def _c_name_literal(name: str) -> str:
    """A graph name (any text) as one C string literal."""
    return "".join(_c_string(name))


def _buffer_row(b: BufferSpec) -> str:
    """`b`'s entry of the C `buffers` table (state offset 0 when read in place)."""
    return _BUFFER_ROW.substitute(
        name=_c_name_literal(b.name), slot=b.slot, in_state=int(b.state_offset is not None),
        blob_offset=b.blob_offset, state_offset=b.state_offset or 0, nbytes=b.nbytes,
    )


def _port_tables(layout: Layout) -> tuple[list[str], list[str]]:
    """The rows of the C `dims` and `ports` tables: every input, output and variable of
    `layout` (in NAME_port_info's order), each with the facts the loader checks."""
    ports: list[tuple[str, str, TensorType]] = [
        *((f"input {i}", p.name, p.type) for i, p in enumerate(layout.inputs)),
        *((f"output {i}", p.name, p.type) for i, p in enumerate(layout.outputs)),
        *((f"variable {i}", v.name, v.type) for i, v in enumerate(layout.variables)),
    ]
    dims: list[str] = []
    rows: list[str] = []
    first = 0
    for what, name, t in ports:
        if t.ndim:
            dims.append(_DIMS_ROW.substitute(dims=", ".join(f"{d}u" for d in t.shape),
                                             what=what))
        rows.append(_PORT_ROW.substitute(
            name=_c_name_literal(name), dtype=dtype_constant(layout.name, t.dtype),
            rank=t.ndim, first_dim=first, elements=t.size,
            nbytes=t.size * t.dtype.itemsize, what=what,
        ))
        first += t.ndim
    return dims or [_NO_DIMS], rows or [_NO_PORTS]


def _lines(rows: list[str]) -> str:
    """One row per line (a block value of `render`)."""
    return "".join(row + "\n" for row in rows)


def source_text(layout: Layout, meta_json: str, blob_checksum: int, meta_sha256: str) -> str:
    """NAME.c: the wrapper. Embedded weights come from `weights.bin` via `.incbin`.

    `meta_json` is the metadata as stored in the library (it also keys the context magic);
    `meta_sha256` its digest (`graphc.runtime.library_meta.metadata_sha256`), compiled in for the
    loader to check the stored metadata against; `blob_checksum` is
    `graphc.export.library_layout.checksum64` of the weights blob, compiled in for the
    loader and checked by load_weights (external weights).
    """
    n, up = layout.name, layout.name.upper()
    embedded = not layout.external and layout.blob_bytes > 0
    ins = ", ".join(f"in_{p.cname}" for p in layout.inputs)
    outs = ", ".join(f"out_{p.cname}" for p in layout.outputs)
    dims, ports = _port_tables(layout)
    return render(
        "wrapper.c.in",
        name=n,
        NAME=up,
        file_includes=_FILE_INCLUDES if layout.external else "",
        magic=f"{context_magic(layout, meta_json):016x}",
        table_len=layout.table_len,
        header_bytes=layout.header_bytes,
        state_bytes=layout.state_bytes,
        arena_bytes=layout.arena_bytes,
        blob_bytes=layout.blob_bytes,
        weights_checksum64=f"{blob_checksum:016x}",
        num_buffers=len(layout.buffers),
        metadata_sha256=meta_sha256,
        entry_symbol=layout.entry_symbol,
        # Optional parts bring the blank line that follows them (absent: no line at all).
        worker_pool=(render("wrapper_worker_pool.c.in", pool_shutdown=layout.pool_shutdown)
                     + "\n" if layout.pool_shutdown else ""),
        meta_section=META_SECTION,
        metadata="\n    ".join(_c_string(meta_json)),
        blob=(render("wrapper_embedded_weights.c.in", symbol=f"{n}_weights") if embedded
              else _NO_BLOB),
        buffers=_lines([_buffer_row(b) for b in layout.buffers] or [_NO_BUFFERS]),
        num_variables=len(layout.variables),
        dims=_lines(dims),
        ports=_lines(ports),
        failure_cases=_lines([f"case {code}: return " + " ".join(_c_string(message)) + ";"
                              for code, message in layout.failures]),
        status_cases=_lines([_STATUS_CASE.substitute(NAME=up, suffix=suffix, message=msg)
                             for suffix, msg in STATUS]),
        copy_from_blob=_COPY_FROM_BLOB if embedded else "",
        loaded=0 if layout.external else 1,  # external: not until load_weights succeeds
        load_weights=_load_weights(layout) + "\n" if layout.external else "",
        create_loads_weights=(_CREATE_LOADS_WEIGHTS.substitute(NAME=up, name=n)
                              if layout.external else ""),
        run_prototype=run_prototype(layout),
        input_array=_INPUT_ARRAY.substitute(pointers=ins) if ins else _NO_INPUTS,
        output_array=_OUTPUT_ARRAY.substitute(pointers=outs) if outs else _NO_OUTPUTS,
    )


def _load_weights(layout: Layout) -> str:
    """NAME_load_weights (external weights): read NAME.bin, check it against the compiled-in
    size and checksum (BLOB_BYTES, WEIGHTS_CHECKSUM64), fill the state."""
    return render(
        "wrapper_load_weights.c.in", checksum64=CHECKSUM_C, name=layout.name,
        NAME=layout.name.upper(), file_header_bytes=WEIGHTS_HEADER_BYTES,
        file_magic=WEIGHTS_MAGIC.decode(),
    )


def weights_file_header(blob_bytes: int, checksum: int) -> bytes:
    """The 64-byte header of NAME.bin: magic, payload size, checksum (host byte order)."""
    head = WEIGHTS_MAGIC + struct.pack("=QQ", blob_bytes, checksum)
    return head + bytes(WEIGHTS_HEADER_BYTES - len(head))
