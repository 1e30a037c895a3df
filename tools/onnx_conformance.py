"""Run ONNX's backend node tests through graphc and record the result.

    python tools/onnx_conformance.py                 # reference interpreter, write files
    python tools/onnx_conformance.py --mode compile  # every passing case compiled, check only

Writes `tests/onnx_conformance.json` (the cases that pass, and every other case with the
reason it does not) and `docs/onnx.md` (the per-op table). `tests/test_onnx_backend.py`
runs the passing cases through `onnx.backend.test.BackendTest` and fails if one of them
stops passing or a case is in neither list. Needs onnx (`pip install 'graphc[onnx]'`).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXPECT = ROOT / "tests" / "onnx_conformance.json"
DOC = ROOT / "docs" / "onnx.md"


# Cases whose model needs a float input's value at import (an op graphc computes on known
# values only): the backend imports them again for each run with every input a constant,
# so their results come from what folds at import, not from compiled kernels (integer
# inputs given at import, shapes and axes, leave the float data run-time inputs). `run_case`
# records them here.
FOLDED: set[str] = set()


def run_case(case: Any, mode: str, options: Any) -> str | None:
    """None if `case` passes, else the reason it does not (one line)."""
    import numpy as np
    from onnx.backend.test.runner import Runner, _normalize_tensor

    import graphc as gc
    from graphc.onnx.backend import GraphcBackend

    try:
        rep = GraphcBackend.prepare(case.model, mode=mode, options=options)
        for inputs, outputs in case.data_sets:
            got = rep.run([_normalize_tensor(i) for i in inputs])
            Runner.assert_similar_outputs([_normalize_tensor(o) for o in outputs], list(got),
                                          rtol=case.rtol, atol=case.atol)
        if rep.inputs_given == "all":
            FOLDED.add(case.name)
    except gc.GraphcError as exc:
        return str(exc).splitlines()[0] if "unsupported op" not in str(exc) else \
            "unsupported: " + "; ".join(line.strip() for line in str(exc).splitlines()[1:])
    except AssertionError as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), "")
        return f"wrong result: {first.strip()[:160]}"
    except Exception as exc:  # a bug: report it as such, never hide it
        return f"BUG {type(exc).__name__}: {str(exc)[:160]}"
    del np
    return None


def op_types(case: Any) -> set[str]:
    return {n.op_type for n in case.model.graph.node}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("reference", "compile"), default="reference")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(ROOT))
    from onnx.backend.test.loader import load_model_tests

    import graphc as gc

    cases = load_model_tests(kind="node")
    options = gc.CompileOptions(threads=1) if args.mode == "compile" else None
    start = time.perf_counter()
    if args.mode == "compile":
        passing = set(json.loads(EXPECT.read_text())["passing"])
        bad = {}
        for case in cases:
            if case.name in passing:
                reason = run_case(case, "compile", options)
                if reason is not None:
                    bad[case.name] = reason
        print(f"compiled {len(passing)} passing cases in {time.perf_counter() - start:.0f} s: "
              f"{len(passing) - len(bad)} pass")
        for name, reason in sorted(bad.items()):
            print(f"  {name}: {reason}")
        return 1 if bad else 0
    results = {case.name: run_case(case, "reference", None) for case in cases}
    passing = sorted(n for n, r in results.items() if r is None)
    excluded = {n: r for n, r in sorted(results.items()) if r is not None}
    bugs = {n: r for n, r in excluded.items() if r.startswith("BUG")}
    folded = sorted(FOLDED & set(passing))
    EXPECT.write_text(json.dumps({"onnx_node_cases": len(cases), "passing": passing,
                                  "passing_with_inputs_given_at_import": folded,
                                  "excluded": excluded}, indent=1) + "\n")
    DOC.write_text(_doc(cases, results))
    print(f"{len(passing)} of {len(cases)} node cases pass "
          f"({100 * len(passing) / len(cases):.1f} %; {len(folded)} with their inputs given "
          f"at import) in {time.perf_counter() - start:.1f} s; {len(bugs)} bugs")
    for name, reason in bugs.items():
        print(f"  {name}: {reason}")
    return 0


def _doc(cases: list[Any], results: dict[str, str | None]) -> str:
    import onnx

    per_op: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
    names = sorted({schema.name for schema in onnx.defs.get_all_schemas_with_history()},
                   key=len, reverse=True)
    for case in cases:
        op = _op_from_name(case.name, names, op_types(case))
        per_op[op][0] += 1
        per_op[op][1] += results[case.name] is None
        per_op[op][2] += results[case.name] is None and case.name in FOLDED
    total = len(cases)
    passed = sum(r is None for r in results.values())
    folded = sum(r is None and n in FOLDED for n, r in results.items())
    lines = [
        "# ONNX conformance",
        "",
        "Generated by `python tools/onnx_conformance.py` (do not edit): ONNX's backend node "
        f"tests (onnx {onnx.__version__}, built in memory by "
        "`onnx.backend.test.loader.load_model_tests(kind=\"node\")`) run through "
        "`graphc.onnx.backend.GraphcBackend` with the numpy reference interpreter. "
        "`tests/test_onnx_backend.py` runs the passing cases through "
        "`onnx.backend.test.BackendTest`; `tests/onnx_conformance.json` lists every other "
        "case with its reason.",
        "",
        f"**{passed} of {total} node cases pass ({100 * passed / total:.1f} %).**",
        "",
        f"Of these, {folded} need a float input's value when the model is imported (an op "
        "graphc computes only on known values, or a float scales input): the backend "
        "imports them for each run with all inputs as constants, so their results come from "
        "what folds at import, not from compiled kernels (column \"given at import\"). "
        "Cases that need only integer inputs at import (shapes, axes, indices) get those as "
        "constants and keep their float data run-time inputs.",
        "",
        "| op | cases | pass | given at import |",
        "|---|---|---|---|",
    ]
    for op, (n, ok, fold) in sorted(per_op.items()):
        lines.append(f"| {op} | {n} | {ok} | {fold} |")
    return "\n".join(lines) + "\n"


def _op_from_name(name: str, ops: list[str], used: set[str]) -> str:
    """The op a case tests: ONNX names cases test_<op in snake case>_..., so the longest op
    name that, squashed, starts the squashed case name (among the ops the model uses, then
    any op); else the model's ops."""
    key = name.removeprefix("test_").replace("_", "").lower()
    for pool in ([op for op in ops if op in used], ops):
        for op in pool:
            if key.startswith(op.lower()):
                return op
    return "(" + "+".join(sorted(used))[:40] + ")"


if __name__ == "__main__":
    raise SystemExit(main())
