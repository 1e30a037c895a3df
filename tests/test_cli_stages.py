"""`graphc dump` at every compilation stage, `--explain`, `--stats`, hooks, `passes --list`,
and `graphc viz --stage fused|planned` (on an MLP training step: `MLP`)."""

from __future__ import annotations

import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from graphc.cli import main as cli
from graphc.cli import stages
from graphc.io.textir import parse_graph
from graphc.passes import PASSES
from graphc.viz.dotlib import quote
from graphc.viz.fused import wrap_reason
from tests.test_cli import MODEL, needs_dot

# A two-layer MLP's training step (SGD with momentum): 20 kernels, views, unfused edges of
# every kind, in-place updates. Used by tests/test_viz.py too.
MLP = textwrap.dedent("""\
    import numpy as np
    import graphc as gc


    def mlp():
        rng = np.random.default_rng(0)
        with gc.Graph("mlp") as g:
            x = gc.placeholder((16, 64), gc.float32, name="x")
            y = gc.placeholder((16,), gc.int32, name="y")
            w1 = gc.variable(rng.normal(0, 0.1, (64, 32)).astype(np.float32), name="w1")
            b1 = gc.variable(np.zeros(32, np.float32), name="b1")
            w2 = gc.variable(rng.normal(0, 0.1, (32, 10)).astype(np.float32), name="w2")
            b2 = gc.variable(np.zeros(10, np.float32), name="b2")
            logits = gc.relu(x @ w1 + b1) @ w2 + b2
            loss = gc.mean(gc.softmax_cross_entropy(logits, y))
            updates = gc.optim.SGD(lr=0.01, momentum=0.9).minimize(loss)
        g.add_signature("train", inputs=[x, y], outputs=[loss], updates=updates)
        return g
""")
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("stages") / "model.py"
    path.write_text(MODEL)
    return f"{path}:build"


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("mlp") / "mlp.py"
    path.write_text(MLP)
    return f"{path}:mlp"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_optimized_stage_parses_back_and_stats_print_the_table(model, capsys) -> None:
    out = _run(capsys, "dump", model, "--stage", "optimized")
    graph = parse_graph(out)
    assert graph.signatures  # the rewritten signature travels with the optimized graph
    stats = _run(capsys, "dump", model, "--stage", "optimized", "--stats")
    for name in ("simplify", "constant_fold", "cse", "prune", "before", "after"):
        assert name in stats


def test_print_after_hooks(model, capsys) -> None:
    out = _run(capsys, "dump", model, "--stage", "optimized", "--print-after", "cse")
    assert "cse" in out and out.count('graph "demo"') >= 2
    everything = _run(capsys, "dump", model, "--stage", "optimized", "--print-after-all")
    assert everything.count('graph "demo"') >= len(PASSES)


def test_fused_planned_llvm_asm(model, capsys) -> None:
    fused = _run(capsys, "dump", model, "--stage", "fused", "--explain")
    assert "kernel k0" in fused and "unfused edges" in fused
    planned = _run(capsys, "dump", model, "--stage", "planned")
    assert "arena" in planned and "lower bound" in planned
    llvm = _run(capsys, "dump", model, "--stage", "llvm")
    assert "define i32 @\"graphc_entry\"" in llvm
    optimized = _run(capsys, "dump", model, "--stage", "llvm", "--optimized-ir")
    assert "graphc_entry" in optimized
    asm = _run(capsys, "dump", model, "--stage", "asm")
    assert "graphc_entry" in asm and ("ret" in asm)


def test_non_graph_stages_reject_json(model, capsys) -> None:
    assert cli.main(["dump", model, "--stage", "fused", "--format", "json"]) == 2
    assert "applies to graph stages" in capsys.readouterr().err


def test_passes_list(capsys) -> None:
    out = _run(capsys, "passes", "--list")
    for name in PASSES:
        assert name in out
    assert "x * 1 -> x" in out or "x*1 -> x" in out.replace(" ", "") or "mul_one" in out


def test_viz_memory_plan_svg(mlp, tmp_path: Path, capsys) -> None:
    out = tmp_path / "mem.svg"
    assert cli.main(["viz", mlp, "--stage", "planned", "-o", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("<svg") and "lower bound" in text and "arena" in text
    root = ET.fromstring(text)  # well-formed XML
    axes = {t.text for t in root.iter(f"{SVG}text") if t.get("class") == "axis-label"}
    assert axes == {"schedule step (kernel index)", "arena offset"}
    dot = tmp_path / "mem.dot"
    assert cli.main(["viz", mlp, "--stage", "planned", "-o", str(dot)]) == 0
    assert dot.read_text().startswith("digraph memory_plan")
    capsys.readouterr()


def test_viz_fused_writes_one_cluster_per_kernel(mlp, tmp_path: Path, capsys) -> None:
    out = tmp_path / "fused.dot"
    assert cli.main(["viz", mlp, "--stage", "fused", "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().err
    text = out.read_text()
    assert text.startswith('digraph "mlp" {')
    dumped = _run(capsys, "dump", mlp, "--stage", "fused", "--explain")
    kernels = [line for line in dumped.splitlines() if line.startswith("kernel ")]
    assert text.count('subgraph "cluster_k') == len(kernels) > 1
    reasons = dumped.split("unfused edges (producer -/-> consumer: reason):\n")[1]
    for line in reasons.splitlines():
        reason = line.split("): ", 1)[1]
        assert quote(wrap_reason(reason)) in text


def test_viz_fused_without_graphviz_needs_dot_only_for_pictures(
        mlp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(stages.shutil, "which", lambda name: None)
    assert cli.main(["viz", mlp, "--stage", "fused", "-o", str(tmp_path / "f.svg")]) == 1
    assert "apt-get install graphviz" in capsys.readouterr().err
    assert not (tmp_path / "f.svg").exists()
    assert cli.main(["viz", mlp, "--stage", "fused", "-o", str(tmp_path / "f.gv")]) == 0
    assert cli.main(["viz", mlp, "--stage", "planned", "-o", str(tmp_path / "m.svg")]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("stage", ["llvm", "asm"])
def test_viz_refuses_text_stages(mlp, stage: str, tmp_path: Path, capsys) -> None:
    assert cli.main(["viz", mlp, "--stage", stage, "-o", str(tmp_path / "x.dot")]) == 2
    err = capsys.readouterr().err
    assert f"`graphc dump MODEL --stage {stage}`" in err
    assert "input, optimized, fused, planned" in err
    assert not (tmp_path / "x.dot").exists()


@needs_dot
@pytest.mark.parametrize(("stage", "suffix", "magic"), [
    ("fused", ".svg", b"<?xml"), ("fused", ".png", b"\x89PNG\r\n\x1a\n"),
    ("planned", ".png", b"\x89PNG\r\n\x1a\n"), ("optimized", ".svg", b"<?xml"),
])
def test_viz_renders_with_graphviz(mlp, stage: str, suffix: str, magic: bytes,
                                   tmp_path: Path, capsys) -> None:
    out = tmp_path / f"{stage}{suffix}"
    code = cli.main(["viz", mlp, "--stage", stage, "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    data = out.read_bytes()
    assert data.startswith(magic)
    if stage == "fused" and suffix == ".svg":
        assert b"cluster_k0" in data and b"%relu" in data and b"users" in data
    capsys.readouterr()
