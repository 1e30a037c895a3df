"""Which buffers a kernel may write over: the in-place rules of the memory planner.

A kernel's result may take over a buffer it reads when nothing reads that buffer's old value
afterwards and the kernel itself reads it only elementwise at its output index (element i
is read before element i is written, and no other element is), or when the kernel is an op
that overwrites that operand (`OpDef.overwrites`: `dynamic_update_slice` copies it into the
result and skips the copy when both are one buffer). `memory_plan.plan_memory` applies the
rules to variables updated by a step (`in_place_update_target`), to arena temporaries, and a
loop body's plan to its carries (`in_place_carries`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from graphc.ir import Node
from graphc.ops import registry
from graphc.passes.kernels import FusedProgram, Kernel, KernelKind


def in_place_update_target(program: FusedProgram, k: Kernel, variables: list[Node],
                            readers: dict[Node, list[int]],
                            epilogue_writes_once: Callable[[Kernel], bool] | None
                            ) -> Node | None:
    for var in variables:
        later = [i for i in readers.get(var, []) if i > k.index]
        if later:
            continue
        if k.index in readers.get(var, []):
            reads_view = any(program.views.get(n) is var for n in k.inputs)
            in_epilogue = (epilogue_writes_once is not None and epilogue_writes_once(k)
                           and program.reads_in_epilogue_at_root_index(k, var))
            if not overwrites(program, k, var) and (
                    reads_view or not (program.reads_at_root_index(k, var) or in_epilogue)):
                continue
        if any(var is program.views.get(o, o) for o in program.signature.outputs):
            continue  # the output must see the old value; keep it simple and copy
        return var
    return None


def in_place_carries(program: FusedProgram, carries: Mapping[int, int],
                     readers: dict[Node, list[int]]) -> dict[int, Node]:
    """Of a loop body's carries (output index -> input index), those whose output may be
    written over its input's buffer: {output index: the input's placeholder}.

    As for a variable updated in place: the output is stored by a kernel (not a copy of
    something else), once; no kernel after that one reads the input, and that kernel reads
    it only elementwise at its output index, or overwrites it (`dynamic_update_slice`: then
    only the update is written, not the whole carry); and no output is a copy of the input
    (copies run after the kernels).
    """
    sig = program.signature
    found: dict[int, Node] = {}
    for o, i in carries.items():
        result, param = sig.outputs[o], sig.inputs[i]
        k = program.kernel_of.get(result)
        if k is None or not any(x is result for x in k.outputs) \
                or sum(x is result for x in sig.outputs) != 1 \
                or any(program.views.get(x, x) is param for x in sig.outputs):
            continue
        if any(r > k.index for r in readers.get(param, [])):
            continue
        if k.index in readers.get(param, []) and not overwrites(program, k, param):
            reads_view = any(program.views.get(n) is param for n in k.inputs)
            if reads_view or not program.reads_at_root_index(k, param):
                continue
        found[o] = param
    return found


def overwrites(program: FusedProgram, k: Kernel, buffer_node: Node) -> bool:
    """Whether `k` is the kernel of an op that may write its result over the buffer of its
    operand `buffer_node` (`OpDef.overwrites`), which it reads through no other operand.

    Such a kernel reads that operand only to copy it into its output, and skips the copy
    when both are one buffer (`codegen.opaque.sequence`), so the result may live there.
    """
    anchor = k.anchor
    if k.kind != KernelKind.OPAQUE or anchor is None:
        return False
    which = registry.OPS[anchor.op].overwrites
    if which is None or anchor.inputs[which] is not buffer_node:
        return False
    return sum(program.views.get(n, n) is buffer_node for n in anchor.inputs) == 1
