"""Sequence ops: positions and masks (`iota`/`arange`, `triu`/`tril`), writes and reads at a
runtime position (`dynamic_update_slice`), rotary position embedding (`rope`).

(Skeleton: filled in by the transformer work, issue 15.)
"""

from __future__ import annotations

from graphc.ir.opdef import OpDef

__all__: list[str] = []

OPS: list[OpDef] = []
