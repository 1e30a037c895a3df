"""Column sums fused into the kernel that produces their input (issue 13.12): a reduction
that keeps only the innermost axis of its input -- a bias gradient, the sum over the batch
of a (rows, cols) gradient -- also computes the elementwise kernel that produced that input
and stores its outputs as *side outputs*, so the input is computed and reduced in one pass
instead of being stored by one kernel and read back by the next.

A reduction kernel `k` absorbs an earlier kernel `g` when
- `k`'s anchor reduces every axis of its input but the innermost (axes 0 .. rank-2 of a
  non-empty input of rank >= 2), and `k`'s own input expression is flat over the input's
  shape S (`flat_input`): code generation then visits every input element exactly once, at
  its flat index (`codegen.fused.column_reduction`, both innermost-kept paths);
- `g` is an elementwise or multi-output kernel whose outputs have shape S and whose every
  node is pointwise, every node and input broadcastable to S: its values at an element of
  S come from that element alone (a broadcast operand, as the (rows, 1) factor of a softmax
  gradient, is read at the broadcast index);
- `k`'s input expression reads an output of `g` directly (not through a view), `k`'s
  epilogue reads none, and every output of `g` precedes `k`'s root in graph order (one `k`
  does not read might not; a kernel's root is its last output);
- the merged kernel has a place in the schedule (`multi_output.schedule_place`: `g`'s place
  if everything `k` reads is computed before it, else `k`'s if no kernel in between reads
  an output of `g`) and at most twice `max_kernel_nodes` nodes.

The merged kernel is a `KernelKind.REDUCTION` with `k`'s anchor, root and epilogue; its
nodes are both kernels' nodes, its outputs `g`'s outputs and then `k`'s root (graph order).
`accepts_side_outputs` is the one predicate: the pass merges only kernels whose union
satisfies it, and code generation refuses a reduction with side outputs that does not. The
reduction keeps the loops and vector width it had alone (`own_part`), so its result is
unchanged bit for bit; each side output is the same expression at the same element as in
its own kernel (FMAs are decided on the emitted code in both: `codegen.fused.contract`).

In place: the memory planner never puts an output of a reduction kernel over a buffer the
kernel reads (`FusedProgram.reads_at_root_index` is false for reductions, and reductions do
not write their epilogue once), so neither a side output nor the root aliases an input. A
producer that updates a variable the merged kernel would read (alone, it might update it
in place) is left alone. Code generation still evaluates every value of an element (the
reduction's input and each side output) before storing any, as multi-output kernels do.
"""

from __future__ import annotations

from collections.abc import Sequence

from graphc.ir import Node
from graphc.ops import registry

from .kernels import FusedProgram, Kernel, KernelKind
from .multi_output import schedule_place


def input_expression(kernel_nodes: Sequence[Node], anchor: Node
                     ) -> tuple[list[Node], list[Node]]:
    """The kernel nodes a reduction's input expression evaluates, and the values it reads
    (kernel inputs, immediates)."""
    members = set(kernel_nodes) - {anchor}
    nodes: list[Node] = []
    leaves: list[Node] = []
    seen: set[Node] = set()
    stack = [anchor.inputs[0]]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n in members:
            nodes.append(n)
            stack.extend(n.inputs)
        else:
            leaves.append(n)
    return nodes, leaves


def flat_input(kernel_nodes: Sequence[Node], anchor: Node) -> bool:
    """Whether a reduction's input expression can be evaluated at flat element indices of
    its input (every node pointwise with the input's shape or one element, every value read
    of that shape or one element)."""
    shape = anchor.inputs[0].shape
    nodes, leaves = input_expression(kernel_nodes, anchor)
    return (all(registry.OPS[n.op].fusion.pointwise and (n.shape == shape or n.size == 1)
                for n in nodes)
            and all(n.shape == shape or n.size == 1 for n in leaves))


def row_flat_input(kernel_nodes: Sequence[Node], anchor: Node) -> bool:
    """Whether a reduction over trailing axes can evaluate its input expression at flat
    indices of each output's row of reduced elements: as `flat_input`, but a node or value
    may also broadcast over the reduced axes only (one element per row: a per-channel
    bias before a global pool), which is then read at its row's index."""
    src = anchor.inputs[0]
    shape = src.shape
    axes = set(anchor.attrs["axes"])

    def per_row(n: Node) -> bool:
        if n.shape == shape or n.size == 1:
            return True
        if not broadcasts_to(n.shape, shape):
            return False
        padded = (1,) * (len(shape) - len(n.shape)) + tuple(n.shape)
        return all(padded[d] == 1 for d in axes)

    nodes, leaves = input_expression(kernel_nodes, anchor)
    return (all(registry.OPS[n.op].fusion.pointwise and per_row(n) for n in nodes)
            and all(per_row(n) for n in leaves))


def keeps_only_innermost(anchor: Node) -> bool:
    """Whether `anchor` reduces every axis of a non-empty input of rank >= 2 but the last."""
    src = anchor.inputs[0]
    return (src.ndim >= 2 and src.size > 0
            and sorted(anchor.attrs["axes"]) == list(range(src.ndim - 1)))


def broadcasts_to(shape: tuple[int, ...], full: tuple[int, ...]) -> bool:
    """Whether numpy broadcasting takes `shape` to `full` (`full` unchanged)."""
    if len(shape) > len(full):
        return False
    return all(a in (1, b) for a, b in zip(reversed(shape), reversed(full)))


def side_nodes(kernel: Kernel) -> set[Node]:
    """The nodes of `kernel` its side outputs (every output but the root) depend on."""
    members = set(kernel.nodes)
    found: set[Node] = set()
    stack = list(kernel.outputs[:-1])
    while stack:
        n = stack.pop()
        if n in found or n not in members:
            continue
        found.add(n)
        stack.extend(n.inputs)
    return found


def own_part(kernel: Kernel) -> Kernel:
    """`kernel` as it was before side outputs merged into it: its nodes but the side part,
    and what those read (kernel inputs and side outputs). `kernel` itself if it has one
    output. Code generation chooses the reduction's loops and vector width from it."""
    if len(kernel.outputs) == 1:
        return kernel
    side = side_nodes(kernel)
    nodes = [n for n in kernel.nodes if n not in side]
    members = set(nodes)
    outside = set(kernel.inputs) | side
    reads: dict[Node, None] = {}
    for n in nodes:
        for i in n.inputs:
            if i not in members and i in outside:
                reads[i] = None
    return Kernel(kernel.index, kernel.kind, kernel.root, kernel.anchor, nodes, list(reads))


def accepts_side_outputs(kernel: Kernel) -> bool:
    """Whether `kernel` is a reduction that can compute and store side outputs (see the
    module docstring): the one predicate both this pass and code generation apply."""
    anchor = kernel.anchor
    if (kernel.kind != KernelKind.REDUCTION or anchor is None
            or kernel.outputs[-1] is not kernel.root or not keeps_only_innermost(anchor)):
        return False
    own = own_part(kernel)
    if not flat_input(own.nodes, anchor):
        return False
    shape = anchor.inputs[0].shape
    side = side_nodes(kernel)
    if anchor in side or kernel.root in side:
        return False
    if any(o.shape != shape for o in kernel.outputs[:-1]):
        return False
    if not all(registry.OPS[n.op].fusion.pointwise and broadcasts_to(n.shape, shape)
               for n in side):
        return False
    inputs = set(kernel.inputs)
    if not all(broadcasts_to(i.shape, shape) for n in side for i in n.inputs
               if i in inputs):
        return False
    expression = set(input_expression(own.nodes, anchor)[0]) | {anchor}
    # The epilogue runs over the output's shape: it must not read the side part.
    return all(n in expression for n in own.nodes if any(i in side for i in n.inputs))


def merge_column_sums(program: FusedProgram, position: dict[Node, int], max_nodes: int
                      ) -> FusedProgram:
    """`program` with each reduction that keeps only its input's innermost axis merged with
    the kernels producing its input, where `accepts_side_outputs` and the schedule allow
    (see the module docstring); kernels renumbered in schedule order. Changes `program` in
    place and returns it.

    The producers are found through the reduction's inputs, not by a window: a bias
    gradient's producer may be dozens of kernels earlier (LeNet: 29, an unrolled LSTM: 110).
    Each attempt costs one pass over the kernels in between, and there is one attempt per
    producer of each such reduction (a handful per model), so the pass stays linear in the
    schedule times the number of column sums."""
    updated: dict[Node, list[Node]] = {}  # update value -> the variables it updates
    for var, value in program.signature.updates:
        updated.setdefault(value, []).append(var)
    order = list(program.kernels)
    q = 0
    while q < len(order):
        k = order[q]
        merged = False
        if accepts_side_outputs(k):
            for p in _producers(program, order, q):
                g = order[p]
                if len(g.nodes) + len(k.nodes) > 2 * max_nodes:
                    continue
                union = _union(program, g, k, position)
                if union is None or not accepts_side_outputs(union):
                    continue
                reads = {program.views.get(n, n) for n in union.inputs}
                if any(v in reads for o in g.outputs for v in updated.get(o, [])):
                    continue  # alone, g may update that variable in place; merged, not
                place = schedule_place(program, order, p, q)
                if place is None:
                    continue
                for n in union.nodes:
                    program.kernel_of[n] = union
                # g's nodes are evaluated at the input's elements, not the root's.
                program.spine.difference_update(g.nodes)
                order[p] = order[q] = union
                del order[q if place == p else p]
                q = p if place == p else q - 1
                merged = True  # try the merged kernel again: another producer may join
                break
        if not merged:
            q += 1
    program.reorder(order)
    return program


def _producers(program: FusedProgram, order: list[Kernel], q: int) -> list[int]:
    """Where in `order` the elementwise kernels are whose outputs `order[q]` reads directly
    (none of whose outputs it reads through a view), nearest first."""
    k = order[q]
    viewed = {program.views[n] for n in k.inputs if n in program.views}
    found: set[int] = set()
    for n in k.inputs:
        g = program.kernel_of.get(n)
        if (g is None or id(g) in found or n in program.views
                or g.kind not in (KernelKind.ELEMENTWISE, KernelKind.MULTI_OUTPUT)
                or any(o in viewed for o in g.outputs)):
            continue
        found.add(id(g))
    return [p for p in range(q - 1, -1, -1) if id(order[p]) in found]


def _union(program: FusedProgram, g: Kernel, k: Kernel, position: dict[Node, int]
           ) -> Kernel | None:
    """The reduction `k` also computing `g`'s nodes and storing `g`'s outputs (not yet in
    the program); None if an output of `g` follows `k`'s root in graph order (an output `k`
    does not read may), since a kernel's root is its last output and node."""
    if any(position[o] > position[k.root] for o in g.outputs):
        return None
    nodes = sorted([*g.nodes, *k.nodes], key=position.__getitem__)
    outputs = sorted([*g.outputs, *k.outputs], key=position.__getitem__)
    assert outputs[-1] is k.root and nodes[-1] is k.root
    members = set(nodes)
    reads: dict[Node, None] = {}
    for n in nodes:
        for i in n.inputs:
            if i not in members and i not in program.immediates:
                reads[i] = None
    return Kernel(k.index, KernelKind.REDUCTION, k.root, k.anchor, nodes,
                  sorted(reads, key=position.__getitem__), outputs)
