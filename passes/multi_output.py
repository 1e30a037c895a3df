"""Multi-output fusion: elementwise kernels over one iteration space that read common
buffers, or read each other's outputs, become one kernel with several outputs.

An optimizer updates a parameter and its slots from one gradient (Adam: m, v, then the
parameter from m and v); vertical fusion leaves one kernel per stored value, each reading
the gradient again, and the parameter's kernel reading m and v back from memory. Merged,
it is one pass over the gradient, m, v and the parameter. A recurrent cell's state and
output (c and h of an LSTM step) merge the same way.

Two kernels merge when
- both are *flat*: elementwise kernels whose every node is pointwise (elementwise or
  broadcast) with the kernel's shape or one element, and whose every input has that shape
  or one element, so every read and every store happens at the loop's own flat index;
- their shapes are equal, and they are related: one reads an output of the other (not
  through a view), or both read a common buffer;
- the merged kernel has a place in the schedule: the earlier kernel's, if everything the
  later one reads is computed before that place (or by the earlier kernel); else the later
  kernel's, if no kernel in between reads an output of the earlier one.
The merged kernel (`KernelKind.MULTI_OUTPUT`, emitted by `codegen.fused.multi_output`)
stores every output of both; an output the other reads is computed at the
index (once) instead of being loaded back. Each output is the same expression at the same
index as before, so results are unchanged bit for bit. Code generation evaluates every
output of an index before storing any, so an output may be written over a buffer the kernel
reads (the memory planner's in-place rules hold per output).

`passes.column_sums` then merges elementwise and multi-output kernels into reductions of
their outputs that keep only the innermost axis (placed by the same rule, `schedule_place`).
"""

from __future__ import annotations

from graphc.ir import Node
from graphc.ops import registry

from .kernels import FusedProgram, Kernel, KernelKind

# How far back in the schedule a kernel looks for a kernel to merge with (keeps the pass
# linear in the schedule; an optimizer's kernels for one parameter sit within a few).
WINDOW = 16


def is_flat(k: Kernel) -> bool:
    """Whether every node and input of `k` is read and written at the loop's flat index."""
    if k.kind not in (KernelKind.ELEMENTWISE, KernelKind.MULTI_OUTPUT) or k.root.size == 0:
        return False
    shape = k.root.shape
    return (all(registry.OPS[n.op].fusion.pointwise and (n.shape == shape or n.size == 1)
                for n in k.nodes)
            and all(i.shape == shape or i.size == 1 for i in k.inputs))


def merge_outputs(program: FusedProgram, position: dict[Node, int], max_nodes: int
                  ) -> FusedProgram:
    """`program` with related flat kernels merged (see the module docstring); kernels are
    renumbered in their new schedule order. Changes `program` in place and returns it."""
    order = list(program.kernels)
    q = 0
    while q < len(order):
        k = order[q]
        merged = False
        if is_flat(k):
            for p in range(q - 1, max(q - 1 - WINDOW, -1), -1):
                g = order[p]
                place = _placement(program, order, p, q, max_nodes)
                if place is None:
                    continue
                union = _union(program, g, k, position)
                order[q] = order[p] = union  # placeholders; the one not chosen goes
                del order[q if place == p else p]
                q = order.index(union)
                merged = True
                break
        if not merged:
            q += 1
    program.reorder(order)
    return program


def _reads(program: FusedProgram, k: Kernel) -> set[Node]:
    """The buffers `k` reads (views resolved to the node whose buffer they view)."""
    return {program.views.get(n, n) for n in k.inputs}


def _placement(program: FusedProgram, order: list[Kernel], p: int, q: int,
               max_nodes: int) -> int | None:
    """Where the kernels at `p` < `q` can run merged (`p` or `q`), or None."""
    g, k = order[p], order[q]
    if not is_flat(g) or g.root.shape != k.root.shape:
        return None
    if len(g.nodes) + len(k.nodes) > 2 * max_nodes:
        return None
    outs = set(g.outputs)
    reads_k = _reads(program, k)
    if any(program.views.get(n) in outs for n in k.inputs):
        return None  # a view of g's output would be read while g writes it
    if not (reads_k & outs or reads_k & _reads(program, g)):
        return None  # unrelated: nothing to share
    return schedule_place(program, order, p, q)


def schedule_place(program: FusedProgram, order: list[Kernel], p: int, q: int) -> int | None:
    """Where one kernel doing the work of `order[p]` and `order[q]` (p < q) may run: at `p`
    if everything `order[q]` reads is computed before `p` (or by `order[p]`), else at `q` if
    no kernel in between reads an output of `order[p]`; None if neither."""
    outs = set(order[p].outputs)
    reads_k = _reads(program, order[q])
    earlier = {id(j) for j in order[:p]}
    if all(n in outs or n not in program.kernel_of or id(program.kernel_of[n]) in earlier
           for n in reads_k):
        return p
    if all(not (_reads(program, j) & outs) for j in order[p + 1:q]):
        return q
    return None


def _union(program: FusedProgram, g: Kernel, k: Kernel, position: dict[Node, int]) -> Kernel:
    """One kernel computing the nodes of `g` and `k` and storing both's outputs."""
    nodes = sorted([*g.nodes, *k.nodes], key=position.__getitem__)
    outputs = sorted([*g.outputs, *k.outputs], key=position.__getitem__)
    members = set(nodes)
    reads: dict[Node, None] = {}
    for n in nodes:
        for i in n.inputs:
            if i not in members and i not in program.immediates:
                reads[i] = None
    union = Kernel(g.index, KernelKind.MULTI_OUTPUT, outputs[-1], None, nodes,
                   sorted(reads, key=position.__getitem__), outputs)
    for n in nodes:
        program.kernel_of[n] = union
    program.spine.update(nodes)  # flat: every node is evaluated at the loop's index
    return union
