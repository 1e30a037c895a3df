"""`save` and `load`: a graph with its variable and constant values as one `.gcg` file.

A `.gcg` file is a zip archive holding
- ``graph.json``: the format name and version, the graph name, the nodes in order (name, op,
  input names, attributes, type, source location) and the signatures (see `graph_to_json`);
- ``values/<name>.npy``: one array per variable and constant node (numpy's .npy format,
  never pickled objects). Names with empty, ``.`` or ``..`` path segments are stored as
  ``values/~<hex of the UTF-8 name>.npy`` so that no member name can point outside
  ``values/``.

JSON has no tuples, dtypes or non-finite floats, so attribute values use a typed encoding:
ints, finite floats, bools, strings and null are plain JSON; a tuple is
``{"tuple": [...]}``, a dtype ``{"dtype": "float32"}`` and inf/-inf/nan
``{"float": "inf"}``.

`load` trusts nothing in the file: a corrupt, truncated, hostile or unknown-version file
raises `SerializationError` (never code execution, never a raw exception). It checks the zip
structure and CRCs, bounds every member's uncompressed size (no zip bombs), rejects member
names outside the expected set (no path traversal), validates the JSON schema, rebuilds every
node through its op's type rule, and checks each array's header (shape and dtype) against
its node's type before reading its data.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
import zlib
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

from graphc.errors import SerializationError
from graphc.io.atomic import atomic_write
from graphc.io.jsonir import graph_from_json, graph_to_json, value_nodes
from graphc.io.rebuild import graph_diff, graphs_equal
from graphc.ir import Graph
from graphc.verify import verify

__all__ = [
    "FORMAT",
    "VERSION",
    "dumps_json",
    "graph_diff",
    "graph_from_json",
    "graph_to_json",
    "graphs_equal",
    "load",
    "save",
]

FORMAT = "graphc-graph"
VERSION = 1
KNOWN_VERSIONS = (1,)
GRAPH_MEMBER = "graph.json"
MAX_JSON_BYTES = 256 * 2**20
MAX_TOTAL_BYTES = 16 * 2**30  # the default bound on all arrays of one file together
_NPY_HEADER_ROOM = 64 * 2**10  # an .npy header is at most this long (numpy caps it at 10k)
# A fixed timestamp makes the same graph always produce the same bytes.
_EPOCH = (1980, 1, 1, 0, 0, 0)


def dumps_json(graph: Graph) -> str:
    """The ``graph.json`` text of `graph` (what ``graphc dump --format json`` prints)."""
    doc = graph_to_json(graph, FORMAT, VERSION)

    def dump(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)

    # One signature or node per line: readable and diffable, unlike one line or indent=2.
    lines = ["{"]
    for key, value in doc.items():
        if isinstance(value, list) and value:
            items = ",\n".join(f"  {dump(v)}" for v in value)
            lines.append(f" {dump(key)}: [\n{items}\n ],")
        else:
            lines.append(f" {dump(key)}: {dump(value)},")
    lines[-1] = lines[-1].rstrip(",")
    return "\n".join(lines) + "\n}\n"


def member_name(name: str) -> str:
    """The zip member holding the value of node `name` (never outside ``values/``)."""
    if all(part not in ("", ".", "..") for part in name.split("/")):
        return f"values/{name}.npy"
    return f"values/~{name.encode().hex()}.npy"


def save(graph: Graph, path: str | os.PathLike[str]) -> None:
    """Write `graph` and all its variable and constant values to `path`, atomically.

    The graph is verified first (an inconsistent graph would not load back). Arrays are
    stored uncompressed (weights do not compress); the JSON is deflated.
    """
    verify(graph)
    text = dumps_json(graph).encode()

    def write(f: BinaryIO) -> None:
        with zipfile.ZipFile(f, "w") as zf:
            zf.writestr(_info(GRAPH_MEMBER, zipfile.ZIP_DEFLATED), text)
            for node in value_nodes(graph):
                store = graph.variables if node.op == "variable" else graph.constants
                array = np.asarray(store[node.name], order="C")
                big = array.nbytes + _NPY_HEADER_ROOM >= 2**31
                with zf.open(_info(member_name(node.name), zipfile.ZIP_STORED), "w",
                             force_zip64=big) as out:
                    np.lib.format.write_array(out, array, allow_pickle=False)

    try:
        atomic_write(path, write)
    except OSError as exc:
        raise SerializationError(f"cannot write {os.fspath(path)}: {exc.strerror or exc}") from None


def _info(name: str, compression: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.compress_type = compression
    info.external_attr = 0o644 << 16
    return info


def load(path: str | os.PathLike[str], *, max_bytes: int = MAX_TOTAL_BYTES) -> Graph:
    """Read a graph saved by `save`, validating everything (see the module docstring).

    `max_bytes` bounds the total uncompressed size of the arrays. Raises SerializationError
    naming the file and what is wrong with it.
    """
    where = os.fspath(path)
    try:
        with open(where, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise SerializationError(f"cannot read {where}: {exc.strerror or exc}") from None
    try:
        return _load_bytes(data, max_bytes)
    except SerializationError as exc:
        raise SerializationError(f"{where}: {exc.message}") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError,
            NotImplementedError, RuntimeError, ValueError, KeyError) as exc:
        # zipfile reports truncation, bad CRCs, encryption and unsupported compression
        # methods with these; none of them is a bug of ours.
        kind = "damaged compressed data" if isinstance(exc, zlib.error) else type(exc).__name__
        raise SerializationError(f"{where}: corrupt graph file ({kind}: {exc})") from None


def _load_bytes(data: bytes, max_bytes: int) -> Graph:
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise SerializationError("not a graphc graph file (not a zip archive)")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = {}
        for info in zf.infolist():
            _check_member_name(info.filename)
            if info.filename in infos:
                raise SerializationError(f"member {info.filename!r} appears twice")
            infos[info.filename] = info
        if GRAPH_MEMBER not in infos:
            raise SerializationError(f"no {GRAPH_MEMBER} in the archive")
        doc = _read_json(_read_member(zf, infos[GRAPH_MEMBER], MAX_JSON_BYTES))
        _check_version(doc)
        expected: dict[str, str] = {}

        def read_value(name: str, nbytes: int) -> bytes:
            member = member_name(name)
            expected[member] = name
            if member not in infos:
                raise SerializationError(f"the value of %{name} ({member}) is missing")
            return _read_member(zf, infos[member], nbytes + _NPY_HEADER_ROOM)

        graph = graph_from_json(doc, _value_reader(read_value, max_bytes))
        extra = sorted(set(infos) - set(expected) - {GRAPH_MEMBER})
        if extra:
            raise SerializationError(f"unexpected member(s) in the archive: {', '.join(extra)}")
        return graph


def _check_member_name(name: str) -> None:
    parts = name.split("/")
    if (name.startswith(("/", "\\")) or "\\" in name or ":" in parts[0]
            or any(p in ("", ".", "..") for p in parts)):
        raise SerializationError(f"unsafe member name {name!r} (absolute or path traversal)")


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """A member's bytes, refusing more than `limit` whatever its header claims (zip bombs)."""
    if info.file_size > limit:
        raise SerializationError(
            f"member {info.filename!r} is {info.file_size} bytes uncompressed, "
            f"more than the {limit} it may hold")
    with zf.open(info) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise SerializationError(f"member {info.filename!r} expands beyond {limit} bytes")
    return data


def _read_json(data: bytes) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise SerializationError(f"{GRAPH_MEMBER}: a key appears twice in one object")
        return dict(pairs)

    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=no_duplicates,
                          parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise SerializationError(f"{GRAPH_MEMBER} is not UTF-8 ({exc.reason})") from None
    except RecursionError:
        raise SerializationError(f"{GRAPH_MEMBER} is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise SerializationError(f"{GRAPH_MEMBER} is not valid JSON: {exc}") from None


def _reject_constant(name: str) -> Any:
    raise SerializationError(f"{GRAPH_MEMBER}: {name} is not JSON (use {{\"float\": ...}})")


def _check_version(doc: Any) -> None:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SerializationError(f"{GRAPH_MEMBER} is not a {FORMAT} document")
    version = doc.get("version")
    if version not in KNOWN_VERSIONS or isinstance(version, bool):
        known = ", ".join(str(v) for v in KNOWN_VERSIONS)
        raise SerializationError(
            f"unsupported {FORMAT} version {version!r} (this graphc reads version(s) {known}; "
            "a newer graphc may read it)")


def _value_reader(
    read: Callable[[str, int], bytes], max_bytes: int
) -> Callable[[str, Any], np.ndarray]:
    """A function giving the array of one node, bounded in total by `max_bytes`."""
    total = 0

    def value(name: str, ttype: Any) -> np.ndarray:
        nonlocal total
        total += ttype.nbytes
        if total > max_bytes:
            raise SerializationError(
                f"the arrays need more than {max_bytes} bytes (load(..., max_bytes=N) raises "
                "the bound)")
        return _parse_npy(read(name, ttype.nbytes), name, ttype)

    return value


def _parse_npy(data: bytes, name: str, ttype: Any) -> np.ndarray:
    """Decode an .npy member after checking its header against the node type."""
    f = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise SerializationError(f"the value of %{name}: unsupported .npy version {version}")
    except ValueError as exc:
        raise SerializationError(f"the value of %{name} is not a valid .npy array: {exc}") from None
    if dtype.hasobject:
        raise SerializationError(f"the value of %{name} holds Python objects (pickled data "
                                 "is never loaded)")
    if tuple(shape) != ttype.shape or dtype != ttype.dtype.np:
        raise SerializationError(f"the value of %{name} is {dtype}{list(shape)}, its node "
                                 f"type is {ttype}")
    offset = f.tell()
    if len(data) - offset != ttype.nbytes:
        raise SerializationError(f"the value of %{name} has {len(data) - offset} bytes of "
                                 f"data, {ttype} needs {ttype.nbytes}")
    order = "F" if fortran else "C"
    flat = np.frombuffer(data, dtype=dtype, count=ttype.size, offset=offset)
    return np.array(flat.reshape(ttype.shape, order=order), order="C")
