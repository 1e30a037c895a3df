"""Operator fusion: group the nodes a signature needs into kernels (one loop nest each).

This is an analysis: it returns a `FusedProgram` and does not change the graph.

Every decision reads the op's fusion facts (`OpDef.fusion`, `OpDef.anchor`), never its name.

Every kernel has one output buffer (its `root`). A node is *inlined* into the kernel of its
only user, recomputed there at each index instead of being stored, when
- its fusion kind is elementwise, broadcast or indexed (an injective op codegen evaluates by
  index: transpose, slice, reverse, pad, concat);
- it has exactly one user, is not an output or update value, and that user evaluates its
  operands by index (an elementwise kernel, a reduction's input, an epilogue);
- the kernel stays under `max_kernel_nodes`.
Because an inlined node has exactly one user, nothing is ever computed twice.

An *anchor* (an op with `OpDef.anchor`: a reduction, a matmul, a conv2d) joins the kernel of
its only user when the path from it to that kernel's root is pointwise and keeps its shape
and dtype: the user's work becomes the anchor's *epilogue* (bias + activation applied as
matmul results are stored, `sum * (1/n)` applied to a finished reduction). The kernel's kind
is the anchor's kind. Matmul and conv operands are always read from memory (the kernels
pack them); a reduction's input expression is inlined. A `VIEW` op (reshape) is never a
kernel: it is a view of its input's buffer (every buffer is contiguous), so its input is
materialized. Scalar constants are *immediates* in the generated code. Everything else is
its own (opaque) kernel.

`explain()` gives, for each producer->consumer edge left unfused, the reason.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from graphc.ir import SOURCE_OPS, Graph, Node, Signature
from graphc.ir.opdef import Anchor, Fusion, OpDef
from graphc.ops import registry

DEFAULT_MAX_KERNEL_NODES = 48


class KernelKind(enum.Enum):
    """What a kernel computes; the anchored kinds are named by `Anchor` values."""

    ELEMENTWISE = "elementwise"  # root evaluated by index over its shape
    REDUCTION = Anchor.REDUCTION.value  # reduces an inlined input expression; epilogue
    MATMUL = Anchor.MATMUL.value  # GEMM anchor with optional epilogue
    CONV = Anchor.CONV.value  # conv2d anchor with optional epilogue
    OPAQUE = "opaque"  # one op with its own lowering (keyed by op name)

    @classmethod
    def of_anchor(cls, anchor: Anchor) -> KernelKind:
        return cls(anchor.value)


@dataclass(eq=False)
class Kernel:
    """A group of nodes computed by one loop nest into the buffer of `root`."""

    index: int
    kind: KernelKind
    root: Node
    anchor: Node | None
    nodes: list[Node] = field(default_factory=list)  # graph order; root last
    inputs: list[Node] = field(default_factory=list)  # materialized nodes read (graph order)

    @property
    def name(self) -> str:
        ops = [n.op for n in self.nodes if n.op != "constant"]
        label = "_".join(dict.fromkeys(ops))[:40]
        return f"k{self.index}_{label}"

    @property
    def epilogue(self) -> list[Node]:
        """The nodes applied to the anchor's result (empty for plain kernels)."""
        if self.anchor is None:
            return []
        return [n for n in self.nodes if _depends_on(n, self.anchor, self.nodes)]


def _depends_on(n: Node, anchor: Node, within: list[Node]) -> bool:
    if n is anchor:
        return False
    members = set(within)
    stack = [n]
    while stack:
        cur = stack.pop()
        for i in cur.inputs:
            if i is anchor:
                return True
            if i in members:
                stack.append(i)
    return False


@dataclass(frozen=True)
class Unfused:
    producer: Node
    consumer: Node
    reason: str


@dataclass
class FusedProgram:
    """Kernels in a valid execution order, plus how every other needed node is provided."""

    graph: Graph
    signature: Signature
    kernels: list[Kernel]
    kernel_of: dict[Node, Kernel]  # every computed node -> its kernel
    views: dict[Node, Node]  # reshape node -> the materialized node whose buffer it reads
    immediates: set[Node]  # scalar constants emitted as immediates
    unfused: list[Unfused]
    spine: set[Node]  # nodes evaluated at their kernel root's own index (identity access)

    def reads_at_root_index(self, kernel: Kernel, buffer_node: Node) -> bool:
        """Whether `kernel` reads `buffer_node` only elementwise at its output index.

        Then the kernel may write its output over that buffer (in-place), since each
        element is read before it is overwritten, by the same loop iteration.
        """
        if kernel.kind != KernelKind.ELEMENTWISE or buffer_node.shape != kernel.root.shape:
            return False
        for n in kernel.nodes:
            if any(i is buffer_node for i in n.inputs):
                if n not in self.spine or not _op(n).fusion.pointwise:
                    return False
        return True

    def reads_in_epilogue_at_root_index(self, kernel: Kernel, buffer_node: Node) -> bool:
        """Whether `kernel` reads `buffer_node` only in its epilogue, at its output index.

        Then a kernel that applies the epilogue exactly once per output element, as that
        element is stored (a GEMM with one k block), may write its output over the buffer.
        """
        anchor = kernel.anchor
        if anchor is None or buffer_node.shape != kernel.root.shape:
            return False
        if any(i is buffer_node for i in anchor.inputs):
            return False
        readers = [n for n in kernel.nodes if any(i is buffer_node for i in n.inputs)]
        return bool(readers) and all(
            n in self.spine and n is not anchor and _op(n).fusion.pointwise for n in readers)

    def explain(self) -> str:
        lines = []
        for u in self.unfused:
            lines.append(f"%{u.producer.name} ({u.producer.op}) -/-> %{u.consumer.name} "
                         f"({u.consumer.op}): {u.reason}")
        return "\n".join(lines)

    def format(self) -> str:
        """Text of the kernels, one block each (`graphc dump --stage fused`)."""
        out = [f"fused {self.graph.name!r}: {len(self.kernels)} kernels"]
        for k in self.kernels:
            anchor = f" anchor=%{k.anchor.name}" if k.anchor is not None else ""
            out.append(f"kernel {k.name} [{k.kind.value}]{anchor} -> %{k.root.name} : "
                       f"{k.root.type}")
            out.append(f"  reads: {', '.join('%' + n.name for n in k.inputs) or '-'}")
            for n in k.nodes:
                args = ", ".join("%" + i.name for i in n.inputs)
                out.append(f"  %{n.name} = {n.op}({args}) : {n.type}")
        if self.views:
            out.append("views: " + ", ".join(f"%{v.name} -> %{b.name}"
                                            for v, b in self.views.items()))
        return "\n".join(out)


# A variadic indexed op (concat) evaluated by index computes every operand at each element
# (and selects one), so a wide one (an RNN's per-step gradients) gets a kernel of its own
# that copies blocks.
MAX_INLINE_OPERANDS = 4


def _op(n: Node) -> OpDef:
    return registry.OPS[n.op]


def _inlinable(n: Node) -> bool:
    op = _op(n)
    if op.fusion == Fusion.INDEXED and op.arity is None and len(n.inputs) > MAX_INLINE_OPERANDS:
        return False
    return op.fusion.inlinable


def _evaluates_by_index(n: Node) -> bool:
    """Whether `n` reads its operands through the expression evaluator (not from memory)."""
    return _inlinable(n) or _op(n).anchor == Anchor.REDUCTION


def _reads_from_memory(anchor: Anchor | None) -> bool:
    """Whether an anchor of this kind reads its operands from memory (the GEMM packs them)."""
    return anchor is not None and anchor != Anchor.REDUCTION


def fuse(graph: Graph, sig: Signature, max_kernel_nodes: int = DEFAULT_MAX_KERNEL_NODES
         ) -> FusedProgram:
    """Group the nodes `sig` needs into kernels (see the module docstring)."""
    needed = sig.needed_nodes()
    needed_set = set(needed)
    users: dict[Node, list[Node]] = {n: [] for n in needed}
    for n in needed:
        for i in n.inputs:
            users[i].append(n)
    required = {*sig.outputs, *(v for _, v in sig.updates)}
    immediates = {n for n in needed if n.op == "constant" and n.size == 1}
    views: dict[Node, Node] = {}
    must_store: set[Node] = set()
    for n in needed:
        if _op(n).fusion == Fusion.VIEW:
            base = n.inputs[0]
            views[n] = views.get(base, base)
            must_store.add(base)

    kernel_of: dict[Node, Kernel] = {}
    spine: set[Node] = set()  # nodes evaluated at their kernel root's index, same shape
    unfused: list[Unfused] = []
    kernels: list[Kernel] = []

    def new_kernel(root: Node) -> Kernel:
        anchor_kind = _op(root).anchor
        if anchor_kind is not None:
            kind, anchor = KernelKind.of_anchor(anchor_kind), root
        elif _inlinable(root):
            kind, anchor = KernelKind.ELEMENTWISE, None
        else:
            kind, anchor = KernelKind.OPAQUE, root
        k = Kernel(len(kernels), kind, root, anchor, [root])
        kernels.append(k)
        kernel_of[root] = k
        spine.add(root)
        return k

    for n in reversed(needed):
        if n.op in SOURCE_OPS or n in views:
            continue
        the_users = users[n]
        reason = None
        if n in required:
            reason = "it is an output or update value of the signature (stored)"
        elif n in must_store:
            reason = "a reshape views its buffer"
        elif len(the_users) != 1:
            reason = f"it has {len(the_users)} users (fusing would compute it again)"
        if reason is None:
            u = the_users[0]
            k = kernel_of.get(u)
            if k is None:  # u is a view
                reason = "a reshape views its buffer"
            elif len(k.nodes) >= max_kernel_nodes:
                reason = f"kernel {k.name} reached the size cap ({max_kernel_nodes} nodes)"
            elif _op(n).anchor is not None:
                ok = (k.kind == KernelKind.ELEMENTWISE and u in spine and _op(u).fusion.pointwise
                      and n.shape == u.shape == k.root.shape and n.dtype == k.root.dtype)
                if ok:
                    k.kind = KernelKind.of_anchor(_op(n).anchor)
                    k.anchor = n
                    k.nodes.insert(0, n)
                    kernel_of[n] = k
                    spine.add(n)
                    continue
                reason = (f"{n.op} is expensive and is fused only into an elementwise "
                          "epilogue of its own shape and dtype")
            elif not _inlinable(n):
                reason = f"{n.op} has its own kernel"
            elif not _evaluates_by_index(u) or (u is k.anchor
                                                 and _reads_from_memory(_op(u).anchor)):
                reason = f"{u.op} reads its operands from memory"
            else:
                k.nodes.insert(0, n)
                kernel_of[n] = k
                if (u in spine and u is not k.anchor and n.shape == u.shape
                        and _op(u).fusion.pointwise):
                    spine.add(n)
                continue
        new_kernel(n)
        for u in the_users:
            if u not in views:
                unfused.append(Unfused(n, u, reason))

    position = {n: i for i, n in enumerate(needed)}
    for k in kernels:
        k.nodes.sort(key=position.__getitem__)
        members = set(k.nodes)
        reads: dict[Node, None] = {}
        for n in k.nodes:
            for i in n.inputs:
                if i not in members and i not in immediates:
                    reads[i] = None
        k.inputs = sorted(reads, key=position.__getitem__)
    kernels.sort(key=lambda k: position[k.root])
    for i, k in enumerate(kernels):
        k.index = i
    unfused.sort(key=lambda u: (position[u.producer], position[u.consumer]))
    assert all(n in kernel_of or n in views or n.op in SOURCE_OPS for n in needed_set)
    return FusedProgram(graph, sig, kernels, kernel_of, views, immediates, unfused, spine)
