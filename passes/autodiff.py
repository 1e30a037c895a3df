"""Reverse-mode symbolic differentiation: graph -> gradient nodes in the same graph.

`grad(y, xs)` walks the nodes between `xs` and `y` in reverse graph order, asks each op's
gradient rule for the vector-Jacobian product of its upstream gradient, and sums the
contributions a node receives from its several users. Gradient rules build ordinary nodes,
so gradients can be printed, optimized, compiled and differentiated again.

Contracts:
- Only float nodes carry gradients; integer and bool nodes are cut (comparisons, argmax,
  indices). Ops without a rule (floor, round, sign, comparisons) pass zero gradient.
- `stop_gradient(x)` is the identity whose gradient is zero.
- A requested x that `y` does not depend on gets zeros of its shape, or a `GraphcError`
  with ``disconnected="raise"``.
- Region ops (scan, cond) differentiate through their `RegionRules.grad`, which calls
  `vjp` on copies of their bodies; while_loop raises (not differentiable).
"""

from __future__ import annotations

from collections.abc import Sequence

from graphc.builder import constant
from graphc.errors import GraphcError, ShapeError
from graphc.ir import Node, TensorType, TupleType, ancestors
from graphc.ops import elementwise, layout, registry


def grad(
    y: Node,
    xs: Node | Sequence[Node],
    grad_y: Node | None = None,
    *,
    disconnected: str = "zero",
) -> list[Node] | Node:
    """d(y)/d(xs): one gradient node per x (a single node if `xs` is a single node).

    `y` must be a float scalar unless `grad_y` (of y's type) is given, in which case the
    result is the vector-Jacobian product ``grad_y^T J``.
    """
    # Gradient nodes (seeds, zeros) belong to y's graph, whatever graph is current.
    with y.graph:
        return _grad(y, xs, grad_y, disconnected)


def _grad(y: Node, xs: Node | Sequence[Node], grad_y: Node | None, disconnected: str
          ) -> list[Node] | Node:
    single = isinstance(xs, Node)
    targets = [xs] if isinstance(xs, Node) else list(xs)
    if disconnected not in ("zero", "raise"):
        raise GraphcError(f"disconnected must be 'zero' or 'raise', got {disconnected!r}",
                          op="grad")
    if not y.dtype.is_float:
        raise GraphcError(f"y (%{y.name}) must be a float tensor, got {y.type}", op="grad",
                          loc=y.loc)
    for x in targets:
        if not isinstance(x, Node) or x.graph is not y.graph:
            raise GraphcError(f"cannot differentiate with respect to {x!r}: not a node of "
                              f"graph {y.graph.name!r}", op="grad")
        if not x.dtype.is_float:
            raise GraphcError(f"x (%{x.name}) must be a float tensor, got {x.type}", op="grad",
                              loc=x.loc)
    if grad_y is None:
        if y.shape != ():
            raise ShapeError(f"y (%{y.name}) has shape {y.shape}; a non-scalar y needs grad_y",
                             op="grad", loc=y.loc)
        seed = constant(1.0, dtype=y.dtype)
    else:
        if grad_y.type != y.type:
            raise ShapeError(f"grad_y: expected {y.type}, got {grad_y.type}", op="grad",
                             loc=grad_y.loc)
        seed = grad_y

    found = backprop([y], [seed], targets)
    results: list[Node] = []
    for x, gx in zip(targets, found):
        if gx is not None:
            results.append(gx)
        elif disconnected == "raise":
            raise GraphcError(f"y (%{y.name}) does not depend on %{x.name}", op="grad",
                              loc=x.loc)
        else:
            results.append(layout.broadcast_to(constant(0.0, dtype=x.dtype), x.shape))
    return results[0] if single else results


def vjp(ys: Sequence[Node], cts: Sequence[Node | None], xs: Sequence[Node]
        ) -> list[Node | None]:
    """The cotangents of `xs` given those of `ys` (None: zero), built in the graph of `ys`;
    None for an x that no y with a cotangent depends on. What region ops' gradient rules
    use to differentiate their bodies (`RegionRules.grad`)."""
    seeds = [(y, ct) for y, ct in zip(ys, cts) if ct is not None]
    if not seeds:
        return [None] * len(xs)
    with seeds[0][0].graph:
        return backprop([y for y, _ in seeds], [ct for _, ct in seeds], xs)


def backprop(ys: Sequence[Node], seeds: Sequence[Node], targets: Sequence[Node]
             ) -> list[Node | None]:
    """Reverse-mode sweep from `ys` (with cotangents `seeds`) to `targets`.

    A region op's results are read by `get` nodes: their cotangents are gathered per result
    index and handed, one per result, to the op's region gradient rule (which gets `vjp` to
    differentiate its bodies).
    """
    relevant = _between(targets, ys)
    contributions: dict[Node, list[Node]] = {}
    for y, seed in zip(ys, seeds):
        contributions.setdefault(y, []).append(seed)
    per_result: dict[Node, dict[int, list[Node]]] = {}
    graph_nodes = ys[0].graph.nodes
    ids = {id(y) for y in ys}
    # By identity: list.index would compare with ==, which builds an `equal` node.
    stop = max(i for i, n in enumerate(graph_nodes) if id(n) in ids)
    for node in reversed(graph_nodes[: stop + 1]):
        if node not in relevant:
            continue
        if isinstance(node.type, TupleType):
            if node in per_result:
                _region_grad(node, per_result[node], relevant, contributions)
            continue
        if node not in contributions:
            continue
        g = _total(contributions[node])
        contributions[node] = [g]
        if node.op in ("placeholder", "variable", "constant"):
            continue
        if node.op == "get":
            per_result.setdefault(node.inputs[0], {}).setdefault(
                node.attrs["index"], []).append(g)
            continue
        rule = registry.get(node.op).grad
        if rule is None:
            continue
        _accumulate(node, rule(node, g), relevant, contributions)
    return [contributions[x][0] if x in contributions else None for x in targets]


def _region_grad(node: Node, cts: dict[int, list[Node]], relevant: set[Node],
                 contributions: dict[Node, list[Node]]) -> None:
    rules = registry.get(node.op).region
    assert rules is not None and isinstance(node.type, TupleType)
    if rules.grad is None:
        raise GraphcError(rules.not_differentiable or f"{node.op} is not differentiable",
                          op=node.op, loc=node.loc)
    totals = [_total(cts[i]) if i in cts else None for i in range(len(node.type))]
    _accumulate(node, rules.grad(node, totals, vjp), relevant, contributions)


def _accumulate(node: Node, input_grads: Sequence[Node | None], relevant: set[Node],
                contributions: dict[Node, list[Node]]) -> None:
    if len(input_grads) != len(node.inputs):
        raise GraphcError(f"gradient rule returned {len(input_grads)} values for "
                          f"{len(node.inputs)} inputs (a bug in the rule)", op=node.op)
    for inp, gi in zip(node.inputs, input_grads):
        if gi is None or inp not in relevant or not _is_float(inp):
            continue
        if gi.type != inp.type:
            raise GraphcError(
                f"gradient rule gave {gi.type} for input %{inp.name} of type {inp.type} "
                "(a bug in the rule)", op=node.op, loc=node.loc)
        contributions.setdefault(inp, []).append(gi)


def _is_float(node: Node) -> bool:
    return isinstance(node.type, TensorType) and node.type.dtype.is_float


def _between(targets: Sequence[Node], ys: Sequence[Node]) -> set[Node]:
    """Nodes that are both ancestors of (or equal to) some y and descendants of some
    target."""
    above = ancestors(ys)
    reach: set[Node] = {t for t in targets if t in above}
    for n in ys[0].graph.nodes:
        if n in above and n not in reach and any(i in reach for i in n.inputs):
            reach.add(n)
    return reach


def _total(parts: list[Node]) -> Node:
    total = parts[0]
    for p in parts[1:]:
        total = elementwise.add(total, p)
    return total
