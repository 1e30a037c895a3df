"""`gc.freeze(graph)`: weights become constants, for serving (as `torch.jit.freeze`).

    served = gc.freeze(g, signatures=["predict"])       # a new Graph; g is unchanged
    f = gc.compile(served, signature="predict")

A compiled program must read a variable afresh at every call: training steps update it in
place, and users assign or rebind it between calls. So code generation treats a variable's
array as unknown data. A constant is known when the program is compiled, which lets the
compiler do work once that it otherwise repeats per call: a matmul's constant B is stored in
the GEMM's panels (`codegen/gemm/prepack.py`), a convolution's filters in its kernel's
layout or Winograd domain (`codegen/conv/prepack.py`, `passes/winograd.py`), and constant
folding runs through the weights' transposes and reshapes.

`freeze` turns every trainable floating-point variable (a weight: what an optimizer would
train) that the kept signatures do not update into a constant holding a copy of its current
value. The others stay variables and share their arrays with `graph`: those a kept
signature updates (a KV cache, a running mean), so a decode step keeps writing its cache,
non-trainable ones, which are state set between calls (an optimizer's learning rate, which
a schedule assigns), and integer ones (a position or step counter). `keep` names more
variables to leave alone. With `signatures`, the new graph holds only what those
signatures compute. The copy is a snapshot: later training or assignment of `graph`'s
variables does not reach the frozen graph; freeze again after changing weights. Nodes keep
their names (``served[node.name]`` is a node's counterpart) and locations, and the kept
signatures are carried over.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np

from graphc.errors import GraphcError, GraphNameError
from graphc.ir import Attrs, Graph, Node, Signature

from .rewrite import Pending, Rebuilder, live_nodes

__all__ = ["freeze", "frozen_variables", "weights"]


def freeze(graph: Graph, *, signatures: Sequence[str] | None = None,
           keep: Iterable[str] = ()) -> Graph:
    """A new graph in which the trainable float variables that no kept signature updates,
    except those named in `keep`, are constants holding a copy of their current values
    (module docstring). `signatures` limits the new graph to those signatures and the nodes
    they need (default: all of `graph`'s signatures and nodes). Raises GraphNameError for
    an unknown signature or `keep` name, GraphcError for a `keep` name that is not a
    variable or a string passed where a list of names is expected."""
    chosen, needed, frozen = _plan(graph, signatures, keep)

    def visit(p: Pending, rb: Rebuilder) -> Node:
        if p.op == "variable" and p.name in frozen:
            assert p.value is not None
            value = np.array(p.value, order="C", copy=True)
            value.flags.writeable = False
            return rb.keep(replace(p, op="constant", attrs=Attrs(), value=value))
        return rb.keep(p)

    rb = Rebuilder(graph, visit)
    rb.run(None if needed is None else (n for n in graph.nodes if n in needed))
    out, m = rb.graph, rb.mapping
    out.signatures = {sig.name: Signature(sig.name, tuple(m[n] for n in sig.inputs),
                                          tuple(m[n] for n in sig.outputs),
                                          tuple((m[v], m[u]) for v, u in sig.updates))
                      for sig in chosen}
    return out


def frozen_variables(graph: Graph, *, signatures: Sequence[str] | None = None,
                     keep: Iterable[str] = ()) -> list[str]:
    """The names of the variables `freeze` turns into constants (with `signatures`, those
    the signatures read), in graph order."""
    frozen = _plan(graph, signatures, keep)[2]
    return [n.name for n in graph.nodes if n.name in frozen]


def weights(graph: Graph) -> list[Node]:
    """The variables an optimizer would train (trainable and floating point, as
    `Optimizer.minimize` picks them by default): what `freeze` may fix."""
    return [v for v in graph.trainable_variables if v.dtype.is_float]


def _plan(graph: Graph, signatures: Sequence[str] | None, keep: Iterable[str]
          ) -> tuple[list[Signature], set[Node] | None, set[str]]:
    """(the kept signatures, the nodes they need (None: all), the names to freeze)."""
    chosen = _signatures(graph, signatures)
    if isinstance(keep, str):
        raise GraphcError(f"freeze: keep must be a list of names, got the string {keep!r} "
                          f"(write [{keep!r}])")
    kept: set[str] = set()
    for name in keep:
        if name not in graph:
            raise GraphNameError(f"freeze: keep names {name!r}, which is no node of graph "
                                 f"{graph.name!r}")
        if graph[name].op != "variable":
            raise GraphcError(f"freeze: keep names %{name}, a {graph[name].op}, not a "
                              "variable")
        kept.add(name)
    updated = {var.name for sig in chosen for var, _ in sig.updates}
    needed = None if signatures is None else set().union(
        *(live_nodes(graph, sig) for sig in chosen))
    frozen = {v.name for v in weights(graph)
              if v.name not in updated and v.name not in kept
              and (needed is None or v in needed)}
    return chosen, needed, frozen


def _signatures(graph: Graph, names: Sequence[str] | None) -> list[Signature]:
    if names is None:
        return list(graph.signatures.values())
    if isinstance(names, str):
        raise GraphcError(f"freeze: signatures must be a list of names, got the string "
                          f"{names!r} (write [{names!r}])")
    missing = [n for n in names if n not in graph.signatures]
    if missing:
        raise GraphNameError(f"freeze: graph {graph.name!r} has no signature "
                             f"{', '.join(map(repr, missing))}; it has "
                             f"{sorted(graph.signatures) or 'none'}")
    return [graph.signatures[n] for n in names]
