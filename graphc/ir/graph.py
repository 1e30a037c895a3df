"""`Graph` (nodes, live variables, constants, signatures), `Signature`, the graph context.

A `Graph` is a DAG of immutable `Node`s in SSA form; `graph.nodes` is always in a
topological order (creation order). Values that are data rather than structure live beside
the nodes: `graph.variables` (the live, mutable parameter arrays) and `graph.constants`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphc.errors import DTypeError, GraphNameError, GraphStructureError, ShapeError, SourceLoc
from graphc.ir.node import Node, ancestors
from graphc.ir.types import Attrs, TensorType


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


class VariableStore(Mapping[str, np.ndarray]):
    """The live values of a graph's variables, by name.

    Assigning ``g.variables["w"] = arr`` copies `arr` into the existing array (after a
    shape/dtype check), so compiled executables that bound the array keep seeing it.
    """

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}
        # Bumped whenever an array is (re)bound, so executables know to re-read pointers.
        self.version = 0

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self._arrays[name]
        except KeyError:
            raise GraphNameError(f"no variable named {name!r}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def __contains__(self, name: object) -> bool:
        return name in self._arrays

    def __setitem__(self, name: str, value: Any) -> None:
        current = self[name]
        array = np.asarray(value)
        if array.shape != current.shape:
            raise ShapeError(
                f"variable {name!r}: expected shape {current.shape}, got {array.shape}"
            )
        if array.dtype != current.dtype and not np.can_cast(array, current.dtype, "same_kind"):
            raise DTypeError(f"variable {name!r}: expected {current.dtype}, got {array.dtype}")
        np.copyto(current, array, casting="same_kind")

    def bind(self, name: str, array: np.ndarray) -> None:
        """Attach `array` itself (no copy) as the value of variable `name`."""
        self._arrays[name] = array
        self.version += 1


class Graph:
    """A static computation graph; also a context manager that makes it the current graph.

    Invariants: `nodes` is topologically ordered; node names are unique; every variable node
    has an array in `variables` and every constant node an array in `constants`, each of the
    node's exact shape and dtype.
    """

    def __init__(self, name: str = "graph"):
        self.name = name
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
    ) -> Node:
        """Append a node. An explicit `name` must be unused; otherwise one is generated."""
        for i, inp in enumerate(inputs):
            if not isinstance(inp, Node):
                raise GraphStructureError(f"input {i} is not a Node: {inp!r}", op=op, loc=loc)
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
        node = Node(op, tuple(inputs), attrs, type, name, loc, self)
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
        """Record what to compile under `name` (see `compile(g, signature=name)`)."""
        sig = Signature(name, tuple(inputs), tuple(outputs), normalize_updates(updates))
        for node in (*sig.inputs, *sig.outputs, *(n for pair in sig.updates for n in pair)):
            if node.graph is not self:
                raise GraphStructureError(f"signature {name!r}: %{node.name} is not in this graph")
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


def current_graph() -> Graph:
    """The innermost graph of the active ``with gc.Graph(...)`` blocks (of this thread)."""
    stack = _GRAPHS.stack
    if not stack:
        raise GraphStructureError(
            "no current graph: build nodes inside `with gc.Graph(name) as g:`"
        )
    return stack[-1]
