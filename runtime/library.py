"""`load(path)`: an exported graphc library (`gc.export`) back in Python, called like an Executable.

Before anything is loaded into the process, the file is checked from the outside: it must be
an ELF shared object with a `.graphc_meta` section (found by parsing the ELF section table,
bounded reads only) holding the library's JSON metadata, of an ABI version this graphc knows,
built for this machine's architecture and for CPU features this machine has. Any failure is
a `GraphcError` naming the file and the reason; a file that is not a graphc library never
reaches `dlopen` (whose constructors would run, and whose code could crash the process).

Then the library is opened with ctypes (its constructors run: the file passed the checks
above) and, before any call, its metadata is checked against what its code was compiled for:
the metadata is plain bytes in the file, which an edit or corruption can change without
changing the code, and the calls below size every buffer from it. So each input, output and
variable (name, dtype, shape, element and byte counts), the port counts, the context, arena
and weights sizes and the weights checksum are compared with constants compiled into the
code (``NAME_num_ports``, ``NAME_port_info``, ``NAME_context_bytes``, ...), and the whole
metadata with the sha256 of its canonical text the code carries (``NAME_metadata_sha256``);
any difference is a `GraphcError`. This is an integrity check, not a signature: it refuses
edited or corrupted metadata, not a file whose code was rewritten to match.

Then one context is created (its state: parameters, optimizer state, scratch arena), and
calls go through ``NAME_run_arrays``. The call convention is `runtime.arguments'`
(positional or by name, checked before native code runs); outputs are fresh numpy arrays.
Calls are serialized by a lock because the context is one; load the library again for
parallel calls (each `Library` has its own context). A training library updates its
parameters in its context; read and write them through `Library.variables`.

Note: the dynamic loader identifies libraries by path, so loading a file that was rewritten
at the same path after an earlier `load` in this process would reuse the old code; `load`
refuses that case instead (the metadata would disagree) -- export to a new path.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from graphc.errors import ArgumentError, GraphcError
from graphc.ir import DType, TensorType
from graphc.runtime.arguments import bind_arguments
from graphc.runtime.library_meta import (  # noqa: F401 (re-exported: the library's ABI)
    ABI_VERSION,
    DTYPE_CODES,
    META_FORMAT,
    META_SECTION,
    PORT_KINDS,
    check_compatible,
    check_schema,
    metadata_sha256,
    metadata_text,
    read_metadata,
    tensor_type,
)

_ERR_COMPUTE = 11  # NAME_ERR_COMPUTE (graphc.export.header.STATUS)


@dataclass(frozen=True)
class Port:
    """An input, output or variable of a library: its name and type (like a Node's)."""

    name: str
    type: TensorType

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def dtype(self) -> DType:
        return self.type.dtype


class _CPort(ctypes.Structure):
    """``NAME_port`` of the header: one input, output or variable as the code has it."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("dtype", ctypes.c_int32),
        ("rank", ctypes.c_int32),
        ("shape", ctypes.POINTER(ctypes.c_uint64)),
        ("elements", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
    ]


_MAX_RANK = 64  # far above any real rank: a bound on what we read through `shape`
_DTYPE_NAMES = {code: dtype.value for dtype, code in DTYPE_CODES.items()}

_P = ctypes.c_void_p
_PP = ctypes.POINTER(ctypes.c_void_p)
# role in the metadata's "entry_points" -> (restype, argtypes) of the C function.
_PROTOTYPES: dict[str, tuple[Any, list[Any]]] = {
    "abi_version": (ctypes.c_int, []),
    "metadata": (_P, []),
    "metadata_sha256": (ctypes.c_char_p, []),
    "context_bytes": (ctypes.c_size_t, []),
    "arena_bytes": (ctypes.c_size_t, []),
    "weights_bytes": (ctypes.c_size_t, []),
    "weights_checksum64": (ctypes.c_uint64, []),
    "num_ports": (ctypes.c_int, [ctypes.c_int]),
    "port_info": (ctypes.POINTER(_CPort), [ctypes.c_int, ctypes.c_int]),
    "error_string": (ctypes.c_char_p, [ctypes.c_int]),
    "failure": (ctypes.c_char_p, [_P]),
    "create": (ctypes.c_int, [_PP]),
    "init": (ctypes.c_int, [_P, ctypes.c_size_t, _PP]),
    "destroy": (None, [_P]),
    "load_weights": (ctypes.c_int, [_P, ctypes.c_char_p]),
    "run_arrays": (ctypes.c_int, [_P, _PP, _PP]),
    "get_variable": (ctypes.c_int, [_P, ctypes.c_int, _P, ctypes.c_size_t]),
    "set_variable": (ctypes.c_int, [_P, ctypes.c_int, _P, ctypes.c_size_t]),
    "set_communicator": (None, [_P]),
}
_REQUIRED_ENTRY_POINTS = ("abi_version", "metadata", "metadata_sha256", "context_bytes",
                          "arena_bytes", "weights_bytes", "weights_checksum64", "num_ports",
                          "port_info", "error_string", "failure", "create", "init", "destroy",
                          "run_arrays", "get_variable", "set_variable")


class Library:
    """A graphc library loaded into this process, with one context. Call it like an Executable.

    Attributes: `path`, `name`, `metadata` (the JSON dict), `inputs`/`outputs` (Ports, in
    call order), `single_output`, `variables` (read/write the context's parameters).
    """

    def __init__(self, path: Path, meta: dict[str, Any], weights: Path | None = None):
        self.path = path
        self.metadata = meta
        self.name: str = meta["name"]
        self.inputs = [Port(e["name"], tensor_type(e)) for e in meta["inputs"]]
        self.outputs = [Port(e["name"], tensor_type(e)) for e in meta["outputs"]]
        self.single_output: bool = meta["single_output"]
        self._lock = threading.Lock()
        try:
            self._dll = ctypes.CDLL(str(path))
        except OSError as exc:
            raise GraphcError(f"cannot load {path}: {exc}") from None
        self._fn = {role: self._bind(role) for role in _PROTOTYPES
                    if role in meta["entry_points"]}
        for role in _REQUIRED_ENTRY_POINTS:
            self._call(role)  # fail now, not at the first call
        abi = self._call("abi_version")()
        if abi != meta["abi_version"]:
            raise GraphcError(f"{path}: the code reports ABI version {abi}, its metadata "
                              f"{meta['abi_version']} (an older library already loaded from "
                              "this path? export to a new path)")
        native_meta = ctypes.cast(self._call("metadata")(), ctypes.c_char_p).value or b""
        try:
            same = json.loads(native_meta.decode()) == meta
        except (UnicodeDecodeError, json.JSONDecodeError):
            same = False
        if not same:
            raise GraphcError(f"{path}: the loaded code's metadata differs from the file's (a "
                              "library already loaded from this path? export to a new path)")
        # Before any context or call: everything below sizes buffers from the metadata.
        _check_metadata_matches_code(path, meta, self._call)
        self._ctx = ctypes.c_void_p()
        self._memory: np.ndarray | None = None
        if weights is None:
            self._check(self._call("create")(ctypes.byref(self._ctx)), "creating a context")
        else:
            if meta["weights"].get("storage") != "external":
                raise ArgumentError(f"{path} embeds its weights; weights= is only for "
                                    "libraries exported with weights='external'")
            self._memory = _aligned_bytes(meta["context_bytes"])
            self._check(self._call("init")(self._memory.ctypes.data, self._memory.nbytes,
                                           ctypes.byref(self._ctx)), "initializing a context")
            self._check(self._call("load_weights")(self._ctx, os.fsencode(weights)),
                        f"loading weights from {weights}")
        # Invalidate (and free, if the library allocated it) the context when we go away;
        # the memory we may have given it stays alive until then (it is an argument).
        self._finalizer = weakref.finalize(self, _destroy, self._call("destroy"),
                                           self._ctx.value, self._memory)
        self.variables = LibraryVariables(self, meta["variables"])
        if "set_communicator" in self._fn:  # a data-parallel step: reduce over this job
            from graphc.runtime import mpi  # MPI (and the JIT) only for such libraries

            self._call("set_communicator")(mpi.comm_address() or None)

    def _bind(self, role: str) -> Any:
        symbol = self.metadata["entry_points"].get(role)
        if symbol != f"{self.name}_{role}":  # never look up any other symbol (e.g. libc's)
            raise GraphcError(f"{self.path}: invalid metadata: entry point {role!r} is "
                              f"{symbol!r}, expected {self.name + '_' + role!r}")
        try:
            fn = getattr(self._dll, symbol)
        except AttributeError:
            raise GraphcError(f"{self.path}: entry point {symbol!r} is missing") from None
        fn.restype, fn.argtypes = _PROTOTYPES[role]
        return fn

    def _call(self, role: str) -> Any:
        fn = self._fn.get(role)
        if fn is None:
            raise GraphcError(f"{self.path} has no {role!r} entry point")
        return fn

    def _check(self, status: int, what: str) -> None:
        failure = self._call("failure")(self._ctx) if status == _ERR_COMPUTE else None
        if failure is not None:  # the message names the op and the model's source line
            raise GraphcError(f"library {self.name} ({self.path.name}): "
                              f"{failure.decode(errors='replace')}")
        if status != 0:
            text = self._call("error_string")(status)
            raise GraphcError(f"library {self.name} ({self.path.name}): {what} failed: "
                              f"{(text or b'?').decode()} (status {status})")

    @property
    def input_names(self) -> list[str]:
        return [p.name for p in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [p.name for p in self.outputs]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        arrays = bind_arguments(self.inputs, args, kwargs, f"library {self.name}")
        outputs = [np.empty(p.shape, p.dtype.np) for p in self.outputs]
        ins = (ctypes.c_void_p * max(1, len(arrays)))(*[a.ctypes.data for a in arrays])
        outs = (ctypes.c_void_p * max(1, len(outputs)))(*[o.ctypes.data for o in outputs])
        with self._lock:
            status = self._call("run_arrays")(self._ctx, ins, outs)
        self._check(status, "running")
        if self.single_output:
            return outputs[0]
        return tuple(outputs)

    def __repr__(self) -> str:
        return f"<graphc Library {self.name!r} from {self.path}>"


def _check_metadata_matches_code(path: Path, meta: Mapping[str, Any],
                                 call: Callable[[str], Any]) -> None:
    """Raise GraphcError unless `meta` states what the loaded code was compiled for.

    `call(role)` is the code's entry point of `role`. First the facts the calls rely on for
    memory safety, each against the constant the code carries, so that the message names
    the fact: per port kind the count, per port its name (binding by name and variable
    indices follow the order), dtype, shape, element count and byte count; the context and
    arena sizes; the weights' size and checksum. Then every other fact at once: the sha256
    of the metadata's canonical text against the one compiled into the code.
    """
    wrong: list[str] = []

    def compare(what: str, says: Any, code: Any) -> bool:
        # `type(...) is`: JSON `true` is a Python int equal to 1, and 1.0 == 1; neither is
        # what gc.export wrote, so neither may pass for the code's integer.
        if type(says) is not type(code) or says != code:
            wrong.append(f"{what}: {says!r} in the metadata, {code!r} in the code")
            return False
        return True

    for kind, name in enumerate(PORT_KINDS):
        entries = meta[f"{name}s"]
        count = call("num_ports")(kind)
        compare(f"the number of {name}s", len(entries), count)
        for index, entry in enumerate(entries[:max(count, 0)]):
            _compare_port(f"{name} {index}", entry, call("port_info")(kind, index), compare)
    compare("context_bytes", meta["context_bytes"], call("context_bytes")())
    compare("arena_bytes", meta.get("arena_bytes"), call("arena_bytes")())
    weights = meta["weights"]
    compare("weights bytes", weights.get("bytes"), call("weights_bytes")())
    compare("weights checksum64", weights.get("checksum64"),
            f"{call('weights_checksum64')():016x}")
    if not wrong:
        code_sha = (call("metadata_sha256")() or b"").decode("ascii", "replace")
        compare("the sha256 of the metadata", metadata_sha256(meta), code_sha)
    if wrong:
        more = f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else ""
        raise GraphcError(f"{path}: its metadata does not match its code: "
                          f"{'; '.join(wrong[:3])}{more}. The file was edited or corrupted "
                          "after gc.export: export it again")


def _compare_port(what: str, entry: Mapping[str, Any], port: Any,
                  compare: Callable[[str, Any, Any], bool]) -> None:
    """Compare metadata port `entry` (checked by `check_schema`) with the code's `port`
    (a pointer to `_CPort`, NULL if the code has no such port) through `compare`, up to
    the first difference (one per port is enough to say what was edited)."""
    if not port:  # NULL: the code has no such port
        compare(what, entry["name"], None)
        return
    p = port.contents
    ttype = tensor_type(entry)
    if not compare(f"{what} name", entry["name"], (p.name or b"").decode("utf-8", "replace")):
        return
    rank = p.rank if 0 <= p.rank <= _MAX_RANK else 0  # never read past a corrupt rank
    label = f"{what} {entry['name']!r}"
    facts = [
        ("dtype", ttype.dtype.value, _DTYPE_NAMES.get(p.dtype, f"code {p.dtype}")),
        ("shape", list(ttype.shape), [int(p.shape[i]) for i in range(rank)]),
        ("rank", ttype.ndim, p.rank),
        ("elements", math.prod(ttype.shape), int(p.elements)),
        # The size numpy allocates for the port's arrays, then the size the metadata states.
        ("array bytes", ttype.size * ttype.dtype.itemsize, int(p.bytes)),
        ("bytes", entry.get("bytes"), int(p.bytes)),
    ]
    for fact, says, code in facts:
        if not compare(f"{label} {fact}", says, code):
            return


class LibraryVariables(Mapping[str, np.ndarray]):
    """The variables of a library's context by name: reading copies out, assigning copies in.

    A library exported without updates keeps its embedded weights read-only (assigning
    raises GraphcError) unless it was exported with weights='external'.
    """

    def __init__(self, lib: Library, entries: Sequence[Mapping[str, Any]]):
        self._lib = lib
        self._ports = {e["name"]: (i, Port(e["name"], tensor_type(e)))
                       for i, e in enumerate(entries)}

    def _entry(self, name: str) -> tuple[int, Port]:
        try:
            return self._ports[name]
        except KeyError:
            known = ", ".join(sorted(self._ports)) or "none"
            raise GraphcError(f"library {self._lib.name} has no variable {name!r} "
                              f"(variables: {known})") from None

    def __getitem__(self, name: str) -> np.ndarray:
        index, port = self._entry(name)
        out = np.empty(port.shape, port.dtype.np)
        lib = self._lib
        with lib._lock:
            status = lib._call("get_variable")(lib._ctx, index, out.ctypes.data,
                                               out.nbytes)
        lib._check(status, f"reading variable {name!r}")
        return out

    def __setitem__(self, name: str, value: Any) -> None:
        index, port = self._entry(name)
        array = np.asarray(value)
        if array.shape != port.shape:
            raise ArgumentError(f"variable {name!r}: expected shape {port.shape} "
                                f"({port.type}), got {array.shape}")
        if array.dtype != port.dtype.np and not np.can_cast(array, port.dtype.np, "same_kind"):
            raise ArgumentError(f"variable {name!r}: expected {port.dtype}, got {array.dtype}")
        data = np.require(array.astype(port.dtype.np, copy=False), requirements="C")
        lib = self._lib
        with lib._lock:
            status = lib._call("set_variable")(lib._ctx, index, data.ctypes.data,
                                               data.nbytes)
        lib._check(status, f"setting variable {name!r}")

    def __iter__(self) -> Iterator[str]:
        return iter(self._ports)

    def __len__(self) -> int:
        return len(self._ports)


def load(path: str | os.PathLike[str], *, weights: str | os.PathLike[str] | None = None
         ) -> Library:
    """Load an exported graphc library; call the result like `gc.compile`'s Executable.

    `weights`: for a library exported with weights='external', the weights file to read
    (default: NAME.bin beside the library). Raises GraphcError for a file that is not a
    graphc library, of an unknown ABI version, or built for CPU features this machine lacks.
    """
    p = Path(path).resolve()
    meta = read_metadata(p)
    check_compatible(meta, p)
    return Library(p, meta, Path(weights) if weights is not None else None)


def _destroy(destroy: Any, ctx: int | None, memory: np.ndarray | None) -> None:
    del memory  # kept alive until the context is destroyed
    if ctx:
        destroy(ctx)


def _aligned_bytes(n: int, align: int = 64) -> np.ndarray:
    raw = np.zeros(max(n, 1) + align, np.uint8)
    start = (-raw.ctypes.data) % align
    return raw[start:start + max(n, 1)]
