"""`graphc compile MODEL --precision bf16`: what the flag does to the graph to export.

The selected computation (a signature, or the `--inputs`/`--outputs` nodes, which become a
signature of their own first) goes through `gc.autocast(graph, "bfloat16")` restricted to
it, so weights that it does not update are stored in bf16 inside the library; the
decisions (`gc.explain_autocast`) are printed to stderr, one line per GEMM-like node.
"""

from __future__ import annotations

import sys
from typing import Any

from graphc.ir import Graph
from graphc.passes.autocast import autocast, explain_autocast

PRECISIONS = ("fp32", "bf16")


def with_precision(graph: Graph, what: dict[str, Any],
                   precision: str) -> tuple[Graph, dict[str, Any]]:
    """(graph, export keyword arguments) for `precision`; fp32 returns them unchanged."""
    if precision == "fp32":
        return graph, what
    if "signature" in what:
        name = what["signature"]
    else:
        name = "bf16"
        while name in graph.signatures:
            name += "_"
        graph.add_signature(name, what.get("inputs", []), what["outputs"],
                            what.get("updates"))
    print(explain_autocast(graph, signatures=[name]), file=sys.stderr)
    return autocast(graph, signatures=[name]), {"signature": name}
