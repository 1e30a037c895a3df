"""(being written) op family: reduce."""

from __future__ import annotations

from graphc.ops.opdef import OpDef

__all__: list[str] = []

OPS: list[OpDef] = []


def sum(x, axis=None, keepdims=False, name=None):  # noqa: A001
    raise NotImplementedError
