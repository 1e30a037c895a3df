"""Recurrent layers unrolled over the (static) sequence length: SimpleRNN, LSTM, GRU.

Input (batch, time, features), batch-first; the initial state is zero. The output is the
last hidden state (batch, units), or every hidden state (batch, time, units) with
`return_sequences`. The graph holds one copy of the cell per time step, so the sequence
length is part of the compiled program (and its compile time grows with it).

The input projection of all time steps is one GEMM, ``x.reshape(B*T, F) @ kernel + bias``;
each step then adds ``h @ recurrent_kernel``. At t = 0 the state is zero, so the first
step skips that product.

Equations and weight layouts (G gates stacked along the last axis of kernel (F, G*U),
recurrent_kernel (U, G*U) and bias (G*U,)), chosen to match PyTorch's modules so that
weights copy over (kernel = weight_ih.T, recurrent_kernel = weight_hh.T):

- SimpleRNN: ``h = act(x W + b + h R)``; b = PyTorch's b_ih + b_hh.
- LSTM (gates i, f, g, o): ``c = σ(f)·c + σ(i)·tanh(g)``, ``h = σ(o)·tanh(c)``;
  b = b_ih + b_hh; the forget-gate bias starts at 1 (`unit_forget_bias`, as Keras).
- GRU (gates r, z, n; PyTorch's form, Keras' ``reset_after=True``):
  ``r = σ(x W_r + b_r + h R_r + rb_r)``, ``z = σ(x W_z + b_z + h R_z + rb_z)``,
  ``n = tanh(x W_n + b_n + r·(h R_n + rb_n))``, ``h = (1 − z)·n + z·h``; b = b_ih,
  rb (``recurrent_bias``) = b_hh.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from graphc.errors import AttrError, ShapeError
from graphc.ir import DType, Node
from graphc.nn import activations, regularizers
from graphc.nn.initializers import InitializerLike
from graphc.nn.layer import Layer, Scope
from graphc.ops import elementwise as ew
from graphc.ops import join, layout, linalg

__all__ = ["GRU", "LSTM", "SimpleRNN"]


class _Recurrent(Layer):
    gates: int = 1

    def __init__(self, units: int, *, return_sequences: bool = False,
                 kernel_initializer: InitializerLike = "glorot_uniform",
                 recurrent_initializer: InitializerLike = "orthogonal",
                 bias_initializer: InitializerLike = "zeros",
                 kernel_regularizer: Any = None, recurrent_regularizer: Any = None,
                 bias_regularizer: Any = None, name: str | None = None,
                 dtype: DType | str | None = None, seed: int | None = None):
        super().__init__(name, dtype, seed)
        owner = type(self).__name__
        if isinstance(units, bool) or not isinstance(units, int) or units < 1:
            raise AttrError(f"units must be an int >= 1, got {units!r}", op=owner)
        self.units = units
        self.return_sequences = bool(return_sequences)
        self.kernel_initializer = kernel_initializer
        self.recurrent_initializer = recurrent_initializer
        self.bias_initializer = bias_initializer
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = regularizers.get(recurrent_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)

    def build(self, x: Node) -> None:
        if x.ndim != 3 or x.shape[1] < 1:
            raise ShapeError(f"x: expected (batch, time, features) with time >= 1, got "
                             f"{x.type}", op=type(self).__name__)
        dtype = self.weight_dtype(x)
        width = self.gates * self.units
        self.add_weight("kernel", (x.shape[2], width), self.kernel_initializer, dtype,
                        regularizer=self.kernel_regularizer)
        self.add_weight("recurrent_kernel", (self.units, width), self._recurrent_init(), dtype,
                        regularizer=self.recurrent_regularizer)
        self.add_weight("bias", (width,), self._bias_init(), dtype,
                        regularizer=self.bias_regularizer)

    def _recurrent_init(self) -> InitializerLike:
        """Orthogonal per gate block (Keras initializes the stacked (U, G*U) matrix whole,
        which is not orthogonal per gate when G > 1)."""
        spec, gates, units = self.recurrent_initializer, self.gates, self.units
        if spec != "orthogonal" or gates == 1:
            return spec
        from graphc.nn.initializers import orthogonal

        def blocks(shape: tuple[int, ...], *, seed: int, dtype: Any) -> np.ndarray:
            parts = [orthogonal((units, units), seed=seed + k, dtype=dtype)
                     for k in range(gates)]
            return np.ascontiguousarray(np.concatenate(parts, axis=1))

        return blocks

    def _bias_init(self) -> InitializerLike:
        return self.bias_initializer

    def forward(self, x: Node, training: bool, scope: Scope | None) -> Node:
        batch, steps, features = x.shape
        width = self.gates * self.units
        flat = layout.reshape(x, (batch * steps, features))
        xp = layout.reshape(linalg.linear(flat, self.weights["kernel"], self.weights["bias"]),
                         (batch, steps, width))
        state: Any = None
        outputs: list[Node] = []
        for t in range(steps):
            state, h = self.cell(xp[:, t, :], state)
            outputs.append(h)
        if self.return_sequences:
            return join.stack(outputs, axis=1)
        return outputs[-1]

    def recurrent(self, h: Node) -> Node:
        return linalg.matmul(h, self.weights["recurrent_kernel"])

    def cell(self, xt: Node, state: Any) -> tuple[Any, Node]:
        """One step: (projected input, previous state or None at t = 0) -> (state, h)."""
        raise NotImplementedError


class SimpleRNN(_Recurrent):
    """``h = activation(x W + b + h R)`` (activation default tanh); see the module doc."""

    gates = 1

    def __init__(self, units: int, activation: activations.ActivationLike = "tanh",
                 **kwargs: Any):
        super().__init__(units, **kwargs)
        self.activation = activations.get(activation)

    def cell(self, xt: Node, state: Node | None) -> tuple[Node, Node]:
        z = xt if state is None else xt + self.recurrent(state)
        h = self.activation(z)
        return h, h


class LSTM(_Recurrent):
    """Long short-term memory (Hochreiter & Schmidhuber 1997); see the module doc."""

    gates = 4

    def __init__(self, units: int, *, unit_forget_bias: bool = True, **kwargs: Any):
        super().__init__(units, **kwargs)
        self.unit_forget_bias = bool(unit_forget_bias)

    def _bias_init(self) -> InitializerLike:
        if not self.unit_forget_bias:
            return self.bias_initializer
        from graphc.nn.initializers import get

        inner, units = get(self.bias_initializer), self.units

        def forget_one(shape: tuple[int, ...], *, seed: int, dtype: Any) -> np.ndarray:
            value = np.array(inner(shape, seed=seed, dtype=dtype))
            value[units:2 * units] = 1.0
            return value

        return forget_one

    def cell(self, xt: Node, state: tuple[Node, Node] | None) -> tuple[tuple[Node, Node], Node]:
        z = xt if state is None else xt + self.recurrent(state[1])
        i, f, g, o = join.split(z, 4, axis=1)
        update = ew.sigmoid(i) * ew.tanh(g)
        c = update if state is None else ew.sigmoid(f) * state[0] + update
        h = ew.sigmoid(o) * ew.tanh(c)
        return (c, h), h


class GRU(_Recurrent):
    """Gated recurrent unit (Cho et al. 2014, PyTorch's form); see the module doc.

    Extra variable: ``recurrent_bias`` (3*units,), zeros.
    """

    gates = 3

    def build(self, x: Node) -> None:
        super().build(x)
        self.add_weight("recurrent_bias", (self.gates * self.units,), self.bias_initializer,
                        self.weight_dtype(x), regularizer=self.bias_regularizer)

    def cell(self, xt: Node, state: Node | None) -> tuple[Node, Node]:
        rb = self.weights["recurrent_bias"]
        hp = rb if state is None else self.recurrent(state) + rb
        xr, xz, xn = join.split(xt, 3, axis=1)
        hr, hz, hn = join.split(hp, 3, axis=-1)
        r = ew.sigmoid(xr + hr)
        z = ew.sigmoid(xz + hz)
        n = ew.tanh(xn + r * hn)
        h = (1.0 - z) * n if state is None else (1.0 - z) * n + z * state
        return h, h
