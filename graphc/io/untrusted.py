"""Readers of untrusted bytes: what every loader of a file (`.gcg`, checkpoints, `.npy`
inputs of `graphc run`) shares, so that no file can hang, exhaust memory or raise a raw
exception.

- `open_regular_file`: only regular files (a FIFO, a device such as /dev/zero, a socket or
  a directory is refused without reading it; the check is repeated on the open descriptor);
- `ZipReader`: zip members read by hand, each exactly its declared size with its declared
  CRC-32, inside the file, no duplicates, only the compression methods our writers use
  (deflate at a bounded ratio where allowed);
- `parse_json`: bounded nesting depth, no duplicate keys, no non-finite numbers;
- `read_npy_header` / `npy_array`: a `.npy` header checked (plain dtypes, sane shape, data
  size) before anything is allocated.

Every failure is a `SerializationError`; callers prefix the file's name.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from graphc.errors import SerializationError

__all__ = ["MAX_JSON_DEPTH", "NpyHeader", "ZipReader", "cut", "json_depth", "npy_array",
           "open_regular_file", "parse_json", "read_npy_header"]

MAX_JSON_DEPTH = 100
NPY_HEADER_ROOM = 64 * 2**10  # an .npy header is at most this long (numpy caps it at 10k)
_FILE_KINDS: tuple[tuple[Callable[[int], bool], str], ...] = (
    (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"))


def open_regular_file(path: str | os.PathLike[str]) -> BinaryIO:
    """`path` (symlinks followed) opened for binary reading, if it is a regular file.

    A FIFO, socket, device (/dev/zero, /dev/null, a terminal) or directory raises a
    SerializationError saying "not a regular file (a FIFO (named pipe))" etc., without
    reading from it: a FIFO blocks until a writer comes, /dev/zero never ends. The type is
    checked with `os.stat` before opening (so a device is not even opened) and again with
    `os.fstat` on the open descriptor (so a file swapped in between is caught); the open
    uses O_NONBLOCK so that opening a FIFO swapped in returns at once instead of waiting for
    a writer (regular files ignore the flag). Failing to open raises OSError (whose
    `strerror` callers show). The caller closes the file.
    """
    _require_regular(os.stat(path).st_mode)
    flags = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
             | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    fd = os.open(path, flags)
    try:
        _require_regular(os.fstat(fd).st_mode)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _require_regular(mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = next((what for test, what in _FILE_KINDS if test(mode)), "an unknown kind")
        raise SerializationError(f"not a regular file ({kind})")


# Zip local file header: signature, version, flags, method, time, date, CRC, sizes, and the
# lengths of the name and the extra field that follow it.
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
_UTF8_NAME = 0x800
# Encrypted (bit 0), compressed patched data (bit 5), strong encryption (bit 6).
_UNREADABLE_FLAGS = 0x0001 | 0x0020 | 0x0040
# A deflated member may inflate at most this many times its compressed size (graph.json
# deflates about 20:1; deflate's own limit is about 1032:1, which only a bomb reaches), or
# to _RATIO_FLOOR bytes whatever its ratio (small members are never dangerous).
_MAX_RATIO = 100
_RATIO_FLOOR = 2**20


class ZipReader:
    """A zip archive in an untrusted file, read member by member within stated bounds.

    `ZipReader(f, deflatable=names)` parses the central directory (with zipfile) and refuses,
    before any member is read: a file that is not a zip; duplicate member names (also names
    equal up to a NUL byte, which zipfile cuts off); encrypted members; a compression method
    other than stored, or deflate for the members named in `deflatable` (bzip2, lzma and
    the rest are never inflated); a stored member whose two sizes differ; a deflated member
    that would inflate more than 100:1 (above 1 MiB); and a member whose offset and size do
    not lie inside the file (a zip64 offset of 2**63 included). `members` maps names to
    their `zipfile.ZipInfo` in archive order.

    `read(name, limit)` refuses a member declaring more than `limit` bytes, then reads it
    itself (not with zipfile): the local header must name the same member, deflate output
    is bounded by the declared size, and the data must be exactly the declared size (no
    short stream, no trailing data) with the declared CRC-32.

    Every failure, of the constructor and of `read`, is a SerializationError whose message
    names the member but not the file: callers add the file. The caller owns `f`.
    """

    def __init__(self, f: BinaryIO, *, deflatable: Collection[str] = ()) -> None:
        self._f = f
        try:
            self._size = os.fstat(f.fileno()).st_size
            if not zipfile.is_zipfile(f):
                raise SerializationError("not a zip archive")
            f.seek(0)
            infos = zipfile.ZipFile(f).infolist()  # closing it would not close `f`
        except SerializationError:
            raise
        except Exception as exc:
            # zipfile documents no closed set of errors for a hostile central directory
            # (BadZipFile, EOFError, OverflowError, struct.error, UnicodeDecodeError and
            # NotImplementedError all occur); each means the archive is damaged.
            raise SerializationError(
                f"a damaged zip archive ({type(exc).__name__}: {cut(str(exc))})") from None
        self.members: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            self._check(info, info.filename in deflatable)
            if info.filename in self.members:
                raise SerializationError(f"member {cut(repr(info.filename))} appears twice")
            self.members[info.filename] = info

    def _check(self, info: zipfile.ZipInfo, deflatable: bool) -> None:
        name = cut(repr(info.orig_filename))
        if info.filename != info.orig_filename:
            raise SerializationError(f"member name {name} contains a NUL byte")
        if info.flag_bits & _UNREADABLE_FLAGS:
            raise SerializationError(f"member {name} is encrypted")
        method = info.compress_type
        allowed = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) if deflatable else (
            zipfile.ZIP_STORED,)
        if method not in allowed:
            kind = zipfile.compressor_names.get(method, "unknown")
            may = "stored or deflated" if deflatable else "stored uncompressed"
            raise SerializationError(f"member {name} uses compression method {method} ({kind}); "
                                     f"this member is only read {may}")
        usize, csize = info.file_size, info.compress_size
        if method == zipfile.ZIP_STORED and usize != csize:
            raise SerializationError(
                f"member {name} is stored, but declares {csize} bytes stored and {usize} "
                "uncompressed")
        if method == zipfile.ZIP_DEFLATED and usize > max(_RATIO_FLOOR, _MAX_RATIO * csize):
            raise SerializationError(
                f"member {name} would inflate from {csize} to {usize} bytes, a ratio above "
                f"{_MAX_RATIO}:1 (a zip bomb)")
        if method == zipfile.ZIP_DEFLATED and csize > usize + usize // 100 + 1024:
            raise SerializationError(  # deflate never grows data by more than ~0.1%
                f"member {name} declares {csize} deflated bytes for {usize} uncompressed")
        raw_name = self._raw_name(info)
        end = info.header_offset + _LOCAL_HEADER.size + len(raw_name) + csize
        if info.header_offset < 0 or end > self._size:
            raise SerializationError(
                f"member {name} lies outside the file (offset {info.header_offset}, "
                f"{csize} bytes; the file has {self._size})")

    @staticmethod
    def _raw_name(info: zipfile.ZipInfo) -> bytes:
        # zipfile decoded the name as UTF-8 or cp437 (by the flag); both encode back exactly.
        utf8 = info.flag_bits & _UTF8_NAME
        return info.orig_filename.encode("utf-8" if utf8 else "cp437")

    def read(self, name: str, limit: int) -> bytes:
        """The data of member `name` (a key of `members`), refusing more than `limit` bytes."""
        info = self.members[name]
        shown = cut(repr(name))
        if info.file_size > limit:
            raise SerializationError(f"member {shown} is {info.file_size} bytes uncompressed, "
                                     f"more than the {limit} it may hold")
        try:
            self._f.seek(info.header_offset)
            fields = _LOCAL_HEADER.unpack(self._read_exact(_LOCAL_HEADER.size, shown))
            if fields[0] != b"PK\x03\x04":
                raise SerializationError(f"member {shown} has no local header at its offset")
            name_length, extra_length = fields[-2:]
            raw_name = self._read_exact(name_length, shown)
            if raw_name != self._raw_name(info):
                raise SerializationError(f"member {shown} has another name in its local header")
            start = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
            if start + info.compress_size > self._size:
                raise SerializationError(f"member {shown} extends beyond the end of the file")
            self._f.seek(start)
            raw = self._read_exact(info.compress_size, shown)
        except OSError as exc:
            raise SerializationError(f"member {shown} cannot be read "
                                     f"({exc.strerror or exc})") from None
        data = raw if info.compress_type == zipfile.ZIP_STORED else self._inflate(info, raw)
        if zlib.crc32(data) != info.CRC:
            raise SerializationError(f"member {shown} is corrupt (its CRC-32 does not match)")
        return data

    def _read_exact(self, size: int, shown: str) -> bytes:
        data = self._f.read(size)
        if len(data) != size:
            raise SerializationError(f"member {shown} is truncated (the file ends early)")
        return data

    @staticmethod
    def _inflate(info: zipfile.ZipInfo, raw: bytes) -> bytes:
        shown = cut(repr(info.filename))
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            # One byte more than declared is enough to see that a member lies about its size.
            data = inflater.decompress(raw, info.file_size + 1)
        except zlib.error as exc:
            raise SerializationError(f"member {shown} is corrupt (damaged deflate data: "
                                     f"{exc})") from None
        if (len(data) != info.file_size or not inflater.eof or inflater.unconsumed_tail
                or inflater.unused_data):
            raise SerializationError(f"member {shown} does not inflate to exactly the "
                                     f"{info.file_size} bytes its header declares")
        return data


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_JSON_NESTING = np.zeros(256, np.int8)
_JSON_NESTING[[ord("["), ord("{")]] = 1
_JSON_NESTING[[ord("]"), ord("}")]] = -1
_DEPTH_CHUNK = 1 << 22


def json_depth(data: bytes) -> int:
    """How deeply arrays and objects nest in the JSON text `data` (strings blanked out).

    Runs in linear time without recursion (a regex and numpy), so it can run before the
    parser. For text the parser accepts it is the exact depth; for other text an upper
    bound is fine, as the parser would refuse it anyway.
    """
    blanked = _JSON_STRING.sub(b'""', data)
    deepest = level = 0
    for start in range(0, len(blanked), _DEPTH_CHUNK):
        chunk = np.frombuffer(blanked, np.uint8, min(_DEPTH_CHUNK, len(blanked) - start), start)
        levels = np.cumsum(_JSON_NESTING[chunk], dtype=np.int64) + level
        deepest, level = max(deepest, int(levels.max())), int(levels[-1])
    return deepest


def parse_json(data: bytes, what: str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The JSON value of untrusted `data` (the member `what`, named in messages).

    Raises SerializationError if `data` is not UTF-8, nests arrays and objects deeper than
    `max_depth` (checked before parsing, so the parser never recurses deeply), is not valid
    JSON, repeats a key in one object, holds NaN or Infinity (not JSON), or a number too
    large to be finite.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SerializationError(f"{what} is not UTF-8 ({exc.reason})") from None
    depth = json_depth(data)
    if depth > max_depth:
        raise SerializationError(f"{what} is nested too deeply ({depth} levels of arrays and "
                                 f"objects, at most {max_depth})")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise SerializationError(
                    f"{what}: the key {cut(repr(key))} appears twice in one object")
            result[key] = value
        return result

    def no_constant(name: str) -> Any:
        raise SerializationError(f"{what}: {name} is not JSON")

    def finite(token: str) -> float:
        value = float(token)
        if not math.isfinite(value):
            raise SerializationError(f"{what}: the number {cut(token)} is too large")
        return value

    try:
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constant,
                          parse_float=finite)
    except ValueError as exc:  # JSONDecodeError, or an integer with too many digits
        raise SerializationError(f"{what} is not valid JSON: {cut(str(exc), 200)}") from None


@dataclass(frozen=True)
class NpyHeader:
    """What an .npy header promises: shape, dtype, layout, and where the data starts."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    fortran: bool
    offset: int  # of the data, from where `read_npy_header` started reading

    @property
    def nbytes(self) -> int:
        """The size of the data (an exact Python int: no overflow, however large)."""
        return math.prod(self.shape) * self.dtype.itemsize

    def describe(self) -> str:
        """Like ``float32[2, 3]``."""
        return f"{self.dtype}{list(self.shape)}"


def read_npy_header(f: BinaryIO) -> NpyHeader:
    """Read and check the .npy header at the position of `f`, never its data.

    At most 64 KiB + 12 bytes are read, whatever the header claims. Raises
    SerializationError, with a message that continues a subject ("the value of %x ..."):
    for a bad magic string or unknown version, an unparsable header, a negative dimension,
    an object dtype (pickled data is never loaded), or a structured or subarray dtype.
    Compare `nbytes` with what the file holds before allocating anything.
    """
    start = f.tell()
    head = io.BytesIO(f.read(NPY_HEADER_ROOM + 12))
    try:
        version = np.lib.format.read_magic(head)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(head)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(head)
        else:
            raise SerializationError(f"has an unsupported .npy version {version}")
    except SerializationError:
        raise
    except Exception as exc:
        # numpy parses the header with ast.literal_eval and np.dtype, which raise more than
        # ValueError on hostile text (SyntaxError, TypeError, MemoryError...).
        first = str(exc).split("\n", 1)[0]
        raise SerializationError(
            f"is not a valid .npy file ({type(exc).__name__}: {cut(first, 200)})") from None
    if any(type(d) is not int or d < 0 for d in shape):
        raise SerializationError(f"has an invalid shape {cut(repr(shape))} in its .npy header")
    if dtype.hasobject:
        raise SerializationError("holds Python objects (pickled data is never loaded)")
    if dtype.fields is not None or dtype.subdtype is not None:
        raise SerializationError(f"is not a plain array (its dtype is {cut(str(dtype))})")
    return NpyHeader(tuple(shape), dtype, bool(fortran), start + head.tell())


def npy_array(data: bytes | memoryview, header: NpyHeader) -> np.ndarray:
    """The array held by `data`, the bytes after an .npy header (exactly `header.nbytes`).

    Returns a new C-ordered, writable array in native byte order. Raises SerializationError
    (a predicate, like `read_npy_header`'s) if `data` has any other length.
    """
    if len(data) != header.nbytes:
        raise SerializationError(f"has {len(data)} bytes of data, a {header.describe()} array "
                                 f"needs {header.nbytes}")
    flat = np.frombuffer(data, dtype=header.dtype, count=math.prod(header.shape))
    array = flat.reshape(header.shape, order="F" if header.fortran else "C")
    return np.array(array, dtype=header.dtype.newbyteorder("="), order="C")


def cut(text: str, limit: int = 80) -> str:
    """`text`, cut to `limit` characters (member and key names can be 64 KiB long)."""
    return text if len(text) <= limit else text[:limit - 3] + "..."
