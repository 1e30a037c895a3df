"""(being written) op family: conv."""

from __future__ import annotations

from graphc.ops.opdef import OpDef

__all__: list[str] = []

OPS: list[OpDef] = []
