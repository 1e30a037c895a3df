"""The `graphc` command: dump, viz, ops, MODEL loading and error reporting.

Tests that run Graphviz's `dot` carry `needs_dot`: they skip, saying how to install it, on
a machine without it; everything else (DOT text, the planned SVG) runs everywhere.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import graphc as gc
from graphc.cli import main as cli
from graphc.cli import stages
from graphc.io.gcg import dumps_json, save
from graphc.io.textir import graph_diff, parse_graph
from graphc.ops import registry

NO_DOT = ("Graphviz `dot` is not installed (Debian/Ubuntu: apt-get install graphviz; "
          "macOS: brew install graphviz; others: https://graphviz.org/download/)")
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason=NO_DOT)

MODEL = textwrap.dedent("""\
    import numpy as np
    import graphc as gc

    def build():
        with gc.Graph("demo") as g:
            x = gc.placeholder((2, 3), name="x")
            w = gc.variable(np.ones((2, 3), np.float32), name="w")
            y = gc.tanh(x * w + 1.0)
            z = gc.sum(y, axis=(1,))
            g.add_signature("step", [x], [z], {w: y})
        return g

    def not_a_graph():
        return 42

    def crashes():
        values = [1, 2]
        return values[5]

    def shape_error():
        with gc.Graph("bad") as g:
            gc.placeholder((2,)) + gc.placeholder((3,))
        return g

    constant = 3
""")


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "model.py"
    path.write_text(MODEL)
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _built(model: Path) -> gc.Graph:
    return cli.load_model(f"{model}:build")


def test_dump_text_parses_back_to_the_same_graph(model: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "dump", f"{model}:build")
    assert code == 0 and err == ""
    assert out.startswith('graph "demo"\nsignature "step" (%x) -> (%sum) updates (%w <- %tanh)')
    assert f'loc("{model}":8 in "build")' in out  # the user's own line
    assert graph_diff(parse_graph(out), _built(model), variables=False) is None


def test_dump_json_is_the_saved_json(model: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "dump", f"{model}:build", "--format", "json")
    assert code == 0
    assert out == dumps_json(_built(model))
    doc = json.loads(out)
    assert [n["name"] for n in doc["nodes"]][:2] == ["x", "w"]
    save(_built(model), tmp_path / "m.gcg")
    code, from_file, _ = _run(capsys, "dump", str(tmp_path / "m.gcg"), "--format", "json")
    assert code == 0 and from_file == out


def test_dump_dot_names_every_node(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "dump", f"{model}:build", "--format", "dot", "--stage", "input")
    assert code == 0
    assert out.startswith('digraph "demo" {')
    for node in _built(model).nodes:
        assert f'"{node.name}" [label="%{node.name}\\n{node.op}\\n{node.type}"' in out
    assert '"x" -> "mul" [label="0"];' in out and '"w" -> "mul" [label="1"];' in out
    assert '"y" ->' not in out and '"tanh" -> "sum";' in out  # one input: no index label
    assert 'shape="invhouse"' in out and 'shape="box3d"' in out and 'shape="note"' in out
    assert 'peripheries="2"' in out  # the signature output
    assert '"tanh" -> "w" [style="dashed"' in out  # the update


def test_viz_writes_dot_text(model: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "g.dot"
    code, _, err = _run(capsys, "viz", f"{model}:build", "-o", str(out_file))
    assert code == 0 and "wrote" in err
    assert out_file.read_text().startswith('digraph "demo"')


@needs_dot
@pytest.mark.parametrize(("suffix", "magic"), [(".svg", b"<?xml"), (".png", b"\x89PNG")])
def test_viz_renders_with_graphviz(model: Path, tmp_path: Path, suffix: str, magic: bytes,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / f"g{suffix}"
    code, _, err = _run(capsys, "viz", f"{model}:build", "-o", str(out_file))
    assert code == 0, err
    data = out_file.read_bytes()
    assert data.startswith(magic)
    if suffix == ".svg":
        assert b"%tanh" in data


def test_viz_without_graphviz_explains_how_to_install(model: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(stages.shutil, "which", lambda name: None)
    code, out, err = _run(capsys, "viz", f"{model}:build", "-o", str(tmp_path / "g.svg"))
    assert code == 1 and out == ""
    assert err.startswith("graphc: error: ")
    assert "apt-get install graphviz" in err and "graphviz.org" in err and "-o FILE.dot" in err
    assert not (tmp_path / "g.svg").exists()


def test_ops_list_is_an_aligned_table_of_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "ops", "--list")
    assert code == 0
    lines = out.splitlines()
    header = lines[0]
    assert header.split() == ["NAME", "FAMILY", "ARITY", "FUSION", "GRAD", "ATTRS", "DOC"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == set(registry.OPS)
    columns = [header.index(h) for h in ("FAMILY", "ARITY", "FUSION", "GRAD", "ATTRS", "DOC")]
    for name, op in registry.OPS.items():
        line = rows[name]
        fields = [line[c:].split()[0] if line[c:].strip() else "" for c in columns[:5]]
        arity = "n" if op.arity is None else str(op.arity)
        assert fields == [op.family, arity, op.fusion.value,
                          "yes" if op.differentiable else "no",
                          ",".join(a.name for a in op.attrs) or "-"], line
        assert line[columns[5]:] == op.doc
    assert cli.main(["ops"]) == 0  # --list is the default


@pytest.mark.parametrize(("argv", "code", "fragment"), [
    (["dump", "{model}:nope"], 1, "has no function 'nope' (functions: build, crashes, "
                                  "not_a_graph, shape_error)"),
    (["dump", "{model}:constant"], 1, "has no function 'constant'"),
    (["dump", "{model}:not_a_graph"], 1, "not_a_graph() returned int, not a gc.Graph"),
    (["dump", "{model}:crashes"], 1, "crashes() failed: IndexError: list index out of range "
                                     "(at {model}:18)"),
    (["dump", "{model}:shape_error"], 1, "operands do not broadcast"),
    (["dump", "{dir}/missing.py:build"], 1, "model file {dir}/missing.py does not exist"),
    (["dump", "{dir}/missing.gcg"], 1, "cannot read {dir}/missing.gcg"),
    (["dump", "{model}"], 2, "names a Python file but no function"),
    (["dump", "{model}:not-a-name"], 2, "is not a function name"),
    (["dump", "mystery"], 2, "not a .gcg file, an .onnx model or path/to/file.py:function"),
    (["dump", "{model}:build", "--stage", "bogus"], 2, "invalid choice: 'bogus'"),
    (["dump", "{model}:build", "--format", "yaml"], 2, "invalid choice: 'yaml'"),
    (["viz", "{model}:build", "-o", "{dir}/g.txt"], 2, "must end in .dot"),
    (["viz", "{model}:build"], 2, "required: -o/--output"),
    (["viz", "{model}:build", "--stage", "llvm", "-o", "{dir}/g.dot"], 2,
     "stage 'llvm' is text: print it with `graphc dump MODEL --stage llvm`"),
    (["viz", "{model}:build", "--stage", "asm", "-o", "{dir}/g.svg"], 2, "graphc dump"),
    (["frobnicate"], 2, "invalid choice: 'frobnicate'"),
    ([], 2, "required: COMMAND"),
])
def test_errors_print_a_message_and_an_exit_code(model: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 argv: list[str], code: int,
                                                 fragment: str) -> None:
    def fill(text: str) -> str:
        return text.format(model=model, dir=model.parent)

    got, out, err = _run(capsys, *[fill(a) for a in argv])
    assert got == code, err
    assert out == ""
    assert err.startswith("graphc: error: ")
    assert fill(fragment) in err
    assert "Traceback" not in err


def test_a_corrupt_gcg_file_is_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.gcg"
    bad.write_bytes(b"not a zip")
    code, _, err = _run(capsys, "dump", str(bad))
    assert code == 1 and "not a zip archive" in err


def test_model_files_import_their_sibling_modules(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "helper_for_graphc_cli_test.py").write_text("SHAPE = (5,)\n")
    (tmp_path / "m.py").write_text(textwrap.dedent("""\
        import graphc as gc
        from helper_for_graphc_cli_test import SHAPE

        def build():
            with gc.Graph("sib") as g:
                gc.relu(gc.placeholder(SHAPE, name="x"))
            return g
    """))
    code, out, _ = _run(capsys, "dump", f"{tmp_path / 'm.py'}:build")
    assert code == 0 and "%x = placeholder : f32[5]" in out
    assert str(tmp_path) not in sys.path  # the import path is restored


def test_console_entry_point_runs_as_a_program(model: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "graphc.cli", "dump", f"{model}:crashes"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert done.stderr.startswith("graphc: error: ") and "Traceback" not in done.stderr
    ok = subprocess.run([sys.executable, "-m", "graphc.cli", "dump", f"{model}:build"],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and ok.stdout.startswith('graph "demo"')


def test_the_parser_wires_every_subcommand_module(capsys: pytest.CaptureFixture[str]) -> None:
    """`main.py` assembles the commands of `stages.py` and `exported.py` with its own."""
    assert cli.main(["--help"]) == 0
    usage = capsys.readouterr().out
    for command in ("dump", "viz", "ops", "passes", "compile", "info", "run"):
        assert command in usage
    assert cli.STAGES == stages.STAGES and cli.FORMATS is stages.FORMATS
    assert "fused" in stages.VIZ_STAGES and "llvm" not in stages.VIZ_STAGES
    assert cli.main(["viz", "--help"]) == 0
    assert "{input,optimized,fused,planned}" in capsys.readouterr().out
