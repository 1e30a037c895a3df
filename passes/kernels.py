"""What fusion produces: `Kernel`s (one loop nest each, in execution order) and the
`FusedProgram` that says how every node a signature needs is computed or provided.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from graphc.ir import Graph, Node, Signature
from graphc.ir.opdef import Anchor
from graphc.ops import registry


class KernelKind(enum.Enum):
    """What a kernel computes; the anchored kinds are named by `Anchor` values."""

    ELEMENTWISE = "elementwise"  # root evaluated by index over its shape
    REDUCTION = Anchor.REDUCTION.value  # reduces an inlined input expression; epilogue
    MATMUL = Anchor.MATMUL.value  # GEMM anchor with optional epilogue
    CONV = Anchor.CONV.value  # conv2d anchor with optional epilogue
    OPAQUE = "opaque"  # one op with its own lowering (keyed by op name)
    MULTI_OUTPUT = "multi_output"  # flat elementwise, several outputs (passes.multi_output)
    LOOP = "loop"  # a region op (scan, while_loop, cond) run natively: its bodies compiled
    #                once each, called per step (per branch taken)

    @classmethod
    def of_anchor(cls, anchor: Anchor) -> KernelKind:
        return cls(anchor.value)


@dataclass(eq=False)
class Kernel:
    """A group of nodes computed by one loop nest into the buffers of its `outputs`.

    `root` is the last output in graph order (the only one, but for multi-output
    elementwise kernels, `multi_output.merge_outputs`, and for reductions that also store
    the outputs of an elementwise kernel they absorbed, `column_sums.merge_column_sums`:
    those come before the root and are computed at the reduction's input elements). Every
    node of `nodes` is computed at each index of the loop; the outputs are stored.
    """

    index: int
    kind: KernelKind
    root: Node
    anchor: Node | None
    nodes: list[Node] = field(default_factory=list)  # graph order; root last
    inputs: list[Node] = field(default_factory=list)  # materialized nodes read (graph order)
    outputs: list[Node] = field(default_factory=list)  # stored nodes (graph order), root last
    bodies: list[LoopBody] = field(default_factory=list)  # LOOP kernels: one per region

    def __post_init__(self) -> None:
        if not self.outputs:
            self.outputs = [self.root]

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


@dataclass(eq=False)
class LoopBody:
    """The compiled form of one region of a loop kernel's region op (a scan's body, a
    while_loop's cond and body, a cond's two branches), made by the pipeline
    (`graphc.pipeline`) when it runs its stages on the region as a program of its own:
    signature inputs = the region's params, outputs = its results.

    `plan` is the body's memory plan (its program, kernels and nested loop bodies);
    `arena_bytes` is the size of the body's arena as code generation lays it out
    (`codegen.module.arena_layout`: planned region, kernel scratch, status word), which the
    loop kernel reserves in its own scratch.
    """

    # A passes.memory_plan.MemoryPlan: memory_plan imports this module, so even a typing
    # import of it here would be a cycle (tests/test_import_layers.py).
    plan: Any
    arena_bytes: int


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

    def reorder(self, order: list[Kernel]) -> None:
        """Make `order` the kernel sequence after merging passes (`multi_output`,
        `column_sums`) joined kernels: renumber them, and drop the unfused edges that now
        lie inside one kernel."""
        for i, k in enumerate(order):
            k.index = i
        self.kernels = order
        self.unfused = [u for u in self.unfused
                        if self.kernel_of.get(u.producer) is not self.kernel_of.get(u.consumer)]

    def reads_at_root_index(self, kernel: Kernel, buffer_node: Node) -> bool:
        """Whether `kernel` reads `buffer_node` only elementwise at its output index.

        Then the kernel may write its output over that buffer (in-place), since each
        element is read before it is overwritten, by the same loop iteration. Only
        elementwise and multi-output kernels qualify: a reduction (side outputs included,
        `column_sums`) never writes over a buffer it reads.
        """
        if kernel.kind not in (KernelKind.ELEMENTWISE, KernelKind.MULTI_OUTPUT) \
                or buffer_node.shape != kernel.root.shape:
            return False
        for n in kernel.nodes:
            if any(i is buffer_node for i in n.inputs):
                if n not in self.spine or not registry.OPS[n.op].fusion.pointwise:
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
            n in self.spine and n is not anchor and registry.OPS[n.op].fusion.pointwise
            for n in readers)

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
            stored = ", ".join(f"%{o.name}" for o in k.outputs)
            out.append(f"kernel {k.name} [{k.kind.value}]{anchor} -> {stored} : "
                       f"{k.root.type}")
            out.append(f"  reads: {', '.join('%' + n.name for n in k.inputs) or '-'}")
            for n in k.nodes:
                args = ", ".join("%" + i.name for i in n.inputs)
                out.append(f"  %{n.name} = {n.op}({args}) : {n.type}")
        if self.views:
            out.append("views: " + ", ".join(f"%{v.name} -> %{b.name}"
                                            for v, b in self.views.items()))
        return "\n".join(out)
