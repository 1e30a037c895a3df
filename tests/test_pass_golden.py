"""Golden text-IR tests: tests/golden/*.gir, one small graph per rewrite.

A golden file is text IR in two sections, after a header of ``//`` lines::

    // RUN: simplify,prune          <- the pipeline (first line)
    // what the file shows          <- free comment lines
    // ---- input
    graph "g" ...                    <- text IR (graphc.textir), with one signature
    // ---- expected
    graph "g" ...                    <- the text IR the pipeline must produce

The test runs the pipeline on the input's signature (verifying after each pass), compares
the result with the expected graph node by node (names, ops, inputs, attributes, types,
locations, constants, signature) and shows both texts on a mismatch; it also checks that
the graph computes the same values before and after.

To (re)write the expected sections after a deliberate change, run
``python -m tests.test_pass_golden tests/golden/<file>.gir ...`` and review the diff.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from graphc.io.textir import format_graph, graph_diff, parse_graph
from graphc.options import CompileOptions
from graphc.passes.manager import PipelineResult, run_pipeline, select_signature
from graphc.passes.simplify import RULES
from tests.test_passes import assert_same_results

GOLDEN = Path(__file__).parent / "golden"
FILES = sorted(GOLDEN.glob("*.gir"))
INPUT, EXPECTED = "// ---- input", "// ---- expected"


@dataclass(frozen=True)
class Golden:
    path: Path
    pipeline: str
    header: str
    input: str
    expected: str

    @classmethod
    def read(cls, path: Path) -> Golden:
        text = path.read_text()
        first = text.splitlines()[0]
        if not first.startswith("// RUN: "):
            raise ValueError(f"{path.name}: the first line must be `// RUN: <pipeline>`")
        header, rest = text.split(INPUT + "\n", 1)
        source, expected = rest.split(EXPECTED + "\n", 1)
        return cls(path, first.removeprefix("// RUN: ").strip(), header, source, expected)

    def run(self) -> PipelineResult:
        graph = parse_graph(self.input)
        return run_pipeline(graph, select_signature(graph),
                            CompileOptions(pipeline=self.pipeline, verify_each=True))



@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_golden(path: Path) -> None:
    golden = Golden.read(path)
    assert golden.expected.strip(), f"{path.name} has no expected section"
    result = golden.run()
    expected = parse_graph(golden.expected)
    diff = graph_diff(result.graph, expected)
    assert diff is None, (f"{path.name}: {diff}\n--- produced:\n{format_graph(result.graph)}"
                          f"--- expected:\n{format_graph(expected)}")
    source = parse_graph(golden.input)
    assert_same_results(select_signature(source), result.signature)


def test_every_simplify_rule_has_a_golden_file() -> None:
    hits: Counter[str] = Counter()
    for path in FILES:
        result = Golden.read(path).run()
        hits.update(r.rule for p in result.report.passes if p.name == "simplify"
                    for r in p.rules)
    missing = [rule.__name__ for rule in RULES if not hits[rule.__name__]]
    assert not missing, f"simplify rules no golden file exercises: {missing}"


def rewrite_expected(path: Path) -> None:
    """Replace the expected section of `path` by what the pipeline produces now."""
    golden = Golden.read(path)
    produced = format_graph(golden.run().graph)
    path.write_text(f"{golden.header}{INPUT}\n{golden.input}{EXPECTED}\n{produced}")


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        rewrite_expected(Path(arg))
        print(f"rewrote {arg}")
