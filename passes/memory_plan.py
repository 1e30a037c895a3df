"""Memory planning: where every materialized value lives, and arena offsets for temporaries.

Input: a `FusedProgram` (kernels in execution order). Output: a `MemoryPlan`.

- Kernel roots that are signature outputs are written straight into the caller's output
  arrays; roots that are update values are written straight into the variable's array when
  that is safe (every other reader of the old value runs earlier, and the writing kernel
  itself reads the variable only elementwise at its output index, or is an op that overwrites
  it, `OpDef.overwrites`); otherwise they go through an arena temporary that is copied into
  the variable after the last kernel.
- Every other root gets an arena slot. A slot's live interval runs from the kernel that
  writes it to the last kernel that reads it (through views too). An elementwise kernel
  reuses the slot of an input whose interval ends at that kernel (in-place), and so does
  the kernel of an op that overwrites that input (`dynamic_update_slice`); a kernel with
  several outputs places each, and a reduction's outputs (side outputs too:
  `passes.column_sums`) never reuse a slot the kernel reads.
- The gradients a data-parallel step reduces across ranks, and the reductions' results, get
  one contiguous region each (`passes/allreduce_buckets.py`), so each bucket of gradients
  is one non-blocking allreduce with no packing copy.
- Slots get 64-byte-aligned offsets by greedy-by-size best fit: largest first, each into the
  smallest gap between already placed slots whose intervals overlap it.

The plan reports the arena size beside its lower bound (the largest sum of slot sizes live
at one time) and the naive sum of all temporaries.

Copies: outputs that are not computed by a kernel of their own (a placeholder, a variable,
a constant, a view, a node listed twice) are copied into the output array; copies from
variables run before the first kernel (they must see old values), others after the last.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from graphc.ir import Node, Signature
from graphc.passes.allreduce_buckets import Bucket, find_buckets, region_bytes
from graphc.passes.in_place import in_place_carries, in_place_update_target, overwrites
from graphc.passes.kernels import FusedProgram, Kernel

ALIGN = 64


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class Space(enum.Enum):
    INPUT = "input"  # the caller's input array (index into signature inputs)
    OUTPUT = "output"  # a fresh output array (index into signature outputs)
    VARIABLE = "variable"  # the graph's live variable array (by name)
    CONSTANT = "constant"  # a constant array (by name)
    ARENA = "arena"  # bytes at an offset in the arena


@dataclass(frozen=True)
class Location:
    space: Space
    key: int | str  # index for INPUT/OUTPUT, name for VARIABLE/CONSTANT, offset for ARENA

    def __str__(self) -> str:
        if self.space == Space.ARENA:
            return f"arena+{self.key}"
        return f"{self.space.value}[{self.key}]"


@dataclass(frozen=True)
class Copy:
    """Copy the value of node `src` (at `src_loc`) into `dst` (same byte size)."""

    src: Node
    src_loc: Location
    dst: Location
    nbytes: int


@dataclass
class Slot:
    """An arena region shared by the buffers of `nodes` (in-place reuse chains)."""

    nodes: list[Node]
    nbytes: int
    start: int
    end: int
    offset: int = -1


@dataclass
class MemoryPlan:
    program: FusedProgram
    location: dict[Node, Location]  # every materialized node (kernel roots, sources used)
    slots: list[Slot]
    copies_before: list[Copy]
    copies_after: list[Copy]
    arena_bytes: int
    lower_bound: int
    naive_bytes: int
    in_place: list[tuple[Node, Node]] = field(default_factory=list)  # (output, reused input)
    in_place_updates: list[Node] = field(default_factory=list)  # variables written directly
    in_place_carries: list[int] = field(default_factory=list)  # outputs over their inputs
    buckets: list[Bucket] = field(default_factory=list)  # gradient allreduces, bucketed

    def buffer_of(self, node: Node) -> Location:
        """Where `node`'s value can be read (views resolve to their base buffer)."""
        base = self.program.views.get(node, node)
        return self.location[base]

    def format(self) -> str:
        """The plan as text (`graphc dump --stage planned`)."""
        lines = [
            f"memory plan for {self.program.graph.name!r}: arena {self.arena_bytes} bytes, "
            f"lower bound {self.lower_bound}, naive {self.naive_bytes} "
            f"({len(self.slots)} slots, {len(self.in_place)} in-place reuses, "
            f"{len(self.in_place_updates)} in-place updates"
            + (f", {len(self.in_place_carries)} in-place carries)" if self.in_place_carries
               else ")")
        ]
        for k in self.program.kernels:
            for i, out in enumerate(k.outputs):
                head = f"  {k.index:3d} {k.name:<40}" if i == 0 else " " * 46
                lines.append(f"{head} -> %{out.name} @ {self.location[out]} "
                             f"({out.type.nbytes} B)")
        for s in sorted(self.slots, key=lambda s: s.offset):
            names = ", ".join("%" + n.name for n in s.nodes)
            lines.append(f"  slot [{s.offset}, {s.offset + s.nbytes}) live {s.start}..{s.end}: "
                         f"{names}")
        lines += ["  " + bucket.format() for bucket in self.buckets]
        for title, copies in (("before", self.copies_before), ("after", self.copies_after)):
            for c in copies:
                lines.append(f"  copy {title}: %{c.src.name} {c.src_loc} -> {c.dst}")
        return "\n".join(lines)


def plan_memory(program: FusedProgram,
                epilogue_writes_once: Callable[[Kernel], bool] | None = None,
                carries: Mapping[int, int] | None = None) -> MemoryPlan:
    """Assign a location to every materialized value (see the module docstring).

    `epilogue_writes_once(kernel)` (from code generation) says whether an anchored kernel
    reads its epilogue operands and writes each output element exactly once, at the final
    store; such a kernel may update a variable its epilogue reads in place (a momentum
    buffer updated in the epilogue of its gradient's GEMM). Without it, only elementwise
    kernels do.

    `carries` (a loop body's program: output index -> input index) names the outputs that
    the loop feeds back into an input at the next step; those for which it is safe
    (`in_place_carries`) are written straight over that input's buffer, listed in
    `MemoryPlan.in_place_carries`, and the loop kernel gives them one buffer, not two.
    """
    sig = program.signature
    kernels = program.kernels
    n_kernels = len(kernels)
    location: dict[Node, Location] = {}
    for i, ph in enumerate(sig.inputs):
        location[ph] = Location(Space.INPUT, i)
    for k in kernels:
        for n in k.inputs:
            base = program.views.get(n, n)
            if base.op == "variable":
                location[base] = Location(Space.VARIABLE, base.name)
            elif base.op == "constant":
                location[base] = Location(Space.CONSTANT, base.name)

    # Readers of each base buffer, by kernel index (views count as reads of their base).
    readers: dict[Node, list[int]] = {}
    for k in kernels:
        for n in k.inputs:
            readers.setdefault(program.views.get(n, n), []).append(k.index)

    before: list[_Pending] = []
    after: list[_Pending] = []
    extend_to_end: set[Node] = set()
    carried = in_place_carries(program, carries or {}, readers)
    for i, param in carried.items():
        location[sig.outputs[i]] = location[param]
    output_root: dict[Node, int] = {}
    for i, out in enumerate(sig.outputs):
        if i in carried:
            continue
        if out in program.kernel_of and any(o is out for o in program.kernel_of[out].outputs) \
                and out not in output_root:
            output_root[out] = i
            location[out] = Location(Space.OUTPUT, i)

    update_of: dict[Node, list[Node]] = {}
    for var, value in sig.updates:
        update_of.setdefault(value, []).append(var)

    in_place_updates: list[Node] = []
    slots: list[Slot] = []
    slot_of: dict[Node, Slot] = {}
    in_place: list[tuple[Node, Node]] = []
    # Gradients reduced across ranks go to one contiguous region (`allreduce_buckets`).
    fixed = {program.views.get(n, n) for n in (*sig.outputs, *update_of)}
    buckets = find_buckets(program, readers, fixed)
    grouped = {n for b in buckets for m in b.members for n in (m.grad, m.result)}
    for k in kernels:
        for root in k.outputs:
            if root in location or root in grouped:
                continue
            var = in_place_update_target(program, k, update_of.get(root, []), readers,
                                          epilogue_writes_once)
            if var is not None:
                location[root] = Location(Space.VARIABLE, var.name)
                in_place_updates.append(var)
                continue
            reuse = _reusable_slot(program, k, root, slot_of, readers)
            if reuse is not None:
                in_place.append((root, reuse.nodes[-1]))
                reuse.nodes.append(root)
                reuse.end = k.index
                slot_of[root] = reuse
                continue
            slot = Slot([root], _align(root.type.nbytes), k.index, k.index)
            slots.append(slot)
            slot_of[root] = slot

    # Outputs not written directly by their kernel are copied in.
    for i, out in enumerate(sig.outputs):
        if output_root.get(out) == i or i in carried:
            continue
        base = program.views.get(out, out)
        dst = Location(Space.OUTPUT, i)
        if base.op in ("variable", "placeholder", "constant"):
            location.setdefault(base, _source_location(base, sig))
            (before if base.op == "variable" else after).append(_Pending(base, dst))
        else:
            extend_to_end.add(base)
            after.append(_Pending(base, dst))

    # Update values not written in place reach their variable by a final copy. A value that
    # is itself a variable (or a view of one) is first saved to a temporary slot, since that
    # variable may be overwritten by then.
    for var, value in sig.updates:
        if location.get(value) == Location(Space.VARIABLE, var.name):
            continue
        base = program.views.get(value, value)
        dst = Location(Space.VARIABLE, var.name)
        if base.op == "variable":
            location.setdefault(base, _source_location(base, sig))
            temp = Slot([], _align(base.type.nbytes), -1, n_kernels)
            slots.append(temp)
            before.append(_Pending(base, None, temp_dst=temp))
            after.append(_Pending(base, dst, temp_src=temp))
        else:
            if base.op in ("placeholder", "constant"):
                location.setdefault(base, _source_location(base, sig))
            else:
                extend_to_end.add(base)
            after.append(_Pending(base, dst))

    # Live intervals: a slot lives until its last reader.
    for slot in slots:
        for n in slot.nodes:
            last = max(readers.get(n, [slot.start]))
            if n in extend_to_end:
                last = n_kernels
            slot.end = max(slot.end, last)

    regions = _bucket_regions(buckets, readers, n_kernels)
    slots += regions
    arena = _assign_offsets(slots)
    for slot in slots:
        for n in slot.nodes:
            location[n] = Location(Space.ARENA, slot.offset)
    if regions:
        send, recv, requests = regions
        for i, bucket in enumerate(buckets):
            bucket.send, bucket.recv = send.offset + bucket.offset, recv.offset + bucket.offset
            bucket.request = requests.offset + 8 * i
            for m in bucket.members:
                location[m.grad] = Location(Space.ARENA, send.offset + m.offset)
                location[m.result] = Location(Space.ARENA, recv.offset + m.offset)

    copies_before = [c.resolve(location) for c in before]
    copies_after = [c.resolve(location) for c in after]
    naive = sum(_align(n.type.nbytes) for s in slots for n in s.nodes) + sum(
        s.nbytes for s in slots if not s.nodes)
    return MemoryPlan(program, location, slots, copies_before, copies_after, arena,
                      lower_bound(slots), naive, in_place, in_place_updates, sorted(carried),
                      buckets)


def _bucket_regions(buckets: list[Bucket], readers: dict[Node, list[int]], n_kernels: int
                    ) -> list[Slot]:
    """The send and recv regions of `buckets` and their request handles (8 bytes each):
    live from the first gradient's kernel until the last reader (the wait, for send)."""
    if not buckets:
        return []
    size = region_bytes(buckets)
    members = [m for b in buckets for m in b.members]
    first = min(m.producer for m in members)
    last_wait = max(b.needed for b in buckets)
    send_end = max([last_wait, *(i for m in members for i in readers.get(m.grad, []))])
    recv_end = max([last_wait, *(i for m in members for i in readers.get(m.result, []))])
    return [Slot([], size, first, send_end), Slot([], size, first, recv_end),
            Slot([], _align(8 * len(buckets)), 0, n_kernels)]


@dataclass
class _Pending:
    """A copy whose arena locations are known only after offsets are assigned."""

    src: Node
    dst: Location | None
    temp_src: Slot | None = None
    temp_dst: Slot | None = None

    def resolve(self, location: dict[Node, Location]) -> Copy:
        src = (Location(Space.ARENA, self.temp_src.offset) if self.temp_src is not None
               else location[self.src])
        dst = (Location(Space.ARENA, self.temp_dst.offset) if self.temp_dst is not None
               else self.dst)
        assert dst is not None
        return Copy(self.src, src, dst, self.src.type.nbytes)


def _source_location(node: Node, sig: Signature) -> Location:
    if node.op == "placeholder":
        return Location(Space.INPUT, next(i for i, n in enumerate(sig.inputs) if n is node))
    if node.op == "variable":
        return Location(Space.VARIABLE, node.name)
    return Location(Space.CONSTANT, node.name)


def _reusable_slot(program: FusedProgram, k: Kernel, root: Node, slot_of: dict[Node, Slot],
                   readers: dict[Node, list[int]]) -> Slot | None:
    """A slot of an input of `k` that output `root` can take over (in-place)."""
    size = _align(root.type.nbytes)
    for n in k.inputs:
        if n not in slot_of or n in program.views:
            continue
        slot = slot_of[n]
        if slot.nbytes != size or slot.nodes[-1] is not n:
            continue
        # Element i of the output must land exactly on element i of the input, or writing
        # it would clobber input elements not read yet.
        if n.dtype.itemsize != root.dtype.itemsize or n.shape != root.shape:
            continue
        if max(readers.get(n, [k.index])) != k.index:
            continue
        if any(program.views.get(v) is n for v in program.views):
            continue
        if program.reads_at_root_index(k, n) or overwrites(program, k, n):
            return slot
    return None


def _assign_offsets(slots: list[Slot]) -> int:
    """Greedy by size, best fit; returns the arena size."""
    placed: list[Slot] = []
    top = 0
    for slot in sorted(slots, key=lambda s: (-s.nbytes, s.start)):
        busy = sorted((p for p in placed if p.start <= slot.end and slot.start <= p.end),
                      key=lambda p: p.offset)
        best: int | None = None
        best_gap: int | None = None
        cursor = 0
        for p in busy:
            gap = p.offset - cursor
            if gap >= slot.nbytes and (best_gap is None or gap < best_gap):
                best, best_gap = cursor, gap
            cursor = max(cursor, p.offset + p.nbytes)
        slot.offset = best if best is not None else cursor
        placed.append(slot)
        top = max(top, slot.offset + slot.nbytes)
    return top


def lower_bound(slots: list[Slot]) -> int:
    """The largest total size of slots live at the same kernel index."""
    events = sorted({s.start for s in slots} | {s.end for s in slots})
    best = 0
    for t in events:
        best = max(best, sum(s.nbytes for s in slots if s.start <= t <= s.end))
    return best


def check_no_overlap(plan: MemoryPlan) -> None:
    """Raise AssertionError if two slots live at the same time share arena bytes."""
    slots = plan.slots
    for i, a in enumerate(slots):
        for b in slots[i + 1:]:
            if a.start <= b.end and b.start <= a.end:
                if a.offset < b.offset + b.nbytes and b.offset < a.offset + a.nbytes:
                    raise AssertionError(
                        f"slots overlap: {[n.name for n in a.nodes]} [{a.offset},"
                        f"{a.offset + a.nbytes}) live {a.start}..{a.end} and "
                        f"{[n.name for n in b.nodes]} [{b.offset},{b.offset + b.nbytes}) "
                        f"live {b.start}..{b.end}")
