"""(being written) op family: indexing."""

from __future__ import annotations

from graphc.ops.opdef import OpDef

__all__: list[str] = []

OPS: list[OpDef] = []


def getitem(x, index):
    raise NotImplementedError
