"""save/load of .gcg files: round trips, determinism, and hostile or broken files."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphc as gc
from graphc.errors import SerializationError, VerifyError
from graphc.io.gcg import dumps_json, load, member_name, save
from graphc.io.jsonir import decode_attr, encode_attr
from graphc.io.rebuild import same_attr
from graphc.io.textir import graph_diff
from graphc.ir import TensorType
from tests.graphgen import GeneratedGraph, random_graphs


def _model() -> gc.Graph:
    with gc.Graph("mlp") as g:
        x = gc.placeholder((4, 3), name="x")
        w = gc.variable(np.arange(12, dtype=np.float32).reshape(3, 4) / 10, name="layer/w")
        b = gc.variable(np.zeros(4, np.float32), name="b", trainable=False)
        gc.constant(np.linspace(0, 1, 30), name="a/../table")  # float64, hex member name
        h = gc.tanh(gc.matmul(x, w) + b)
        loss = gc.sum(h * h)
        g.add_signature("train", [x], [loss], {w: w - 0.5 * gc.matmul(gc.transpose(x), h)})
        g.add_signature("predict", [x], [h])
    return g


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = compression
            zf.writestr(info, data)
    return out.getvalue()


def _npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=allow_pickle)
    return out.getvalue()


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "model.gcg"
    save(_model(), path)
    return path


def test_round_trip_preserves_everything(saved: Path) -> None:
    g = _model()
    back = load(saved)
    assert graph_diff(g, back) is None  # names, ops, attrs, types, locs, signatures, values
    assert back.variables["layer/w"].flags.writeable
    assert not back.constants["a/../table"].flags.writeable
    assert back.constants["a/../table"].dtype == np.float64


def test_loaded_graph_trains_on_its_own_variables(saved: Path) -> None:
    g, back = _model(), load(saved)
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
    expected = gc.reference(g, signature="train")(x)
    actual = gc.reference(back, signature="train")(x)
    np.testing.assert_array_equal(actual[0], expected[0])
    np.testing.assert_array_equal(back.variables["layer/w"], g.variables["layer/w"])
    assert not np.array_equal(back.variables["layer/w"], load(saved).variables["layer/w"])


def test_archive_layout_and_json(saved: Path) -> None:
    members = _members(saved)
    assert set(members) == {"graph.json", "values/layer/w.npy", "values/b.npy",
                            "values/constant.npy", member_name("a/../table")}  # 0.5
    assert member_name("a/../table").startswith("values/~")
    assert members["graph.json"].decode() == dumps_json(_model())
    doc = json.loads(members["graph.json"])
    assert doc["format"] == "graphc-graph" and doc["version"] == 1
    w = next(n for n in doc["nodes"] if n["name"] == "layer/w")
    assert w["attrs"] == {"trainable": True}
    assert w["type"] == {"dtype": "float32", "shape": [3, 4]}
    assert doc["signatures"][0]["updates"] == [["layer/w", "sub"]]


def test_typed_attribute_encoding_survives_json(tmp_path: Path) -> None:
    # Ops declare their attributes (graphc/ir/attrs.py), so a saved graph carries only
    # declared kinds: rows of int tuples, non-finite floats, dtypes.
    with gc.Graph("a") as g:
        x = gc.placeholder((2, 3), name="x")
        for value in (float("inf"), float("-inf"), float("nan"), -0.0):
            gc.cast(gc.pad(x, ((1, 0), (0, 2)), value=value), gc.int32)
    save(g, tmp_path / "a.gcg")
    text = _members(tmp_path / "a.gcg")["graph.json"].decode()
    assert '{"float": "inf"}' in text and '{"float": "-inf"}' in text
    assert '{"dtype": "int32"}' in text and "NaN" not in text and "Infinity" not in text
    assert '{"tuple": [{"tuple": [1, 0, 0]}, {"tuple": [0, 2, 0]}]}' in text
    assert graph_diff(g, load(tmp_path / "a.gcg")) is None
    # Every kind the encoding has, beyond what today's ops declare, survives as JSON text.
    attrs = {"t": (1, (2.5, gc.int32)), "inf": float("inf"), "nan": float("nan"),
             "ninf": float("-inf"), "n": None, "s": "é\n", "f": 1.0, "i": 1, "b": True}
    encoded = json.loads(json.dumps({k: encode_attr(v) for k, v in attrs.items()},
                                    allow_nan=False))
    decoded = {k: decode_attr(v, k) for k, v in encoded.items()}
    assert all(same_attr(decoded[k], v) for k, v in attrs.items())


def test_saving_is_deterministic_and_atomic(tmp_path: Path) -> None:
    a, b = tmp_path / "a.gcg", tmp_path / "b.gcg"
    save(_model(), a)
    save(_model(), b)
    assert a.read_bytes() == b.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gcg", "b.gcg"]  # no temp files


def test_save_refuses_an_inconsistent_graph(tmp_path: Path) -> None:
    with gc.Graph("bad") as g:
        x = gc.placeholder((3,), name="x")
        g.add_node("neg", [x], {}, TensorType((5,), gc.float32), name="y")
    with pytest.raises(VerifyError, match="infers f32"):
        save(g, tmp_path / "bad.gcg")
    assert not (tmp_path / "bad.gcg").exists()


def test_save_to_a_missing_folder_is_a_serialization_error(tmp_path: Path) -> None:
    with pytest.raises(SerializationError, match="cannot write"):
        save(_model(), tmp_path / "no" / "such" / "m.gcg")


def test_load_of_a_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(SerializationError, match=r"cannot read .*nope\.gcg"):
        load(tmp_path / "nope.gcg")


def _edit_json(edit: Callable[[dict], object]) -> Callable[[dict[str, bytes]], None]:
    def mutate(members: dict[str, bytes]) -> None:
        doc = json.loads(members["graph.json"])
        edit(doc)
        members["graph.json"] = json.dumps(doc).encode()
    return mutate


def _node(doc: dict, name: str) -> dict:
    return next(n for n in doc["nodes"] if n["name"] == name)


def _set(members: dict[str, bytes], name: str, data: bytes) -> None:
    members[name] = data


_HOSTILE: dict[str, tuple[Callable[[dict[str, bytes]], None], str]] = {
    "wrong version": (_edit_json(lambda d: d.update(version=99)),
                      r"unsupported graphc-graph version 99 \(this graphc reads version\(s\) 1"),
    "no format": (_edit_json(lambda d: d.pop("format")), "not a graphc-graph document"),
    "traversal ..": (lambda m: _set(m, "../evil.npy", b"x"), "unsafe member name '../evil.npy'"),
    "traversal nested": (lambda m: _set(m, "values/../../evil.npy", b"x"), "unsafe member"),
    "absolute name": (lambda m: _set(m, "/etc/evil.npy", b"x"), "unsafe member"),
    "backslash name": (lambda m: _set(m, "values\\..\\evil.npy", b"x"), "unsafe member"),
    "extra member": (lambda m: _set(m, "values/extra.npy", b"x"), "unexpected member"),
    "no graph.json": (lambda m: m.pop("graph.json"), "no graph.json"),
    "missing value": (lambda m: m.pop("values/b.npy"), r"value of %b \(values/b.npy\) is missing"),
    "pickled npy": (lambda m: _set(m, "values/b.npy", _npy(np.array([{"a": 1}] * 4), True)),
                    "Python objects"),
    "npy wrong dtype": (lambda m: _set(m, "values/b.npy", _npy(np.zeros(4))),
                        r"value of %b is float64\[4\], its node type is f32\[4\]"),
    "npy wrong shape": (lambda m: _set(m, "values/b.npy", _npy(np.zeros(5, np.float32))),
                        r"float32\[5\], its node type is f32\[4\]"),
    "npy truncated": (lambda m: _set(m, "values/b.npy", _npy(np.zeros(4, np.float32))[:-3]),
                      "bytes of data"),
    "npy garbage": (lambda m: _set(m, "values/b.npy", b"\x93NUMPY\x01\x00garbage"),
                    "not a valid .npy"),
    "npy version": (lambda m: _set(m, "values/b.npy", b"\x93NUMPY\x07\x00garbage"),
                    r"unsupported .npy version \(7, 0\)"),
    "npy oversized": (lambda m: _set(m, "values/b.npy", bytes(10**6)), "more than"),
    "json invalid": (lambda m: _set(m, "graph.json", b"{nodes: ["), "not valid JSON"),
    "json not utf8": (lambda m: _set(m, "graph.json", b"\xff\xfe{}"), "not UTF-8"),
    "json NaN": (lambda m: _set(m, "graph.json", m["graph.json"].replace(b'"version": 1',
                                                                          b'"version": NaN')),
                 "NaN is not JSON"),
    "json duplicate key": (lambda m: _set(m, "graph.json", m["graph.json"].replace(
        b'"name": "mlp"', b'"name": "mlp", "name": "other"')), "appears twice"),
    "json deep": (lambda m: _set(m, "graph.json", b"[" * 100000 + b"]" * 100000),
                  "nested too deeply|not a graphc-graph"),
    "missing key": (_edit_json(lambda d: d["nodes"][0].pop("op")), r"nodes\[0\]: missing key"),
    "unknown key": (_edit_json(lambda d: d["nodes"][0].update(code="os.system")), "unknown key"),
    "wrong type": (_edit_json(lambda d: d.update(nodes={})), r"\$.nodes: expected a list"),
    "unknown op": (_edit_json(lambda d: _node(d, "tanh").update(op="system")),
                   "unknown op 'system'"),
    "dangling input": (_edit_json(lambda d: _node(d, "tanh").update(inputs=["ghost"])),
                       "%ghost is not a node defined before"),
    "forward input": (_edit_json(lambda d: _node(d, "x").update(op="neg", inputs=["tanh"])),
                      "%tanh is not a node defined before"),
    "bad attr": (_edit_json(lambda d: _node(d, "b").update(attrs={"t": {"eval": "1"}})),
                 "expected an attribute value"),
    "bad dtype": (_edit_json(lambda d: _node(d, "x")["type"].update(dtype="object")),
                  "unknown dtype 'object'"),
    "negative dim": (_edit_json(lambda d: _node(d, "x")["type"].update(shape=[-1, 3])),
                     "non-negative ints"),
    "type mismatch": (_edit_json(lambda d: _node(d, "tanh")["type"].update(shape=[3, 4])),
                      r"infers f32\[4,4\], the file says f32\[3,4\]"),
    "bad loc": (_edit_json(lambda d: _node(d, "x").update(loc={"file": 1, "line": 2,
                                                                "func": ""})),
                r"loc.file: expected a string"),
    "bad signature": (_edit_json(lambda d: d["signatures"][0].update(outputs=["nope"])),
                      "%nope is not a node"),
    "bad update": (_edit_json(lambda d: d["signatures"][0].update(updates=[["x", "tanh"]])),
                   "update target"),
}


@pytest.mark.parametrize("case", sorted(_HOSTILE))
def test_hostile_or_broken_contents_are_serialization_errors(saved: Path, tmp_path: Path,
                                                             case: str) -> None:
    mutate, pattern = _HOSTILE[case]
    members = _members(saved)
    mutate(members)
    bad = tmp_path / "bad.gcg"
    bad.write_bytes(_zip(members))
    with pytest.raises(SerializationError, match=pattern) as info:
        load(bad)
    assert str(bad) in str(info.value)


@pytest.mark.parametrize(("name", "data", "pattern"), [
    ("empty", b"", "not a zip archive"),
    ("text", b"graph 'x'\n", "not a zip archive"),
    ("npy", _npy(np.zeros(3)), "not a zip archive"),
])
def test_non_zip_files_are_rejected(tmp_path: Path, name: str, data: bytes,
                                    pattern: str) -> None:
    path = tmp_path / f"{name}.gcg"
    path.write_bytes(data)
    with pytest.raises(SerializationError, match=pattern):
        load(path)


def test_truncated_and_corrupted_files_are_rejected(saved: Path, tmp_path: Path) -> None:
    data = saved.read_bytes()
    bad = tmp_path / "bad.gcg"
    for cut in (len(data) // 2, len(data) - 10, 30):
        bad.write_bytes(data[:cut])
        with pytest.raises(SerializationError):
            load(bad)
    # Flip a byte inside the stored weights: the CRC check catches it.
    offset = data.index(_npy(_model().variables["layer/w"])[-8:])
    bad.write_bytes(data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1:])
    with pytest.raises(SerializationError, match=r"'values/layer/w.npy' is corrupt.*CRC"):
        load(bad)


def test_zip_bombs_are_bounded(saved: Path, tmp_path: Path) -> None:
    members = _members(saved)
    members["values/b.npy"] = bytes(64 * 2**20)  # 64 MiB of zeros deflate to ~64 KiB
    bomb = tmp_path / "bomb.gcg"
    bomb.write_bytes(_zip(members, zipfile.ZIP_DEFLATED))
    assert bomb.stat().st_size < 2**20
    # `save` stores values uncompressed, so a compressed value is refused unread.
    with pytest.raises(SerializationError,
                       match=r"'values/.*' uses compression method 8 \(deflate\)"):
        load(bomb)
    stored = {**_members(saved), "values/b.npy": bytes(64 * 2**20)}
    bomb.write_bytes(_zip(stored))
    with pytest.raises(SerializationError,
                       match=r"'values/b.npy' is 67108864 bytes uncompressed, more than the"):
        load(bomb)
    # graph.json may be deflated, but not at the ratio of a bomb.
    padded = {**_members(saved)}
    padded["graph.json"] += b" " * (64 * 2**20)
    bomb.write_bytes(_zip(padded, zipfile.ZIP_DEFLATED))
    with pytest.raises(SerializationError, match=r"'graph.json' would inflate .* a ratio"):
        load(bomb)


def test_total_array_size_is_bounded(saved: Path) -> None:
    with pytest.raises(SerializationError, match="the arrays need more than 100 bytes"):
        load(saved, max_bytes=100)
    assert graph_diff(load(saved, max_bytes=10**6), _model()) is None


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for the property tests (hypothesis runs many examples per test function)."""
    path = tmp_path_factory.mktemp("serialize")
    save(_model(), path / "model.gcg")
    return path


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_damage_never_escapes_as_a_raw_exception(workdir: Path,
                                                        data: st.DataObject) -> None:
    blob = (workdir / "model.gcg").read_bytes()
    kind = data.draw(st.sampled_from(["flip", "cut", "splice"]))
    pos = data.draw(st.integers(0, len(blob) - 1))
    if kind == "flip":
        damaged = blob[:pos] + bytes([blob[pos] ^ data.draw(st.integers(1, 255))]) + blob[pos + 1:]
    elif kind == "cut":
        damaged = blob[:pos]
    else:
        damaged = blob[:pos] + data.draw(st.binary(min_size=1, max_size=64)) + blob[pos:]
    path = workdir / "damaged.gcg"
    path.write_bytes(damaged)
    try:
        load(path)  # some damage is harmless (a timestamp); anything else must be reported
    except SerializationError:
        pass


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gen=random_graphs())
def test_random_graphs_round_trip_through_files(workdir: Path, gen: GeneratedGraph) -> None:
    path = workdir / "random.gcg"
    save(gen.graph, path)
    back = load(path)
    assert graph_diff(gen.graph, back) is None
    for a, b in zip(gen.evaluate(), gen.evaluate(back)):
        np.testing.assert_array_equal(a, b)
