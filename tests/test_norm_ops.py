"""The fused norms (`gc.layer_norm`, `gc.rms_norm`, their gradient ops) beyond the op table:
compiled float32 statistics against float64 numpy (long rows, a mean far from 0), one and two
threads giving the same bits, the gradient graph using the fused ops, builder errors, and
the `gc.nn.LayerNorm` / `gc.nn.RMSNorm` layers against PyTorch (forward and gradients)."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.options import CompileOptions


def _ln64(x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    x = x.astype(np.float64)
    xc = x - x.mean(axis=-1, keepdims=True)
    return xc / np.sqrt((xc * xc).mean(axis=-1, keepdims=True) + eps)


def _rms64(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)


def _compiled(build: object, x: np.ndarray, threads: int = 1) -> np.ndarray:
    with gc.Graph("norm") as g:
        xp = gc.placeholder(x.shape, gc.DType.of(x.dtype), name="x")
        out = build(xp)  # type: ignore[operator]
    return gc.compile(g, [xp], out, options=CompileOptions(threads=threads))(x)


@pytest.mark.parametrize("n", [1024, 5000])  # 5000: several reduction blocks and a tail
@pytest.mark.parametrize("offset", [0.0, 300.0])
def test_float32_statistics_are_accurate(n: int, offset: float) -> None:
    # offset 300: |mean| = 300·std, where var = E[x²] - mean² in float32 would keep no digit
    # of the variance. The float32 result can be no better than x - mean's rounding (the
    # mean's own, ulp(300)/2 = 1.5e-5 of one std, and its sum's): two ulp(300) allowed.
    x = (offset + np.random.default_rng(0).standard_normal((8, n))).astype(np.float32)
    for build, exact in ((gc.layer_norm, _ln64), (gc.rms_norm, _rms64)):
        got = _compiled(build, x)
        np.testing.assert_allclose(got, exact(x), rtol=5e-7, atol=5e-7 + offset * 2e-7)


def test_same_bits_on_one_and_two_threads() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 256)).astype(np.float32)  # enough rows to be split
    gamma, beta = rng.standard_normal((2, 256)).astype(np.float32)

    def forward_and_grad(xp: gc.Node) -> gc.Node:
        y = gc.layer_norm(xp, gamma, beta) + gc.rms_norm(xp, gamma)
        (dx,) = gc.grad(gc.sum(y * y), [xp])
        return dx

    one = _compiled(forward_and_grad, x, threads=1)
    two = _compiled(forward_and_grad, x, threads=2)
    np.testing.assert_array_equal(one, two)


def test_gradient_uses_the_fused_ops() -> None:
    with gc.Graph("g") as g:
        x = gc.placeholder((4, 8), gc.float32, name="x")
        gamma = gc.variable(np.ones(8, np.float32), name="gamma")
        beta = gc.variable(np.zeros(8, np.float32), name="beta")
        w = gc.variable(np.ones(8, np.float32), name="w")
        loss = gc.sum(gc.layer_norm(x, gamma, beta) + gc.rms_norm(x, w))
        grads = gc.grad(loss, [x, gamma, beta, w])
    ops = {n.op for n in g.nodes}
    assert {"layer_norm", "layer_norm_grad", "rms_norm", "rms_norm_grad"} <= ops
    assert not {"rsqrt", "square"} & ops  # no composite statistics left
    assert [d.shape for d in grads] == [(4, 8), (8,), (8,), (8,)]


def _raises(cls: type[gc.GraphcError], fn: object, *words: str) -> None:
    with pytest.raises(cls) as info:
        fn()  # type: ignore[operator]
    text = str(info.value)
    for word in words:
        assert word in text, f"{word!r} not in {text!r}"


def test_builder_errors_name_op_argument_expected_and_received() -> None:
    with gc.Graph("e"):
        x = gc.placeholder((4, 2, 8), gc.float32, name="x")
        xi = gc.placeholder((4, 8), gc.int32, name="xi")
        _raises(gc.DTypeError, lambda: gc.rms_norm(xi), "rms_norm", "x", "float", "i32[4,8]")
        _raises(gc.ShapeError, lambda: gc.rms_norm(x, np.ones(2, np.float32)),
                "rms_norm", "gamma", "f32[8]", "f32[2]")
        _raises(gc.DTypeError, lambda: gc.layer_norm(x, beta=np.ones(8, np.float64)),
                "layer_norm", "beta", "f32[8]", "f64[8]")
        _raises(gc.AttrError, lambda: gc.rms_norm(x, axis=1), "rms_norm", "trailing", "1")
        _raises(gc.AttrError, lambda: gc.layer_norm(x, eps=-1.0), "layer_norm", "eps", "-1")


# --- layers against PyTorch ---------------------------------------------------------------

def _layer_vs_torch(layer: gc.nn.Layer, tlayer: object, x: np.ndarray) -> None:
    """Forward, dx and the weights' gradients of a scalar loss sum(y * w), compiled float32,
    against the torch module with the same weights."""
    torch = pytest.importorskip("torch")
    w = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
    with gc.Graph("layer") as g:
        xp = gc.placeholder(x.shape, gc.float32, name="x")
        y = layer(xp)
        params = layer.variables
        grads = gc.grad(gc.sum(y * gc.constant(w)), [xp, *params])
    got = gc.compile(g, [xp], [y, *grads])(x)
    tx = torch.from_numpy(x).requires_grad_(True)
    ty = tlayer(tx)  # type: ignore[operator]
    (ty * torch.from_numpy(w)).sum().backward()
    np.testing.assert_allclose(got[0], ty.detach().numpy(), rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(got[1], tx.grad.numpy(), rtol=1e-4, atol=2e-5)
    tparams = [p for p in tlayer.parameters()]  # type: ignore[attr-defined]
    assert len(tparams) == len(params)
    for mine, theirs in zip(got[2:], tparams):
        np.testing.assert_allclose(mine, theirs.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(6, 32), (2, 3, 4, 5)])
def test_layer_norm_layer_matches_torch(shape: tuple[int, ...]) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    k = 1 if len(shape) == 2 else 2
    normalized = shape[len(shape) - k:]
    # Random weights (not 1 and 0), so that gamma and beta show in the gradients.
    gamma, beta = rng.standard_normal((2, *normalized)).astype(np.float32)
    tlayer = torch.nn.LayerNorm(list(normalized))
    with torch.no_grad():
        tlayer.weight.copy_(torch.from_numpy(gamma))
        tlayer.bias.copy_(torch.from_numpy(beta))
    layer = gc.nn.LayerNorm(axis=-1 if k == 1 else (-2, -1))
    _layer_vs_torch(_Preset(layer, {"gamma": gamma, "beta": beta}), tlayer, x)


@pytest.mark.parametrize("scale", [True, False])
def test_rms_norm_layer_matches_torch(scale: bool) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 7, 48)).astype(np.float32)
    gamma = rng.standard_normal(48).astype(np.float32)
    tlayer = torch.nn.RMSNorm(48, eps=1e-6, elementwise_affine=scale)
    if scale:
        with torch.no_grad():
            tlayer.weight.copy_(torch.from_numpy(gamma))
    layer = gc.nn.RMSNorm(scale=scale)
    _layer_vs_torch(_Preset(layer, {"gamma": gamma} if scale else {}), tlayer, x)


class _Preset(gc.nn.Layer):
    """`inner` with its weights set to `values` once built (in the graph it is called in)."""

    def __init__(self, inner: gc.nn.Layer, values: dict[str, np.ndarray]):
        super().__init__(name=f"preset_{inner.name}")
        self.inner, self.values = inner, values

    @property
    def variables(self) -> list[gc.Node]:
        return [self.inner.weights[s] for s in self.values]

    def build(self, x: gc.Node) -> None:
        pass

    def forward(self, x: gc.Node, training: bool, scope: gc.nn.Scope | None) -> gc.Node:
        y = self.inner(x)
        for short, value in self.values.items():
            node = self.inner.weights[short]
            node.graph.variables[node.name] = value
        return y
