"""The graph IR: dtypes, tensor types, nodes, graphs, signatures and `verify`.

A `Graph` is a DAG of immutable `Node`s in SSA form. Each node is one op applied to input
nodes with hashable attributes and has exactly one output whose `TensorType` is static.
`graph.nodes` is always in a topological order (creation order: a node can only be built
from nodes that exist). Values that are data rather than structure live beside the nodes:
`graph.variables` (the live, mutable parameter arrays) and `graph.constants`.

This module imports nothing from the rest of graphc but `errors`. Operator overloading on
`Node` (``a + b``) dispatches through `OPERATORS`, a table the op layer fills when
`graphc.ops` is imported; the IR itself knows no op.
"""

from __future__ import annotations

import enum
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphc.errors import (
    DTypeError,
    GraphcError,
    GraphNameError,
    GraphStructureError,
    ShapeError,
    SourceLoc,
)


class DType(enum.Enum):
    """The element types graphc supports."""

    float32 = "float32"
    float64 = "float64"
    int32 = "int32"
    int64 = "int64"
    bool = "bool"

    @property
    def np(self) -> np.dtype:
        return np.dtype(self.value)

    @property
    def short(self) -> str:
        return _SHORT[self]

    @property
    def is_float(self) -> bool:
        return self in (DType.float32, DType.float64)

    @property
    def is_int(self) -> bool:
        return self in (DType.int32, DType.int64)

    @property
    def itemsize(self) -> int:
        return self.np.itemsize

    @classmethod
    def of(cls, value: Any) -> DType:
        """Convert a DType, a name ('float32' or 'f32'), or a numpy dtype-like to a DType."""
        if isinstance(value, DType):
            return value
        if isinstance(value, str) and value in _FROM_SHORT:
            return _FROM_SHORT[value]
        try:
            name = np.dtype(value).name
        except TypeError as exc:
            raise DTypeError(f"unknown dtype {value!r}") from exc
        try:
            return cls(name)
        except ValueError as exc:
            supported = ", ".join(d.value for d in cls)
            raise DTypeError(f"unsupported dtype {name!r} (supported: {supported})") from exc

    def __repr__(self) -> str:
        return f"gc.{self.value}"

    def __str__(self) -> str:
        return self.value


_SHORT = {
    DType.float32: "f32",
    DType.float64: "f64",
    DType.int32: "i32",
    DType.int64: "i64",
    DType.bool: "bool",
}
_FROM_SHORT = {v: k for k, v in _SHORT.items()}

float32 = DType.float32
float64 = DType.float64
int32 = DType.int32
int64 = DType.int64
bool_ = DType.bool


@dataclass(frozen=True)
class TensorType:
    """A static shape and an element type. Printed as ``f32[128,784]`` (``f32[]`` scalar)."""

    shape: tuple[int, ...]
    dtype: DType

    def __post_init__(self) -> None:
        shape = tuple(int(d) for d in self.shape)
        if any(d < 0 for d in shape):
            raise ShapeError(f"negative dimension in shape {shape}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "dtype", DType.of(self.dtype))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __str__(self) -> str:
        return f"{self.dtype.short}[{','.join(str(d) for d in self.shape)}]"


AttrValue = Any  # int | float | bool | str | None | DType | tuple[AttrValue, ...]


def _freeze(value: Any) -> AttrValue:
    """Turn an attribute value into its canonical hashable form (lists become tuples)."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (bool, int, float, str, DType)) or value is None:
        return value
    raise GraphcError(f"attribute value {value!r} of type {type(value).__name__} is not allowed")


class Attrs(Mapping[str, AttrValue]):
    """An immutable, hashable mapping of op attributes (sorted by key)."""

    __slots__ = ("_hash", "_items")

    def __init__(self, items: Mapping[str, Any] | None = None):
        frozen = tuple(sorted((k, _freeze(v)) for k, v in (items or {}).items()))
        self._items: tuple[tuple[str, AttrValue], ...] = frozen
        self._hash = hash(frozen)

    def __getitem__(self, key: str) -> AttrValue:
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Attrs):
            return self._items == other._items
        return NotImplemented

    def __repr__(self) -> str:
        return f"Attrs({dict(self._items)!r})"


# Filled by graphc.ops: maps a Python operator name ("add", "matmul", "getitem", ...) to the
# builder function implementing it. The IR stays free of op knowledge.
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

    Nodes compare and hash by identity (``==`` builds an `equal` node, like numpy). They are
    immutable: passes build new nodes instead of editing old ones.
    """

    op: str
    inputs: tuple[Node, ...]
    attrs: Attrs
    type: TensorType
    name: str
    loc: SourceLoc | None
    graph: Graph = field(repr=False)

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
