"""`check_grad`: symbolic gradients against central finite differences, in float64.

The tool builds ``L = sum(fn(*inputs) * W)`` with a fixed random `W`, so any output shape
reduces to a scalar whose gradient exercises every output element. For each differentiable
input (float placeholders, and the float variables `fn` creates) and each of a few random
unit directions `d`, it compares the symbolic directional derivative ``<dL/dx, d>`` with
``(L(x + eps d) - L(x - eps d)) / (2 eps)``. Both run on the reference interpreter.

Relative error is ``|fd - sym| / max(|fd|, |sym|, floor)``; the floor keeps a zero
derivative (a flat region) from dividing round-off by zero.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from graphc import builder
from graphc.errors import GraphcError
from graphc.ir import DType, Graph, Node
from graphc.ops import reduce
from graphc.passes.autodiff import grad
from graphc.runtime.reference import reference


@dataclass
class GradCheckResult:
    """Worst relative and absolute error per checked input (by node name)."""

    rel_errors: dict[str, float] = field(default_factory=dict)
    abs_errors: dict[str, float] = field(default_factory=dict)

    @property
    def worst(self) -> float:
        return max(self.rel_errors.values(), default=0.0)

    def ok(self, tol: float = 1e-6) -> bool:
        return self.worst <= tol

    def assert_ok(self, tol: float = 1e-6) -> None:
        if not self.ok(tol):
            raise AssertionError(f"gradient check failed (tol {tol:g}): {self}")

    def __str__(self) -> str:
        parts = [f"{k}: rel {v:.2e} abs {self.abs_errors[k]:.2e}"
                 for k, v in self.rel_errors.items()]
        return "; ".join(parts) or "no differentiable inputs"


def check_grad(
    fn: Callable[..., Node],
    args: Sequence[np.ndarray],
    *,
    eps: float = 1e-6,
    directions: int = 3,
    seed: int = 0,
    floor: float = 1e-7,
    check_variables: bool = True,
) -> GradCheckResult:
    """Compare symbolic and numeric gradients of `fn` at `args` (see the module docstring).

    `fn` receives one placeholder per arg (float args as float64, other dtypes unchanged)
    and returns a node; it may create variables (layers do), which are checked too when
    `check_variables` and float64.
    """
    # A stream of its own, so W and the directions never coincide with the caller's data
    # drawn from default_rng(seed).
    rng = np.random.default_rng([seed, 0x67C])
    arrays = [np.asarray(a) for a in args]
    arrays = [a.astype(np.float64) if a.dtype.kind == "f" else a for a in arrays]
    with Graph("check_grad") as g:
        phs = [builder.placeholder(a.shape, DType.of(a.dtype), name=f"arg{i}")
               for i, a in enumerate(arrays)]
        out = fn(*phs)
        if not isinstance(out, Node) or not out.dtype.is_float:
            raise GraphcError("check_grad: fn must return a float node", op="check_grad")
        weights = builder.constant(rng.standard_normal(out.shape), dtype=out.dtype)
        loss = reduce.sum(out * weights)
        targets: list[Node] = [p for p in phs if p.dtype.is_float]
        if check_variables:
            for v in g.variable_nodes:
                if v.dtype.is_float and v.attrs.get("trainable", True):
                    if v.dtype != DType.float64:
                        raise GraphcError(f"variable %{v.name} is {v.type}; check gradients "
                                          "in float64", op="check_grad")
                    targets.append(v)
        grads = grad(loss, targets) if targets else []
    evaluate_loss = reference(g, inputs=phs, outputs=loss)
    evaluate_grads = reference(g, inputs=phs, outputs=list(grads))
    feeds = {p.name: a for p, a in zip(phs, arrays)}
    symbolic = evaluate_grads(**feeds)

    result = GradCheckResult()
    for target, sym_grad in zip(targets, symbolic):
        worst_rel = worst_abs = 0.0
        for _ in range(directions):
            d = rng.standard_normal(target.shape)
            d /= max(float(np.linalg.norm(d)), 1e-300)
            fd = _directional_fd(g, target, feeds, d, eps, evaluate_loss)
            sym = float(np.sum(sym_grad * d))
            abs_err = abs(fd - sym)
            worst_abs = max(worst_abs, abs_err)
            worst_rel = max(worst_rel, abs_err / max(abs(fd), abs(sym), floor))
        result.rel_errors[target.name] = worst_rel
        result.abs_errors[target.name] = worst_abs
    return result


def _directional_fd(
    g: Graph,
    target: Node,
    feeds: dict[str, np.ndarray],
    d: np.ndarray,
    eps: float,
    evaluate_loss: Callable[..., np.ndarray],
) -> float:
    if target.op == "variable":
        value = g.variables[target.name]
        saved = value.copy()
        try:
            value[...] = saved + eps * d
            plus = float(evaluate_loss(**feeds))
            value[...] = saved - eps * d
            minus = float(evaluate_loss(**feeds))
        finally:
            value[...] = saved
    else:
        base = feeds[target.name]
        plus = float(evaluate_loss(**{**feeds, target.name: base + eps * d}))
        minus = float(evaluate_loss(**{**feeds, target.name: base - eps * d}))
    return (plus - minus) / (2 * eps)
