"""The graph data structure: `Node` (one SSA value), `Signature` (what to compile) and
`Graph` (nodes, live variables, constants, signatures), plus the graph context.

A `Graph` is a DAG of immutable `Node`s in SSA form; `graph.nodes` is always in a
topological order (creation order). Values that are data rather than structure live beside
the nodes: `graph.variables` (the live, mutable parameter arrays) and `graph.constants`.
The three classes refer to each other (a node knows its graph, a graph its nodes and
signatures), so they live in one module.

Operator overloading (``a + b``) dispatches through `OPERATORS`, a table the op layer fills
(`graphc.ops.registry`); the IR itself knows no op.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphc.errors import (
    ArgumentError,
    GraphcError,
    GraphNameError,
    GraphStructureError,
    ShapeError,
    SourceLoc,
)
from graphc.ir.types import Attrs, DType, TensorType, TupleType
from graphc.ir.variables import VariableStore

# Filled by graphc.ops.registry: maps a Python operator or Node method name ("add",
# "matmul", "getitem", "sum", ...) to the builder function implementing it. The IR stays
# free of op knowledge.
OPERATORS: dict[str, Callable[..., Node]] = {}


def _operator(name: str, *, reflected: bool = False) -> Callable[..., Node]:
    def method(self: Node, *args: Any) -> Node:
        fn = OPERATORS[name]
        if reflected:
            return fn(args[0], self)
        return fn(self, *args)

    method.__name__ = f"__{'r' if reflected else ''}{name}__"
    return method


@dataclass(frozen=True, eq=False)
class Node:
    """One SSA value: `op` applied to `inputs` with `attrs`, producing one tensor of `type`.

    A region op (scan, cond, while_loop) also owns `regions`, its body graphs, and its type
    is a `TupleType` of its results, which `get` nodes read. Nodes compare and hash by
    identity (``==`` builds an `equal` node, like numpy). They are immutable: passes build
    new nodes instead of editing old ones.
    """

    op: str
    inputs: tuple[Node, ...]
    attrs: Attrs
    type: TensorType | TupleType
    name: str
    loc: SourceLoc | None
    graph: Graph = field(repr=False)
    regions: tuple[Region, ...] = field(default=(), repr=False)

    # numpy must not treat a Node as an array-like: `ndarray + node` defers to Node.__radd__.
    __array_ufunc__ = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def dtype(self) -> DType:
        return self.type.dtype

    @property
    def ndim(self) -> int:
        return self.type.ndim

    @property
    def size(self) -> int:
        return self.type.size

    @property
    def T(self) -> Node:  # noqa: N802 - numpy's spelling
        return OPERATORS["transpose"](self)

    # Methods for the ops a gradient rule of a lower op family needs from a higher one
    # (elementwise gradients sum over broadcast axes): families import downward only.
    def sum(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Node:
        return OPERATORS["sum"](self, axis=axis, keepdims=keepdims)

    def reshape(self, shape: tuple[int, ...]) -> Node:
        return OPERATORS["reshape"](self, shape)

    def __repr__(self) -> str:
        return f"<Node %{self.name} = {self.op} : {self.type}>"

    def __hash__(self) -> int:
        return id(self)

    def __bool__(self) -> bool:
        raise GraphcError(
            f"the truth value of node %{self.name} is unknown while the graph is built; "
            "use gc.where(...) instead of Python `if`/`and`/`or`",
            loc=self.loc,
        )

    def __len__(self) -> int:
        if not self.shape:
            raise ShapeError(f"len() of the scalar node %{self.name}")
        return self.shape[0]

    def __iter__(self) -> Iterator[Node]:
        return (self[i] for i in range(len(self)))

    __add__ = _operator("add")
    __radd__ = _operator("add", reflected=True)
    __sub__ = _operator("sub")
    __rsub__ = _operator("sub", reflected=True)
    __mul__ = _operator("mul")
    __rmul__ = _operator("mul", reflected=True)
    __truediv__ = _operator("div")
    __rtruediv__ = _operator("div", reflected=True)
    __pow__ = _operator("pow")
    __rpow__ = _operator("pow", reflected=True)
    __mod__ = _operator("mod")
    __rmod__ = _operator("mod", reflected=True)
    __matmul__ = _operator("matmul")
    __rmatmul__ = _operator("matmul", reflected=True)
    __neg__ = _operator("neg")
    __abs__ = _operator("abs")
    __invert__ = _operator("logical_not")
    __and__ = _operator("logical_and")
    __rand__ = _operator("logical_and", reflected=True)
    __or__ = _operator("logical_or")
    __ror__ = _operator("logical_or", reflected=True)
    __lt__ = _operator("less")
    __le__ = _operator("less_equal")
    __gt__ = _operator("greater")
    __ge__ = _operator("greater_equal")
    __eq__ = _operator("equal")  # type: ignore[assignment]
    __ne__ = _operator("not_equal")  # type: ignore[assignment]
    __getitem__ = _operator("getitem")


SOURCE_OPS = frozenset({"placeholder", "variable", "constant"})


@dataclass(frozen=True, eq=False)
class Region:
    """A body graph owned by a node (a loop body, a branch), closed like MLIR's
    isolated-from-above regions and JAX's closed jaxprs.

    `params` are placeholders of `graph`, in the order the owning node binds them (its op
    says which operands, and loop-carried values, they receive); `results` are nodes of
    `graph`, the body's outputs. A body reads nothing but its params, its own constants and
    its own nodes: an outer value it uses is captured when it is traced and passed as an
    extra operand of the owning node. It has no variables and no signatures. A region is
    immutable once built, so a pass that keeps its node shares it with the new graph.
    """

    graph: Graph
    params: tuple[Node, ...]
    results: tuple[Node, ...]

    @property
    def param_types(self) -> tuple[TensorType | TupleType, ...]:
        return tuple(p.type for p in self.params)

    @property
    def result_types(self) -> tuple[TensorType | TupleType, ...]:
        return tuple(r.type for r in self.results)

    def needed_nodes(self) -> list[Node]:
        """The params and the nodes the results depend on, in graph order."""
        needed = ancestors([*self.params, *self.results])
        return [n for n in self.graph.nodes if n in needed]


def ancestors(roots: Iterable[Node]) -> set[Node]:
    """`roots` and every node they depend on."""
    seen: set[Node] = set()
    stack = list(roots)
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(n.inputs)
    return seen


@dataclass(frozen=True)
class Signature:
    """A named thing to compile: inputs (placeholders), outputs, and variable updates."""

    name: str
    inputs: tuple[Node, ...]
    outputs: tuple[Node, ...]
    updates: tuple[tuple[Node, Node], ...] = ()

    def needed_nodes(self) -> list[Node]:
        """The nodes the outputs and update values depend on, in graph order."""
        roots = [*self.outputs, *(value for _, value in self.updates)]
        if not roots:
            return []
        needed = ancestors(roots)
        return [n for n in roots[0].graph.nodes if n in needed]


class Graph:
    """A static computation graph; also a context manager that makes it the current graph.

    Invariants: `nodes` is topologically ordered; node names are unique; every variable node
    has an array in `variables` and every constant node an array in `constants`, each of the
    node's exact shape and dtype.
    """

    def __init__(self, name: str = "graph"):
        self.name = name
        # Set while a body is traced (graphc.ops.trace): maps a node of an enclosing graph to
        # the body's param standing for it, so nodes built in the body may read outer values.
        self.capture: Callable[[Node], Node] | None = None
        self.nodes: list[Node] = []
        self._by_name: dict[str, Node] = {}
        self._counters: dict[str, int] = {}
        self.variables = VariableStore()
        self.constants: dict[str, np.ndarray] = {}
        self.signatures: dict[str, Signature] = {}

    # --- context manager -------------------------------------------------------------
    def __enter__(self) -> Graph:
        _GRAPHS.stack.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        popped = _GRAPHS.stack.pop()
        assert popped is self, "graph contexts exited out of order"

    # --- nodes -------------------------------------------------------------------------
    def unique_name(self, base: str) -> str:
        """Return `base` if unused, else `base_1`, `base_2`, ..."""
        if base not in self._by_name:
            return base
        n = self._counters.get(base, 0)
        while True:
            n += 1
            candidate = f"{base}_{n}"
            if candidate not in self._by_name:
                self._counters[base] = n
                return candidate

    def add_node(
        self,
        op: str,
        inputs: Sequence[Node],
        attrs: Mapping[str, Any] | Attrs,
        type: TensorType,
        *,
        name: str | None = None,
        loc: SourceLoc | None = None,
        regions: Sequence[Region] = (),
    ) -> Node:
        """Append a node. An explicit `name` must be unused; otherwise one is generated.
        While a body is traced, an input of an enclosing graph is replaced by its capture."""
        inputs = list(inputs)
        for i, inp in enumerate(inputs):
            if not isinstance(inp, Node):
                raise GraphStructureError(f"input {i} is not a Node: {inp!r}", op=op, loc=loc)
            if inp.graph is not self and self.capture is not None:
                inputs[i] = inp = self.capture(inp)
            if inp.graph is not self:
                raise GraphStructureError(
                    f"input {i} (%{inp.name}) belongs to graph {inp.graph.name!r}, "
                    f"not to {self.name!r}",
                    op=op,
                    loc=loc,
                )
        if name is None:
            name = self.unique_name(op)
        elif not _valid_name(name):
            raise GraphNameError(
                f"invalid node name {name!r}: use letters, digits, '_', '.', '/' or '-'",
                op=op,
                loc=loc,
            )
        elif name in self._by_name:
            raise GraphNameError(f"the name {name!r} is already used in graph {self.name!r}",
                                 op=op, loc=loc)
        attrs = attrs if isinstance(attrs, Attrs) else Attrs(attrs)
        for region in regions:
            if not isinstance(region, Region) or region.graph is self:
                raise GraphStructureError(f"region {region!r} is not a body graph of its own",
                                          op=op, loc=loc)
        node = Node(op, tuple(inputs), attrs, type, name, loc, self, tuple(regions))
        self.nodes.append(node)
        self._by_name[name] = node
        return node

    def __getitem__(self, name: str) -> Node:
        try:
            return self._by_name[name]
        except KeyError:
            raise GraphNameError(f"graph {self.name!r} has no node named {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __len__(self) -> int:
        return len(self.nodes)

    def __repr__(self) -> str:
        return f"<Graph {self.name!r}: {len(self.nodes)} nodes>"

    @property
    def placeholders(self) -> list[Node]:
        return [n for n in self.nodes if n.op == "placeholder"]

    @property
    def variable_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.op == "variable"]

    @property
    def trainable_variables(self) -> list[Node]:
        return [n for n in self.variable_nodes if n.attrs.get("trainable", True)]

    def users(self) -> dict[Node, list[Node]]:
        """Map every node to the nodes that read it (in node order)."""
        result: dict[Node, list[Node]] = {n: [] for n in self.nodes}
        for n in self.nodes:
            for inp in n.inputs:
                result[inp].append(n)
        return result

    # --- signatures --------------------------------------------------------------------
    def add_signature(
        self,
        name: str,
        inputs: Sequence[Node],
        outputs: Sequence[Node],
        updates: Mapping[Node, Node] | Sequence[tuple[Node, Node]] | None = None,
    ) -> Signature:
        """Record what to compile under `name` (see `compile(g, signature=name)`); checked
        like the inputs/outputs/updates of a call (`checked_signature`)."""
        sig = checked_signature(self, name, inputs, outputs, updates)
        self.signatures[name] = sig
        return sig

    def to_networkx(self) -> Any:
        """A `networkx.DiGraph` with one vertex per node name and an edge per input use.

        Vertex attributes: op, type (str), attrs (dict). Edge attribute: the input index.
        """
        import networkx as nx  # networkx is only needed for analyses, not to build graphs

        dg = nx.MultiDiGraph(name=self.name)
        for n in self.nodes:
            dg.add_node(n.name, op=n.op, type=str(n.type), attrs=dict(n.attrs))
            for i, inp in enumerate(n.inputs):
                dg.add_edge(inp.name, n.name, index=i)
        return dg


def checked_signature(
    graph: Graph,
    name: str,
    inputs: Sequence[Node],
    outputs: Sequence[Node],
    updates: Mapping[Node, Node] | Sequence[tuple[Node, Node]] | None = None,
) -> Signature:
    """The one validation of what to compile: `Graph.add_signature` (so signatures read from
    files too) and `gc.compile`/`gc.reference` calls use it.

    Every node belongs to `graph`; inputs are placeholders, each listed once; every
    placeholder the outputs and update values need is an input; updates target variables
    with values of their type, each once. Raises `ArgumentError` naming the signature and
    the node; never builds a signature that would fail later in the planner or the reference.
    """
    what = f"signature {name!r}"
    ins, outs = tuple(inputs), tuple(outputs)
    for kind, nodes in (("input", ins), ("output", outs)):
        for n in nodes:
            if not isinstance(n, Node):
                raise ArgumentError(f"{what}: {kind} {n!r} is not a graph node")
            if n.graph is not graph:
                raise ArgumentError(f"{what}: {kind} %{n.name} belongs to graph "
                                    f"{n.graph.name!r}, not {graph.name!r}")
    for n in outs:
        if not isinstance(n.type, TensorType):
            raise ArgumentError(f"{what}: output %{n.name} has several results {n.type}; "
                                "give the `get` node of the one to return")
    for n in ins:
        if n.op != "placeholder":
            raise ArgumentError(f"{what}: input %{n.name} is a {n.op}, not a placeholder "
                                "(only placeholders are fed; variables are the graph's state)")
    if len({n.name for n in ins}) != len(ins):
        raise ArgumentError(f"{what}: an input is listed twice")
    pairs = normalize_updates(updates)
    for var, value in pairs:
        for n in (var, value):
            if n.graph is not graph:
                raise ArgumentError(f"{what}: update node %{n.name} belongs to graph "
                                    f"{n.graph.name!r}, not {graph.name!r}")
    sig = Signature(name, ins, outs, pairs)
    missing = sorted(
        {p.name for p in sig.needed_nodes() if p.op == "placeholder"} - {n.name for n in ins})
    if missing:
        raise ArgumentError(f"{what}: the outputs/updates depend on placeholder(s) not listed "
                            f"in inputs: {', '.join(missing)}")
    return sig


def normalize_updates(
    updates: Mapping[Node, Node] | Sequence[tuple[Node, Node]] | None,
) -> tuple[tuple[Node, Node], ...]:
    """Accept updates as a dict or pairs; check each target is a variable of a matching type."""
    if updates is None:
        return ()
    pairs = list(updates.items()) if isinstance(updates, Mapping) else list(updates)
    seen: set[str] = set()
    for var, value in pairs:
        if not isinstance(var, Node) or var.op != "variable":
            raise GraphStructureError(f"update target {var!r} is not a variable node")
        if not isinstance(value, Node):
            raise GraphStructureError(f"update of %{var.name} is not a node: {value!r}")
        if value.type != var.type:
            raise ShapeError(
                f"update of variable %{var.name}: expected {var.type}, got {value.type}",
                loc=value.loc,
            )
        if var.name in seen:
            raise GraphStructureError(f"variable %{var.name} is updated twice")
        seen.add(var.name)
    return tuple(pairs)


def _valid_name(name: str) -> bool:
    return bool(name) and all(c.isalnum() or c in "_./-" for c in name) and not name[0] == "-"


class _GraphStack(threading.local):
    def __init__(self) -> None:
        self.stack: list[Graph] = []


# Per thread, so that two threads can build two graphs at once.
_GRAPHS = _GraphStack()


def target_graph(nodes: Sequence[Node]) -> Graph:
    """The graph a new node reading `nodes` belongs to: the current graph while a body is
    traced (the body captures outer values), else the graph of the first node."""
    stack = _GRAPHS.stack
    if stack and stack[-1].capture is not None:
        return stack[-1]
    return nodes[0].graph if nodes else current_graph()


def current_graph() -> Graph:
    """The innermost graph of the active ``with gc.Graph(...)`` blocks (of this thread)."""
    stack = _GRAPHS.stack
    if not stack:
        raise GraphStructureError(
            "no current graph: build nodes inside `with gc.Graph(name) as g:`"
        )
    return stack[-1]
