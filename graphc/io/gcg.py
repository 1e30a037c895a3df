"""`save` and `load`: a graph with its variable and constant values as one `.gcg` file.

A `.gcg` file is a zip archive holding
- ``graph.json``: the format name and version, the graph name, the nodes in order (name, op,
  input names, attributes, type, source location) and the signatures (see `graph_to_json`),
  deflated;
- ``values/<name>.npy``: one array per variable and constant node (a body's constant
  under its scoped key ``node@i@name``, see `rebuild.body_prefix`) (numpy's .npy format,
  never pickled objects), stored uncompressed (`member_name` says which name holds which
  node: names with empty, ``.`` or ``..`` path segments are stored as
  ``values/~<hex of the UTF-8 name>.npy`` so that no member name can point outside
  ``values/``, and names too long for a zip member name as ``values/#<sha256>.npy``).

JSON has no tuples, dtypes or non-finite floats, so attribute values use a typed encoding:
ints, finite floats, bools, strings and null are plain JSON; a tuple is
``{"tuple": [...]}``, a dtype ``{"dtype": "float32"}`` and inf/-inf/nan
``{"float": "inf"}``.

`load` trusts nothing in the file and never executes anything from it. A corrupt, truncated,
hostile or unknown-version file raises `SerializationError` naming the file (never a raw
exception, a hang or unbounded memory use). It opens only regular files (a FIFO, a device
such as /dev/zero, a socket or a directory is refused without reading it); reads the zip
structure with `ZipReader` (no duplicate members, no member outside the file, graph.json
stored or deflated at a bounded ratio, values stored uncompressed as `save` writes them,
every member exactly its declared size with its declared CRC); rejects member names outside
the expected set (no path traversal); parses JSON with a bounded nesting depth and no
duplicate keys; validates the schema; rebuilds every node through its op's type rule
(`graphc.io.rebuild`); and checks each array's header (shape and dtype) against its node's
type before reading its data.

The readers of untrusted bytes (`open_regular_file`, `ZipReader`, `parse_json`,
`read_npy_header`, `npy_array`) live in `graphc.io.untrusted`, shared with
`graphc.io.checkpoint` and `graphc run`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zipfile
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

from graphc.errors import SerializationError
from graphc.io.atomic import atomic_write
from graphc.io.jsonir import graph_from_json, graph_to_json, value_nodes
from graphc.io.rebuild import graph_diff, graphs_equal
from graphc.io.untrusted import (
    NPY_HEADER_ROOM,
    ZipReader,
    cut,
    npy_array,
    open_regular_file,
    parse_json,
    read_npy_header,
)
from graphc.ir import Graph, TensorType
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
    "member_name",
    "save",
]

FORMAT = "graphc-graph"
VERSION = 1
KNOWN_VERSIONS = (1,)
GRAPH_MEMBER = "graph.json"
MAX_JSON_BYTES = 256 * 2**20
MAX_TOTAL_BYTES = 16 * 2**30  # the default bound on all arrays of one file together
# Deeper than any document graphc writes: graph.json nests attribute tuples at most 32 deep
# (jsonir._MAX_ATTR_DEPTH), two JSON levels each, under 4 levels of document; a checkpoint
# manifest is 3 deep. The bound exists so that the JSON parser never recurses deeply.
_MAX_MEMBER_NAME = 0xFFFF  # bytes: a zip member name's length is a 16-bit field
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
    """The zip member holding the value of node `name`: inside ``values/`` and at most
    65535 bytes long (the zip format's limit), whatever the (legal) node name.

    ``values/NAME.npy`` if that is a safe path that fits; ``values/~<hex>.npy`` (the hex of
    the UTF-8 name) if a path segment of NAME is empty, ``.`` or ``..``; and, if the form
    chosen so far is longer than 65535 bytes, ``values/#<sha256 of the UTF-8 name>.npy``.
    Node names never contain ``~`` or ``#`` (see `Graph.add_node`), so the three forms
    cannot collide, and every name that fitted before the third form existed maps as it did.
    """
    if all(part not in ("", ".", "..") for part in name.split("/")):
        member = f"values/{name}.npy"
    else:
        member = f"values/~{name.encode().hex()}.npy"
    if len(member.encode()) > _MAX_MEMBER_NAME:
        member = f"values/#{hashlib.sha256(name.encode()).hexdigest()}.npy"
    return member


def save(graph: Graph, path: str | os.PathLike[str]) -> None:
    """Write `graph` and all its variable and constant values to `path`, atomically.

    The graph is verified first (an inconsistent graph would not load back). Arrays are
    stored uncompressed (weights do not compress, and `load` refuses compressed arrays);
    the JSON is deflated. Any failure is a SerializationError (or the VerifyError).
    """
    verify(graph)
    text = dumps_json(graph).encode()

    def write(f: BinaryIO) -> None:
        with zipfile.ZipFile(f, "w") as zf:
            zf.writestr(_info(GRAPH_MEMBER, zipfile.ZIP_DEFLATED), text)
            for key, node in value_nodes(graph):
                owner = node.graph  # a body's constants live in the body graph
                store = owner.variables if node.op == "variable" else owner.constants
                array = np.asarray(store[node.name], order="C")
                big = array.nbytes + NPY_HEADER_ROOM >= 2**31
                with zf.open(_info(member_name(key), zipfile.ZIP_STORED), "w",
                             force_zip64=big) as out:
                    np.lib.format.write_array(out, array, allow_pickle=False)

    where = os.fspath(path)
    try:
        atomic_write(path, write)
    except OSError as exc:
        raise SerializationError(f"cannot write {where}: {exc.strerror or exc}") from None
    except (struct.error, zipfile.LargeZipFile) as exc:
        # A zip format limit that member_name and force_zip64 do not already avoid: report
        # it as what it is, a graph this format cannot hold, not as a crash.
        raise SerializationError(f"cannot write {where}: the zip format cannot hold this "
                                 f"graph ({type(exc).__name__}: {exc})") from None


def _info(name: str, compression: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.compress_type = compression
    info.external_attr = 0o644 << 16
    return info


def load(path: str | os.PathLike[str], *, max_bytes: int = MAX_TOTAL_BYTES) -> Graph:
    """Read a graph saved by `save`, validating everything (see the module docstring).

    `max_bytes` bounds the total uncompressed size of the arrays. Raises SerializationError
    naming the file and what is wrong with it; nothing else.
    """
    where = os.fspath(path)
    try:
        f = open_regular_file(where)
    except OSError as exc:
        raise SerializationError(f"cannot read {where}: {exc.strerror or exc}") from None
    except SerializationError as exc:
        raise SerializationError(f"cannot read {where}: {exc.message}") from None
    with f:
        try:
            archive = ZipReader(f, deflatable={GRAPH_MEMBER})
        except SerializationError as exc:
            # Not a zip, or a zip `save` never writes (compressed values, ...).
            raise SerializationError(f"{where}: not a graphc graph file ({exc.message})") from None
        try:
            return _load_archive(archive, max_bytes)
        except SerializationError as exc:
            raise SerializationError(f"{where}: {exc.message}") from None
        except (ValueError, KeyError, IndexError, TypeError, OverflowError) as exc:
            # The schema and type checks are meant to refuse every malformed document
            # first; should one miss a case, the caller still gets the promised error.
            raise SerializationError(f"{where}: corrupt graph file ({type(exc).__name__}: "
                                     f"{cut(str(exc), 200)})") from None


def _load_archive(archive: ZipReader, max_bytes: int) -> Graph:
    for name in archive.members:
        _check_member_name(name)
    if GRAPH_MEMBER not in archive.members:
        raise SerializationError(f"no {GRAPH_MEMBER} in the archive")
    doc = parse_json(archive.read(GRAPH_MEMBER, MAX_JSON_BYTES), GRAPH_MEMBER)
    _check_version(doc)
    # Node names are unique and member_name is injective on them, so no member is read twice.
    expected: set[str] = set()

    def read_value(name: str, nbytes: int) -> bytes:
        member = member_name(name)
        expected.add(member)
        if member not in archive.members:
            raise SerializationError(f"the value of %{name} ({cut(member)}) is missing")
        return archive.read(member, nbytes + NPY_HEADER_ROOM)

    graph = graph_from_json(doc, _value_reader(read_value, max_bytes))
    extra = sorted(set(archive.members) - expected - {GRAPH_MEMBER})
    if extra:
        raise SerializationError("unexpected member(s) in the archive: "
                                 f"{', '.join(cut(e) for e in extra)}")
    return graph


def _check_member_name(name: str) -> None:
    parts = name.split("/")
    if (name.startswith(("/", "\\")) or "\\" in name or ":" in parts[0]
            or any(p in ("", ".", "..") for p in parts)):
        raise SerializationError(
            f"unsafe member name {cut(repr(name))} (absolute or path traversal)")


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
) -> Callable[[str, TensorType], np.ndarray]:
    """A function giving the array of one node, bounded in total by `max_bytes`."""
    total = 0

    def value(name: str, ttype: TensorType) -> np.ndarray:
        nonlocal total
        total += ttype.nbytes
        if total > max_bytes:
            raise SerializationError(
                f"the arrays need more than {max_bytes} bytes (load(..., max_bytes=N) raises "
                "the bound)")
        return _parse_npy(read(name, ttype.nbytes), name, ttype)

    return value


def _parse_npy(data: bytes, name: str, ttype: TensorType) -> np.ndarray:
    """Decode an .npy member after checking its header against the node type."""
    try:
        header = read_npy_header(io.BytesIO(data))
        if header.shape != ttype.shape or header.dtype != ttype.dtype.np:
            raise SerializationError(f"is {header.describe()}, its node type is {ttype}")
        return npy_array(memoryview(data)[header.offset:], header)
    except SerializationError as exc:
        raise SerializationError(f"the value of %{name} {exc.message}") from None
