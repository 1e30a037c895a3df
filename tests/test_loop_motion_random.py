"""Random scan bodies through loop_hoist and loop_sink: each drawn cell (which products read
the x slice, the carry or both, invariant factors, activations, sum and product
accumulators, stacked outputs, direction) is compiled and checked against the reference
interpreter in float64, forward and gradients, and against the graph compiled without the
two passes."""

from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphc as gc
from graphc.passes.manager import DEFAULT_PIPELINE

OPTIONS = gc.CompileOptions(cache_dir=None)
WITHOUT = dataclasses.replace(
    OPTIONS, pipeline=DEFAULT_PIPELINE.replace("loop_hoist,", "").replace("loop_sink,", ""))
B, F, H = 3, 4, 5
ACTS = (gc.tanh, gc.sigmoid, gc.relu, lambda v: v)


@st.composite
def cells(draw: st.DrawFn) -> dict:
    return {
        "steps": draw(st.integers(2, 6)),
        "reverse": draw(st.booleans()),
        "input_product": draw(st.sampled_from(["xw", "xw_scaled", "none"])),
        "recurrent": draw(st.booleans()),
        "act": draw(st.integers(0, len(ACTS) - 1)),
        "sum_acc": draw(st.booleans()),
        "prod_acc": draw(st.sampled_from(["none", "plain", "scaled", "carry_second"])),
        "stack": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
    }


def _build(c: dict) -> tuple[gc.Graph, list[np.ndarray]]:
    rng = np.random.default_rng(c["seed"])
    steps = c["steps"]
    with gc.Graph("cell") as g:
        xs = gc.placeholder((steps, B, F), gc.float64, name="xs")
        gate = gc.placeholder((B, H), gc.float64, name="gate")
        w = gc.variable(rng.normal(size=(F, H)) / 2, name="w")
        u = gc.variable(rng.normal(size=(H, H)) / 3, name="u")

        def step(carry: tuple, x: gc.Node) -> tuple:
            h, s, m = carry
            z = h
            if c["input_product"] == "xw":
                z = z + x @ w
            elif c["input_product"] == "xw_scaled":
                z = z + (x * 0.5) @ (w * gate[0:1, 0:1])
            if c["recurrent"]:
                z = z + h @ u
            z = ACTS[c["act"]](z)
            if c["sum_acc"]:
                s = s + gc.sum(z * gate, axis=0)
            if c["prod_acc"] == "plain":
                m = m + gc.matmul(x, z, transpose_a=True)
            elif c["prod_acc"] == "scaled":
                m = m + gc.matmul(x, z * gate, transpose_a=True) * 0.25
            elif c["prod_acc"] == "carry_second":
                m = gc.matmul(x, z, transpose_a=True) + m
            return (z, s, m), (z * 2.0 if c["stack"] else None)

        init = (gc.constant(np.zeros((B, H))), gc.constant(np.ones(H)),
                gc.constant(np.zeros((F, H))))
        (h, s, m), ys = gc.scan(step, init, xs, reverse=c["reverse"])
        loss = gc.sum(h * h) + gc.sum(s) + gc.sum(m * m)
        if ys is not None:
            loss = loss + gc.sum(ys)
        outs = [h, s, m, loss, *gc.grad(loss, [w, u, xs, gate])]
        g.add_signature("f", [xs, gate], outs)
    return g, [rng.normal(size=(steps, B, F)), rng.normal(size=(B, H))]


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(cells())
def test_random_cells_compile_to_the_reference(c: dict) -> None:
    g, args = _build(c)
    expected = gc.reference(g, signature="f")(*args)
    got = gc.compile(g, signature="f", options=OPTIONS)(*args)
    plain = gc.compile(g, signature="f", options=WITHOUT)(*args)
    for a, b, p in zip(got, expected, plain):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-11)
        np.testing.assert_allclose(a, p, rtol=1e-11, atol=1e-11)
