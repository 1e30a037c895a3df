"""Declared op attributes (issue 13.5): every op lists its attributes once, and the builder,
the readers (text IR, the JSON of `.gcg` files), the pass rebuilder and `verify` all hold a
node against that declaration -- a missing, unknown or malformed attribute is a clean error
naming it, never a raw KeyError/TypeError later in compile or the reference.

The variants are generated: for a node of every op that has attributes (taken from the op
table's rows), each attribute removed, replaced by values of every wrong kind, and an
unknown one added.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest

import graphc as gc
from graphc.errors import AttrError, SerializationError, VerifyError
from graphc.io.jsonir import graph_from_json, graph_to_json
from graphc.io.textir import format_graph, format_value, parse_graph
from graphc.ir import TensorType
from graphc.ir.attrs import REQUIRED, AttrSpec, Kind, check_attrs
from graphc.ops import registry
from tests.op_table import make_args
from tests.test_op_table import CASES

# Values of every kind, to put where an attribute of another kind belongs.
WRONG: dict[str, Any] = {
    "str": "x", "none": None, "float": 1.5, "bool": True, "int": 7, "dtype": gc.int32,
    "ints": (1, 2), "rows": ((0, 0), (1, 1)), "nested": (("a",),), "nan": math.nan,
}
FITS = {Kind.INT: {"int"}, Kind.FLOAT: {"float", "int", "nan"}, Kind.BOOL: {"bool"},
        Kind.STR: set(), Kind.DTYPE: {"dtype"}, Kind.INTS: {"ints"},
        Kind.INT_ROWS: {"rows"}}


def _sample_nodes() -> dict[str, tuple[gc.Graph, gc.Node]]:
    """One built node (in its own small graph) of every op that declares attributes."""
    found: dict[str, tuple[gc.Graph, gc.Node]] = {}
    for case in CASES:
        arrays = make_args(case, case.dtypes[-1])
        # The text IR spells out constants of up to 16 elements only: where the gradient
        # brings a larger one (a transform matrix), the op is sampled without it.
        for with_grad in (True, False):
            with gc.Graph("sample") as g:
                nodes = [gc.placeholder(a.shape, str(a.dtype), name=f"in{i}")
                         for i, a in enumerate(arrays)]
                out = case.build(*nodes)
                if with_grad and case.grad and out.dtype.is_float:
                    gc.grad(gc.sum(out), [n for n in nodes if n.dtype.is_float])
            if all(v.size <= 16 for v in g.constants.values()):
                break
        for n in g.nodes:
            if registry.OPS[n.op].attrs and n.op not in found and n.op != "variable":
                found[n.op] = (g, n)
    return found


SAMPLES = _sample_nodes()


def _variants(op: str) -> list[tuple[str, dict[str, Any]]]:
    """(the attribute at fault, attrs) for every malformed version of the sample node's
    attributes."""
    node = SAMPLES[op][1]
    good = dict(node.attrs)
    out: list[tuple[str, dict[str, Any]]] = [("bogus", {**good, "bogus": 1})]
    for spec in registry.OPS[op].attrs:
        if spec.default is REQUIRED:
            out.append((spec.name, {k: v for k, v in good.items() if k != spec.name}))
        for kind, value in WRONG.items():
            fits = kind in FITS[spec.kind] and not (kind == "nan" and spec.finite)
            if not fits or spec.kind == Kind.STR:
                out.append((spec.name, {**good, spec.name: value}))
        if spec.low is not None and spec.kind in (Kind.INT, Kind.INTS, Kind.INT_ROWS):
            low = int(spec.low) - 1
            if spec.kind == Kind.INT:
                bad: Any = low
            elif spec.kind == Kind.INTS:
                bad = (low,) * max(len(good[spec.name]), 1)
            else:
                bad = ((low,) * (spec.width or 2),) * (spec.length or 1)
            out.append((spec.name, {**good, spec.name: bad}))
    return out


def test_every_op_with_attributes_is_sampled() -> None:
    declared = {n for n, op in registry.OPS.items() if op.attrs} - {"variable"}
    assert declared == set(SAMPLES)


def test_samples_hold_canonical_attributes() -> None:
    for op, (_, node) in SAMPLES.items():
        assert registry.OPS[op].check_attrs(node.attrs) == node.attrs, op


@pytest.mark.parametrize("op", sorted(SAMPLES))
def test_malformed_attributes_are_refused_by_the_declaration(op: str) -> None:
    for name, attrs in _variants(op):
        with pytest.raises(AttrError) as info:
            registry.OPS[op].check_attrs(attrs)
        assert repr(name) in str(info.value), (op, name, attrs, str(info.value))


def _line_of(text: str, name: str) -> int:
    return next(i for i, line in enumerate(text.splitlines()) if line.startswith(f"%{name} "))


@pytest.mark.parametrize("op", sorted(SAMPLES))
def test_text_ir_readers_refuse_malformed_attributes(op: str) -> None:
    graph, node = SAMPLES[op]
    lines = format_graph(graph).splitlines()
    at = _line_of("\n".join(lines), node.name)
    head, _, rest = lines[at].partition(" {")
    tail = rest[rest.index("} : ") + 1:] if rest else lines[at][len(head):]
    for _, attrs in _variants(op):
        body = ", ".join(f"{k}={format_value(v)}" for k, v in sorted(attrs.items()))
        lines[at] = f"{head} {{{body}}}{tail}" if body else f"{head}{tail}"
        with pytest.raises(SerializationError, match=rf"line {at + 1}.*attribute"):
            parse_graph("\n".join(lines))


@pytest.mark.parametrize("op", sorted(SAMPLES))
def test_json_readers_refuse_malformed_attributes(op: str) -> None:
    graph, node = SAMPLES[op]
    doc = graph_to_json(graph, "graphc-graph", 1)
    for name, attrs in _variants(op):
        bad = copy.deepcopy(doc)
        bad_item = next(i for i in bad["nodes"] if i["name"] == node.name)
        bad_item["attrs"] = graph_to_json(_one_node_graph(op, attrs), "graphc-graph",
                                          1)["nodes"][0]["attrs"]
        with pytest.raises(SerializationError, match="attribute") as info:
            graph_from_json(bad, lambda name, t: np.zeros(t.shape, t.dtype.np))
        assert node.name in str(info.value) and name in str(info.value), (op, attrs)


def _one_node_graph(op: str, attrs: dict[str, Any]) -> gc.Graph:
    """A graph holding one (unchecked) node of `op` with `attrs`: only to encode them."""
    with gc.Graph("enc") as g:
        g.add_node(op, (), attrs, TensorType((), gc.float32), name="n")
    return g


def test_verify_and_the_builder_check_attributes() -> None:
    with gc.Graph("g") as g:
        x = gc.placeholder((3,), gc.float32, name="x")
        g.add_node("leaky_relu", (x,), {"alpha": "x"}, x.type, name="bad")
    with pytest.raises(VerifyError, match="attribute 'alpha': expected a float"):
        gc.verify(g)
    with gc.Graph("h"):
        y = gc.placeholder((3,), gc.float32)
        with pytest.raises(AttrError, match="attribute 'approximate'") as info:
            gc.gelu(y, approximate="fast")
        assert info.value.op == "gelu" and info.value.loc is not None


def test_defaults_fill_in_and_values_normalize() -> None:
    specs = (AttrSpec("transpose_a", Kind.BOOL, default=False), AttrSpec("alpha", Kind.FLOAT),
             AttrSpec("shape", Kind.INTS, low=0))
    attrs = check_attrs("op", specs, {"alpha": 2, "shape": [np.int64(3), 4]})
    assert dict(attrs) == {"alpha": 2.0, "shape": (3, 4), "transpose_a": False}
    assert type(attrs["alpha"]) is float and type(attrs["shape"][0]) is int
    # A matmul read from text without its transposes gets the declared defaults.
    text = ('graph "g"\n%a = placeholder : f32[2,3]\n%b = placeholder : f32[3,4]\n'
            "%c = matmul(%a, %b) : f32[2,4]\n")
    node = parse_graph(text)["c"]
    assert dict(node.attrs) == {"transpose_a": False, "transpose_b": False, "b_panels": 0}
