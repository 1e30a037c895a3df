"""The C wrapper of an exported library (NAME.c), which implements the ABI of NAME.h.

The wrapper is plain C compiled by the system compiler next to the LLVM object; it owns
contexts, the weights, the metadata and argument checks, and calls the generated entry
point (`Layout.entry_symbol`, local to the library). The header (`export_header`)
documents the ABI; its version is `graphc.runtime.library.ABI_VERSION`.
"""

from __future__ import annotations

import hashlib

from graphc.export.header import STATUS, run_prototype
from graphc.export.layout import CHECKSUM_C, Layout
from graphc.runtime.library import META_SECTION

WEIGHTS_MAGIC = b"GRAPHCW1"
WEIGHTS_HEADER_BYTES = 64


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


def context_magic(layout: Layout, meta_json: str) -> int:
    """The tag of this library's contexts: a context of another library (or another build
    of this one) is refused with ERR_BAD_CONTEXT instead of being run with the wrong code."""
    digest = hashlib.sha256(f"{layout.name}\0{meta_json}".encode()).digest()
    return int.from_bytes(digest[:8], "little") | 1  # never 0, the destroyed state


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
    ]
    if layout.pool_shutdown:
        lines += [
            "/* The code's worker pool (shared by all contexts): joined when we are unloaded. */",
            f"void {layout.pool_shutdown}(void);",
            f"__attribute__((destructor)) static void stop_pool(void) {{ "
            f"{layout.pool_shutdown}(); }}",
            "",
        ]
    lines += [
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
