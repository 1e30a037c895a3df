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

Last, `multi_output.merge_outputs` joins elementwise kernels of one iteration space that
share their inputs or feed each other into kernels with several outputs (an optimizer's
update of a parameter and its slots becomes one pass over the gradient), and
`column_sums.merge_column_sums` merges an elementwise kernel into a reduction over all but
the innermost axis of its output (a bias gradient's column sum), which then also stores it.
"""

from __future__ import annotations

from graphc.ir import SOURCE_OPS, DType, Graph, Node, Signature
from graphc.ir.opdef import Anchor, Fusion, OpDef
from graphc.ops import registry

from .column_sums import merge_column_sums
from .kernels import FusedProgram, Kernel, KernelKind, Unfused
from .multi_output import merge_outputs

DEFAULT_MAX_KERNEL_NODES = 48


# A variadic indexed op (concat) evaluated by index computes every operand at each element
# (and selects one), so a wide one (an RNN's per-step gradients) gets a kernel of its own
# that copies blocks.
MAX_INLINE_OPERANDS = 4


def _op(n: Node) -> OpDef:
    return registry.OPS[n.op]


def _stores_once(anchor: Node) -> bool:
    """Whether the anchor is a GEMM of low-precision operands (bf16, uint8 x int8): their
    kernels keep each sum in registers over the whole K and store it once, through the
    epilogue, so the epilogue may change the dtype (dequantize int32 to float32, round
    float32 to bf16); float GEMMs may store partial sums of K blocks into the output."""
    return (_op(anchor).anchor == Anchor.MATMUL
            and anchor.inputs[0].dtype in (DType.bfloat16, DType.uint8))


def _inlinable(n: Node) -> bool:
    op = _op(n)
    if op.fusion == Fusion.INDEXED and op.arity is None and len(n.inputs) > MAX_INLINE_OPERANDS:
        return False
    return op.fusion.inlinable


def _reads_results(n: Node) -> bool:
    """Whether `n` reads a result of a region op (a `get`: a control op owning no body)."""
    return _op(n).fusion == Fusion.CONTROL and not n.regions


def _evaluates_by_index(n: Node) -> bool:
    """Whether `n` reads its operands through the expression evaluator (not from memory)."""
    return _inlinable(n) or _op(n).anchor == Anchor.REDUCTION


def _reads_from_memory(anchor: Anchor | None) -> bool:
    """Whether an anchor of this kind reads its operands from memory (the GEMM packs them)."""
    return anchor is not None and anchor != Anchor.REDUCTION


def fuse(graph: Graph, sig: Signature, max_kernel_nodes: int = DEFAULT_MAX_KERNEL_NODES,
         multi_output: bool = True) -> FusedProgram:
    """Group the nodes `sig` needs into kernels (see the module docstring); `multi_output`
    also merges kernels into kernels with several outputs (`multi_output.merge_outputs`,
    then `column_sums.merge_column_sums`); off, no kernels are merged."""
    needed = sig.needed_nodes()
    needed_set = set(needed)
    users: dict[Node, list[Node]] = {n: [] for n in needed}
    for n in needed:
        for i in n.inputs:
            users[i].append(n)
    required = {*sig.outputs, *(v for _, v in sig.updates)}
    position = {n: i for i, n in enumerate(needed)}
    immediates = {n for n in needed if n.op == "constant" and n.size == 1}
    views: dict[Node, Node] = {}
    must_store: set[Node] = set()
    for n in needed:
        if _op(n).fusion == Fusion.VIEW:
            base = n.inputs[0]
            views[n] = views.get(base, base)
            must_store.add(base)
    # The one `get` that stores each result of a loop; another get of it is a view.
    loop_outputs: dict[Node, dict[int, Node]] = {}
    for n in needed:
        if _reads_results(n):
            first = loop_outputs.setdefault(n.inputs[0], {}).setdefault(n.attrs["index"], n)
            if first is not n:
                views[n] = first

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
        if n.op in SOURCE_OPS or n in views or _reads_results(n):
            continue
        if n.regions:  # a loop: one kernel storing the results the program reads
            outputs = sorted(loop_outputs.get(n, {}).values(), key=position.__getitem__)
            if not outputs:
                continue  # no result is read (a signature never needs it then)
            k = Kernel(len(kernels), KernelKind.LOOP, outputs[-1], n, [n, *outputs],
                       outputs=outputs)
            kernels.append(k)
            for m in k.nodes:
                kernel_of[m] = k
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
                      and n.shape == u.shape == k.root.shape
                      and (n.dtype == k.root.dtype or _stores_once(n)))
                if ok:
                    k.kind = KernelKind.of_anchor(_op(n).anchor)
                    k.anchor = n
                    k.nodes.insert(0, n)
                    kernel_of[n] = k
                    spine.add(n)
                    continue
                reason = (f"{n.op} is expensive and is fused only into an elementwise "
                          "epilogue of its own shape and dtype (any dtype for a "
                          "low-precision GEMM)")
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

    for k in kernels:
        k.nodes.sort(key=position.__getitem__)
        members = set(k.nodes)
        reads: dict[Node, None] = {}
        for n in k.nodes:
            for i in n.inputs:
                if i not in members and i not in immediates:
                    reads[i] = None
        k.inputs = sorted(reads, key=position.__getitem__)
    # A loop runs where its region op stands: its gets' readers may come before its root.
    kernels.sort(key=lambda k: position[k.anchor if k.kind == KernelKind.LOOP else k.root])
    for i, k in enumerate(kernels):
        k.index = i
    unfused.sort(key=lambda u: (position[u.producer], position[u.consumer]))
    assert all(n in kernel_of or n in views or n.op in SOURCE_OPS for n in needed_set)
    program = FusedProgram(graph, sig, kernels, kernel_of, views, immediates, unfused, spine)
    if not multi_output:
        return program
    program = merge_outputs(program, position, max_kernel_nodes)
    return merge_column_sums(program, position, max_kernel_nodes)
