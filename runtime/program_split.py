"""Cutting a program's module into parts that LLVM compiles at the same time.

LLVM optimizes and emits one module on one thread, and that is most of a cold compile
(an MLP training step: ~490 of ~650 ms). A program's kernels are independent functions
that its entry point calls one after another, so `split_program` moves whole kernels into
part modules, balanced by the size of their text, and `runtime.parallel_llvm` compiles the
main module and the parts on its threads (`part_count`: rounds of one module per thread,
more rounds for a bigger program); the engine loads all their objects and
resolves the calls between them (as it does for the shared GEMM functions of
`runtime.kernel_library`). Splitting changes no kernel's code: a kernel that moves takes
with it every internal function it reaches (its parallel tasks, loop bodies, inlined
vector math, duplicated when two parts need them) and the private constants it reads.

A kernel moves only if it is self-contained that way: it is called by the entry point and
by nothing else, and reaches no global variable but private or internal constants (a
profiling counter or the communicator slot is state the whole program shares). A moved
kernel keeps its name, as a `hidden` definition in its part and a `hidden` declaration in
the main module.
"""

from __future__ import annotations

from dataclasses import dataclass

from graphc.runtime.ir_text import (
    Definition,
    declarations,
    definitions,
    global_variables,
    header,
    metadata_nodes,
    references,
    renumbered_metadata,
)

# About this much module text per part, in rounds of one part per worker: LLVM compiles
# smaller modules faster per byte when two run at once (ResNet-18's 870 KB at 2 threads, in
# 8 parts rather than 2: 12 % less wall time), while a round with fewer parts than workers
# leaves one idle (an MLP step's 190 KB in 3 parts: 20 % more than in 2 or 4).
PART_BYTES = 110_000
MAX_ROUNDS = 4


def part_count(text_bytes: int, workers: int) -> int:
    """At most how many modules a program of `text_bytes` is cut into for `workers`
    threads: 1 for one worker, else a multiple of `workers` up to MAX_ROUNDS of them
    (fewer come out when fewer kernels can move)."""
    if workers <= 1:
        return 1
    rounds = round(text_bytes / (PART_BYTES * workers))
    return workers * max(1, min(MAX_ROUNDS, rounds))


@dataclass(frozen=True)
class ProgramSplit:
    """The main module (the entry point and the kernels that stayed) and the parts."""

    main: str
    parts: tuple[str, ...]


@dataclass(frozen=True)
class _Unit:
    """A movable kernel: its definition, the internal functions and globals it reaches."""

    kernel: Definition
    functions: tuple[Definition, ...]  # the kernel first
    globals: tuple[str, ...]
    weight: int


def split_program(text: str, parts: int) -> ProgramSplit:
    """`text` cut into at most `parts` modules of about equal text size, the main one
    first; `parts <= 1`, or nothing movable, gives the text unchanged and no parts."""
    if parts <= 1:
        return ProgramSplit(text, ())
    defined = {d.name: d for d in definitions(text)}
    refs = {name: references(text[d.start:d.end]) - {name} for name, d in defined.items()}
    variables = global_variables(text)
    # What each global's initializer points to (functions or other globals).
    pointed = {name: references(line) - {name} for name, line in variables.items()}
    units = _movable_units(defined, refs, variables, pointed)
    bins: list[list[_Unit]] = [[] for _ in range(parts)]
    weights = [max(0, len(text) - sum(u.weight for u in units))] + [0] * (parts - 1)
    for unit in sorted(units, key=lambda u: -u.weight):  # largest first into the lightest
        i = min(range(parts), key=weights.__getitem__)
        bins[i].append(unit)
        weights[i] += unit.weight
    moved = [b for b in bins[1:] if b]
    if not moved:
        return ProgramSplit(text, ())
    declared = declarations(text)
    metadata = metadata_nodes(text)
    part_texts = tuple(_part_text(text, b, declared, variables, metadata) for b in moved)
    return ProgramSplit(_main_text(text, [u for b in moved for u in b], defined, refs,
                                   pointed), part_texts)


def _movable_units(defined: dict[str, Definition], refs: dict[str, set[str]],
                   variables: dict[str, str], pointed: dict[str, set[str]]) -> list[_Unit]:
    """The kernels that can move (see the module doc), with what they take along."""
    roots = [d for d in defined.values() if not d.internal]
    callers: dict[str, int] = {}
    for name in defined:
        for callee in refs[name]:
            callers[callee] = callers.get(callee, 0) + 1
    for targets in pointed.values():  # a function a global points to stays
        for callee in targets:
            callers[callee] = callers.get(callee, 0) + 2
    units = []
    for root in roots:
        for name in sorted(refs[root.name]):
            d = defined.get(name)
            if d is None or not d.internal or callers.get(name) != 1:
                continue
            unit = _closure(d, defined, refs, variables, pointed)
            if unit is not None:
                units.append(unit)
    return units


def _closure(kernel: Definition, defined: dict[str, Definition], refs: dict[str, set[str]],
             variables: dict[str, str], pointed: dict[str, set[str]]) -> _Unit | None:
    """`kernel` with the internal functions and constants it reaches; None if it reaches
    a non-internal function, mutable state or itself (recursion: never generated)."""
    functions = [kernel]
    names = {kernel.name}
    used: set[str] = set()
    queue = [kernel.name]
    while queue:
        for ref in sorted(refs[queue.pop()]):
            if ref in defined:
                d = defined[ref]
                if ref == kernel.name or not d.internal:
                    return None
                if ref not in names:
                    names.add(ref)
                    functions.append(d)
                    queue.append(ref)
            elif ref in variables:
                words = variables[ref].split(" = ", 1)[-1].split(" ", 3)
                if words[0] not in ("private", "internal") or "constant" not in words[1:3]:
                    return None  # state of the whole program
                if pointed[ref]:
                    return None  # a constant pointing to a function or global: not copied
                used.add(ref)
    weight = sum(d.end - d.start for d in functions)
    return _Unit(kernel, tuple(functions), tuple(sorted(used)), weight)


def _part_text(text: str, units: list[_Unit], declared: dict[str, str],
               variables: dict[str, str], metadata: dict[int, str]) -> str:
    """A part module: the units' functions (the kernels made `hidden`), one copy of each
    helper and constant, the declarations they call and their metadata renumbered."""
    seen: set[str] = set()
    bodies: list[str] = []
    globals_: list[str] = []
    for unit in units:
        for d in unit.functions:
            if d.name in seen:
                continue
            seen.add(d.name)
            body = text[d.start + 1:d.end]
            if d is unit.kernel:
                body = "define hidden " + body[len("define "):].split(" ", 1)[1]
            bodies.append(body + "\n")
        globals_ += [variables[g] for g in unit.globals if g not in seen]
        seen.update(unit.globals)
    code = "".join(bodies)
    calls = sorted(n for n in references(code) if n in declared and n not in seen)
    renumbered = renumbered_metadata(code, metadata)
    assert renumbered is not None, "the main module's metadata defines every node it uses"
    code, nodes = renumbered
    return (header(text) + "".join(line + "\n" for line in globals_)
            + "".join(declared[n] + "\n" for n in calls) + "\n" + code + nodes)


def _main_text(text: str, moved: list[_Unit], defined: dict[str, Definition],
               refs: dict[str, set[str]], pointed: dict[str, set[str]]) -> str:
    """`text` with each moved kernel declared instead of defined, and without the internal
    functions only the moved kernels reached."""
    moved_names = {u.kernel.name for u in moved}
    keep: set[str] = set()
    # The roots: what is not internal, and what globals point to.
    queue = [n for n, d in defined.items() if not d.internal]
    queue += [r for targets in pointed.values() for r in targets if r in defined]
    while queue:  # what the roots reach, not through a moved kernel
        name = queue.pop()
        if name in keep:
            continue
        keep.add(name)
        queue += [r for r in refs[name] if r in defined and r not in moved_names]
    pieces: list[str] = []
    done = 0
    for d in sorted(defined.values(), key=lambda d: d.start):
        if d.name in keep:
            continue
        pieces.append(text[done:d.start])
        if d.name in moved_names:
            signature = d.head.split(" ", 1)[1]  # without the linkage
            pieces.append(f"\ndeclare hidden {signature}")
        done = d.end
    pieces.append(text[done:])
    return "".join(pieces)
