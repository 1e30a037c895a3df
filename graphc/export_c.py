"""The C text of an exported library: its header (NAME.h) and its ABI wrapper (NAME.c).

The wrapper is plain C compiled by the system compiler next to the LLVM object; it owns
contexts, the weights, the metadata and argument checks, and calls the generated entry
point (`Layout.entry_symbol`, local to the library). The header documents the ABI itself
(see `header_text`); ABI version `ABI_VERSION` of `graphc.runtime.library`.
"""

from __future__ import annotations

import hashlib

from graphc.export_layout import CHECKSUM_C, Layout, PortSpec
from graphc.ir import DType
from graphc.runtime.library import ABI_VERSION, META_SECTION

CTYPES: dict[DType, str] = {
    DType.float32: "float",
    DType.float64: "double",
    DType.int32: "int32_t",
    DType.int64: "int64_t",
    DType.bool: "uint8_t",  # numpy's bool: one byte, 0 or 1
}

# (suffix, message) of each status code, in code order (code 0 is OK).
STATUS: list[tuple[str, str]] = [
    ("OK", "ok"),
    ("ERR_NULL_ARGUMENT", "a required pointer argument is NULL"),
    ("ERR_BAD_CONTEXT", "not a live context of this library (NULL, destroyed or foreign)"),
    ("ERR_MISALIGNED", "context memory is not 64-byte aligned"),
    ("ERR_SIZE", "wrong size: context memory below CONTEXT_BYTES, or variable bytes differ"),
    ("ERR_OUT_OF_MEMORY", "out of memory"),
    ("ERR_NO_WEIGHTS", "the context has no weights yet (call load_weights)"),
    ("ERR_WEIGHTS_FILE", "cannot open or read the weights file"),
    ("ERR_WEIGHTS_MISMATCH", "the weights file is not this library's (size or checksum)"),
    ("ERR_BAD_INDEX", "no variable with this index"),
    ("ERR_READ_ONLY", "read-only variable (embedded weights of an inference library)"),
    ("ERR_COMPUTE", "the generated code reported a failure"),
]

WEIGHTS_MAGIC = b"GRAPHCW1"
WEIGHTS_HEADER_BYTES = 64


def entry_points(layout: Layout) -> dict[str, str]:
    """Role -> exported symbol (also the linker's export list)."""
    roles = ["abi_version", "metadata", "error_string", "context_bytes", "create", "destroy",
             "init", "run", "run_arrays", "num_variables", "variable_name", "variable_index",
             "variable_bytes", "get_variable", "set_variable"]
    if layout.external:
        roles.append("load_weights")
    return {r: f"{layout.name}_{r}" for r in roles}


def _c_string(text: str) -> str:
    """`text` (ASCII) as C string literal lines, escaped, at most ~90 columns each."""
    out: list[str] = []
    line = ""
    for ch in text:
        if ch in '"\\':
            piece = "\\" + ch
        elif " " <= ch <= "~" and ch != "?":  # '?' escaped: no trigraphs, ever
            piece = ch
        else:
            piece = f"\\{ord(ch):03o}"
        line += piece
        if len(line) >= 88:
            out.append(f'    "{line}"')
            line = ""
    if line or not out:
        out.append(f'    "{line}"')
    return "\n".join(out)


def _shape(shape: tuple[int, ...]) -> str:
    """A C initializer of the dimensions (only for rank >= 1: C has no empty initializer)."""
    return "{" + ", ".join(str(d) for d in shape) + "}"


def _port_macros(prefix: str, kind: str, i: int, p: PortSpec) -> list[str]:
    t = p.type
    base = f"{prefix}_{kind}{i}"
    named = f"{prefix}_{kind}_{p.cname.upper()}"
    return [
        f"/* {kind.lower()} {i} `{p.name}`: {t} ({t.dtype.value}), {p.nbytes} bytes */",
        f'#define {base}_NAME "{p.name}"',
        f"#define {base}_CTYPE {CTYPES[t.dtype]}",
        f'#define {base}_DTYPE "{t.dtype.value}"',
        f"#define {base}_NPY_DESCR \"'{t.dtype.np.str}'\"",
        f"#define {base}_RANK {t.ndim}",
        *([f"#define {base}_SHAPE {_shape(t.shape)}"] if t.ndim else []),
        f"#define {base}_ELEMENTS {t.size}u",
        f"#define {base}_BYTES {p.nbytes}u",
        f"#define {named}_INDEX {i}",
        *([f"#define {named}_SHAPE {base}_SHAPE"] if t.ndim else []),
        f"#define {named}_ELEMENTS {base}_ELEMENTS",
        f"#define {named}_BYTES {base}_BYTES",
        "",
    ]


def context_magic(layout: Layout, meta_json: str) -> int:
    """The tag of this library's contexts: a context of another library (or another build
    of this one) is refused with ERR_BAD_CONTEXT instead of being run with the wrong code."""
    digest = hashlib.sha256(f"{layout.name}\0{meta_json}".encode()).digest()
    return int.from_bytes(digest[:8], "little") | 1  # never 0, the destroyed state


def run_prototype(layout: Layout) -> str:
    params = [f"{layout.name}_context *ctx"]
    params += [f"const {CTYPES[p.type.dtype]} *in_{p.cname}" for p in layout.inputs]
    params += [f"{CTYPES[p.type.dtype]} *out_{p.cname}" for p in layout.outputs]
    return f"int {layout.name}_run({', '.join(params)})"


def header_text(layout: Layout, meta: dict[str, object]) -> str:
    """NAME.h: the ABI, documented, with every size as a constant."""
    n, up = layout.name, layout.name.upper()
    target = meta["target"]
    assert isinstance(target, dict)
    weights = (f"read from a weights file ({n}.bin beside the library by default; "
               f"{n}_load_weights)" if layout.external else "embedded in the library")
    trains = layout.trains
    lines = [
        f"/* {n}.h: C interface of lib{n}.so, generated by graphc {meta['graphc_version']}.",
        " * Do not edit: re-export the model instead.",
        " *",
        f" * Model: graph '{meta['graph']}', signature '{meta['signature']}'. "
        f"ABI version {ABI_VERSION}.",
        f" * Built for {target['triple']}, CPU '{target['cpu']}': the library runs only on CPUs",
        " * with the features listed in its metadata (gc.runtime.load checks them).",
        f" * Weights: {weights}.",
        " * The library needs only libc and libm.",
        " *",
        " * Usage:",
        f" *   {n}_context *ctx;",
        f" *   if ({n}_create(&ctx) != {up}_OK) ...            (malloc'ed, free with "
        f"{n}_destroy)",
        f" *   int rc = {n}_run(ctx, inputs..., outputs...);   ({up}_OK is 0)",
        f" *   if (rc) fprintf(stderr, \"%s\\n\", {n}_error_string(rc));",
        " * Without malloc: give the library CONTEXT_BYTES of 64-byte-aligned memory:",
        f" *   static unsigned char mem[{up}_CONTEXT_BYTES] __attribute__((aligned(64)));",
        f" *   {n}_init(mem, sizeof mem, &ctx);                  (nothing to destroy)",
        " *",
        f" * {n}_run arguments: the context, then every input (const pointer), then every",
        " * output (pointer), in the order below; each points to a C-contiguous (row-major)",
        " * array of exactly the listed shape and element type. Outputs must not overlap",
        " * inputs. Element alignment suffices. Return: 0 or an error code; error_string().",
        f" * {n}_run_arrays is the same with arrays of pointers (for FFIs).",
        " *",
        " * Threads: all state of a call lives in its context, so the library is re-entrant;",
        " * use one context per thread (contexts of an inference library share the read-only",
        " * weights, so extra contexts cost only the arena). Never share one context between",
        " * threads running at the same time.",
    ]
    if trains:
        lines += [
            " *",
            f" * Training: {n}_run is one training step. It reads and updates the parameters",
            " * and optimizer state held in the context (initialized from the embedded weights",
            f" * at {n}_create/{n}_init). Read or overwrite them with {n}_get_variable /",
            f" * {n}_set_variable (index: the {up}_VARIABLE_* constants or "
            f"{n}_variable_index).",
        ]
    else:
        lines += [
            " *",
            f" * Variables ({n}_get_variable) can be read; they are read-only unless the "
            "library",
            " * was exported with external weights (then they live in the context).",
        ]
    lines += [
        " *",
        f" * Metadata (names, shapes, dtypes, target, hashes) as JSON: {n}_metadata(), also",
        f" * in the ELF section {META_SECTION}.",
        " */",
        f"#ifndef GRAPHC_{up}_H",
        f"#define GRAPHC_{up}_H",
        "",
        "#include <stddef.h>",
        "#include <stdint.h>",
        "",
        "#ifdef __cplusplus",
        'extern "C" {',
        "#endif",
        "",
        f"#define {up}_ABI_VERSION {ABI_VERSION}",
        f"#define {up}_CONTEXT_BYTES {layout.context_bytes}u  /* for {n}_init */",
        f"#define {up}_CONTEXT_ALIGN 64",
        f"#define {up}_NUM_INPUTS {len(layout.inputs)}",
        f"#define {up}_NUM_OUTPUTS {len(layout.outputs)}",
        f"#define {up}_NUM_VARIABLES {len(layout.variables)}",
        f"#define {up}_TRAINS {1 if trains else 0}  /* 1: {n}_run updates the variables */",
        "",
    ]
    for i, p in enumerate(layout.inputs):
        lines += _port_macros(up, "INPUT", i, p)
    for i, p in enumerate(layout.outputs):
        lines += _port_macros(up, "OUTPUT", i, p)
    for i, v in enumerate(layout.variables):
        lines += [
            f"/* variable {i} `{v.name}`: {v.type}"
            f"{', updated by ' + n + '_run' if v.updated else ''} */",
            f"#define {up}_VARIABLE_{v.cname.upper()} {i}",
            f"#define {up}_VARIABLE_{v.cname.upper()}_BYTES {v.nbytes}u",
            *([f"#define {up}_VARIABLE_{v.cname.upper()}_SHAPE {_shape(v.type.shape)}"]
              if v.type.ndim else []),
        ]
    lines += ["", "/* Status codes (the return value of every int function). */", "enum {"]
    lines += [f"    {up}_{suffix} = {code},  /* {msg} */"
              for code, (suffix, msg) in enumerate(STATUS)]
    lines += [
        "};",
        "",
        f"typedef struct {n}_context {n}_context;",
        "",
        f"int {n}_abi_version(void);              /* {up}_ABI_VERSION */",
        f"const char *{n}_metadata(void);         /* JSON, static storage */",
        f"const char *{n}_error_string(int code); /* never NULL */",
        f"size_t {n}_context_bytes(void);         /* {up}_CONTEXT_BYTES */",
        "",
        f"/* malloc a context (external weights: also read {n}.bin beside the library). */",
        f"int {n}_create({n}_context **out);",
        f"/* Invalidate a context; frees it if {n}_create made it. NULL is ignored. */",
        f"void {n}_destroy({n}_context *ctx);",
        f"/* A context in caller memory: 64-byte aligned, >= {up}_CONTEXT_BYTES bytes. */",
        f"int {n}_init(void *memory, size_t bytes, {n}_context **out);",
    ]
    if layout.external:
        lines += [f"/* Read the weights file (NULL: {n}.bin beside the library). */",
                  f"int {n}_load_weights({n}_context *ctx, const char *path);"]
    lines += [
        "",
        "/* Run the model" + (" (one training step)" if trains else "") + ". */",
        f"{run_prototype(layout)};",
        f"int {n}_run_arrays({n}_context *ctx, const void *const *inputs, "
        "void *const *outputs);",
        "",
        f"int {n}_num_variables(void);",
        f"const char *{n}_variable_name(int index);  /* NULL if out of range */",
        f"int {n}_variable_index(const char *name);  /* -1 if unknown */",
        f"size_t {n}_variable_bytes(int index);      /* 0 if out of range */",
        "/* Copy a variable out of / into a context; `bytes` must be its exact size. */",
        f"int {n}_get_variable(const {n}_context *ctx, int index, void *dst, size_t bytes);",
        f"int {n}_set_variable({n}_context *ctx, int index, const void *src, size_t bytes);",
        "",
        "#ifdef __cplusplus",
        "}",
        "#endif",
        f"#endif /* GRAPHC_{up}_H */",
        "",
    ]
    return "\n".join(lines)


def source_text(layout: Layout, meta_json: str, blob_checksum: int) -> str:
    """NAME.c: the wrapper. Embedded weights come from `weights.bin` via `.incbin`."""
    n, up = layout.name, layout.name.upper()
    embedded = not layout.external and layout.blob_bytes > 0
    lines = [
        f"/* {n}.c: the C ABI of graphc library {n} (generated; see {n}.h). */",
        "#define _GNU_SOURCE 1  /* posix_memalign, dladdr */",
        "#include <stddef.h>",
        "#include <stdint.h>",
        "#include <stdlib.h>",
        "#include <string.h>",
    ]
    if layout.external:
        lines += ["#include <stdio.h>", "#include <dlfcn.h>"]
    lines += [
        f'#include "{n}.h"',
        "",
        '#define API __attribute__((visibility("default")))',
        f"#define MAGIC UINT64_C(0x{context_magic(layout, meta_json):016x})  "
        "/* this library's contexts only */",
        f"#define TABLE_LEN {layout.table_len}",
        f"#define HEADER_BYTES {layout.header_bytes}u",
        f"#define STATE_BYTES {layout.state_bytes}u",
        f"#define BLOB_BYTES {layout.blob_bytes}u",
        f"#define NUM_BUFFERS {len(layout.buffers)}",
        "",
        f"int32_t {layout.entry_symbol}(void **table);  /* the LLVM code; local symbol */",
        "",
        f"struct {n}_context {{",
        "    uint64_t magic;",
        "    uint32_t owned;   /* made by create: destroy frees it */",
        "    uint32_t loaded;  /* the weights are in place */",
        "    unsigned char *state;",
        "    unsigned char *arena;",
        "    void *table[TABLE_LEN];",
        "};",
        f"_Static_assert(sizeof(struct {n}_context) <= HEADER_BYTES, \"context header\");",
        "",
        "/* The metadata, in its own ELF section so it can be read without loading us. */",
        f'__attribute__((section("{META_SECTION}"), used, aligned(1)))',
        "static const char metadata[] =",
        _c_string(meta_json) + ";",
        "",
    ]
    if embedded:
        sym = f"{n}_weights"
        lines += [
            "/* The weights, assembled straight from a binary file (fast for any size). */",
            f'extern const unsigned char {sym}[] __attribute__((visibility("hidden")));',
            "__asm__(",
            f'    ".section .rodata.{sym},\\"a\\"\\n"',
            '    ".balign 64\\n"',
            f'    ".globl {sym}\\n"',
            f'    ".hidden {sym}\\n"',
            f'    "{sym}:\\n"',
            '    ".incbin \\"weights.bin\\"\\n"',
            '    ".previous\\n");',
            f"#define BLOB {sym}",
        ]
    else:
        lines += ["#define BLOB ((const unsigned char *)0)  /* nothing embedded */"]
    lines += [
        "",
        "struct buffer {",
        "    const char *name;",
        "    uint32_t slot;",
        "    uint32_t in_state;  /* 0: read in place from the read-only blob */",
        "    uint64_t blob_offset, state_offset, bytes;",
        "};",
        "/* Variables first (indices of get/set_variable), then constants. */",
        "static const struct buffer buffers[] = {",
    ]
    for b in layout.buffers:
        state = b.state_offset if b.state_offset is not None else 0
        lines.append(f'    {{"{b.name}", {b.slot}, {int(b.state_offset is not None)}, '
                     f"{b.blob_offset}u, {state}u, {b.nbytes}u}},")
    if not layout.buffers:
        lines.append('    {"", 0, 0, 0, 0, 0},  /* placeholder: C has no empty arrays */')
    lines += [
        "};",
        f"#define NUM_VARIABLES {len(layout.variables)}",
        "",
        f"API int {n}_abi_version(void) {{ return {up}_ABI_VERSION; }}",
        f"API const char *{n}_metadata(void) {{ return metadata; }}",
        f"API size_t {n}_context_bytes(void) {{ return {up}_CONTEXT_BYTES; }}",
        f"API int {n}_num_variables(void) {{ return NUM_VARIABLES; }}",
        "",
        f"API const char *{n}_error_string(int code) {{",
        "    switch (code) {",
    ]
    lines += [f'    case {up}_{suffix}: return "{msg}";' for suffix, msg in STATUS]
    lines += [
        '    default: return "unknown status code";',
        "    }",
        "}",
        "",
        f"static int live(const struct {n}_context *ctx) {{",
        "    return ctx != NULL && ctx->magic == MAGIC;",
        "}",
        "",
        f"API int {n}_init(void *memory, size_t bytes, {n}_context **out) {{",
        f"    if (out == NULL) return {up}_ERR_NULL_ARGUMENT;",
        "    *out = NULL;",
        f"    if (memory == NULL) return {up}_ERR_NULL_ARGUMENT;",
        f"    if ((uintptr_t)memory % 64 != 0) return {up}_ERR_MISALIGNED;",
        f"    if (bytes < {up}_CONTEXT_BYTES) return {up}_ERR_SIZE;",
        f"    struct {n}_context *ctx = (struct {n}_context *)memory;",
        "    memset(ctx, 0, sizeof *ctx);",
        "    ctx->state = (unsigned char *)memory + HEADER_BYTES;",
        "    ctx->arena = ctx->state + STATE_BYTES;",
        "    for (int i = 0; i < NUM_BUFFERS; i++) {",
        "        const struct buffer *b = &buffers[i];",
        "        if (b->in_state) {",
        "            ctx->table[b->slot] = ctx->state + b->state_offset;",
    ]
    if embedded:
        lines += ["            memcpy(ctx->state + b->state_offset, BLOB + b->blob_offset, "
                  "b->bytes);"]
    lines += [
        "        } else {",
        "            ctx->table[b->slot] = (void *)(uintptr_t)(BLOB + b->blob_offset);",
        "        }",
        "    }",
        "    ctx->table[TABLE_LEN - 1] = ctx->arena;",
        f"    ctx->loaded = {0 if layout.external else 1};",
        "    ctx->magic = MAGIC;",
        "    *out = ctx;",
        f"    return {up}_OK;",
        "}",
        "",
    ]
    if layout.external:
        lines += _load_weights_c(layout, blob_checksum)
    lines += [
        f"API int {n}_create({n}_context **out) {{",
        f"    if (out == NULL) return {up}_ERR_NULL_ARGUMENT;",
        "    *out = NULL;",
        "    void *memory = NULL;",
        f"    if (posix_memalign(&memory, 64, {up}_CONTEXT_BYTES) != 0) "
        f"return {up}_ERR_OUT_OF_MEMORY;",
        f"    int rc = {n}_init(memory, {up}_CONTEXT_BYTES, out);",
    ]
    if layout.external:
        lines += [f"    if (rc == {up}_OK) rc = {n}_load_weights(*out, NULL);"]
    lines += [
        f"    if (rc != {up}_OK) {{",
        "        free(memory);",
        "        *out = NULL;",
        "        return rc;",
        "    }",
        "    (*out)->owned = 1;",
        f"    return {up}_OK;",
        "}",
        "",
        f"API void {n}_destroy({n}_context *ctx) {{",
        "    if (!live(ctx)) return;",
        "    ctx->magic = 0;",
        "    if (ctx->owned) free(ctx);",
        "}",
        "",
        f"API int {n}_run_arrays({n}_context *ctx, const void *const *inputs, "
        "void *const *outputs) {",
        f"    if (!live(ctx)) return {up}_ERR_BAD_CONTEXT;",
        f"    if (!ctx->loaded) return {up}_ERR_NO_WEIGHTS;",
        f"    for (int i = 0; i < {up}_NUM_INPUTS; i++) {{",
        f"        if (inputs == NULL || inputs[i] == NULL) return {up}_ERR_NULL_ARGUMENT;",
        "        ctx->table[i] = (void *)(uintptr_t)inputs[i];",
        "    }",
        f"    for (int i = 0; i < {up}_NUM_OUTPUTS; i++) {{",
        f"        if (outputs == NULL || outputs[i] == NULL) return {up}_ERR_NULL_ARGUMENT;",
        f"        ctx->table[{up}_NUM_INPUTS + i] = outputs[i];",
        "    }",
        f"    return {layout.entry_symbol}(ctx->table) == 0 ? {up}_OK : {up}_ERR_COMPUTE;",
        "}",
        "",
        f"API {run_prototype(layout)} {{",
    ]
    ins = ", ".join(f"in_{p.cname}" for p in layout.inputs)
    outs = ", ".join(f"out_{p.cname}" for p in layout.outputs)
    lines += [f"    const void *inputs[] = {{{ins}}};" if ins else
              "    const void *const *inputs = NULL;",
              f"    void *outputs[] = {{{outs}}};" if outs else "    void *const *outputs = NULL;",
              f"    return {n}_run_arrays(ctx, inputs, outputs);", "}", ""]
    lines += [
        f"API const char *{n}_variable_name(int index) {{",
        "    return index >= 0 && index < NUM_VARIABLES ? buffers[index].name : NULL;",
        "}",
        "",
        f"API size_t {n}_variable_bytes(int index) {{",
        "    return index >= 0 && index < NUM_VARIABLES ? (size_t)buffers[index].bytes : 0;",
        "}",
        "",
        f"API int {n}_variable_index(const char *name) {{",
        "    if (name == NULL) return -1;",
        "    for (int i = 0; i < NUM_VARIABLES; i++)",
        "        if (strcmp(buffers[i].name, name) == 0) return i;",
        "    return -1;",
        "}",
        "",
        f"API int {n}_get_variable(const {n}_context *ctx, int index, void *dst, "
        "size_t bytes) {",
        f"    if (!live(ctx)) return {up}_ERR_BAD_CONTEXT;",
        f"    if (index < 0 || index >= NUM_VARIABLES) return {up}_ERR_BAD_INDEX;",
        f"    if (dst == NULL) return {up}_ERR_NULL_ARGUMENT;",
        f"    if (bytes != buffers[index].bytes) return {up}_ERR_SIZE;",
        f"    if (!ctx->loaded) return {up}_ERR_NO_WEIGHTS;",
        "    memcpy(dst, ctx->table[buffers[index].slot], bytes);",
        f"    return {up}_OK;",
        "}",
        "",
        f"API int {n}_set_variable({n}_context *ctx, int index, const void *src, "
        "size_t bytes) {",
        f"    if (!live(ctx)) return {up}_ERR_BAD_CONTEXT;",
        f"    if (index < 0 || index >= NUM_VARIABLES) return {up}_ERR_BAD_INDEX;",
        f"    if (src == NULL) return {up}_ERR_NULL_ARGUMENT;",
        f"    if (bytes != buffers[index].bytes) return {up}_ERR_SIZE;",
        f"    if (!buffers[index].in_state) return {up}_ERR_READ_ONLY;",
        "    memcpy(ctx->table[buffers[index].slot], src, bytes);",
        f"    return {up}_OK;",
        "}",
        "",
    ]
    return "\n".join(lines)


def _load_weights_c(layout: Layout, checksum: int) -> list[str]:
    n, up = layout.name, layout.name.upper()
    return [
        CHECKSUM_C,
        f"API int {n}_load_weights({n}_context *ctx, const char *path) {{",
        f"    if (!live(ctx)) return {up}_ERR_BAD_CONTEXT;",
        "    char buf[4096];",
        "    if (path == NULL) {  /* NAME.bin in the directory of this library */",
        "        Dl_info info;",
        f"        if (dladdr((void *)(uintptr_t)&{n}_load_weights, &info) == 0 ||",
        f"            info.dli_fname == NULL) return {up}_ERR_WEIGHTS_FILE;",
        "        const char *slash = strrchr(info.dli_fname, '/');",
        "        size_t dir = slash ? (size_t)(slash - info.dli_fname) + 1 : 0;",
        f'        const char *file = "{n}.bin";',
        f"        if (dir + strlen(file) + 1 > sizeof buf) return {up}_ERR_WEIGHTS_FILE;",
        "        memcpy(buf, info.dli_fname, dir);",
        "        strcpy(buf + dir, file);",
        "        path = buf;",
        "    }",
        "    FILE *f = fopen(path, \"rb\");",
        f"    if (f == NULL) return {up}_ERR_WEIGHTS_FILE;",
        f"    unsigned char head[{WEIGHTS_HEADER_BYTES}];",
        "    uint64_t size = 0, sum = 0;",
        f"    int rc = {up}_OK;",
        "    ctx->loaded = 0;",
        "    if (fread(head, 1, sizeof head, f) != sizeof head) {",
        f"        rc = {up}_ERR_WEIGHTS_MISMATCH;",
        "    } else {",
        "        memcpy(&size, head + 8, 8);",
        "        memcpy(&sum, head + 16, 8);",
        f'        if (memcmp(head, "{WEIGHTS_MAGIC.decode()}", 8) != 0 || size != BLOB_BYTES ||',
        f"            sum != UINT64_C({checksum}))",
        f"            rc = {up}_ERR_WEIGHTS_MISMATCH;",
        "        else if (fread(ctx->state, 1, BLOB_BYTES, f) != BLOB_BYTES)",
        f"            rc = {up}_ERR_WEIGHTS_MISMATCH;",
        "        else if (checksum64(ctx->state, BLOB_BYTES) != sum)",
        f"            rc = {up}_ERR_WEIGHTS_MISMATCH;",
        "    }",
        "    fclose(f);",
        f"    if (rc == {up}_OK) ctx->loaded = 1;",
        "    return rc;",
        "}",
        "",
    ]


def weights_file_header(blob_bytes: int, checksum: int) -> bytes:
    """The 64-byte header of NAME.bin: magic, payload size, checksum (host byte order)."""
    import struct

    head = WEIGHTS_MAGIC + struct.pack("=QQ", blob_bytes, checksum)
    return head + bytes(WEIGHTS_HEADER_BYTES - len(head))
