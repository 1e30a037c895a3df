"""Fused normalizations: `layer_norm` and `rms_norm` as single reduction kernels, forward
and backward.

(Skeleton: filled in by the transformer work, issue 15.)
"""

from __future__ import annotations

from graphc.ir.opdef import OpDef

__all__: list[str] = []

OPS: list[OpDef] = []
