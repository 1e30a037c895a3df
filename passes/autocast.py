"""`gc.autocast(graph, "bfloat16")`: mixed precision as a graph-to-graph rewrite.

    fast = gc.autocast(g, "bfloat16")           # a new Graph; g is unchanged
    print(gc.explain_autocast(g))                # why each GEMM-like op got its precision
    step = gc.compile(fast, signature="train")   # compile the new graph's signatures

Policy (the one mixed-precision training and inference use, as in PyTorch's and JAX's
autocast): every float32 `matmul` -- forward and, in a graph that holds gradients, the
backward GEMMs `gc.grad` built -- reads bf16 operands and accumulates in float32 (a bf16
`matmul` returns float32, so every consumer sees the type it saw before); everything else
(norms, softmax, losses, optimizer updates and their state, reductions) stays float32.

How each float32 matmul operand becomes bf16:

- a variable that no signature of the new graph updates (a frozen weight: inference) is
  *stored* in bf16 once, at autocast time, in a new non-trainable variable
  ``<name>/bf16`` (half the bytes per call, which is what a bandwidth-bound batch-1 GEMV
  needs). A weight read as the right operand of a matmul without ``transpose_b`` (a
  `Dense` kernel, K x N) by at most GEMV_ROWS rows of A is stored transposed, as
  ``<name>/bf16_t`` (N x K) with ``transpose_b``: the bf16 GEMV then reads it as one
  sequential stream (`codegen/gemm/gemv_bf16.py`); for more rows the packed GEMM packs
  the row-major copy faster. The snapshot does not follow later assignments to the
  float32 variable: autocast again after changing weights. ``weights="cast"`` casts them
  per call instead;
- a variable that some signature updates (a trained weight: the float32 master) is cast
  to bf16 where it is read, every call, so the optimizer keeps updating float32 masters;
- a constant is rounded once into a bf16 constant;
- anything else (activations, cotangents) is rounded by a `cast` where it is produced
  (fused into its producer's kernel when that is elementwise).

Left in float32, with the reason in `explain_autocast`: float64 matmuls (autocast lowers
float32 only), convolutions (no bf16 kernel yet: `conv2d` refuses bf16), the fused
attention kernels (float32 only), matmuls inside control-flow bodies (a scan's; bodies are
immutable and shared, not rewritten yet), integer matmuls.

The new graph shares every other variable's array with `graph` (the Rebuilder's contract),
so caches, optimizer slots and master weights are the same memory in both graphs; all of
`graph`'s signatures are carried over (or only `signatures` when given).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from graphc.errors import GraphcError, SourceLoc
from graphc.ir import DType, Graph, Node, Signature, TensorType
from graphc.ir.bf16 import to_bfloat16
from graphc.ops import registry

from .rewrite import Pending, Rebuilder

__all__ = ["AutocastDecision", "autocast", "autocast_decisions", "explain_autocast"]

WEIGHT_MODES = ("auto", "cast")
# Rows of A up to which a bf16 matmul runs on the GEMV (codegen/gemm/gemv_bf16.py
# GEMV_MAX_ROWS; codegen is a later layer than passes).
GEMV_ROWS = 4
# Op families with GEMM-like work that autocast leaves in float32, and why.
_KEPT_FAMILIES = {
    "conv": "no bf16 convolution kernel yet (conv2d refuses bf16 operands)",
    "winograd": "no bf16 convolution kernel yet (Winograd transforms are float32)",
    "attention": "the fused attention kernel computes in float32 (its GEMMs included)",
}


@dataclass(frozen=True)
class AutocastDecision:
    """The precision autocast chose for one GEMM-like node, and why."""

    node: str
    op: str
    precision: str  # "bfloat16" or the dtype the node keeps
    reason: str
    loc: SourceLoc | None = None

    def __str__(self) -> str:
        where = f"  ({self.loc})" if self.loc is not None else ""
        return f"%{self.node} ({self.op}): {self.precision} -- {self.reason}{where}"


def _body_nodes(graph: Graph) -> list[Node]:
    """Every node of a body graph, nested bodies included."""
    nodes = list(graph.nodes)
    for n in graph.nodes:
        for region in n.regions:
            nodes.extend(_body_nodes(region.graph))
    return nodes


def _check(dtype: DType | str, weights: str) -> None:
    try:
        target: DType | None = DType.of(dtype)
    except GraphcError:
        target = None
    if target != DType.bfloat16:
        raise GraphcError(f"dtype: autocast supports 'bfloat16', got {dtype!r}", op="autocast")
    if weights not in WEIGHT_MODES:
        raise GraphcError(f"weights must be one of {WEIGHT_MODES}, got {weights!r}",
                          op="autocast")


def _selected(graph: Graph, signatures: Sequence[str] | None) -> list[Signature]:
    if signatures is None:
        return list(graph.signatures.values())
    missing = [s for s in signatures if s not in graph.signatures]
    if missing:
        raise GraphcError(f"signatures: graph {graph.name!r} has no signature "
                          f"{missing[0]!r} (it has {sorted(graph.signatures)})", op="autocast")
    return [graph.signatures[s] for s in signatures]


class _Autocaster:
    """The rebuild's visit: rewrites float32 matmuls, records a decision per GEMM-like node."""

    def __init__(self, updated: set[str], weights: str):
        self.updated = updated
        self.weights = weights
        self.decisions: list[AutocastDecision] = []
        self._stored: dict[tuple[str, bool], Node] = {}
        self._emitted: set[str] = set()

    def __call__(self, p: Pending, rb: Rebuilder) -> Node:
        family = registry.get(p.op).family
        if p.name in self._emitted:  # the bf16 matmul _matmul just built
            return rb.keep(p)
        if p.op == "matmul":
            if p.inputs[0].dtype == DType.float32:
                return self._matmul(p, rb)
            self._decide(p, p.inputs[0].dtype.value,
                         "already bf16" if p.inputs[0].dtype == DType.bfloat16 else
                         "autocast lowers float32 matmuls only")
        elif family in _KEPT_FAMILIES:
            self._decide(p, "float32", _KEPT_FAMILIES[family])
        elif any(n.op == "matmul" and n.inputs[0].dtype == DType.float32
                 for region in p.regions for n in _body_nodes(region.graph)):
            self._decide(p, "float32", "its body's matmuls stay float32 (autocast does not "
                                       "rewrite control-flow bodies yet)")
        return rb.keep(p)

    def _decide(self, p: Pending, precision: str, reason: str) -> None:
        self.decisions.append(AutocastDecision(p.name, p.op, precision, reason, p.loc))

    def _matmul(self, p: Pending, rb: Rebuilder) -> Node:
        if p.attrs["b_panels"]:
            self._decide(p, "float32", "b is stored in the compiler's panels (b_panels)")
            return rb.keep(p)
        a, b = p.inputs
        ta, tb = bool(p.attrs["transpose_a"]), bool(p.attrs["transpose_b"])
        new_a, _, what_a = self._operand(a, rb, p, transpose=False)
        # Only a 2-D right operand may be stored transposed (flipping transpose_b), and
        # only for the GEMV: the packed GEMM of more rows packs row-major B faster.
        rows = (a.shape[-1] if ta else a.shape[-2]) * math.prod(a.shape[:-2])
        may_flip = not tb and b.ndim == 2 and rows <= GEMV_ROWS
        new_b, flipped, what_b = self._operand(b, rb, p, transpose=may_flip)
        how = f"a {what_a}, b {what_b}"
        self._decide(p, "bfloat16", f"bf16 operands, float32 accumulation ({how})")
        attrs = {"transpose_a": ta, "transpose_b": tb != flipped}
        self._emitted.add(p.name)
        return rb.emit("matmul", [new_a, new_b], attrs, at=p, name=p.name)

    def _operand(self, x: Node, rb: Rebuilder, p: Pending,
                 transpose: bool) -> tuple[Node, bool, str]:
        """(bf16 node, whether it is stored transposed, how it was made)."""
        if x.op == "variable" and x.name not in self.updated and self.weights == "auto":
            key = (x.name, transpose)
            node = self._stored.get(key)
            if node is None:
                value = rb.graph.variables[x.name]
                array = to_bfloat16(np.ascontiguousarray(value.T if transpose else value))
                name = rb.fresh_name(f"{x.name}/bf16{'_t' if transpose else ''}")
                attrs = registry.get("variable").check_attrs({"trainable": False})
                node = rb.graph.add_node("variable", (), attrs,
                                         TensorType(array.shape, DType.bfloat16), name=name,
                                         loc=x.loc)
                rb.graph.variables.bind(name, np.ascontiguousarray(array))
                self._stored[key] = node
            return node, transpose, ("frozen weight stored bf16" +
                                     (" as (N, K)" if transpose else ""))
        if x.op == "constant":
            value = rb.value(x)
            assert value is not None
            return rb.constant(to_bfloat16(value), at=p), False, "constant rounded once"
        made = rb.emit("cast", [x], {"dtype": DType.bfloat16}, at=p)
        reason = ("trained weight (float32 master) cast per call" if x.op == "variable"
                  else "rounded where produced")
        return made, False, reason


def _run(graph: Graph, dtype: DType | str, signatures: Sequence[str] | None,
         weights: str) -> tuple[Graph, list[AutocastDecision]]:
    _check(dtype, weights)
    sigs = _selected(graph, signatures)
    # Frozen = updated by no signature the new graph holds (its weights are a snapshot).
    updated = {var.name for s in sigs for var, _ in s.updates}
    caster = _Autocaster(updated, weights)
    rb = Rebuilder(graph, caster)
    if signatures is None:
        rb.run()
    else:
        needed = {n for s in sigs for n in s.needed_nodes()} | {n for s in sigs
                                                                for n in s.inputs}
        rb.run([n for n in graph.nodes if n in needed])
    new = rb.graph
    new.signatures = {}
    for s in sigs:
        new.signatures[s.name] = Signature(
            s.name, tuple(rb.mapping[n] for n in s.inputs),
            tuple(rb.mapping[n] for n in s.outputs),
            tuple((rb.mapping[v], rb.mapping[x]) for v, x in s.updates))
    return new, caster.decisions


def autocast(graph: Graph, dtype: DType | str = "bfloat16", *,
             signatures: Sequence[str] | None = None, weights: str = "auto") -> Graph:
    """A new graph computing `graph`'s float32 matmuls in bf16 with float32 accumulation
    (see the module docstring for the policy); `graph` is left unchanged. `signatures`
    limits the new graph to those signatures (default: all); ``weights="cast"`` casts
    frozen weights per call instead of storing bf16 copies."""
    return _run(graph, dtype, signatures, weights)[0]


def autocast_decisions(graph: Graph, dtype: DType | str = "bfloat16", *,
                       signatures: Sequence[str] | None = None,
                       weights: str = "auto") -> list[AutocastDecision]:
    """What `autocast` does to each GEMM-like node (matmul, convolution, attention)."""
    return _run(graph, dtype, signatures, weights)[1]


def explain_autocast(graph: Graph, dtype: DType | str = "bfloat16", *,
                     signatures: Sequence[str] | None = None, weights: str = "auto") -> str:
    """`autocast_decisions` as text, one line per node, then the policy for the rest."""
    decisions = autocast_decisions(graph, dtype, signatures=signatures, weights=weights)
    lines = [str(d) for d in decisions]
    lowered = sum(d.precision == "bfloat16" and d.reason.startswith("bf16") for d in decisions)
    lines.append(f"{lowered} of {len(decisions)} GEMM-like nodes in bf16; every other op "
                 "(norms, softmax, losses, optimizer updates and state) stays float32")
    return "\n".join(lines)
