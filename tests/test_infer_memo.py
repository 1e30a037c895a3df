"""OpDef.infer_type remembers the types it inferred (`graphc.ir.opdef._inferred`).

Every pass rebuilds its graph, so a compile asks each type rule the same question many
times; the memo must answer exactly as the rule would: the same type for the same (op,
operand types, attributes), never a remembered answer for attributes that are equal but of
another Python type, never a remembered failure, and it stays bounded.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import graphc as gc
from graphc.errors import GraphcError
from graphc.ir import opdef
from graphc.ir.types import Attrs, DType, TensorType
from graphc.ops import registry


def _counting(name: str, fail: bool = False) -> tuple[opdef.OpDef, list[tuple]]:
    """A copy of op `name` whose type rule records each call (and fails if `fail`)."""
    op = registry.OPS[name]
    calls: list[tuple] = []

    def infer(types, attrs):
        calls.append((tuple(types), attrs))
        if fail:
            raise GraphcError("refused")
        return op.infer(types, attrs)

    return dataclasses.replace(op, infer=infer), calls


@pytest.fixture(autouse=True)
def _empty_memo():
    opdef._inferred.clear()
    yield
    opdef._inferred.clear()


def test_a_repeated_question_is_answered_from_the_memo():
    op, calls = _counting("relu")
    t = (TensorType((3, 7), DType.float32),)
    first = op.infer_type(t, Attrs({}))
    second = op.infer_type(t, Attrs({}))
    assert first == second == TensorType((3, 7), DType.float32)
    assert len(calls) == 1
    # another shape is another question
    assert op.infer_type((TensorType((7,), DType.float32),), Attrs({})).shape == (7,)
    assert len(calls) == 2


def test_equal_attributes_of_another_python_type_are_not_shared():
    op, calls = _counting("sum")
    t = (TensorType((2, 3), DType.float32),)
    op.infer_type(t, Attrs({"axes": (1,), "keepdims": True}))
    # 1 == True and hashes alike, but sum's rule refuses a keepdims that is not a bool:
    # a memo keyed on the values alone would answer for it
    with pytest.raises(GraphcError, match="keepdims must be a bool"):
        op.infer_type(t, Attrs({"axes": (1,), "keepdims": 1}))
    assert len(calls) == 2


def test_failures_are_not_remembered():
    op, calls = _counting("relu", fail=True)
    t = (TensorType((5,), DType.float32),)
    for _ in range(2):
        with pytest.raises(GraphcError, match="refused"):
            op.infer_type(t, Attrs({}))
    assert len(calls) == 2
    assert not opdef._inferred


def test_unfrozen_attributes_are_not_memoized():
    op, calls = _counting("relu")
    t = (TensorType((4,), DType.float32),)
    op.infer_type(t, {})
    op.infer_type(t, {})
    assert len(calls) == 2


def test_the_memo_stays_bounded(monkeypatch):
    monkeypatch.setattr(opdef, "_INFERRED_LIMIT", 16)
    op = registry.OPS["relu"]
    for n in range(1, 60):
        op.infer_type((TensorType((n,), DType.float32),), Attrs({}))
        assert len(opdef._inferred) <= 16


def test_graphs_built_and_compiled_with_the_memo_warm_are_unchanged():
    """The same graph built twice (the second time every type comes from the memo) has the
    same types and computes the same values."""

    def build():
        with gc.Graph("memo") as g:
            x = gc.placeholder((4, 6), gc.float32, name="x")
            y = gc.sum(gc.relu(x) * 2.0, axis=1, keepdims=True)
        return g, x, y

    g1, _, _ = build()
    g2, x2, y2 = build()
    assert [n.type for n in g1.nodes] == [n.type for n in g2.nodes]


    v = np.arange(24, dtype=np.float32).reshape(4, 6) - 10
    out = gc.compile(g2, [x2], [y2], options=gc.CompileOptions(cache_dir=None))(v)
    np.testing.assert_allclose(np.asarray(out[0] if isinstance(out, (list, tuple)) else out),
                               (np.maximum(v, 0) * 2).sum(axis=1, keepdims=True))
