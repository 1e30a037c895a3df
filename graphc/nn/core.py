"""Core layers: Dense, Flatten, Activation, Dropout, Embedding, Add.

Shapes are batch-first. Weight layouts follow Keras: a Dense kernel is (in, units), so a
PyTorch ``nn.Linear`` weight is its transpose.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

from graphc.errors import AttrError, GraphcError, ShapeError
from graphc.ir import DType, Node
from graphc.nn import activations, regularizers
from graphc.nn.initializers import InitializerLike
from graphc.nn.layer import Layer, Scope, dropout_seed
from graphc.ops import elementwise as ew
from graphc.ops import gather, layout, linalg
from graphc.ops import neural as nn_ops

__all__ = ["Activation", "Add", "Dense", "Dropout", "Embedding", "Flatten"]


def _positive(owner: str, name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AttrError(f"{name} must be an int >= 1, got {value!r}", op=owner)
    return value


class Dense(Layer):
    """``activation(x @ kernel + bias)`` on the last axis of x (..., in) -> (..., units).

    Variables: ``kernel`` (in, units), ``bias`` (units,) (zeros) when `use_bias`.
    """

    def __init__(self, units: int, activation: activations.ActivationLike = None, *,
                 use_bias: bool = True, kernel_initializer: InitializerLike = "glorot_uniform",
                 bias_initializer: InitializerLike = "zeros",
                 kernel_regularizer: Any = None, bias_regularizer: Any = None,
                 name: str | None = None, dtype: DType | str | None = None,
                 seed: int | None = None):
        super().__init__(name, dtype, seed)
        self.units = _positive("Dense", "units", units)
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)

    def build(self, x: Node) -> None:
        if x.ndim < 1:
            raise ShapeError(f"x: expected rank >= 1, got {x.type}", op="Dense")
        dtype = self.weight_dtype(x)
        self.add_weight("kernel", (x.shape[-1], self.units), self.kernel_initializer, dtype,
                        regularizer=self.kernel_regularizer)
        if self.use_bias:
            self.add_weight("bias", (self.units,), self.bias_initializer, dtype,
                            regularizer=self.bias_regularizer)

    def forward(self, x: Node, training: bool, scope: Scope | None) -> Node:
        kernel, bias = self.weights["kernel"], self.weights.get("bias")
        if x.ndim <= 2:
            y = linalg.linear(x, kernel, bias)
        else:  # fold the leading axes into one: a single GEMM instead of a batched one
            lead = x.shape[:-1]
            flat = layout.reshape(x, (-1, x.shape[-1]))
            y = layout.reshape(linalg.linear(flat, kernel, bias), (*lead, self.units))
        return self.activation(y)


class Flatten(Layer):
    """(N, d1, d2, ...) -> (N, d1*d2*...)."""

    def forward(self, x: Node, training: bool, scope: Scope | None) -> Node:
        return layout.flatten(x, 1) if x.ndim != 2 else x


class Activation(Layer):
    """An activation function as a layer: ``Activation("relu")``."""

    def __init__(self, activation: activations.ActivationLike, name: str | None = None):
        super().__init__(name)
        self.activation = activations.get(activation)

    def forward(self, x: Node, training: bool, scope: Scope | None) -> Node:
        return self.activation(x)


class Dropout(Layer):
    """Inverted dropout in training (keep with probability 1 - rate, scale by 1/(1 - rate));
    the identity in inference.

    Fresh masks every step: the layer owns an int32 step counter ``<name>/step``
    (trainable=False) that keys the random op and that each training step increments
    through `updates`. The mask of call k (0, 1, ...) of this layer within one forward pass
    uses seed ``(layer seed + k) mod 2**32``, so repeated calls draw different masks.
    """

    def __init__(self, rate: float, *, seed: int | None = None, name: str | None = None):
        super().__init__(name, None, seed)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise AttrError(f"rate must be a number in [0, 1), got {rate!r}", op="Dropout")
        self.rate = float(rate)

    def build(self, x: Node) -> None:
        self.add_weight("step", (), "zeros", DType.int32, trainable=False)

    def forward(self, x: Node, training: bool, scope: Scope | None) -> Node:
        if not training or self.rate == 0.0:
            return x
        counter = self.weights["step"]
        base = self.seed if self.seed is not None else zlib.crc32(self.name.encode())
        call = scope.calls.get(id(self), 1) - 1 if scope is not None else 0
        out = nn_ops.dropout(x, self.rate, seed=dropout_seed(scope, base + call), key=counter)
        self.add_state_update(scope, counter, ew.add(counter, 1), shared=True)
        return out


class Embedding(Layer):
    """Rows of a (input_dim, output_dim) table: int ids (...) -> (..., output_dim).

    Ids outside [-input_dim, input_dim) are an error of the `take` op; negative ids count
    from the end (numpy's rule). Variable ``embeddings`` (initializer U(-0.05, 0.05)).
    """

    def __init__(self, input_dim: int, output_dim: int, *,
                 embeddings_initializer: InitializerLike = "uniform",
                 embeddings_regularizer: Any = None, name: str | None = None,
                 dtype: DType | str | None = None, seed: int | None = None):
        super().__init__(name, dtype, seed)
        self.input_dim = _positive("Embedding", "input_dim", input_dim)
        self.output_dim = _positive("Embedding", "output_dim", output_dim)
        self.embeddings_initializer = embeddings_initializer
        self.embeddings_regularizer = regularizers.get(embeddings_regularizer)

    def build(self, ids: Node) -> None:
        if not ids.dtype.is_int:
            raise GraphcError(f"ids: expected int32/int64 indices, got {ids.type}",
                              op="Embedding")
        self.add_weight("embeddings", (self.input_dim, self.output_dim),
                        self.embeddings_initializer, self.dtype or DType.float32,
                        regularizer=self.embeddings_regularizer)

    def forward(self, ids: Node, training: bool, scope: Scope | None) -> Node:
        return gather.take(self.weights["embeddings"], ids, axis=0)


class Add(Layer):
    """The elementwise sum of several same-shape tensors (residual connections):
    ``Add()([x, f(x)])``."""

    def forward(self, inputs: Sequence[Node], training: bool, scope: Scope | None) -> Node:
        if isinstance(inputs, Node) or len(inputs) < 2:
            raise GraphcError("Add expects a list of at least two nodes", op="Add")
        first = inputs[0]
        for i, n in enumerate(inputs[1:], start=1):
            if n.type != first.type:
                raise ShapeError(f"input {i}: expected {first.type} (the type of input 0), "
                                 f"got {n.type}", op="Add")
        total = first
        for n in inputs[1:]:
            total = ew.add(total, n)
        return total

