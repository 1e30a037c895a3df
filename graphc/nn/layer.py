"""The `Layer` base class and the `Scope` that collects what a forward pass builds.

A layer is a Python object that owns graph variables and builds ops when called:

- On its first call it *builds*: it picks a unique name in the input's graph (its class's
  snake-case name, then ``_1``, ``_2`` ...; an explicit `name` must be free), creates its
  variables named ``<layer>/<weight>`` with seeded initializers, and any regularization
  terms. Later calls reuse the same variables (weight sharing), in the same graph only.
- Every call builds the forward ops for one mode. ``training=None`` takes the mode of the
  active `Scope` (inference when there is none). Training-mode layers may add *state
  updates* (BatchNorm's running statistics, Dropout's step counter): they go to the active
  scope and to ``layer.state_updates`` (the most recent training call's), to be passed to
  `gc.compile(..., updates=...)` beside the optimizer's.

Seeds: ``seed=None`` derives each variable's seed from its full name (crc32), so a model
built twice in the same order initializes identically and no two weights share a stream;
an explicit seed is mixed with the weight's short name the same way.

Variables take the input's dtype when it is floating point (``dtype=None``), so a layer
called on a float64 placeholder (as `gc.check_grad` gives) has float64 weights.
"""

from __future__ import annotations

import re
import threading
import weakref
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from graphc import builder
from graphc.errors import GraphcError, GraphNameError, ShapeError
from graphc.ir import DType, Graph, Node
from graphc.nn import initializers
from graphc.ops import elementwise as ew

__all__ = ["Layer", "Scope", "current_scope", "dropout_seed"]

Regularizer = Callable[[Node], Node]

_SCOPES = threading.local()
# Layer names in use per graph, including layers that own no variables (Flatten, ...).
_LAYER_NAMES: weakref.WeakKeyDictionary[Graph, set[str]] = weakref.WeakKeyDictionary()


@dataclass
class Scope:
    """One forward build: its mode, the per-example sample mask, and what layers added.

    `sample_mask` (shape (batch,), the loss dtype) marks real examples with 1 and padding
    with 0; layers with batch statistics (BatchNorm) weight examples by it. `updates` maps
    state variables to their new values; `layers` lists the layers called, in call order.
    Use it as a context manager: ``with Scope(training=True) as s: out = net(x)``.
    """

    training: bool = False
    sample_mask: Node | None = None
    updates: dict[Node, Node] = field(default_factory=dict)
    layers: list[Layer] = field(default_factory=list)
    calls: dict[int, int] = field(default_factory=dict)  # id(layer) -> calls in this scope
    # Which random stream the forward draws from: 0 alone, the rank in data-parallel
    # training (`Model.fit(distributed=True)`), so each rank drops different units.
    stream: int = 0

    def __enter__(self) -> Scope:
        _stack().append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        popped = _stack().pop()
        assert popped is self, "nn scopes exited out of order"

    def add_update(self, var: Node, value: Node, *, shared: bool = False) -> None:
        """Record `var`'s new value. A second update of the same variable is an error,
        unless `shared` (the caller guarantees both values are equal, e.g. ``step + 1``)."""
        if var in self.updates:
            if shared:
                return
            raise GraphcError(f"state variable %{var.name} is updated twice in one forward "
                              "pass (a stateful layer called twice in training mode)",
                              op="nn.Scope")
        self.updates[var] = value

    def regularization_losses(self) -> list[Node]:
        """The regularization terms of every layer called in this scope (each layer once)."""
        return [term for layer in self.layers for term in layer.losses]


def dropout_seed(scope: Scope | None, seed: int) -> int:
    """The seed of a random mask drawn in `scope`: `seed` itself in stream 0 (one process),
    shifted by a large odd multiple of the scope's stream otherwise (per-rank masks)."""
    stream = scope.stream if scope is not None else 0
    return (seed + stream * 0x9E3779B1) % (1 << 32)


def _stack() -> list[Scope]:
    if not hasattr(_SCOPES, "stack"):
        _SCOPES.stack = []
    return _SCOPES.stack


def current_scope() -> Scope | None:
    """The innermost active `Scope`, or None."""
    stack = _stack()
    return stack[-1] if stack else None


def _snake(name: str) -> str:
    s = re.sub(r"(?<=[a-z])([A-Z])", r"_\1", name)
    s = re.sub(r"(?<=[A-Z])([A-Z][a-z])", r"_\1", s)
    return s.lower()


class Layer:
    """Base class: subclasses implement `build(x)` (create variables) and
    `forward(x, training, scope)` (build ops), and may set `default_name`."""

    default_name: str = ""

    def __init__(self, name: str | None = None, dtype: DType | str | None = None,
                 seed: int | None = None):
        self._requested_name = name
        self.name: str = name or self.default_name or _snake(type(self).__name__)
        self.dtype: DType | None = None if dtype is None else DType.of(dtype)
        self.seed = seed
        self.graph: Graph | None = None
        self.built = False
        self.weights: dict[str, Node] = {}  # short name -> variable node
        self.losses: list[Node] = []  # regularization terms
        self.state_updates: dict[Node, Node] = {}

    # --- public ------------------------------------------------------------------------
    @property
    def variables(self) -> list[Node]:
        """Every variable this layer (and its sublayers) owns."""
        return list(self.weights.values())

    @property
    def trainable_variables(self) -> list[Node]:
        return [v for v in self.variables if v.attrs.get("trainable", True)]

    def count_params(self) -> int:
        return sum(v.size for v in self.variables)

    def __call__(self, inputs: Node | Sequence[Node], training: bool | None = None) -> Node:
        scope = current_scope()
        mode = (scope.training if scope is not None else False) if training is None \
            else bool(training)
        first = self._first_node(inputs)
        graph = first.graph
        if self.graph is not None and graph is not self.graph:
            raise GraphcError(f"layer {self.name!r} belongs to graph {self.graph.name!r} and "
                              f"cannot be called on a node of graph {graph.name!r}",
                              op=type(self).__name__)
        with graph:
            if not self.built:
                self._claim_name(graph)
                self.graph = graph
                self.build(inputs)
                self.built = True
            if scope is not None:
                if id(self) not in scope.calls:
                    scope.layers.append(self)
                scope.calls[id(self)] = scope.calls.get(id(self), 0) + 1
            if mode:
                self.state_updates = {}
            return self.forward(inputs, mode, scope)

    # --- for subclasses ----------------------------------------------------------------
    def build(self, inputs: Any) -> None:
        """Create the variables, knowing the first input's type (default: none)."""

    def forward(self, inputs: Any, training: bool, scope: Scope | None) -> Node:
        raise NotImplementedError

    def weight_dtype(self, x: Node) -> DType:
        """The dtype of the weights: explicit `dtype`, else a float input's, else float32."""
        if self.dtype is not None:
            return self.dtype
        return x.dtype if x.dtype.is_float else DType.float32

    def add_weight(
        self,
        short: str,
        shape: Sequence[int],
        initializer: initializers.InitializerLike,
        dtype: DType,
        *,
        trainable: bool = True,
        regularizer: Regularizer | None = None,
    ) -> Node:
        """Create variable ``<layer name>/<short>`` initialized by `initializer`."""
        full = f"{self.name}/{short}"
        seed_text = full if self.seed is None else f"{self.seed}/{short}"
        seed = zlib.crc32(seed_text.encode())
        value = initializers.get(initializer)(tuple(shape), seed=seed, dtype=dtype)
        node = builder.variable(value, name=full, dtype=dtype, trainable=trainable)
        self.weights[short] = node
        if regularizer is not None:
            self.losses.append(regularizer(node))
        return node

    def add_state_update(self, scope: Scope | None, var: Node, value: Node,
                         shared: bool = False) -> None:
        """Record a training-mode state update in the scope and on the layer."""
        self.state_updates[var] = value
        if scope is not None:
            scope.add_update(var, value, shared=shared)

    def mask_for(self, x: Node, scope: Scope | None) -> Node | None:
        """The scope's sample mask if it describes x's batch (x.shape[0] examples)."""
        if scope is None or scope.sample_mask is None:
            return None
        mask = scope.sample_mask
        if not x.shape or mask.shape != (x.shape[0],):
            raise ShapeError(f"sample mask {mask.type} does not match the batch of input "
                             f"{x.type}", op=type(self).__name__)
        return mask if mask.dtype == x.dtype else ew.cast(mask, x.dtype)

    # --- internals ---------------------------------------------------------------------
    def _first_node(self, inputs: Node | Sequence[Node]) -> Node:
        items = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        if not items or not all(isinstance(n, Node) for n in items):
            raise GraphcError(f"layer {self.name!r} expects graph node input(s), got "
                              f"{inputs!r}", op=type(self).__name__)
        return items[0]

    def _claim_name(self, graph: Graph) -> None:
        used = _LAYER_NAMES.setdefault(graph, set())
        prefixes = {name.split("/", 1)[0] for name in graph.variables}
        if self._requested_name is not None:
            if self.name in used or self.name in prefixes:
                raise GraphNameError(f"a layer named {self.name!r} already exists in graph "
                                     f"{graph.name!r}", op=type(self).__name__)
        else:
            base, n = self.name, 0
            while self.name in used or self.name in prefixes:
                n += 1
                self.name = f"{base}_{n}"
        used.add(self.name)

    def __repr__(self) -> str:
        state = f"{self.count_params()} params" if self.built else "not built"
        return f"<{type(self).__name__} {self.name!r}: {state}>"
