"""`export()`: compile a graph signature into a shared library usable from C with only libc.

    gc.export(g, "build/libmlp.so", inputs=[x], outputs=logits)
    -> build/libmlp.so, build/mlp.h   (+ build/mlp.bin with weights="external")

The same stages as `gc.compile` (pass pipeline, fusion, memory plan, LLVM module) produce
the same machine code, emitted as an object file instead of being loaded into a JIT; the
system C compiler links it with a generated C wrapper (`csource`) that implements the ABI
documented in the generated header: contexts, argument order, status codes, variables,
metadata. The metadata (JSON) is returned by ``NAME_metadata()`` and stored in the ELF
section `.graphc_meta`, where `gc.runtime.load` reads it before loading anything. The
wrapper also carries what the code was compiled for (every port's name, dtype, shape and
size, the context, arena and weights sizes, the weights checksum, the metadata's sha256):
after loading, `gc.runtime.load` refuses metadata that disagrees with it.

Files are written atomically (a failed export leaves earlier files intact). The library
depends only on libc and libm; it runs on CPUs with the features of the exporting machine
(recorded in the metadata and checked by `gc.runtime.load`). A data-parallel training step
(with allreduces) takes its communicator from its caller (`export/communicator.py`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from graphc._version import __version__
from graphc.codegen.opaque.collective import COMM_SLOT
from graphc.codegen.threadpool import SHUTDOWN
from graphc.errors import ArgumentError, GraphcError
from graphc.export import communicator
from graphc.export.csource import source_text, weights_file_header
from graphc.export.header import entry_points, header_text
from graphc.export.library_layout import (
    Layout,
    build_layout,
    c_identifier,
    check_library_name,
    checksum64,
)
from graphc.export.link import find_c_compiler, link_shared, object_code
from graphc.io.atomic import atomic_write
from graphc.io.textir import format_graph
from graphc.ir import Graph, Node, Signature
from graphc.options import CompileOptions
from graphc.pipeline import DEFAULT_OPTIONS, lower
from graphc.runtime.arguments import resolve_signature
from graphc.runtime.executable import failure_messages
from graphc.runtime.library_meta import ABI_VERSION, META_FORMAT, metadata_sha256, metadata_text

WEIGHTS_MODES = ("embedded", "external")


@dataclass(frozen=True)
class ExportedLibrary:
    """What `export` wrote: the library, its header, the weights file (external only)."""

    name: str
    library: Path
    header: Path
    weights: Path | None
    metadata: dict[str, Any]


def export(
    graph: Graph,
    path: str | os.PathLike[str],
    inputs: Sequence[Node] | None = None,
    outputs: Sequence[Node] | Node | None = None,
    updates: Mapping[Node, Node] | Sequence[tuple[Node, Node]] | None = None,
    *,
    signature: str | None = None,
    name: str | None = None,
    weights: str = "embedded",
    options: CompileOptions | None = None,
) -> ExportedLibrary:
    """Write ``libNAME.so`` at `path` and ``NAME.h`` beside it; return what was written.

    What to compile is given as in `gc.compile` (inputs/outputs/updates, or signature=).
    NAME is `name`, or `path`'s file name without ``lib`` and ``.so`` (``libmlp.so`` ->
    ``mlp``); it prefixes every C symbol and must be a C identifier. If `path` is an
    existing directory, ``libNAME.so`` goes inside it (NAME defaults to the graph's name).
    With `updates`, the library's run function is a training step whose parameters and
    optimizer state live in its context. `weights="external"` writes the weights to
    ``NAME.bin`` beside the library instead of embedding them. The code is single-threaded
    unless `options.threads` > 1 (results do not depend on it). Raises GraphcError (no C
    compiler, bad name) or CompileError (code generation, linking).
    """
    options = options or DEFAULT_OPTIONS
    if weights not in WEIGHTS_MODES:
        raise ArgumentError(f"weights must be one of {', '.join(WEIGHTS_MODES)}, "
                            f"got {weights!r}")
    sig, single = resolve_signature(graph, inputs, outputs, updates, signature)
    lib_path, name = _paths(Path(path), name, graph)
    cc = find_c_compiler()  # before the expensive part: fail fast without a compiler

    # Single-threaded unless asked: a library runs on machines we do not know, inside
    # programs that may not want background threads. With threads > 1 the code carries its
    # worker pool (shared by the library's contexts, joined by the library's destructor).
    if options.threads is None:
        options = replace(options, threads=1)
    lowered = lower(graph, sig, options, "llvm", entry=f"{name}_graphc_entry",
                    embedded_pool=True)
    generated, target = lowered.module, lowered.target
    assert generated is not None and lowered.optimized is not None
    threads = lowered.settings.threads
    ir_text = generated.ir_text
    cache = Path(options.cache_dir) if options.cache_dir else None
    obj = object_code(ir_text, target, options.opt_level, cache)

    external = weights == "external"
    layout, blob = build_layout(name, lowered.optimized, sig, generated, external)
    assert lowered.plan is not None
    layout = replace(layout, threads=threads,
                     pool_shutdown=SHUTDOWN if SHUTDOWN in generated.module.globals else None,
                     failures=failure_messages(lowered.plan.program.kernels),
                     # an allreduce: the caller provides the communicator (communicator.py)
                     communicator=COMM_SLOT in generated.module.globals)
    checksum = checksum64(blob)
    meta = _metadata(layout, graph, sig, single, ir_text, blob, checksum, target)
    # The stored text is the canonical one, whose digest the code carries: the loader
    # recomputes it from the metadata it reads and refuses a library whose text was edited.
    meta_json = metadata_text(meta)
    header = header_text(layout, meta)
    source = source_text(layout, meta_json, checksum, metadata_sha256(meta))
    if layout.communicator:
        header = communicator.add_to_header(header, name)
        source += communicator.source_part(name)

    with tempfile.TemporaryDirectory(prefix="graphc-export-") as tmp:
        built = link_shared(cc, Path(tmp), name, obj, source, header,
                            blob if not external and blob else None,
                            list(entry_points(layout).values()),
                            pthread=layout.pool_shutdown is not None)
        lib_bytes = built.read_bytes()
    header_path, weights_path = _write(lib_path, name, lib_bytes, header,
                                       blob if external else None, checksum)
    return ExportedLibrary(name, lib_path, header_path, weights_path, meta)


def _write(lib_path: Path, name: str, lib_bytes: bytes, header: str, external_blob: bytes | None,
           checksum: int) -> tuple[Path, Path | None]:
    """Write the library, NAME.h and (external weights) NAME.bin, each atomically."""
    header_path = lib_path.parent / f"{name}.h"
    weights_path = lib_path.parent / f"{name}.bin" if external_blob is not None else None

    def write_weights(f: BinaryIO) -> None:
        assert external_blob is not None
        f.write(weights_file_header(len(external_blob), checksum))
        f.write(external_blob)

    try:
        if weights_path is not None:
            atomic_write(weights_path, write_weights)
        atomic_write(header_path, lambda f: f.write(header.encode()))
        atomic_write(lib_path, lambda f: f.write(lib_bytes), mode=0o777)  # as `cc -o` would
    except OSError as exc:
        raise GraphcError(f"cannot write {lib_path}: {exc.strerror or exc}") from None
    return header_path, weights_path


def _paths(path: Path, name: str | None, graph: Graph) -> tuple[Path, str]:
    if path.is_dir():
        name = name or c_identifier(graph.name)
        return path / f"lib{check_library_name(name)}.so", name
    if name is None:
        stem = path.name[:-3] if path.name.endswith(".so") else path.stem
        name = stem[3:] if stem.startswith("lib") and len(stem) > 3 else stem
    if not path.parent.is_dir():
        raise GraphcError(f"cannot write {path}: directory {path.parent} does not exist")
    return path, check_library_name(name)


def _metadata(layout: Layout, graph: Graph, sig: Signature, single: bool, ir_text: str,
              blob: bytes, checksum: int, target: Any) -> dict[str, Any]:
    def port(p: Any) -> dict[str, Any]:
        return {"name": p.name, "c_name": p.cname, "dtype": p.type.dtype.value,
                "shape": list(p.type.shape), "bytes": p.nbytes}

    return {
        "format": META_FORMAT,
        "abi_version": ABI_VERSION,
        "graphc_version": __version__,
        "name": layout.name,
        "graph": graph.name,
        "signature": sig.name,
        "single_output": single,
        "trains": layout.trains,
        "inputs": [port(p) for p in layout.inputs],
        "outputs": [port(p) for p in layout.outputs],
        "variables": [{**port(v), "updated": v.updated, "writable": v.state_offset is not None}
                      for v in layout.variables],
        "constants": [port(b) for b in layout.buffers if b.kind == "constant"],
        "entry_points": entry_points(layout),
        "context_bytes": layout.context_bytes,
        "threads": layout.threads,
        "worker_pool": layout.pool_shutdown is not None,
        "arena_bytes": layout.arena_bytes,
        "weights": {
            "storage": "external" if layout.external else "embedded",
            "file": f"{layout.name}.bin" if layout.external else None,
            "bytes": len(blob),
            "checksum64": f"{checksum:016x}",
            "sha256": hashlib.sha256(blob).hexdigest(),
        },
        "target": {"triple": target.triple, "cpu": target.cpu, "features": target.features},
        # The graph as the user gave it (text IR: structure, not weights) and the LLVM module.
        "graph_sha256": hashlib.sha256(format_graph(graph).encode()).hexdigest(),
        "module_sha256": hashlib.sha256(ir_text.encode()).hexdigest(),
    }
