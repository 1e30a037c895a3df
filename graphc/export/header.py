"""The header of an exported library (NAME.h): the C ABI, documented, every size a constant.

The C text lives in templates (package data, `graphc/export/templates/header*.h.in`); this
module computes what varies per library (names, sizes, port and variable macros) and picks
the optional parts (worker pool, training or inference notes, external weights). It also
holds what the wrapper (`csource`) shares with it: C element types, status codes, the
exported entry points, the run prototype and the template renderer (`render`).
"""

from __future__ import annotations

from string import Template

from graphc.export.library_layout import BufferSpec, Layout, PortSpec
from graphc.export.render import render
from graphc.ir import DType, TensorType
from graphc.runtime.library_meta import ABI_VERSION, DTYPE_CODES, META_SECTION, PORT_KINDS

CTYPES: dict[DType, str] = {
    DType.float32: "float",
    DType.float64: "double",
    DType.int32: "int32_t",
    DType.int64: "int64_t",
    DType.bool: "uint8_t",  # numpy's bool: one byte, 0 or 1
    DType.bfloat16: "uint16_t",  # bf16 bit patterns: the upper half of a float's
    DType.int8: "int8_t",
    DType.uint8: "uint8_t",
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
    ("ERR_COMPUTE", "an input is invalid (an index out of range); _failure() says which"),
]

# Short fragments: one or two lines, picked in `header_text`.
_SHAPE_MACRO = Template("#define ${macro}_SHAPE ${shape}")
_SHAPE_ALIAS = Template("#define ${by_name}_SHAPE ${by_index}_SHAPE")
_STATUS_CODE = Template("${NAME}_${suffix} = ${code},  /* ${message} */")
_ENUM_CONSTANT = Template("${constant} = ${code},${comment}")
_EXTERNAL_WEIGHTS = Template(
    "read from a weights file (${name}.bin beside the library by default; ${name}_load_weights)"
)
_EMBEDDED_WEIGHTS = "embedded in the library"
_LOAD_WEIGHTS = Template(
    "/* Read the weights file (NULL: ${name}.bin beside the library). */\n"
    "int ${name}_load_weights(${name}_context *ctx, const char *path);"
)

# --- the header ----------------------------------------------------------------------------


def entry_points(layout: Layout) -> dict[str, str]:
    """Role -> exported symbol (also the linker's export list)."""
    roles = ["abi_version", "metadata", "metadata_sha256", "error_string", "failure",
             "context_bytes",
             "arena_bytes", "weights_bytes", "weights_checksum64", "num_ports", "port_info",
             "create", "destroy", "init", "run", "run_arrays", "num_variables",
             "variable_name", "variable_index", "variable_bytes", "get_variable",
             "set_variable"]
    if layout.external:
        roles.append("load_weights")
    if layout.communicator:
        roles.append("set_communicator")
    return {r: f"{layout.name}_{r}" for r in roles}


def dtype_constant(name: str, dtype: DType) -> str:
    """The header's constant for `dtype` in library `name` (``MLP_DTYPE_FLOAT32``): its
    code in `NAME_port.dtype` is `graphc.runtime.library_meta.DTYPE_CODES[dtype]`."""
    return f"{name.upper()}_DTYPE_{dtype.value.upper()}"


def _port_kind_constants(name: str) -> str:
    """The enum body of the port kinds (``MLP_PORT_INPUT = 0,`` ...), one per line."""
    return "".join(
        _ENUM_CONSTANT.substitute(constant=f"{name.upper()}_PORT_{kind.upper()}", code=code,
                                  comment="") + "\n"
        for code, kind in enumerate(PORT_KINDS)
    )


def _dtype_constants(name: str) -> str:
    """The enum body of the element types (``MLP_DTYPE_FLOAT32 = 1,  /* float */`` ...)."""
    return "".join(
        _ENUM_CONSTANT.substitute(constant=dtype_constant(name, dtype), code=code,
                                  comment=f"  /* {CTYPES[dtype]} */") + "\n"
        for dtype, code in DTYPE_CODES.items()
    )


def _shape(shape: tuple[int, ...]) -> str:
    """A C initializer of the dimensions (only for rank >= 1: C has no empty initializer)."""
    return "{" + ", ".join(str(d) for d in shape) + "}"


def _shape_macro(macro: str, t: TensorType) -> str:
    """``#define MACRO_SHAPE {...}``, or "" for rank 0 (no macro: see `_shape`)."""
    return _SHAPE_MACRO.substitute(macro=macro, shape=_shape(t.shape)) if t.ndim else ""


def _port_macros(up: str, kind: str, i: int, p: PortSpec) -> str:
    """The macros of port `i` of `kind` ("INPUT" | "OUTPUT"), by index and by C name."""
    t = p.type
    by_index, by_name = f"{up}_{kind}{i}", f"{up}_{kind}_{p.cname.upper()}"
    alias = _SHAPE_ALIAS.substitute(by_name=by_name, by_index=by_index) if t.ndim else ""
    return render(
        "header_port.h.in", kind=kind.lower(), index=i, port_name=p.name, type=t,
        dtype=t.dtype.value, nbytes=p.nbytes, by_index=by_index, by_name=by_name,
        ctype=CTYPES[t.dtype], npy_descr=t.dtype.np.str, rank=t.ndim,
        shape_macro=_shape_macro(by_index, t), elements=t.size, shape_alias=alias,
    )


def _variable_macros(layout: Layout, i: int, v: BufferSpec) -> str:
    """The macros of variable `i`: its index, size and shape."""
    by_name = f"{layout.name.upper()}_VARIABLE_{v.cname.upper()}"
    return render(
        "header_variable.h.in", index=i, variable_name=v.name, type=v.type,
        updated_note=f", updated by {layout.name}_run" if v.updated else "",
        by_name=by_name, nbytes=v.nbytes, shape_macro=_shape_macro(by_name, v.type),
    )


def run_prototype(layout: Layout) -> str:
    """``int NAME_run(ctx, const T *in_X..., T *out_Y...)``: inputs, then outputs, in
    signature order (no trailing semicolon; the header and the wrapper both use it)."""
    params = [f"{layout.name}_context *ctx"]
    params += [f"const {CTYPES[p.type.dtype]} *in_{p.cname}" for p in layout.inputs]
    params += [f"{CTYPES[p.type.dtype]} *out_{p.cname}" for p in layout.outputs]
    return f"int {layout.name}_run({', '.join(params)})"


def header_text(layout: Layout, meta: dict[str, object]) -> str:
    """NAME.h: the ABI, documented, with every size as a constant.

    `meta` is the library's metadata; the header quotes its ``graphc_version``, ``graph``,
    ``signature`` and ``target`` (``triple``, ``cpu``).
    """
    n, up = layout.name, layout.name.upper()
    target = meta["target"]
    assert isinstance(target, dict)
    trains = layout.trains
    # Each port's block ends with a blank line; the variables' blocks run on without one.
    ports = [_port_macros(up, "INPUT", i, p) + "\n" for i, p in enumerate(layout.inputs)]
    ports += [_port_macros(up, "OUTPUT", i, p) + "\n" for i, p in enumerate(layout.outputs)]
    variables = [_variable_macros(layout, i, v) for i, v in enumerate(layout.variables)]
    return render(
        "header.h.in",
        name=n,
        NAME=up,
        graphc_version=meta["graphc_version"],
        graph=meta["graph"],
        signature=meta["signature"],
        abi_version=ABI_VERSION,
        triple=target["triple"],
        cpu=target["cpu"],
        weights=_EXTERNAL_WEIGHTS.substitute(name=n) if layout.external else _EMBEDDED_WEIGHTS,
        worker_pool_doc=(render("header_worker_pool.h.in", threads=layout.threads)
                     if layout.pool_shutdown else ""),
        variables_doc=(render("header_training.h.in", name=n, NAME=up) if trains
                   else render("header_inference.h.in", name=n)),
        meta_section=META_SECTION,
        context_bytes=layout.context_bytes,
        num_inputs=len(layout.inputs),
        num_outputs=len(layout.outputs),
        num_variables=len(layout.variables),
        trains=1 if trains else 0,
        ports="".join(ports),
        variable_macros="".join(variables),
        status_codes="".join(
            _STATUS_CODE.substitute(NAME=up, suffix=suffix, code=code, message=msg) + "\n"
            for code, (suffix, msg) in enumerate(STATUS)
        ),
        port_kinds=_port_kind_constants(n),
        dtype_codes=_dtype_constants(n),
        load_weights=_LOAD_WEIGHTS.substitute(name=n) if layout.external else "",
        run_note=" (one training step)" if trains else "",
        run_prototype=run_prototype(layout),
    )
