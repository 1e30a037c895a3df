"""Initializers lifted out of a serialized model before it is parsed (`graphc.onnx.wire`).

The lifted arrays must equal what protobuf and `numpy_helper` read, for every element type
and size, from a path and from bytes; damaged and crafted bytes must fall back to protobuf's
parse (so that its errors, or its meaning of a repeated field, hold), never crash.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import graphc as gc
from graphc.onnx.model import read_model
from graphc.onnx.wire import MIN_LIFT_BYTES, Source, split_raw_data

onnx = pytest.importorskip("onnx", reason="needs onnx: pip install 'graphc[onnx]'")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from tests.onnx_helpers import value_info as _vi  # noqa: E402

# Initializers of each lifted element type, above and below the size that is lifted, and
# one stored as float_data (not raw_data), which keeps its place in the message.
_RNG = np.random.default_rng(7)
_INITS = {
    "w_big": _RNG.standard_normal((40, 30)).astype(np.float32),
    "w_small": _RNG.standard_normal((3, 4)).astype(np.float32),
    "d_big": _RNG.standard_normal((700,)).astype(np.float64),
    "i_big": _RNG.integers(-9, 9, (1100,)).astype(np.int32),
    "l_big": _RNG.integers(-9, 9, (3, 200)).astype(np.int64),
}


def _model(inits: dict[str, np.ndarray] = _INITS, float_data: bool = True) -> onnx.ModelProto:
    tensors = [numpy_helper.from_array(a, n) for n, a in inits.items()]
    if float_data:
        tensors.append(helper.make_tensor("f_list", TensorProto.FLOAT, [1200],
                                          _RNG.standard_normal(1200).tolist()))
    nodes = [helper.make_node("MatMul", ["x", "w_big"], ["y"])]
    graph = helper.make_graph(nodes, "m", [_vi("x", [2, 40])], [_vi("y", [2, 30])], tensors)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _expected(proto: onnx.ModelProto) -> list[np.ndarray]:
    return [numpy_helper.to_array(t) for t in proto.graph.initializer]


def test_lifted_values_equal_protobufs_for_every_type_and_size(tmp_path: Path) -> None:
    proto = _model()
    data = proto.SerializeToString()
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    for source in (data, path):
        model = read_model(source, lift=True)
        big = {i for i, t in enumerate(proto.graph.initializer)
               if t.HasField("raw_data") and len(t.raw_data) >= MIN_LIFT_BYTES}
        assert set(model.data) == big and len(big) == 4
        for i, (t, want) in enumerate(zip(model.proto.graph.initializer, _expected(proto),
                                          strict=True)):
            assert t.name == proto.graph.initializer[i].name
            assert list(t.dims) == list(want.shape)
            got = model.data[i].reshape(want.shape) if i in big else numpy_helper.to_array(t)
            assert got.dtype == want.dtype and np.array_equal(got, want)
            if i in big:
                assert not t.HasField("raw_data")  # lifted out of the message
                assert model.data[i].flags.aligned and model.data[i].flags.owndata


def test_an_imported_model_computes_the_same_from_lifted_weights(tmp_path: Path) -> None:
    data = _model().SerializeToString()
    x = _RNG.standard_normal((2, 40)).astype(np.float32)
    want = x @ _INITS["w_big"]
    for trainable in (True, False):
        g = gc.onnx.load(data, trainable=trainable)
        got = gc.compile(g, signature="main")(x)[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        if trainable:  # a variable is the graph's own, writable array
            (w,) = [v for v in g.variables.values() if v.shape == (40, 30)]
            assert w.flags.writeable
            assert np.array_equal(w, _INITS["w_big"])


def test_nothing_to_lift_and_crafted_repeats_fall_back_to_protobuf() -> None:
    small = _model({"w_small": _INITS["w_small"]}, float_data=False)
    assert split_raw_data(Source(small.SerializeToString())) is None
    # A tensor with two raw_data fields: protobuf keeps the last; the walk lets it.
    proto = _model()
    ones = np.ones(tuple(proto.graph.initializer[0].dims), np.float32)
    twice = _with_raw_twice(proto, ones.tobytes())
    assert split_raw_data(Source(twice)) is None
    got = read_model(twice, lift=True)
    assert np.array_equal(numpy_helper.to_array(got.proto.graph.initializer[0]), ones)
    # Two `graph` fields, which protobuf merges: the walk refuses to guess.
    graph = proto.graph.SerializeToString()
    doubled = proto.SerializeToString() + b"\x3a" + _varint(len(graph)) + graph
    assert split_raw_data(Source(doubled)) is None


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _with_raw_twice(proto: onnx.ModelProto, extra: bytes) -> bytes:
    """The model's bytes with a second raw_data field (9) after its first initializer's."""
    inits = list(proto.graph.initializer)
    first = inits[0].SerializeToString() + _field(9, extra)
    rest = onnx.GraphProto()
    rest.CopyFrom(proto.graph)
    del rest.initializer[:]
    graph = rest.SerializeToString() + b"".join(
        _field(5, b) for b in [first, *(t.SerializeToString() for t in inits[1:])])
    head = onnx.ModelProto()
    head.CopyFrom(proto)
    head.ClearField("graph")
    return head.SerializeToString() + _field(7, graph)


def test_damaged_models_never_crash_the_walk(tmp_path: Path) -> None:
    """3,000 truncated, bit-flipped and byte-overwritten models: the walk returns None or
    a result, and `gc.onnx.load` either imports or raises GraphcError."""
    good = _model().SerializeToString()
    rng = np.random.default_rng(11)
    path = tmp_path / "d.onnx"
    for k in range(3000):
        data = bytearray(good)
        kind = k % 3
        if kind == 0:
            data = data[:int(rng.integers(0, len(data)))]
        elif kind == 1:
            for _ in range(int(rng.integers(1, 4))):
                pos = int(rng.integers(0, len(data)))
                data[pos] ^= 1 << int(rng.integers(0, 8))
        else:
            pos = int(rng.integers(0, len(data)))
            data[pos] = int(rng.integers(0, 256))
        lifted = split_raw_data(Source(bytes(data)))
        if lifted is not None:
            _assert_same_as_protobuf(bytes(data), lifted.model, lifted.data)
        if k % 10 == 0:  # the whole import, from a file, for a tenth of them
            path.write_bytes(bytes(data))
            try:
                gc.onnx.load(path)
            except gc.GraphcError:
                pass


def _assert_same_as_protobuf(data: bytes, model: bytes, lifted: dict[int, np.ndarray]) -> None:
    """What protobuf reads from `data` is the lifted model plus the lifted bytes."""
    want = onnx.ModelProto()
    try:
        want.ParseFromString(data)
    except Exception:
        want = None
    got = onnx.ModelProto()
    try:
        got.ParseFromString(model)
    except Exception:
        assert want is None  # protobuf refuses the original too
        return
    assert want is not None
    for i, values in lifted.items():
        t = got.graph.initializer[i]
        assert not t.HasField("raw_data")
        assert values.tobytes() == want.graph.initializer[i].raw_data
        t.raw_data = values.tobytes()
    assert got.SerializeToString(deterministic=True) == want.SerializeToString(
        deterministic=True)


def test_a_file_that_shrinks_while_it_is_read_is_a_clean_error(tmp_path: Path) -> None:
    data = _model().SerializeToString()
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    with path.open("rb") as f:
        src = Source(fd=f.fileno(), size=len(data))
        path.write_bytes(data[: len(data) // 2])  # truncated under the open descriptor
        assert split_raw_data(src) is None


def test_a_tensor_with_external_data_or_segments_keeps_its_bytes(tmp_path: Path) -> None:
    """Both import paths give a tensor the same meaning: one that names external data is
    read from its file (even with raw_data beside it), one with a segment is refused, lifted
    or not."""
    proto = _model()
    t = proto.graph.initializer[0]  # w_big, raw_data of 4800 bytes
    (tmp_path / "w.bin").write_bytes(np.full(t.dims, 7, np.float32).tobytes())
    entry = t.external_data.add()
    entry.key, entry.value = "location", "w.bin"
    path = tmp_path / "m.onnx"
    path.write_bytes(proto.SerializeToString())
    assert 0 not in read_model(path, lift=True).data
    g = gc.onnx.load(path, trainable=False)
    x = np.ones((2, 40), np.float32)
    np.testing.assert_allclose(gc.reference(g, signature="main")(x)[0], np.full((2, 30), 280.0))
    del t.external_data[:]
    t.segment.begin, t.segment.end = 0, 1200
    lifted = split_raw_data(Source(proto.SerializeToString()))
    assert lifted is not None and 0 not in lifted.data and 2 in lifted.data
    with pytest.raises(gc.GraphcError, match="segment"):
        gc.onnx.load(proto.SerializeToString())


def test_keys_and_lengths_longer_than_protobuf_allows_are_refused() -> None:
    """A length written in 7 bytes (protobuf accepts 5): the walk must not re-encode it
    into a model that protobuf would have refused."""
    proto = _model()
    head = onnx.ModelProto()
    head.CopyFrom(proto)
    head.ClearField("graph")
    graph = proto.graph.SerializeToString()
    n = len(graph)
    seven = bytes([(n & 0x7F) | 0x80, ((n >> 7) & 0x7F) | 0x80, ((n >> 14) & 0x7F) | 0x80,
                   0x80, 0x80, 0x80, 0x00])
    data = head.SerializeToString() + b"\x3a" + seven + graph
    assert split_raw_data(Source(data)) is None
    with pytest.raises(gc.GraphcError):
        gc.onnx.load(data)


def test_the_walk_gives_up_after_its_field_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Millions of two-byte fields cost the walk microseconds each and protobuf nanoseconds:
    past MAX_FIELDS it gives up and protobuf parses the model whole (here: refuses it)."""
    from graphc.onnx import wire

    monkeypatch.setattr(wire, "MAX_FIELDS", 1000)
    flood = b"\x08\x07" * 1001 + _model().SerializeToString()
    assert split_raw_data(Source(flood)) is None
    assert split_raw_data(Source(b"\x08\x07" * 10 + _model().SerializeToString())) is not None
    with pytest.raises(gc.GraphcError):
        gc.onnx.load(b"\x08\x07" * 5000)  # no graph


def test_every_kind_of_source_imports_the_same_graph(tmp_path: Path) -> None:
    proto = _model()
    data = proto.SerializeToString()
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    x = _RNG.standard_normal((2, 40)).astype(np.float32)
    outs = [gc.reference(gc.onnx.load(s, trainable=False), signature="main")(x)[0]
            for s in (proto, data, bytearray(data), memoryview(data), path, str(path))]
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])
