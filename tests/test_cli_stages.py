"""`graphc dump` at every compilation stage, `--explain`, `--stats`, hooks, `passes --list`,
and `graphc viz --stage planned`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from graphc.cli import main as cli
from graphc.io.textir import parse_graph
from graphc.passes import PASSES
from tests.test_cli import MODEL


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("stages") / "model.py"
    path.write_text(MODEL)
    return f"{path}:build"


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


def test_viz_memory_plan_svg(model, tmp_path: Path, capsys) -> None:
    out = tmp_path / "mem.svg"
    assert cli.main(["viz", model, "--stage", "planned", "-o", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("<svg") and "lower bound" in text and "arena" in text
    dot = tmp_path / "mem.dot"
    assert cli.main(["viz", model, "--stage", "planned", "-o", str(dot)]) == 0
    assert dot.read_text().startswith("digraph memory_plan")
    capsys.readouterr()


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_viz_memory_plan_png(model, tmp_path: Path, capsys) -> None:
    out = tmp_path / "mem.png"
    assert cli.main(["viz", model, "--stage", "planned", "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
