"""The lowering registry: which emitter turns each kernel into code, and its scratch.

Each `Lowering` is written next to its emitter, in that module's `LOWERINGS` (the way JAX
registers a lowering next to its primitive); `MODULES` is the one list of those modules,
as `graphc.ops.registry.FAMILIES` is of the op families. A kernel is looked up by its kind
(`KernelKind`: elementwise, reduction, matmul, conv) or, when it is an op's kernel of its
own (`KernelKind.OPAQUE`), by that op's name. Adding a kernel means adding a `Lowering` to
an emitter module (and the module here, if it is new).
"""

from __future__ import annotations

from graphc.codegen import loop
from graphc.codegen.context import Lowering
from graphc.codegen.conv import direct, winograd
from graphc.codegen.fused import loop_nests, multi_output, reduction
from graphc.codegen.gemm import matmul
from graphc.codegen.opaque import (
    attention_forward,
    attention_grad,
    collective,
    concat,
    norms,
    pooling,
    pooling_grad,
    rows,
    scatter_gather,
    sequence,
)
from graphc.codegen.target import Target
from graphc.errors import CompileError
from graphc.passes.kernels import Kernel, KernelKind

MODULES = (loop_nests, reduction, multi_output, matmul, direct, winograd, rows, concat,
           scatter_gather, pooling, pooling_grad, sequence, norms, attention_forward,
           attention_grad, collective, loop)

TABLE: dict[KernelKind | str, Lowering] = {}
for _module in MODULES:
    for _lowering in _module.LOWERINGS:
        assert _lowering.key not in TABLE, f"two lowerings of {_lowering.key}"
        TABLE[_lowering.key] = _lowering


def lowering_of(kernel: Kernel) -> Lowering:
    """The lowering of `kernel`; a CompileError naming the op when there is none."""
    if kernel.kind != KernelKind.OPAQUE:
        return TABLE[kernel.kind]
    anchor = kernel.anchor
    assert anchor is not None
    found = TABLE.get(anchor.op)
    if found is None:
        raise CompileError(f"no code generation for op {anchor.op!r} yet", op=anchor.op,
                           loc=anchor.loc)
    return found


def scratch_bytes(kernel: Kernel, target: Target, threads: int = 1, conv: str = "auto") -> int:
    """Bytes of scratch `kernel` needs (0: it gets no scratch pointer)."""
    rule = lowering_of(kernel).scratch
    return rule(kernel, target, threads, conv) if rule is not None else 0


def epilogue_writes_once(kernel: Kernel, target: Target) -> bool:
    """Whether `kernel` applies its epilogue once per output element, at the final store."""
    rule = lowering_of(kernel).writes_once
    return rule(kernel, target) if rule is not None else False
