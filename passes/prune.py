"""prune: remove every node the signature does not need.

Kept: the ancestors of the outputs and of the update values, the updated variables, and
the placeholders listed as inputs even when nothing reads them (callers still pass them,
and the calling convention must not change). Variables nobody reads disappear from the
new graph; the arrays themselves are untouched in the input graph.
"""

from __future__ import annotations

from graphc.ir import Graph, Signature

from .rewrite import PassContext, PassDef, Rebuilder, live_nodes

__all__ = ["prune"]


def prune(graph: Graph, sig: Signature, ctx: PassContext) -> tuple[Graph, Signature]:
    """Copy only the live nodes, in graph order."""
    live = live_nodes(graph, sig)
    return Rebuilder(graph).run(n for n in graph.nodes if n in live).finish(sig)


PASS = PassDef("prune", prune, "remove nodes the signature's outputs and updates do not need",
               enabled_by=frozenset({"simplify", "constant_fold", "cse"}))  # they orphan nodes
