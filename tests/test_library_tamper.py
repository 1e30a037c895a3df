"""Exported libraries edited after `gc.export`: `gc.runtime.load` refuses, never crashes.

The metadata of a library (JSON in its ELF section `.graphc_meta`, also what
``NAME_metadata()`` returns: the same bytes) is plain data in the file. Every buffer the
loaded library's calls use is sized from it, so an edited shape, dtype or port order would
make calls read or write out of bounds. `gc.runtime.load` must compare it with what the
code was compiled for and raise `GraphcError` on any difference that matters, before the
first call; edits that change nothing (whitespace) may load and must compute the same.

Each variant is a copy of an exported library with its metadata section rewritten in place
(same length: bytes edited where they are; other lengths: the JSON written again, padded
with NULs, which the section allows), or with its external weights file edited. Variants are
loaded and called in child processes, so a crash is a failed variant with its signal, not
a dead test session: one process imports graphc once (`SERVER`) and forks a child per
variant (`check`), a few at a time, once per module (a fresh interpreter per variant spent
most of a minute importing).

Libraries: `tam` (inference, embedded weights; float32 and int32 inputs and outputs, two
variables) and `tamx` (a training step with weights="external").
"""

from __future__ import annotations

import copy
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import graphc as gc
from graphc.runtime.library import read_metadata

CC = shutil.which("cc")
pytestmark = pytest.mark.skipif(CC is None, reason="exporting a library needs a C compiler "
                                                   "`cc` on PATH")

# The server: imports graphc, then forks a child per request (a JSON list of variants on
# stdin), at most `jobs` at a time. The child loads the library (`weights` file if given),
# calls it once on the saved inputs and compares outputs and variables with `gc.compile`'s,
# bit for bit, writing one line to its `out` file: "refused: MESSAGE" (GraphcError from
# load), "loaded: same", "loaded: different: WHAT" or "loaded: error: ..." (the call
# failed), and its stderr to `err`. The server prints one JSON object: each variant's exit
# status, as subprocess reports it (negative: the signal that killed the child; a child
# still running after the time limit, argv[2] seconds, is killed and says so in `err`).
SERVER = r"""
import ctypes, json, os, signal, sys, time
import numpy as np
import graphc as gc

def check(args):
    data = np.load(args["data"])
    try:
        lib = gc.runtime.load(args["library"], weights=args["weights"])
    except gc.GraphcError as exc:
        return "refused: " + str(exc).replace("\n", " ")
    try:
        inputs = [data[f"in{i}"] for i in range(args["num_inputs"])]
        got = lib(*inputs)
        got = list(got) if isinstance(got, tuple) else [got]
        want = [data[f"out{i}"] for i in range(args["num_outputs"])]
        wrong = [f"output {i}" for i, (g, w) in enumerate(zip(got, want))
                 if g.shape != w.shape or g.dtype != w.dtype or not np.array_equal(g, w)]
        if len(got) != len(want):
            wrong.append(f"{len(got)} outputs, not {len(want)}")
        for name in args["variables"]:
            v, w = lib.variables[name], data[f"var:{name}"]
            if v.shape != w.shape or v.dtype != w.dtype or not np.array_equal(v, w):
                wrong.append(f"variable {name}")
    except Exception as exc:
        return f"loaded: error: {type(exc).__name__}: {exc}".replace("\n", " ")
    return "loaded: different: " + ", ".join(wrong) if wrong else "loaded: same"

def child(args):
    err = os.open(args["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(err, 2)
    os.chdir(args["cwd"])
    try:
        line = check(args)
        with open(args["out"], "w") as f:
            f.write(line + "\n")
        status = 0
    except BaseException:
        import traceback
        traceback.print_exc()
        status = 1
    sys.stderr.flush()
    # libc's exit: the loaded library's destructors run (its worker pool stops), as at the
    # end of a process of its own, so a crash or hang while unloading is this variant's.
    ctypes.CDLL(None).exit(status)

requests, jobs, limit = json.load(sys.stdin), int(sys.argv[1]), float(sys.argv[2])
running, status = {}, {}
def reap(block):
    pid, code = os.waitpid(-1, 0 if block else os.WNOHANG)
    if pid == 0:
        return False
    key, _ = running.pop(pid)
    status[key] = (-os.WTERMSIG(code) if os.WIFSIGNALED(code) else os.WEXITSTATUS(code))
    return True
def wait_for_slot(slots):
    # A child past its time limit is killed (reported as SIGKILL, "timeout" in its err).
    while len(running) > slots:
        if reap(False):
            continue
        for pid, (key, start) in list(running.items()):
            if time.monotonic() - start > limit:
                with open(requests[key]["err"], "a") as f:
                    f.write(f"timeout: still running after {limit:g} s\n")
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)
for key, args in requests.items():
    wait_for_slot(jobs - 1)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        child(args)
    running[pid] = (key, time.monotonic())
wait_for_slot(0)
print(json.dumps(status))
"""

MISMATCH = "its metadata does not match its code"  # the loader's check against the code
# Metadata edits refused before that check (by the schema, the ABI version or the symbols).
CAUGHT_EARLIER = {"abi-version", "library-name", "dtype-unknown"}
NOT_THIS_FILE = "the weights file is not this library's"
SAME = "loaded: same"


@dataclass(frozen=True)
class Built:
    """One exported library: its bytes, metadata (as parsed and as stored) and the data of
    one call (inputs, outputs and variables afterwards, from `gc.compile`)."""

    name: str
    library: bytes
    meta: dict[str, Any]
    text: bytes  # the metadata text in the section (without its NUL)
    weights: bytes | None  # NAME.bin (weights="external")
    data: Path  # .npz: in0.., out0.., var:NAME


@dataclass(frozen=True)
class Tampered:
    """A variant's files: the library, NAME.bin beside it (external weights), and whether
    the weights file is passed to `load(weights=)` from elsewhere instead."""

    library: bytes
    weights: bytes | None
    weights_argument: bool = False


@dataclass(frozen=True)
class Variant:
    """An edit of library `lib` and what loading the result must do: `expect` is a regex
    the refusal message must match, or `SAME` (loads and computes what gc.compile does)."""

    id: str
    lib: str
    make: Callable[[Built], Tampered]
    expect: str


# --- building the libraries ---------------------------------------------------------------

def _inference_graph() -> tuple[gc.Graph, list[gc.Node], list[gc.Node], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    with gc.Graph("tam") as g:
        x = gc.placeholder((4, 6), gc.float32, name="x")
        y = gc.placeholder((4, 6), gc.float32, name="y")  # swapping x and y is memory-safe
        k = gc.placeholder((4,), gc.int32, name="k")
        w = gc.variable(rng.standard_normal((6, 8)).astype(np.float32), name="w")
        b = gc.variable(rng.standard_normal(8).astype(np.float32), name="b")
        h = gc.add(gc.matmul(x + y, w), b, name="h")
        s = gc.sum(h * h, axis=1, name="s")
        n = gc.mul(k, 3, name="n")
    inputs = [rng.standard_normal((4, 6)).astype(np.float32),
              rng.standard_normal((4, 6)).astype(np.float32),
              np.arange(4, dtype=np.int32) - 1]
    return g, [x, y, k], [h, s, n], inputs


def _training_graph() -> tuple[gc.Graph, list[gc.Node], list[gc.Node], Any, list[np.ndarray]]:
    rng = np.random.default_rng(1)
    with gc.Graph("tamx") as g:
        x = gc.placeholder((4, 6), gc.float32, name="x")
        labels = gc.placeholder((4,), gc.int32, name="labels")
        w = gc.variable(rng.standard_normal((6, 3)).astype(np.float32), name="w")
        b = gc.variable(np.zeros(3, np.float32), name="b")
        loss = gc.mean(gc.softmax_cross_entropy(gc.matmul(x, w) + b, labels), name="loss")
        updates = gc.optim.SGD(lr=0.1).minimize(loss)
    inputs = [rng.standard_normal((4, 6)).astype(np.float32),
              np.array([0, 2, 1, 2], np.int32)]
    return g, [x, labels], [loss], updates, inputs


def _built(name: str, lib: gc.ExportedLibrary, arrays: dict[str, np.ndarray]) -> Built:
    """`lib` as a `Built`, its call data saved beside it."""
    data = lib.library.parent / f"{name}.npz"
    np.savez(data, **arrays)
    so = lib.library.read_bytes()
    meta = read_metadata(lib.library)
    text = json.dumps(meta, sort_keys=True).encode()  # how gc.export writes it
    assert so.count(text) == 1 and so[so.find(text) + len(text)] == 0, "metadata not found"
    weights = lib.weights.read_bytes() if lib.weights is not None else None
    return Built(name, so, meta, text, weights, data)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    """The two libraries, exported once, with what one call must give (from gc.compile)."""
    out: dict[str, Built] = {}
    d = tmp_path_factory.mktemp("exports")

    g, ins, outs, values = _inference_graph()
    lib = gc.export(g, d / "libtam.so", ins, outs)
    want = gc.compile(g, ins, outs)(*values)
    arrays = {f"in{i}": v for i, v in enumerate(values)}
    arrays |= {f"out{i}": v for i, v in enumerate(want)}
    arrays |= {f"var:{n}": np.array(v) for n, v in g.variables.items()}
    out["tam"] = _built("tam", lib, arrays)

    g, ins, outs, updates, values = _training_graph()
    lib = gc.export(g, d / "libtamx.so", ins, outs, updates=updates, weights="external")
    want = gc.compile(g, ins, outs, updates=updates)(*values)  # one step: updates g's vars
    arrays = {f"in{i}": v for i, v in enumerate(values)}
    arrays |= {f"out{i}": v for i, v in enumerate(want)}
    arrays |= {f"var:{n}": np.array(v) for n, v in g.variables.items()}
    out["tamx"] = _built("tamx", lib, arrays)
    return out


# --- making variants --------------------------------------------------------------------------

def _put_text(b: Built, text: bytes) -> Tampered:
    """`b`'s library with `text` as its metadata, NUL-padded to the section's length."""
    assert len(text) <= len(b.text), "the edited metadata does not fit the section"
    at = b.library.find(b.text)
    so = b.library[:at] + text + bytes(len(b.text) - len(text)) + b.library[at + len(b.text):]
    assert len(so) == len(b.library)
    return Tampered(so, b.weights)


def inplace(*edits: tuple[str, str]) -> Callable[[Built], Tampered]:
    """Edit the metadata bytes where they are: each `old` (once in the text) becomes its
    `new`, of the same length, all at once (so two names can swap), and nothing else in
    the file moves (the edit of issue 13)."""
    assert all(len(old) == len(new) for old, new in edits)

    def make(b: Built) -> Tampered:
        text = bytearray(b.text)
        for old, new in edits:
            assert b.text.count(old.encode()) == 1, old
            at = b.text.find(old.encode())
            text[at:at + len(old)] = new.encode()
        return _put_text(b, bytes(text))
    return make


def edited(edit: Callable[[dict[str, Any]], object]) -> Callable[[Built], Tampered]:
    """Edit the parsed metadata with `edit` (in place) and store it again: as gc.export
    writes it if that fits, else as compact JSON (the section has a fixed size)."""
    def make(b: Built) -> Tampered:
        meta = copy.deepcopy(b.meta)
        edit(meta)
        assert meta != b.meta, "the edit changes nothing"
        text = json.dumps(meta, sort_keys=True).encode()
        if len(text) > len(b.text):
            text = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
        return _put_text(b, text)
    return make


def port(meta: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    """The metadata entry of port `name` among `kind` ("inputs", "outputs", "variables")."""
    return next(p for p in meta[kind] if p["name"] == name)


def setting(kind: str, which: str, **values: Any) -> Callable[[dict[str, Any]], object]:
    """An edit: port `which` of `kind` gets `values` (e.g. shape=[4, 9], name="v")."""
    return lambda meta: port(meta, kind, which).update(values)


def swap(kind: str, i: int, j: int, names_only: bool = False) -> Callable[[dict[str, Any]],
                                                                          object]:
    """An edit: ports `i` and `j` of `kind` change places (or only their names)."""
    def edit(meta: dict[str, Any]) -> None:
        ports = meta[kind]
        if names_only:
            ports[i]["name"], ports[j]["name"] = ports[j]["name"], ports[i]["name"]
        else:
            ports[i], ports[j] = ports[j], ports[i]
    return edit


def weights_file(edit: Callable[[bytearray], bytes | bytearray], *,
                 argument: bool = False) -> Callable[[Built], Tampered]:
    """The library unchanged, its weights file (64-byte header, then the blob) edited."""
    def make(b: Built) -> Tampered:
        assert b.weights is not None
        return Tampered(b.library, bytes(edit(bytearray(b.weights))), argument)
    return make


def _set_u64(data: bytearray, at: int, value: int) -> bytearray:
    data[at:at + 8] = (value % (1 << 64)).to_bytes(8, sys.byteorder)
    return data


def _u64(data: bytes, at: int) -> int:
    return int.from_bytes(data[at:at + 8], sys.byteorder)


def _flip(data: bytearray, at: int, mask: int = 0x01) -> bytearray:
    data[at] ^= mask
    return data


def _other_number(value: int | str) -> str:
    """`value` (a number, or hex text) with its last digit changed: the same length."""
    text = str(value)
    return text[:-1] + ("1" if text[-1] == "0" else "0")


def unchanged(b: Built) -> Tampered:
    return Tampered(b.library, b.weights)


def _meta_variants() -> Iterator[Variant]:
    """Edits of facts the calls rely on (each named by the loader's message), then edits of
    facts only the digest covers, then edits that change nothing."""
    t = "tam"
    # The edit of issue 13, and its kin: same length, bytes edited in place.
    yield Variant("output-shape-inplace", t, inplace(('"name": "h", "shape": [4, 8]',
                                                      '"name": "h", "shape": [1, 1]')),
                  r"output 0 'h' shape: \[1, 1\] in the metadata, \[4, 8\] in the code")
    yield Variant("output-shape-transposed-inplace", t,
                  inplace(('"name": "h", "shape": [4, 8]', '"name": "h", "shape": [8, 4]')),
                  "output 0 'h' shape")
    yield Variant("input-shape-inplace", t, inplace(('"name": "x", "shape": [4, 6]',
                                                     '"name": "x", "shape": [2, 6]')),
                  "input 0 'x' shape")
    yield Variant("variable-shape-inplace", t, inplace(('"name": "w", "shape": [6, 8]',
                                                        '"name": "w", "shape": [6, 1]')),
                  "variable 1 'w' shape")
    yield Variant("output-dtype-float64-inplace", t,
                  inplace(('"dtype": "float32", "name": "h"',
                           '"dtype": "float64", "name": "h"')),
                  "output 0 'h' dtype: 'float64' in the metadata, 'float32' in the code")
    yield Variant("input-dtype-float64-inplace", t,
                  inplace(('"dtype": "float32", "name": "x"',
                           '"dtype": "float64", "name": "x"')),
                  "input 0 'x' dtype")
    yield Variant("input-names-swapped-inplace", t,
                  inplace(('"name": "x", "shape"', '"name": "y", "shape"'),
                          ('"name": "y", "shape"', '"name": "x", "shape"')),
                  "input 0 name: 'y' in the metadata, 'x' in the code")
    yield Variant("context-bytes-inplace", t,
                  lambda b: inplace((f'"context_bytes": {b.meta["context_bytes"]}',
                                     f'"context_bytes": {_other_number(b.meta["context_bytes"])}'
                                     ))(b),
                  "context_bytes")
    # Shapes of other lengths (rank changes, scalars), element counts.
    for kind, name, shape, label in [
        ("inputs", "x", [24], "input 0 'x' shape"),
        ("inputs", "x", [4, 6, 1], "input 0 'x' shape"),
        ("inputs", "k", [], "input 2 'k' shape"),
        ("inputs", "k", [40], "input 2 'k' shape"),
        ("outputs", "h", [32], "output 0 'h' shape"),
        ("outputs", "h", [4, 8, 1], "output 0 'h' shape"),
        ("outputs", "h", [4, 9], "output 0 'h' shape"),  # more elements than the code writes
        ("outputs", "h", [], "output 0 'h' shape"),
        ("outputs", "s", [4, 1000], "output 1 's' shape"),
        ("variables", "b", [4], "variable 0 'b' shape"),
        ("variables", "w", [48], "variable 1 'w' shape"),
    ]:
        yield Variant(f"{kind[:-1]}-{name}-shape-{'x'.join(map(str, shape)) or 'scalar'}",
                      t, edited(setting(kind, name, shape=shape)), re.escape(label))
    # dtypes: float32 <-> int32 (same size: only the meaning changes), float64, int64, bool.
    for kind, name, dtype, label in [
        ("inputs", "x", "int32", "input 0 'x' dtype"),
        ("inputs", "k", "float32", "input 2 'k' dtype"),
        ("inputs", "k", "int64", "input 2 'k' dtype"),
        ("outputs", "h", "int32", "output 0 'h' dtype"),
        ("outputs", "n", "float32", "output 2 'n' dtype"),
        ("outputs", "n", "bool", "output 2 'n' dtype"),
        ("variables", "w", "float64", "variable 1 'w' dtype"),
        ("variables", "b", "int32", "variable 0 'b' dtype"),
    ]:
        yield Variant(f"{kind[:-1]}-{name}-dtype-{dtype}", t,
                      edited(setting(kind, name, dtype=dtype)), re.escape(label))
    # The "bytes" the metadata states (nothing else changed), and consistent edits of all.
    yield Variant("output-bytes", t, edited(setting("outputs", "h", bytes=64)),
                  "output 0 'h' bytes: 64 in the metadata, 128 in the code")
    yield Variant("input-bytes", t, edited(setting("inputs", "x", bytes=4096)),
                  "input 0 'x' bytes")
    yield Variant("variable-bytes", t, edited(setting("variables", "w", bytes=4)),
                  "variable 1 'w' bytes")
    yield Variant("output-shape-and-bytes", t,
                  edited(setting("outputs", "h", shape=[2, 2], bytes=16)), "output 0 'h' shape")
    yield Variant("output-dtype-and-bytes", t,
                  edited(setting("outputs", "h", dtype="float64", bytes=256)),
                  "output 0 'h' dtype")
    # Port order and names.
    yield Variant("inputs-x-k-swapped", t, edited(swap("inputs", 0, 2)), "input 0 name")
    yield Variant("inputs-x-y-swapped", t, edited(swap("inputs", 0, 1)), "input 0 name")
    yield Variant("outputs-h-s-swapped", t, edited(swap("outputs", 0, 1)), "output 0 name")
    yield Variant("output-names-swapped", t, edited(swap("outputs", 0, 2, names_only=True)),
                  "output 0 name: 'n' in the metadata, 'h' in the code")
    yield Variant("variables-swapped", t, edited(swap("variables", 0, 1)), "variable 0 name")
    yield Variant("variable-renamed", t, edited(setting("variables", "w", name="v")),
                  "variable 1 name")
    # The number of ports.
    yield Variant("input-dropped", t, edited(lambda m: m["inputs"].pop()),
                  "the number of inputs: 2 in the metadata, 3 in the code")
    yield Variant("input-added", t,
                  edited(lambda m: m["inputs"].append({**m["inputs"][0], "name": "z"})),
                  "the number of inputs: 4 in the metadata, 3 in the code")
    yield Variant("no-outputs", t, edited(lambda m: m["outputs"].clear()),
                  "the number of outputs")
    yield Variant("output-dropped", t, edited(lambda m: m["outputs"].pop(0)),
                  "the number of outputs")
    yield Variant("output-added", t,
                  edited(lambda m: m["outputs"].append(copy.deepcopy(m["outputs"][0]))),
                  "the number of outputs")
    yield Variant("variable-dropped", t, edited(lambda m: m["variables"].pop()),
                  "the number of variables")
    yield Variant("variable-added", t, edited(
        lambda m: m["variables"].append({**m["variables"][0], "name": "c"})),
        "the number of variables")
    # Sizes of the library as a whole.
    for key, delta in [("context_bytes", 64), ("context_bytes", -64),
                       ("context_bytes", 1 << 40), ("arena_bytes", 64),
                       ("arena_bytes", 1 << 40)]:
        yield Variant(f"{key}-{delta:+d}", t,
                      edited(lambda m, key=key, delta=delta: m.update({key: m[key] + delta})),
                      key)
    yield Variant("context_bytes-true", t, edited(lambda m: m.update(context_bytes=True)),
                  "context_bytes")
    yield Variant("weights-bytes", t,
                  edited(lambda m: m["weights"].update(bytes=m["weights"]["bytes"] + 64)),
                  "weights bytes")
    yield Variant("weights-checksum", t, edited(
        lambda m: m["weights"].update(checksum64="0" * 16)), "weights checksum64")
    # Facts only the digest covers.
    for label, edit in [
        ("single-output", lambda m: m.update(single_output=not m["single_output"])),
        ("trains", lambda m: m.update(trains=True)),
        ("graph-name", lambda m: m.update(graph="other")),
        ("graphc-version", lambda m: m.update(graphc_version="9.9.9")),
        ("variable-writable", setting("variables", "w", writable=True)),
        ("variable-updated", setting("variables", "w", updated=True)),
        ("c-name", setting("outputs", "h", c_name="g")),
        ("weights-storage", lambda m: m["weights"].update(storage="external")),
        ("weights-sha256", lambda m: m["weights"].update(sha256="0" * 64)),
        ("threads", lambda m: m.update(threads=2)),
        ("entry-point-dropped", lambda m: m["entry_points"].pop("run")),
        ("module-sha256", lambda m: m.update(module_sha256="0" * 64)),
        ("extra-key", lambda m: m.update(note="edited")),
    ]:
        yield Variant(f"digest-{label}", t, edited(edit), "the sha256 of the metadata")
    # Caught before: the ABI version, the library name (its symbols), the schema.
    yield Variant("abi-version", t,
                  edited(lambda m: m.update(abi_version=m["abi_version"] - 1)),
                  r"ABI version \d+ is not supported")
    yield Variant("library-name", t, inplace(('"name": "tam"', '"name": "tab"')),
                  "entry point")
    yield Variant("dtype-unknown", t, edited(setting("outputs", "h", dtype="float16")),
                  "invalid graphc metadata")
    # Nothing changed, or only how the JSON is written: loads, computes the same.
    yield Variant("untampered", t, unchanged, SAME)
    yield Variant("compact-json", t, lambda b: _put_text(
        b, json.dumps(b.meta, sort_keys=True, separators=(",", ":")).encode()), SAME)
    yield Variant("newlines-for-spaces", t,
                  lambda b: _put_text(b, b.text.replace(b", ", b",\n")), SAME)

    # The training library with external weights.
    t = "tamx"
    yield Variant("train-untampered", t, unchanged, SAME)
    yield Variant("train-weights-bytes", t,
                  edited(lambda m: m["weights"].update(bytes=m["weights"]["bytes"] - 64)),
                  "weights bytes")
    yield Variant("train-weights-checksum", t, edited(
        lambda m: m["weights"].update(checksum64=_other_number(m["weights"]["checksum64"]))),
        "weights checksum64")
    yield Variant("train-weights-storage", t,
                  edited(lambda m: m["weights"].update(storage="embedded")),
                  "the sha256 of the metadata")
    yield Variant("train-context-bytes", t,
                  edited(lambda m: m.update(context_bytes=m["context_bytes"] - 64)),
                  "context_bytes")
    yield Variant("train-variable-shape", t, edited(setting("variables", "w", shape=[6, 2])),
                  "variable .* 'w' shape")
    yield Variant("train-labels-dtype", t, edited(setting("inputs", "labels", dtype="float32")),
                  "input 1 'labels' dtype")
    yield Variant("train-loss-shape", t, edited(setting("outputs", "loss", shape=[1])),
                  "output 0 'loss' shape")


def _weights_variants() -> Iterator[Variant]:
    """Edits of NAME.bin (64-byte header: magic, blob size, checksum; then the blob)."""
    t = "tamx"
    cases: list[tuple[str, Callable[[bytearray], bytes | bytearray], str]] = [
        ("size-plus-64", lambda d: _set_u64(d, 8, _u64(d, 8) + 64), NOT_THIS_FILE),
        ("size-minus-64", lambda d: _set_u64(d, 8, _u64(d, 8) - 64), NOT_THIS_FILE),
        ("size-huge", lambda d: _set_u64(d, 8, 1 << 62), NOT_THIS_FILE),
        ("size-all-ones", lambda d: _set_u64(d, 8, -1), NOT_THIS_FILE),
        ("checksum", lambda d: _flip(d, 16), NOT_THIS_FILE),
        ("magic", lambda d: _flip(d, 0, 0x20), NOT_THIS_FILE),
        ("payload-flip", lambda d: _flip(d, 64 + 5, 0x40), NOT_THIS_FILE),
        ("truncated-8", lambda d: d[:-8], NOT_THIS_FILE),
        ("header-only", lambda d: d[:64], NOT_THIS_FILE),
        ("half-header", lambda d: d[:30], NOT_THIS_FILE),
        ("empty", lambda d: b"", NOT_THIS_FILE),
        ("extended-64", lambda d: d + bytes(64), NOT_THIS_FILE),
        ("extended-with-size", lambda d: _set_u64(d + bytes(64), 8, _u64(d, 8) + 64),
         NOT_THIS_FILE),
    ]
    for label, edit, expect in cases:
        yield Variant(f"bin-{label}", t, weights_file(edit), expect)
    yield Variant("bin-argument-truncated", t, weights_file(lambda d: d[:-64], argument=True),
                  NOT_THIS_FILE)
    yield Variant("bin-argument-untampered", t, weights_file(lambda d: d, argument=True), SAME)


FLIPS = 16


def _random_flip(seed: int) -> Callable[[Built], Tampered]:
    """One random bit of the metadata text flipped (seeded: the same every run)."""
    def make(b: Built) -> Tampered:
        rng = random.Random(seed)
        text = bytearray(b.text)
        text[rng.randrange(len(text))] ^= 1 << rng.randrange(8)
        return _put_text(b, bytes(text))
    return make


def _random_digit(seed: int) -> Callable[[Built], Tampered]:
    """One random digit of the metadata text replaced by another (JSON stays valid unless
    a leading zero appears): every digit is part of a value, so it must be refused."""
    def make(b: Built) -> Tampered:
        rng = random.Random(seed)
        digits = [i for i, c in enumerate(b.text) if chr(c).isdigit()]
        at = rng.choice(digits)
        text = bytearray(b.text)
        text[at] = ord(rng.choice([d for d in "0123456789" if ord(d) != text[at]]))
        return _put_text(b, bytes(text))
    return make


ANY = "refused, or loaded and unchanged"
REFUSED = "."  # any refusal message


def _random_variants() -> Iterator[Variant]:
    for seed in range(FLIPS):
        yield Variant(f"flip-{seed:02d}", "tam", _random_flip(seed), ANY)
    for seed in range(FLIPS):
        yield Variant(f"digit-{seed:02d}", "tam", _random_digit(seed), REFUSED)


META_VARIANTS = list(_meta_variants())
WEIGHTS_VARIANTS = list(_weights_variants())
RANDOM_VARIANTS = list(_random_variants())
ALL = META_VARIANTS + WEIGHTS_VARIANTS + RANDOM_VARIANTS
META_IDS = {v.id for v in META_VARIANTS}
assert len({v.id for v in ALL}) == len(ALL), "variant ids must be unique"


# --- running them --------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    """What the child said and how it ended, and the metadata text the variant stored."""

    variant: Variant
    returncode: int
    stdout: str
    stderr: str
    meta_text: bytes

    def describe(self) -> str:
        how = (f"killed by {signal.Signals(-self.returncode).name}" if self.returncode < 0
               else f"exit {self.returncode}")
        return f"{self.variant.id}: {how}\nstdout: {self.stdout}\nstderr: {self.stderr[-2000:]}"


def _prepare(variant: Variant, b: Built, root: Path) -> tuple[Tampered | str, dict[str, Any]]:
    """Make `variant`'s files under `root`: (its files, the server's request), or (why it
    could not be made, {}): an edit that does not apply is an outcome too, and fails."""
    try:
        files = variant.make(b)
    except (AssertionError, KeyError, StopIteration, ValueError) as exc:
        return f"not made: {type(exc).__name__}: {exc}", {}
    d = root / variant.id
    d.mkdir()
    library = d / f"lib{b.name}.so"  # a fresh path: the dynamic loader keys on paths
    library.write_bytes(files.library)
    weights: Path | None = None
    if files.weights is not None:
        weights = d / ("elsewhere.bin" if files.weights_argument else f"{b.name}.bin")
        weights.write_bytes(files.weights)
    return files, {"library": str(library), "data": str(b.data), "cwd": str(d),
                   "weights": str(weights) if files.weights_argument else None,
                   "num_inputs": len(b.meta["inputs"]),
                   "num_outputs": len(b.meta["outputs"]),
                   "variables": [v["name"] for v in b.meta["variables"]],
                   "out": str(d / "out.txt"), "err": str(d / "err.txt")}


@pytest.fixture(scope="module")
def outcomes(built: dict[str, Built], tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, Outcome]:
    """Every variant, run in its own forked child of one server process."""
    root = tmp_path_factory.mktemp("variants")
    prepared = {v.id: (v, *_prepare(v, built[v.lib], root)) for v in ALL}
    requests = {key: req for key, (_, _, req) in prepared.items() if req}
    jobs = max(2, min(8, 2 * (os.cpu_count() or 1)))
    done = subprocess.run([sys.executable, "-c", SERVER, str(jobs), "120"],
                          input=json.dumps(requests), capture_output=True, text=True,
                          check=False, timeout=900, cwd=root)
    assert done.returncode == 0, f"the variant server failed:\n{done.stderr[-4000:]}"
    status = json.loads(done.stdout.strip().splitlines()[-1])
    result = {}
    for key, (variant, files, req) in prepared.items():
        if isinstance(files, str):
            result[key] = Outcome(variant, 0, files, "", b"")
            continue
        out, err = Path(req["out"]), Path(req["err"])
        b = built[variant.lib]
        start = b.library.find(b.text)  # edits keep the section where it is
        text = files.library[start:start + len(b.text)].rstrip(b"\0")
        result[key] = Outcome(variant, status[key],
                              out.read_text().strip() if out.exists() else "",
                              err.read_text() if err.exists() else "", text)
    return result


def _check_refused(o: Outcome) -> None:
    assert o.returncode == 0, o.describe()
    assert o.stdout.startswith("refused: "), o.describe()
    assert "Traceback" not in o.stderr, o.describe()


@pytest.mark.parametrize("variant", META_VARIANTS + WEIGHTS_VARIANTS, ids=lambda v: v.id)
def test_edited_library_is_refused_or_unchanged(variant: Variant,
                                                outcomes: dict[str, Outcome]) -> None:
    o = outcomes[variant.id]
    if variant.expect == SAME:
        assert o.returncode == 0 and o.stdout == SAME, o.describe()
        return
    _check_refused(o)
    assert re.search(variant.expect, o.stdout), f"expected /{variant.expect}/\n{o.describe()}"
    if variant.id in META_IDS and variant.id not in CAUGHT_EARLIER:
        assert MISMATCH in o.stdout, o.describe()


@pytest.mark.parametrize("variant", RANDOM_VARIANTS, ids=lambda v: v.id)
def test_random_edits_are_refused_or_harmless(variant: Variant, built: dict[str, Built],
                                              outcomes: dict[str, Outcome]) -> None:
    """A flipped bit: refused, or the metadata still says the same (whitespace) and the
    library computes what gc.compile does. A changed digit: always refused."""
    o = outcomes[variant.id]
    assert o.returncode == 0, o.describe()
    if o.stdout.startswith("refused: ") and "Traceback" not in o.stderr:
        return
    assert variant.expect == ANY, f"a changed digit must be refused\n{o.describe()}"
    assert o.stdout == SAME, o.describe()
    assert json.loads(o.meta_text) == built[variant.lib].meta, "loaded edited metadata"


def test_variants_cover_what_the_brief_lists() -> None:
    """Counts: so that a refactoring cannot silently drop whole groups of variants."""
    ids = {v.id for v in ALL}
    for part in ("shape", "dtype", "bytes", "swapped", "dropped", "added", "context_bytes",
                 "arena_bytes", "weights-bytes", "inplace", "bin-size", "digest-"):
        assert any(part in i for i in ids), part
    assert len(META_VARIANTS) >= 60 and len(WEIGHTS_VARIANTS) >= 10
    assert len(RANDOM_VARIANTS) == 2 * FLIPS


def test_untampered_libraries_load_in_process_and_match_compile(built: dict[str, Built],
                                                                tmp_path: Path) -> None:
    """In this process too (the children compare in theirs): bit for bit with gc.compile."""
    for b in built.values():
        d = tmp_path / b.name
        d.mkdir()
        (d / f"lib{b.name}.so").write_bytes(b.library)
        if b.weights is not None:
            (d / f"{b.name}.bin").write_bytes(b.weights)
        lib = gc.runtime.load(d / f"lib{b.name}.so")
        data = np.load(b.data)
        got = lib(*[data[f"in{i}"] for i in range(len(b.meta["inputs"]))])
        got = list(got) if isinstance(got, tuple) else [got]
        for i, g in enumerate(got):
            want = data[f"out{i}"]
            assert g.dtype == want.dtype and np.array_equal(g, want), (b.name, i)
        for name in lib.variables:
            assert np.array_equal(lib.variables[name], data[f"var:{name}"]), (b.name, name)
