"""Tracing Python functions into body graphs (`Region`s), and the small pytrees they take.

`trace(fn, tree, types, what)` calls `fn` once on placeholders of a new body graph and
returns the region with the outer values `fn` captured. Closure conversion happens here:
while `fn` runs, the body is the current graph and its `Graph.capture` hook turns every
node of an enclosing graph that a body node reads into a new param of the body; the
caller passes those outer nodes as extra operands of the region node. So every body is
closed (it reads only its params), as JAX's closed jaxprs and MLIR's isolated regions are,
and a body nested in a body captures through each level.

Pytrees are what `scan`, `cond` and `while_loop` carry: a Node (a leaf), a tuple or list
of pytrees, or None (no leaves). Leaves that are Python numbers or numpy arrays become
constants.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphc.builder import constant, user_location
from graphc.errors import GraphcError, GraphStructureError
from graphc.ir import Graph, Node, Region, TensorType, target_graph

__all__ = ["Traced", "TreeDef", "flatten", "make_region", "trace", "unflatten"]


@dataclass(frozen=True)
class TreeDef:
    """The structure of a pytree: `kind` is "leaf", "none", "tuple" or "list"."""

    kind: str
    children: tuple[TreeDef, ...] = ()

    @property
    def leaves(self) -> int:
        if self.kind == "leaf":
            return 1
        return sum(c.leaves for c in self.children)

    def __str__(self) -> str:
        if self.kind in ("leaf", "none"):
            return "*" if self.kind == "leaf" else "None"
        inner = ", ".join(str(c) for c in self.children)
        return f"({inner})" if self.kind == "tuple" else f"[{inner}]"


def flatten(tree: Any, what: str) -> tuple[list[Any], TreeDef]:
    """The leaves of `tree` in order and its structure; a GraphcError naming `what` for
    anything that is neither a leaf, a tuple, a list nor None."""
    leaves: list[Any] = []

    def walk(x: Any) -> TreeDef:
        if x is None:
            return TreeDef("none")
        if isinstance(x, (tuple, list)):
            return TreeDef("tuple" if isinstance(x, tuple) else "list",
                           tuple(walk(c) for c in x))
        if isinstance(x, (Node, bool, int, float, np.ndarray, np.generic)):
            leaves.append(x)
            return TreeDef("leaf")
        raise GraphcError(f"{what}: expected nodes, numbers, arrays, tuples, lists or None, "
                          f"got {type(x).__name__}")

    return leaves, walk(tree)


def unflatten(tree: TreeDef, leaves: Sequence[Node]) -> Any:
    """The pytree of structure `tree` holding `leaves` in order."""
    it = iter(leaves)

    def build(t: TreeDef) -> Any:
        if t.kind == "leaf":
            return next(it)
        if t.kind == "none":
            return None
        children = [build(c) for c in t.children]
        return tuple(children) if t.kind == "tuple" else children

    return build(tree)


def leaf_nodes(leaves: Sequence[Any], like: Sequence[TensorType] | None = None) -> list[Node]:
    """Leaves as nodes: numbers and arrays become constants (of `like`'s dtype if given)."""
    out = []
    for i, x in enumerate(leaves):
        if isinstance(x, Node):
            out.append(x)
        else:
            dtype = like[i].dtype if like is not None and i < len(like) else None
            out.append(constant(x, dtype=dtype))
    return out


@dataclass(frozen=True)
class Traced:
    """A traced body: the region, the outer nodes it captured (its params after the
    explicit ones, in order) and the structure of what `fn` returned."""

    region: Region
    captured: tuple[Node, ...]
    out_tree: TreeDef


def trace(fn: Callable[..., Any], arg_trees: Sequence[TreeDef],
          arg_types: Sequence[Sequence[TensorType]], what: str, name: str,
          outer: Graph) -> Traced:
    """Call `fn` once with one pytree of placeholders per `arg_trees` (leaf types from
    `arg_types`), building a body graph called `name` whose region node will be in `outer`.

    Results that are outer nodes or constants become body nodes too, so results are always
    nodes of the body. Errors from `fn` propagate; a body that reads a node of a graph that
    does not enclose it is a GraphStructureError naming `what`.
    """
    body = Graph(name)
    captured: list[Node] = []
    captures: dict[Node, Node] = {}

    def capture(node: Node) -> Node:
        if node in captures:
            return captures[node]
        if node.graph is outer:
            outside = node
        elif outer.capture is not None:
            outside = outer.capture(node)  # a body inside a body: capture at every level
        else:
            raise GraphStructureError(
                f"{what}: the body reads %{node.name} of graph {node.graph.name!r}, which "
                f"does not enclose it", loc=user_location())
        param = body.add_node("placeholder", (), {}, node.type,
                              name=body.unique_name(node.name), loc=node.loc)
        captures[node] = param
        captured.append(outside)
        return param

    params: list[Node] = []
    args = []
    for tree, types in zip(arg_trees, arg_types):
        leaves = [body.add_node("placeholder", (), {}, t, name=body.unique_name("arg"),
                                loc=user_location()) for t in types]
        params.extend(leaves)
        args.append(unflatten(tree, leaves))
    body.capture = capture
    try:
        with body:
            out = fn(*args)
            leaves, out_tree = flatten(out, f"{what}: the result")
            results = leaf_nodes(leaves)
            results = [capture(r) if r.graph is not body else r for r in results]
    finally:
        body.capture = None
    region = Region(body, (*params, *(captures[n] for n in captures)), tuple(results))
    return Traced(region, tuple(captured), out_tree)


def make_region(name: str, types: Sequence[TensorType],
                build: Callable[[list[Node]], Sequence[Node]]) -> Region:
    """A body called `name` with one param per type, whose results `build(params)` makes
    with ops (a closed body: `build` may read only the params and constants it makes)."""
    body = Graph(name)
    params = [body.add_node("placeholder", (), {}, t, name=body.unique_name("arg"))
              for t in types]
    with body:
        results = tuple(build(params))
    return Region(body, tuple(params), results)


def outer_graph(nodes: Sequence[Node]) -> Graph:
    """The graph a region node reading `nodes` will be added to."""
    return target_graph(nodes)
