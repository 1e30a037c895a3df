"""What a kernel's lowering sees (`KernelContext`) and what a lowering is (`Lowering`).

A kernel is emitted as one LLVM function whose arguments are the buffers it reads and writes.
The context maps each materialized node to its pointer, gives the output pointer and the
scratch pointer, and builds `Evaluator`s for fused expressions.

A `Lowering` is registered next to its emitter, in the emitter module's `LOWERINGS`;
`codegen/lowering.py` collects them into the one table the module builder reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import llvmlite.ir as ir

from graphc.codegen.fused.expr import Evaluator
from graphc.codegen.index import Idx
from graphc.codegen.llvm_types import I32, storage_type
from graphc.codegen.target import Target
from graphc.errors import CompileError
from graphc.ir import DType, Node
from graphc.passes.kernels import FusedProgram, Kernel, KernelKind
from graphc.passes.memory_plan import Space

# Scratch bytes a kernel needs: (kernel, target, threads, CompileOptions.conv_algorithm).
ScratchRule = Callable[[Kernel, Target, int, str], int]


@dataclass(frozen=True)
class TableEntry:
    """What one slot of an entry point's table points at (`codegen.module`)."""

    space: Space
    key: int | str


@dataclass(frozen=True)
class LoopCode:
    """A region of a loop kernel, emitted: ``int32_t fn(void **table)`` with the entry point's
    ABI (`codegen.module`), and what each slot of its `table` holds."""

    fn: ir.Function
    table: tuple[TableEntry, ...]


@dataclass
class KernelContext:
    b: ir.IRBuilder
    target: Target
    program: FusedProgram
    kernel: Kernel
    ptrs: dict[Node, ir.Value]  # kernel inputs (views included) and the root
    scratch: ir.Value | None
    threads: int = 1  # threads of the native pool parallel loops may use
    conv_algorithm: str = "auto"  # CompileOptions.conv_algorithm
    status: ir.Value | None = None  # the call's status word, for kernels that `checks`
    bodies: list[LoopCode] = field(default_factory=list)  # a loop kernel's region functions

    @property
    def module(self) -> ir.Module:
        return self.b.module

    @property
    def out(self) -> ir.Value:
        return self.ptrs[self.kernel.root]

    def ptr(self, node: Node) -> ir.Value:
        """The buffer of `node`; an immediate scalar gets a private constant global."""
        if node in self.ptrs:
            return self.ptrs[node]
        if node in self.program.immediates:
            value = self.program.graph.constants[node.name].reshape(())
            st = storage_type(node.dtype)
            # Named by value: a loop body's constants share the module with the outer
            # program's, and their names are scoped to their own graph.
            name = f"graphc.imm.{node.dtype.name}.{value.tobytes().hex()}"
            existing = self.module.globals.get(name)
            if existing is None:
                existing = ir.GlobalVariable(self.module, st, name)
                existing.linkage = "private"
                existing.global_constant = True
                py = value.item()
                existing.initializer = ir.Constant(
                    st, float(py) if node.dtype.is_float and node.dtype != DType.bfloat16
                    else int(py))
            return existing
        raise CompileError(f"kernel {self.kernel.name}: no buffer for %{node.name}")

    def evaluator(self, lanes: int, overrides: dict[Node, ir.Value] | None = None,
                  flat: bool = False, shape: tuple[int, ...] | None = None,
                  position: Callable[[], list[Idx]] | None = None) -> Evaluator:
        """An evaluator of this kernel's nodes (`flat`, `shape`, `position`: `Evaluator`)."""
        return Evaluator(self.b, self.program, self.kernel, self.ptrs, lanes, overrides, flat,
                         shape, position)

    def report_error(self, failed: ir.Value) -> None:
        """Set the call's status word when `failed` (i1) is true: the entry point then stops
        after this kernel and returns its number (`module.build_module`). Only kernels whose
        `Lowering.checks` is set have a status word; several threads may store at once, so
        the store is atomic (and always stores the same value)."""
        assert self.status is not None, "a kernel that reports errors must declare `failure`"
        b = self.b
        with b.if_then(failed, likely=False):
            # atomicrmw: llvmlite's store_atomic needs a typed pointer, ours are opaque.
            b.atomic_rmw("xchg", self.status, ir.Constant(I32, 1), "monotonic")

    def lanes_for(self, nodes: list[Node]) -> int:
        """Vector lanes so that the widest element type in `nodes` fills one register."""
        widest = max((n.dtype.itemsize for n in nodes), default=4)
        # Narrow types (bool) would ask for 64 lanes; 16 keeps index vectors reasonable.
        return min(self.target.lanes(max(widest, 4)), 16)


Emitter = Callable[[KernelContext], None]


@dataclass(frozen=True)
class Lowering:
    """How the kernels of one kind, or of one op, become code.

    `key` is a `KernelKind` (elementwise, reduction, matmul and conv kernels) or, for a kernel
    of its own (`KernelKind.OPAQUE`), the op's name. `emit` fills the kernel's function at
    `ctx.b`; `scratch` says how many bytes of scratch it needs (none if absent: then
    `ctx.scratch` is None); `writes_once` says whether the kernel applies its epilogue
    exactly once per output element, at the final store (the memory planner may then update
    a variable its epilogue reads in place); `failure` is set for a kernel that can find its
    input invalid at run time (an index out of range) and report it (`report_error`): it
    says what a reported error means, for the node the kernel computes.
    """

    key: KernelKind | str
    emit: Emitter
    scratch: ScratchRule | None = None
    writes_once: Callable[[Kernel, Target], bool] | None = None
    failure: Callable[[Node], str] | None = None

    @property
    def checks(self) -> bool:
        """Whether the kernel gets the call's status word (see `failure`)."""
        return self.failure is not None
