"""Recurrent layers over the (static) sequence length: SimpleRNN, LSTM, GRU, Bidirectional.

Input (batch, time, features), batch-first; the initial state is zero. The output is the
last hidden state (batch, units), or every hidden state (batch, time, units) with
`return_sequences`. `reverse=True` runs from the last step to the first (the state after
step 0 is the last hidden state; sequences stay aligned with the input's steps), as the
backward half of `Bidirectional` does.

By default the cell is the body of one `gc.scan` over time: compiled once and run in a
native loop, so compile time does not grow with the sequence length. `unroll=True` builds
one copy of the cell per step instead (the graph, and compile time, grow with the length;
at t = 0 the state is zero, so the first step skips the recurrent product). Both compute
the same values: the scan's first step multiplies the zero state, which adds exact zeros.

Either way the input projection of all time steps is one GEMM before the loop,
``x.reshape(B*T, F) @ kernel + bias`` (loop-invariant work hoisted out by the layer, the
way cuDNN does); each step then adds ``h @ recurrent_kernel``.

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

import copy
from typing import Any

import numpy as np

from graphc import builder
from graphc.errors import AttrError, ShapeError
from graphc.ir import DType, Node
from graphc.nn import activations, regularizers
from graphc.nn.initializers import InitializerLike
from graphc.nn.layer import Layer, Scope
from graphc.ops import control, join, layout, linalg
from graphc.ops import elementwise as ew

__all__ = ["GRU", "LSTM", "Bidirectional", "SimpleRNN"]


class _Recurrent(Layer):
    gates: int = 1

    def __init__(self, units: int, *, return_sequences: bool = False, unroll: bool = False,
                 reverse: bool = False, kernel_initializer: InitializerLike = "glorot_uniform",
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
        self.unroll = bool(unroll)
        self.reverse = bool(reverse)
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
        if self.unroll:
            return self._unrolled(xp)
        zero = builder.constant(np.zeros((batch, self.units), xp.dtype.np))

        def step(state: Any, xt: Node) -> tuple[Any, Node | None]:
            state, h = self.cell(xt, state)
            return state, (h if self.return_sequences else None)

        final, hs = control.scan(step, self.zero_state(zero), layout.transpose(xp, (1, 0, 2)),
                                 reverse=self.reverse)
        if self.return_sequences:
            return layout.transpose(hs, (1, 0, 2))
        return self.hidden(final)

    def _unrolled(self, xp: Node) -> Node:
        steps = xp.shape[1]
        state: Any = None
        outputs: list[Node] = []
        for t in (range(steps - 1, -1, -1) if self.reverse else range(steps)):
            state, h = self.cell(xp[:, t, :], state)
            outputs.append(h)
        if self.return_sequences:
            return join.stack(outputs[::-1] if self.reverse else outputs, axis=1)
        return outputs[-1]

    def zero_state(self, zero: Node) -> Any:
        """The state before the first step, given a zero (batch, units) array."""
        return zero

    def hidden(self, state: Any) -> Node:
        """The hidden state h of a state."""
        return state  # type: ignore[no-any-return]

    def reversed_copy(self) -> _Recurrent:
        """An unbuilt layer of the same configuration running the other way (own weights)."""
        other = copy.copy(self)
        Layer.__init__(other, None, self.dtype, self.seed)
        other.reverse = not self.reverse
        return other

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

    def zero_state(self, zero: Node) -> tuple[Node, Node]:
        return (zero, zero)  # (c, h)

    def hidden(self, state: Any) -> Node:
        return state[1]  # type: ignore[no-any-return]

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


MERGE_MODES = ("concat", "sum", "mul", "ave")


class Bidirectional(Layer):
    """A recurrent layer run forward and, with its own weights, backward over the sequence;
    the two outputs merged by `merge_mode` ("concat" along the last axis, "sum", "mul",
    "ave"). With `return_sequences` both halves give every step (aligned with the input's
    steps); otherwise each gives its last hidden state (the backward half's is the state
    after step 0). `backward_layer` defaults to `layer`'s configuration, reversed.
    """

    def __init__(self, layer: _Recurrent, merge_mode: str = "concat", *,
                 backward_layer: _Recurrent | None = None, name: str | None = None):
        super().__init__(name)
        if not isinstance(layer, _Recurrent) or layer.built:
            raise AttrError(f"layer must be an unbuilt SimpleRNN, LSTM or GRU, got {layer!r}",
                            op="Bidirectional")
        if merge_mode not in MERGE_MODES:
            raise AttrError(f"merge_mode must be one of {MERGE_MODES}, got {merge_mode!r}",
                            op="Bidirectional")
        self.forward_layer = layer
        self.backward_layer = backward_layer or layer.reversed_copy()
        if not self.backward_layer.reverse:
            raise AttrError("backward_layer must run backward (reverse=True)",
                            op="Bidirectional")
        self.merge_mode = merge_mode

    @property
    def variables(self) -> list[Node]:
        return [*self.forward_layer.variables, *self.backward_layer.variables]

    def forward(self, x: Node, training: bool, scope: Scope | None) -> Node:
        f = self.forward_layer(x, training)
        b = self.backward_layer(x, training)
        if self.merge_mode == "concat":
            return join.concat([f, b], axis=-1)
        if self.merge_mode == "sum":
            return f + b
        if self.merge_mode == "mul":
            return f * b
        return (f + b) * 0.5
