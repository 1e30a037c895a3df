"""Checkpoints: resume equals uninterrupted training; mismatches and bad files are refused."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

import graphc as gc
import graphc.io.checkpoint as ckpt
from graphc.io.checkpoint import CheckpointMismatchError


def _build() -> tuple[gc.Graph, object]:
    """A small MLP with Adam; returns the graph and its train step (reference)."""
    with gc.Graph("mlp") as g:
        x = gc.placeholder((16, 3), "float32", name="x")
        y = gc.placeholder((16,), "int32", name="y")
        w1 = gc.variable(gc.init.he_normal((3, 8), seed=1), name="w1")
        b1 = gc.variable(np.zeros(8, np.float32), name="b1")
        w2 = gc.variable(gc.init.he_normal((8, 2), seed=2), name="w2")
        b2 = gc.variable(np.zeros(2, np.float32), name="b2")
        logits = gc.relu(x @ w1 + b1) @ w2 + b2
        loss = gc.mean(gc.softmax_cross_entropy(logits, y))
        updates = gc.optim.Adam(0.05, amsgrad=True).minimize(loss)
    return g, gc.reference(g, [x, y], loss, updates)


def _batch(i: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(100 + i)
    x = rng.standard_normal((16, 3)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.int32)


def _snapshot(g: gc.Graph) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in g.variables.items()}


def test_resume_equals_uninterrupted_training(tmp_path: Path) -> None:
    g1, step1 = _build()
    for i in range(3):
        step1(*_batch(i))
    path = gc.save_checkpoint(g1, tmp_path / "run.gcc")
    assert path == tmp_path / "run.gcc"
    for i in range(3, 6):
        step1(*_batch(i))

    g2, step2 = _build()
    before = _snapshot(g2)
    arrays = {name: id(arr) for name, arr in g2.variables.items()}
    result = gc.load_checkpoint(g2, path)
    assert set(result.loaded) == set(g1.variables) and not result.missing
    assert {name: id(arr) for name, arr in g2.variables.items()} == arrays  # copied in place
    assert g2.variables["optim/step"] == 3
    assert not np.array_equal(g2.variables["w1/adam_m"], before["w1/adam_m"])
    for i in range(3, 6):
        step2(*_batch(i))
    for name in g1.variables:
        np.testing.assert_array_equal(g2.variables[name], g1.variables[name], err_msg=name)


def test_file_layout(tmp_path: Path) -> None:
    g, _ = _build()
    gc.save_checkpoint(g, tmp_path / "c.gcc")
    with zipfile.ZipFile(tmp_path / "c.gcc") as zf:
        manifest = json.loads(zf.read("manifest.json"))
        assert manifest["format"] == "graphc-checkpoint" and manifest["version"] == 1
        entry = next(e for e in manifest["variables"] if e["name"] == "w1/adam_m")
        assert entry["shape"] == [3, 8] and entry["dtype"] == "float32"
        array = np.load(io.BytesIO(zf.read(entry["file"])), allow_pickle=False)
    np.testing.assert_array_equal(array, g.variables["w1/adam_m"])
    assert set(ckpt.read_checkpoint(tmp_path / "c.gcc")) == set(g.variables)


def _graph(**specs: tuple[tuple[int, ...], str]) -> gc.Graph:
    with gc.Graph("g") as g:
        for name, (shape, dtype) in specs.items():
            gc.variable(np.full(shape, 7, dtype), name=name)
    return g


def test_every_mismatch_is_reported_at_once(tmp_path: Path) -> None:
    saved = _graph(a=((3,), "float32"), b=((2, 3), "float32"), c=((), "float64"),
                   d=((1,), "float32"))
    path = gc.save_checkpoint(saved, tmp_path / "m.gcc")
    target = _graph(a=((3,), "float32"), b=((2, 2), "float32"), c=((), "float32"),
                    e=((4,), "int32"))
    before = _snapshot(target)
    with pytest.raises(CheckpointMismatchError) as info:
        gc.load_checkpoint(target, path)
    err = info.value
    assert isinstance(err, gc.SerializationError)
    assert err.missing == ("e",) and err.unexpected == ("d",)
    assert err.wrong_shape == (("b", (2, 3), (2, 2)),)
    assert err.wrong_dtype == (("c", "float64", "float32"),)
    text = str(err)
    for fragment in ("missing from the checkpoint: e", "unexpected in the checkpoint: d",
                     "b: shape (2, 3) in the checkpoint, (2, 2) in the graph",
                     "c: dtype float64 in the checkpoint, float32 in the graph"):
        assert fragment in text
    for name, value in before.items():  # all-or-nothing: even `a` was not loaded
        np.testing.assert_array_equal(target.variables[name], value)


def test_non_strict_skips_missing_and_unexpected_only(tmp_path: Path) -> None:
    saved = _graph(a=((3,), "float32"), d=((1,), "float32"))
    saved.variables["a"] = np.arange(3, dtype=np.float32)
    path = gc.save_checkpoint(saved, tmp_path / "n.gcc")
    target = _graph(a=((3,), "float32"), e=((2,), "float32"))
    with pytest.raises(CheckpointMismatchError):
        gc.load_checkpoint(target, path)
    result = gc.load_checkpoint(target, path, strict=False)
    assert result.loaded == ("a",) and result.missing == ("e",) and result.unexpected == ("d",)
    np.testing.assert_array_equal(target.variables["a"], np.arange(3))
    wrong = _graph(a=((4,), "float32"))
    with pytest.raises(CheckpointMismatchError) as info:
        gc.load_checkpoint(wrong, path, strict=False)
    assert info.value.wrong_shape and not info.value.missing


def _valid_bytes(tmp_path: Path) -> bytes:
    g = _graph(a=((3,), "float32"), b=((2, 2), "float64"))
    return gc.save_checkpoint(g, tmp_path / "valid.gcc").read_bytes()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def _manifest(*entries: dict[str, object], version: int = 1) -> bytes:
    return json.dumps({"format": "graphc-checkpoint", "version": version,
                       "variables": list(entries)}).encode()


def _corruptions(tmp_path: Path) -> dict[str, tuple[bytes, str]]:
    valid = _valid_bytes(tmp_path)
    a_entry = {"name": "a", "shape": [3], "dtype": "float32", "file": "arrays/0.npy"}
    data_at = valid.index(b"\x00\x00\xe0\x40")  # 7.0f: inside a's array data
    flipped = bytearray(valid)
    flipped[data_at + 1] ^= 0xFF
    bomb = _zip({"manifest.json": _manifest(a_entry),
                 "arrays/0.npy": _npy(np.zeros(3, np.float32)) + b"\0" * 10_000_000})
    return {
        "not_a_zip": (b"this is not a checkpoint" * 10, "not a zip archive"),
        "empty": (b"", "not a zip archive"),
        "truncated": (valid[: len(valid) // 2], "not a zip archive"),
        "bit_flip": (bytes(flipped), "corrupt"),
        "no_manifest": (_zip({"arrays/0.npy": _npy(np.zeros(3, np.float32))}), "no member"),
        "manifest_not_json": (_zip({"manifest.json": b"{not json"}), "not valid JSON"),
        "wrong_format": (_zip({"manifest.json": b'{"format": "other", "version": 1}'}),
                         "does not declare format"),
        "future_version": (_zip({"manifest.json": _manifest(version=99)}), "version 99"),
        "bad_shape": (_zip({"manifest.json": _manifest({**a_entry, "shape": [-3]})}),
                      "invalid shape"),
        "bad_dtype": (_zip({"manifest.json": _manifest({**a_entry, "dtype": "object"})}),
                      "unsupported dtype"),
        "duplicate": (_zip({"manifest.json": _manifest(a_entry, a_entry)}), "listed twice"),
        "missing_member": (_zip({"manifest.json": _manifest(a_entry)}), "no member"),
        "pickled_array": (_zip({"manifest.json": _manifest(a_entry),
                                "arrays/0.npy": _npy(np.array([1, "x", None], dtype=object),
                                                     allow_pickle=True)}),
                          "not a valid .npy array"),
        "array_disagrees": (_zip({"manifest.json": _manifest(a_entry),
                                  "arrays/0.npy": _npy(np.zeros(3, np.int32))}), "holds int32"),
        "oversized_member": (bomb, "has 10000"),
    }


KINDS = ["not_a_zip", "empty", "truncated", "bit_flip", "no_manifest", "manifest_not_json",
         "wrong_format", "future_version", "bad_shape", "bad_dtype", "duplicate",
         "missing_member", "pickled_array", "array_disagrees", "oversized_member"]


def test_every_corruption_kind_is_parametrized(tmp_path: Path) -> None:
    assert sorted(_corruptions(tmp_path)) == sorted(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_corrupt_and_hostile_files_are_rejected(tmp_path: Path, kind: str) -> None:
    data, message = _corruptions(tmp_path)[kind]
    path = tmp_path / f"{kind}.gcc"
    path.write_bytes(data)
    target = _graph(a=((3,), "float32"))
    before = _snapshot(target)
    with pytest.raises(gc.SerializationError, match=message) as info:
        gc.load_checkpoint(target, path, strict=False)
    assert info.value.op == "load_checkpoint"
    np.testing.assert_array_equal(target.variables["a"], before["a"])


def test_missing_file_is_a_serialization_error(tmp_path: Path) -> None:
    with pytest.raises(gc.SerializationError, match="no checkpoint file"):
        gc.load_checkpoint(_graph(a=((3,), "float32")), tmp_path / "nope.gcc")


def test_crash_mid_write_keeps_the_previous_checkpoint(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    g, step = _build()
    fresh = _snapshot(g)
    step(*_batch(0))
    path = gc.save_checkpoint(g, tmp_path / "run.gcc")
    first = _snapshot(g)
    step(*_batch(1))
    calls = []
    real = ckpt._write_array

    def crashing(zf: zipfile.ZipFile, member: str, array: np.ndarray) -> None:
        calls.append(member)
        if len(calls) == 3:
            raise OSError("disk full (simulated)")
        real(zf, member, array)

    monkeypatch.setattr(ckpt, "_write_array", crashing)
    with pytest.raises(gc.SerializationError, match="disk full"):
        gc.save_checkpoint(g, path)
    monkeypatch.undo()
    assert len(calls) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.gcc"]  # no temp file left
    g2, _ = _build()
    gc.load_checkpoint(g2, path)
    for name, value in first.items():
        np.testing.assert_array_equal(g2.variables[name], value, err_msg=name)
    assert not np.array_equal(first["w1"], fresh["w1"])  # the loaded state is the saved one
