"""The compile cache treats its entries as untrusted input (issue 13, item 1).

All levels (`runtime.jit`'s object cache keyed by LLVM IR, `runtime.program_cache` keyed by
the optimized graph, and the library objects of shared GEMM functions that
`runtime.kernel_library` keeps beside them) are damaged in generated ways: empty, truncated,
random, bit-flipped files, another program's files under this key, records of the wrong
schema, types or layout, records whose hashes do not match, objects without the entry
point. After each, the compile must succeed with the reference's results, must not have
trusted the entry, and must have overwritten it so the next compile is a clean hit.

LLVM's object loader and the Executable crash on bad input, so the damage is done in a
subprocess: this file doubles as the probe script (`python test_compile_cache.py corrupt
ROLE VARIANTS`), and a crash is a nonzero return code, not a dead test session. A probe
prints `start NAME` before each variant, so a crash names the variant that caused it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import graphc as gc
from graphc.codegen.module import ENTRY
from graphc.codegen.target import host_target
from graphc.passes.memory_plan import Space
from graphc.pipeline import lower
from graphc.runtime import jit, kernel_library, program_cache
from graphc.runtime.arguments import resolve_signature

THIS = Path(__file__).resolve()
PROBE_TIMEOUT = 300  # seconds; a probe normally takes a few

# Which cache level each file belongs to (program-cache files are consulted first).
PROGRAM_ROLES = ("prog", "prog_record")
OBJECT_ROLES = ("obj", "obj_record")
# A library object and its record (the program entry stays: a hit must link against it).
LIBRARY_ROLES = ("lib", "lib_record")
# The object and record of a module a concurrent compile split off the program
# (`runtime.program_split`; the programs here compile at 2 threads, so they have one).
PART_ROLES = ("part", "part_record")

# An object file that defines a function, but not the entry point.
NO_ENTRY_IR = "define i32 @not_the_entry(ptr %t) {\n  ret i32 0\n}\n"


# --- the programs --------------------------------------------------------------------------

def training_step(squash: bool = False) -> tuple[gc.Graph, list[gc.Node], list[gc.Node],
                                                 dict[gc.Node, gc.Node]]:
    """A training step of softmax regression with SGD momentum: small, so that a cold
    compile is quick. `squash` (tanh of the logits) makes another program with the same
    table and variables: the "foreign entry" of the tests."""
    with gc.Graph("step") as g:
        x = gc.placeholder((8, 12), gc.float32, name="x")
        y = gc.placeholder((8,), gc.int32, name="y")
        w = gc.variable(gc.init.he_normal((12, 4), seed=0), name="w")
        b = gc.variable(np.zeros(4, np.float32), name="b")
        logits = x @ w + b
        loss = gc.mean(gc.softmax_cross_entropy(gc.tanh(logits) if squash else logits, y))
        updates = gc.optim.SGD(lr=0.1, momentum=0.9).minimize(loss)
    return g, [x, y], [loss], updates


class Program:
    """A training step, its inputs, its initial state and the reference's results."""

    def __init__(self, cache: Path, squash: bool = False):
        self.graph, self.inputs, self.outputs, self.updates = training_step(squash)
        # O0: a cold compile is what most variants cost, and the cache does not care.
        self.options = gc.CompileOptions(cache_dir=str(cache), threads=2, opt_level=0)
        rng = np.random.default_rng(0)
        self.args = (rng.standard_normal((8, 12)).astype(np.float32),
                     rng.integers(0, 4, 8).astype(np.int32))
        self.initial = {n: self.graph.variables[n].copy() for n in self.graph.variables}
        self.expected = self.run(gc.reference(self.graph, self.inputs, self.outputs,
                                              updates=self.updates))

    def compile(self) -> gc.Executable:
        return gc.compile(self.graph, self.inputs, self.outputs, updates=self.updates,
                          options=self.options)

    def run(self, step: Callable[..., Any]) -> list[np.ndarray]:
        """One step from the initial state: the loss and every variable afterwards."""
        for name, value in self.initial.items():
            self.graph.variables[name] = value
        (loss,) = step(*self.args)
        return [np.asarray(loss)] + [self.graph.variables[n].copy() for n in sorted(self.initial)]

    def check(self, exe: gc.Executable) -> None:
        for got, want in zip(self.run(exe), self.expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# --- the probe (runs in a subprocess) ------------------------------------------------------

def entry_files(cache: Path, before: set[str]) -> dict[str, Path]:
    """The cache files a compile added to `cache` (not in `before`), by role; of several
    library objects the first (by name) has the roles "lib" and "lib_record", the second
    "other_lib" and "other_lib_record"; the program's part (named by its program record)
    has "part" and "part_record"."""
    roles: dict[str, Path] = {}
    added = set(os.listdir(cache)) - before
    parts: set[str] = set()
    for name in added:
        if name.endswith(".prog.json"):
            parts |= set(json.loads((cache / name).read_bytes())["parts"])
    for name in sorted(added, reverse=True):
        if name.startswith("."):
            continue  # another process's temporary file
        part = name.removesuffix(".o").removesuffix(".json") in parts
        role = ("prog" if name.endswith(".prog.o") else
                "prog_record" if name.endswith(".prog.json") else
                "lib" if name.endswith(".lib.o") else
                "lib_record" if name.endswith(".lib.json") else
                ("part" if part else "obj") if name.endswith(".o") else
                "part_record" if part else "obj_record")
        if role in roles and role.startswith("lib"):
            roles[f"other_{role}"] = roles[role]
        roles[role] = cache / name
    return roles


class Probe:
    """Program A compiled into an empty cache, program B beside it; damage, then compile A."""

    def __init__(self, cache: Path):
        self.cache = cache
        self.a = Program(cache)
        self.a.check(self.a.compile())
        self.files = entry_files(cache, set())
        self.pristine = {role: path.read_bytes() for role, path in self.files.items()}
        before = set(os.listdir(cache))
        self.b = Program(cache, squash=True)
        self.b.compile()
        self.foreign = {role: path.read_bytes()
                        for role, path in entry_files(cache, before).items()}
        self.prog_key = self.files["prog"].name.removesuffix(".prog.o")
        self.obj_key = self.files["obj"].name.removesuffix(".o")
        self.part_key = self.files["part"].name.removesuffix(".o")
        self.lib_key = self.files["lib"].name.removesuffix(".lib.o")
        self.lib_name = json.loads(self.pristine["lib_record"])["symbol"]
        self.other_lib_name = json.loads(self.pristine["other_lib_record"])["symbol"]

    def restore(self, role: str) -> None:
        """Every file of A as compiled; without the program entry if `role` is below it."""
        for r, path in self.files.items():
            path.write_bytes(self.pristine[r])
        # Else the program cache answers and the object is unread.
        if role in OBJECT_ROLES or role in PART_ROLES:
            for r in PROGRAM_ROLES:
                self.files[r].unlink()
        # Else this process's copies of the library objects answer and the files are unread.
        kernel_library.forget_library_objects()

    def variant(self, role: str, op: str, arg: Any) -> None:
        """Damage `role`'s file (or entry) by `op`; see `test_*` below for the list."""
        path = self.files[role]
        if op == "delete":
            path.unlink()
        elif op == "foreign" and role in LIBRARY_ROLES:
            path.write_bytes(self.pristine[f"other_{role}"])
        elif op == "foreign":
            path.write_bytes(self.foreign[role])
        elif op == "foreign_entry" and role in LIBRARY_ROLES:
            for r in LIBRARY_ROLES:
                self.files[r].write_bytes(self.pristine[f"other_{r}"])
        elif op == "foreign_entry":
            for r in (PROGRAM_ROLES if role in PROGRAM_ROLES else
                      PART_ROLES if role in PART_ROLES else OBJECT_ROLES):
                self.files[r].write_bytes(self.foreign[r])
        elif op == "other_symbol":  # every hash right, but it names another function
            self.store_library(self.other_lib_name, self.pristine["other_lib"])
        elif op == "no_entry":
            self.store_object_without_entry(role)
        elif op == "json":
            path.write_bytes(raw_record_edit(json.loads(self.pristine[role]), arg, self.foreign))
        elif op == "resign":
            self.store_layout(layout_edit(json.loads(self.pristine["prog_record"]), arg))
        else:
            path.write_bytes(damaged(self.pristine[role], op, arg))

    def store_object_without_entry(self, role: str) -> None:
        """A valid object, stored with every hash right, that lacks the entry point."""
        obj = jit.optimize_and_emit(NO_ENTRY_IR, host_target(), 2)
        if role in PROGRAM_ROLES:
            record = json.loads(self.pristine["prog_record"])
            program_cache.store(self.cache, self.prog_key, obj, layout_of(record),
                                record["libraries"], record["parts"])
        elif role in LIBRARY_ROLES:
            self.store_library(self.lib_name, obj)
        elif role in PART_ROLES:
            jit.store_cached_object(self.cache, self.part_key, obj)
        elif hasattr(jit, "store_cached_object"):
            jit.store_cached_object(self.cache, self.obj_key, obj)
        else:  # the entry format before issue 13
            self.files["obj"].write_bytes(obj)

    def store_library(self, symbol: str, obj: bytes) -> None:
        """`obj` stored with every hash right as the library object of `symbol` under A's
        library key."""
        jit.write_entry(self.cache, f"{self.lib_key}.lib",
                        {"format": kernel_library.LIBRARY_FORMAT, "key": self.lib_key,
                         "symbol": symbol}, obj)

    def store_layout(self, fields: dict[str, Any]) -> None:
        """A's object stored with every hash right under a wrong layout (or library list)."""
        program_cache.store(self.cache, self.prog_key, self.pristine["prog"], layout_of(fields),
                            fields["libraries"], fields["parts"])

    def check(self, role: str) -> None:
        """Compile A: reference results, the damaged level missed, then a clean hit."""
        exe = self.a.compile()
        self.a.check(exe)
        stats = exe.report.jit.stats
        if role in PROGRAM_ROLES:
            assert exe.report.jit.key != "program-cache", "the damaged entry was used"
            again = self.a.compile()
            assert again.report.jit.key == "program-cache", "the entry was not rewritten"
        elif role in LIBRARY_ROLES:
            assert exe.report.jit.key != "program-cache", "linked against the damaged object"
            assert stats.library_compiled == 1, "the damaged library object was used"
            kernel_library.forget_library_objects()
            rewritten = kernel_library.cached_library_object(
                self.lib_key, self.lib_name, host_target(), self.a.options.opt_level,
                self.cache)
            assert rewritten is not None, "the library object was not rewritten"
            again = self.a.compile()
            assert again.report.jit.key == "program-cache", "the program entry was lost"
        elif role in PART_ROLES:
            assert not stats.cache_hit, "the damaged part was used"
            rewritten = jit.load_cached_object(self.cache, self.part_key)
            assert rewritten == self.pristine["part"], "the part was not rewritten"
            again = self.a.compile()
            assert again.report.jit.key == "program-cache", "no program entry was written"
        else:
            assert not stats.cache_hit, "the damaged object was used"
            rewritten = jit.load_cached_object(self.cache, self.obj_key)
            assert rewritten == exe.report.jit.object_code, "the object was not rewritten"
            again = self.a.compile()
            assert again.report.jit.key == "program-cache", "no program entry was written"
        self.a.check(again)


def damaged(data: bytes, op: str, arg: int) -> bytes:
    """`data` emptied, truncated to `arg` bytes (negative: minus; always shorter), random, or
    with bit `arg % 8` of byte `arg % len(data)` flipped."""
    if op == "empty":
        return b""
    if op == "truncate":
        return data[:min(arg, len(data) - 1)]
    if op == "random":
        return random.Random(arg).randbytes(max(len(data), 64))
    if op == "flip":
        at = arg % len(data)
        return data[:at] + bytes([data[at] ^ (1 << (arg % 8))]) + data[at + 1:]
    raise ValueError(f"unknown damage {op!r}")


def layout_of(fields: dict[str, Any]) -> program_cache.Layout:
    """The Layout a record's fields spell (values unchecked: `store` writes them as given)."""
    table = tuple(program_cache.TableEntry(Space(s), k) for s, k in fields["table"])
    return program_cache.Layout(fields["entry"], table, fields["arena_bytes"],
                                fields["scratch_offset"])


def layout_edit(record: dict[str, Any], edit: str) -> dict[str, Any]:
    """A's layout fields made wrong by `edit` (wrong values or types, well-formed JSON)."""
    fields = {k: record[k] for k in LAYOUT_FIELDS}
    table: list[Any] = fields["table"]
    variables = [i for i, (space, _) in enumerate(table) if space == "variable"]
    v, w = variables[0], variables[-1]
    arena, scratch = fields["arena_bytes"], fields["scratch_offset"]
    libraries: list[Any] = fields["libraries"]
    parts: list[Any] = fields["parts"]
    changes: dict[str, dict[str, Any]] = {
        "swap_variables": {"table": _swapped(table, v, w)},
        "swap_input_output": {"table": _swapped(table, 1, 2)},
        "arena_first": {"table": [table[-1], *table[:-1]]},
        "arena_zero": {"arena_bytes": 0},
        "arena_short": {"arena_bytes": arena - 64},
        "arena_negative": {"arena_bytes": -64},
        "arena_huge": {"arena_bytes": 10**30},
        "arena_str": {"arena_bytes": str(arena)},
        "arena_float": {"arena_bytes": float(arena)},
        "arena_bool": {"arena_bytes": True},
        "scratch_misaligned": {"scratch_offset": scratch + 1},
        "scratch_beyond": {"scratch_offset": arena + 64},
        "entry_missing": {"entry": "no_such_symbol"},
        "entry_other_function": {"entry": "graphc_pool_shutdown"},
        "entry_null": {"entry": None},
        "variable_unknown": {"table": _replaced(table, v, ["variable", "no_such_variable"])},
        "variable_dropped": {"table": table[:v] + table[v + 1:]},
        "variable_duplicated": {"table": table[:v + 1] + table[v:]},
        "variable_as_constant": {"table": _replaced(table, v, ["constant", table[v][1]])},
        "input_key_str": {"table": _replaced(table, 0, ["input", "0"])},
        "input_key_bool": {"table": _replaced(table, 1, ["input", True])},
        "input_out_of_range": {"table": _replaced(table, 1, ["input", 7])},
        "space_unknown": {"table": _replaced(table, 0, ["heap", 0])},
        "table_item_dict": {"table": _replaced(table, 0, {"space": "input", "key": 0})},
        "table_item_short": {"table": _replaced(table, 0, ["input"])},
        "table_dict": {"table": {"0": table[0]}},
        "table_empty": {"table": []},
        "libraries_dropped": {"libraries": libraries[1:]},
        "libraries_empty": {"libraries": []},
        "libraries_keys_swapped": {"libraries": [f"{k}:{n}" for k, n in zip(
            [e.split(":")[0] for e in libraries[::-1]], [e.split(":")[1] for e in libraries],
            strict=True)]},
        "libraries_unknown_key": {"libraries": ["0" * 64 + ":" + libraries[0].split(":")[1],
                                                *libraries[1:]]},
        "libraries_bad_name": {"libraries": [libraries[0] + " x", *libraries[1:]]},
        "libraries_int": {"libraries": [1, *libraries[1:]]},
        "parts_dropped": {"parts": parts[1:]},
        "parts_duplicated": {"parts": [*parts, *parts]},
        "parts_unknown_key": {"parts": ["0" * 64, *parts[1:]]},
        "parts_a_library": {"parts": [libraries[0].split(":")[0], *parts[1:]]},
        "parts_int": {"parts": [1, *parts[1:]]},
    }
    return {**fields, **changes[edit]}


def _swapped(items: list[Any], i: int, j: int) -> list[Any]:
    out = list(items)
    out[i], out[j] = out[j], out[i]
    return out


def _replaced(items: list[Any], i: int, item: Any) -> list[Any]:
    return [*items[:i], item, *items[i + 1:]]


def raw_record_edit(record: dict[str, Any], edit: str, foreign: dict[str, bytes]) -> bytes:
    """The JSON of a record edited by hand (its hashes now stale), or not a record."""
    if edit == "not_an_object":
        return json.dumps([record]).encode()
    if edit == "deeply_nested":
        return b"[" * 100_000 + b"]" * 100_000
    if edit == "invalid_utf8":
        return json.dumps(record).encode()[:-1] + b"\xff}"
    if edit.startswith("missing:"):
        record.pop(edit.removeprefix("missing:"), None)
    elif edit == "extra_field":
        record["comment"] = "hello"
    elif edit == "key_of_b":
        record["key"] = json.loads(foreign["prog_record"])["key"]
    elif edit == "format_other":
        record["format"] = "graphc.program/0"
    elif edit == "object_hash":
        record["object_sha256"] = hashlib.sha256(b"").hexdigest()
    elif edit == "object_bytes":
        record["object_bytes"] = record.get("object_bytes", 0) + 1
    elif edit == "record_hash":
        record["record_sha256"] = "0" * 64
    elif edit == "object_bytes_str":
        record["object_bytes"] = str(record.get("object_bytes", 0))
    else:  # a layout edit, without re-signing
        record.update(layout_edit(record, edit))
    return json.dumps(record).encode()


def probe_corruptions(cache: Path, role: str, variants: list[list[Any]]) -> int:
    """Run every variant on a fresh copy of A's entry; print progress; 0 if all passed."""
    probe = Probe(cache)
    failures = []
    for name, op, arg in variants:
        print(f"start {name}", flush=True)
        probe.restore(role)
        probe.variant(role, op, arg)
        try:
            probe.check(role)
        except Exception as exc:  # report every failing variant, not only the first
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            print(f"FAIL {failures[-1]}", flush=True)
    print(f"done {len(variants)} variants, {len(failures)} failed", flush=True)
    return 1 if failures else 0


def probe_race(cache: Path, go: Path, rounds: int) -> int:
    """Wait for `go`, then compile A and B `rounds` times (cold, then warm unless damaged),
    checking every result."""
    programs = [Program(cache), Program(cache, squash=True)]
    print("ready", flush=True)
    wait_for(go)
    for _ in range(rounds):
        for p in programs:
            p.check(p.compile())
    print("ok", flush=True)
    return 0


def probe_vandal(cache: Path, go: Path, stop: Path) -> int:
    """Wait for `go`, then until `stop` exists damage cache files in place (not atomically:
    as a crashed writer or a failing disk would), one every millisecond or so."""
    rng = random.Random(0)
    print("ready", flush=True)
    wait_for(go)
    while not stop.exists():
        names = [n for n in os.listdir(cache) if not n.startswith(".")] if cache.exists() else []
        if names:
            try:
                with open(cache / rng.choice(names), "r+b") as f:
                    size = f.seek(0, os.SEEK_END)
                    if rng.random() < 0.5:
                        f.truncate(rng.randrange(size + 1))
                    elif size:
                        f.seek(rng.randrange(size))
                        f.write(rng.randbytes(rng.randrange(1, 64)))
            except OSError:
                pass  # replaced or removed meanwhile
        time.sleep(0.001)
    print("ok", flush=True)
    return 0


def wait_for(go: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit("no go")
        time.sleep(0.001)


def probe_export(cache: Path, variants: list[list[Any]]) -> int:
    """`export.link.object_code` after damage to its cache entry: the fresh object, rewritten."""
    from graphc.export.link import object_code

    a = Program(cache)
    sig, _ = resolve_signature(a.graph, a.inputs, a.outputs, a.updates, None)
    options = gc.CompileOptions(cache_dir=str(cache), threads=1)
    ir_text = lower(a.graph, sig, options, "llvm").ir_text
    target = host_target()
    fresh = object_code(ir_text, target, options.opt_level, cache, (ENTRY,))
    files = entry_files(cache, set())
    pristine = {role: path.read_bytes() for role, path in files.items()}
    key = files["obj"].name.removesuffix(".o")
    for name, op, arg in variants:
        print(f"start {name}", flush=True)
        for role, path in files.items():
            path.write_bytes(pristine[role])
        if op == "no_entry":
            jit.store_cached_object(cache, key, jit.optimize_and_emit(NO_ENTRY_IR, target, 2))
        else:
            files[arg[0]].write_bytes(damaged(pristine[arg[0]], op, arg[1]))
        assert object_code(ir_text, target, options.opt_level, cache, (ENTRY,)) == fresh, name
        assert jit.load_cached_object(cache, key) == fresh, f"{name}: not rewritten"
    print("ok", flush=True)
    return 0


def main(argv: Sequence[str]) -> int:
    # The programs compile at 2 threads into a main module and a part, also where this
    # process may use one core only (which would otherwise leave them whole).
    sys.modules["graphc.compile"]._compile_workers = lambda threads: threads  # type: ignore
    mode, cache = argv[0], Path(argv[1])
    if mode == "corrupt":
        return probe_corruptions(cache, argv[2], json.loads(argv[3]))
    if mode == "race":
        return probe_race(cache, Path(argv[2]), int(argv[3]))
    if mode == "vandal":
        return probe_vandal(cache, Path(argv[2]), Path(argv[3]))
    if mode == "export":
        return probe_export(cache, json.loads(argv[2]))
    raise SystemExit(f"unknown mode {mode!r}")


# --- the variants --------------------------------------------------------------------------

def binary_variants(length: int, thorough: bool = True) -> list[list[Any]]:
    """Damage to a file of about `length` bytes: empty, truncated, random, bit flips (at the
    ELF header's magic, class, machine and section-table offset, and inside the data)."""
    cuts = (1, 16, 64, length // 2, -1) if thorough else (length // 2,)
    seeds = (1, 2) if thorough else (1,)
    flips = (0, 4, 18, 40, 64 * 8 + 3, length // 2, length - 1) if thorough else (0, 40)
    out: list[list[Any]] = [["empty", "empty", 0]]
    out += [[f"truncate {n}", "truncate", n] for n in cuts]
    out += [[f"random {seed}", "random", seed] for seed in seeds]
    return out + [[f"flip {at}", "flip", at] for at in flips]


RECORD_FIELDS = ("format", "key", "object_sha256", "object_bytes", "record_sha256")
LIBRARY_FIELDS = (*RECORD_FIELDS, "symbol")
LAYOUT_FIELDS = ("entry", "table", "arena_bytes", "scratch_offset", "libraries", "parts")
# Wrong layouts: reordered tables, wrong arenas, other entry points, wrong types.
LAYOUT_EDITS = ("swap_variables", "swap_input_output", "arena_first", "arena_zero",
                "arena_short", "arena_negative", "arena_huge", "arena_str", "arena_float",
                "arena_bool", "scratch_misaligned", "scratch_beyond", "entry_missing",
                "entry_other_function", "entry_null", "variable_unknown", "variable_dropped",
                "variable_duplicated", "variable_as_constant", "input_key_str",
                "input_key_bool", "input_out_of_range", "space_unknown", "table_item_dict",
                "table_item_short", "table_dict", "table_empty", "libraries_dropped",
                "libraries_empty", "libraries_keys_swapped", "libraries_unknown_key",
                "libraries_bad_name", "libraries_int", "parts_dropped", "parts_duplicated",
                "parts_unknown_key", "parts_a_library", "parts_int")
# Those `program_cache.store` can write (it needs a valid `Space` for each table entry).
RESIGNABLE = tuple(e for e in LAYOUT_EDITS if e not in {"space_unknown", "table_item_dict",
                                                        "table_item_short", "table_dict"})
# Edited by hand, a record's own hash no longer matches: a few stand for all.
HAND_LAYOUT_EDITS = ("swap_variables", "arena_first", "arena_zero", "arena_str",
                     "entry_missing", "table_item_dict")
RECORD_EDITS = ("not_an_object", "deeply_nested", "extra_field", "format_other",
                "object_hash", "object_bytes", "object_bytes_str", "record_hash",
                "invalid_utf8")


def record_variants(fields: Sequence[str], edits: Sequence[str],
                    thorough: bool = True) -> list[list[Any]]:
    """Damage to a JSON record: as bytes, deleted, another program's, and edited by hand."""
    out = binary_variants(300, thorough)
    out += [["delete", "delete", 0], ["another program's record", "foreign", 0]]
    edits = [*edits, *(f"missing:{f}" for f in fields)]
    return out + [[f"json {e}", "json", e] for e in edits]


def run_probe(*args: str, timeout: float = PROBE_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(THIS), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def assert_probe_passed(done: subprocess.CompletedProcess[str], n: int) -> None:
    """Return code 0 and every variant run; else show which variant crashed or failed."""
    started = [line for line in done.stdout.splitlines() if line.startswith("start ")]
    assert done.returncode == 0 and len(started) == n, (
        f"probe exited with {done.returncode} (negative: killed by signal) after "
        f"{len(started)} of {n} variants, last {started[-1:]}\nstdout:\n{done.stdout[-3000:]}"
        f"\nstderr:\n{done.stderr[-3000:]}")


def corrupt(tmp_path: Path, role: str, variants: list[list[Any]]) -> None:
    done = run_probe("corrupt", str(tmp_path / "cache"), role, json.dumps(variants))
    assert_probe_passed(done, len(variants))


OBJECT_VARIANTS = [*binary_variants(20_000), ["another program's object", "foreign", 0],
                   ["another program's entry", "foreign_entry", 0],
                   ["an object without the entry point", "no_entry", 0]]


# --- the tests -----------------------------------------------------------------------------

def test_damaged_program_objects_are_recompiled(tmp_path: Path) -> None:
    corrupt(tmp_path, "prog", OBJECT_VARIANTS)


def test_damaged_program_records_are_recompiled(tmp_path: Path) -> None:
    corrupt(tmp_path, "prog_record", record_variants(
        RECORD_FIELDS + LAYOUT_FIELDS, (*RECORD_EDITS, "key_of_b", *HAND_LAYOUT_EDITS)))


def test_program_records_of_a_wrong_layout_are_recompiled(tmp_path: Path) -> None:
    """Every hash right, the layout wrong: a table, arena or entry the plan does not imply."""
    corrupt(tmp_path, "prog_record", [[f"resigned {e}", "resign", e] for e in RESIGNABLE])


def test_damaged_objects_are_recompiled(tmp_path: Path) -> None:
    corrupt(tmp_path, "obj", OBJECT_VARIANTS)


def test_damaged_object_records_are_recompiled(tmp_path: Path) -> None:
    """The same checks as for program records (one function reads both): fewer variants,
    as each costs a cold compile."""
    corrupt(tmp_path, "obj_record", record_variants(
        ("key", "object_sha256"), RECORD_EDITS[:-2], thorough=False))


def test_damaged_part_objects_are_recompiled(tmp_path: Path) -> None:
    """The object of a module split off the program for a concurrent compile: read by the
    same verified path as the main object, and linked with it (an object without the
    kernels the main object calls is refused, not loaded)."""
    corrupt(tmp_path, "part", OBJECT_VARIANTS)


def test_damaged_part_records_are_recompiled(tmp_path: Path) -> None:
    corrupt(tmp_path, "part_record", record_variants(
        ("key", "object_sha256"), RECORD_EDITS[:-2], thorough=False))


def test_damaged_library_objects_are_recompiled(tmp_path: Path) -> None:
    """A shared GEMM function's object: damaged, another function's, one without the
    function, or stored under a record naming another: the program entry that links
    against it misses and the function is compiled again."""
    corrupt(tmp_path, "lib", [*OBJECT_VARIANTS,
                              ["a record naming another function", "other_symbol", 0]])


def test_damaged_library_records_are_recompiled(tmp_path: Path) -> None:
    corrupt(tmp_path, "lib_record", record_variants(LIBRARY_FIELDS, RECORD_EDITS,
                                                    thorough=False))


def test_export_recompiles_damaged_objects(tmp_path: Path) -> None:
    variants: list[list[Any]] = [
        ["empty object", "empty", ["obj", 0]], ["truncated object", "truncate", ["obj", 100]],
        ["flipped object", "flip", ["obj", 1001]], ["random record", "random", ["obj_record", 3]],
        ["flipped record", "flip", ["obj_record", 77]], ["object without entry", "no_entry", 0]]
    done = run_probe("export", str(tmp_path / "cache"), json.dumps(variants))
    assert_probe_passed(done, len(variants))


def start_probes(commands: Sequence[Sequence[str]]) -> list[subprocess.Popen[str]]:
    """Start a probe per command and wait until each is ready (imports done, graphs built)."""
    procs = [subprocess.Popen([sys.executable, str(THIS), *c], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for c in commands]
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline().strip()
        if line != "ready":
            for q in procs:
                q.kill()
            raise AssertionError(f"a probe did not start: {line!r}\n{p.communicate()[1]}")
    return procs


@pytest.mark.parametrize("vandal", [False, True], ids=["clean", "vandal"])
def test_two_processes_compiling_into_one_cache_both_succeed(tmp_path: Path,
                                                             vandal: bool) -> None:
    """Both cold, at the same time, into one directory; with `vandal`, a third process
    damages the entries in place meanwhile, so many reads meet a half-damaged entry."""
    cache, go, stop = tmp_path / "cache", tmp_path / "go", tmp_path / "stop"
    rounds = "6" if vandal else "2"
    commands = [["race", str(cache), str(go), rounds]] * 2
    procs = start_probes(commands + ([["vandal", str(cache), str(go), str(stop)]] if vandal
                                     else []))
    try:
        go.touch()
        results = [p.communicate(timeout=PROBE_TIMEOUT) for p in procs[:2]]
        stop.touch()
        results += [p.communicate(timeout=PROBE_TIMEOUT) for p in procs[2:]]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0 and out.strip() == "ok", (
            f"exit {p.returncode} (negative: killed by signal)\n{out}\n{err[-3000:]}")
    assert not [f for f in os.listdir(cache) if f.endswith(".tmp")]  # no temporary left


@pytest.mark.parametrize("options", [
    gc.CompileOptions(threads=1), gc.CompileOptions(threads=2),
    gc.CompileOptions(threads=2, profile=True), gc.CompileOptions(conv_algorithm="gemm"),
    gc.CompileOptions(conv_algorithm="direct")],
    ids=["threads=1", "threads=2", "profile", "conv=gemm", "conv=direct"])
def test_expected_layout_is_the_generated_one(options: gc.CompileOptions) -> None:
    """`program_cache.expected_layout` (what a hit must record) is what codegen builds;
    if they differed, every program-cache entry would be a miss."""
    with gc.Graph("conv_step") as g:
        x = gc.placeholder((2, 3, 10, 10), gc.float32, name="x")
        w = gc.variable(gc.init.he_normal((20, 3, 3, 3), seed=0), name="w")
        v = gc.variable(gc.init.he_normal((20 * 8 * 8, 5), seed=1), name="v")
        h = gc.relu(gc.conv2d(x, w))
        loss = gc.mean(gc.reshape(h, (2, 20 * 8 * 8)) @ v)
        updates = gc.optim.SGD(lr=0.1, momentum=0.9).minimize(loss)
    for graph, inputs, outputs, ups in [(g, [x], [loss], updates), training_step()]:
        sig, _ = resolve_signature(graph, inputs, outputs, ups, None)
        lowered = lower(graph, sig, options, "llvm")
        assert lowered.plan is not None and lowered.module is not None
        m, s = lowered.module, lowered.settings
        generated = program_cache.Layout(m.entry, tuple(m.table), m.arena_bytes,
                                         m.scratch_offset)
        assert program_cache.expected_layout(lowered.plan, lowered.target, s.threads,
                                             s.conv_algorithm) == generated


def test_a_clean_entry_is_a_hit_of_the_program_cache(tmp_path: Path) -> None:
    p = Program(tmp_path)
    first, second = p.compile(), p.compile()
    assert not first.report.jit.stats.cache_hit
    assert second.report.jit.key == "program-cache"
    p.check(second)
    record = json.loads(next(tmp_path.glob("*.prog.json")).read_text())
    assert set(record) == {*RECORD_FIELDS, *LAYOUT_FIELDS}
    assert record["object_sha256"] == hashlib.sha256(
        next(tmp_path.glob("*.prog.o")).read_bytes()).hexdigest()


def test_the_program_cache_does_not_key_on_source_locations(tmp_path: Path) -> None:
    """The same graph built from another line of the user's script (a model imported
    again inside a loop) is a hit: where a node was built does not change its code, and
    the executable binds the new graph's own constants. A graph whose code differs (another
    scalar, an immediate of the code) is a miss."""
    options = gc.CompileOptions(cache_dir=str(tmp_path), threads=1)
    w = np.full((8, 3), 0.5, np.float32)
    graphs = []
    with gc.Graph("relocated") as g:
        x = gc.placeholder((4, 8), gc.float32, name="x")
        graphs.append((g, x, gc.relu(x @ gc.constant(w)) * 2.0))
    with gc.Graph("relocated") as g:
        x = gc.placeholder((4, 8), gc.float32, name="x")
        graphs.append((g, x, gc.relu(x @ gc.constant(w)) * 2.0))
    with gc.Graph("relocated") as g:
        x = gc.placeholder((4, 8), gc.float32, name="x")
        graphs.append((g, x, gc.relu(x @ gc.constant(w / 2)) * 3.0))
    (_, _, y1), (_, _, y2), (g3, x3, y3) = graphs
    assert y1.loc is not None and y2.loc is not None and y1.loc != y2.loc
    first, second, third = (gc.compile(g, [x], [y], options=options) for g, x, y in graphs)
    assert not first.report.jit.stats.cache_hit
    assert second.report.jit.key == "program-cache"
    assert third.report.jit.key != "program-cache"
    xv = np.linspace(-1, 1, 32, dtype=np.float32).reshape(4, 8)
    np.testing.assert_array_equal(second(xv), first(xv))
    np.testing.assert_allclose(third(xv), gc.reference(g3, [x3], [y3])(xv), rtol=1e-6)


def test_a_loop_body_constant_is_part_of_the_program_key(tmp_path: Path) -> None:
    """A loop body's constants are compiled into the code (not passed by pointer), so two
    graphs that differ only in one must not share a program-cache entry, wherever they
    were built: the second compile misses and computes with its own constant."""
    options = gc.CompileOptions(cache_dir=str(tmp_path), threads=1)
    steps = 8
    compiled = []
    for v in (2.0, 1.5):
        with gc.Graph("loop_const") as g:
            h = gc.placeholder((32,), gc.float32, name="h")
            xs = gc.placeholder((steps, 32), gc.float32, name="xs")
            carry, _ = gc.scan(lambda c, x, v=v: (c * gc.constant(np.full(32, v, np.float32))
                                                  + x, None), h, xs)
        compiled.append((g, h, xs, carry, gc.compile(g, [h, xs], [carry], options=options)))
    assert compiled[1][4].report.jit.key != "program-cache"
    hv, xv = np.ones(32, np.float32), np.zeros((steps, 32), np.float32)
    for g, h, xs, carry, f in compiled:
        np.testing.assert_allclose(f(hv, xv), gc.reference(g, [h, xs], [carry])(hv, xv),
                                   rtol=1e-6)
    assert not np.allclose(compiled[0][4](hv, xv), compiled[1][4](hv, xv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
