"""Activation functions by name, for layers' ``activation=`` arguments and `Activation`.

``get(None)`` and ``get("linear")`` are the identity. A callable ``Node -> Node`` is
accepted wherever a name is.
"""

from __future__ import annotations

from collections.abc import Callable

from graphc.errors import AttrError
from graphc.ir import Node
from graphc.ops import elementwise as ew
from graphc.ops import neural as nn_ops

__all__ = ["ActivationLike", "get"]

ActivationFn = Callable[[Node], Node]
ActivationLike = str | ActivationFn | None


def _identity(x: Node) -> Node:
    return x


def _softmax(x: Node) -> Node:
    return nn_ops.softmax(x, axis=-1)


def _log_softmax(x: Node) -> Node:
    return nn_ops.log_softmax(x, axis=-1)


_BY_NAME: dict[str, ActivationFn] = {
    "linear": _identity,
    "relu": ew.relu,
    "sigmoid": ew.sigmoid,
    "tanh": ew.tanh,
    "gelu": ew.gelu,
    "elu": ew.elu,
    "selu": ew.selu,
    "softplus": ew.softplus,
    "leaky_relu": ew.leaky_relu,
    "softmax": _softmax,
    "log_softmax": _log_softmax,
}


def get(spec: ActivationLike) -> ActivationFn:
    """The activation named `spec` (None: identity; a callable: itself)."""
    if spec is None:
        return _identity
    if callable(spec):
        return spec
    try:
        return _BY_NAME[spec]
    except (KeyError, TypeError):
        known = ", ".join(sorted(_BY_NAME))
        raise AttrError(f"unknown activation {spec!r} (known: {known})",
                        op="activation") from None
