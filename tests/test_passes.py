"""The pass manager and the passes constant_fold, cse, prune, simplify (builder-made graphs).

Golden text-IR tests live in test_pass_golden.py, random-graph property tests in
test_pass_properties.py, and the MLP training graph in test_pass_mlp.py. The helpers
`random_feeds` and `evaluate` are shared with them.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
import pytest

import graphc as gc
from graphc.errors import CompileError, GraphcError, GraphNameError, GraphStructureError
from graphc.io.textir import graph_diff, parse_graph
from graphc.ir import Graph, Node, Signature
from graphc.options import CompileOptions
from graphc.passes import PASSES
from graphc.passes.manager import (
    DEFAULT_PIPELINE,
    Pipeline,
    format_pass_list,
    run_pipeline,
    select_signature,
)
from graphc.passes.rewrite import PassContext, PassDef, Pending, Rebuilder
from graphc.passes.simplify import RULES
from graphc.runtime.reference import evaluate as evaluate_nodes

# --- shared helpers -------------------------------------------------------------------------


def random_feeds(sig: Signature, seed: int = 0) -> dict[str, np.ndarray]:
    """A value for each input: floats in [0.5, 2) (inside every op's domain), small ints."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for node in sig.inputs:
        if node.dtype.is_float:
            feeds[node.name] = rng.uniform(0.5, 2.0, node.shape).astype(node.dtype.np)
        elif node.dtype.is_int:
            feeds[node.name] = rng.integers(0, 3, node.shape).astype(node.dtype.np)
        else:
            feeds[node.name] = rng.random(node.shape) < 0.5
    return feeds


def evaluate(sig: Signature, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs then new variable values (by update order), without changing any variable."""
    values = evaluate_nodes(sig, feeds)
    return [values[n] for n in sig.outputs] + [values[v] for _, v in sig.updates]


def assert_same_results(before: Signature, after: Signature, seed: int = 0,
                        rtol: float = 1e-5) -> None:
    feeds = random_feeds(before, seed)
    for x, y in zip(evaluate(before, feeds), evaluate(after, feeds), strict=True):
        assert x.shape == y.shape and x.dtype == y.dtype
        np.testing.assert_allclose(y, x, rtol=rtol, atol=1e-6)


def run(g: Graph, sig: Signature, pipeline: str, **options: object) -> tuple[Graph, Signature]:
    result = run_pipeline(g, sig, CompileOptions(pipeline=pipeline, **options))  # type: ignore[arg-type]
    return result.graph, result.signature


def ops_of(g: Graph) -> list[str]:
    return [n.op for n in g.nodes]


# --- pipelines ------------------------------------------------------------------------------


def test_pipeline_parses_and_prints_back() -> None:
    p = Pipeline.parse(" simplify , cse,prune ")
    assert p.passes == ("simplify", "cse", "prune")
    assert str(p) == "simplify,cse,prune"
    assert Pipeline.parse(str(p)) == p
    assert Pipeline.parse("").passes == ()
    assert Pipeline.parse(None) == Pipeline.parse(DEFAULT_PIPELINE)
    assert str(Pipeline.parse(None)) == DEFAULT_PIPELINE


def test_unknown_pass_lists_known_passes() -> None:
    with pytest.raises(GraphcError) as err:
        Pipeline.parse("simplify,fold")
    message = str(err.value)
    assert "unknown pass 'fold'" in message and "'simplify,fold'" in message
    for name in PASSES:
        assert name in message
    with pytest.raises(GraphcError, match="empty pass name"):
        Pipeline.parse("simplify,,cse")


def test_registry_names_match_modules() -> None:
    assert set(PASSES) == {"qdq", "lower_control", "loop_hoist", "loop_sink", "loop_unroll",
                           "simplify", "constant_fold", "integer_matmul", "attention",
                           "winograd", "cse", "prune"}
    for name, p in PASSES.items():
        assert p.name == name
        assert p.run.__module__ == f"graphc.passes.{name}"


def test_pass_list_shows_passes_default_and_rule_equations() -> None:
    text = format_pass_list()
    for name, p in PASSES.items():
        assert f"{name}" in text and p.doc in text
    assert DEFAULT_PIPELINE in text
    for rule in RULES:
        assert (rule.__doc__ or "").strip().splitlines()[0] in text


def test_every_rule_documents_its_equation() -> None:
    for rule in RULES:
        first = (rule.__doc__ or "").strip().splitlines()[0]
        assert "->" in first, f"{rule.__name__}: first docstring line must be the equation"


# --- the manager ----------------------------------------------------------------------------


def _small() -> tuple[Graph, Signature]:
    with gc.Graph("small") as g:
        x = gc.placeholder((3,), name="x")
        w = gc.variable(np.arange(3, dtype=np.float32), name="w")
        y = gc.add(x * 1.0, w, name="y")
        z = gc.add(x * 1.0, w, name="z")  # a duplicate of y once x*1 is gone
        out = gc.mul(y, z, name="out")
        gc.exp(x, name="dead")
    return g, g.add_signature("main", [x], [out], {w: w + out})


def test_report_records_counts_time_and_rule_hits() -> None:
    g, sig = _small()
    result = run_pipeline(g, sig, CompileOptions())
    report = result.report
    first_sweep = [p for p in report.passes if p.sweep == 1]
    assert [p.name for p in first_sweep] == list(Pipeline.parse(None).passes)
    assert [p.sweep for p in report.passes] == sorted(p.sweep for p in report.passes)
    assert report.passes[0].nodes_before == len(g.nodes)
    for prev, cur in zip(report.passes, report.passes[1:]):
        assert cur.nodes_before == prev.nodes_after
    assert report.passes[-1].nodes_after == len(result.graph.nodes) < len(g.nodes)
    assert all(p.seconds >= 0 for p in report.passes)
    hits = {(p.name, r.rule): r for p in report.passes for r in p.rules}
    assert hits["simplify", "mul_one"].hits == 2
    assert hits["simplify", "mul_one"].where == "graphc.passes.simplify:mul_one"
    assert hits["cse", "merge_node"].hits == 1
    table = report.format_table()
    assert table.splitlines()[0].split() == ["pass", "before", "after", "delta", "ms", "sweeps"]
    assert "graphc.passes.simplify:mul_one" in table
    total = next(line.split() for line in table.splitlines() if line.startswith("total"))
    assert total[1:4] == [str(len(g.nodes)), str(len(result.graph.nodes)),
                          f"{len(result.graph.nodes) - len(g.nodes):+d}"]


def test_input_graph_is_untouched_and_variables_are_shared() -> None:
    g, sig = _small()
    nodes = list(g.nodes)
    result = run_pipeline(g, sig)
    assert g.nodes == nodes and g.signatures["main"] is sig
    assert result.graph is not g and result.graph.name == g.name
    assert result.graph.variables["w"] is g.variables["w"]
    assert list(result.graph.signatures) == ["main"]
    new_sig = result.signature
    assert [n.name for n in new_sig.inputs] == ["x"]
    assert new_sig.updates[0][0].name == "w" and new_sig.updates[0][0].op == "variable"
    assert_same_results(sig, new_sig)


def test_names_and_locations_survive_and_replacements_inherit_them() -> None:
    with gc.Graph("locs") as g:
        x = gc.placeholder((4,), name="x")
        y = gc.pow(x, 2.0, name="y")
        out = gc.exp(y, name="out")
    sig = g.add_signature("main", [x], [out])
    new_g, _ = run(g, sig, "simplify,prune")
    assert [(n.name, n.op) for n in new_g.nodes] == [("x", "placeholder"), ("y", "mul"),
                                                      ("out", "exp")]
    for node in new_g.nodes:
        assert node.loc == g[node.name].loc
    assert new_g["y"].loc == y.loc  # the mul replaced pow: it keeps pow's line


def test_print_after_a_pass_prints_parseable_text_ir() -> None:
    g, sig = _small()
    stream = io.StringIO()
    result = run_pipeline(g, sig, CompileOptions(print_after=("prune",), print_stream=stream))
    text = stream.getvalue()
    assert text.count("# ---- after") == 1 and "after prune" in text
    reparsed = parse_graph(text, {"w": g.variables["w"]})
    assert [n.name for n in reparsed.nodes] == [n.name for n in result.graph.nodes]


def test_print_after_all_and_callback() -> None:
    g, sig = _small()
    stream = io.StringIO()
    report = run_pipeline(g, sig, CompileOptions(print_after_all=True, print_stream=stream)).report
    assert stream.getvalue().count("# ---- after") == len(report.passes)
    seen: list[tuple[str, int]] = []
    run_pipeline(g, sig, CompileOptions(
        print_after=("cse",), print_callback=lambda name, graph, s: seen.append(
            (name, len(graph.nodes)))))
    assert {name for name, _ in seen} == {"cse"}


def test_print_after_names_must_be_passes_of_the_pipeline() -> None:
    g, sig = _small()
    with pytest.raises(GraphcError, match="unknown pass 'cs'"):
        run_pipeline(g, sig, CompileOptions(print_after=["cs"]))
    with pytest.raises(GraphcError, match="not in the pipeline"):
        run_pipeline(g, sig, CompileOptions(pipeline="cse", print_after=["prune"]))


def test_time_passes_writes_the_table() -> None:
    g, sig = _small()
    stream = io.StringIO()
    result = run_pipeline(g, sig, CompileOptions(time_passes=True, print_stream=stream))
    assert stream.getvalue() == result.report.format_table()


def test_empty_pipeline_returns_the_input() -> None:
    g, sig = _small()
    result = run_pipeline(g, sig, CompileOptions(pipeline=""))
    assert result.graph is g and result.signature is sig and result.report.passes == []


def _boom(graph: Graph, sig: Signature, ctx: PassContext) -> tuple[Graph, Signature]:
    raise ValueError("kaboom")


def _located(graph: Graph, sig: Signature, ctx: PassContext) -> tuple[Graph, Signature]:
    node = sig.outputs[0]
    raise GraphcError("bad node", op=node.op, loc=node.loc)


def _rebinds(graph: Graph, sig: Signature, ctx: PassContext) -> tuple[Graph, Signature]:
    new_graph, new_sig = Rebuilder(graph).run().finish(sig)
    new_graph.variables.bind("w", np.array(graph.variables["w"]))
    return new_graph, new_sig


def _identity(graph: Graph, sig: Signature, ctx: PassContext) -> tuple[Graph, Signature]:
    return graph, sig


@pytest.mark.parametrize(("fn", "expected"), [
    (_boom, "pass 'cse' failed: ValueError: kaboom"),
    (_located, "pass 'cse' failed: mul: bad node"),
    (_rebinds, "pass 'cse' failed: its result does not verify: variable %w is bound to a new"),
    (_identity, "pass 'cse' failed: its result does not verify: the pass returned its input"),
])
def test_failures_inside_a_pass_name_the_pass(monkeypatch: pytest.MonkeyPatch, fn: object,
                                              expected: str) -> None:
    g, sig = _small()
    monkeypatch.setitem(PASSES, "cse", PassDef("cse", fn, "test"))  # type: ignore[arg-type]
    with pytest.raises(CompileError) as err:
        run_pipeline(g, sig, CompileOptions(pipeline="simplify,cse"))
    assert str(err.value).startswith(expected)
    if fn is _located:
        assert err.value.loc == sig.outputs[0].loc


def test_a_rule_that_changes_the_type_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    def widen(p: Pending, rb: Rebuilder) -> Node | None:  # a buggy rule: changes the type
        return p.inputs[0] if p.op == "sum" else None

    monkeypatch.setattr("graphc.passes.simplify.RULES", [widen])
    with gc.Graph("bug") as g:
        x = gc.placeholder((3,), name="x")
        s = gc.sum(x, name="s")
    with pytest.raises(CompileError, match=r"pass 'simplify' failed: rule .*:.*widen replaced "
                                           r"%s \(sum, f32\[\]\) by %x \(placeholder, f32\[3\]\)"):
        run(g, g.add_signature("main", [x], [s]), "simplify")


def test_signature_selection() -> None:
    with gc.Graph("sel") as g:
        x = gc.placeholder((2,), name="x")
        gc.placeholder((2,), name="unused")
        a = gc.exp(x, name="a")
        gc.log(a, name="b")
        gc.neg(x, name="c")
    default = select_signature(g)
    assert default.name == "default"
    assert [n.name for n in default.inputs] == ["x", "unused"]
    assert [n.name for n in default.outputs] == ["b", "c"]
    sig = g.add_signature("only", [x], [a])
    assert select_signature(g) is sig and select_signature(g, "only") is sig
    with pytest.raises(GraphNameError, match=r"no signature 'nope' \(signatures: only\)"):
        select_signature(g, "nope")
    assert run_pipeline(g, "only").signature.outputs[0].name == "a"


def test_signature_of_another_graph_is_rejected() -> None:
    g, _ = _small()
    _, other_sig = _small()
    with pytest.raises(GraphStructureError, match="not a node of graph 'small'"):
        run_pipeline(g, other_sig)


def test_options_are_frozen_and_checked() -> None:
    opts = CompileOptions(print_after=["cse"])
    assert opts.print_after == ("cse",) and opts.verify_each
    with pytest.raises(AttributeError):
        opts.pipeline = "cse"  # type: ignore[misc]
    with pytest.raises(GraphcError, match="max_iterations"):
        CompileOptions(max_iterations=0)


# --- constant_fold --------------------------------------------------------------------------


def test_constant_fold_collapses_constant_subgraphs() -> None:
    with gc.Graph("fold") as g:
        x = gc.placeholder((3,), name="x")
        c = gc.constant(np.array([1.0, 2.0, 3.0], np.float32), name="c")
        k = gc.exp(gc.neg(c), name="k")
        y = gc.mul(x, k, name="y")
    sig = g.add_signature("main", [x], [y])
    new_g, new_sig = run(g, sig, "constant_fold,prune")
    assert ops_of(new_g) == ["placeholder", "constant", "mul"]
    assert new_g["k"].op == "constant" and new_g["k"].loc == k.loc
    np.testing.assert_array_equal(new_g.constants["k"], np.exp(-np.array([1, 2, 3], np.float32)))
    assert new_g.constants["k"].dtype == np.float32 and not new_g.constants["k"].flags.writeable
    assert_same_results(sig, new_sig)


def test_constant_fold_respects_the_size_threshold() -> None:
    with gc.Graph("big") as g:
        x = gc.placeholder((3, 3), name="x")
        b = gc.broadcast_to(gc.constant(np.arange(3, dtype=np.float32)), (3, 3), name="b")
        e = gc.exp(b, name="e")
        y = gc.mul(x, e, name="y")
    sig = g.add_signature("main", [x], [y])
    small, _ = run(g, sig, "constant_fold", fold_max_elements=8)
    assert small["e"].op == "exp"
    large, _ = run(g, sig, "constant_fold", fold_max_elements=9)
    assert large["e"].op == "constant"
    np.testing.assert_array_equal(large.constants["e"],
                                  np.exp(np.broadcast_to(np.arange(3, dtype=np.float32), (3, 3))))
    assert large["b"].op == "broadcast_to"  # a broadcast itself is never materialized


def test_constant_fold_keeps_uniform_results_as_broadcast_scalars() -> None:
    with gc.Graph("uniform") as g:
        zeros = gc.broadcast_to(gc.constant(np.float32(0.0)), (2, 3))
        signs = gc.constant(np.array([0.0, -0.0], np.float32))
        y = gc.exp(zeros, name="y")
        z = gc.neg(signs, name="z")
    sig = g.add_signature("main", [], [y, z])
    new_g, new_sig = run(g, sig, "constant_fold,prune")
    out_y, out_z = new_sig.outputs
    assert out_y.op == "broadcast_to" and out_y.name == "y" and out_y.loc == y.loc
    assert new_g.constants[out_y.inputs[0].name].shape == ()
    assert out_z.op == "constant"  # -0.0 and 0.0 differ in bits: not uniform
    assert list(np.signbit(new_g.constants["z"])) == [True, False]
    assert_same_results(sig, new_sig)


def test_constant_fold_skips_random_ops_and_sources() -> None:
    with gc.Graph("rand") as g:
        r = gc.random_uniform((4,), seed=3, name="r")
        v = gc.variable(np.ones(4, np.float32), name="v")
        y = gc.add(r, v, name="y")
    sig = g.add_signature("main", [], [y])
    new_g, _ = run(g, sig, "constant_fold")
    assert new_g["r"].op == "random_uniform" and new_g["y"].op == "add"
    assert new_g["v"].op == "variable"


def test_constant_fold_leaves_a_failing_reference_to_run_time() -> None:
    with gc.Graph("oob") as g:
        table = gc.constant(np.arange(4, dtype=np.float32), name="table")
        index = gc.add(gc.constant(np.int32(2)), gc.constant(np.int32(5)), name="index")
        y = gc.take(table, index, name="y")
    sig = g.add_signature("main", [], [y])
    new_g, _ = run(g, sig, "constant_fold")
    assert new_g["index"].op == "constant" and int(new_g.constants["index"]) == 7
    assert new_g["y"].op == "take"  # out of range: left for the runtime to report


# --- cse ------------------------------------------------------------------------------------


def test_cse_merges_chains_in_one_sweep_and_keeps_the_first() -> None:
    with gc.Graph("cse") as g:
        x = gc.placeholder((3,), name="x")
        a1 = gc.exp(x, name="a1")
        a2 = gc.exp(x, name="a2")
        b1 = gc.add(a1, x, name="b1")
        b2 = gc.add(a2, x, name="b2")
        b3 = gc.add(x, a2, name="b3")  # operands swapped: not the same node
        out = gc.concat([b1, b2, b3], name="out")
    sig = g.add_signature("main", [x], [out])
    result = run_pipeline(g, sig, CompileOptions(pipeline="cse"))
    new_g = result.graph
    assert [n.name for n in new_g["out"].inputs] == ["b1", "b1", "b3"]
    assert [n.name for n in new_g["b3"].inputs] == ["x", "a1"]
    assert "a2" not in new_g and "b2" not in new_g
    assert result.report.passes[0].rules[0].hits == 2
    assert_same_results(sig, result.signature)


def test_cse_merges_constants_by_dtype_shape_and_bytes() -> None:
    with gc.Graph("consts") as g:
        cs = [gc.constant(np.float32(v), name=f"c{i}")
              for i, v in enumerate([1.0, 1.0, 0.0, -0.0, np.nan, np.nan])]
        c64 = gc.constant(np.float64(1.0), name="c64")
        row = gc.constant(np.ones(1, np.float32), name="row")
        out = gc.concat([gc.reshape(c, (1,)) for c in cs] + [row], name="out")
        out64 = gc.exp(c64, name="out64")
    sig = g.add_signature("main", [], [out, out64])
    new_g, _ = run(g, sig, "cse")
    constants = [n.name for n in new_g.nodes if n.op == "constant"]
    assert constants == ["c0", "c2", "c3", "c4", "c64", "row"]


def test_cse_never_merges_placeholders_or_variables() -> None:
    with gc.Graph("state") as g:
        x1 = gc.placeholder((2,), name="x1")
        x2 = gc.placeholder((2,), name="x2")
        v1 = gc.variable(np.zeros(2, np.float32), name="v1")
        v2 = gc.variable(np.zeros(2, np.float32), name="v2")
        out = gc.concat([x1, x2, v1, v2], name="out")
    sig = g.add_signature("main", [x1, x2], [out])
    new_g, _ = run(g, sig, "cse")
    assert [n.name for n in new_g["out"].inputs] == ["x1", "x2", "v1", "v2"]


# --- prune ----------------------------------------------------------------------------------


def test_prune_keeps_inputs_and_update_targets_only() -> None:
    with gc.Graph("prune") as g:
        x = gc.placeholder((2,), name="x")
        unused = gc.placeholder((2,), name="unused")
        counter = gc.variable(np.zeros((), np.int32), name="counter")
        gc.variable(np.zeros(2, np.float32), name="stale")
        y = gc.exp(x, name="y")
        gc.log(y, name="dead")
        one = gc.constant(np.int32(7), name="seven")  # the new value ignores the old one
    sig = g.add_signature("main", [x, unused], [y], {counter: one})
    new_g, new_sig = run(g, sig, "prune")
    assert [n.name for n in new_g.nodes] == ["x", "unused", "counter", "y", "seven"]
    assert list(new_g.variables) == ["counter"]
    assert new_sig.updates[0][0] is new_g["counter"]


# --- simplify: guards (the positive cases are golden files) ---------------------------------


def _simplified(build: object, shape: tuple[int, ...] = (3,), dtype: str = "float32"
                ) -> tuple[Graph, Graph, Signature, Signature]:
    with gc.Graph("s") as g:
        x = gc.placeholder(shape, dtype, name="x")
        y = build(x)  # type: ignore[operator]
    sig = g.add_signature("main", [x], [y])
    new_g, new_sig = run(g, sig, "simplify,prune")
    return g, new_g, sig, new_sig


@pytest.mark.parametrize("build", [
    lambda x: x * 2.0,
    lambda x: x * np.array([1.0, 2.0, 1.0], np.float32),
    lambda x: x + 1.0,
    lambda x: x / 2.0,
    lambda x: x ** 3.0,
    lambda x: x * np.array(np.nan, np.float32),
    lambda x: gc.exp(gc.log(x)),
    lambda x: gc.transpose(gc.reshape(x, (3, 1)), (1, 0)),
    lambda x: x[::2],
], ids=["x*2", "x*[1,2,1]", "x+1", "x/2", "x**3", "x*nan", "exp(log(x))", "transpose",
        "x[::2]"])
def test_simplify_leaves_non_matching_nodes_alone(build: object) -> None:
    g, new_g, sig, new_sig = _simplified(build)
    assert ops_of(new_g) == ops_of(g)
    assert_same_results(sig, new_sig)


def test_x_times_zero_is_kept_for_floats_and_folded_for_ints() -> None:
    _, floats, *_ = _simplified(lambda x: x * 0.0)
    assert floats[floats.signatures["main"].outputs[0].name].op == "mul"
    _, _, sig, new_sig = _simplified(lambda x: x * 0, dtype="int32")
    out = new_sig.outputs[0]
    assert out.op == "broadcast_to" and out.inputs[0].op == "constant"
    assert_same_results(sig, new_sig)


def test_mul_one_that_broadcasts_becomes_broadcast_to() -> None:
    _, _, sig, new_sig = _simplified(lambda x: x * np.ones((2, 3), np.float32))
    out = new_sig.outputs[0]
    assert out.op == "broadcast_to" and out.inputs[0].name == "x" and out.shape == (2, 3)
    assert_same_results(sig, new_sig)


def test_sum_over_other_axes_than_the_broadcast_is_kept() -> None:
    def build(x: Node) -> Node:
        return gc.sum(gc.broadcast_to(x, (4, 3)), axis=1)

    g, new_g, _, _ = _simplified(build)
    assert ops_of(new_g) == ops_of(g)


def test_simplify_reaches_a_fixed_point_within_the_bound() -> None:
    def build(x: Node) -> Node:
        return gc.neg(gc.neg(gc.neg(gc.neg(x * 1.0) * 1.0)))

    g, _, sig, new_sig = _simplified(build)
    assert new_sig.outputs[0].name == "x"
    result = run_pipeline(g, sig, CompileOptions(pipeline="simplify"))
    assert result.report.passes[0].iterations == 2  # one sweep rewrites, one confirms
    bounded = run_pipeline(g, sig, CompileOptions(pipeline="simplify", max_iterations=1))
    assert bounded.report.passes[0].iterations == 1


def test_the_default_pipeline_reaches_a_fixed_point() -> None:
    """A later pass can give an earlier one work (constant_fold makes relu(-1) a 0 that
    simplify's x + 0 -> x removes): the manager reruns the passes it enables until nothing
    changes, so a second run of the pipeline changes nothing."""
    with Graph("fixed") as g:
        x = gc.placeholder((3,), gc.float32, name="x")
        out = gc.relu(gc.constant(np.float32(-1.0))) + x
    sig = g.add_signature("main", [x], [out])
    once = run_pipeline(g, sig)
    assert len(once.graph.nodes) == 1 and once.signature.outputs[0].op == "placeholder"
    # qdq and the four loop passes run once first; nothing gives them work again.
    assert [p.label for p in once.report.passes][12] == "simplify #2"
    twice = run_pipeline(once.graph, once.signature)
    assert graph_diff(twice.graph, once.graph) is None
    # A pass whose enabling passes changed nothing since it ran is not run again.
    assert [p.name for p in twice.report.passes] == list(Pipeline.parse(None).passes)
