"""(being written) op family: linalg."""

from __future__ import annotations

from graphc.ops.opdef import OpDef

__all__: list[str] = []

OPS: list[OpDef] = []


def matmul(a, b, name=None):
    raise NotImplementedError
