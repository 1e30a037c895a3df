"""The conversion rules' registry and the context they run in.

A rule turns one ONNX node into graphc values: `rule(ctx, inputs, attrs) -> outputs`. A
value is a graphc `Node`, or a numpy array when it is known at import (initializers of
integer type, `Constant`, `Shape`, and anything computed only from those): shape arithmetic
(`Shape` -> `Gather` -> `Concat` -> `Reshape`) folds at import instead of becoming graph
nodes, and rules that need a value (a `Reshape`'s shape, a `Slice`'s starts) read it with
`ctx.known`. Inputs an ONNX node leaves out (the empty name) are None.

Rules are registered per op type with the opset version they implement (`@rule("Softmax",
13)`); `lookup` picks the newest one whose version is at most the model's opset, as ONNX's
own version resolution does, so a change of semantics is a second registration.
"""

from __future__ import annotations

import re
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np

from graphc import builder as gb
from graphc.ir import DType, Graph, Node
from graphc.onnx.model import NUMPY_DTYPES, OnnxError, numpy_dtype_ok, tensor_array

Value: TypeAlias = Node | np.ndarray
Rule: TypeAlias = "Callable[[Context, list[Value | None], dict[str, Any]], list[Value]]"

RULES: dict[str, list[tuple[int, Rule]]] = {}


def rule(op_type: str, since: int = 1) -> Callable[[Rule], Rule]:
    """Register `fn` as the conversion of `op_type` from opset `since` on."""

    def register(fn: Rule) -> Rule:
        versions = RULES.setdefault(op_type, [])
        if any(v == since for v, _ in versions):
            raise ValueError(f"{op_type} version {since} registered twice")
        versions.append((since, fn))
        versions.sort(key=lambda p: p[0])
        return fn

    return register


def lookup(op_type: str, opset: int) -> Rule | None:
    """The rule for `op_type` at `opset`: the newest registered version <= opset."""
    best = None
    for since, fn in RULES.get(op_type, ()):
        if since <= opset:
            best = fn
    return best


class NeedsValueError(OnnxError):
    """An input's value is needed at import and is computed at run time. Loop and Scan
    catch it to unroll a body that needs its iteration's values (`rules/control.py`); the
    ONNX backend retries with the model's inputs given at import."""


def versions(op_type: str) -> list[int]:
    return [v for v, _ in RULES.get(op_type, ())]


_NAME_OK = re.compile(r"[^A-Za-z0-9_./-]")


@dataclass
class Context:
    """What a rule may use: the graph being built, the opset, and value helpers."""

    graph: Graph
    opset: int
    node_name: str = ""
    op_type: str = ""
    num_outputs: int = 1
    # The ONNX element type of each input of the current node, where the model declares
    # it (graphc computes some types in a wider one; a rule may need the declared width).
    input_types: list[int | None] = field(default_factory=list)
    value_types: dict[str, int] = field(default_factory=dict)
    # The opset version of each other domain the model imports (ai.onnx.ml, ...).
    domain_opsets: dict[str, int] = field(default_factory=dict)
    # The values converted so far by ONNX name, for subgraphs (If's branches) that read
    # values of the enclosing graph.
    scope: MutableMapping[str, Value] = field(default_factory=dict)
    used_names: set[str] = field(default_factory=set)

    def error(self, message: str) -> OnnxError:
        where = f"{self.op_type} node '{self.node_name}'" if self.node_name else self.op_type
        return OnnxError(f"{where}: {message}")

    def node(self, v: Value | None) -> Node:
        """`v` as a graph node (a known array becomes a constant)."""
        if v is None:
            raise self.error("a required input is missing")
        if isinstance(v, Node):
            return v
        if not numpy_dtype_ok(v):
            raise self.error(f"value of dtype {v.dtype} has no graphc dtype")
        return gb.constant(v, copy=False)  # import's own arrays: nothing else writes them

    def needs_value(self, message: str) -> NeedsValueError:
        """The error of a value needed at import and computed at run time; `message` says
        "must be known when the model is imported", which the backend looks for."""
        return NeedsValueError(self.error(message).message)

    @staticmethod
    def known(v: Value | None) -> np.ndarray | None:
        """The value of `v` if it is known at import, else None."""
        return v if isinstance(v, np.ndarray) else None

    def need_known(self, v: Value | None, what: str) -> np.ndarray:
        """The value of `v`, which this rule needs at import (a shape, an axis list...)."""
        if v is None:
            raise self.error(f"input '{what}' is missing")
        if isinstance(v, Node) and v.op == "variable":
            # A float initializer (imported as a variable) that steers the op: its value at
            # import is used, and training will not change that use.
            return np.asarray(self.graph.variables[v.name])
        if not isinstance(v, np.ndarray):
            raise self.needs_value(f"input '{what}' must be known when the model is imported "
                                   "(a constant, an initializer or computed from shapes); it "
                                   "is computed at run time")
        return v

    def unique_name(self, name: str) -> str:
        """`name` made a valid, unused graphc node name (ONNX allows any string)."""
        base = valid_name(name)
        out, i = base, 1
        while out in self.used_names:
            out, i = f"{base}_{i}", i + 1
        self.used_names.add(out)
        return out


def valid_name(name: str) -> str:
    """`name` with the characters graphc names do not allow replaced by `_`."""
    base = _NAME_OK.sub("_", name) or "value"
    return base if base[0].isalpha() or base[0] == "_" else "v_" + base


def shape_of(v: Value) -> tuple[int, ...]:
    return tuple(v.shape)


def dtype_of(v: Value) -> DType:
    if isinstance(v, Node):
        return v.dtype
    for dt, npt in NUMPY_DTYPES.items():
        if v.dtype.type is npt:
            return dt
    raise OnnxError(f"value of dtype {v.dtype} has no graphc dtype")


def all_known(values: Sequence[Value | None]) -> bool:
    return all(isinstance(v, np.ndarray) for v in values if v is not None)


def ints(values: np.ndarray | Sequence[int]) -> list[int]:
    return [int(x) for x in np.asarray(values).reshape(-1)]


def axis_of(axis: int, rank: int, ctx: Context) -> int:
    """A possibly negative axis as 0 <= axis < rank."""
    if not -rank <= axis < max(rank, 1):
        raise ctx.error(f"axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def read_attributes(ctx: Context, node: Any, onnx: Any) -> dict[str, Any]:
    """A node's attributes as Python values (strings decoded, tensors as arrays); a
    malformed one is an error naming it."""
    out: dict[str, Any] = {}
    for a in node.attribute:
        try:
            value = onnx.helper.get_attribute_value(a)
        except Exception as exc:
            raise ctx.error(f"attribute '{a.name}' is malformed ({exc})") from None
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif isinstance(value, onnx.TensorProto):
            value = tensor_array(value, f"attribute '{a.name}' of node '{node.name}'")
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode("utf-8", "replace") for v in value]
        out[a.name] = value
    return out
