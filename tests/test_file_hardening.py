"""Reading hostile files never hangs, never exhausts memory, never raises a raw exception.

Issue 13, items 4 and 8. Every failure of `gc.load`, `gc.load_checkpoint` and
`graphc run --input` is a `GraphcError` (a `SerializationError` for the two loaders) that
names the file. Where a class of input broke once the class is tested, not the one
example: every special file a test can create, every compression method zipfile knows (and
some it does not), zip64 sizes and offsets around 2**63, JSON and text-IR nesting depths,
duplicates of each kind, names around the 65535-byte zip limit, and .npy headers that lie.

Special files are read in a child process with an address-space limit and a per-case
alarm, so code that hangs or reads without bound fails the test instead of the test run.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import graphc as gc
from graphc.cli.main import main as cli_main
from graphc.errors import SerializationError
from graphc.io.gcg import load, member_name, save
from graphc.io.jsonir import decode_attr, encode_attr
from graphc.io.rebuild import graph_diff
from graphc.io.textir import parse_graph
from graphc.io.untrusted import parse_json

# --- the files under test -----------------------------------------------------------------------


def _model() -> gc.Graph:
    """A model with two inputs (`graphc run` reads x and k) and two variables."""
    with gc.Graph("tiny") as g:
        x = gc.placeholder((2, 3), gc.float32, name="x")
        k = gc.placeholder((2,), gc.int32, name="k")
        w = gc.variable(np.arange(12, dtype=np.float32).reshape(3, 4) / 10, name="w")
        b = gc.variable(np.ones(4, np.float32), name="b")
        out = gc.matmul(x, w, name="out") + b
        g.add_signature("predict", [x, k], [out, k + 1])
    return g


def _ckpt_graph() -> gc.Graph:
    with gc.Graph("vars") as g:
        gc.variable(np.arange(3, dtype=np.float32), name="a")
        gc.variable(np.full((2, 2), 7.0), name="b")
    return g


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A saved model, a saved checkpoint, and good `graphc run` inputs for the model."""
    root = tmp_path_factory.mktemp("hardening")
    save(_model(), root / "model.gcg")
    gc.save_checkpoint(_ckpt_graph(), root / "vars.gcc")
    np.save(root / "x.npy", np.arange(6, dtype=np.float32).reshape(2, 3))
    np.save(root / "k.npy", np.array([1, 2], np.int32))
    return {"root": root, "model": root / "model.gcg", "ckpt": root / "vars.gcc",
            "x": root / "x.npy", "k": root / "k.npy"}


def _members(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


# --- a zip writer that can lie -----------------------------------------------------------------

@dataclass(frozen=True)
class Member:
    """One member of a hand-made zip; the overrides go into the central directory."""

    name: str
    data: bytes
    method: int = zipfile.ZIP_STORED
    payload: bytes | None = None  # the stored bytes (default: `data` compressed by `method`)
    file_size: int | None = None
    compress_size: int | None = None
    header_offset: int | None = None
    crc: int | None = None


def _compress(data: bytes, method: int) -> bytes:
    """`data` as zipfile compresses it with `method`; an unknown method stores it as is."""
    if method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                      zipfile.ZIP_LZMA):
        return data
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        zf.writestr("m", data)
    raw = buf.getvalue()
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        size = zf.getinfo("m").compress_size
    name_len, extra_len = struct.unpack("<2H", raw[26:30])
    start = 30 + name_len + extra_len
    return raw[start:start + size]


def _raw_zip(members: Sequence[Member], *, cd_offset: int | None = None) -> bytes:
    """A zip archive of `members`; sizes and offsets >= 0xFFFFFFFF go into zip64 extras.

    `cd_offset` writes a zip64 end record claiming that central-directory offset.
    """
    body, central = bytearray(), bytearray()
    for m in members:
        payload = _compress(m.data, m.method) if m.payload is None else m.payload
        name = m.name.encode()
        flags = 0 if m.name.isascii() else 0x800
        crc = zlib.crc32(m.data) if m.crc is None else m.crc
        sizes = [len(m.data) if m.file_size is None else m.file_size,
                 len(payload) if m.compress_size is None else m.compress_size,
                 len(body) if m.header_offset is None else m.header_offset]
        big = [s >= 0xFFFFFFFF for s in sizes]
        small = [0xFFFFFFFF if b else s for s, b in zip(sizes, big)]
        body += struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", 45, 0, flags, m.method, 0, 0x21,
                            crc, small[1], small[0], len(name), 0) + name + payload
        values = b"".join(struct.pack("<Q", s) for s, b in zip(sizes, big) if b)
        extra = struct.pack("<2H", 1, len(values)) + values if values else b""
        central += struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 45, 3, 45, 0, flags, m.method,
                               0, 0x21, crc, small[1], small[0], len(name), len(extra), 0, 0,
                               0, 0o644 << 16, small[2]) + name + extra
    n = len(members)
    out = body + central
    if cd_offset is None:
        out += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, n, n, len(central), len(body), 0)
    else:
        at = len(out)
        out += struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, n, n, len(central),
                           cd_offset)
        out += struct.pack("<4sLQL", b"PK\x06\x07", 0, at, 1)
        out += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF,
                           0xFFFFFFFF, 0)
    return bytes(out)


def _replacing(members: Sequence[tuple[str, bytes]], name: str, data: bytes) -> bytes:
    """The members again as a zip, with the data of member `name` replaced."""
    return _raw_zip([Member(n, data if n == name else d) for n, d in members])


def _load_gcg(data: bytes, tmp_path: Path) -> SerializationError:
    """Write `data` as a .gcg, load it, and return the SerializationError it must raise."""
    path = tmp_path / "hostile.gcg"
    path.write_bytes(data)
    with pytest.raises(SerializationError) as info:
        load(path)
    assert str(path) in str(info.value)
    return info.value


def _load_ckpt(data: bytes, tmp_path: Path) -> SerializationError:
    """Write `data` as a checkpoint, load it; the graph keeps its values on failure."""
    path = tmp_path / "hostile.gcc"
    path.write_bytes(data)
    g = _ckpt_graph()
    with pytest.raises(SerializationError) as info:
        gc.load_checkpoint(g, path)
    assert str(path) in str(info.value)
    np.testing.assert_array_equal(g.variables["a"], np.arange(3))
    return info.value


LOADERS: dict[str, Callable[[bytes, Path], SerializationError]] = {
    "gcg": _load_gcg, "checkpoint": _load_ckpt}


def _valid(files: dict[str, Path], loader: str) -> list[tuple[str, bytes]]:
    return _members(files["model" if loader == "gcg" else "ckpt"])


def _json_member(loader: str) -> str:
    return "graph.json" if loader == "gcg" else "manifest.json"


# --- special files (a child process: a regression hangs or balloons it, not pytest) -------------

_CHILD = r"""
import contextlib, io, json, resource, signal, sys
limit = 1 << 30  # bytes of address space (graphc needs ~300 MB): /dev/zero reading ends here
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import numpy as np
import graphc as gc
from graphc.cli.main import main

def timeout(*_):
    raise TimeoutError("hung for 2 s")

signal.signal(signal.SIGALRM, timeout)
cases, model, x = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
with gc.Graph("g") as g:
    gc.variable(np.zeros(3, np.float32), name="a")
results = {}
for key, (loader, path) in cases.items():
    err = io.StringIO()
    signal.setitimer(signal.ITIMER_REAL, 2.0)
    try:
        with contextlib.redirect_stderr(err):
            if loader == "gcg":
                gc.load(path)
            elif loader == "checkpoint":
                gc.load_checkpoint(g, path)
            elif loader == "input":
                code = main(["run", model, "--input", f"x={path}"])
                raise SystemExit(code)
            else:
                code = main(["run", path, "--input", f"x={x}"])
                raise SystemExit(code)
        results[key] = {"outcome": "loaded"}
    except gc.GraphcError as exc:
        results[key] = {"outcome": type(exc).__name__, "message": str(exc)}
    except SystemExit as exc:
        results[key] = {"outcome": "exit", "code": exc.code, "stderr": err.getvalue()}
    except BaseException as exc:
        results[key] = {"outcome": "raw " + type(exc).__name__, "message": str(exc)[:300]}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
print(json.dumps(results))
"""

SPECIAL_KINDS = ["fifo", "fifo_symlink", "dev_zero", "dev_zero_symlink", "dev_null",
                 "dev_null_symlink", "directory", "socket"]
SPECIAL_LOADERS = ["gcg", "checkpoint", "input", "model"]


def _make_special(root: Path, kind: str, keep: list[socket.socket]) -> str:
    """Create a special file of `kind` under `root` (named *.gcg) and return its path."""
    if kind in ("dev_zero", "dev_null"):
        return f"/dev/{kind[4:]}"
    if kind == "socket":  # a Unix socket path has at most 107 bytes: use a short folder
        root = Path(tempfile.mkdtemp(prefix="gc"))
    path = root / f"{kind}.gcg"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "fifo_symlink":
        os.symlink(root / "fifo.gcg", path)
    elif kind.endswith("_symlink"):
        os.symlink(f"/dev/{kind[4:-8]}", path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        keep.append(sock)
    return str(path)


@pytest.fixture(scope="module")
def special_results(files: dict[str, Path]) -> Iterator[dict[str, dict[str, Any]]]:
    root = files["root"] / "special"
    root.mkdir()
    keep: list[socket.socket] = []
    paths = {kind: _make_special(root, kind, keep) for kind in SPECIAL_KINDS}
    cases = {f"{loader}-{kind}": (loader, paths[kind])
             for loader in SPECIAL_LOADERS for kind in SPECIAL_KINDS}
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cases),
                               str(files["model"]), str(files["x"])],
                              capture_output=True, text=True, timeout=120, env=env, check=False)
    finally:
        for sock in keep:
            sock.close()
        shutil.rmtree(Path(paths["socket"]).parent)
    assert done.returncode == 0, done.stderr[-3000:]
    yield {**json.loads(done.stdout), "_paths": paths}


@pytest.mark.parametrize("kind", SPECIAL_KINDS)
@pytest.mark.parametrize("loader", SPECIAL_LOADERS)
def test_special_files_are_refused_without_blocking(special_results: dict[str, Any],
                                                    loader: str, kind: str) -> None:
    result = special_results[f"{loader}-{kind}"]
    path = special_results["_paths"][kind]
    if loader in ("gcg", "checkpoint"):
        assert result["outcome"] == "SerializationError", result
        assert path in result["message"] and "not a regular file" in result["message"], result
        return
    assert result["outcome"] == "exit", result
    if loader == "model" and not path.endswith(".gcg"):
        # `graphc run /dev/zero` is a usage error (no .gcg, .onnx or file.py:function).
        assert result["code"] == 2, result
    else:
        assert result["code"] == 1 and "not a regular file" in result["stderr"], result
    assert result["stderr"].startswith("graphc: error:") and path in result["stderr"], result
    assert "Traceback" not in result["stderr"]


def test_a_fifo_swapped_in_after_the_stat_is_refused(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The race: `os.stat` saw a regular file, `open` finds a FIFO. O_NONBLOCK keeps the open
    from waiting for a writer and `os.fstat` on the descriptor refuses it (an alarm turns a
    regression into a failure instead of a hang)."""
    fifo = tmp_path / "swapped.gcg"
    os.mkfifo(fifo)
    regular = os.stat(__file__)
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: regular if os.fspath(p) == str(fifo)
                        else real_stat(p, *a, **k))

    def hung(*_: Any) -> None:
        raise TimeoutError("opening the FIFO blocked")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, 5.0)
    try:
        for read in (load, lambda p: gc.load_checkpoint(_ckpt_graph(), p)):
            with pytest.raises(SerializationError, match=r"not a regular file \(a FIFO"):
                read(fifo)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --- compression methods -----------------------------------------------------------------------

# Every method zipfile writes, and a few it cannot read (shrink, implode, deflate64, zstd,
# AES): the payload of those is the plain data, so only the method id is wrong.
METHODS = {"stored": 0, "deflated": 8, "bzip2": 12, "lzma": 14, "shrunk": 1, "imploded": 6,
           "deflate64": 9, "zstd": 93, "aes": 99}
# (loader, member): which methods a reader accepts. `save` writes JSON deflated (gcg) or
# stored (checkpoints) and arrays stored; the readers accept deflated JSON (bounded) and
# refuse every other compressed member, so a compressed array is never inflated.
TARGETS = {("gcg", "graph.json"): {"stored", "deflated"}, ("gcg", "values/w.npy"): {"stored"},
           ("checkpoint", "manifest.json"): {"stored", "deflated"},
           ("checkpoint", "arrays/0.npy"): {"stored"}}


@pytest.mark.parametrize("damaged", [False, True], ids=["intact", "damaged"])
@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("target", sorted(TARGETS), ids="{0[0]}:{0[1]}".format)
def test_every_compression_method(files: dict[str, Path], tmp_path: Path,
                                  target: tuple[str, str], method: str, damaged: bool) -> None:
    loader, name = target
    members = _valid(files, loader)
    data = dict(members)[name]
    payload = _compress(data, METHODS[method])
    if damaged:
        payload = bytearray(payload)
        payload[len(payload) // 2] ^= 0x55
        payload = bytes(payload)
    blob = _raw_zip([Member(n, d, METHODS[method], payload) if n == name else Member(n, d)
                     for n, d in members])
    if method in TARGETS[target] and not damaged:
        path = tmp_path / "ok"
        path.write_bytes(blob)
        if loader == "gcg":
            assert graph_diff(load(path), _model()) is None
        else:
            g = _ckpt_graph()
            g.variables["a"] = np.zeros(3, np.float32)
            gc.load_checkpoint(g, path)
            np.testing.assert_array_equal(g.variables["a"], np.arange(3))
        return
    err = LOADERS[loader](blob, tmp_path)
    if method not in TARGETS[target]:
        assert f"compression method {METHODS[method]}" in str(err), err


def _deflated_zeros_npy(shape: tuple[int, ...]) -> tuple[bytes, int, int]:
    """A deflated .npy of float32 zeros, made in chunks: (payload, inflated size, crc)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    head = header.getvalue()
    zeros = bytes(1 << 20)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts, crc = [comp.compress(head)], zlib.crc32(head)
    for _ in range(int(np.prod(shape)) * 4 // len(zeros)):
        parts.append(comp.compress(zeros))
        crc = zlib.crc32(zeros, crc)
    parts.append(comp.flush())
    return b"".join(parts), len(head) + int(np.prod(shape)) * 4, crc


BOMB_ELEMENTS = 16 << 20  # 64 MiB of float32 zeros deflate to ~64 KiB


@pytest.mark.parametrize("kind", ["gcg value", "gcg json", "checkpoint array",
                                  "checkpoint manifest"])
def test_deflate_bombs_are_refused_before_inflating(files: dict[str, Path], tmp_path: Path,
                                                    kind: str) -> None:
    loader = kind.split()[0]
    members = _valid(files, loader)
    json_name = _json_member(loader)
    doc = json.loads(dict(members)[json_name])
    if kind.endswith("json") or kind.endswith("manifest"):
        # Legal JSON padded with 60 MiB of spaces: a ratio of about 1000 to 1.
        data = json.dumps(doc).encode() + b" " * (60 << 20)
        blob = _raw_zip([Member(n, data, zipfile.ZIP_DEFLATED) if n == json_name
                         else Member(n, d) for n, d in members])
    else:
        payload, size, crc = _deflated_zeros_npy((BOMB_ELEMENTS,))
        if loader == "gcg":
            node = next(n for n in doc["nodes"] if n["name"] == "b")
            node["type"]["shape"] = [BOMB_ELEMENTS]
            doc["nodes"], doc["signatures"] = [node], []
            members = [(n, d) for n, d in members if n in ("graph.json", "values/b.npy")]
            target = "values/b.npy"
        else:
            doc["variables"][0]["shape"] = [BOMB_ELEMENTS]
            target = "arrays/0.npy"
        blob = _raw_zip([Member(target, b"", zipfile.ZIP_DEFLATED, payload, size, crc=crc)
                         if n == target else
                         Member(n, json.dumps(doc).encode() if n == json_name else d)
                         for n, d in members])
    assert len(blob) < 1 << 20
    err = LOADERS[loader](blob, tmp_path)
    assert "compression method 8" in str(err) or "ratio" in str(err), err


# Members must inflate to exactly the size their header promises, with the CRC it promises.
SIZE_LIES = ["one byte short", "one byte long", "trailing data", "stored size mismatch",
             "wrong crc", "truncated stream"]


@pytest.mark.parametrize("lie", SIZE_LIES)
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_members_inflate_to_exactly_their_declared_size(files: dict[str, Path], tmp_path: Path,
                                                        loader: str, lie: str) -> None:
    members = _valid(files, loader)
    name = _json_member(loader)
    data = dict(members)[name].rstrip() + b"\n"  # the last byte can go: still valid JSON
    deflated = _compress(data, zipfile.ZIP_DEFLATED)
    member = {
        "one byte short": Member(name, data, 8, deflated, len(data) - 1,
                                 crc=zlib.crc32(data[:-1])),
        "one byte long": Member(name, data, 8, deflated, len(data) + 1),
        "trailing data": Member(name, data, 8, deflated + b"more bytes after the stream"),
        "stored size mismatch": Member(name, data, 0, data + b" ", len(data) + 1,
                                       crc=zlib.crc32(data + b" "), compress_size=len(data)),
        "wrong crc": Member(name, data, 8, crc=zlib.crc32(data) ^ 1),
        "truncated stream": Member(name, data, 8, deflated[:-4]),
    }[lie]
    LOADERS[loader](_raw_zip([member if n == name else Member(n, d) for n, d in members]),
                    tmp_path)


# --- zip64 sizes and offsets ------------------------------------------------------------------

ZIP64 = [("header_offset", 2**63 - 1), ("header_offset", 2**63), ("header_offset", 2**64 - 1),
         ("header_offset", 2**32), ("header_offset", "end"), ("file_size", 2**63),
         ("file_size", 2**64 - 1), ("compress_size", 2**63), ("compress_size", 2**64 - 1),
         ("cd_offset", 2**63), ("cd_offset", 2**64 - 1)]


@pytest.mark.parametrize(("field", "value"), ZIP64, ids=[f"{f}={v}" for f, v in ZIP64])
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_zip64_sizes_and_offsets_beyond_the_file(files: dict[str, Path], tmp_path: Path,
                                                 loader: str, field: str, value: Any) -> None:
    members = _valid(files, loader)
    name = _json_member(loader)
    if field == "cd_offset":
        blob = _raw_zip([Member(n, d) for n, d in members], cd_offset=value)
    else:
        if value == "end":
            value = len(_raw_zip([Member(n, d) for n, d in members]))
        blob = _raw_zip([replace(Member(n, d), **{field: value}) if n == name else Member(n, d)
                         for n, d in members])
    LOADERS[loader](blob, tmp_path)


# --- nesting depth ------------------------------------------------------------------------------

DEPTHS = [101, 10_000, 1_000_000]


def _nested(shape: str, depth: int) -> str:
    if shape == "list":
        return "[" * depth + "]" * depth
    return '{"a": ' * depth + "0" + "}" * depth


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("where", ["document", "inside"])
@pytest.mark.parametrize("shape", ["list", "object"])
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_json_nesting_is_bounded(files: dict[str, Path], tmp_path: Path, loader: str,
                                 shape: str, where: str, depth: int) -> None:
    members = _valid(files, loader)
    name = _json_member(loader)
    nested = _nested(shape, depth)
    if where == "document":
        text = nested
    elif loader == "gcg":  # as an attribute value of the first node
        text = dict(members)[name].decode().replace('"attrs": {}', f'"attrs": {{"t": {nested}}}',
                                                    1)
    else:  # as the manifest's list of variables
        text = json.dumps({"format": "graphc-checkpoint", "version": 1, "graph": "vars",
                           "variables": "@"}).replace('"@"', nested)
    assert nested in text
    err = LOADERS[loader](_replacing(members, name, text.encode()), tmp_path)
    assert "nested" in str(err), err


@pytest.mark.parametrize("number", ["1" + "0" * 5000, "1e999", "-1e999", "1" * 4301 + ".5"])
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_json_numbers_beyond_the_limits(files: dict[str, Path], tmp_path: Path, loader: str,
                                        number: str) -> None:
    """Integers past Python's 4300-digit conversion limit, floats that overflow to inf."""
    members = _valid(files, loader)
    name = _json_member(loader)
    text = dict(members)[name].replace(b'"version": 1', b'"version": ' + number.encode(), 1)
    assert number.encode() in text
    err = LOADERS[loader](_replacing(members, name, text), tmp_path)
    assert "not valid JSON" in str(err) or "too large" in str(err), err


def test_the_deepest_legal_attribute_is_within_the_json_bound() -> None:
    """The JSON depth bound leaves room for the deepest attribute `decode_attr` accepts."""
    value: Any = 1.5
    for _ in range(32):  # jsonir's bound on nested attribute tuples
        value = (value,)
    doc = {"nodes": [{"attrs": {"t": encode_attr(value)}}]}
    parsed = parse_json(json.dumps(doc).encode(), "graph.json")
    assert decode_attr(parsed["nodes"][0]["attrs"]["t"], "$") == value


@pytest.mark.parametrize("depth", [65, 1000, 100_000])
@pytest.mark.parametrize("kind", ["attribute tuple", "constant list"])
def test_text_ir_nesting_is_bounded(kind: str, depth: int) -> None:
    if kind == "attribute tuple":
        text = 'graph "a"\n%x = placeholder {t=' + "(" * depth + "1" + ",)" * depth + "} : f32[]"
    else:
        text = ('graph "a"\n%x = constant {value=' + "[" * depth + "1" + "]" * depth
                + "} : f32[" + ",".join(["1"] * depth) + "]")
    with pytest.raises(SerializationError, match="nested"):
        parse_graph(text)


def test_text_ir_reads_a_constant_of_numpys_greatest_rank() -> None:
    text = ('graph "a"\n%x = constant {value=' + "[" * 64 + "1" + "]" * 64 + "} : f32["
            + ",".join(["1"] * 64) + "]")
    assert parse_graph(text).constants["x"].shape == (1,) * 64


# --- duplicates ---------------------------------------------------------------------------------

def _edit(members: list[tuple[str, bytes]], name: str, edit: Callable[[Any], Any]) -> bytes:
    doc = json.loads(dict(members)[name])
    edit(doc)
    return _raw_zip([Member(n, json.dumps(doc).encode() if n == name else d)
                     for n, d in members])


def _gcg_duplicates(m: list[tuple[str, bytes]]) -> dict[str, tuple[bytes, str]]:
    sig = json.loads(dict(m)["graph.json"])["signatures"][0]
    other = {**sig, "outputs": sig["outputs"][:1]}
    first = json.loads(dict(m)["graph.json"])["nodes"][0]
    raw = dict(m)["graph.json"]
    return {
        "graph.json twice": (_raw_zip([Member(n, d) for n, d in m] + [Member(*m[0])]),
                             "appears twice"),
        "value member twice": (_raw_zip([Member(n, d) for n, d in m] + [Member(*m[-1])]),
                               "appears twice"),
        "member aliased by a NUL byte": (
            _raw_zip([Member(n, d) for n, d in m] + [Member(m[-1][0] + "\0x", m[-1][1])]),
            "NUL|appears twice"),
        "signature name twice, same signature": (
            _edit(m, "graph.json", lambda d: d["signatures"].append(sig)), "appears twice"),
        "signature name twice, different signatures": (
            _edit(m, "graph.json", lambda d: d["signatures"].append(other)), "appears twice"),
        "node name twice": (_edit(m, "graph.json", lambda d: d["nodes"].insert(1, first)),
                            "already used"),
        "JSON key twice": (_raw_zip([Member(n, raw.replace(b'"version": 1',
                                                           b'"version": 1, "version": 1', 1)
                                            if n == "graph.json" else d) for n, d in m]),
                           "appears twice"),
    }


def _ckpt_duplicates(m: list[tuple[str, bytes]]) -> dict[str, tuple[bytes, str]]:
    manifest = dict(m)["manifest.json"]
    return {
        "manifest twice": (_raw_zip([Member(n, d) for n, d in m] + [Member(*m[0])]),
                           "appears twice"),
        "array member twice": (_raw_zip([Member(n, d) for n, d in m] + [Member(*m[1])]),
                               "appears twice"),
        "array member twice, other data": (
            _raw_zip([Member(n, d) for n, d in m]
                     + [Member(m[1][0], m[1][1][:-4] + b"\0\0\0\0")]), "appears twice"),
        "member aliased by a NUL byte": (
            _raw_zip([Member(n, d) for n, d in m] + [Member(m[1][0] + "\0x", m[1][1])]),
            "NUL|appears twice"),
        "JSON key twice": (_raw_zip([Member(n, manifest.replace(b'"version": 1',
                                                                b'"version": 1, "version": 1')
                                            if n == "manifest.json" else d) for n, d in m]),
                           "appears twice"),
        "entry key twice": (_raw_zip([Member(n, manifest.replace(b'"dtype": "float32"',
                                                                 b'"dtype": "float32",'
                                                                 b' "dtype": "float64"', 1)
                                             if n == "manifest.json" else d) for n, d in m]),
                            "appears twice"),
        "variable listed twice": (
            _edit(m, "manifest.json", lambda d: d["variables"][1].update(name="a")),
            "listed twice"),
        "file listed twice": (
            _edit(m, "manifest.json", lambda d: d["variables"][1].update(file="arrays/0.npy")),
            "listed twice"),
        "member not in the manifest": (
            _raw_zip([Member(n, d) for n, d in m] + [Member("arrays/9.npy", m[1][1])]),
            "unexpected member"),
        "the manifest as an array": (
            _edit(m, "manifest.json", lambda d: d["variables"][1].update(file="manifest.json")),
            "listed twice|manifest"),
    }


GCG_DUPLICATES = ["graph.json twice", "value member twice", "member aliased by a NUL byte",
                  "signature name twice, same signature",
                  "signature name twice, different signatures", "node name twice",
                  "JSON key twice"]
CKPT_DUPLICATES = ["manifest twice", "array member twice", "array member twice, other data",
                   "member aliased by a NUL byte", "JSON key twice", "entry key twice",
                   "variable listed twice", "file listed twice", "member not in the manifest",
                   "the manifest as an array"]


@pytest.mark.parametrize("kind", GCG_DUPLICATES)
def test_gcg_duplicates_are_refused(files: dict[str, Path], tmp_path: Path, kind: str) -> None:
    blob, pattern = _gcg_duplicates(_members(files["model"]))[kind]
    err = _load_gcg(blob, tmp_path)
    assert any(p in str(err) for p in pattern.split("|")), err


@pytest.mark.parametrize("kind", CKPT_DUPLICATES)
def test_checkpoint_duplicates_are_refused(files: dict[str, Path], tmp_path: Path,
                                           kind: str) -> None:
    blob, pattern = _ckpt_duplicates(_members(files["ckpt"]))[kind]
    err = _load_ckpt(blob, tmp_path)
    assert any(p in str(err) for p in pattern.split("|")), err


def test_duplicate_kinds_are_all_parametrized(files: dict[str, Path]) -> None:
    assert sorted(_gcg_duplicates(_members(files["model"]))) == sorted(GCG_DUPLICATES)
    assert sorted(_ckpt_duplicates(_members(files["ckpt"]))) == sorted(CKPT_DUPLICATES)


# --- names around the 65535-byte limit of zip member names --------------------------------------

_LIMIT = 0xFFFF - len("values/.npy")  # the longest name stored readably as values/NAME.npy
LONG_NAMES = {
    "ascii limit-1": "w" * (_LIMIT - 1),
    "ascii limit": "w" * _LIMIT,
    "ascii limit+1": "w" * (_LIMIT + 1),
    "ascii 65535": "w" * 65535,
    "ascii 65536": "w" * 65536,
    "ascii 70000": "w" * 70000,
    "2-byte limit": "é" * (_LIMIT // 2),
    "2-byte limit+1": "é" * (_LIMIT // 2 + 1),
    "3-byte 70000 bytes": "字" * 23334,
    "hex-encoded fits": "a/../" + "w" * 32000,
    "hex-encoded too long": "a/../" + "w" * 33000,
}


@pytest.mark.parametrize("kind", sorted(LONG_NAMES))
def test_long_names_round_trip(tmp_path: Path, kind: str) -> None:
    name = LONG_NAMES[kind]
    with gc.Graph("long") as g:
        x = gc.placeholder((3,), name="x")
        w = gc.variable(np.arange(3, dtype=np.float32), name=name)
        g.add_signature("s", [x], [x * w])
    save(g, tmp_path / "long.gcg")
    with zipfile.ZipFile(tmp_path / "long.gcg") as zf:
        names = [i.filename for i in zf.infolist()]
    assert member_name(name) in names and all(len(n.encode()) <= 0xFFFF for n in names)
    assert graph_diff(load(tmp_path / "long.gcg"), g) is None
    gc.save_checkpoint(g, tmp_path / "long.gcc")
    g.variables[name] = np.zeros(3, np.float32)
    gc.load_checkpoint(g, tmp_path / "long.gcc")
    np.testing.assert_array_equal(g.variables[name], np.arange(3))


# --- .npy inputs of `graphc run` ----------------------------------------------------------------

def _npy(header: str, data: bytes = b"", version: tuple[int, int] = (1, 0)) -> bytes:
    """An .npy file with a literal header dict text (padded as numpy pads it)."""
    text = header.encode("latin1")
    length_format = "<H" if version == (1, 0) else "<I"
    prefix = 8 + struct.calcsize(length_format)
    text += b" " * (-(prefix + len(text) + 1) % 64) + b"\n"
    return (b"\x93NUMPY" + bytes(version) + struct.pack(length_format, len(text)) + text
            + data)


def _header(descr: str, shape: tuple[int, ...], fortran: bool = False) -> str:
    return f"{{'descr': {descr!r}, 'fortran_order': {fortran}, 'shape': {shape!r}, }}"


_F32 = np.arange(6, dtype="<f4").tobytes()
BAD_INPUTS: dict[str, tuple[bytes | None, str]] = {
    "2**40 elements": (_npy(_header("<f4", (2**40,))), "needs 4398046511104 bytes"),
    "2**40 x 2**40 elements": (_npy(_header("<f4", (2**40, 2**40))), "bytes"),
    "2**62 elements, 1 byte": (_npy(_header("|u1", (2**62,))), "bytes"),
    "truncated data": (_npy(_header("<f4", (2, 3)), _F32[:-4]), "has 20 bytes of data"),
    "trailing data": (_npy(_header("<f4", (2, 3)), _F32 + b"more"), "has 28 bytes of data"),
    "wrong shape": (_npy(_header("<f4", (3, 2)), _F32), "[3, 2]"),
    "wrong rank": (_npy(_header("<f4", (6,)), _F32), "[6]"),
    "float64 for float32": (_npy(_header("<f8", (2, 3)), bytes(48)), "float64"),
    "int32 for float32": (_npy(_header("<i4", (2, 3)), bytes(24)), "int32"),
    "pickled objects": (_npy(_header("|O", (2, 3)), bytes(48)), "Python objects"),
    "structured dtype": (_npy("{'descr': [('a', '<f4')], 'fortran_order': False, "
                              "'shape': (2, 3), }", _F32), "not a plain"),
    "subarray dtype": (_npy("{'descr': ('<f4', (3,)), 'fortran_order': False, "
                            "'shape': (2,), }", _F32), "not a plain"),
    "unicode dtype": (_npy(_header("<U1", (2, 3)), bytes(24)), "<U1"),
    "complex dtype": (_npy(_header("<c8", (2, 3)), bytes(48)), "complex64"),
    "negative dimension": (_npy(_header("<f4", (-2, 3)), _F32), "shape"),
    "garbage header": (_npy("{'descr': <f4"), "not a valid .npy"),
    "header not a dict": (_npy("[1, 2, 3]"), "not a valid .npy"),
    "huge header length": (b"\x93NUMPY\x02\x00\xff\xff\xff\xff{", "not a valid .npy"),
    "unknown version": (_npy(_header("<f4", (2, 3)), _F32, (9, 9)), "version"),
    "not npy": (b"x,y\n1,2\n", "not a valid .npy"),
    "empty file": (b"", "not a valid .npy"),
    "npz archive": (None, "not a valid .npy"),
    "missing file": (None, "No such file"),
}


def _write_input(path: Path, kind: str) -> None:
    data = BAD_INPUTS[kind][0]
    if kind == "npz archive":
        np.savez(path, x=np.zeros((2, 3), np.float32))
        path.with_suffix(".npy.npz").rename(path)
    elif data is not None:
        path.write_bytes(data)


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_npy_inputs_are_graphc_errors(files: dict[str, Path], tmp_path: Path,
                                          kind: str, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def no_compiling(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the inputs are checked before the model is compiled")

    monkeypatch.setattr("graphc.cli.exported.compile_graph", no_compiling)
    path = tmp_path / "in.npy"
    _write_input(path, kind)
    code = cli_main(["run", str(files["model"]), "--input", f"x={path}",
                     "--input", f"k={files['k']}"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.startswith("graphc: error:") and str(path) in err and "'x'" in err, err
    assert BAD_INPUTS[kind][1] in err, err


def test_unknown_input_names_are_graphc_errors(files: dict[str, Path],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["run", str(files["model"]), "--input", f"z={files['x']}"])
    err = capsys.readouterr().err
    assert code == 1 and "no input named 'z'" in err and "inputs: x, k" in err, err


def test_good_npy_inputs_in_every_layout_run(files: dict[str, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    expected = x @ (np.arange(12, dtype=np.float32).reshape(3, 4) / 10) + 1
    np.save(tmp_path / "xf.npy", np.asfortranarray(x))
    (tmp_path / "xbig.npy").write_bytes(_npy(_header(">f4", (2, 3)), x.astype(">f4").tobytes(),
                                             (2, 0)))
    np.save(tmp_path / "k64.npy", np.array([5, 6], np.int64))  # ints convert when they fit
    for xs, ks in (("xf.npy", "k64.npy"), ("xbig.npy", str(files["k"]))):
        out = tmp_path / "out.npz"
        code = cli_main(["run", str(files["model"]), "--input", f"x={tmp_path / xs}",
                         "--input", f"k={tmp_path / ks}", "--output", str(out)])
        assert code == 0, capsys.readouterr().err
        with np.load(out) as result:
            values = list(result.values())
        np.testing.assert_allclose(values[0], expected, rtol=1e-6)
        np.testing.assert_array_equal(values[1], [6, 7] if ks == "k64.npy" else [2, 3])
