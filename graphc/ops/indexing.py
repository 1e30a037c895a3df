"""Indexing: basic indexing (``x[1:, ::-2, None]``), gathers and their scatter-add adjoints.

- `getitem` is numpy *basic* indexing, the implementation of ``node[...]``. It is a
  composite of `slice`, `reverse` and `reshape` (so it needs no gradient rule of its own).
- `take` and `take_along_axis` are gathers with numpy's semantics. Their gradients are the
  scatter-add primitives `take_grad` and `take_along_axis_grad`, which accumulate into zeros
  of the gathered tensor's shape, summing duplicate indices (``np.add.at``). The gradient of
  a scatter-add is the matching gather, so grad-of-grad works.
- `one_hot` is a composite of `equal` against a constant ``arange``.

Indices follow numpy: a negative index counts from the end (once); an index outside
``[-n, n)`` raises a `GraphcError` naming the op, at build time when the indices are a
constant, else when the graph is evaluated.

The ops live in submodules; this module collects their definitions into `OPS` and their
builders into `__all__` (`getitem`, `take_grad` and `take_along_axis_grad` are importable
from here but not exported to `graphc`):
- `indexing_gather`: take, take_grad, take_along_axis, take_along_axis_grad, one_hot;
- `indexing_getitem`: getitem.
"""

from __future__ import annotations

from graphc.ir.opdef import OpDef
from graphc.ops import indexing_gather as _gather_ops
from graphc.ops.indexing_gather import TAKE as TAKE
from graphc.ops.indexing_gather import TAKE_ALONG_AXIS as TAKE_ALONG_AXIS
from graphc.ops.indexing_gather import TAKE_ALONG_AXIS_GRAD as TAKE_ALONG_AXIS_GRAD
from graphc.ops.indexing_gather import TAKE_GRAD as TAKE_GRAD
from graphc.ops.indexing_gather import one_hot, take, take_along_axis
from graphc.ops.indexing_gather import take_along_axis_grad as take_along_axis_grad
from graphc.ops.indexing_gather import take_grad as take_grad
from graphc.ops.indexing_getitem import getitem as getitem

__all__ = ["one_hot", "take", "take_along_axis"]

OPS: list[OpDef] = list(_gather_ops.OPS)
