"""The rewrite-pass contract and the machinery every pass uses to rebuild a graph.

Nodes are immutable, so a pass never edits its input: it copies the graph node by node, in
order, into a new `Graph` of the same name, and may substitute a node on the way. The
`Rebuilder` does the bookkeeping the IR contract asks for, so passes need not:

- a node that survives keeps its name and source location; variables are bound to the SAME
  numpy arrays as in the input graph (compiled executables update weights through them),
  constants carry their arrays over;
- a node a rewrite creates gets the source location of the node it replaces, and a name
  that no node of the input graph uses (so later surviving nodes keep theirs);
- the signature is mapped onto the new graph, and becomes the new graph's only signature.

A pass is a `PassDef`: a name (= module name = CLI name) and a function
``run(graph, signature, ctx) -> (graph, signature)``. `ctx.hit(rule)` records that a rewrite
rule fired; the pass manager reports the counts with the place the rule is defined.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphc.errors import CompileError, GraphStructureError, SourceLoc
from graphc.ir import (
    SOURCE_OPS,
    Attrs,
    DType,
    Graph,
    Node,
    Region,
    Signature,
    TensorType,
    TupleType,
    ancestors,
)
from graphc.ops import registry
from graphc.options import CompileOptions

# Bound on how deeply a rule's freshly built node is offered to the rules again; rules
# shrink graphs, so real rewrites never come near it (it only stops a buggy rule cycle).
MAX_REWRITE_DEPTH = 32


@dataclass(frozen=True)
class Pending:
    """A node about to be placed in the new graph; rewrite rules match on it.

    `op`, `attrs`, `type`, `name` and `loc` are the original node's (or, for a node a rule
    builds, the new one's); `inputs` are already nodes of the NEW graph, so a rule sees
    producers that are themselves already rewritten. `value` is the array of a variable or
    constant (None for other ops). `regions` are a region op's bodies, shared with the
    original node (bodies are immutable; passes leave them as they are).
    """

    op: str
    inputs: tuple[Node, ...]
    attrs: Attrs
    type: TensorType | TupleType
    name: str
    loc: SourceLoc | None
    value: np.ndarray | None = None
    regions: tuple[Region, ...] = ()

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def dtype(self) -> DType:
        return self.type.dtype


@dataclass
class PassContext:
    """What a running pass may read (options) and write (rule hit counts)."""

    options: CompileOptions
    hits: Counter[str] = field(default_factory=Counter)
    where: dict[str, str] = field(default_factory=dict)
    iterations: int = 1

    def hit(self, rule: Callable[..., Any]) -> None:
        """Record one firing of `rule` (a function), keyed by its name."""
        self.hits[rule.__name__] += 1
        self.where[rule.__name__] = f"{rule.__module__}:{rule.__qualname__}"


PassFn = Callable[[Graph, Signature, PassContext], tuple[Graph, Signature]]


@dataclass(frozen=True)
class PassDef:
    """A named pass. `run` must return a new graph built with a `Rebuilder` (see module doc)
    and the signature mapped onto it; it must not change what the signature computes.

    A pass is idempotent: run on its own output it changes nothing. `enabled_by` names the
    passes whose changes can give it new work (None: any pass); the pass manager reruns a
    pass only when one of those changed the graph since the pass last ran.
    """

    name: str
    run: PassFn
    doc: str
    enabled_by: frozenset[str] | None = None


Visit = Callable[[Pending, "Rebuilder"], Node]


class Rebuilder:
    """Copies `source` into a new graph, asking `visit` what each node becomes.

    `visit(pending, rebuilder)` returns a node of the new graph: `rebuilder.keep(pending)`
    to copy it unchanged, or any replacement of the same type, built with `emit`/`constant`
    (which offer the new node to `visit` again, so rewrites compose) or an existing node.
    """

    def __init__(self, source: Graph, visit: Visit | None = None):
        self.source = source
        self.graph = Graph(source.name)
        self.mapping: dict[Node, Node] = {}
        self._visit: Visit = visit or (lambda p, rb: rb.keep(p))
        self._depth = 0
        self._counters: dict[str, int] = {}

    # --- driving -------------------------------------------------------------------------
    def run(self, nodes: Iterable[Node] | None = None) -> Rebuilder:
        """Visit `nodes` (default: all) of the source graph in graph order."""
        for old in self.source.nodes if nodes is None else nodes:
            self.copy(old)
        return self

    def copy(self, old: Node) -> Node:
        """Visit one node of the source graph (its inputs already visited); its new node."""
        pending = Pending(old.op, tuple(self.mapping[i] for i in old.inputs), old.attrs,
                          old.type, old.name, old.loc, self._source_value(old), old.regions)
        self.mapping[old] = self._offer(pending)
        return self.mapping[old]

    def finish(self, sig: Signature) -> tuple[Graph, Signature]:
        """The new graph and `sig` mapped onto it (registered as its only signature)."""

        def new(node: Node) -> Node:
            try:
                return self.mapping[node]
            except KeyError:
                raise GraphStructureError(f"signature {sig.name!r} needs %{node.name}, which "
                                          "the pass did not keep") from None

        updates = tuple((new(var), new(value)) for var, value in sig.updates)
        for (old_var, _), (new_var, _) in zip(sig.updates, updates):
            if new_var.op != "variable" or new_var.name != old_var.name:
                raise GraphStructureError(f"update target %{old_var.name} became "
                                          f"{new_var.op} %{new_var.name}")
        result = Signature(sig.name, tuple(new(n) for n in sig.inputs),
                           tuple(new(n) for n in sig.outputs), updates)
        self.graph.signatures = {sig.name: result}
        return self.graph, result

    # --- what visit may call -------------------------------------------------------------
    def keep(self, p: Pending) -> Node:
        """Place `p` in the new graph as it is (its name unless already taken)."""
        name = p.name if p.name not in self.graph else self.fresh_name(p.op)
        if p.op == "variable" and name != p.name:
            raise GraphStructureError(f"variable %{p.name} cannot keep its name")
        node = self.graph.add_node(p.op, p.inputs, p.attrs, p.type, name=name, loc=p.loc,
                                   regions=p.regions)
        if p.op == "variable":
            assert p.value is not None
            self.graph.variables.bind(name, p.value)
        elif p.op == "constant":
            assert p.value is not None
            self.graph.constants[name] = p.value
        return node

    def emit(self, op: str, inputs: Sequence[Node], attrs: Mapping[str, Any] | None = None,
             *, at: Pending, name: str | None = None) -> Node:
        """A new `op` node replacing (part of) `at`: its type is inferred, its loc is at's.

        Give ``name=at.name`` for the node that takes `at`'s place, so the name survives.
        """
        opdef = registry.get(op)
        frozen = opdef.check_attrs(attrs or {})
        ttype = opdef.infer_type(tuple(i.type for i in inputs), frozen)
        return self._offer(Pending(op, tuple(inputs), frozen, ttype,
                                   name or self.fresh_name(op), at.loc))

    def constant(self, value: np.ndarray, *, at: Pending, name: str | None = None,
                 copy: bool = True) -> Node:
        """A new constant holding `value` (made read-only), located at `at`. With
        ``copy=False`` a C-contiguous array the caller hands over (a freshly computed one,
        nobody else holds) is kept as it is: a pass computing tens of megabytes of
        constants (Winograd's transformed weights) need not copy them again."""
        if copy or not (isinstance(value, np.ndarray) and value.flags.c_contiguous):
            array = np.array(value, order="C", copy=True)
        else:
            array = value
        array.flags.writeable = False
        ttype = TensorType(array.shape, DType.of(array.dtype))
        return self._offer(Pending("constant", (), Attrs(), ttype,
                                   name or self.fresh_name("constant"), at.loc, array))

    def value(self, node: Node) -> np.ndarray | None:
        """The array of a constant node of the new graph, else None."""
        return self.graph.constants.get(node.name) if node.op == "constant" else None

    def fresh_name(self, base: str) -> str:
        """A name used neither in the source graph nor in the new graph."""
        n = self._counters.get(base, 0)
        candidate = base if n == 0 else f"{base}_{n}"
        while candidate in self.source or candidate in self.graph:
            n += 1
            candidate = f"{base}_{n}"
        self._counters[base] = n + 1
        return candidate

    # --- internals -----------------------------------------------------------------------
    def _offer(self, p: Pending) -> Node:
        if self._depth >= MAX_REWRITE_DEPTH:
            return self.keep(p)
        self._depth += 1
        try:
            node = self._visit(p, self)
        finally:
            self._depth -= 1
        if node.type != p.type:
            raise CompileError(f"%{p.name} ({p.op}, {p.type}) was replaced by %{node.name} "
                               f"({node.op}, {node.type}): a rewrite must keep the type",
                               loc=p.loc)
        if node.graph is not self.graph:
            raise CompileError(f"%{p.name} was replaced by a node of another graph", loc=p.loc)
        return node

    def _source_value(self, old: Node) -> np.ndarray | None:
        if old.op == "variable":
            return self.source.variables[old.name]
        if old.op == "constant":
            return self.source.constants[old.name]
        return None


Rule = Callable[[Pending, Rebuilder], "Node | None"]


def apply_rules(rules: Sequence[Rule], ctx: PassContext) -> Visit:
    """A visit that tries `rules` in order; the first non-None result replaces the node."""

    def visit(p: Pending, rb: Rebuilder) -> Node:
        if p.op not in SOURCE_OPS:
            for rule in rules:
                result = rule(p, rb)
                if result is None:
                    continue
                if result.type != p.type:
                    raise CompileError(
                        f"rule {rule.__module__}:{rule.__qualname__} replaced %{p.name} "
                        f"({p.op}, {p.type}) by %{result.name} ({result.op}, {result.type}): "
                        "a rewrite must keep the type", loc=p.loc)
                ctx.hit(rule)
                return result
        return rb.keep(p)

    return visit


def live_nodes(graph: Graph, sig: Signature) -> set[Node]:
    """Nodes the signature needs: ancestors of outputs and update values, update targets,
    and the listed inputs (kept even when unused, since callers pass them)."""
    return ancestors([*sig.inputs, *sig.outputs, *(n for pair in sig.updates for n in pair)])
