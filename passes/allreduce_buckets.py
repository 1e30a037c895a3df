"""Gradient buckets: the allreduces of a data-parallel step as a few non-blocking calls.

Horovod's fusion buffer without the copies. The memory planner (`memory_plan.plan_memory`)
asks `find_buckets` which allreduce kernels qualify and lays out

- every qualifying gradient (an allreduce's operand) in one contiguous arena region, the
  *send* region, in the order the step writes them (the backward runs in reverse
  topological order of the forward, so the last layer's gradients come first), and
- every allreduce result at the same relative offset in a second region, *recv*,

so that a bucket (consecutive gradients of one dtype and reduction, up to `BUCKET_BYTES`)
is one contiguous range of each region: one ``MPI_Iallreduce`` with no packing copy. Code
generation (`codegen/opaque/collective.py`) then skips the per-gradient allreduce kernels,
starts each bucket right after the kernel that writes its last gradient (`Bucket.ready`),
and waits for it (and divides by the number of ranks, for "mean") just before the first
kernel that reads one of its results (`Bucket.needed`), which is an optimizer update: the
reductions overlap the rest of the backward pass.

An allreduce qualifies when its operand is the output of a kernel (not a view, an input, a
variable or a constant) and neither operand nor result is a signature output or an update
value (those have fixed homes). Others keep their blocking kernel.

Padding: members are 64-byte aligned, so a bucket's range includes up to 60 bytes of
padding per member; MPI reduces those too (harmless: nothing reads them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from graphc.ir import DType, Node
from graphc.passes.kernels import FusedProgram, Kernel, KernelKind

# The bucket size: large enough that per-call latency is amortized (about 20 us per call on
# one machine), small enough that the first bucket starts early in the backward pass.
BUCKET_BYTES = 1 << 20
_ALIGN = 64


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


@dataclass
class Member:
    """One gradient of a bucket: its allreduce kernel and byte offset within the regions."""

    grad: Node
    result: Node
    kernel: int  # index of the (skipped) allreduce kernel
    producer: int  # index of the kernel that writes `grad`
    offset: int = 0


@dataclass
class Bucket:
    """Consecutive members of one dtype and reduction; `send`, `recv` and `request` are
    arena offsets set by the memory planner."""

    dtype: DType
    reduction: str
    members: list[Member] = field(default_factory=list)
    offset: int = 0  # of the first member, relative to the regions' start
    nbytes: int = 0  # through the end of the last member (aligned)
    needed: int = 0  # first kernel reading a result: wait before it
    send: int = -1
    recv: int = -1
    request: int = -1

    @property
    def ready(self) -> int:
        """The kernel after which every gradient of the bucket is written: start after it."""
        return max((m.producer for m in self.members), default=-1)

    @property
    def count(self) -> int:
        """Elements the call reduces (padding between members included)."""
        return self.nbytes // self.dtype.itemsize

    @property
    def first_kernel(self) -> int:
        """The allreduce kernel a failure of the bucket is reported as."""
        return min(m.kernel for m in self.members)

    def format(self) -> str:
        names = ", ".join("%" + m.grad.name for m in self.members)
        return (f"bucket {self.dtype} {self.reduction} send arena+{self.send} recv "
                f"arena+{self.recv} ({self.nbytes} B): start after k{self.ready}, wait before "
                f"k{self.needed}: {names}")


def _qualifies(program: FusedProgram, k: Kernel, fixed: set[Node]) -> bool:
    anchor = k.anchor
    if k.kind != KernelKind.OPAQUE or anchor is None or anchor.op != "allreduce":
        return False
    grad = anchor.inputs[0]
    producer = program.kernel_of.get(grad)
    return (k.outputs == [anchor] and grad not in program.views and producer is not None
            and any(o is grad for o in producer.outputs) and producer is not k
            and (producer.anchor is None or producer.anchor.op != "allreduce")
            and grad not in fixed and anchor not in fixed and grad.type.nbytes > 0)


def find_buckets(program: FusedProgram, readers: dict[Node, list[int]], fixed: set[Node],
                 bucket_bytes: int | None = None) -> list[Bucket]:
    """The buckets of `program`'s qualifying allreduces, with relative member offsets.

    `readers` maps each buffer to the kernels reading it; `fixed` holds nodes whose
    location is already decided (signature outputs, update values); `bucket_bytes`
    defaults to `BUCKET_BYTES` (read at each call).
    """
    if bucket_bytes is None:
        bucket_bytes = BUCKET_BYTES
    members = []
    seen: set[Node] = set()
    for k in program.kernels:
        if _qualifies(program, k, fixed) and k.anchor is not None:
            grad = k.anchor.inputs[0]
            if grad in seen:  # the same gradient reduced twice: keep the second blocking
                continue
            seen.add(grad)
            members.append(Member(grad, k.anchor, k.index, program.kernel_of[grad].index))
    members.sort(key=lambda m: (m.producer, m.kernel))
    end = len(program.kernels)

    def first_read(m: Member) -> int:
        return min(readers.get(m.result, [end]))

    buckets: list[Bucket] = []
    offset = 0
    for m in members:
        last = buckets[-1] if buckets else None
        size = _align(m.grad.type.nbytes)
        # A bucket must be complete before any of its results is read (start before wait).
        if (last is None or last.dtype != m.grad.dtype
                or last.reduction != m.result.attrs["reduction"]
                or last.nbytes + size > bucket_bytes
                or min(last.needed, first_read(m)) <= max(last.ready, m.producer)):
            last = Bucket(m.grad.dtype, m.result.attrs["reduction"], offset=offset,
                          needed=end)
            buckets.append(last)
        m.offset = offset
        last.members.append(m)
        last.nbytes = offset + size - last.offset
        last.needed = min(last.needed, first_read(m))
        offset += size
    return buckets


def region_bytes(buckets: list[Bucket]) -> int:
    """Bytes of each of the send and recv regions."""
    return buckets[-1].offset + buckets[-1].nbytes if buckets else 0
