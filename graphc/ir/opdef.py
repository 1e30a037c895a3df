"""What an op is: `OpDef` (type rule, numpy reference, gradient rule, fusion kind).

An op is defined once, in its family module (`elementwise.py`, `reduce.py`, ...), by one
`OpDef`. Lowering to LLVM is not here: `graphc/codegen` keeps its own table keyed by op name.

Contracts of the callables:
- ``infer(types, attrs) -> TensorType`` raises a `GraphcError` subclass (without op/loc; the
  builder adds them) naming the operand, the expected and the received type.
- ``reference(arrays, attrs) -> ndarray`` computes the op with numpy on arrays of exactly the
  input types; it returns an array of exactly the inferred type (numerically stable forms).
- ``grad(node, g) -> [Node | None per input]`` builds, with ops, the vector-Jacobian product
  of `node` for the upstream gradient `g` (same type as `node`). ``None`` means "no
  gradient flows to this input" (an integer index, a non-differentiable input).
  An op without a grad rule is non-differentiable: all its inputs get zero gradient.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from graphc.ir import Attrs, Node, TensorType


class Fusion(enum.Enum):
    """How an op may be fused into a kernel (see passes/fuse.py)."""

    SOURCE = "source"  # placeholder / variable / constant: no computation
    ELEMENTWISE = "elementwise"  # out[i] = f(in0[i], in1[i], ...) on same-shape operands
    BROADCAST = "broadcast"  # elementwise after numpy broadcasting of operands
    INJECTIVE = "injective"  # each output element reads one input element (reshape, slice)
    REDUCTION = "reduction"  # reduces over axes
    OUT_FUSABLE = "out_fusable"  # matmul/conv: elementwise epilogues fuse into its stores
    OPAQUE = "opaque"  # everything else: its own kernel


InferRule = Callable[[Sequence[TensorType], Attrs], TensorType]
ReferenceRule = Callable[[Sequence[np.ndarray], Attrs], np.ndarray]
GradRule = Callable[[Node, Node], Sequence["Node | None"]]


@dataclass(frozen=True)
class OpDef:
    """The single definition of an op. `arity` None means variadic (one or more inputs)."""

    name: str
    family: str
    arity: int | None
    infer: InferRule
    reference: ReferenceRule
    fusion: Fusion
    grad: GradRule | None = None
    random: bool = False
    doc: str = ""

    @property
    def differentiable(self) -> bool:
        return self.grad is not None
