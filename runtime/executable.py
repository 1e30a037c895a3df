"""`Executable`: a compiled signature, called like a Python function.

Calling convention (shared with the reference interpreter, `runtime.arguments`): inputs by
position in signature order or by name; numpy arrays in, fresh numpy arrays out (one array
when the signature was given a single output node, else a tuple). Every argument is checked
(count, names, shape, dtype, contiguity) before native code runs; then one native call
runs the whole graph, and variable updates land in the graph's own arrays in place.

Thread safety: the arena (the temporaries of one call) belongs to the executable, so calls
are serialized by a lock. Argument checking and output allocation run outside the lock.
Concurrent calls are therefore safe but not parallel; compile one executable per thread
for parallel inference. (Executables of more than one thread share the process's worker
pool of their thread count: while one call's kernel runs a parallel region on it, a
concurrent call's kernels run their tasks on their own calling thread.)
"""

from __future__ import annotations

import ctypes
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphc.codegen.lowering import lowering_of
from graphc.codegen.module import PROFILE, GeneratedModule
from graphc.codegen.opaque.collective import COMM_SLOT
from graphc.errors import GraphcError
from graphc.ir import Graph, Signature
from graphc.passes.kernels import Kernel
from graphc.passes.manager import PipelineReport
from graphc.passes.memory_plan import MemoryPlan, Space
from graphc.runtime.arguments import bind_arguments, check_array
from graphc.runtime.jit import JitModule
from graphc.runtime.mpi import comm_address
from graphc.runtime.program_cache import Layout

_ENTRY_TYPE = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p)


@dataclass
class CompileReport:
    """What compilation did: pass statistics, kernels, memory, LLVM time."""

    pipeline: PipelineReport
    plan: MemoryPlan
    generated: GeneratedModule | Layout
    jit: JitModule
    seconds: dict[str, float]

    def format(self) -> str:
        plan = self.plan
        s = self.jit.stats
        lines = [
            self.pipeline.format_table().rstrip(),
            f"kernels: {len(plan.program.kernels)}",
            f"arena: {plan.arena_bytes} B (lower bound {plan.lower_bound} B, naive "
            f"{plan.naive_bytes} B), scratch {self.generated.arena_bytes - plan.arena_bytes} B",
            f"llvm: {'cache hit' if s.cache_hit else 'compiled'}; parse+verify "
            f"{s.parse_verify:.3f}s, optimize {s.optimize:.3f}s, emit {s.emit:.3f}s, load "
            f"{s.load:.3f}s, object {s.object_bytes} B"
            + (f" in {s.part_objects + 1} modules" if s.part_objects else "")
            + (" compiled concurrently (times summed over threads)"
               if s.part_objects and not s.cache_hit else ""),
            f"shared GEMM functions: {s.library_objects} linked, {s.library_compiled} of them "
            "compiled now (the others compiled earlier in this process or cached)",
            "stages: " + ", ".join(f"{k} {v:.3f}s" for k, v in self.seconds.items()),
        ]
        return "\n".join(lines)


class Executable:
    """A compiled graph signature. Keep it alive while you call it."""

    def __init__(self, user_graph: Graph, compiled_graph: Graph, signature: Signature,
                 single_output: bool, generated: GeneratedModule | Layout, jit: JitModule,
                 report: CompileReport):
        self.graph = user_graph
        self.compiled_graph = compiled_graph
        self.signature = signature
        self.single_output = single_output
        self.report = report
        self._jit = jit  # owns the machine code: must outlive _fn
        self._fn = _ENTRY_TYPE(jit.address(generated.entry))
        # (Its parallel kernels run on the process pool, `runtime.process_pool`, whose code
        # outlives every executable.)
        # A program with an allreduce reads its communicator from this slot: bind it to
        # this process's world now (null in a world of one: the kernel then copies).
        slot = _data_address(jit, COMM_SLOT)
        if slot:
            ctypes.c_void_p.from_address(slot).value = comm_address() or None
        self._table_spec = generated.table
        self._table = (ctypes.c_void_p * len(generated.table))()
        self._arena = _aligned_bytes(generated.arena_bytes)
        self._lock = threading.Lock()
        self._n_in = len(signature.inputs)
        self._n_out = len(signature.outputs)
        self._out_types = [(n.shape, n.dtype.np) for n in signature.outputs]
        self._in_types = [(n.shape, n.dtype.np) for n in signature.inputs]
        # A scalar input passed as a numpy scalar of its exact dtype (a decode step's
        # position) is written into a buffer of this executable, under the lock, rather
        # than wrapped in a fresh 0-d array: the pair of that and its address cost ~1 us.
        self._scalar_bufs = [np.zeros((), dtype) if not shape else None
                             for shape, dtype in self._in_types]
        self._static: list[tuple[int, str, str]] = []  # (slot, space, name) of state buffers
        for slot, e in enumerate(generated.table):
            if e.space in (Space.VARIABLE, Space.CONSTANT):
                self._static.append((slot, e.space.value, str(e.key)))
        self._bound: dict[int, np.ndarray] = {}
        self._bound_version = -1
        self._bind_state()

    def profile(self, reset: bool = False) -> str:
        """Cycles per kernel summed over all calls so far (compile with options.profile).

        A table sorted by cost: kernel, its kind, cycles, share of the total. `reset` zeroes
        the counters afterwards.
        """
        address = self._jit.optional_address(PROFILE) or _data_address(self._jit, PROFILE)
        if not address:
            raise GraphcError("this executable was compiled without profiling; pass "
                              "options=gc.CompileOptions(profile=True) to gc.compile")
        kernels = self.report.plan.program.kernels
        counts = (ctypes.c_uint64 * max(len(kernels), 1)).from_address(address)
        total = sum(counts[i] for i in range(len(kernels))) or 1
        rows = sorted(((counts[i], k) for i, k in enumerate(kernels)), key=lambda r: -r[0])
        lines = [f"{'kernel':<44} {'kind':<11} {'Mcycles':>10} {'share':>6}"]
        for cycles, k in rows:
            lines.append(f"{k.name:<44} {k.kind.value:<11} {cycles / 1e6:>10.3f} "
                         f"{100 * cycles / total:>5.1f}%")
        if reset:
            for i in range(len(kernels)):
                counts[i] = 0
        return "\n".join(lines)

    @property
    def input_names(self) -> list[str]:
        return [n.name for n in self.signature.inputs]

    def _positional(self, args: tuple[Any, ...]) -> list[Any]:
        """The fast path for positional arguments: numpy arrays of exactly the right type
        and layout are used as they are, a numpy scalar of exactly a scalar input's dtype
        is kept as it is (`__call__` copies it into the input's own buffer: 0.2 us instead
        of the 4 us of a full check), and only the others are checked and converted."""
        out = []
        for a, node, (shape, dtype) in zip(args, self.signature.inputs, self._in_types):
            if type(a) is np.ndarray and a.shape == shape and a.dtype == dtype \
                    and a.flags.c_contiguous:
                out.append(a)
            elif not shape and type(a) is dtype.type:  # a numpy scalar of the exact dtype
                out.append(a)
            else:
                out.append(check_array(node, a, "compiled function"))
        return out

    def _bind_state(self) -> None:
        """Point the table at the live variable arrays and the constants (no copies)."""
        for slot, space, name in self._static:
            if space == "variable":
                # The user's graph: it may rebind a variable (`VariableStore.bind`) after
                # compilation; the compiled graph shares its arrays, not its store.
                array = self.graph.variables[name]
            else:
                array = self.compiled_graph.constants[name]
            if not array.flags.c_contiguous:
                raise GraphcError(f"{space} {name!r} is not C-contiguous")
            self._bound[slot] = array
            self._table[slot] = array.ctypes.data
        self._table[len(self._table_spec) - 1] = self._arena.ctypes.data
        self._bound_version = self.graph.variables.version

    def _failure(self, status: int) -> GraphcError:
        return kernel_failure(self.report.plan.program.kernels, status)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        arrays = self._positional(args) if not kwargs and len(args) == self._n_in else \
            bind_arguments(self.signature.inputs, args, kwargs, "compiled function")
        outputs = [np.empty(shape, dtype) for shape, dtype in self._out_types]
        with self._lock:
            table = self._table
            if self._bound_version != self.graph.variables.version:
                self._bind_state()
            for i, a in enumerate(arrays):
                if not isinstance(a, np.ndarray):  # a numpy scalar (`_positional`)
                    buf = self._scalar_bufs[i]
                    buf[()] = a
                    a = buf
                table[i] = _address(a)
            n_in = self._n_in
            for i, o in enumerate(outputs):
                table[n_in + i] = _address(o)
            status = self._fn(table)
        if status != 0:
            raise self._failure(status)
        if self.single_output:
            return outputs[0]
        return tuple(outputs)


STOPPED = ("the call stopped there (no outputs; variable updates scheduled before it have "
           "run)")


def kernel_failure(kernels: Sequence[Kernel], status: int) -> GraphcError:
    """The error a nonzero status of the entry point means: kernel `status - 1` found its
    input invalid (`Lowering.failure`) and the call stopped after it."""
    if not 1 <= status <= len(kernels):
        return GraphcError(f"compiled code returned error status {status}")
    kernel = kernels[status - 1]
    node = kernel.anchor if kernel.anchor is not None else kernel.root
    failure = lowering_of(kernel).failure
    what = failure(node) if failure is not None else "an invalid input"
    return GraphcError(f"{what}; {STOPPED}", op=node.op, loc=node.loc)


def failure_messages(kernels: Sequence[Kernel]) -> tuple[tuple[int, str], ...]:
    """(status, message) for every kernel that can fail: what an exported library reports
    (`NAME_failure`), the text `kernel_failure` raises, with the op and the user's line."""
    return tuple((i + 1, str(kernel_failure(kernels, i + 1)))
                 for i, k in enumerate(kernels) if lowering_of(k).checks)


def _address(a: np.ndarray) -> int:
    """The address of a contiguous array's data; `a` must be a numpy array (of any
    subclass), never a scalar or other object: its object is read as an array's (a numpy
    scalar input goes through the executable's 0-d buffer first).

    `ndarray.ctypes.data` builds a helper object (~1.5 us, a fifth of a batch-1 call); a
    ctypes view of a writable buffer is ~3x cheaper, and reading the array object's data
    field (`_DATA_OFFSET`, found and checked at import) ~5x. Without the offset, empty
    arrays and read-only ones (which ctypes cannot view) take the slow path."""
    if _DATA_OFFSET:
        return _VOID_AT(id(a) + _DATA_OFFSET).value or 0
    if a.size and a.flags.writeable:
        return ctypes.addressof(ctypes.c_char.from_buffer(a))
    return a.ctypes.data


def _data_offset() -> int:
    """The byte offset of the data pointer in a numpy array object (`PyArray_DATA`'s field:
    after the object header, 16 bytes on a usual CPython build), checked against
    `ndarray.ctypes.data` on arrays of several sizes, dtypes and flags; 0 when it does not
    hold for every one (then `_address` uses the ctypes paths). Only on CPython, where
    `id` is the object's address."""
    if sys.implementation.name != "cpython":
        return 0
    samples = [np.zeros(n, t) for n, t in ((1, np.int64), (7, np.float32), (4096, np.uint8))]
    samples += [np.zeros((3, 5), np.float64)[1:], np.zeros(0, np.float32)]
    readonly = np.arange(6.0)
    readonly.flags.writeable = False
    samples.append(readonly)
    for offset in (16, 24, 32):
        if all(_VOID_AT(id(a) + offset).value == (a.ctypes.data or None) for a in samples):
            return offset
    return 0


_VOID_AT = ctypes.c_void_p.from_address
_DATA_OFFSET = _data_offset()


def _data_address(jit: JitModule, name: str) -> int:
    try:
        return jit.engine.get_global_value_address(name)
    except (RuntimeError, AttributeError):
        return 0


def _aligned_bytes(n: int, align: int = 64) -> np.ndarray:
    raw = np.zeros(max(n, 1) + align, np.uint8)
    start = (-raw.ctypes.data) % align
    return raw[start:start + max(n, 1)]
