"""Graph building: names, source locations, weak scalar typing, and build-time errors."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import graphc as gc


def _line() -> int:
    """The caller's line number (to compare with err.loc.line)."""
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    return frame.f_back.f_lineno


def test_nodes_record_the_user_line_and_file() -> None:
    with gc.Graph("g"):
        x = gc.placeholder((2, 3), name="x"); line = _line()  # noqa: E702
        y = gc.exp(x); yline = _line()  # noqa: E702
    assert x.loc is not None and x.loc.line == line and x.loc.file == __file__
    assert y.loc is not None and y.loc.line == yline


def test_dtype_mismatch_names_op_operands_types_and_line() -> None:
    with gc.Graph("g"):
        a = gc.placeholder((2, 3), gc.float32, name="a")
        b = gc.placeholder((2, 3), gc.float64, name="b")
        with pytest.raises(gc.DTypeError) as info:
            line = _line() + 1
            a + b
    err = info.value
    assert err.op == "add" and err.loc is not None and err.loc.line == line
    text = str(err)
    assert "f32[2,3]" in text and "f64[2,3]" in text and "gc.cast" in text
    assert f"{__file__}:{line}" in text


def test_broadcast_error_names_both_shapes() -> None:
    with gc.Graph("g"):
        a = gc.placeholder((2, 3))
        b = gc.placeholder((4,))
        with pytest.raises(gc.ShapeError, match=r"f32\[2,3\].*f32\[4\]"):
            gc.mul(a, b)


def test_unary_float_only_ops_reject_ints() -> None:
    with gc.Graph("g"):
        i = gc.placeholder((3,), gc.int32)
        with pytest.raises(gc.DTypeError, match=r"exp.*float.*i32\[3\]"):
            gc.exp(i)


def test_scalars_are_weakly_typed() -> None:
    with gc.Graph("g"):
        x = gc.placeholder((3,), gc.float64)
        i = gc.placeholder((3,), gc.int32)
        assert (x * 2).dtype == gc.float64
        assert (2.5 - x).dtype == gc.float64
        assert (i + 1).dtype == gc.int32
        with pytest.raises(gc.DTypeError):
            i * 2.5


def test_numpy_array_on_the_left_defers_to_the_node() -> None:
    with gc.Graph("g") as g:
        x = gc.placeholder((3,), gc.float32, name="x")
        y = np.ones(3, np.float32) + x
    assert isinstance(y, gc.Node) and y.op == "add"
    out = gc.reference(g, [x], y)(np.arange(3, dtype=np.float32))
    np.testing.assert_array_equal(out, [1, 2, 3])


def test_names_are_unique_and_generated() -> None:
    with gc.Graph("g") as g:
        x = gc.placeholder((1,), name="x")
        a = gc.exp(x)
        b = gc.exp(x)
        with pytest.raises(gc.GraphNameError, match="already used"):
            gc.placeholder((1,), name="x")
        with pytest.raises(gc.GraphNameError, match="invalid node name"):
            gc.exp(x, name="bad name")
    assert a.name != b.name and g[a.name] is a


def test_mixing_graphs_is_an_error() -> None:
    with gc.Graph("one"):
        x = gc.placeholder((2,))
    with gc.Graph("two"):
        y = gc.placeholder((2,))
        with pytest.raises(gc.GraphStructureError, match="belongs to graph 'two', not to 'one'"):
            x + y


def test_no_current_graph() -> None:
    with pytest.raises(gc.GraphStructureError, match=r"with gc\.Graph"):
        gc.placeholder((2,))


def test_truth_value_of_a_node_is_an_error() -> None:
    with gc.Graph("g"):
        x = gc.placeholder((2,))
        with pytest.raises(gc.GraphcError, match=r"gc\.where"):
            if x > 0:
                pass


def test_variables_hold_live_arrays_and_check_assignment() -> None:
    with gc.Graph("g") as g:
        w = gc.variable(np.ones((2, 2)), name="w", dtype=gc.float32)
    arr = g.variables["w"]
    assert arr.dtype == np.float32 and w.type == gc.TensorType((2, 2), gc.float32)
    g.variables["w"] = np.full((2, 2), 3.0)
    assert g.variables["w"] is arr and float(arr[0, 0]) == 3.0
    with pytest.raises(gc.ShapeError):
        g.variables["w"] = np.zeros(3)
    with pytest.raises(gc.GraphNameError):
        g.variables["nope"]


def test_initializers_are_seeded_and_scaled() -> None:
    a = gc.init.he_normal((400, 300), seed=3)
    b = gc.init.he_normal((400, 300), seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32
    assert abs(a.std() - np.sqrt(2 / 400)) < 0.01 * np.sqrt(2 / 400) * 5
    u = gc.init.glorot_uniform((100, 50), seed=1)
    limit = np.sqrt(6 / 150)
    assert u.min() >= -limit and u.max() <= limit and u.max() > 0.9 * limit
    k = gc.init.kaiming_uniform((8, 4, 3, 3), seed=0)  # fan_in = 4*3*3
    assert k.max() <= np.sqrt(6 / 36)
    assert gc.init.xavier_normal is gc.init.glorot_normal
    assert not np.array_equal(gc.init.normal((5,), seed=0), gc.init.normal((5,), seed=1))
    np.testing.assert_array_equal(gc.init.zeros((2,)), [0, 0])
    np.testing.assert_array_equal(gc.init.ones((2,), gc.float64), [1, 1])


def test_unsupported_dtype() -> None:
    with gc.Graph("g"), pytest.raises(gc.DTypeError, match="unsupported dtype"):
        gc.constant(np.zeros(3, np.complex64))


def test_constant_without_copy_keeps_a_contiguous_array_read_only() -> None:
    """copy=False keeps a C-contiguous array of a graphc dtype itself (made read-only); any
    other value is copied as with copy=True."""
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    with gc.Graph("c") as g:
        kept = gc.constant(a, copy=False)
        copied = gc.constant(a.T, copy=False)  # not C-contiguous
        cast = gc.constant(a, "float64", copy=False)  # a dtype asked for
    assert g.constants[kept.name] is a and not a.flags.writeable
    assert g.constants[copied.name] is not a and g.constants[copied.name].flags.c_contiguous
    assert g.constants[cast.name].dtype == np.float64
