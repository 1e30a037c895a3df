"""The attention pass: hand-written softmax(q @ kᵀ · s + mask) @ v becomes the fused op (with
the same results), in each spelling users and exporters write; graphs that reuse an
intermediate (training graphs) keep the hand-written form."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc

SHAPE = (2, 3, 6, 4)


def _ops(exe: gc.Executable) -> set[str]:
    return {n.op for n in exe.compiled_graph.nodes}


def _compare(build, causal_hint: bool | None = None) -> gc.Executable:
    """Compile `build(q, k, v)` and check it against the reference; return the executable."""
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(SHAPE) for _ in range(3)]
    with gc.Graph("hand") as g:
        q, k, v = (gc.placeholder(SHAPE, "float64", name=n) for n in "qkv")
        out = build(q, k, v)
    exe = gc.compile(g, [q, k, v], out)
    expected = gc.reference(g, [q, k, v], out)(*arrays)
    np.testing.assert_allclose(exe(*arrays), expected, rtol=1e-12, atol=1e-12)
    if causal_hint is not None:
        (node,) = [n for n in exe.compiled_graph.nodes if n.op == "attention"]
        assert node.attrs["causal"] is causal_hint
    return exe


CAUSAL_KEEP = np.tril(np.ones((6, 6), bool))
CAUSAL_ADD = np.where(CAUSAL_KEEP, 0.0, -np.inf)
PAD = np.array([True, True, True, False, True, False])


@pytest.mark.parametrize("spelling", [
    lambda q, k, v: gc.softmax(q @ gc.transpose(k, (0, 1, 3, 2)) * 0.5) @ v,
    lambda q, k, v: gc.softmax(0.5 * (q @ gc.transpose(k, (0, 1, 3, 2)))) @ v,
    lambda q, k, v: gc.softmax(gc.matmul(q, k, transpose_b=True) / 2.0) @ v,
    lambda q, k, v: gc.softmax(gc.matmul(q, k, transpose_b=True)) @ v,
    lambda q, k, v: gc.softmax(gc.matmul(q, k, transpose_b=True) * 0.5 + PAD * 1.5) @ v,
    lambda q, k, v: gc.softmax(gc.where(PAD, gc.matmul(q, k, transpose_b=True), -np.inf)) @ v,
    lambda q, k, v: gc.softmax(gc.where(~gc.constant(PAD), -np.inf,
                                        gc.matmul(q, k, transpose_b=True))) @ v,
    lambda q, k, v: gc.softmax((q * 0.7) @ (gc.transpose(k, (0, 1, 3, 2)) * 0.7) + PAD * 1.0) @ v,
], ids=["mul", "mul_left", "div", "unscaled", "add_mask", "where_keep", "masked_fill",
        "onnx_export"])
def test_spellings_become_the_fused_op(spelling) -> None:
    exe = _compare(spelling)
    assert "attention" in _ops(exe) and "softmax" not in _ops(exe)


@pytest.mark.parametrize("spelling", [
    lambda q, k, v: gc.softmax(gc.where(CAUSAL_KEEP, gc.matmul(q, k, transpose_b=True) * 0.5,
                                        -np.inf)) @ v,
    lambda q, k, v: gc.softmax(gc.matmul(q, k, transpose_b=True) * 0.5 + CAUSAL_ADD) @ v,
    lambda q, k, v: gc.softmax(gc.where(gc.iota((6, 6), 0) >= gc.iota((6, 6), 1),
                                        gc.matmul(q, k, transpose_b=True), -np.inf)) @ v,
], ids=["where", "add", "iota"])
def test_a_causal_mask_becomes_causal(spelling) -> None:
    exe = _compare(spelling, causal_hint=True)
    assert not any(n.op == "attention" and len(n.inputs) > 3 for n in exe.compiled_graph.nodes)


def test_a_computed_causal_mask_too_big_to_fold_becomes_causal() -> None:
    t = 300  # 90,000 elements: above constant folding's limit, so the iotas stay computed
    with gc.Graph("big") as g:
        q = gc.placeholder((1, 1, t, 4))
        keep = gc.iota((t, t), 0) >= gc.iota((t, t), 1)
        out = gc.softmax(gc.where(keep, gc.matmul(q, q, transpose_b=True), -np.inf)) @ q
    (node,) = [n for n in gc.compile(g, [q], out).compiled_graph.nodes if n.op == "attention"]
    assert node.attrs["causal"] and len(node.inputs) == 3


def test_training_graph_keeps_the_hand_written_form() -> None:
    """The gradient reads the probabilities: fusing would compute them twice."""
    with gc.Graph("train") as g:
        q, k, v = (gc.placeholder(SHAPE, "float64", name=n) for n in "qkv")
        out = gc.softmax(gc.matmul(q, k, transpose_b=True) * 0.5) @ v
        dq = gc.grad(gc.sum(out), [q])[0]
    exe = gc.compile(g, [q, k, v], [out, dq])
    assert "softmax" in _ops(exe) and "attention" not in _ops(exe)


def test_broadcasting_operands_are_left_alone() -> None:
    with gc.Graph("bcast") as g:
        q = gc.placeholder(SHAPE, "float64")
        k = gc.placeholder((1, 3, 6, 4), "float64")
        out = gc.softmax(gc.matmul(q, k, transpose_b=True)) @ k
    assert "attention" not in _ops(gc.compile(g, [q, k], out))


def test_the_pass_can_be_left_out() -> None:
    with gc.Graph("off") as g:
        q = gc.placeholder(SHAPE, "float64")
        out = gc.softmax(gc.matmul(q, q, transpose_b=True)) @ q
    opts = gc.CompileOptions(pipeline="simplify,constant_fold,cse,prune")
    assert "attention" not in _ops(gc.compile(g, [q], out, options=opts))
