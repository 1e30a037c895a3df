"""Column sums fused into the kernel that produces their input (issue 13.12, second half):
a reduction over every axis but the innermost also computes and stores the elementwise
kernel it reads (`passes/column_sums.py`), results unchanged bit for bit."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest

import graphc as gc
from graphc import pipeline
from graphc.codegen.module import build_module
from graphc.codegen.target import host_target
from graphc.errors import CompileError
from graphc.passes import column_sums
from graphc.passes import fuse as fuse_module
from graphc.passes.kernels import FusedProgram, Kernel, KernelKind
from graphc.passes.memory_plan import check_no_overlap, plan_memory

# --- helpers ---------------------------------------------------------------------------------


def _optimized(g: gc.Graph, inputs: list[gc.Node], outputs: list[gc.Node],
               updates: dict[gc.Node, gc.Node] | None = None) -> tuple[gc.Graph, gc.Signature]:
    sig = gc.Signature("main", tuple(inputs), tuple(outputs), tuple((updates or {}).items()))
    low = pipeline.lower(g, sig, gc.CompileOptions(threads=1), "optimized")
    assert low.optimized is not None and low.optimized_signature is not None
    return low.optimized, low.optimized_signature


def _fused(g: gc.Graph, inputs: list[gc.Node], outputs: list[gc.Node],
           updates: dict[gc.Node, gc.Node] | None = None) -> FusedProgram:
    return fuse_module.fuse(*_optimized(g, inputs, outputs, updates))


def _without_column_sums(graph: gc.Graph, sig: gc.Signature) -> FusedProgram:
    """Fused with multi-output merging but without `merge_column_sums`."""
    original = fuse_module.merge_column_sums
    try:
        fuse_module.merge_column_sums = lambda program, position, max_nodes: program
        return fuse_module.fuse(graph, sig)
    finally:
        fuse_module.merge_column_sums = original


def _with_side_outputs(program: FusedProgram) -> list[Kernel]:
    return [k for k in program.kernels
            if k.kind == KernelKind.REDUCTION and len(k.outputs) > 1]


def _compile(g: gc.Graph, inputs: list[gc.Node], outputs: list[gc.Node], threads: int,
             merge: bool = True, updates: dict[gc.Node, gc.Node] | None = None
             ) -> gc.Executable:
    """Compiled with the default fusion, or (merge=False) with no merging of any kind."""
    original = pipeline.fuse
    try:
        if not merge:
            pipeline.fuse = functools.partial(fuse_module.fuse, multi_output=False)
        return gc.compile(g, inputs, outputs, updates=updates,
                          options=gc.CompileOptions(threads=threads))
    finally:
        pipeline.fuse = original


# --- the MLP training step --------------------------------------------------------------------


def _mlp(sizes: tuple[int, ...], batch: int, seed: int = 0
         ) -> tuple[gc.Graph, list[gc.Node], gc.Node, dict[gc.Node, gc.Node]]:
    """The benchmarks' MLP (relu hidden layers, mean softmax cross-entropy), SGD momentum."""
    rng = np.random.default_rng(seed)
    with gc.Graph("mlp") as g:
        x = gc.placeholder((batch, sizes[0]), gc.float32, name="x")
        y = gc.placeholder((batch,), gc.int32, name="y")
        h = x
        for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
            w = gc.variable(rng.normal(0, n_in ** -0.5, (n_in, n_out)).astype(np.float32),
                            name=f"w{i}")
            b = gc.variable(rng.normal(0, 0.1, n_out).astype(np.float32), name=f"b{i}")
            h = h @ w + b
            if i + 2 < len(sizes):
                h = gc.relu(h)
        loss = gc.mean(gc.softmax_cross_entropy(h, y))
        updates = gc.optim.SGD(lr=0.01, momentum=0.9).minimize(loss)
    return g, [x, y], loss, updates


def test_the_mlp_step_stores_the_output_gradient_in_its_column_sum() -> None:
    """784-512-512-10 at batch 128: the output layer's gradient (128, 10), computed by an
    elementwise kernel and read back by its bias gradient's column sum, is computed and
    stored by that column sum: one kernel fewer."""
    g, inputs, loss, updates = _mlp((784, 512, 512, 10), 128)
    graph, sig = _optimized(g, inputs, [loss], updates)
    after = fuse_module.fuse(graph, sig)
    before = _without_column_sums(graph, sig)
    assert len(after.kernels) == len(before.kernels) - 1
    (merged,) = _with_side_outputs(after)
    (side,) = merged.outputs[:-1]
    assert merged.outputs[-1] is merged.root and merged.anchor is not None
    assert merged.anchor.op == "sum" and merged.anchor.attrs["axes"] == (0,)
    assert merged.anchor.inputs[0] is side and side.shape == (128, 10)
    assert merged.root.shape == (10,) and merged.root is not merged.anchor  # momentum epilogue
    # In `before`, an elementwise kernel stores it and the column sum reads it.
    producer = before.kernel_of[side]
    assert producer.kind == KernelKind.ELEMENTWISE and producer.root is side
    assert any(n is side for n in before.kernel_of[merged.anchor].inputs)
    # Now the column sum computes it from what the producer read, and the weight gradient
    # and backpropagation GEMMs read it from the column sum's store.
    assert after.kernel_of[side] is merged
    assert not any(n is side for n in merged.inputs)
    assert {id(n) for n in producer.inputs} <= {id(n) for n in merged.inputs}
    readers = [k for k in after.kernels if any(n is side for n in k.inputs)]
    assert len(readers) == 2 and all(k.kind == KernelKind.MATMUL for k in readers)
    assert all(k.index > merged.index for k in readers)
    text = after.format()
    assert f"[reduction] anchor=%{merged.anchor.name} -> %{side.name}, %{merged.root.name}" \
        in text
    plan = plan_memory(after)
    check_no_overlap(plan)
    assert plan.location[side] != plan.location[merged.root]
    assert all(plan.location[o] != plan.buffer_of(n) for o in merged.outputs
               for n in merged.inputs)


def test_merging_off_means_no_merging() -> None:
    g, inputs, loss, updates = _mlp((784, 512, 512, 10), 128)
    graph, sig = _optimized(g, inputs, [loss], updates)
    program = fuse_module.fuse(graph, sig, multi_output=False)
    assert all(len(k.outputs) == 1 for k in program.kernels)
    assert len(program.kernels) == len(fuse_module.fuse(graph, sig).kernels) + 2


@pytest.fixture(scope="module")
def mlp_steps() -> dict:
    """A small MLP step (the same structure) run 3 times by each compile and the reference,
    from equal weights: the loss of each step and the final weights."""
    rng = np.random.default_rng(7)
    batches = [(rng.standard_normal((128, 40)).astype(np.float32),
                rng.integers(0, 10, 128).astype(np.int32)) for _ in range(3)]
    results = {}
    for key in ((True, 1), (True, 2), (False, 1), (False, 2), "reference"):
        g, inputs, loss, updates = _mlp((40, 32, 24, 10), 128)
        if key == "reference":
            step = gc.reference(g, inputs, [loss], updates=updates)
        else:
            merge, threads = key
            step = _compile(g, inputs, [loss], threads, merge, updates)
            assert len(_with_side_outputs(step.report.plan.program)) == (1 if merge else 0)
        losses = [step(xb, yb)[0].copy() for xb, yb in batches]
        results[key] = (losses, {name: g.variables[name].copy() for name in g.variables})
    return results


@pytest.mark.parametrize("threads", [1, 2])
def test_the_mlp_step_gives_the_same_bits(mlp_steps: dict, threads: int) -> None:
    """Losses and every weight after three steps, merged vs. no merging at all."""
    losses, weights = mlp_steps[(True, threads)]
    base_losses, base_weights = mlp_steps[(False, threads)]
    assert [a.tobytes() for a in losses] == [a.tobytes() for a in base_losses]
    for name in base_weights:
        assert weights[name].tobytes() == base_weights[name].tobytes(), name


def test_the_mlp_step_matches_the_reference(mlp_steps: dict) -> None:
    losses, weights = mlp_steps[(True, 1)]
    ref_losses, ref_weights = mlp_steps["reference"]
    np.testing.assert_allclose(np.array(losses), np.array(ref_losses), rtol=1e-5)
    for name in ref_weights:
        np.testing.assert_allclose(weights[name], ref_weights[name], rtol=1e-4, atol=1e-6,
                                   err_msg=name)
    # The output layer's bias moved (its gradient is the fused column sum).
    assert not np.array_equal(weights["b2"], _mlp((40, 32, 24, 10), 128)[0].variables["b2"])


# --- generated cases -----------------------------------------------------------------------

SHAPES = [(128, 10), (37, 5), (1000, 3), (64, 200), (5, 1), (3, 0), (33, 17), (300, 32),
          (40, 700), (100, 1000), (4, 9, 7), (6, 40, 33), (5, 8, 48)]
VARIANTS = [("sum", False), ("sum", True), ("max", True)]


def _case(shape: tuple[int, ...], dtype: str, op: str, epilogue: bool
          ) -> tuple[gc.Graph, list[gc.Node], list[gc.Node]]:
    """t = b - exp(a)·r + c (r: one value per row, c: one per column; an output, so its own
    kernel), and op(t) over every axis but the last, times 0.5 plus m if `epilogue`."""
    with gc.Graph("colsum") as g:
        a = gc.placeholder(shape, dtype, name="a")
        b = gc.placeholder(shape, dtype, name="b")
        r = gc.placeholder((*shape[:-1], 1), dtype, name="r")
        c = gc.placeholder(shape[-1:], dtype, name="c")
        m = gc.placeholder(shape[-1:], dtype, name="m")
        t = b - gc.exp(a) * r + c
        axes = tuple(range(len(shape) - 1))
        reduced = getattr(gc, op)(t, axis=axes if len(axes) > 1 else axes[0])
        out = reduced * 0.5 + m if epilogue else reduced
    return g, [a, b, r, c, m], [t, out]


def _numpy(feeds: list[np.ndarray], op: str, epilogue: bool) -> tuple[np.ndarray, np.ndarray]:
    a, b, r, c, m = (x.astype(np.float64) for x in feeds)
    t = b - np.exp(a) * r + c
    axes = tuple(range(a.ndim - 1))
    reduced = t.sum(axis=axes) if op == "sum" else (
        t.max(axis=axes) if t.size else np.full(t.shape[-1:], -np.inf))
    return t, reduced * 0.5 + m if epilogue else reduced


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op,epilogue", VARIANTS, ids=[f"{o}-{e}" for o, e in VARIANTS])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_generated_column_sums(shape: tuple[int, ...], dtype: str, op: str,
                               epilogue: bool) -> None:
    """Both innermost-kept paths (narrow rows in registers: (128, 10), (37, 5), (1000, 3),
    (64, 200), (33, 17) with a scalar tail, (300, 32) and (5, 8, 48) one row per vector;
    column sweeps: (5, 1), (40, 700) and (100, 1000) with the cascade, split across
    threads), rank 3 over axes (0, 1), empty: merged (not when empty), equal to numpy, and
    bit for bit to the unmerged kernels at 1 and 2 threads."""
    g, inputs, outputs = _case(shape, dtype, op, epilogue)
    rng = np.random.default_rng(sum(shape))
    feeds = [rng.standard_normal(n.shape).astype(dtype) for n in inputs]
    merged = _compile(g, inputs, outputs, 1)
    program = merged.report.plan.program
    found = _with_side_outputs(program)
    if 0 in shape:
        assert not found
    else:
        (k,) = found
        assert [o.shape for o in k.outputs] == [shape, outputs[1].shape]
        assert not any(kk.kind == KernelKind.ELEMENTWISE and kk.root.shape == shape
                       for kk in program.kernels)
    got = merged(*feeds)
    expected = _numpy(feeds, op, epilogue)
    tol = 1e-5 if dtype == "float32" else 1e-12
    for value, want in zip(got, expected):
        assert value.dtype == np.dtype(dtype) and value.shape == want.shape
        np.testing.assert_allclose(value, want, rtol=tol, atol=tol * max(1, shape[0]))
    separate = _compile(g, inputs, outputs, 1, merge=False)(*feeds)
    two = _compile(g, inputs, outputs, 2)(*feeds)
    for value, other, threaded in zip(got, separate, two):
        assert value.tobytes() == other.tobytes()
        assert value.tobytes() == threaded.tobytes()


def test_loop_invariant_products_round_the_same_in_both_kernels() -> None:
    """`a + s·t` (scalars) and `a - r·r2` (one pair per row) are loop-invariant products in
    the elementwise kernel, which LLVM hoisted and did not fuse into an FMA while the
    reduction storing them did; FMAs are now decided on the emitted code in both."""
    with gc.Graph("fma") as g:
        a = gc.placeholder((64, 200), gc.float32, name="a")
        s = gc.placeholder((1,), gc.float32, name="s")
        t = gc.placeholder((1,), gc.float32, name="t")
        r = gc.placeholder((64, 1), gc.float32, name="r")
        r2 = gc.placeholder((64, 1), gc.float32, name="r2")
        u = a + s * t
        v = a - r * r2
        outs = [u, v, gc.sum(u, axis=0), gc.sum(v, axis=0)]
    inputs = [a, s, t, r, r2]
    rng = np.random.default_rng(3)
    feeds = [rng.standard_normal(n.shape).astype(np.float32) for n in inputs]
    merged = _compile(g, inputs, outs, 1)
    assert len(_with_side_outputs(merged.report.plan.program)) == 2
    for x, y in zip(merged(*feeds), _compile(g, inputs, outs, 1, merge=False)(*feeds)):
        assert x.tobytes() == y.tobytes()


def test_the_reduction_keeps_its_own_vector_width() -> None:
    """float64 side nodes in a float32 column sum: the sum keeps the 16 float32 lanes (and
    so its order and bits) it has without them."""
    with gc.Graph("mixed") as g:
        a = gc.placeholder((300, 10), gc.float64, name="a")
        r = gc.placeholder((300, 1), gc.float64, name="r")
        b = gc.placeholder((300, 10), gc.float32, name="b")
        t = gc.cast(gc.exp(a) * r, gc.float32) + b
        outs = [t, gc.sum(t, axis=0)]
    inputs = [a, r, b]
    rng = np.random.default_rng(4)
    feeds = [rng.standard_normal(n.shape).astype(n.dtype.np) for n in inputs]
    merged = _compile(g, inputs, outs, 2)
    assert len(_with_side_outputs(merged.report.plan.program)) == 1
    for x, y in zip(merged(*feeds), _compile(g, inputs, outs, 1, merge=False)(*feeds)):
        assert x.tobytes() == y.tobytes()


def test_a_multi_output_producer_and_two_producers() -> None:
    """A multi-output producer joins whole; a sum of two unrelated kernels' outputs takes
    both (the merged kernel tries again); random numbers (of the full shape and one per row,
    broadcast) are the same numbers."""
    shape = (50, 24)
    with gc.Graph("producers") as g:
        a = gc.placeholder(shape, gc.float32, name="a")
        b = gc.placeholder(shape, gc.float32, name="b")
        r = gc.placeholder((50, 1), gc.float32, name="r")
        c = gc.placeholder(shape, gc.float32, name="c")
        d = gc.placeholder(shape, gc.float32, name="d")
        key = gc.placeholder((), gc.int32, name="key")
        t1 = a * r
        t2 = t1 + b
        s1 = gc.sum(t2, axis=0)
        u1 = gc.exp(c) * gc.random_uniform(shape, key=key)
        u2 = gc.tanh(d) * 3.0 + gc.random_normal((50, 1), seed=1)
        s2 = gc.sum(u1 - u2, axis=0, keepdims=True)
        outs = [t1, t2, s1, u1, u2, s2]
    inputs = [a, b, r, c, d, key]
    program = _fused(g, inputs, outs)
    merged = sorted([o.name for o in k.outputs] for k in _with_side_outputs(program))
    assert merged == sorted([[t1.name, t2.name, s1.name], [u1.name, u2.name, s2.name]])
    assert len(program.kernels) == 2
    rng = np.random.default_rng(5)
    feeds = [rng.standard_normal(n.shape).astype(np.float32) for n in inputs[:-1]]
    feeds.append(np.array(9, np.int32))
    got = _compile(g, inputs, outs, 2)(*feeds)
    for x, y in zip(got, _compile(g, inputs, outs, 1, merge=False)(*feeds)):
        assert x.tobytes() == y.tobytes()
    for x, y in zip(got, gc.reference(g, inputs, outs)(*feeds)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


# --- cases that must not merge -------------------------------------------------------------


def _innermost_reduced() -> tuple:
    with gc.Graph("inner") as g:
        a = gc.placeholder((30, 20), gc.float32, name="a")
        t = gc.exp(a) * 2.0
        out = gc.sum(t, axis=1)
    return g, [a], [t, out], None


def _through_a_view() -> tuple:
    with gc.Graph("view") as g:
        a = gc.placeholder((30, 20), gc.float32, name="a")
        t = gc.exp(a) * 2.0
        out = gc.sum(gc.reshape(t, (60, 10)), axis=0)
    return g, [a], [t, out], None


def _read_in_between() -> tuple:
    """softmax(t) reads t between the two kernels and the sum reads it: neither place."""
    with gc.Graph("between") as g:
        a = gc.placeholder((30, 20), gc.float32, name="a")
        t = gc.exp(a) * 2.0
        out = gc.sum(t * gc.softmax(t), axis=0)
    return g, [a], [t, out], None


def _output_after_the_root() -> tuple:
    """t1 and t2 are one multi-output kernel, and t2 comes after the sum in graph order."""
    with gc.Graph("order") as g:
        a = gc.placeholder((30, 20), gc.float32, name="a")
        t1 = a * 2.0
        out = gc.sum(t1, axis=0)
        t2 = t1 + a
    return g, [a], [t1, out, t2], None


def _update_in_place() -> tuple:
    """v's update reads v: alone it is written over v; merged it could not be."""
    with gc.Graph("update") as g:
        a = gc.placeholder((30, 20), gc.float32, name="a")
        v = gc.variable(np.linspace(-1, 1, 600, dtype=np.float32).reshape(30, 20), name="v")
        new_v = v * 0.9 + a
        out = gc.sum(new_v, axis=0)
    return g, [a], [out], {v: new_v}


def _control() -> tuple:
    with gc.Graph("control") as g:
        a = gc.placeholder((30, 20), gc.float32, name="a")
        t = gc.exp(a) * 2.0
        out = gc.sum(t, axis=0)
    return g, [a], [t, out], None


@pytest.mark.parametrize("build,merges", [
    (_innermost_reduced, False), (_through_a_view, False), (_read_in_between, False),
    (_output_after_the_root, False), (_update_in_place, False), (_control, True)],
    ids=lambda x: x.__name__.strip("_") if callable(x) else str(x))
def test_what_must_not_merge(build, merges: bool) -> None:
    g, inputs, outputs, updates = build()
    program = _fused(g, inputs, outputs, updates)
    assert bool(_with_side_outputs(program)) == merges
    rng = np.random.default_rng(2)
    feeds = [rng.standard_normal(n.shape).astype(np.float32) for n in inputs]
    step = _compile(g, inputs, outputs, 2, updates=updates)
    if build is _update_in_place:
        assert [v.name for v in step.report.plan.in_place_updates] == ["v"]
    before = {name: g.variables[name].copy() for name in g.variables}
    got = step(*feeds)
    g2, inputs2, outputs2, updates2 = build()
    want = gc.reference(g2, inputs2, outputs2, updates=updates2)(*feeds)
    for x, y in zip(got, want):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
    for name in before:
        np.testing.assert_allclose(g.variables[name], g2.variables[name], rtol=1e-5, atol=1e-6)


def test_code_generation_refuses_side_outputs_the_predicate_rejects() -> None:
    """Merged by hand, a producer and a sum over the innermost axis fail
    `accepts_side_outputs`, and code generation refuses the kernel."""
    g, inputs, outputs, _ = _innermost_reduced()
    graph, sig = _optimized(g, inputs, outputs)
    program = fuse_module.fuse(graph, sig)
    (k,) = [j for j in program.kernels if j.kind == KernelKind.REDUCTION]
    (producer,) = [j for j in program.kernels if j.kind == KernelKind.ELEMENTWISE]
    position = {n: i for i, n in enumerate(sig.needed_nodes())}
    union = column_sums._union(program, producer, k, position)
    assert union is not None and not column_sums.accepts_side_outputs(union)
    program.kernels = [union]
    for n in union.nodes:
        program.kernel_of[n] = union
    with pytest.raises(CompileError, match="side outputs"):
        build_module(plan_memory(program), host_target())
