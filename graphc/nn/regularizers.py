"""Weight regularizers: ``Dense(64, kernel_regularizer=L2(1e-4))``.

A regularizer maps a variable to a scalar loss term; the layer builds the term once, when
it creates the variable, and lists it in ``layer.losses``. A `Model` adds the terms of
every layer its network calls to the training loss (and to the reported loss, as Keras
does). Conventions are Keras': ``L1(l)`` adds ``l * sum(|w|)``, ``L2(l)`` adds
``l * sum(w**2)`` (no factor 1/2).
"""

from __future__ import annotations

from dataclasses import dataclass

from graphc.errors import AttrError
from graphc.ir import Node
from graphc.ops import elementwise as ew
from graphc.optim.penalties import l1_penalty, l2_penalty

__all__ = ["L1", "L1L2", "L2", "Regularizer", "get"]


def _check(name: str, value: float) -> float:
    number = float(value)
    if not number >= 0.0:
        raise AttrError(f"{name} must be a number >= 0, got {value!r}", op="regularizer")
    return number


@dataclass(frozen=True)
class L1L2:
    """``l1 * sum(|w|) + l2 * sum(w**2)``."""

    l1: float = 0.0
    l2: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "l1", _check("l1", self.l1))
        object.__setattr__(self, "l2", _check("l2", self.l2))

    def __call__(self, w: Node) -> Node:
        terms = []
        if self.l1:
            terms.append(l1_penalty(w, self.l1))
        if self.l2:
            terms.append(l2_penalty(w, self.l2))
        if not terms:
            return ew.mul(l2_penalty(w, 1.0), 0.0)
        return terms[0] if len(terms) == 1 else ew.add(terms[0], terms[1])


def L1(l1: float = 0.01) -> L1L2:  # noqa: N802 - Keras' spelling
    """``l1 * sum(|w|)``."""
    return L1L2(l1=l1)


def L2(l2: float = 0.01) -> L1L2:  # noqa: N802 - Keras' spelling
    """``l2 * sum(w**2)``."""
    return L1L2(l2=l2)


Regularizer = L1L2


def get(spec: L1L2 | str | None) -> L1L2 | None:
    """None, a regularizer, or "l1"/"l2"/"l1_l2" (Keras' default factor 0.01)."""
    if spec is None or isinstance(spec, L1L2):
        return spec
    table = {"l1": L1(), "l2": L2(), "l1_l2": L1L2(0.01, 0.01)}
    if isinstance(spec, str) and spec in table:
        return table[spec]
    if callable(spec):
        return spec  # any Node -> scalar Node function
    raise AttrError(f"unknown regularizer {spec!r} (use L1(..), L2(..), L1L2(..), 'l1', 'l2')",
                    op="regularizer")
