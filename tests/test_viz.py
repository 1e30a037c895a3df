"""The pictures of `graphc viz`: fused kernels as DOT clusters (`viz/fused.py`), the memory
plan as SVG (`viz/memory.py`), and the DOT helpers they share (`viz/dotlib.py`).

DOT text is checked by a small DOT parser (`parse_dot`, the subset of the language graphc
writes: attribute statements, nodes, edges, nested subgraphs, quoted strings with Graphviz's
escapes), so these tests need no Graphviz; the ones marked `needs_dot` also run `dot -Tsvg`
and skip without it. SVG is parsed with ElementTree; label boxes are measured with the
text metrics `plan_to_svg` lays them out with (`memory.text_box`).
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import graphc as gc
from graphc import pipeline
from graphc.cli.command import load_model
from graphc.ir import SOURCE_OPS
from graphc.passes.kernels import FusedProgram, Unfused
from graphc.passes.memory_plan import MemoryPlan, Slot, lower_bound
from graphc.viz import memory
from graphc.viz.dot import to_dot
from graphc.viz.dotlib import SOURCE_STYLE, quote
from graphc.viz.fused import fused_to_dot
from graphc.viz.memory import format_bytes, human_bytes, plan_to_svg, text_box, text_width
from tests.test_cli import needs_dot
from tests.test_cli_stages import MLP

SVG = "{http://www.w3.org/2000/svg}"
Box = tuple[float, float, float, float]  # left, top, right, bottom


# --- a DOT parser for what graphc writes ------------------------------------------------------

@dataclass
class Dot:
    """A parsed digraph: ids as written (quotes removed, ``\\"`` unescaped)."""

    name: str = ""
    attrs: dict[str, str] = field(default_factory=dict)
    nodes: dict[str, dict[str, str]] = field(default_factory=dict)
    cluster_of: dict[str, str | None] = field(default_factory=dict)  # where first mentioned
    clusters: dict[str, dict[str, str]] = field(default_factory=dict)
    edges: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    def edge_attrs(self, tail: str, head: str) -> list[dict[str, str]]:
        return [a for t, h, a in self.edges if (t, h) == (tail, head)]


_TOKEN = re.compile(r"\s+|//[^\n]*|(?P<punct>->|--|[{}\[\]=;,])"
                    r"|(?P<id>-?(?:\.\d+|\d+(?:\.\d*)?)|[A-Za-z_\x80-\uffff][\w\x80-\uffff]*)"
                    r'|(?P<quote>")')


def _tokens(text: str) -> list[tuple[str, str]]:
    """("punct" | "id" | "str", value); a quoted string as Graphviz's lexer reads it."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(text):
        m = _TOKEN.match(text, i)
        assert m is not None, f"bad DOT at {i}: {text[i:i + 30]!r}"
        i = m.end()
        if m.group("punct"):
            out.append(("punct", m.group("punct")))
        elif m.group("id"):
            out.append(("id", m.group("id")))
        elif m.group("quote"):
            chars = []
            while True:
                assert i < len(text), "unterminated quoted string"
                c = text[i]
                if c == "\\" and text[i + 1:i + 2] == '"':
                    chars.append('"')
                    i += 2
                elif c == "\\" and text[i + 1:i + 2] == "\\":
                    chars.append("\\\\")  # kept; label escapes are read later (`unescape`)
                    i += 2
                elif c == '"':
                    i += 1
                    break
                else:
                    assert c != "\n", "a raw newline inside a quoted string"
                    chars.append(c)
                    i += 1
            out.append(("str", "".join(chars)))
    return out


def unescape(raw: str) -> str:
    """A label's text: ``\\\\`` is a backslash, ``\\n`` ``\\l`` ``\\r`` line breaks."""
    def one(m: re.Match[str]) -> str:
        c = m.group(1)
        return "\n" if c in "nlr" else "\\" if c == "\\" else m.group(0)

    return re.sub(r"\\(.)", one, raw)


def parse_dot(text: str) -> Dot:
    toks = _tokens(text)
    dot = Dot()
    pos = 0

    def peek() -> tuple[str, str]:
        return toks[pos] if pos < len(toks) else ("end", "")

    def take(value: str | None = None) -> str:
        nonlocal pos
        kind, val = peek()
        assert kind != "end", "unexpected end of DOT text"
        assert value is None or (kind != "str" and val == value), f"expected {value}, got {val}"
        pos += 1
        return val

    def keyword(word: str) -> bool:
        kind, val = peek()
        return kind == "id" and val.lower() == word

    def ident() -> str:
        kind, val = peek()
        assert kind in ("id", "str") and not (kind == "id" and val.lower() in (
            "node", "edge", "graph", "digraph", "subgraph", "strict")), f"not an id: {val}"
        return take()

    def attr_list() -> dict[str, str]:
        attrs: dict[str, str] = {}
        while peek() == ("punct", "["):
            take("[")
            while peek() != ("punct", "]"):
                key = ident()
                take("=")
                attrs[key] = ident()
                if peek() in (("punct", ","), ("punct", ";")):
                    take()
            take("]")
        return attrs

    def mention(node: str, cluster: str | None) -> None:
        dot.nodes.setdefault(node, {})
        dot.cluster_of.setdefault(node, cluster)

    def statements(cluster: str | None, graph_attrs: dict[str, str]) -> None:
        while peek() != ("punct", "}"):
            if keyword("graph") or keyword("node") or keyword("edge"):
                which = take().lower()
                attrs = attr_list()
                if which == "graph":
                    graph_attrs.update(attrs)
            elif keyword("subgraph") or peek() == ("punct", "{"):
                if keyword("subgraph"):
                    take()
                name = ident() if peek() != ("punct", "{") else None
                inner = cluster
                attrs: dict[str, str] = {}
                if name is not None and name.startswith("cluster"):
                    assert name not in dot.clusters, f"two clusters {name}"
                    dot.clusters[name] = attrs
                    inner = name
                take("{")
                statements(inner, attrs)
                take("}")
            else:
                first = ident()
                if peek() == ("punct", "="):
                    take()
                    graph_attrs[first] = ident()
                elif peek() == ("punct", "->"):
                    chain = [first]
                    while peek() == ("punct", "->"):
                        take()
                        chain.append(ident())
                    attrs = attr_list()
                    for node in chain:
                        mention(node, cluster)
                    for tail, head in itertools.pairwise(chain):
                        dot.edges.append((tail, head, attrs))
                else:
                    mention(first, cluster)
                    dot.nodes[first].update(attr_list())
            if peek() == ("punct", ";"):
                take()

    assert keyword("digraph"), "not a digraph"
    take()
    dot.name = ident() if peek() != ("punct", "{") else ""
    take("{")
    statements(None, dot.attrs)
    take("}")
    assert pos == len(toks), "text after the closing brace"
    return dot


def test_the_parser_reads_what_quote_writes() -> None:
    for text in ["plain", 'a "quoted" name', "back\\slash", "ends with \\", "\\", '"',
                 "two\nlines", "literal \\n, not a break", "x\\\"y"]:
        dot = parse_dot(f"digraph {quote(text)} {{ n [label={quote(text)}]; }}\n")
        assert unescape(dot.name) == text
        assert unescape(dot.nodes["n"]["label"]) == text
    with pytest.raises(AssertionError, match="unterminated"):
        parse_dot('digraph g { n [label="open]; }')
    with pytest.raises(AssertionError):
        parse_dot("digraph g { subgraph cluster_a { n; }")  # an unclosed brace


# --- fused kernels as clusters ----------------------------------------------------------------

@pytest.fixture(scope="module")
def lowered(tmp_path_factory: pytest.TempPathFactory) -> pipeline.Lowered:
    """The MLP training step of tests/test_cli_stages.py, lowered to its memory plan."""
    path = tmp_path_factory.mktemp("viz") / "mlp.py"
    path.write_text(MLP)
    graph = load_model(f"{path}:mlp")
    return pipeline.lower(graph, graph.signatures["train"], pipeline.DEFAULT_OPTIONS, "planned")


@pytest.fixture(scope="module")
def program(lowered: pipeline.Lowered) -> FusedProgram:
    assert lowered.fused is not None
    return lowered.fused


def _label(dot: Dot, node: str) -> str:
    return unescape(dot.nodes[node]["label"])


def test_each_kernel_is_a_cluster_of_its_nodes(program: FusedProgram) -> None:
    dot = parse_dot(fused_to_dot(program))
    assert dot.name == program.graph.name
    assert f"{len(program.kernels)} kernels" in unescape(dot.attrs["label"])
    assert set(dot.clusters) == {f"cluster_k{k.index}" for k in program.kernels}
    for k in program.kernels:
        name = f"cluster_k{k.index}"
        label = unescape(dot.clusters[name]["label"])
        assert k.name in label and f"{k.kind.value} kernel" in label
        if k.anchor is not None:
            assert f"anchor %{k.anchor.name}" in label
            assert "bold" in dot.nodes[k.anchor.name]["style"]
        assert {n for n, c in dot.cluster_of.items() if c == name} == {n.name for n in k.nodes}
        for n in k.nodes:
            assert _label(dot, n.name) == f"%{n.name}\n{n.op}\n{n.type}"
    assert len({dot.clusters[c]["fillcolor"] for c in dot.clusters}) > 1  # kinds differ


def test_sources_and_views_are_drawn_outside_the_clusters(program: FusedProgram) -> None:
    dot = parse_dot(fused_to_dot(program))
    outside = {n for n, c in dot.cluster_of.items() if c is None}
    views = {v.name for v in program.views}
    assert views and views <= outside
    sources = outside - views
    read = {i.name for k in program.kernels for i in k.inputs if i.op in SOURCE_OPS}
    assert read and read <= sources
    for name in sources:
        node = program.graph[name]
        assert node.op in SOURCE_OPS
        assert dot.nodes[name]["shape"] == SOURCE_STYLE[node.op]["shape"]
    assert not {n.name for n in program.immediates} & set(dot.nodes)  # inlined scalars
    for view, base in program.views.items():
        assert _label(dot, view.name).startswith(f"%{view.name}\nview of %{base.name}\n")
        [edge] = dot.edge_attrs(base.name, view.name)
        assert edge["dir"] == "back"  # the arrow points at the base


def test_unfused_edges_are_labelled_with_their_reason(program: FusedProgram) -> None:
    dot = parse_dot(fused_to_dot(program))
    kernel_of = {n.name: k for n, k in program.kernel_of.items()}
    reasons = {(u.producer.name, u.consumer.name): u.reason for u in program.unfused}
    assert reasons
    for (producer, consumer), reason in reasons.items():
        labels = [unescape(a.get("label", "")) for a in dot.edge_attrs(producer, consumer)]
        assert labels and all(text.replace("\n", " ") == reason for text in labels)
    for tail, head, attrs in dot.edges:
        kt, kh = kernel_of.get(tail), kernel_of.get(head)
        if kt is not None and kh is not None and kt is not kh:
            assert ("label" in attrs) == ((tail, head) in reasons), (tail, head)
        elif kt is not None and kt is kh:
            assert attrs == {}, (tail, head)  # inside one kernel: plain
    # Every value a kernel node reads arrives by an edge, except inlined scalars.
    for k in program.kernels:
        for n in k.nodes:
            for i in n.inputs:
                if i not in program.immediates:
                    assert dot.edge_attrs(i.name, n.name), (i.name, n.name)


def test_outputs_and_updates_are_marked(program: FusedProgram) -> None:
    dot = parse_dot(fused_to_dot(program))
    for out in program.signature.outputs:
        assert dot.nodes[out.name]["peripheries"] == "2"
    assert program.signature.updates
    for var, new in program.signature.updates:
        [edge] = dot.edge_attrs(new.name, var.name)
        assert edge["style"] == "dashed" and edge["label"] == "update"


def _odd_program() -> FusedProgram:
    """A graph whose name and unfused reasons need quoting."""
    with gc.Graph('my "net" \\ v1\\') as g:
        x = gc.placeholder((2, 3), name="x")
        w = gc.variable(np.ones((2, 3), np.float32), name="w")
        y = gc.tanh(x * w + 1.0)
        g.add_signature("step", [x], [gc.sum(y, axis=(1,))], {w: y})
    done = pipeline.lower(g, g.signatures["step"], pipeline.DEFAULT_OPTIONS, "fused")
    assert done.fused is not None and done.fused.unfused
    odd = [Unfused(u.producer, u.consumer, 'say "no" \\ back\\') for u in done.fused.unfused]
    return dataclasses.replace(done.fused, unfused=odd)


def test_names_and_reasons_with_quotes_and_backslashes_are_quoted() -> None:
    program = _odd_program()
    text = fused_to_dot(program)
    assert text.count("{") == text.count("}")  # no brace in these names
    dot = parse_dot(text)
    assert unescape(dot.name) == program.graph.name
    assert program.graph.name in unescape(dot.attrs["label"])
    [u] = program.unfused
    [edge] = dot.edge_attrs(u.producer.name, u.consumer.name)
    assert unescape(edge["label"]) == u.reason


def _run_dot(text: str) -> ET.Element:
    done = subprocess.run([shutil.which("dot") or "dot", "-Tsvg"], input=text.encode(),
                          capture_output=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return ET.fromstring(done.stdout)


@needs_dot
def test_graphviz_accepts_the_fused_dot(program: FusedProgram) -> None:
    svg = _run_dot(fused_to_dot(program))
    titles = {t.text for t in svg.iter(f"{SVG}title")}
    assert {f"cluster_k{k.index}" for k in program.kernels} <= titles


@needs_dot
def test_graphviz_accepts_names_that_need_quoting() -> None:
    program = _odd_program()
    _run_dot(fused_to_dot(program))
    _run_dot(to_dot(program.graph))


# --- the memory plan as SVG -------------------------------------------------------------------

def _texts(root: ET.Element, cls: str) -> list[ET.Element]:
    return [t for t in root.iter(f"{SVG}text") if t.get("class") == cls]


def _box(t: ET.Element) -> Box:
    assert t.text is not None and t.get("text-anchor", "start") == "start"
    return text_box(float(t.get("x", 0)), float(t.get("y", 0)), t.text,
                    float(t.get("font-size", 0)))


def _rect(r: ET.Element) -> Box:
    x, y = float(r.get("x", 0)), float(r.get("y", 0))
    return (x, y, x + float(r.get("width", 0)), y + float(r.get("height", 0)))


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _inside(inner: Box, outer: Box, eps: float = 0.02) -> bool:
    return (inner[0] >= outer[0] - eps and inner[1] >= outer[1] - eps
            and inner[2] <= outer[2] + eps and inner[3] <= outer[3] + eps)


_BYTES = re.compile(r"(\d+(?:\.\d+)?) (B|KiB|MiB|GiB)")
_UNIT = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def _check_plan_svg(plan: MemoryPlan) -> dict[str, Any]:
    """Check the axes and the slot labels of `plan_to_svg(plan)`; return what was found."""
    root = ET.fromstring(plan_to_svg(plan))
    titles = "\n".join(t.text or "" for t in _texts(root, "title"))
    for word in ("arena", "lower bound", "naive", plan.program.graph.name):
        assert word in titles

    # Axes: titles, ticks on both, labels in kernel steps and human byte units.
    axes = {t.get("id"): t.text for t in _texts(root, "axis-label")}
    assert axes == {"x-axis-label": "schedule step (kernel index)",
                    "y-axis-label": "arena offset"}
    x_ticks, y_ticks = _texts(root, "x-tick"), _texts(root, "y-tick")
    assert x_ticks and len(y_ticks) >= 2
    tick_marks = [line for line in root.iter(f"{SVG}line") if line.get("class") == "tick"]
    assert len(tick_marks) == len(x_ticks) + len(y_ticks)
    steps = [int(t.text or "") for t in x_ticks]
    every = steps[1] - steps[0] if len(steps) > 1 else 1
    assert steps[0] == 0 and steps[-1] < len(plan.program.kernels) <= steps[-1] + every
    assert all(b - a == every for a, b in itertools.pairwise(steps))  # evenly spaced
    xs = [float(t.get("x", 0)) for t in x_ticks]
    widths = [text_width(t.text or "", float(t.get("font-size", 0))) for t in x_ticks]
    for (x0, w0), (x1, w1) in itertools.pairwise(zip(xs, widths)):
        assert x1 - x0 > (w0 + w1) / 2, "x tick labels touch"  # text-anchor middle
    offsets = []
    for t in y_ticks:
        m = _BYTES.fullmatch(t.text or "")
        assert m, t.text
        offsets.append(float(m.group(1)) * _UNIT[m.group(2)])
    assert offsets[0] == 0 and offsets == sorted(set(offsets))
    assert offsets[-1] <= max(plan.arena_bytes, 1)
    ys = [float(t.get("y", 0)) for t in y_ticks]
    assert ys == sorted(ys, reverse=True)  # bytes grow upwards

    # Slot labels: inside their own rectangle, clear of every other rectangle and label.
    groups = [g for g in root.iter(f"{SVG}g") if g.get("class") == "slot"]
    assert len(groups) == len(plan.slots)
    rects = [_rect(g.find(f"{SVG}rect")) for g in groups]  # type: ignore[arg-type]
    labels: list[tuple[int, Box]] = []
    cut = 0
    for i, g in enumerate(groups):
        tip = g.findtext(f"{SVG}title") or ""
        texts = [t for t in g.iter(f"{SVG}text") if t.get("class") == "slot-label"]
        for t in texts:
            box = _box(t)
            assert _inside(box, rects[i]), (t.text, box, rects[i])
            labels.append((i, box))
        if texts:  # the names, whole or cut; the full text stays in the tooltip
            names = tip.split(": ")[0]
            first = texts[0].text or ""
            if first.endswith("…"):
                cut += 1
                assert names.startswith(first[:-1]) and len(first) < len(names)
            else:
                assert first == names
    for (_, a), (_, b) in itertools.combinations(labels, 2):
        assert not _overlap(a, b), (a, b)
    for i, box in labels:
        for j, rect in enumerate(rects):
            assert j == i or not _overlap(box, rect), (box, rect)
    return {"labelled": len({i for i, _ in labels}), "cut": cut, "x_steps": steps,
            "y_ticks": [t.text for t in y_ticks]}


def test_the_svg_of_a_real_plan_has_axes_and_clear_labels(lowered: pipeline.Lowered) -> None:
    assert lowered.plan is not None
    found = _check_plan_svg(lowered.plan)
    assert found["labelled"] >= 3
    assert found["x_steps"][1] - found["x_steps"][0] == 1  # 20 kernels: every one ticked


def _synthetic_plan(kernels: int, lanes: int, seed: int = 0) -> MemoryPlan:
    """Slots in `lanes` byte bands, each band a row of back-to-back live intervals."""
    rng = random.Random(seed)
    slots: list[Slot] = []
    offset = 0
    for lane in range(lanes):
        t, band = rng.randint(-1, min(3, kernels)), 0
        while t <= kernels:
            end = min(t + rng.choice([0, 0, 1, 2, 3, 8, 30, 90]), kernels)
            nbytes = rng.choice([4, 64, 640, 4096, 65536, 262144, 1 << 20])
            nodes = [SimpleNamespace(name=f"layer{lane}/block{t}/activation_grad_{j}")
                     for j in range(rng.choice([1, 1, 2]))]
            slots.append(Slot(nodes, nbytes, t, end))  # type: ignore[arg-type]
            band = max(band, nbytes)
            t = end + 1 + rng.choice([0, 1])
        for s in slots:
            if s.offset < 0:
                s.offset = offset
        offset += band
    program = SimpleNamespace(kernels=[None] * kernels, graph=SimpleNamespace(name="synthetic"))
    return MemoryPlan(program, {}, slots, [], [], offset, lower_bound(slots),  # type: ignore[arg-type]
                      sum(s.nbytes for s in slots))


def test_the_svg_of_many_small_slots_keeps_labels_apart() -> None:
    plan = _synthetic_plan(kernels=400, lanes=16)
    assert len(plan.slots) > 400
    found = _check_plan_svg(plan)
    steps = found["x_steps"]
    assert steps[1] - steps[0] >= 10 and len(steps) <= 40  # not one label per kernel
    assert 0 < found["labelled"] < len(plan.slots)  # tiny slots go without a label
    assert found["cut"] > 0  # long names are cut with an ellipsis
    assert any("MiB" in t for t in found["y_ticks"])


def test_a_plan_with_one_kernel_and_an_empty_plan_draw() -> None:
    for plan in (_synthetic_plan(kernels=1, lanes=2), _synthetic_plan(kernels=3, lanes=0)):
        _check_plan_svg(plan)


def test_byte_units() -> None:
    assert [format_bytes(n) for n in (0, 640, 1024, 1536, 1056, 3 << 20, 5 << 30)] == [
        "0 B", "640 B", "1 KiB", "1.5 KiB", "1056 B", "3 MiB", "5 GiB"]
    assert [human_bytes(n) for n in (640, 18816, 75264, 1 << 20)] == [
        "640 B", "18.4 KiB", "73.5 KiB", "1 MiB"]
    assert memory.LABEL_FONT_SIZE in memory.LABEL_FONT_SIZES


def test_plan_to_dot_quotes_the_graph_name(lowered: pipeline.Lowered) -> None:
    assert lowered.plan is not None
    plan = dataclasses.replace(lowered.plan, program=SimpleNamespace(
        kernels=lowered.plan.program.kernels, graph=SimpleNamespace(name='a "b" \\')))
    dot = parse_dot(memory.plan_to_dot(plan))
    assert 'a "b" \\' in unescape(dot.attrs["label"])
    assert len(dot.nodes) == len(plan.slots)

