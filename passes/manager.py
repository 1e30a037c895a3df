"""The pass manager: run a pipeline of named passes on a graph and one signature.

A pipeline is an ordered list of pass names that prints and parses as text
(``"simplify,constant_fold,cse,prune"``); `DEFAULT_PIPELINE` is the one default. The manager
runs it to a fixed point, so that running the pipeline again on its result changes
nothing: a later pass can give an earlier one work (constant_fold turns ``relu(-1)`` into
0, then simplify's ``x + 0 -> x`` applies), so after the first sweep the manager goes on
cycling through the pipeline, running a pass again only when a pass in its
`PassDef.enabled_by` changed the graph since it last ran, until a whole cycle runs nothing
(at most `CompileOptions.max_iterations` sweeps). Between
passes, one place (`_after_pass`) does everything debugging needs, driven by
`CompileOptions`:

- verification (`verify_each`): `graphc.verify.verify` plus the pass contract (same graph
  name, variables bound to the same arrays);
- statistics: nodes before/after, wall time, and which rewrite rule fired how often and
  where it is defined (``module:function``), gathered in a `PipelineReport`;
- printing the text IR after a named pass or after all passes, to a stream or a callback.

Any failure inside a pass becomes a `CompileError` starting with ``pass '<name>' failed:``.

Entry points for the CLI: `run_pipeline`, `select_signature`, `Pipeline.parse`,
`PipelineReport.format_table`, `format_pass_list`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import NamedTuple

from graphc.errors import CompileError, GraphcError, GraphNameError, GraphStructureError
from graphc.io.textir import format_graph
from graphc.ir import SOURCE_OPS, Graph, Signature
from graphc.options import CompileOptions
from graphc.verify import verify

from . import PASSES
from .rewrite import PassContext
from .simplify import RULES as SIMPLIFY_RULES

__all__ = [
    "DEFAULT_PIPELINE",
    "PassStats",
    "Pipeline",
    "PipelineReport",
    "PipelineResult",
    "RuleHits",
    "format_pass_list",
    "run_pipeline",
    "select_signature",
]

# qdq first (quantize -> dequantize pairs around matmuls and convs folded into int8
# kernels), lower_control (loops unrolled or kept), loop_hoist and loop_sink
# (carry-independent work before the kept loops, accumulated products after them),
# loop_unroll (k steps per trip where asked), then simplify (its rewrites expose constants:
# 1 * c becomes c), fold what is constant, put int32 matmuls of 8-bit values with weights
# now constant (imported MatMulInteger) on the int8 GEMM, rewrite convolutions whose
# weights are now constant as Winograd GEMMs, merge duplicates (folding makes equal
# constants), and prune last, after everything made dead.
DEFAULT_PIPELINE = ("qdq,lower_control,loop_hoist,loop_sink,loop_unroll,simplify,"
                    "constant_fold,integer_matmul,attention,winograd,cse,prune")


@dataclass(frozen=True)
class Pipeline:
    """An ordered list of registered pass names; ``str()`` gives the text `parse` reads."""

    passes: tuple[str, ...]

    @classmethod
    def parse(cls, text: str | None) -> Pipeline:
        """Parse ``"a,b,c"`` (spaces ignored; "" is the empty pipeline; None the default)."""
        if text is None:
            text = DEFAULT_PIPELINE
        names = tuple(part.strip() for part in text.split(",")) if text.strip() else ()
        for name in names:
            if name not in PASSES:
                known = ", ".join(sorted(PASSES))
                shown = "an empty pass name" if not name else f"unknown pass {name!r}"
                raise GraphcError(f"{shown} in pipeline {text!r} (known passes: {known})")
        return cls(names)

    def __str__(self) -> str:
        return ",".join(self.passes)


@dataclass(frozen=True)
class RuleHits:
    """How often one rewrite rule fired during one pass, and where it is defined."""

    rule: str
    hits: int
    where: str


@dataclass(frozen=True)
class PassStats:
    """What one run of a pass did: node counts, wall time, its own sweeps (simplify
    iterates to a fixed point), rule hits, and which sweep of the pipeline it ran in."""

    name: str
    nodes_before: int
    nodes_after: int
    seconds: float
    iterations: int
    rules: tuple[RuleHits, ...]
    sweep: int = 1

    @property
    def label(self) -> str:
        """The pass's name, with ``#k`` for a run in the k-th sweep of the pipeline."""
        return self.name if self.sweep == 1 else f"{self.name} #{self.sweep}"


@dataclass
class PipelineReport:
    """Per-pass statistics of one `run_pipeline` call, in the order the passes ran."""

    pipeline: Pipeline
    passes: list[PassStats] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.passes)

    def format_table(self) -> str:
        """A fixed-width table: one row per pass run (a pipeline sweep after the first is
        marked ``name #2``), a total row, then the rule hits."""
        rows = [("pass", "before", "after", "delta", "ms", "sweeps")]
        for p in self.passes:
            rows.append((p.label, str(p.nodes_before), str(p.nodes_after),
                         f"{p.nodes_after - p.nodes_before:+d}", f"{p.seconds * 1e3:.2f}",
                         str(p.iterations)))
        if self.passes:
            first, last = self.passes[0], self.passes[-1]
            rows.append(("total", str(first.nodes_before), str(last.nodes_after),
                         f"{last.nodes_after - first.nodes_before:+d}",
                         f"{self.seconds * 1e3:.2f}", ""))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                           for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows]
        hits = [(p.label, r) for p in self.passes for r in p.rules]
        if hits:
            lines.append("rule hits:")
            pass_w = max(len(name) for name, _ in hits)
            rule_w = max(len(r.rule) for _, r in hits)
            hits_w = max(len(str(r.hits)) for _, r in hits)
            lines.extend(f"  {name.ljust(pass_w)}  {r.rule.ljust(rule_w)}  "
                         f"{str(r.hits).rjust(hits_w)}  {r.where}" for name, r in hits)
        return "\n".join(lines) + "\n"


class PipelineResult(NamedTuple):
    """The rewritten graph, its (only) signature, and the statistics."""

    graph: Graph
    signature: Signature
    report: PipelineReport


def run_pipeline(
    graph: Graph,
    signature: Signature | str | None = None,
    options: CompileOptions | None = None,
) -> PipelineResult:
    """Run `options.pipeline` (default `DEFAULT_PIPELINE`) on `graph` for `signature`.

    `signature` is a Signature of `graph`, the name of one of its signatures, or None
    (see `select_signature`). Each pass returns a new graph; the input graph is never
    changed, and the result's variables are the input's arrays. With an empty pipeline the
    input graph itself is returned. With `options.verify_each` the input graph is verified
    first (a `VerifyError` there is not any pass's fault).
    """
    options = options or CompileOptions()
    pipeline = Pipeline.parse(options.pipeline)
    _check_print_after(options, pipeline)
    sig = signature if isinstance(signature, Signature) else select_signature(graph, signature)
    for node in (*sig.inputs, *sig.outputs, *(n for pair in sig.updates for n in pair)):
        if node.graph is not graph:
            raise GraphStructureError(f"signature {sig.name!r}: %{node.name} is not a node of "
                                      f"graph {graph.name!r}")
    if options.verify_each:
        verify(graph)
    report = PipelineReport(pipeline)
    count = len(pipeline.passes)
    # Per pass of the pipeline: the passes that changed the graph since it last ran (None:
    # it has not run yet).
    changed_since: dict[str, set[str] | None] = dict.fromkeys(pipeline.passes)
    for sweep in range(options.max_iterations):
        ran = False
        for index, name in enumerate(pipeline.passes):
            since = changed_since[name]
            enablers = PASSES[name].enabled_by
            if since is not None and not (since if enablers is None else since & enablers):
                continue
            ran = True
            ctx = PassContext(options)
            start = time.perf_counter()
            try:
                new_graph, new_sig = PASSES[name].run(graph, sig, ctx)
            except Exception as exc:
                raise _pass_error(name, "", exc) from exc
            seconds = time.perf_counter() - start
            stats = PassStats(name, len(graph.nodes), len(new_graph.nodes), seconds,
                              ctx.iterations, _rule_hits(ctx), sweep + 1)
            report.passes.append(stats)
            # Every rewrite counts a rule hit; a pass without rules (prune) only removes.
            changed = bool(ctx.hits) or stats.nodes_after != stats.nodes_before
            _after_pass(graph, new_graph, new_sig, stats, index, count, options, changed)
            graph, sig = new_graph, new_sig
            changed_since[name] = set()
            if changed:
                for other in pipeline.passes:
                    if other != name and changed_since[other] is not None:
                        changed_since[other].add(name)
        if not ran:
            break
    if options.time_passes:
        (options.print_stream or sys.stderr).write(report.format_table())
    return PipelineResult(graph, sig, report)


def _rule_hits(ctx: PassContext) -> tuple[RuleHits, ...]:
    """The rules that fired in one pass, most hits first."""
    ordered = sorted(ctx.hits.items(), key=lambda item: (-item[1], item[0]))
    return tuple(RuleHits(rule, n, ctx.where[rule]) for rule, n in ordered)


def select_signature(graph: Graph, name: str | None = None) -> Signature:
    """The signature called `name`; with None, the graph's only signature, or else one
    named "default": every placeholder as input, every non-source sink as output."""
    if name is not None:
        if name not in graph.signatures:
            known = ", ".join(sorted(graph.signatures)) or "none"
            raise GraphNameError(f"graph {graph.name!r} has no signature {name!r} "
                                 f"(signatures: {known})")
        return graph.signatures[name]
    if len(graph.signatures) == 1:
        return next(iter(graph.signatures.values()))
    users = graph.users()
    sinks = tuple(n for n in graph.nodes if not users[n] and n.op not in SOURCE_OPS)
    return Signature("default", tuple(graph.placeholders), sinks)


def format_pass_list() -> str:
    """For ``graphc passes --list``: every pass with its description, the default
    pipeline, and simplify's rules with their equations and definitions."""
    width = max(len(name) for name in PASSES)
    lines = [f"{name.ljust(width)}  {p.doc}" for name, p in PASSES.items()]
    lines.append(f"\ndefault pipeline: {DEFAULT_PIPELINE}\n\nsimplify rules:")
    rule_w = max(len(r.__name__) for r in SIMPLIFY_RULES)
    for rule in SIMPLIFY_RULES:
        equation = (rule.__doc__ or "").strip().splitlines()[0]
        lines.append(f"  {rule.__name__.ljust(rule_w)}  {equation}")
    return "\n".join(lines) + "\n"


# --- between passes -------------------------------------------------------------------------

def _after_pass(before: Graph, graph: Graph, sig: Signature, stats: PassStats, index: int,
                count: int, options: CompileOptions, changed: bool) -> None:
    """The one hook between passes: verify, then print if asked. A pass that changed
    nothing returned a copy of its (verified) input: only the contract is checked."""
    if options.verify_each:
        try:
            if changed:
                verify(graph)
            _check_contract(before, graph)
        except GraphcError as exc:
            raise _pass_error(stats.name, "its result does not verify: ", exc) from exc
    if options.print_after_all or stats.name in options.print_after:
        if options.print_callback is not None:
            options.print_callback(stats.name, graph, sig)
        else:
            header = (f"# ---- after {stats.label} (pass {index + 1} of {count}: "
                      f"{stats.nodes_before} -> {stats.nodes_after} nodes) ----\n")
            (options.print_stream or sys.stderr).write(header + format_graph(graph))


def _check_contract(before: Graph, after: Graph) -> None:
    if after is before:
        raise GraphStructureError("the pass returned its input graph instead of a new one")
    if after.name != before.name:
        raise GraphStructureError(f"graph renamed from {before.name!r} to {after.name!r}")
    for node in after.variable_nodes:
        if node.name not in before.variables:
            raise GraphStructureError(f"variable %{node.name} is not in the input graph")
        if after.variables[node.name] is not before.variables[node.name]:
            raise GraphStructureError(f"variable %{node.name} is bound to a new array; it "
                                      "must stay bound to the input graph's array")


def _pass_error(name: str, what: str, exc: Exception) -> CompileError:
    """`exc` as a CompileError prefixed with the pass name, keeping the user's line."""
    if isinstance(exc, GraphcError):
        detail = f"{exc.op}: {exc.message}" if exc.op else exc.message
        return CompileError(f"pass {name!r} failed: {what}{detail}", loc=exc.loc)
    return CompileError(f"pass {name!r} failed: {what}{type(exc).__name__}: {exc}")


def _check_print_after(options: CompileOptions, pipeline: Pipeline) -> None:
    for name in options.print_after:
        if name not in PASSES:
            raise GraphcError(f"print_after: unknown pass {name!r} "
                              f"(known passes: {', '.join(sorted(PASSES))})")
        if name not in pipeline.passes:
            raise GraphcError(f"print_after: pass {name!r} is not in the pipeline "
                              f"{str(pipeline)!r}")

