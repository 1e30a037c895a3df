"""cse: common-subexpression elimination by hash-consing.

Two nodes are the same value when they apply the same op with equal attributes to the
same input nodes; two constants are the same when dtype, shape and bytes are equal (so
``0.0`` and ``-0.0`` stay apart, and a NaN constant merges with a bitwise-equal one). The
first such node in graph order survives, with its name; later ones are replaced by it.

Never merged: placeholders and variables (each is its own storage). Random ops are pure
functions of their attributes and key input (graphc/ops/random.py), so two with equal
attributes and key are the same tensor and merge like any other op.

One sweep in graph order reaches the fixed point: a node is looked up after its inputs
have been merged, so chains of duplicates collapse bottom-up in the same sweep.
"""

from __future__ import annotations

from collections.abc import Hashable

from graphc.ir import Graph, Node, Signature

from .rewrite import PassContext, PassDef, Pending, Rebuilder

__all__ = ["cse"]


def merge_constant(p: Pending) -> Hashable:
    """c1 -> c0 where c0 has the same dtype, shape and bytes as c1 (the key)."""
    assert p.value is not None
    return ("constant", p.dtype, p.shape, p.value.tobytes())


def merge_node(p: Pending) -> Hashable | None:
    """op(a, b){attrs} -> an earlier op(a, b){attrs} (the key; None: never merge)."""
    if p.op in ("placeholder", "variable"):
        return None
    return (p.op, p.attrs, tuple(id(i) for i in p.inputs))


def cse(graph: Graph, sig: Signature, ctx: PassContext) -> tuple[Graph, Signature]:
    """Replace every node by the first earlier node with the same key."""
    table: dict[Hashable, Node] = {}

    def visit(p: Pending, rb: Rebuilder) -> Node:
        rule = merge_constant if p.op == "constant" else merge_node
        key = rule(p)
        if key is None:
            return rb.keep(p)
        found = table.get(key)
        if found is not None:
            ctx.hit(rule)
            return found
        node = rb.keep(p)
        table[key] = node
        return node

    return Rebuilder(graph, visit).run().finish(sig)


PASS = PassDef("cse", cse, "merge nodes computing the same value (hash-consing)",
               enabled_by=frozenset({"simplify", "constant_fold"}))  # new nodes, new constants
