"""matmul, basic indexing, gathers and one_hot: build-time errors and edge cases.

The op table (tests/op_cases/indexing.py, linalg.py) checks values and gradients; this file
checks what the table cannot: error messages and their source lines, the nodes that are (not)
built, numpy equivalence over many generated index forms and operand ranks, and run-time
index errors.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import graphc as gc
from graphc.ir.opdef import Fusion
from graphc.ops import gather, linalg, registry


def _line() -> int:
    """The caller's line number (to compare with err.loc.line)."""
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    return frame.f_back.f_lineno


def _run(g: gc.Graph, inputs: list[gc.Node], outputs: list[gc.Node], *arrays: np.ndarray
         ) -> list[np.ndarray]:
    return list(gc.reference(g, inputs=inputs, outputs=outputs)(*arrays))


# --- registry ---------------------------------------------------------------------------

def test_ops_are_registered_with_their_fusion_kinds_and_exports() -> None:
    kinds = {name: registry.OPS[name].fusion for name in
             ("matmul", "take", "take_along_axis", "take_grad", "take_along_axis_grad")}
    assert kinds == {"matmul": Fusion.OUT_FUSABLE, "take": Fusion.INJECTIVE,
                     "take_along_axis": Fusion.INJECTIVE, "take_grad": Fusion.OPAQUE,
                     "take_along_axis_grad": Fusion.OPAQUE}
    assert all(registry.OPS[n].differentiable for n in kinds)
    assert set(gather.__all__) == {"take", "take_along_axis", "one_hot"}
    assert linalg.__all__ == ["linear", "matmul", "matmul_integer"]
    assert gc.take is gather.take and gc.matmul is linalg.matmul
    assert not hasattr(gc, "getitem")


# --- matmul -----------------------------------------------------------------------------

def test_matmul_inner_mismatch_names_op_shapes_dims_and_line() -> None:
    with gc.Graph("g"):
        a = gc.placeholder((2, 3), name="a")
        b = gc.placeholder((4, 5), name="b")
        line = _line() + 2
        with pytest.raises(gc.ShapeError) as info:
            a @ b
    err = info.value
    assert err.op == "matmul" and err.loc is not None and err.loc.line == line
    text = str(err)
    assert "a f32[2,3]" in text and "b f32[4,5]" in text
    assert "3 in dim -1" in text and "4 in dim -2" in text
    assert f"{__file__}:{line}" in text


def test_matmul_mismatch_with_transpose_flags_names_the_flag_and_dims() -> None:
    with gc.Graph("g"):
        a = gc.placeholder((3, 2), name="a")
        b = gc.placeholder((4, 3), name="b")
        line = _line() + 2
        with pytest.raises(gc.ShapeError) as info:
            gc.matmul(a, b, transpose_b=True)
    text = str(info.value)
    assert info.value.loc is not None and info.value.loc.line == line
    assert "b f32[4,3] (transpose_b)" in text and "2 in dim -1" in text
    assert "3 in dim -1" in text


def test_matmul_1d_mismatch_reports_the_users_shapes_not_the_promoted_ones() -> None:
    with gc.Graph("g"):
        v = gc.placeholder((3,), name="v")
        m = gc.placeholder((4, 5), name="m")
        line = _line() + 2
        with pytest.raises(gc.ShapeError) as info:
            v @ m
    text = str(info.value)
    assert info.value.op == "matmul" and info.value.loc is not None
    assert info.value.loc.line == line
    assert "a f32[3]" in text and "b f32[4,5]" in text and "f32[1,3]" not in text
    with gc.Graph("g"):
        m = gc.placeholder((4, 5), name="m")
        with pytest.raises(gc.ShapeError, match=r"b f32\[2\] has 2 in dim -1"):
            m @ [1.0, 2.0]
        with pytest.raises(gc.DTypeError, match=r"matmul: cannot convert list"):
            m @ [[1.0], [2.0, 3.0]]


def test_matmul_other_build_errors() -> None:
    with gc.Graph("g"):
        a = gc.placeholder((2, 2, 3), name="a")
        b = gc.placeholder((3, 3, 4), name="b")
        with pytest.raises(gc.ShapeError, match=r"batch dim.*f32\[2,2,3\].*f32\[3,3,4\]"):
            a @ b
        with pytest.raises(gc.DTypeError, match=r"matmul: b: expected dtype float32.*f64\[3,4\]"):
            a @ gc.placeholder((3, 4), gc.float64)
        with pytest.raises(gc.DTypeError, match=r"a: expected a numeric dtype, got bool"):
            gc.placeholder((2, 2), gc.bool_) @ gc.placeholder((2, 2), gc.bool_)
        with pytest.raises(gc.ShapeError, match=r"matmul: b: expected rank >= 1, got a scalar"):
            a @ 2.0
        line = _line() + 2
        with pytest.raises(gc.ShapeError) as info:
            gc.matmul(gc.placeholder(()), a)
        assert info.value.loc is not None and info.value.loc.line == line
        with pytest.raises(gc.AttrError, match="transpose_a needs a rank >= 2 operand"):
            gc.matmul(gc.placeholder((3,)), b, transpose_a=True)


@pytest.mark.parametrize("ranks", [(1, 1), (1, 2), (2, 1), (1, 3), (3, 1), (1, 4), (2, 2),
                                   (2, 3), (3, 2), (4, 3), (3, 4), (4, 4)])
def test_at_operator_matches_numpy_for_any_ranks(ranks: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(ranks))
    ra, rb = ranks
    batch = [int(d) for d in rng.integers(1, 4, 2)]
    # Batch dims that broadcast: one side sometimes has 1 where the other has d.
    sa = [*(d if rng.random() < 0.6 else 1 for d in batch)][: max(ra - 2, 0)] + [2, 3][-ra:]
    sb = [*(d if rng.random() < 0.6 else 1 for d in batch)][: max(rb - 2, 0)] + [3, 4][-rb:]
    if ra == 1:
        sa = [3]
    if rb == 1:
        sb = [3]
    av, bv = rng.standard_normal(sa), rng.standard_normal(sb)
    with gc.Graph("g") as g:
        a = gc.placeholder(av.shape, gc.float64)
        b = gc.placeholder(bv.shape, gc.float64)
        out = a @ b
    expected = np.matmul(av, bv)
    assert out.shape == expected.shape
    (value,) = _run(g, [a, b], [out], av, bv)
    np.testing.assert_allclose(value, expected, rtol=1e-12, atol=1e-12)


def test_matmul_accepts_arrays_and_lists_on_either_side() -> None:
    w = np.arange(12.0, dtype=np.float32).reshape(3, 4)
    xv = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    with gc.Graph("g") as g:
        x = gc.placeholder((2, 3))
        outs = [x @ w, w.T @ x.T, x @ [1.0, 2.0, 3.0], [0.5, -1.0] @ x]
    assert [o.shape for o in outs] == [(2, 4), (4, 2), (2,), (3,)]
    assert all(o.dtype == gc.float32 for o in outs)
    values = _run(g, [x], outs, xv)
    expected = [xv @ w, w.T @ xv.T, xv @ np.array([1.0, 2.0, 3.0], np.float32),
                np.array([0.5, -1.0], np.float32) @ xv]
    for v, e in zip(values, expected):
        np.testing.assert_allclose(v, e, rtol=1e-6)


def test_matmul_gradient_uses_flags_instead_of_transposes() -> None:
    with gc.Graph("g") as g:
        a = gc.placeholder((2, 3, 4), gc.float64)
        b = gc.placeholder((4, 5), gc.float64)
        loss = gc.sum(gc.matmul(a, b) * 2.0)
        before = len(g.nodes)
        da, db = gc.grad(loss, [a, b])
    new = g.nodes[before:]
    assert "transpose" not in {n.op for n in new}
    flags = {(n.attrs["transpose_a"], n.attrs["transpose_b"]) for n in new if n.op == "matmul"}
    assert flags == {(False, True), (True, False)}
    assert da.shape == (2, 3, 4) and db.shape == (4, 5)


def test_matmul_integer_operands_forward_only() -> None:
    av = np.arange(6, dtype=np.int64).reshape(2, 3) - 2
    bv = np.arange(3, dtype=np.int64) * 7
    with gc.Graph("g") as g:
        a = gc.placeholder((2, 3), gc.int64)
        b = gc.placeholder((3,), gc.int64)
        out = a @ b
    assert out.type == gc.TensorType((2,), gc.int64)
    (value,) = _run(g, [a, b], [out], av, bv)
    assert value.dtype == np.int64
    np.testing.assert_array_equal(value, av @ bv)


# --- getitem ----------------------------------------------------------------------------

def _random_index(rng: np.random.Generator, ndim: int) -> tuple[object, ...]:
    items: list[object] = []
    axes_left = ndim - int(rng.integers(0, ndim + 1))  # leave some axes to the implicit "..."
    for _ in range(axes_left):
        kind = rng.integers(0, 4)
        if kind == 0:
            items.append(int(rng.integers(-4, 4)))
        else:
            parts = [None if rng.random() < 0.3 else int(rng.integers(-7, 7)) for _ in range(2)]
            step = None if rng.random() < 0.3 else int(rng.choice([-3, -2, -1, 1, 2, 3]))
            items.append(slice(parts[0], parts[1], step))
        if rng.random() < 0.2:
            items.append(None)
    if rng.random() < 0.5:
        items.insert(int(rng.integers(0, len(items) + 1)), Ellipsis)
    return tuple(items)


def test_getitem_matches_numpy_on_many_generated_indices() -> None:
    rng = np.random.default_rng(7)
    xv = rng.standard_normal((4, 5, 6))
    indices = [_random_index(rng, 3) for _ in range(150)]
    with gc.Graph("g") as g:
        x = gc.placeholder(xv.shape, gc.float64)
        outs = [x[ix] for ix in indices]
    values = _run(g, [x], outs, xv)
    for ix, node, value in zip(indices, outs, values):
        expected = xv[ix]
        assert node.shape == expected.shape, ix
        np.testing.assert_array_equal(value, expected, err_msg=str(ix))


def test_getitem_builds_only_the_nodes_it_needs() -> None:
    with gc.Graph("g"):
        x = gc.placeholder((4, 5))
        assert x[...] is x and x[:] is x and x[()] is x and x[::1, 0:5] is x
        assert x[1:].op == "slice" and x[1:].inputs == (x,)
        assert x[::-1].op == "reverse" and x[::-1].inputs == (x,)
        assert x[None].op == "reshape" and x[None].inputs == (x,)
        picked = x[2]
        assert picked.op == "reshape" and picked.inputs[0].op == "slice"
        assert picked.inputs[0].inputs == (x,)
        assert x[2].loc is not None and x[2].loc.file == __file__


def test_getitem_out_of_range_names_axis_size_index_and_line() -> None:
    with gc.Graph("g"):
        x = gc.placeholder((4, 5), name="x")
        line = _line() + 2
        with pytest.raises(gc.GraphcError) as info:
            x[:, -6]
    err = info.value
    assert err.op == "getitem" and err.loc is not None and err.loc.line == line
    assert "index -6" in str(err) and "axis 1" in str(err) and "size 5" in str(err)


@pytest.mark.parametrize(("make_index", "pattern"), [
    (lambda g: g["idx"], r"node %idx is advanced indexing.*gc\.take\(x, indices, axis\)"),
    (lambda g: np.array([0, 1]), r"ndarray is advanced indexing.*gc\.take"),
    (lambda g: [0, 1], r"list is advanced indexing.*gc\.take"),
    (lambda g: (0, [1]), r"list is advanced indexing"),
    (lambda g: True, r"bool index.*gc\.take"),
    (lambda g: 1.5, r"invalid index 1\.5 of type float"),
    (lambda g: slice(0, g["idx"]), r"slice stop must be a Python int"),
    (lambda g: slice(None, None, 0), r"slice step cannot be zero"),
    (lambda g: (Ellipsis, 0, Ellipsis), r"single Ellipsis"),
    (lambda g: (0, 0, 0), r"too many indices for x f32\[4,5\]: 3 indexed, rank 2"),
])
def test_bad_indices_are_graphc_errors_at_the_users_line(make_index, pattern: str) -> None:
    with gc.Graph("g") as g:
        x = gc.placeholder((4, 5), name="x")
        gc.placeholder((2,), gc.int32, name="idx")
        index = make_index(g)
        line = _line() + 2
        with pytest.raises(gc.GraphcError, match=pattern) as info:
            x[index]
    assert info.value.op == "getitem"
    assert info.value.loc is not None and info.value.loc.line == line


def test_iterating_a_node_yields_its_rows() -> None:
    xv = np.arange(6.0).reshape(3, 2)
    with gc.Graph("g") as g:
        x = gc.placeholder((3, 2), gc.float64)
        rows = list(x)
    assert [r.shape for r in rows] == [(2,)] * 3
    for row, expected in zip(_run(g, [x], rows, xv), xv):
        np.testing.assert_array_equal(row, expected)


# --- take / take_along_axis -------------------------------------------------------------

def test_take_gradient_sums_duplicate_indices() -> None:
    ids = np.array([0, 3, 0, -1, 0], np.int32)
    with gc.Graph("g") as g:
        x = gc.placeholder((4, 2), gc.float64)
        i = gc.placeholder((5,), gc.int32)
        dx = gc.grad(gc.sum(gc.take(x, i, axis=0)), x)
    (value,) = _run(g, [x, i], [dx], np.zeros((4, 2)), ids)
    counts = np.bincount(ids % 4, minlength=4).astype(np.float64)
    np.testing.assert_array_equal(value, np.repeat(counts[:, None], 2, axis=1))


def test_take_along_axis_gradient_sums_duplicates_and_broadcast() -> None:
    ids = np.array([[1, 1, 4], [0, 1, -4]], np.int64)
    with gc.Graph("g") as g:
        x = gc.placeholder((1, 5), gc.float64)
        i = gc.placeholder((2, 3), gc.int64)
        dx = gc.grad(gc.sum(gc.take_along_axis(x, i, axis=1)), x)
    (value,) = _run(g, [x, i], [dx], np.zeros((1, 5)), ids)
    np.testing.assert_array_equal(value, np.bincount(ids.ravel() % 5, minlength=5)[None] * 1.0)


def test_gather_second_derivative_is_built_from_the_gather() -> None:
    # d/dx of sum(take(x, i)**2) is take_grad(2 * take(x, i)); its gradient needs take again.
    xv = np.array([0.5, -1.0, 2.0])
    with gc.Graph("g") as g:
        x = gc.placeholder((3,), gc.float64)
        dx = gc.grad(gc.sum(gc.square(gc.take(x, np.array([2, 2, 0]), axis=0))), x)
        hv = gc.grad(gc.sum(dx * gc.constant(np.array([1.0, 10.0, 100.0]))), x)
    values = _run(g, [x], [dx, hv], xv)
    np.testing.assert_allclose(values[0], [2 * xv[0], 0.0, 4 * xv[2]])
    np.testing.assert_allclose(values[1], [2.0, 0.0, 400.0])


def test_constant_out_of_range_indices_fail_at_build_time_with_the_line() -> None:
    with gc.Graph("g"):
        x = gc.placeholder((4, 5))
        line = _line() + 2
        with pytest.raises(gc.GraphcError) as info:
            gc.take(x, [0, 5], axis=1)
        assert info.value.op == "take" and info.value.loc is not None
        assert info.value.loc.line == line
        assert "index 5" in str(info.value) and "axis 1 with size 5" in str(info.value)
        with pytest.raises(gc.GraphcError, match=r"take_along_axis: index -5 .*axis 0 "):
            gc.take_along_axis(x, np.full((1, 5), -5), axis=0)


@pytest.mark.parametrize("op", ["take", "take_along_axis"])
def test_run_time_out_of_range_indices_name_the_op(op: str) -> None:
    with gc.Graph("g") as g:
        x = gc.placeholder((2, 5), name="x")
        i = gc.placeholder((2, 1), gc.int32, name="i")
        out = gc.take(x, i, axis=1) if op == "take" else gc.take_along_axis(x, i, axis=1)
        line = _line() - 1
    f = gc.reference(g, inputs=[x, i], outputs=out)
    f(np.ones((2, 5), np.float32), np.array([[4], [-5]], np.int32))  # in range: fine
    with pytest.raises(gc.GraphcError) as info:
        f(np.ones((2, 5), np.float32), np.array([[1], [-6]], np.int32))
    assert info.value.op == op and info.value.loc is not None and info.value.loc.line == line
    assert "index -6 is out of range for axis 1 with size 5" in str(info.value)


def test_gather_build_errors() -> None:
    with gc.Graph("g"):
        x = gc.placeholder((4, 5), name="x")
        with pytest.raises(gc.DTypeError, match=r"take: indices: expected an integer dtype.*f32"):
            gc.take(x, gc.placeholder((2,)), axis=0)
        with pytest.raises(gc.DTypeError, match=r"take: indices: expected an integer dtype"):
            gc.take(x, [0.5, 1.0])
        with pytest.raises(gc.AttrError, match=r"take: axis 2 is out of range for rank 2"):
            gc.take(x, [0], axis=2)
        with pytest.raises(gc.ShapeError, match=r"take: x: expected rank >= 1"):
            gc.take(gc.placeholder(()), [0])
        with pytest.raises(gc.ShapeError, match=r"indices: expected rank 2 like x, got i32\[4\]"):
            gc.take_along_axis(x, np.zeros(4, np.int32), axis=0)
        with pytest.raises(gc.ShapeError, match=r"does not broadcast.*dim 1 \(2 vs 5\)"):
            gc.take_along_axis(x, np.zeros((4, 2), np.int32), axis=0)
        with pytest.raises(gc.ShapeError, match=r"take_grad: g: expected dims 0\.\.0"):
            gather.take_grad(x, np.zeros(3, np.int32), axis=0, size=4)


def test_take_with_a_python_int_drops_the_axis_and_keeps_int_indices() -> None:
    with gc.Graph("g"):
        x = gc.placeholder((4, 5))
        y = gc.take(x, -1, axis=1)
        assert y.shape == (4,) and y.inputs[1].dtype == gc.int32
        assert y.attrs["axis"] == 1 and gc.take(x, [0], axis=-1).attrs["axis"] == 1


# --- one_hot ----------------------------------------------------------------------------

def test_one_hot_out_of_range_rows_are_zero_and_arrays_are_accepted() -> None:
    ids = np.array([[0, 3], [-1, 2]], np.int64)
    with gc.Graph("g") as g:
        hot = gc.one_hot(ids, 3, dtype=gc.bool_, axis=1, name="hot")
    assert hot.name == "hot" and hot.type == gc.TensorType((2, 3, 2), gc.bool_)
    (value,) = _run(g, [], [hot])
    expected = np.zeros((2, 3, 2), bool)
    expected[0, 0, 0] = expected[1, 2, 1] = True
    np.testing.assert_array_equal(value, expected)


def test_one_hot_errors() -> None:
    with gc.Graph("g"):
        i = gc.placeholder((3,), gc.int32)
        with pytest.raises(gc.AttrError, match=r"one_hot: depth must be a non-negative int"):
            gc.one_hot(i, -1)
        with pytest.raises(gc.AttrError, match=r"one_hot: axis 2 is out of range for rank 2"):
            gc.one_hot(i, 4, axis=2)
        line = _line() + 2
        with pytest.raises(gc.DTypeError) as info:
            gc.one_hot(gc.placeholder((3,)), 4)
        assert info.value.loc is not None and info.value.loc.line == line
