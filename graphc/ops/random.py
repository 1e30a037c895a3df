"""(being written) op family: random."""

from __future__ import annotations

from graphc.ops.opdef import OpDef

__all__: list[str] = []

OPS: list[OpDef] = []
