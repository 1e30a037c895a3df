"""Building graphs: placeholders, variables, constants, and `apply` (one op -> one node).

Every node built here records the user's source location: the first stack frame outside
graphc's own packages. Type rules run at build time, so a wrong shape is reported at the
user's line, not later at compile time.

Python scalars are *weakly typed* (as in JAX and NumPy 2): in ``x * 2.0`` the constant takes
the dtype of `x`. Two tensors of different dtypes are never promoted implicitly; the error
asks for an explicit `gc.cast`, which keeps the cost of a conversion visible in the graph.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from graphc.errors import DTypeError, GraphcError, GraphStructureError, ShapeError, SourceLoc
from graphc.ir import (
    DType,
    Graph,
    Node,
    Region,
    TensorType,
    current_graph,
    target_graph,
    to_bfloat16,
)
from graphc.ir.opdef import OpDef

_GRAPHC_DIR = Path(__file__).resolve().parent
# passes/ and runtime/ install inside graphc/; in an editable install they sit beside it.
_INTERNAL_DIRS = tuple(
    str(d) + "/"
    for d in (_GRAPHC_DIR, _GRAPHC_DIR.parent / "passes", _GRAPHC_DIR.parent / "runtime")
)


def user_location() -> SourceLoc | None:
    """The innermost stack frame that is not graphc's own code."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(_INTERNAL_DIRS):
            return SourceLoc(filename, frame.f_lineno, frame.f_code.co_name)
        frame = frame.f_back
    return None


Operand = Node | float | int | bool | np.ndarray | np.generic


def placeholder(
    shape: Sequence[int], dtype: DType | str = DType.float32, name: str | None = None
) -> Node:
    """An input of the graph, given a value at each call."""
    graph = current_graph()
    loc = user_location()
    ttype = _tensor_type(shape, dtype, "placeholder", loc)
    return graph.add_node("placeholder", (), {}, ttype, name=name or graph.unique_name("x"),
                          loc=loc)


def variable(
    value: Any,
    name: str | None = None,
    *,
    dtype: DType | str | None = None,
    trainable: bool = True,
) -> Node:
    """A parameter: state that persists across calls and that `updates` change.

    The value is copied into a new C-contiguous array owned by the graph (`g.variables`).
    """
    graph = current_graph()
    loc = user_location()
    array = _to_array(value, dtype, "variable", loc)
    ttype = TensorType(array.shape, DType.of(array.dtype))
    node = graph.add_node("variable", (), {"trainable": bool(trainable)}, ttype,
                          name=name or graph.unique_name("var"), loc=loc)
    graph.variables.bind(node.name, array)
    return node


def constant(value: Any, dtype: DType | str | None = None, name: str | None = None, *,
             copy: bool = True) -> Node:
    """A fixed value baked into the graph. The graph keeps a read-only copy of `value`;
    with `copy=False` a C-contiguous numpy array of a graphc dtype (and `dtype` None) is
    kept itself, made read-only (for arrays nothing else will write, such as an imported
    model's weights: copying 46 MB of them was a third of a cached import)."""
    graph = current_graph()
    return _constant(graph, value, dtype, name, user_location(), copy)


def _constant(
    graph: Graph, value: Any, dtype: DType | str | None, name: str | None, loc: SourceLoc | None,
    copy: bool = True,
) -> Node:
    if (not copy and dtype is None and isinstance(value, np.ndarray)
            and value.flags.c_contiguous and _has_dtype(value)):
        array = value
    else:
        array = _to_array(value, dtype, "constant", loc)
    array.flags.writeable = False
    ttype = TensorType(array.shape, DType.of(array.dtype))
    node = graph.add_node("constant", (), {}, ttype, name=name, loc=loc)
    graph.constants[node.name] = array
    return node


def _has_dtype(array: np.ndarray) -> bool:
    try:
        DType.of(array.dtype)
    except GraphcError:
        return False
    return True


def _to_array(
    value: Any, dtype: DType | str | None, what: str, loc: SourceLoc | None
) -> np.ndarray:
    if isinstance(value, Node):
        raise GraphStructureError(f"expected a value, got node %{value.name}", op=what, loc=loc)
    try:
        target = None if dtype is None else DType.of(dtype).np
        if dtype is not None and DType.of(dtype) == DType.bfloat16 and not (
                isinstance(value, np.ndarray) and value.dtype == np.uint16):
            value = to_bfloat16(value)  # numbers given for a bf16 value: round them
        array = np.array(value, dtype=target, copy=True, order="C")
    except (TypeError, ValueError) as exc:
        raise DTypeError(f"cannot convert {type(value).__name__} to an array: {exc}",
                         op=what, loc=loc) from None
    python_value = not isinstance(value, (np.ndarray, np.generic))
    if dtype is None and array.dtype == np.float64 and python_value:
        # A Python float literal becomes float32, the deep-learning default; numpy float64
        # arrays keep their dtype.
        array = array.astype(np.float32)
    if dtype is None and array.dtype == np.int64 and python_value:
        array = array.astype(np.int32)
    try:
        DType.of(array.dtype)
    except GraphcError as exc:
        raise exc.with_context(op=what, loc=loc) from None
    return array


def _tensor_type(shape: Sequence[int], dtype: DType | str, what: str,
                 loc: SourceLoc | None) -> TensorType:
    try:
        dims = tuple(int(d) for d in shape)
    except TypeError:
        raise ShapeError(f"shape must be a sequence of ints, got {shape!r}", op=what,
                         loc=loc) from None
    try:
        return TensorType(dims, DType.of(dtype))
    except GraphcError as exc:
        raise exc.with_context(op=what, loc=loc) from None


def apply(
    op: OpDef,
    inputs: Sequence[Operand],
    attrs: Mapping[str, Any] | None = None,
    name: str | None = None,
    *,
    regions: Sequence[Region] = (),
) -> Node:
    """Build one node of `op`: convert scalar operands, run the type rule, record the loc.

    Non-node operands (Python numbers, numpy arrays) become constants; Python numbers take
    the dtype of the first node operand (weak typing). A region op gets its bodies in
    `regions`. While a body is traced the node goes into the body (`target_graph`).
    """
    loc = user_location()
    nodes = [x for x in inputs if isinstance(x, Node)]
    graph = target_graph(nodes)
    like = nodes[0].dtype if nodes and isinstance(nodes[0].type, TensorType) else None
    converted: list[Node] = []
    for x in inputs:
        if isinstance(x, Node):
            converted.append(x)
        elif isinstance(x, (bool, int, float, np.generic)) and not isinstance(x, np.ndarray):
            dtype = like if like is not None and _scalar_fits(x, like) else None
            converted.append(_constant(graph, x, dtype, None, loc))
        else:
            converted.append(_constant(graph, x, None, None, loc))
    if op.arity is not None and len(converted) != op.arity:
        raise GraphcError(f"expected {op.arity} operands, got {len(converted)}", op=op.name,
                          loc=loc)
    if op.arity is None and not converted:
        raise GraphcError("expected at least one operand", op=op.name, loc=loc)
    try:
        frozen = op.check_attrs(attrs or {})
        ttype = op.infer_type(tuple(n.type for n in converted), frozen, regions)
    except GraphcError as exc:
        raise exc.with_context(op=op.name, loc=loc) from None
    return graph.add_node(op.name, converted, frozen, ttype, name=name, loc=loc,
                          regions=regions)


def _scalar_fits(x: Any, dtype: DType) -> bool:
    """A Python scalar adopts `dtype` if no information is lost in kind (float into int is)."""
    if isinstance(x, (bool, np.bool_)):
        return True
    if isinstance(x, (int, np.integer)):
        return dtype != DType.bool
    return dtype.is_float
