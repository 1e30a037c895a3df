"""Control flow: `scan`, `cond`, `while_loop` (region ops owning body graphs) and `get`.

A region op's node owns its bodies (`Node.regions`) and has a `TupleType` of results;
builders return `get` nodes, one per result. Operands are laid out as JAX lays out its
control-flow primitives, consts first:

    scan(consts..., init..., xs...)     {num_consts, num_carry, length, reverse, unroll}
        body(consts..., carry..., x_t...) -> (carry'..., y_t...)
        results: carry_T..., ys... (ys stacked along a new leading axis of `length`)
    cond(pred, operands...)             branches true(operands...), false(operands...)
        results: the taken branch's
    while_loop(consts..., init...)      {num_consts}
        cond_body(consts..., carry...) -> bool[]; body(consts..., carry...) -> carry'...
        results: the carry when cond_body is false

Consts are the outer values the bodies captured when they were traced (`ops.trace`); for
cond every branch gets params for every operand, each branch's captures included.

Gradients are in `control_grad.py` (scan: a reverse scan over residuals saved per step;
cond: a cond of the branches' VJPs; while_loop: not differentiable). Compiled code runs a
scan as a native loop over its body compiled once (`codegen/loop.py`) unless it is asked
to unroll (fully, or k steps per trip), a while_loop as a native loop over its cond and
body (`codegen/while_loop.py`), and a cond as a call of the taken branch's program
(`codegen/branch.py`) or, for tiny pointwise branches, a select (`passes/lower_control.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from graphc.builder import apply
from graphc.errors import AttrError, DTypeError, GraphcError, ShapeError
from graphc.ir import Attrs, DType, Node, Region, TensorType, TupleType, ValueType
from graphc.ir.attrs import AttrSpec, Kind
from graphc.ir.opdef import Fusion, OpDef, RegionRules, RunBody
from graphc.ops import control_grad as _grad
from graphc.ops.common import fail
from graphc.ops.trace import TreeDef, flatten, leaf_nodes, outer_graph, trace, unflatten

__all__ = ["cond", "scan", "while_loop"]

OPS: list[OpDef] = []


def _region_only(*args: Any) -> Any:
    raise GraphcError("a region op is typed and evaluated with its regions "
                      "(OpDef.infer_type, OpDef.region.evaluate)")


def _types(types: Sequence[ValueType], what: str) -> list[TensorType]:
    for i, t in enumerate(types):
        if not isinstance(t, TensorType):
            raise GraphcError(f"{what} {i} is {t}, not a tensor")
    return list(types)  # type: ignore[arg-type]


def _match(expected: Sequence[ValueType], got: Sequence[ValueType], what: str,
           against: str) -> None:
    """`got` (the body's) must equal `expected` (the operands'), one by one."""
    if len(expected) != len(got):
        raise GraphcError(f"{what}: {len(got)} value(s), {against} has {len(expected)}")
    for i, (e, g) in enumerate(zip(expected, got)):
        if e != g:
            raise ShapeError(f"{what} {i}: expected {e} (as {against}), got {g}")


# --- get ------------------------------------------------------------------------------------

def _get_infer(types: Sequence[ValueType], attrs: Attrs) -> TensorType:
    (t,) = types
    if not isinstance(t, TupleType):
        raise GraphcError(f"operand: expected the results of a region op, got {t}")
    index = attrs["index"]
    if not 0 <= index < len(t):
        raise AttrError(f"index {index} is out of range for {len(t)} results {t}")
    return t.elements[index]


def _get_ref(arrays: Sequence[Any], attrs: Attrs) -> np.ndarray:
    return arrays[0][attrs["index"]]  # type: ignore[no-any-return]


GET = OpDef("get", "control", 1, _get_infer, _get_ref, Fusion.CONTROL,
            attrs=(AttrSpec("index", Kind.INT, low=0),),
            doc="result `index` of a region op (scan, cond, while_loop)")
OPS.append(GET)


def _results(node: Node) -> list[Node]:
    assert isinstance(node.type, TupleType)
    return [apply(GET, [node], {"index": i}) for i in range(len(node.type))]


# --- scan -----------------------------------------------------------------------------------

def _scan_split(items: Sequence[Any], attrs: Attrs) -> tuple[list[Any], list[Any], list[Any]]:
    nc, nk = attrs["num_consts"], attrs["num_carry"]
    return list(items[:nc]), list(items[nc:nc + nk]), list(items[nc + nk:])


def _scan_infer(types: Sequence[ValueType], attrs: Attrs, regions: Sequence[Region]
                ) -> TupleType:
    tensors = _types(types, "operand")
    nc, nk, length = attrs["num_consts"], attrs["num_carry"], attrs["length"]
    if nc + nk > len(tensors):
        raise GraphcError(f"num_consts {nc} + num_carry {nk} exceed the {len(tensors)} "
                          "operands")
    consts, init, xs = _scan_split(tensors, attrs)
    for i, x in enumerate(xs):
        if not x.shape or x.shape[0] != length:
            raise ShapeError(f"xs {i}: expected a leading axis of length {length}, got {x}")
    body = regions[0]
    slices = [TensorType(x.shape[1:], x.dtype) for x in xs]
    _match([*consts, *init, *slices], body.param_types, "the body's params",
           "consts, carry and x slices")
    results = _types(body.result_types, "body result")
    if len(results) < nk:
        raise GraphcError(f"the body returns {len(results)} value(s), fewer than the "
                          f"{nk} carried")
    _match(init, results[:nk], "carry (body result)", "the carry init")
    ys = [TensorType((length, *y.shape), y.dtype) for y in results[nk:]]
    return TupleType((*init, *ys))


def _scan_eval(arrays: Sequence[np.ndarray], attrs: Attrs, regions: Sequence[Region],
               run: RunBody) -> list[np.ndarray]:
    consts, carry, xs = _scan_split(arrays, attrs)
    length, nk = attrs["length"], attrs["num_carry"]
    body = regions[0]
    steps = range(length - 1, -1, -1) if attrs["reverse"] else range(length)
    per_step: dict[int, list[np.ndarray]] = {}
    for t in steps:
        out = run(body, [*consts, *carry, *(x[t] for x in xs)])
        carry, per_step[t] = out[:nk], out[nk:]
    ys = []
    for j, y in enumerate(body.results[nk:]):
        assert isinstance(y.type, TensorType)
        stacked = np.empty((length, *y.shape), y.dtype.np)
        for t in range(length):
            stacked[t] = per_step[t][j]
        ys.append(stacked)
    return [*carry, *ys]


SCAN = OpDef(
    "scan", "control", None, _region_only, _region_only, Fusion.CONTROL,
    attrs=(AttrSpec("num_consts", Kind.INT, low=0), AttrSpec("num_carry", Kind.INT, low=0),
           AttrSpec("length", Kind.INT, low=0), AttrSpec("reverse", Kind.BOOL, default=False),
           AttrSpec("unroll", Kind.INT, default=1, low=1),
           AttrSpec("remat", Kind.BOOL, default=False)),
    region=RegionRules(1, _scan_infer, _scan_eval, lambda n, cts, vjp: _grad.scan_grad(
        n, cts, vjp, SCAN, GET)),
    doc="loop with a carry over the leading axis of xs, stacking outputs (JAX's lax.scan)")
OPS.append(SCAN)


def scan(fn: Callable[[Any, Any], tuple[Any, Any]], init: Any, xs: Any = None, *,
         length: int | None = None, reverse: bool = False, unroll: int = 1,
         remat: bool = False, name: str | None = None) -> tuple[Any, Any]:
    """Loop `fn` over the leading axis of `xs`, carrying state (JAX's ``lax.scan``)::

        def scan(fn, init, xs):
            carry, ys = init, []
            for x in xs:                      # reversed(xs) with reverse=True
                carry, y = fn(carry, x)
                ys.append(y)
            return carry, stack(ys)           # ys in the order of xs either way

    `init` and `xs` are pytrees (nodes, tuples, lists, None); `fn(carry, x)` returns
    ``(new carry, y)`` with the carry of `init`'s structure and types (a GraphcError names
    the entry that changed). `fn` is traced once into a body graph; outer nodes it reads are
    passed to the loop as operands. `length` is required when `xs` is None, and must agree
    with the leading axis of every x otherwise. `unroll` >= the length makes compiled code
    unroll the loop fully (one copy of the body per step); 1 < `unroll` < the length runs
    a native loop of length // unroll trips whose body holds `unroll` steps, the remaining
    steps after it (JAX's semantics; the results equal unroll=1's); otherwise it runs
    natively with the body compiled once. `remat=True` (JAX's ``scan(jax.checkpoint(fn))``)
    makes the gradient save only the carry of every step and recompute the body's
    intermediates from it in the backward loop: less memory (one carry per step instead
    of every intermediate the backward reads), one more forward body per step. Returns
    ``(final carry, ys)``, ys stacked along a new leading axis.
    """
    op = "scan"
    init_leaves, init_tree = flatten(init, f"{op}: init")
    xs_leaves, xs_tree = flatten(xs, f"{op}: xs")
    init_nodes, xs_nodes = leaf_nodes(init_leaves), leaf_nodes(xs_leaves)
    for i, x in enumerate(xs_nodes):
        if not x.shape:
            fail(op, ShapeError(f"xs {i} (%{x.name}): expected an array with a leading axis "
                                f"to scan over, got the scalar {x.type}"))
    lengths = {x.shape[0] for x in xs_nodes}
    if length is not None and (isinstance(length, bool) or not isinstance(length, int)
                               or length < 0):
        fail(op, AttrError(f"length must be a non-negative int, got {length!r}"))
    if length is not None:
        lengths.add(length)
    if len(lengths) != 1:
        shown = ", ".join(f"%{x.name} {x.type}" for x in xs_nodes)
        fail(op, ShapeError(f"the leading axes of xs ({shown}) and length={length} disagree"
                            if lengths else "length is required when xs is None"))
    steps = lengths.pop()
    if not isinstance(reverse, bool):
        fail(op, AttrError(f"reverse must be a bool, got {reverse!r}"))
    outer = outer_graph([*init_nodes, *xs_nodes])
    slices = [TensorType(x.shape[1:], x.dtype) for x in xs_nodes]

    def body(carry: Any, x: Any) -> Any:
        out = fn(carry, x)
        if not isinstance(out, tuple) or len(out) != 2:
            fail(op, GraphcError(f"fn must return a pair (carry, y), got {_kind(out)}"))
        return out

    traced = trace(body, [init_tree, xs_tree],
                   [[n.type for n in init_nodes], slices], op, name or "scan_body", outer)
    out_tree = traced.out_tree
    carry_tree = out_tree.children[0]
    if carry_tree != init_tree:
        fail(op, GraphcError(f"fn returned a carry of structure {carry_tree}, init is "
                             f"{init_tree}"))
    num_carry = len(init_nodes)
    _check_carry(init_nodes, traced.region.results[:num_carry], op)
    attrs = {"num_consts": len(traced.captured), "num_carry": num_carry, "length": steps,
             "reverse": reverse, "unroll": unroll, "remat": remat}
    node = apply(SCAN, [*traced.captured, *init_nodes, *xs_nodes], attrs, name=name,
                 regions=[_reorder_scan(traced.region, num_carry, len(xs_nodes))])
    results = _results(node)
    return (unflatten(init_tree, results[:num_carry]),
            unflatten(out_tree.children[1], results[num_carry:]))


def _reorder_scan(region: Region, num_carry: int, num_xs: int) -> Region:
    """Traced params are (carry, x, captured); scan's are (captured, carry, x)."""
    explicit = num_carry + num_xs
    params = (*region.params[explicit:], *region.params[:explicit])
    return Region(region.graph, params, region.results)


def _check_carry(init: Sequence[Node], out: Sequence[Node], op: str) -> None:
    for i, (a, b) in enumerate(zip(init, out)):
        if a.type != b.type:
            fail(op, GraphcError(f"carry {i}: the body changed its type from {a.type} (init "
                                 f"%{a.name}) to {b.type}; a carry must keep its type"))


def _kind(x: Any) -> str:
    return f"a tuple of {len(x)}" if isinstance(x, tuple) else type(x).__name__


# --- cond -----------------------------------------------------------------------------------

def _cond_infer(types: Sequence[ValueType], attrs: Attrs, regions: Sequence[Region]
                ) -> TupleType:
    tensors = _types(types, "operand")
    if not tensors or tensors[0] != TensorType((), DType.bool):
        raise DTypeError(f"pred: expected a bool scalar bool[], got "
                         f"{tensors[0] if tensors else 'nothing'}")
    true, false = regions
    for label, region in (("true", true), ("false", false)):
        _match(tensors[1:], region.param_types, f"{label} branch params", "the operands")
    results = _types(true.result_types, "true branch result")
    _match(results, false.result_types, "false branch result", "the true branch's")
    return TupleType(tuple(results))


def _cond_eval(arrays: Sequence[np.ndarray], attrs: Attrs, regions: Sequence[Region],
               run: RunBody) -> list[np.ndarray]:
    branch = regions[0] if bool(arrays[0]) else regions[1]
    return run(branch, arrays[1:])


COND = OpDef("cond", "control", None, _region_only, _region_only, Fusion.CONTROL,
             region=RegionRules(2, _cond_infer, _cond_eval,
                                lambda n, cts, vjp: _grad.cond_grad(n, cts, vjp, COND, GET)),
             doc="the results of the true or the false branch, by a runtime bool scalar")
OPS.append(COND)


def cond(pred: Any, true_fn: Callable[..., Any], false_fn: Callable[..., Any], *operands: Any,
         name: str | None = None) -> Any:
    """``true_fn(*operands)`` if `pred` (a bool scalar node) else ``false_fn(*operands)``.

    Both functions are traced; they must return pytrees of the same structure and types.
    Only the taken branch runs, in the reference interpreter and in compiled code (where
    branches of a few pointwise ops become a select instead, which cannot fail: see
    `passes/lower_control.py`). Returns that pytree.
    """
    op = "cond"
    p = leaf_nodes([pred])[0]
    if p.type != TensorType((), DType.bool):
        fail(op, DTypeError(f"pred (%{p.name}): expected a bool scalar bool[], got {p.type}"))
    leaves, tree = flatten(list(operands), f"{op}: operands")
    nodes = leaf_nodes(leaves)
    outer = outer_graph([p, *nodes])
    types = [[n.type for n in nodes]]
    branches = [trace(lambda args, f=f: f(*args), [tree], types, op,
                      f"{name or 'cond'}_{label}", outer)
                for f, label in ((true_fn, "true"), (false_fn, "false"))]
    if branches[0].out_tree != branches[1].out_tree:
        fail(op, GraphcError(f"the branches return different structures: true "
                             f"{branches[0].out_tree}, false {branches[1].out_tree}"))
    for i, (a, b) in enumerate(zip(branches[0].region.results, branches[1].region.results)):
        if a.type != b.type:
            fail(op, GraphcError(f"result {i}: the true branch returns {a.type}, the false "
                                 f"branch {b.type}"))
    captured, regions = _share_captures([b.region for b in branches],
                                        [b.captured for b in branches], len(nodes))
    node = apply(COND, [p, *nodes, *captured], name=name, regions=regions)
    return unflatten(branches[0].out_tree, _results(node))


def _share_captures(regions: Sequence[Region], captured: Sequence[Sequence[Node]],
                    explicit: int) -> tuple[list[Node], list[Region]]:
    """Bodies that bind the same operands: each gets params for every body's captures
    (the union, first seen first), in one order."""
    union: list[Node] = []
    for nodes in captured:
        union.extend(n for n in nodes if not any(n is u for u in union))
    shared = []
    for region, nodes in zip(regions, captured):
        own = dict(zip(nodes, region.params[explicit:]))
        params = list(region.params[:explicit])
        for n in union:
            if n in own:
                params.append(own[n])
            else:  # a param this body does not read
                params.append(region.graph.add_node(
                    "placeholder", (), {}, n.type, name=region.graph.unique_name(n.name),
                    loc=n.loc))
        shared.append(Region(region.graph, tuple(params), region.results))
    return union, shared


# --- while_loop -----------------------------------------------------------------------------

def _while_infer(types: Sequence[ValueType], attrs: Attrs, regions: Sequence[Region]
                 ) -> TupleType:
    tensors = _types(types, "operand")
    nc = attrs["num_consts"]
    if nc > len(tensors):
        raise GraphcError(f"num_consts {nc} exceeds the {len(tensors)} operands")
    test, body = regions
    for label, region in (("cond_fn", test), ("body_fn", body)):
        _match(tensors, region.param_types, f"{label} params", "consts and carry")
    _match([TensorType((), DType.bool)], test.result_types, "cond_fn result",
           "a loop condition")
    _match(tensors[nc:], body.result_types, "carry (body_fn result)", "the carry init")
    return TupleType(tuple(tensors[nc:]))


def _while_eval(arrays: Sequence[np.ndarray], attrs: Attrs, regions: Sequence[Region],
                run: RunBody) -> list[np.ndarray]:
    nc = attrs["num_consts"]
    consts, carry = list(arrays[:nc]), list(arrays[nc:])
    test, body = regions
    while bool(run(test, [*consts, *carry])[0]):
        carry = run(body, [*consts, *carry])
    return carry


WHILE_LOOP = OpDef(
    "while_loop", "control", None, _region_only, _region_only, Fusion.CONTROL,
    attrs=(AttrSpec("num_consts", Kind.INT, low=0),),
    region=RegionRules(2, _while_infer, _while_eval, None,
                       not_differentiable="while_loop is not differentiable (its trip count "
                       "depends on data); use scan with a fixed length"),
    doc="loop body_fn on a carry while cond_fn holds (forward only)")
OPS.append(WHILE_LOOP)


def while_loop(cond_fn: Callable[[Any], Any], body_fn: Callable[[Any], Any], init: Any, *,
               name: str | None = None) -> Any:
    """``while cond_fn(carry): carry = body_fn(carry)``, starting from `init` (a pytree).

    `cond_fn` returns a bool scalar; `body_fn` a carry of `init`'s structure and types.
    Forward only: gradients raise (use `scan` with a fixed length). Compiled code runs it
    as a native loop (`codegen/while_loop.py`), the cond and the body compiled once each.
    """
    op = "while_loop"
    leaves, tree = flatten(init, f"{op}: init")
    nodes = leaf_nodes(leaves)
    outer = outer_graph(nodes)
    types = [[n.type for n in nodes]]
    test = trace(cond_fn, [tree], types, op, f"{name or 'while'}_cond", outer)
    body = trace(body_fn, [tree], types, op, f"{name or 'while'}_body", outer)
    if test.out_tree != TreeDef("leaf") or test.region.results[0].type != TensorType(
            (), DType.bool):
        got = test.region.results[0].type if test.out_tree.leaves == 1 else test.out_tree
        fail(op, GraphcError(f"cond_fn must return a bool scalar bool[], got {got}"))
    if body.out_tree != tree:
        fail(op, GraphcError(f"body_fn returned a carry of structure {body.out_tree}, init "
                             f"is {tree}"))
    _check_carry(nodes, body.region.results, op)
    captured, (test_region, body_region) = _share_captures(
        [test.region, body.region], [test.captured, body.captured], len(nodes))
    n = len(nodes)
    regions = [Region(r.graph, (*r.params[n:], *r.params[:n]), r.results)
               for r in (test_region, body_region)]
    node = apply(WHILE_LOOP, [*captured, *nodes], {"num_consts": len(captured)}, name=name,
                 regions=regions)
    return unflatten(tree, _results(node))

