"""What the loop passes (loop_hoist, loop_sink, loop_unroll) share: walking a graph's kept
scans and rebuilding a body with other params and results.

`rewrite_kept_scans(graph, sig, rewrite)` copies the graph; at each scan that
`lower_control` kept, `rewrite(pending, old, rebuilder)` returns the new outer values of
the scan's results (the `get`s of a new loop, or expressions after it), or None to keep
the scan as it is. The old scan's `get`s then read those values.

`rebuild_region(body, params, results)` is a new region over the nodes of `body` that
`results` need, reading `params` (any nodes of the body: old params, or computed nodes
that become params because their value now comes from outside) as fresh placeholders in
that order. Constants carry their arrays; nested regions are shared; names are kept where
free.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from graphc.ir import Graph, Node, Region, Signature

from .lower_control import kept
from .rewrite import Pending, Rebuilder

__all__ = ["rebuild_region", "rewrite_kept_scans"]

Rewrite = Callable[[Pending, Node, Rebuilder], "list[Node] | None"]


def rewrite_kept_scans(graph: Graph, sig: Signature, rewrite: Rewrite
                       ) -> tuple[Graph, Signature]:
    rb = Rebuilder(graph)
    values: dict[Node, list[Node]] = {}
    for old in graph.nodes:
        if old.op == "scan" and kept(old.op, old.attrs, old.regions):
            p = Pending(old.op, tuple(rb.mapping[i] for i in old.inputs), old.attrs,
                        old.type, old.name, old.loc, None, old.regions)
            done = rewrite(p, old, rb)
            if done is None:
                rb.mapping[old] = rb.keep(p)
            else:
                values[old] = done
        elif old.op == "get" and old.inputs[0] in values:
            rb.mapping[old] = values[old.inputs[0]][old.attrs["index"]]
        else:
            rb.copy(old)
    return rb.finish(sig)


def rebuild_region(body: Region, params: Sequence[Node], results: Sequence[Node]) -> Region:
    graph = Graph(body.graph.name)
    copies: dict[Node, Node] = {}
    for q in params:
        copies[q] = graph.add_node("placeholder", (), {}, q.type,  # type: ignore[arg-type]
                                   name=graph.unique_name("arg"), loc=q.loc)
    needed: set[Node] = set()
    stack = list(results)
    while stack:  # the ancestors of the results, stopping at the params
        n = stack.pop()
        if n not in needed and n not in copies:
            needed.add(n)
            stack.extend(n.inputs)
    for n in body.graph.nodes:
        if n not in needed:
            continue
        if n.op == "placeholder":
            raise AssertionError(f"rebuild_region: %{n.name} is read but not a param")
        copies[n] = graph.add_node(n.op, [copies[i] for i in n.inputs], n.attrs, n.type,  # type: ignore[arg-type]
                                   name=n.name if n.name not in graph else None, loc=n.loc,
                                   regions=n.regions)
        if n.op == "constant":
            graph.constants[copies[n].name] = body.graph.constants[n.name]
    return Region(graph, tuple(copies[q] for q in params), tuple(copies[r] for r in results))
