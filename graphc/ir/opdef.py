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

A region op (scan, cond, while_loop: a node owning body graphs) has `region` rules instead,
which also see the node's `Region`s; its `infer`/`reference`/`grad` fields refuse to be
called without them. Its result is a `TupleType`, read by `get` nodes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphc.errors import DTypeError, GraphcError
from graphc.ir.attrs import AttrSpec, check_attrs
from graphc.ir.bf16 import from_bfloat16, to_bfloat16
from graphc.ir.graph import Node, Region
from graphc.ir.types import Attrs, DType, TensorType, TupleType, ValueType


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
    CONTROL = "control"  # a region op or a `get` of its results: lowered to the ops above
    #                      (passes/lower_control.py) before fusion, never a kernel

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


_BF16_BITS = np.dtype(np.uint16)

# Types inferred before, by (op, operand types, attributes with their Python types): a
# type rule is a pure function of these, and every pass rebuilds its graph, so a compile
# asks for the same (op, types, attrs) again and again (ResNet-18: ~700 type rules per
# compile, nearly all repeats). Only successes are kept; cleared when it grows past
# `_INFERRED_LIMIT` entries, so it stays small in a long-running process.
_inferred: dict[tuple[Any, ...], ValueType] = {}
_INFERRED_LIMIT = 8192

InferRule = Callable[[Sequence[TensorType], Attrs], TensorType]
ReferenceRule = Callable[[Sequence[np.ndarray], Attrs], np.ndarray]
GradRule = Callable[[Node, Node], Sequence["Node | None"]]

# The reference interpreter's callback for region ops: run a body on arrays for its params,
# returning the arrays of its results (the op layer cannot import the runtime).
RunBody = Callable[[Region, Sequence[np.ndarray]], list[np.ndarray]]
# Autodiff's callback for region gradients: ``vjp(ys, cotangents, xs)`` builds, in the graph
# of `ys`, the cotangents of `xs` (None: disconnected) given those of `ys` (None: zero).
Vjp = Callable[[Sequence[Node], Sequence["Node | None"], Sequence[Node]], list["Node | None"]]


@dataclass(frozen=True)
class RegionRules:
    """The rules of a region op: a node owning `count` body graphs.

    - ``infer(types, attrs, regions) -> TupleType``: the result types, after checking the
      operands against the bodies' params and results (errors name the op's argument, the
      expected and the received type; the builder adds op and location).
    - ``evaluate(arrays, attrs, regions, run) -> [array per result]``: numpy semantics,
      running bodies through `run`.
    - ``grad(node, cotangents, vjp) -> [Node | None per input]``: the VJP given one
      cotangent per result (None: zero), built with ops and region ops; `vjp`
      differentiates bodies. None: the op is not differentiable (autodiff says so).
    """

    count: int
    infer: Callable[[Sequence[ValueType], Attrs, Sequence[Region]], TupleType]
    evaluate: Callable[[Sequence[np.ndarray], Attrs, Sequence[Region], RunBody],
                       list[np.ndarray]]
    grad: Callable[[Node, Sequence[Node | None], Vjp], Sequence[Node | None]] | None
    not_differentiable: str = ""  # why, when grad is None (the error autodiff raises)


@dataclass(frozen=True)
class OpDef:
    """The single definition of an op. `arity` None means variadic (one or more inputs);
    `anchor` is set for ops that anchor a kernel with a fused epilogue (see `Anchor`);
    `attrs` declares every attribute the op takes (see `graphc.ir.attrs`). `collective`
    marks an op whose value depends on other processes (never constant-folded). `overwrites`
    is the operand whose buffer the result may take over (in place, `passes.memory_plan`): the
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
    region: RegionRules | None = None
    lowp: frozenset[DType] = frozenset()
    # A collective (allreduce): its value depends on the other ranks, so it is never
    # evaluated at compile time (`passes/constant_fold.py`); every rank must run it.
    collective: bool = False

    def check_lowp(self, types: Sequence[ValueType], result: ValueType | None) -> None:
        """Refuse a low-precision operand or result the op does not declare in `lowp`.

        bf16, int8 and uint8 reach only ops whose references, lowerings and gradients handle
        them; every other op names the dtype and says how to get a supported one."""
        tensors = [t for t in (*types, result) if isinstance(t, TensorType)]
        for t in tensors:
            if t.dtype.is_low_precision and t.dtype not in self.lowp:
                fix = ("cast it to float32 with gc.cast(x, gc.float32)" if t.dtype.is_float
                       else "dequantize it first (or gc.cast it to int32)")
                raise DTypeError(f"{self.name} does not support {t.dtype.value} ({t}); {fix}")

    @property
    def differentiable(self) -> bool:
        return self.grad is not None or (self.region is not None and self.region.grad is not None)

    def infer_type(self, types: Sequence[ValueType], attrs: Attrs,
                   regions: Sequence[Region] = ()) -> ValueType:
        """The node's type: `infer`, or the region rules' for a region op, after checking
        that the node owns as many regions as the op takes (a GraphcError otherwise)."""
        count = 0 if self.region is None else self.region.count
        if len(regions) != count:
            raise GraphcError(f"expected {count} region(s), got {len(regions)}")
        if self.region is not None:
            return self.region.infer(types, attrs, regions)
        if self.fusion != Fusion.CONTROL and any(isinstance(t, TupleType) for t in types):
            raise GraphcError("an operand has several results (a tuple type); only `get` "
                              "reads such a value")
        key = _memo_key(self.name, types, attrs)
        if key is not None and (hit := _inferred.get(key)) is not None:
            return hit
        self.check_lowp(types, None)  # before the type rule: its message is the clearer
        result = self.infer(types, attrs)  # type: ignore[arg-type]
        self.check_lowp((), result)
        if key is not None:
            if len(_inferred) >= _INFERRED_LIMIT:
                _inferred.clear()
            _inferred[key] = result
        return result

    def evaluate_reference(self, arrays: Sequence[np.ndarray], attrs: Attrs,
                           result: TensorType) -> np.ndarray:
        """`reference` with bf16 semantics: bf16 operands (uint16 bit patterns) widened to
        float32, a bf16 result rounded to nearest-even from the float32 the reference
        computes (`graphc.ir.bf16`). Everything else passes through unchanged."""
        # (only ops that accept bf16 get its bit patterns: no other type is stored as uint16;
        # a `get` reads a region op's list of arrays, passed through as is)
        widen = DType.bfloat16 in self.lowp
        args = [from_bfloat16(a) if widen and isinstance(a, np.ndarray) and a.dtype == _BF16_BITS
                else a for a in arrays]
        value = self.reference(args, attrs)
        if result.dtype == DType.bfloat16 and np.asarray(value).dtype != _BF16_BITS:
            return to_bfloat16(value)
        return value

    def check_attrs(self, attrs: Mapping[str, Any]) -> Attrs:
        """`attrs` checked against `self.attrs` and normalized (defaults filled in); an
        AttrError naming the attribute otherwise (the caller adds op and location)."""
        return check_attrs(self.name, self.attrs, attrs)


def _memo_key(op: str, types: Sequence[ValueType], attrs: Attrs | Mapping[str, Any]
              ) -> tuple[Any, ...] | None:
    """The key of `_inferred`, or None when the call is not memoized (attributes not yet
    frozen). The top-level attribute values' Python types are part of it: 1, 1.0 and True
    are equal and hash alike, but a type rule may treat them differently. Values nested in
    tuples are not distinguished so: every caller (the builder, the readers, `verify`)
    passes attributes `check_attrs` has put in canonical form, where an int tuple holds
    ints only."""
    if not isinstance(attrs, Attrs):
        return None
    return (op, tuple(types), attrs, tuple(type(v) for v in attrs.values()))
