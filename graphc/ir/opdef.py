"""What an op is: `OpDef` (type rule, numpy reference, gradient rule, fusion facts).

An op is defined once, in its family module (`graphc/ops/elementwise.py`, `reduce.py`, ...),
by one `OpDef`. Lowering to LLVM is not here: `graphc/codegen/lowering.py` keeps the table
of emitters, keyed by kernel kind or op name.

Fusion facts (read by `passes/fuse.py`, nowhere else): `fusion` says how the op reads its
operands -- whether codegen can evaluate it at an index inside another op's loop nest
(elementwise, broadcast, indexed) or it needs a kernel of its own -- and `anchor` says
whether the op anchors a kernel whose elementwise epilogue fuses into its stores, and what
kind of kernel that is.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphc.ir.attrs import AttrSpec, check_attrs
from graphc.ir.graph import Node
from graphc.ir.types import Attrs, TensorType


class Fusion(enum.Enum):
    """How an op reads its operands, which decides how it may be fused (passes/fuse.py)."""

    SOURCE = "source"  # placeholder / variable / constant: no computation
    ELEMENTWISE = "elementwise"  # out[i] = f(in0[i], in1[i], ...) on same-shape operands
    BROADCAST = "broadcast"  # elementwise after numpy broadcasting of operands
    INDEXED = "indexed"  # injective, and codegen evaluates it by index (slice, transpose):
    #                      inlined into its user's loop nest like an elementwise op
    INJECTIVE = "injective"  # each output element reads one input element, found through
    #                          data (take): its own kernel
    VIEW = "view"  # the same bytes under another shape (reshape): never a kernel
    REDUCTION = "reduction"  # reduces over axes
    OUT_FUSABLE = "out_fusable"  # matmul/conv: elementwise epilogues fuse into its stores
    OPAQUE = "opaque"  # everything else: its own kernel

    @property
    def inlinable(self) -> bool:
        """Whether the op can be computed at an index inside its user's loop nest."""
        return self in (Fusion.ELEMENTWISE, Fusion.BROADCAST, Fusion.INDEXED)

    @property
    def pointwise(self) -> bool:
        """Whether each output element reads its operands at its own (broadcast) index."""
        return self in (Fusion.ELEMENTWISE, Fusion.BROADCAST)


class Anchor(enum.Enum):
    """The kind of kernel an op anchors: it absorbs an elementwise epilogue of its own shape
    and dtype (bias + activation applied as matmul results are stored, `sum * (1/n)` applied
    to a finished reduction). Values name `passes.fuse.KernelKind`s."""

    REDUCTION = "reduction"  # its input expression is inlined too (evaluated by index)
    MATMUL = "matmul"  # operands read from memory (packed by the GEMM)
    CONV = "conv"  # operands read from memory


InferRule = Callable[[Sequence[TensorType], Attrs], TensorType]
ReferenceRule = Callable[[Sequence[np.ndarray], Attrs], np.ndarray]
GradRule = Callable[[Node, Node], Sequence["Node | None"]]


@dataclass(frozen=True)
class OpDef:
    """The single definition of an op. `arity` None means variadic (one or more inputs);
    `anchor` is set for ops that anchor a kernel with a fused epilogue (see `Anchor`);
    `attrs` declares every attribute the op takes (see `graphc.ir.attrs`). `overwrites` is
    the operand whose buffer the result may take over (in place, `passes.memory_plan`): the
    result equals that operand but where the op writes it, and the op's kernel reads it only
    to copy it, which it skips when given the same buffer (`dynamic_update_slice`)."""

    name: str
    family: str
    arity: int | None
    infer: InferRule
    reference: ReferenceRule
    fusion: Fusion
    grad: GradRule | None = None
    random: bool = False
    doc: str = ""
    anchor: Anchor | None = None
    attrs: tuple[AttrSpec, ...] = ()
    overwrites: int | None = None

    @property
    def differentiable(self) -> bool:
        return self.grad is not None

    def check_attrs(self, attrs: Mapping[str, Any]) -> Attrs:
        """`attrs` checked against `self.attrs` and normalized (defaults filled in); an
        AttrError naming the attribute otherwise (the caller adds op and location)."""
        return check_attrs(self.name, self.attrs, attrs)
