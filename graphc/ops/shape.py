"""(being written) op family: shape."""

from __future__ import annotations

from graphc.ops.opdef import OpDef

__all__: list[str] = []

OPS: list[OpDef] = []


def transpose(x, perm=None, name=None):  # placeholder until the family lands
    raise NotImplementedError


def reshape(x, shape, name=None):
    raise NotImplementedError


def broadcast_to(x, shape, name=None):
    raise NotImplementedError
