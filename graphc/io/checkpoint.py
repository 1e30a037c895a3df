"""Checkpoints: every variable of a graph (parameters and optimizer state) in one zip file.

File format (version 1): a zip archive holding

- ``manifest.json``: ``{"format": "graphc-checkpoint", "version": 1, "graph": name,
  "variables": [{"name", "shape", "dtype", "file"}, ...]}``
- one ``.npy`` file per variable (``arrays/<index>.npy``; names may contain ``/``, so they
  are not used as paths), written with ``allow_pickle=False``.

Contracts:
- `save_checkpoint` writes atomically (`graphc.io.atomic.atomic_write`): a crash mid-write
  leaves the previous file at `path` intact and loadable.
- `load_checkpoint` treats the file as untrusted, with the readers `graphc.io.gcg` uses
  (`open_regular_file`, `ZipReader`, `parse_json`, `read_npy_header`). It opens only a
  regular file (never blocks on a FIFO or reads /dev/zero); refuses duplicate members,
  members the manifest does not list, members outside the file, and compressed arrays (the
  manifest may be deflated, at a bounded ratio; `save_checkpoint` stores everything); bounds
  the manifest's size and JSON nesting and refuses duplicate keys; checks the declared
  entry sizes (before reading anything, so a zip bomb is refused), every array's header,
  shape and dtype before allocating it, and never unpickles. Any defect is a
  `SerializationError` naming the file; nothing else escapes.
- Loading is all-or-nothing: every name, shape and dtype is checked against the graph, and
  EVERY mismatch (missing, unexpected, wrong shape, wrong dtype) is reported in one
  `CheckpointMismatchError`; only when nothing is wrong are the values copied into the
  existing arrays (``g.variables[name] = value``), so compiled executables see them.
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from graphc.errors import SerializationError, SourceLoc
from graphc.io.atomic import atomic_write
from graphc.io.untrusted import (
    ZipReader,
    npy_array,
    open_regular_file,
    parse_json,
    read_npy_header,
)
from graphc.ir import DType, Graph

__all__ = ["CheckpointMismatchError", "LoadResult", "load_checkpoint", "read_checkpoint",
           "save_checkpoint"]

FORMAT = "graphc-checkpoint"
VERSION = 1
MANIFEST = "manifest.json"
_MAX_MANIFEST_BYTES = 64 << 20
# A .npy header is at most 64 KiB in format 1.0 (we write 1.0); 2.0/3.0 allow more, but a
# header larger than this is not one we wrote.
_MAX_NPY_HEADER = (64 << 10) + 16
_DTYPES = frozenset(d.value for d in DType)


class CheckpointMismatchError(SerializationError):
    """The checkpoint does not fit the graph; the attributes list every mismatch."""

    def __init__(
        self,
        message: str,
        *,
        op: str | None = None,
        loc: SourceLoc | None = None,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        wrong_shape: Sequence[tuple[str, tuple[int, ...], tuple[int, ...]]] = (),
        wrong_dtype: Sequence[tuple[str, str, str]] = (),
    ):
        self.missing = tuple(missing)
        self.unexpected = tuple(unexpected)
        self.wrong_shape = tuple(wrong_shape)  # (name, in file, in graph)
        self.wrong_dtype = tuple(wrong_dtype)  # (name, in file, in graph)
        super().__init__(message, op=op, loc=loc)


@dataclass(frozen=True)
class LoadResult:
    """What `load_checkpoint` did: variables loaded, and (strict=False) names skipped."""

    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]


@dataclass(frozen=True)
class _Entry:
    name: str
    shape: tuple[int, ...]
    dtype: str
    file: str


# --- saving -------------------------------------------------------------------------------

def save_checkpoint(graph: Graph, path: str | os.PathLike[str]) -> Path:
    """Write every variable of `graph` to `path` atomically; return the path."""
    if not isinstance(graph, Graph):
        raise SerializationError(f"expected a Graph, got {type(graph).__name__}",
                                 op="save_checkpoint")
    names = list(graph.variables)
    arrays = [graph.variables[n] for n in names]
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "graph": graph.name,
        "variables": [
            {"name": n, "shape": list(a.shape), "dtype": a.dtype.name, "file": f"arrays/{i}.npy"}
            for i, (n, a) in enumerate(zip(names, arrays))
        ],
    }

    def write(f: BinaryIO) -> None:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr(MANIFEST, json.dumps(manifest, indent=1))
            for entry, array in zip(manifest["variables"], arrays):
                _write_array(zf, entry["file"], array)

    try:
        return atomic_write(path, write)
    except OSError as exc:
        raise SerializationError(f"cannot write checkpoint {os.fspath(path)!r}: {exc}",
                                 op="save_checkpoint") from exc


def _write_array(zf: zipfile.ZipFile, member: str, array: np.ndarray) -> None:
    """One array as a .npy member (streamed: no second copy of a large array)."""
    # zipfile needs force_zip64 once a member passes 2**31 - 1 bytes, header included.
    big = array.nbytes + _MAX_NPY_HEADER >= 1 << 31
    with zf.open(member, "w", force_zip64=big) as out:
        np.lib.format.write_array(out, np.asarray(array, order="C"), version=(1, 0),
                                  allow_pickle=False)


# --- loading ------------------------------------------------------------------------------

def load_checkpoint(graph: Graph, path: str | os.PathLike[str], strict: bool = True
                    ) -> LoadResult:
    """Copy the variables saved at `path` into `graph`'s variables (see module contracts).

    With ``strict=False`` missing and unexpected names are skipped (and returned), but a
    wrong shape or dtype is still an error.
    """
    if not isinstance(graph, Graph):
        raise SerializationError(f"expected a Graph, got {type(graph).__name__}",
                                 op="load_checkpoint")
    where = os.fspath(path)
    with _open_archive(where) as archive:
        entries = _read_manifest(archive, where)
        by_name = {e.name: e for e in entries}
        # A set of names: `name in graph.variables` would raise (GraphNameError, not KeyError).
        names = list(graph.variables)
        present = set(names)
        missing = [n for n in names if n not in by_name]
        unexpected = [e.name for e in entries if e.name not in present]
        wrong_shape = []
        wrong_dtype = []
        for e in entries:
            if e.name not in present:
                continue
            current = graph.variables[e.name]
            if e.shape != current.shape:
                wrong_shape.append((e.name, e.shape, current.shape))
            if e.dtype != current.dtype.name:
                wrong_dtype.append((e.name, e.dtype, current.dtype.name))
        if wrong_shape or wrong_dtype or (strict and (missing or unexpected)):
            raise _mismatch(graph, where, missing if strict else [],
                            unexpected if strict else [], wrong_shape, wrong_dtype)
        to_load = [e for e in entries if e.name in present]
        values = {e.name: _read_array(archive, e, where) for e in to_load}
    for name, value in values.items():
        graph.variables[name] = value
    return LoadResult(tuple(values), tuple(missing), tuple(unexpected))


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """All arrays of a checkpoint by name, validated, without a graph (for inspection)."""
    where = os.fspath(path)
    with _open_archive(where) as archive:
        return {e.name: _read_array(archive, e, where) for e in _read_manifest(archive, where)}


def _mismatch(graph: Graph, where: str, missing: list[str], unexpected: list[str],
              wrong_shape: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
              wrong_dtype: list[tuple[str, str, str]]) -> CheckpointMismatchError:
    lines = [f"checkpoint {where!r} does not match graph {graph.name!r}:"]
    if missing:
        lines.append(f"  missing from the checkpoint: {', '.join(missing)}")
    if unexpected:
        lines.append(f"  unexpected in the checkpoint: {', '.join(unexpected)}")
    for name, saved, wanted in wrong_shape:
        lines.append(f"  {name}: shape {saved} in the checkpoint, {wanted} in the graph")
    for name, saved, wanted in wrong_dtype:
        lines.append(f"  {name}: dtype {saved} in the checkpoint, {wanted} in the graph")
    return CheckpointMismatchError("\n".join(lines), op="load_checkpoint", missing=missing,
                                   unexpected=unexpected, wrong_shape=wrong_shape,
                                   wrong_dtype=wrong_dtype)


def _fail(where: str, what: str) -> SerializationError:
    return SerializationError(f"{where!r} is not a valid graphc checkpoint: {what}",
                              op="load_checkpoint")


@contextmanager
def _open_archive(where: str) -> Iterator[ZipReader]:
    """The checkpoint at `where` as a checked archive (see the module contracts)."""
    try:
        f = open_regular_file(where)
    except FileNotFoundError:
        raise SerializationError(f"no checkpoint file {where!r}", op="load_checkpoint") from None
    except OSError as exc:
        raise SerializationError(f"cannot read checkpoint {where!r}: {exc.strerror or exc}",
                                 op="load_checkpoint") from None
    except SerializationError as exc:
        raise SerializationError(f"cannot read checkpoint {where!r}: {exc.message}",
                                 op="load_checkpoint") from None
    with f:
        try:
            archive = ZipReader(f, deflatable={MANIFEST})
        except SerializationError as exc:
            raise _fail(where, exc.message) from None
        yield archive


def _read_member(archive: ZipReader, name: str, limit: int, where: str) -> bytes:
    try:
        return archive.read(name, limit)
    except SerializationError as exc:
        raise _fail(where, exc.message) from None


def _read_manifest(archive: ZipReader, where: str) -> list[_Entry]:
    if MANIFEST not in archive.members:
        raise _fail(where, f"the archive has no member {MANIFEST!r}")
    data = _read_member(archive, MANIFEST, _MAX_MANIFEST_BYTES, where)
    try:
        doc = parse_json(data, MANIFEST)
    except SerializationError as exc:
        raise _fail(where, exc.message) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _fail(where, f"the manifest does not declare format {FORMAT!r}")
    version = doc.get("version")
    if version != VERSION:
        raise _fail(where, f"format version {version!r} is not supported (this graphc reads "
                           f"version {VERSION})")
    items = doc.get("variables")
    if not isinstance(items, list):
        raise _fail(where, "the manifest's 'variables' is not a list")
    entries = [_parse_entry(item, i, where) for i, item in enumerate(items)]
    for key in ("name", "file"):
        values = [getattr(e, key) for e in entries]
        if len(set(values)) != len(values):
            raise _fail(where, f"a variable {key} is listed twice")
    for e in entries:
        if e.file == MANIFEST:
            raise _fail(where, f"variable {_short(e.name)} names the manifest as its array")
        if e.file not in archive.members:
            raise _fail(where, f"the archive has no member {_short(e.file)} (the array of "
                               f"variable {_short(e.name)})")
    # Every member is accounted for: nothing rides along unvalidated.
    extra = sorted(set(archive.members) - {MANIFEST} - {e.file for e in entries})
    if extra:
        raise _fail(where, "unexpected member(s) in the archive: "
                           f"{', '.join(_short(x) for x in extra)}")
    return entries


def _parse_entry(item: Any, i: int, where: str) -> _Entry:
    if not isinstance(item, dict):
        raise _fail(where, f"variable entry {i} is not an object")
    name, shape, dtype, file = (item.get(k) for k in ("name", "shape", "dtype", "file"))
    if not isinstance(name, str) or not name:
        raise _fail(where, f"variable entry {i} has no valid name")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise _fail(where, f"variable {_short(name)} has an invalid shape {_short(shape)}")
    if dtype not in _DTYPES:
        raise _fail(where, f"variable {_short(name)} has an unsupported dtype {_short(dtype)}")
    if not isinstance(file, str):
        raise _fail(where, f"variable {_short(name)} has no valid file")
    return _Entry(name, tuple(shape), dtype, file)


def _read_array(archive: ZipReader, entry: _Entry, where: str) -> np.ndarray:
    info = archive.members[entry.file]
    dtype = np.dtype(entry.dtype)
    nbytes = math.prod(entry.shape) * dtype.itemsize
    name = _short(entry.name)
    # Refuse before reading: a member much larger than its declared array is hostile.
    if not nbytes <= info.file_size <= nbytes + _MAX_NPY_HEADER:
        raise _fail(where, f"member {entry.file!r} of variable {name} has "
                           f"{info.file_size} bytes; a {entry.dtype}{list(entry.shape)} "
                           "array needs about " + str(nbytes))
    data = _read_member(archive, entry.file, nbytes + _MAX_NPY_HEADER, where)
    try:
        header = read_npy_header(io.BytesIO(data))
    except SerializationError as exc:
        raise _fail(where, f"variable {name} is not a valid .npy array: it "
                           f"{exc.message}") from None
    # A foreign byte order is fine (same values); npy_array converts it.
    if header.shape != entry.shape or header.dtype.newbyteorder("=") != dtype:
        raise _fail(where, f"variable {name} holds {header.describe()}, its manifest says "
                           f"{entry.dtype}{list(entry.shape)}")
    try:
        return npy_array(memoryview(data)[header.offset:], header)
    except SerializationError as exc:
        raise _fail(where, f"variable {name} {exc.message}") from None


def _short(value: Any) -> str:
    """`repr(value)` cut to 80 characters (names may be 64 KiB long)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
