"""The calling convention shared by the reference interpreter and compiled executables.

A function compiled from `inputs=[x, y]` is called positionally in that order, or by input
name, or both (positional first). Every argument is checked before anything runs: count,
names, shape, dtype. Arrays are made C-contiguous. Dtypes must match exactly, except that
integer arrays convert to an integer input when every value fits; float64 data for a float32
input is rejected (convert explicitly) so precision is never lost silently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from graphc.errors import ArgumentError
from graphc.ir import DType, Graph, Node, Signature, TensorType, checked_signature


class TensorSpec(Protocol):
    """What an input is checked against: a placeholder Node, or a loaded library's input."""

    @property
    def name(self) -> str: ...

    @property
    def type(self) -> TensorType: ...


def bind_arguments(
    inputs: Sequence[TensorSpec], args: Sequence[Any], kwargs: Mapping[str, Any], what: str
) -> list[np.ndarray]:
    """Match `args`/`kwargs` to `inputs`; return one checked contiguous array per input."""
    if len(args) > len(inputs):
        raise ArgumentError(
            f"{what} takes {len(inputs)} input(s) "
            f"({', '.join(n.name for n in inputs) or 'none'}), got {len(args)} positional"
        )
    values: dict[str, Any] = {n.name: a for n, a in zip(inputs, args)}
    known = {n.name for n in inputs}
    for key, value in kwargs.items():
        if key not in known:
            raise ArgumentError(
                f"{what} has no input named {key!r} (inputs: {', '.join(sorted(known)) or 'none'})"
            )
        if key in values:
            raise ArgumentError(f"{what} got input {key!r} both by position and by name")
        values[key] = value
    missing = [n.name for n in inputs if n.name not in values]
    if missing:
        raise ArgumentError(f"{what} is missing input(s): {', '.join(missing)}")
    return [check_array(n, values[n.name], what) for n in inputs]


def check_array(node: TensorSpec, value: Any, what: str) -> np.ndarray:
    """`value` as a C-contiguous array of `node`'s exact type, or an ArgumentError."""
    want = node.type
    try:
        array = np.asarray(value)
    except Exception as exc:
        raise ArgumentError(f"{what}: input {node.name!r} is not array-like ({exc})") from None
    if array.dtype.name == "bfloat16" and array.dtype.itemsize == 2 \
            and want.dtype == DType.bfloat16:
        array = array.view(np.uint16)  # ml_dtypes' bfloat16: the same bits
    if array.dtype == object or array.dtype.kind not in "biuf":
        raise ArgumentError(
            f"{what}: input {node.name!r} expected {want}, got an array of {array.dtype}"
        )
    if array.shape != want.shape:
        raise ArgumentError(
            f"{what}: input {node.name!r} expected shape {want.shape} ({want}), "
            f"got {array.shape}"
        )
    target = want.dtype.np
    if array.dtype != target and want.dtype == DType.bfloat16:
        raise ArgumentError(
            f"{what}: input {node.name!r} expected {want} (bf16 bit patterns as uint16), "
            f"got {array.dtype}; convert it with gc.to_bfloat16(x)")
    if array.dtype != target:
        # Integer arrays convert when every value fits (labels often arrive as int64);
        # anything else must be converted by the caller, so no precision is lost silently.
        fits = array.dtype.kind in "iu" and target.kind == "i" and (
            array.size == 0
            or (np.iinfo(target).min <= array.min() and array.max() <= np.iinfo(target).max)
        )
        if not fits:
            raise ArgumentError(
                f"{what}: input {node.name!r} expected dtype {want.dtype} ({want}), "
                f"got {array.dtype}; convert it with .astype(np.{want.dtype.value})"
            )
        array = array.astype(target)
    # np.ascontiguousarray would turn a 0-d array into shape (1,).
    return np.require(array, requirements="C")


def resolve_signature(
    graph: Graph,
    inputs: Sequence[Node] | None,
    outputs: Sequence[Node] | Node | None,
    updates: Mapping[Node, Node] | Sequence[tuple[Node, Node]] | None,
    signature: str | None,
) -> tuple[Signature, bool]:
    """What to run: an explicit inputs/outputs/updates triple or a named signature.

    Returns the signature and whether `outputs` was a single node (then calls return one
    array instead of a tuple).
    """
    if signature is not None:
        if inputs is not None or outputs is not None or updates is not None:
            raise ArgumentError("give either signature= or inputs/outputs/updates, not both")
        if signature not in graph.signatures:
            known = ", ".join(sorted(graph.signatures)) or "none"
            raise ArgumentError(f"graph {graph.name!r} has no signature {signature!r} "
                                f"(signatures: {known})")
        return graph.signatures[signature], False
    single = isinstance(outputs, Node)
    outs: tuple[Node, ...] = (outputs,) if isinstance(outputs, Node) else tuple(outputs or ())
    return checked_signature(graph, "call", tuple(inputs or ()), outs, updates), single
