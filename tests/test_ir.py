"""IR invariants: verify(), networkx export, signatures, the reference calling convention."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.ir import Attrs


def _small() -> tuple[gc.Graph, gc.Node, gc.Node]:
    with gc.Graph("small") as g:
        x = gc.placeholder((2, 3), gc.float64, name="x")
        w = gc.variable(np.ones((2, 3)), name="w", dtype=gc.float64)
        y = gc.tanh(x * w + 1.0)
    return g, x, y


def test_verify_accepts_built_graphs() -> None:
    g, _, _ = _small()
    gc.verify(g)


def test_verify_catches_a_wrong_type_and_a_missing_value() -> None:
    g, x, _ = _small()
    bad = gc.Node("exp", (x,), Attrs(), gc.TensorType((9,), gc.float64), "bad", None, g)
    g.nodes.append(bad)
    with pytest.raises(gc.VerifyError, match="type rule infers"):
        gc.verify(g)
    g.nodes.pop()
    del g.constants[next(iter(g.constants))]
    with pytest.raises(gc.VerifyError, match="has no value"):
        gc.verify(g)


def test_verify_catches_use_before_definition() -> None:
    g, x, _ = _small()
    g.nodes.remove(x)
    g.nodes.append(x)
    with pytest.raises(gc.VerifyError, match="not defined before"):
        gc.verify(g)


def test_to_networkx_has_every_node_and_edge() -> None:
    g, _, y = _small()
    dg = g.to_networkx()
    assert set(dg.nodes) == {n.name for n in g.nodes}
    assert dg.number_of_edges() == sum(len(n.inputs) for n in g.nodes)
    assert dg.nodes[y.name]["op"] == "tanh"


def test_attrs_are_hashable_and_canonical() -> None:
    a = Attrs({"axes": [1, 0], "keepdims": False})
    b = Attrs({"keepdims": False, "axes": (1, 0)})
    assert a == b and hash(a) == hash(b) and a["axes"] == (1, 0)
    with pytest.raises(gc.GraphcError):
        Attrs({"bad": {1: 2}})


def test_reference_calling_convention() -> None:
    g, x, y = _small()
    f = gc.reference(g, inputs=[x], outputs=[y])
    data = np.zeros((2, 3))
    (a,) = f(data)
    (b,) = f(x=data)
    np.testing.assert_allclose(a, np.tanh(1.0) * np.ones((2, 3)))
    np.testing.assert_array_equal(a, b)
    single = gc.reference(g, inputs=[x], outputs=y)
    assert isinstance(single(data), np.ndarray)


@pytest.mark.parametrize(
    ("args", "kwargs", "pattern"),
    [
        ((), {}, "missing input"),
        ((np.zeros((2, 3)), np.zeros(1)), {}, "takes 1 input"),
        ((), {"z": np.zeros((2, 3))}, "no input named 'z'"),
        ((np.zeros((3, 2)),), {}, r"expected shape \(2, 3\)"),
        ((np.zeros((2, 3), np.float32),), {}, "expected dtype float64"),
        ((np.zeros((2, 3)),), {"x": np.zeros((2, 3))}, "both by position and by name"),
        ((object(),), {}, "expected"),
    ],
)
def test_reference_rejects_bad_arguments(args, kwargs, pattern) -> None:
    g, x, y = _small()
    f = gc.reference(g, inputs=[x], outputs=y)
    with pytest.raises(gc.ArgumentError, match=pattern):
        f(*args, **kwargs)


def test_outputs_needing_an_unlisted_placeholder_are_rejected() -> None:
    g, _, y = _small()
    with pytest.raises(gc.ArgumentError, match="not listed in inputs: x"):
        gc.reference(g, inputs=[], outputs=[y])


def test_updates_are_simultaneous_and_in_place() -> None:
    with gc.Graph("u") as g:
        a = gc.variable(np.array([1.0]), name="a", dtype=gc.float64)
        b = gc.variable(np.array([2.0]), name="b", dtype=gc.float64)
    arr = g.variables["a"]
    step = gc.reference(g, inputs=[], outputs=[], updates={a: b, b: a})
    step()
    assert g.variables["a"] is arr
    assert float(g.variables["a"][0]) == 2.0 and float(g.variables["b"][0]) == 1.0


def test_signatures() -> None:
    g, x, y = _small()
    g.add_signature("predict", inputs=[x], outputs=[y])
    f = gc.reference(g, signature="predict")
    assert f(np.zeros((2, 3)))[0].shape == (2, 3)
    with pytest.raises(gc.ArgumentError, match="no signature 'train'"):
        gc.reference(g, signature="train")


def test_integer_inputs_convert_when_they_fit() -> None:
    with gc.Graph("i") as g:
        i = gc.placeholder((3,), gc.int32, name="i")
        y = i * 2
    f = gc.reference(g, [i], y)
    np.testing.assert_array_equal(f(np.array([1, 2, 3], np.int64)), [2, 4, 6])
    with pytest.raises(gc.ArgumentError, match="int32"):
        f(np.array([2**40, 0, 0], np.int64))


def _signature_graph() -> tuple[gc.Graph, gc.Node, gc.Node, gc.Node, gc.Node]:
    with gc.Graph("s") as g:
        x = gc.placeholder((3,), gc.float32, name="x")
        z = gc.placeholder((3,), gc.float32, name="z")
        w = gc.variable(np.ones(3, np.float32), name="w")
        y = x * w + z
    return g, x, z, w, y


@pytest.mark.parametrize(("case", "pattern"), [
    ("variable input", "input %w is a variable, not a placeholder"),
    ("forgotten input", "not listed in inputs: z"),
    ("computed input", "is a add, not a placeholder"),
    ("twice", "listed twice"),
    ("foreign", "belongs to graph 'other'"),
    ("bad update", "update target"),
])
def test_add_signature_checks_what_a_call_checks(case: str, pattern: str) -> None:
    """Issue 13.6: `Graph.add_signature` (and so signatures read from files) and
    `gc.compile(inputs=...)` share one validation."""
    g, x, z, w, y = _signature_graph()
    with gc.Graph("other"):
        foreign = gc.placeholder((3,), gc.float32, name="f")
    inputs, outputs, updates = {
        "variable input": ([x, z, w], [y], None),
        "forgotten input": ([x], [y], None),
        "computed input": ([x, z, y], [y], None),
        "twice": ([x, z, x], [y], None),
        "foreign": ([x, z, foreign], [y], None),
        "bad update": ([x, z], [y], {x: y}),
    }[case]
    with pytest.raises(gc.GraphcError, match=pattern):
        g.add_signature("main", inputs, outputs, updates)
    with pytest.raises(gc.GraphcError, match=pattern):
        gc.reference(g, inputs, outputs, updates=updates)
    assert "main" not in g.signatures


def test_signatures_read_from_files_are_checked() -> None:
    g, x, z, _, y = _signature_graph()
    g.add_signature("main", [x, z], [y])
    text = gc.format_graph(g).replace('signature "main" (%x, %z)', 'signature "main" (%x, %w)')
    with pytest.raises(gc.SerializationError, match="input %w is a variable"):
        gc.parse_graph(text)
