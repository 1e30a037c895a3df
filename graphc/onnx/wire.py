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
protobuf would merge, a tensor with two `raw_data` fields, a truncated field) makes it
return None, so that the caller parses the model whole and protobuf's own checks report
the problem. Arrays are checked against the tensor's dims by the caller, as any tensor is.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["MIN_LIFT_BYTES", "Lifted", "Source", "split_raw_data"]

# Smaller tensors stay in the message: they cost nothing to copy, and anything that reads
# the parsed model directly (shape arithmetic, small constants) finds them there.
MIN_LIFT_BYTES = 4096
# TensorProto.DataType codes with a fixed element width that graphc reads as they are
# (float, int32, int64, double); other types keep their bytes in the message.
_LIFTED_TYPES = {1: np.dtype("<f4"), 6: np.dtype("<i4"), 7: np.dtype("<i8"),
                 11: np.dtype("<f8")}
_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5
_TENSOR_DATA_TYPE, _TENSOR_RAW_DATA, _TENSOR_DATA_LOCATION = 2, 9, 14


class _MalformedError(Exception):
    """Something the walk does not understand: the caller parses the model whole."""


@dataclass(frozen=True)
class Lifted:
    """The model's bytes without the lifted fields, and each lifted initializer's values
    (flat, in its own aligned array) by its index in `graph.initializer`."""

    model: bytes
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

    def read(self, pos: int, n: int) -> bytes | memoryview:
        """Exactly the n bytes at pos."""
        if self.buf is not None:
            return self.buf[pos:pos + n]
        assert self.fd is not None
        out = os.pread(self.fd, n, pos) if n else b""
        if len(out) != n:
            raise _MalformedError  # the file changed under us
        return out

    def read_all(self) -> bytes | memoryview:
        """Everything (a file's bytes up to its end now, which may be short of `size`)."""
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

    def read_into(self, pos: int, out: np.ndarray) -> None:
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
        return _split(src)
    except (_MalformedError, OSError, MemoryError):
        return None


def _varint(src: Source, pos: int, end: int) -> tuple[int, int]:
    window = src.read(pos, min(10, end - pos))
    value = shift = 0
    for i, byte in enumerate(window):
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos + i + 1
        shift += 7
    raise _MalformedError  # truncated, or longer than 10 bytes


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


def _fields(src: Source, pos: int, end: int) -> Iterator[_Field]:
    """The fields of the message in [pos, end)."""
    while pos < end:
        start = pos
        key, pos = _varint(src, pos, end)
        number, wire = key >> 3, key & 7
        value = None
        if wire == 0:
            value, pos_end = _varint(src, pos, end)
        elif wire == 1:
            pos_end = pos + 8
        elif wire == 2:
            length, pos = _varint(src, pos, end)
            pos_end = pos + length
        elif wire == 5:
            pos_end = pos + 4
        else:  # groups (3, 4) and invalid wire types
            raise _MalformedError
        if number == 0 or pos_end > end:
            raise _MalformedError
        yield number, wire, start, pos, pos_end, value
        pos = pos_end


def _message(number: int, body: bytes) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(len(body)) + body


def _split(src: Source) -> Lifted | None:
    top = list(_fields(src, 0, src.size))
    graphs = [f for f in top if f[0] == _MODEL_GRAPH]
    if len(graphs) != 1 or graphs[0][1] != 2:
        raise _MalformedError  # no graph, or parts protobuf would merge
    parts: list[bytes | memoryview] = []
    data: dict[int, np.ndarray] = {}
    index = 0
    _, _, _, g_pos, g_end, _ = graphs[0]
    for number, wire, start, pos, end, _ in _fields(src, g_pos, g_end):
        lifted = None
        if number == _GRAPH_INITIALIZER:
            if wire != 2:
                raise _MalformedError
            lifted = _lift_tensor(src, pos, end)
            if lifted is not None:
                data[index], keep = lifted
                parts.append(_message(_GRAPH_INITIALIZER,
                                      b"".join(src.read(a, b - a) for a, b in keep)))
            index += 1
        if lifted is None:
            parts.append(src.read(start, end - start))
    if not data:
        return None
    graph = b"".join(parts)
    model = b"".join(_message(_MODEL_GRAPH, graph) if f is graphs[0]
                     else src.read(f[2], f[4] - f[2]) for f in top)
    return Lifted(model, data)


def _lift_tensor(src: Source, pos: int,
                 end: int) -> tuple[np.ndarray, list[tuple[int, int]]] | None:
    """The values of the TensorProto in [pos, end) and the byte ranges of its other
    fields, or None when it keeps its bytes (small, external, another element type)."""
    data_type = location = 0
    raw: list[tuple[int, int, int]] = []
    for number, wire, start, p, e, value in _fields(src, pos, end):
        if number == _TENSOR_DATA_TYPE and wire == 0:
            data_type = int(value or 0)
        elif number == _TENSOR_DATA_LOCATION and wire == 0:
            location = int(value or 0)
        elif number == _TENSOR_RAW_DATA:
            if wire != 2:
                raise _MalformedError
            raw.append((start, p, e))
    if len(raw) > 1:
        raise _MalformedError  # protobuf keeps the last one; let it
    if not raw or location != 0 or data_type not in _LIFTED_TYPES:
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
