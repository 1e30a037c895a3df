"""`Sequential`: layers applied in order, itself a layer.

Sublayers keep their own names (``dense/kernel``, not ``sequential/dense/kernel``), as in
Keras, so a layer's variable names do not depend on the container it sits in.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from graphc.errors import GraphcError
from graphc.ir import Node
from graphc.nn.layer import Layer, Scope

__all__ = ["Sequential"]


class Sequential(Layer):
    """``Sequential([Dense(64, "relu"), Dense(10)])(x)`` calls each layer on the previous
    one's output, passing the training mode on."""

    def __init__(self, layers: Iterable[Layer] = (), name: str | None = None):
        super().__init__(name)
        self.layers: list[Layer] = []
        for layer in layers:
            self.add(layer)

    def add(self, layer: Layer) -> Sequential:
        """Append a layer (before the first call); returns self for chaining."""
        if not isinstance(layer, Layer):
            raise GraphcError(f"Sequential takes layers, got {layer!r}", op="Sequential")
        if self.built:
            raise GraphcError("cannot add layers to a Sequential that has been called",
                              op="Sequential")
        self.layers.append(layer)
        return self

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> Layer:
        return self.layers[index]

    @property
    def variables(self) -> list[Node]:
        return [v for layer in self.layers for v in layer.variables]

    @property
    def all_layers(self) -> list[Layer]:
        """Every layer inside, depth-first (nested Sequentials expanded)."""
        out: list[Layer] = []
        for layer in self.layers:
            out.append(layer)
            if isinstance(layer, Sequential):
                out.extend(layer.all_layers)
        return out

    def forward(self, x: Node | Sequence[Node], training: bool, scope: Scope | None) -> Node:
        if not self.layers:
            raise GraphcError("Sequential has no layers", op="Sequential")
        self.state_updates = {}
        for layer in self.layers:
            x = layer(x, training=training)
            if training:
                self.state_updates.update(layer.state_updates)
        return x
