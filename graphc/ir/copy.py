"""Copying nodes between graphs: what inlining a body, differentiating it and building a
body from another share.

`copy_needed(roots, graph, mapping)` copies the nodes `roots` depend on into `graph`, in
their graph's order, reading substitutes from `mapping` (a body's params mapped to the
arguments of a call, say) and cutting the walk there. Copies keep op, attributes, type,
source location and regions (regions are immutable and shared); names are made unique in
`graph`; constants share their (read-only) arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

from graphc.errors import GraphStructureError
from graphc.ir.graph import Graph, Node

__all__ = ["copy_needed"]


def copy_needed(roots: Sequence[Node], graph: Graph, mapping: dict[Node, Node]
                ) -> dict[Node, Node]:
    """Copy into `graph` every node `roots` need that `mapping` does not already map, and
    return `mapping` with the copies added. All roots belong to one source graph. A
    placeholder or variable reached without a substitute is a GraphStructureError (a body
    copied without binding all its params)."""
    if not roots:
        return mapping
    needed: set[Node] = set()
    stack = list(roots)
    while stack:
        n = stack.pop()
        if n in needed or n in mapping:
            continue
        needed.add(n)
        stack.extend(n.inputs)
    source = roots[0].graph
    for n in source.nodes:
        if n not in needed:
            continue
        if n.op in ("placeholder", "variable"):
            raise GraphStructureError(f"copying from graph {source.name!r}: {n.op} %{n.name} "
                                      "has no substitute")
        new = graph.add_node(n.op, [mapping[i] for i in n.inputs], n.attrs, n.type,
                             name=graph.unique_name(n.name), loc=n.loc, regions=n.regions)
        if n.op == "constant":
            graph.constants[new.name] = source.constants[n.name]
        mapping[n] = new
    return mapping
