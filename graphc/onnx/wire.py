"""Lifting large initializers' bytes out of a serialized ONNX model before it is parsed.

Parsing a model with protobuf copies every initializer's `raw_data` into the message, and
reading `raw_data` back copies it again; with the file's own read that is three copies of
the weights (about 140 MB for ResNet-18) before graphc has a single array, and on this kind of
machine fresh memory costs about 1 ms per MB. `split_raw_data` walks the protobuf wire
format of `ModelProto.graph.initializer` (fields 7, 5 and TensorProto's 9), copies each
large fixed-width `raw_data` once, straight from the file (`os.preadv`) into an aligned
numpy array, and returns the model's bytes without those fields, which protobuf then
parses in well under a millisecond.

The input is untrusted: every varint and length is bounded by its enclosing message, and
anything this walk does not fully understand (a group, a repeated `graph` field whose parts
protobuf would merge, a tensor with two `raw_data` fields, a tag or length in more than the
5 bytes protobuf accepts, a truncated field, more than MAX_FIELDS fields) makes it return
None, so that the caller parses the model whole and protobuf's own checks report the
problem. A tensor the importer would read otherwise (external data, segments) keeps its
bytes, so both paths give it the same meaning. Arrays are checked against the tensor's
dims by the caller, as any tensor is.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["MAX_FIELDS", "MIN_LIFT_BYTES", "Lifted", "Source", "split_raw_data"]

# Smaller tensors stay in the message: they cost nothing to copy, and anything that reads
# the parsed model directly (shape arithmetic, small constants) finds them there.
MIN_LIFT_BYTES = 4096
# The walk gives up (protobuf parses the model whole) after this many fields: a field costs
# it a few microseconds of Python, protobuf a few nanoseconds, and a hostile file can hold
# hundreds of millions of two-byte fields.
MAX_FIELDS = 200_000
# TensorProto.DataType codes with a fixed element width that graphc reads as they are
# (float, int32, int64, double); other types keep their bytes in the message.
_LIFTED_TYPES = {1: np.dtype("<f4"), 6: np.dtype("<i4"), 7: np.dtype("<i8"),
                 11: np.dtype("<f8")}
_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5
_TENSOR_DATA_TYPE, _TENSOR_SEGMENT, _TENSOR_RAW_DATA = 2, 3, 9
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 13, 14
# protobuf (upb) refuses tags and lengths encoded in more than 5 bytes.
_MAX_KEY_BYTES = 5
_WINDOW = 1 << 16  # bytes a file is read ahead by, for the keys and lengths walked


class _MalformedError(Exception):
    """Something the walk does not understand: the caller parses the model whole."""


@dataclass(frozen=True)
class Lifted:
    """The model's bytes without the lifted fields, and each lifted initializer's values
    (flat, in its own aligned array) by its index in `graph.initializer`."""

    model: bytes | bytearray
    data: dict[int, np.ndarray]


class Source:
    """Serialized bytes read by position: a buffer, or a file read with `os.pread` (never
    mapped: a file truncated by another process while it is read gives a short read here,
    where a mapping would give SIGBUS)."""

    def __init__(self, data: bytes | memoryview | None = None, fd: int | None = None,
                 size: int = 0) -> None:
        self.buf = memoryview(data) if data is not None else None
        self.fd = fd
        self.size = len(self.buf) if self.buf is not None else size
        self._at, self._window = 0, b""  # a file's bytes [_at, _at + len(_window))

    def read(self, pos: int, n: int) -> bytes | memoryview:
        """Exactly the n bytes at pos."""
        if self.buf is not None:
            return self.buf[pos:pos + n]
        assert self.fd is not None
        if not self._at <= pos or pos + n > self._at + len(self._window):
            if n > _WINDOW:
                out = os.pread(self.fd, n, pos)
                if len(out) != n:
                    raise _MalformedError  # the file changed under us
                return out
            self._at, self._window = pos, os.pread(self.fd, _WINDOW, pos)
            if len(self._window) < min(n, self.size - pos):
                raise _MalformedError
        out = self._window[pos - self._at:pos - self._at + n]
        if len(out) != n:
            raise _MalformedError
        return out

    def read_all(self) -> bytes | memoryview:
        """Everything (a file's bytes up to its end now, which may be short of `size` if
        the file shrank: protobuf then reports the truncation)."""
        if self.buf is not None:
            return self.buf
        assert self.fd is not None
        chunks = []
        pos = 0
        while pos < self.size:
            chunk = os.pread(self.fd, min(self.size - pos, 1 << 30), pos)
            if not chunk:
                break
            chunks.append(chunk)
            pos += len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def read_into(self, pos: int, out: np.ndarray | memoryview) -> None:
        """Fill `out` (contiguous) with the bytes at pos."""
        view = memoryview(out).cast("B")
        if self.buf is not None:
            view[:] = self.buf[pos:pos + len(view)]
            return
        assert self.fd is not None
        done = 0
        while done < len(view):
            n = os.preadv(self.fd, [view[done:]], pos + done)
            if n <= 0:
                raise _MalformedError
            done += n


def split_raw_data(src: Source) -> Lifted | None:
    """Lift the large `raw_data` of the top-level initializers out of the serialized
    ModelProto in `src` (see the module docstring); None when there is nothing to lift or
    the bytes are not what this walk understands."""
    try:
        return _split(src, [MAX_FIELDS])
    except (_MalformedError, OSError, MemoryError):
        return None


def _varint(src: Source, pos: int, end: int, limit: int = 10) -> tuple[int, int]:
    window = src.read(pos, min(limit, end - pos))
    value = shift = 0
    for i, byte in enumerate(window):
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos + i + 1
        shift += 7
    raise _MalformedError  # truncated, or longer than protobuf allows


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# (field number, wire type, start of the field, start of its payload, end of the field,
# the value of a varint field or None)
_Field = tuple[int, int, int, int, int, int | None]


def _fields(src: Source, pos: int, end: int, budget: list[int]) -> Iterator[_Field]:
    """The fields of the message in [pos, end); each costs one of `budget[0]`."""
    while pos < end:
        budget[0] -= 1
        if budget[0] < 0:
            raise _MalformedError  # too many fields to walk: protobuf parses them faster
        start = pos
        key, pos = _varint(src, pos, end, _MAX_KEY_BYTES)
        number, wire = key >> 3, key & 7
        value = None
        if wire == 0:
            value, pos_end = _varint(src, pos, end)
        elif wire == 1:
            pos_end = pos + 8
        elif wire == 2:
            length, pos = _varint(src, pos, end, _MAX_KEY_BYTES)
            pos_end = pos + length
        elif wire == 5:
            pos_end = pos + 4
        else:  # groups (3, 4) and invalid wire types
            raise _MalformedError
        if number == 0 or pos_end > end:
            raise _MalformedError
        yield number, wire, start, pos, pos_end, value
        pos = pos_end


def _split(src: Source, budget: list[int]) -> Lifted | None:
    graph = None
    top: list[tuple[int, int]] = []  # the model's fields as byte ranges, the graph's as None
    for number, wire, start, pos, end, _ in _fields(src, 0, src.size, budget):
        if number == _MODEL_GRAPH:
            if graph is not None or wire != 2:
                raise _MalformedError  # parts protobuf would merge
            graph = (pos, end)
            top.append((-1, -1))
        elif top and top[-1][1] == start:
            top[-1] = (top[-1][0], end)  # runs of fields stay one range
        else:
            top.append((start, end))
    if graph is None:
        raise _MalformedError
    # The graph's fields: byte ranges kept as they are, and lifted initializers (the
    # message's other fields, to be written with a new length) with their values.
    pieces: list[tuple[int, int] | list[tuple[int, int]]] = []
    data: dict[int, np.ndarray] = {}
    index = 0
    for number, wire, start, pos, end, _ in _fields(src, graph[0], graph[1], budget):
        lifted = None
        if number == _GRAPH_INITIALIZER:
            if wire != 2:
                raise _MalformedError
            lifted = _lift_tensor(src, pos, end, budget)
            if lifted is not None:
                data[index], keep = lifted
                pieces.append(keep)
            index += 1
        if lifted is None:
            if pieces and isinstance(pieces[-1], tuple) and pieces[-1][1] == start:
                pieces[-1] = (pieces[-1][0], end)
            else:
                pieces.append((start, end))
    if not data:
        return None
    return Lifted(_assemble(src, top, pieces), data)


def _assemble(src: Source, top: list[tuple[int, int]],
              pieces: list[tuple[int, int] | list[tuple[int, int]]]) -> bytearray:
    """The model's bytes with the graph written from `pieces`: one buffer, each kept range
    read straight into it."""
    parts: list[bytes | tuple[int, int]] = []
    for piece in pieces:
        if isinstance(piece, tuple):
            parts.append(piece)
        else:  # a lifted tensor's other fields, under a new length
            body = sum(b - a for a, b in piece)
            parts.append(_encode_varint(_GRAPH_INITIALIZER << 3 | 2) + _encode_varint(body))
            parts.extend(piece)
    graph_len = sum(len(p) if isinstance(p, bytes) else p[1] - p[0] for p in parts)
    model: list[bytes | tuple[int, int]] = []
    for a, b in top:
        if a < 0:
            model.append(_encode_varint(_MODEL_GRAPH << 3 | 2) + _encode_varint(graph_len))
            model.extend(parts)
        else:
            model.append((a, b))
    out = bytearray(sum(len(p) if isinstance(p, bytes) else p[1] - p[0] for p in model))
    view = memoryview(out)
    at = 0
    for p in model:
        n = len(p) if isinstance(p, bytes) else p[1] - p[0]
        if isinstance(p, bytes):
            view[at:at + n] = p
        elif n:
            src.read_into(p[0], view[at:at + n])
        at += n
    return out


def _lift_tensor(src: Source, pos: int, end: int, budget: list[int]
                 ) -> tuple[np.ndarray, list[tuple[int, int]]] | None:
    """The values of the TensorProto in [pos, end) and the byte ranges of its other
    fields, or None when it keeps its bytes: small, another element type, or anything the
    importer reads otherwise (external data, which it reads from the file when the tensor
    names any; segments, which it refuses)."""
    if end - pos < MIN_LIFT_BYTES:
        return None
    data_type = location = 0
    other = False
    raw: list[tuple[int, int, int]] = []
    for number, wire, start, p, e, value in _fields(src, pos, end, budget):
        if number == _TENSOR_DATA_TYPE and wire == 0:
            data_type = int(value or 0)
        elif number == _TENSOR_DATA_LOCATION and wire == 0:
            location = int(value or 0)
        elif number in (_TENSOR_EXTERNAL_DATA, _TENSOR_SEGMENT):
            other = True
        elif number == _TENSOR_RAW_DATA:
            if wire != 2:
                raise _MalformedError
            raw.append((start, p, e))
    if len(raw) > 1:
        raise _MalformedError  # protobuf keeps the last one; let it
    if not raw or other or location != 0 or data_type not in _LIFTED_TYPES:
        return None
    start, p, e = raw[0]
    dtype = _LIFTED_TYPES[data_type]
    if e - p < MIN_LIFT_BYTES or (e - p) % dtype.itemsize:
        return None
    values = np.empty((e - p) // dtype.itemsize, dtype)
    src.read_into(p, values)
    if dtype != dtype.newbyteorder("="):
        values = values.astype(dtype.newbyteorder("="))
    return values, [(pos, start), (e, end)]
