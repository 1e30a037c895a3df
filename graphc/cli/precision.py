"""`graphc compile MODEL --precision bf16`: what the flag does to the graph to export.

The selected computation (a signature, or the `--inputs`/`--outputs` nodes, which become a
signature of their own first) goes through `gc.autocast(graph, "bfloat16")` restricted to
it, so weights that it does not update are stored in bf16 inside the library. The report
on stderr lists each GEMM-like node's precision and why (`gc.explain_autocast`) and, for
each bf16 matmul, the measured error of its output against float32 on sample inputs
(seeded standard normal; measured only when every input is floating point).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from graphc.cli.command import selected_signature
from graphc.compile import compile as compile_graph
from graphc.ir import Graph
from graphc.options import CompileOptions
from graphc.passes.autocast import autocast, autocast_decisions, explain_autocast

PRECISIONS = ("fp32", "bf16")


def with_precision(graph: Graph, what: dict[str, Any],
                   precision: str) -> tuple[Graph, dict[str, Any]]:
    """(graph, export keyword arguments) for `precision`; fp32 returns them unchanged."""
    if precision == "fp32":
        return graph, what
    name = selected_signature(graph, what, "bf16")
    new = autocast(graph, signatures=[name])
    print(explain_autocast(graph, signatures=[name]), file=sys.stderr)
    for line in measured_errors(graph, new, name):
        print(line, file=sys.stderr)
    return new, {"signature": name}


def measured_errors(graph: Graph, new: Graph, signature: str) -> list[str]:
    """One line per bf16 matmul: max |bf16 - float32| of its output, relative to the
    float32 output's max |value|, on seeded standard-normal inputs."""
    sig = graph.signatures[signature]
    names = [d.node for d in autocast_decisions(graph, signatures=[signature])
             if d.precision == "bfloat16" and d.op == "matmul"]
    if not names:
        return []
    if not all(p.dtype.is_float for p in sig.inputs):
        return ["output error against float32 not measured: the inputs are not all floating "
                "point"]
    rng = np.random.default_rng(0)
    args = [rng.standard_normal(p.shape).astype(p.dtype.np) for p in sig.inputs]
    options = CompileOptions(threads=1)
    want = compile_graph(graph, list(sig.inputs), [graph[n] for n in names],
                         options=options)(*args)
    got = compile_graph(new, [new[p.name] for p in sig.inputs], [new[n] for n in names],
                        options=options)(*args)
    lines = []
    for name, w, g in zip(names, want, got, strict=True):
        scale = max(float(np.max(np.abs(w))), 1e-30)
        err = float(np.max(np.abs(g.astype(np.float64) - w))) / scale
        lines.append(f"%{name}: bf16 output error {err:.2e} of max |float32 output| "
                     "(sample inputs)")
    return lines
