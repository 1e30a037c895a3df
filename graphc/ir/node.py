"""`Node`: one immutable SSA value of a graph, with numpy-style operator overloading.

Operator overloading (``a + b``) dispatches through `OPERATORS`, a table the op layer fills
when `graphc.ops` is imported; the IR itself knows no op.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from graphc.errors import GraphcError, ShapeError, SourceLoc
from graphc.ir.types import Attrs, DType, TensorType

if TYPE_CHECKING:  # for annotations only: graph.py imports this module
    from graphc.ir.graph import Graph


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
