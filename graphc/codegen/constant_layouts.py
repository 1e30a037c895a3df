"""Constant weights stored, once at compile time, in the layout a kernel reads them in.

`conv.prepack` (a convolution's weights as the GEMM's panels of Wᵀ) and `gemm.prepack` (a
matmul's B as its panels) share this rewrite: each says which of its nodes wants its
weight operand stored how (a layout: any hashable description), how to store a value that
way, and how to rebuild the node reading the stored constant. A constant is stored only if
every live reader wants it, as that operand and in one layout (a constant something else
reads, or two layouts, stays as it is); each is stored once however many nodes read it,
and the unstored constants nothing reads any more are dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping

import numpy as np

from graphc.ir import Graph, Node, Signature
from graphc.passes.rewrite import Pending, Rebuilder, live_nodes

__all__ = ["store_constants"]


def store_constants(graph: Graph, sig: Signature, layouts: Mapping[str, Hashable],
                    operand: int, store: Callable[[np.ndarray, Hashable], np.ndarray],
                    rebuild: Callable[[Pending, Rebuilder, Node, Hashable], Node]
                    ) -> tuple[Graph, Signature]:
    """`graph` and `sig` with the constant operand `operand` of every node named in
    `layouts` stored as `store(value, layout)` and the node replaced by `rebuild(node, rb,
    stored constant, layout)` (both unchanged when no constant qualifies)."""
    live = live_nodes(graph, sig)
    readers: dict[Node, list[Node]] = {}
    for n in graph.nodes:
        if n in live:
            for i in n.inputs:
                readers.setdefault(i, []).append(n)
    stored = {c for c, users in readers.items() if c.op == "constant" and users and all(
        u.name in layouts and u.inputs[operand] is c
        and sum(i is c for i in u.inputs) == 1
        and layouts[u.name] == layouts[users[0].name] for u in users)}
    if not stored:
        return graph, sig
    done: dict[str, Node] = {}

    def visit(p: Pending, rb: Rebuilder) -> Node:
        if p.name not in layouts or graph[p.name].inputs[operand] not in stored:
            return rb.keep(p)
        old = graph[p.name].inputs[operand]
        layout = layouts[p.name]
        new = done.get(old.name)
        if new is None:
            value = rb.value(p.inputs[operand])
            assert value is not None
            new = rb.constant(store(value, layout), at=p, copy=False,
                              name=rb.fresh_name(f"{old.name}.panels"))
            done[old.name] = new
        return rebuild(p, rb, new, layout)

    g1, s1 = Rebuilder(graph, visit).run(n for n in graph.nodes if n in live).finish(sig)
    # Drop the unstored constants nothing reads any more.
    live1 = live_nodes(g1, s1)
    return Rebuilder(g1).run(n for n in g1.nodes if n in live1).finish(s1)
