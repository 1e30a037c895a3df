"""Kernels of the norms ops (skeleton: filled in by the transformer work, issue 15)."""

from __future__ import annotations

from graphc.codegen.context import Lowering

LOWERINGS: tuple[Lowering, ...] = ()
