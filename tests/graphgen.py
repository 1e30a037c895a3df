"""Hypothesis strategies for random valid graphs, with input values, for differential tests.

`random_graphs()` draws a `GeneratedGraph`: a graph of one dtype built from placeholders,
variables, constants and a chain of random ops (elementwise unary/binary with broadcasting,
where/comparisons, and, when their families are in the registry, reductions, shape ops,
slicing and matmul), a signature ``"main"``, and a feed for every placeholder.

Values are finite and well-conditioned by construction, so rtol-1e-5 comparisons between two
implementations (reference vs. compiled, before vs. after a pass) are meaningful:
- every value has a tracked interval; an op is only applied if its result stays within
  [-`BOUND`, `BOUND`], log/sqrt/div only see values >= 0.05 (made positive by exp(x) or
  x*x+1), exp only sees values <= 3;
- inputs lie on the grid k/16 + 1/32 (exact in float32, never 0), and comparisons are only
  made between a source value (not a computed one, whose rounding may differ between
  implementations) and a threshold on the k/16 grid, so no comparison is ever a tie;
- every value's rounding error is tracked to first order (`_Val.err`, in epsilons) and ops
  that would exceed `ERR_LIMIT` are not applied; `scales` gives each output's error scale
  and `assert_close` compares with ``atol = rtol * scale`` (so an output that is a small
  difference of large values is not held to a relative tolerance it cannot meet).

Ops from families that are not yet implemented are left out (`UNAVAILABLE` says why), so the
module works now and grows with the registry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st

import graphc as gc
from graphc.ops import registry

__all__ = ["AVAILABLE", "BOUND", "ERR_LIMIT", "SMALL_DIMS", "UNAVAILABLE", "GeneratedGraph",
           "random_graphs"]

BOUND = 1e3  # every intermediate value stays within [-BOUND, BOUND]
ERR_LIMIT = 1e4  # every value's error scale (in epsilons, see _Val.err) stays below this
_POSITIVE = 0.05  # log, sqrt and division only see values at least this large
SMALL_DIMS = (1, 2, 3, 4)  # default sizes of generated dimensions


@dataclass
class GeneratedGraph:
    """A random graph, its input placeholders and outputs, and values to feed."""

    graph: gc.Graph
    inputs: list[gc.Node]
    outputs: list[gc.Node]
    feeds: dict[str, np.ndarray]
    scales: list[float] = field(default_factory=list)

    def evaluate(self, graph: gc.Graph | None = None) -> list[np.ndarray]:
        """The outputs computed by the reference interpreter on `graph` (default: our graph),
        whose inputs and outputs are looked up by name (e.g. a parsed or loaded copy)."""
        g = self.graph if graph is None else graph
        fn = gc.reference(g, inputs=[g[n.name] for n in self.inputs],
                          outputs=[g[n.name] for n in self.outputs])
        return list(fn(**self.feeds))

    def assert_close(self, actual: Sequence[np.ndarray], expected: Sequence[np.ndarray],
                     rtol: float = 1e-5) -> None:
        """Outputs agree: ``|a - e| <= rtol * (|e| + scale)`` elementwise, per output."""
        assert len(actual) == len(expected) == len(self.outputs)
        for node, a, e, scale in zip(self.outputs, actual, expected, self.scales):
            np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * scale,
                                       err_msg=f"output %{node.name}")


@dataclass
class _Val:
    """A node, an interval containing all its values, and its rounding-error scale.

    `err` bounds the node's absolute error in units of the dtype's epsilon (first order):
    every op adds its own rounding (its magnitude) to its inputs' errors times its
    derivative's bound. Sources are exact (0).
    """

    node: gc.Node
    lo: float
    hi: float
    err: float = 0.0

    @property
    def mag(self) -> float:
        return max(abs(self.lo), abs(self.hi))


def _val(node: gc.Node, lo: float, hi: float, err: float) -> _Val | None:
    """The result of an op, or None if it leaves the safe range or loses too much accuracy."""
    mag = max(abs(lo), abs(hi))
    err += mag  # this op's own rounding
    if mag > BOUND or err > ERR_LIMIT:
        return None
    return _Val(node, lo, hi, err)


@dataclass
class _State:
    draw: st.DrawFn
    rng: np.random.Generator
    dtype: gc.DType
    pool: list[_Val]
    inputs: list[gc.Node]
    feeds: dict[str, np.ndarray]
    dims: tuple[int, ...] = SMALL_DIMS  # sizes new sources' dimensions are drawn from

    def pick(self, vals: Sequence[_Val] | None = None) -> _Val:
        return self.draw(st.sampled_from(list(vals or self.pool)))

    def grid(self, shape: tuple[int, ...]) -> np.ndarray:
        """Values k/16 + 1/32 in about [-1.5, 1.5]: exact, nonzero, off every threshold."""
        k = np.asarray(self.rng.integers(-24, 24, size=shape))
        return np.asarray(k / 16 + 1 / 32, dtype=self.dtype.np)

    def source(self, shape: tuple[int, ...]) -> _Val:
        """A new placeholder (fed), variable or constant of `shape`."""
        kind = self.draw(st.sampled_from(["placeholder", "placeholder", "variable", "constant"]))
        if kind == "placeholder":
            return self.placeholder(shape)
        value = self.grid(shape)
        node = gc.variable(value) if kind == "variable" else gc.constant(value)
        return _Val(node, float(value.min()), float(value.max()))

    def placeholder(self, shape: tuple[int, ...]) -> _Val:
        node = gc.placeholder(shape, self.dtype, name=f"x{len(self.inputs)}")
        value = self.grid(shape)
        self.inputs.append(node)
        self.feeds[node.name] = value
        return _Val(node, float(value.min()), float(value.max()))


def _shapes(dims: tuple[int, ...], min_rank: int = 0, max_rank: int = 3
            ) -> st.SearchStrategy[tuple[int, ...]]:
    return st.lists(st.sampled_from(dims), min_size=min_rank, max_size=max_rank).map(tuple)


def _product(a: _Val, b: _Val) -> tuple[float, float]:
    corners = [a.lo * b.lo, a.lo * b.hi, a.hi * b.lo, a.hi * b.hi]
    return min(corners), max(corners)


# --- generators: each builds one op on the state, or returns None if it does not apply --------

def _positive(s: _State, v: _Val) -> _Val | None:
    """`v` if its values are >= _POSITIVE, else exp(v) or v*v+1, which are."""
    if v.lo >= _POSITIVE:
        return v
    if -6 <= v.lo and v.hi <= 3 and s.draw(st.booleans()):
        return _val(gc.exp(v.node), math.exp(v.lo), math.exp(v.hi), math.exp(v.hi) * v.err)
    square = _val(v.node * v.node, 0.0, v.mag**2, 2 * v.mag * v.err)
    if square is None:
        return None
    return _val(square.node + 1.0, 1.0, square.hi + 1.0, square.err)


def _unary(name: str) -> Callable[[_State, _Val], _Val | None]:
    def gen(s: _State, u: _Val) -> _Val | None:
        v = _positive(s, u) if name in ("log", "sqrt") else u
        if v is None:
            return None
        # (lo, hi, bound of |f'| on [lo, hi]) of f on the input's interval
        if name == "log":
            lo, hi, slope = math.log(v.lo), math.log(v.hi), 1 / v.lo
        elif name == "sqrt":
            lo, hi, slope = math.sqrt(v.lo), math.sqrt(v.hi), 0.5 / math.sqrt(v.lo)
        elif name == "exp":
            if v.hi > 3 or v.lo < -20:
                return None
            lo, hi, slope = math.exp(v.lo), math.exp(v.hi), math.exp(v.hi)
        elif name in ("tanh", "sin", "cos"):
            if name != "tanh" and v.mag > 10:  # keep range reduction trivial
                return None
            lo, hi, slope = -1.0, 1.0, 1.0
        elif name == "sigmoid":
            lo, hi, slope = 0.0, 1.0, 0.25
        elif name == "neg":
            lo, hi, slope = -v.hi, -v.lo, 1.0
        elif name == "abs":
            lo, hi, slope = 0.0, v.mag, 1.0
        elif name == "square":
            lo, hi, slope = 0.0, v.mag**2, 2 * v.mag
        else:  # relu
            lo, hi, slope = max(v.lo, 0.0), max(v.hi, 0.0), 1.0
        return _val(getattr(gc, name)(v.node), lo, hi, slope * v.err)

    return gen


def _partner(s: _State, v: _Val) -> _Val:
    """An operand broadcast-compatible with `v`: from the pool, a scalar, or a new source."""
    def fits(u: _Val) -> bool:
        return all(p == q or p == 1 or q == 1 for p, q in zip(u.node.shape[::-1],
                                                              v.node.shape[::-1]))

    choice = s.draw(st.sampled_from(["pool", "scalar", "new"]))
    same = [u for u in s.pool if fits(u)]
    if choice == "pool" and same:
        return s.pick(same)
    if choice == "scalar":
        c = s.draw(st.sampled_from([0.5, 0.75, 1.25, 2.0, -0.5]))
        return _Val(gc.constant(c, s.dtype), c, c)
    shape = list(v.node.shape)
    shape = shape[s.draw(st.integers(0, len(shape))):]  # drop leading dims
    shape = [1 if s.draw(st.booleans()) else d for d in shape]
    return s.source(tuple(shape))


def _binary(name: str) -> Callable[[_State, _Val], _Val | None]:
    def gen(s: _State, v: _Val) -> _Val | None:
        u = _partner(s, v)
        a, b = (v, u) if s.draw(st.booleans()) else (u, v)
        if name == "add":
            lo, hi, err = a.lo + b.lo, a.hi + b.hi, a.err + b.err
        elif name == "sub":
            lo, hi, err = a.lo - b.hi, a.hi - b.lo, a.err + b.err
        elif name == "mul":
            lo, hi = _product(a, b)
            err = b.mag * a.err + a.mag * b.err
        elif name == "div":
            positive = _positive(s, b)
            if positive is None:
                return None
            b = positive
            corners = [a.lo / b.lo, a.lo / b.hi, a.hi / b.lo, a.hi / b.hi]
            lo, hi = min(corners), max(corners)
            err = a.err / b.lo + a.mag * b.err / b.lo**2
        elif name == "maximum":
            lo, hi, err = max(a.lo, b.lo), max(a.hi, b.hi), max(a.err, b.err)
        else:  # minimum
            lo, hi, err = min(a.lo, b.lo), min(a.hi, b.hi), max(a.err, b.err)
        if max(abs(lo), abs(hi)) > BOUND:
            return None
        return _val(getattr(gc, name)(a.node, b.node), lo, hi, err)

    return gen


def _where(s: _State, v: _Val) -> _Val | None:
    sources = [u for u in s.pool if u.node.op in ("placeholder", "variable", "constant")]
    c = s.pick(sources)
    threshold = s.draw(st.integers(-8, 8)) / 16
    compare = s.draw(st.sampled_from([gc.greater, gc.less, gc.greater_equal, gc.less_equal]))
    u = _partner(s, v)
    try:
        np.broadcast_shapes(c.node.shape, v.node.shape, u.node.shape)
    except ValueError:  # the condition does not broadcast with the values
        return None
    node = gc.where(compare(c.node, threshold), v.node, u.node)
    return _Val(node, min(v.lo, u.lo), max(v.hi, u.hi), max(v.err, u.err))


def _reduce(name: str) -> Callable[[_State, _Val], _Val | None]:
    def gen(s: _State, v: _Val) -> _Val | None:
        nd = v.node.ndim
        if nd == 0:
            return None
        axes = s.draw(st.lists(st.integers(0, nd - 1), min_size=1, max_size=nd, unique=True))
        axis = None if len(axes) == nd and s.draw(st.booleans()) else tuple(sorted(axes))
        count = math.prod(v.node.shape) if axis is None else \
            math.prod(v.node.shape[a] for a in axis)
        if name == "max":
            lo, hi, err = v.lo, v.hi, v.err
        else:  # sum (and mean = sum / count): the partial sums round too
            lo, hi, err = v.lo * count, v.hi * count, count * (v.err + v.mag * count)
            if name == "mean":
                lo, hi, err = lo / count, hi / count, err / count
        node = getattr(gc, name)(v.node, axis=axis, keepdims=s.draw(st.booleans()))
        return _val(node, lo, hi, err)

    return gen


def _reshape(s: _State, v: _Val) -> _Val | None:
    size = v.node.size
    divisors = [d for d in range(1, size + 1) if size % d == 0]
    d = s.draw(st.sampled_from(divisors))
    shape = s.draw(st.sampled_from([(size,), (1, size), (d, size // d), (d, 1, size // d)]))
    return _Val(gc.reshape(v.node, shape), v.lo, v.hi, v.err)


def _transpose(s: _State, v: _Val) -> _Val | None:
    if v.node.ndim < 2:
        return None
    perm = tuple(s.draw(st.permutations(range(v.node.ndim))))
    return _Val(gc.transpose(v.node, perm), v.lo, v.hi, v.err)


def _broadcast_to(s: _State, v: _Val) -> _Val | None:
    shape = tuple(s.draw(st.integers(1, 3)) if d == 1 else d for d in v.node.shape)
    lead = tuple(s.draw(st.lists(st.integers(1, 3), max_size=3 - min(v.node.ndim, 3))))
    return _Val(gc.broadcast_to(v.node, lead + shape), v.lo, v.hi, v.err)


def _slice(s: _State, v: _Val) -> _Val | None:
    if v.node.ndim == 0:
        return None
    index = []
    for d in v.node.shape:
        start = s.draw(st.integers(0, d - 1))
        index.append(slice(start, s.draw(st.integers(start + 1, d))))
    return _Val(v.node[tuple(index)], v.lo, v.hi, v.err)


def _concat(s: _State, v: _Val) -> _Val | None:
    if v.node.ndim == 0:
        return None
    same = [u for u in s.pool if u.node.shape == v.node.shape]
    u = s.pick(same) if same else v
    axis = s.draw(st.integers(0, v.node.ndim - 1))
    return _Val(gc.concat([v.node, u.node], axis=axis), min(v.lo, u.lo), max(v.hi, u.hi),
                max(v.err, u.err))


def _matmul(s: _State, v: _Val) -> _Val | None:
    if v.node.ndim != 2:
        return None
    k = v.node.shape[1]
    w = s.source((k, s.draw(st.sampled_from(s.dims))))
    lo, hi = _product(v, w)
    err = k * (w.mag * v.err + v.mag * w.err + k * v.mag * w.mag)
    return _val(gc.matmul(v.node, w.node), lo * k, hi * k, err)


_GENERATORS: dict[str, Callable[[_State, _Val], _Val | None]] = {
    # Hypothesis shrinks towards the first entry: a plain binary op is the simplest case.
    **{n: _binary(n) for n in ("add", "sub", "mul", "div", "maximum", "minimum")},
    **{n: _unary(n) for n in ("exp", "log", "sqrt", "tanh", "sigmoid", "sin", "cos", "neg",
                              "abs", "square", "relu")},
    "where": _where,
    "sum": _reduce("sum"),
    "mean": _reduce("mean"),
    "max": _reduce("max"),
    "reshape": _reshape,
    "transpose": _transpose,
    "broadcast_to": _broadcast_to,
    "slice": _slice,
    "concat": _concat,
    "matmul": _matmul,
}


# --- which generators work with the ops registered now ----------------------------------------

def _probe(fn: Callable[[gc.Node], gc.Node], want: tuple[int, ...]) -> str | None:
    """Why `fn` cannot be used (None if it builds a node of shape `want` on a 2x3 input)."""
    try:
        with gc.Graph("probe"):
            x = gc.placeholder((2, 3), gc.float32)
            out = fn(x)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    if not isinstance(out, gc.Node) or out.shape != want:
        return f"built {out!r}, expected a node of shape {want}"
    if out.op not in registry.OPS:
        return f"op {out.op!r} is not registered"
    return None


_PROBES: dict[str, tuple[Callable[[gc.Node], gc.Node], tuple[int, ...]]] = {
    "sum": (lambda x: gc.sum(x, axis=(1,), keepdims=True), (2, 1)),
    "mean": (lambda x: gc.mean(x, axis=(0,), keepdims=False), (3,)),
    "max": (lambda x: gc.max(x, axis=None, keepdims=False), ()),
    "reshape": (lambda x: gc.reshape(x, (3, 2)), (3, 2)),
    "transpose": (lambda x: gc.transpose(x, (1, 0)), (3, 2)),
    "broadcast_to": (lambda x: gc.broadcast_to(x, (2, 2, 3)), (2, 2, 3)),
    "slice": (lambda x: x[0:1, 1:3], (1, 2)),
    "concat": (lambda x: gc.concat([x, x], axis=1), (2, 6)),
    "matmul": (lambda x: gc.matmul(x, gc.transpose(x, (1, 0))), (2, 2)),
}

UNAVAILABLE: dict[str, str] = {}
for _name, (_fn, _want) in _PROBES.items():
    _why = _probe(_fn, _want)
    if _why is not None:
        UNAVAILABLE[_name] = _why
AVAILABLE: tuple[str, ...] = tuple(n for n in _GENERATORS if n not in UNAVAILABLE)


# --- the strategy -----------------------------------------------------------------------------

@st.composite
def _graphs(draw: st.DrawFn, max_nodes: int, dtypes: tuple[gc.DType, ...],
            ops: tuple[str, ...], dims: tuple[int, ...], min_rank: int) -> GeneratedGraph:
    dtype = draw(st.sampled_from(dtypes))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    with gc.Graph("random") as graph:
        s = _State(draw, rng, dtype, [], [], {}, dims)
        for _ in range(draw(st.integers(1, 3))):
            s.pool.append(s.source(draw(_shapes(dims, min_rank))))
        if not s.inputs:  # at least one placeholder, so there is something to feed
            s.pool.append(s.placeholder(s.pool[0].node.shape))
        steps = draw(st.integers(1, max_nodes))
        made: list[_Val] = []
        for _ in range(steps):
            for _attempt in range(5):
                # Half the time extend the newest value: deep chains, not only wide fans.
                operand = s.pool[-1] if draw(st.booleans()) else s.pick()
                result = _GENERATORS[draw(st.sampled_from(ops))](s, operand)
                if result is not None:
                    s.pool.append(result)
                    made.append(result)
                    break
        if not made:  # every attempt was out of bounds: tanh of a source always applies
            made.append(_GENERATORS["tanh"](s, s.pool[0]))  # type: ignore[arg-type]
            s.pool.append(made[-1])
        extra = draw(st.lists(st.sampled_from(made[:-1]), max_size=2, unique_by=id)) \
            if len(made) > 1 else []
        outs = [made[-1], *extra]
        graph.add_signature("main", s.inputs, [v.node for v in outs])
    return GeneratedGraph(graph, s.inputs, [v.node for v in outs], s.feeds,
                          [v.err for v in outs])


def random_graphs(
    max_nodes: int = 12,
    dtypes: Iterable[gc.DType] = (gc.float32, gc.float64),
    ops: Iterable[str] | None = None,
    dims: Sequence[int] = SMALL_DIMS,
    min_rank: int = 0,
) -> st.SearchStrategy[GeneratedGraph]:
    """Random valid graphs of one of `dtypes`, with up to `max_nodes` op applications.

    The first sources have rank `min_rank`-3 with sizes drawn from `dims` (small by
    default; give large sizes, first, to exercise code that only runs on big buffers, such as
    splits across threads: hypothesis shrinks towards the first entry).

    `ops` restricts the generators (names from `AVAILABLE`, e.g. ``("add", "tanh")``); by
    default all available ones are used. Asking for an unavailable one raises ValueError.
    If no requested op applies within the bounds, the graph is tanh of an input. log, sqrt
    and div may add exp or x*x+1 nodes to make their operand positive.
    """
    chosen = AVAILABLE if ops is None else tuple(ops)
    missing = [n for n in chosen if n not in AVAILABLE]
    if missing:
        reasons = "; ".join(f"{n}: {UNAVAILABLE.get(n, 'unknown generator')}" for n in missing)
        raise ValueError(f"generators not available: {reasons}")
    if not chosen:
        raise ValueError("ops is empty")
    return _graphs(max_nodes, tuple(dtypes), chosen, tuple(dims), min_rank)
