"""Regions through every walker: verify, the text IR and `.gcg` (round trips of a scan in a
cond in a scan; hostile files with broken regions rejected), passes (kept intact, or
lowered), and the DOT picture."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import graphc as gc
from graphc.errors import GraphcError, SerializationError, VerifyError
from graphc.io.rebuild import value_items
from graphc.io.textir import format_graph, graph_diff, parse_graph
from graphc.ir import Graph, Region
from graphc.options import CompileOptions
from graphc.passes.manager import run_pipeline
from graphc.verify import verify
from graphc.viz.dot import to_dot

ARGS = [np.linspace(-1, 1, 9).reshape(3, 3), np.array([0.3, -0.2, 0.5]),
        np.linspace(0, 1, 15).reshape(5, 3)]


def _nested() -> Graph:
    """A scan whose body holds a cond whose true branch holds a scan, with captures at
    every level and constants inside bodies (one too big to print inline)."""
    with gc.Graph("nested") as g:
        w = gc.placeholder((3, 3), gc.float64, name="w")
        h0 = gc.placeholder((3,), gc.float64, name="h0")
        xs = gc.placeholder((5, 3), gc.float64, name="xs")

        def step(h: gc.Node, x: gc.Node) -> tuple[gc.Node, gc.Node]:
            table = gc.constant(np.arange(20.0), name="table")

            def deep(c: gc.Node) -> gc.Node:
                inner, ys = gc.scan(lambda d, z: (gc.tanh(d @ w + z), d * 0.5), c,
                                    gc.stack([x, x * 2.0]))
                return inner + gc.sum(ys, axis=0)

            (out,) = gc.cond(gc.sum(x) > 0.4, lambda c: (deep(c),),
                             lambda c: (c * 2.0 + table[:3],), h)
            return out, out * x

        h, ys = gc.scan(step, h0, xs)
        g.add_signature("f", [w, h0, xs], [h, ys])
    return g


def _values(g: Graph) -> dict[str, np.ndarray]:
    return {key: (n.graph.constants if n.op == "constant" else n.graph.variables)[n.name]
            for key, n in value_items(g)}


def test_nested_regions_round_trip_through_text() -> None:
    g = _nested()
    verify(g)
    text = format_graph(g)
    assert text.count("region ") == 4 and "nested" in text
    back = parse_graph(text, _values(g))
    assert graph_diff(g, back) is None
    assert format_graph(back) == text
    expected = gc.reference(g, signature="f")(*ARGS)
    for a, b in zip(gc.reference(back, signature="f")(*ARGS), expected):
        np.testing.assert_array_equal(a, b)


def test_nested_regions_round_trip_through_gcg(tmp_path: Path) -> None:
    g = _nested()
    gc.save(g, tmp_path / "n.gcg")
    back = gc.load(tmp_path / "n.gcg")
    assert graph_diff(g, back) is None
    names = zipfile.ZipFile(tmp_path / "n.gcg").namelist()
    assert "values/scan@0@table.npy" in names  # a body constant under its scoped key


def test_a_body_constant_needs_its_scoped_value() -> None:
    g = _nested()
    values = _values(g)
    del values["scan@0@table"]
    with pytest.raises(SerializationError, match="scan@0@table"):
        parse_graph(format_graph(g), values)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t[:t.rindex("\n}\n")], "not closed"),
    (lambda t: t.replace("-> (%get, %mul", "-> (%nowhere, %mul", 1), "nowhere"),
    (lambda t: t.replace("  region \"scan_body\" (%w, %arg, %arg_1)",
                         "  region \"scan_body\" (%w, %arg)", 1), "not one of its params"),
    (lambda t: t.replace("%xs) {", "%h0) {", 1), "xs 0"),
    (lambda t: t + "}\n", "closes no bodies"),
    (lambda t: t.replace("%w = placeholder : f64[3,3]", "region \"r\" () -> ()", 1),
     "outside the bodies"),
])
def test_broken_regions_in_text_are_serialization_errors(edit: Any, message: str) -> None:
    text = format_graph(_nested())
    with pytest.raises(SerializationError, match=message):
        parse_graph(edit(text), _values(_nested()))


def _gcg_doc(path: Path) -> dict[str, Any]:
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("graph.json"))


def _rewrite(path: Path, doc: dict[str, Any]) -> None:
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members["graph.json"] = json.dumps(doc).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _scan_item(doc: dict[str, Any]) -> dict[str, Any]:
    return next(n for n in doc["nodes"] if n["op"] == "scan")


def _set_region_key(key: str, value: Any) -> Any:
    def edit(doc: dict[str, Any]) -> None:
        _scan_item(doc)["regions"][0][key] = value
    return edit


def _drop_regions(doc: dict[str, Any]) -> None:
    del _scan_item(doc)["regions"]


def _outer_reference(doc: dict[str, Any]) -> None:
    body = _scan_item(doc)["regions"][0]["nodes"]
    reader = next(n for n in body if n["inputs"])
    reader["inputs"][0] = "xs"  # a node of the outer graph: bodies are closed


def _param_not_placeholder(doc: dict[str, Any]) -> None:
    region = _scan_item(doc)["regions"][0]
    reader = next(n for n in region["nodes"] if n["op"] == "cond")
    region["params"][0] = reader["name"]


def _deep(doc: dict[str, Any]) -> None:
    item = _scan_item(doc)
    for _ in range(40):
        item = {**item, "regions": [{"name": "b", "params": [], "results": [],
                                     "nodes": [item]}]}
    doc["nodes"] = [*doc["nodes"][:3], item]


@pytest.mark.parametrize("edit", [
    _set_region_key("params", ["nothing"]), _set_region_key("results", []), _drop_regions,
    _outer_reference, _param_not_placeholder, _set_region_key("extra", 1), _deep,
], ids=["unknown param", "no results", "no regions", "outer reference",
        "param not a placeholder", "unknown key", "too deep"])
def test_hostile_gcg_with_broken_regions_is_rejected(tmp_path: Path, edit: Any) -> None:
    path = tmp_path / "n.gcg"
    gc.save(_nested(), path)
    doc = _gcg_doc(path)
    edit(doc)
    _rewrite(path, doc)
    with pytest.raises(GraphcError):
        gc.load(path)


def test_verify_rejects_a_body_that_is_not_closed() -> None:
    g = _nested()
    scan = next(n for n in g.nodes if n.op == "scan")
    region = scan.regions[0]
    extra = region.graph.add_node("placeholder", (), {}, region.params[0].type, name="stray")
    assert extra.graph is region.graph
    with pytest.raises(VerifyError, match="not one of its params"):
        verify(g)


def test_verify_rejects_a_body_whose_result_type_changed() -> None:
    with gc.Graph("g") as g:
        xs = gc.placeholder((4, 2), name="xs")
        c, _ = gc.scan(lambda c, x: (c + x, c), gc.constant(np.zeros(2, np.float32)), xs)
    scan = c.inputs[0]
    body = scan.regions[0]
    with body.graph:
        wider = gc.concat([body.results[0], body.results[0]])
    broken = Region(body.graph, body.params, (wider, body.results[1]))
    object.__setattr__(scan, "regions", (broken,))
    with pytest.raises(VerifyError, match="carry"):
        verify(g)


@pytest.mark.parametrize("pipeline", ["simplify", "constant_fold", "cse", "prune",
                                      "simplify,constant_fold,cse,prune"])
def test_passes_keep_regions_intact(pipeline: str) -> None:
    g = _nested()
    expected = gc.reference(g, signature="f")(*ARGS)
    result = run_pipeline(g, "f", CompileOptions(pipeline=pipeline, verify_each=True))
    assert any(n.regions for n in result.graph.nodes)
    got = gc.reference(result.graph, result.signature.inputs, result.signature.outputs)(*ARGS)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


def test_cse_merges_loops_only_with_the_same_body() -> None:
    with gc.Graph("g") as g:
        xs = gc.placeholder((4, 2), name="xs")
        init = gc.constant(np.zeros(2, np.float32))
        a, _ = gc.scan(lambda c, x: (c + x, c), init, xs)
        b, _ = gc.scan(lambda c, x: (c - x, c), init, xs)
        g.add_signature("f", [xs], [a, b])
    result = run_pipeline(g, "f", CompileOptions(pipeline="cse"))
    assert sum(1 for n in result.graph.nodes if n.op == "scan") == 2
    x = np.arange(8, dtype=np.float32).reshape(4, 2)
    a_v, b_v = gc.reference(result.graph, result.signature.inputs,
                            result.signature.outputs)(x)
    np.testing.assert_array_equal(a_v, x.sum(0))
    np.testing.assert_array_equal(b_v, -x.sum(0))


def test_lower_control_keeps_loops_and_the_same_values() -> None:
    g = _nested()
    expected = gc.reference(g, signature="f")(*ARGS)
    result = run_pipeline(g, "f", CompileOptions(pipeline="lower_control", verify_each=True))
    # The scan runs natively (its body, holding the cond, is lowered when it is compiled).
    assert [n.op for n in result.graph.nodes if n.regions] == ["scan"]
    got = gc.reference(result.graph, result.signature.inputs, result.signature.outputs)(*ARGS)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    compiled = gc.compile(g, signature="f")(*ARGS)
    for a, b in zip(compiled, expected):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_dot_draws_bodies_as_clusters() -> None:
    text = to_dot(_nested())
    assert text.count("subgraph \"cluster_") == 4
    assert '"cluster_scan@0@cond@0@scan@0@"' in text
    assert '"scan" -> "scan@0@w" [style="dotted"' in text


def test_graphc_dump_prints_regions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from graphc.cli.main import main

    gc.save(_nested(), tmp_path / "n.gcg")
    assert main(["dump", str(tmp_path / "n.gcg")]) in (0, None)
    out = capsys.readouterr().out
    assert out == format_graph(gc.load(tmp_path / "n.gcg"))
