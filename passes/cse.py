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

import numpy as np

from graphc.ir import Graph, Node, Signature

from .rewrite import PassContext, PassDef, Pending, Rebuilder

__all__ = ["cse"]


def _raw(array: np.ndarray) -> np.ndarray:
    """The bytes of `array` as a flat uint8 view (no copy for a contiguous array)."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def merge_constant(p: Pending) -> Hashable:
    """c1 -> c0 where c0 has the same dtype, shape and bytes as c1.

    The key holds up to 256 evenly spaced bytes; constants with equal keys are compared in
    full (`_same_bytes`). Hashing every byte of every constant in every run of the pass
    cost 50 ms on a ResNet-18 whose Winograd weights are 70 MB."""
    assert p.value is not None
    raw = _raw(p.value)
    return ("constant", p.dtype, p.shape, raw[::max(1, raw.size // 256)].tobytes())


def _same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.array_equal(_raw(a), _raw(b)))


def merge_node(p: Pending) -> Hashable | None:
    """op(a, b){attrs} -> an earlier op(a, b){attrs} (the key; None: never merge)."""
    if p.op in ("placeholder", "variable"):
        return None
    # Regions by identity: two loops merge only if they share their bodies (as a pass's
    # copies of one node do), never because two different bodies have equal attributes.
    return (p.op, p.attrs, tuple(id(i) for i in p.inputs), tuple(id(r) for r in p.regions))


def cse(graph: Graph, sig: Signature, ctx: PassContext) -> tuple[Graph, Signature]:
    """Replace every node by the first earlier node with the same key."""
    table: dict[Hashable, Node] = {}
    constants: dict[Hashable, list[Node]] = {}

    def visit(p: Pending, rb: Rebuilder) -> Node:
        if p.op == "constant":
            assert p.value is not None
            key = merge_constant(p)
            candidates = constants.setdefault(key, [])
            for earlier in candidates:
                value = rb.value(earlier)
                if value is not None and _same_bytes(value, p.value):
                    ctx.hit(merge_constant)
                    return earlier
            node = rb.keep(p)
            candidates.append(node)
            return node
        node_key = merge_node(p)
        if node_key is None:
            return rb.keep(p)
        found = table.get(node_key)
        if found is not None:
            ctx.hit(merge_node)
            return found
        node = rb.keep(p)
        table[node_key] = node
        return node

    return Rebuilder(graph, visit).run().finish(sig)


PASS = PassDef("cse", cse, "merge nodes computing the same value (hash-consing)",
               enabled_by=frozenset({"simplify", "constant_fold"}))  # new nodes, new constants
