"""Shape ops: reshape, transpose, broadcast_to, concat, slice, reverse, pad, and composites.

Every primitive moves data without computing on it: each output element is one input
element (or the pad value), so all are `Fusion.INJECTIVE` except `broadcast_to`
(`Fusion.BROADCAST`). Attributes are stored fully resolved (no -1 in shapes, no negative
axes, no None or negative steps in slices) so passes and codegen never re-derive them: the
builders resolve user conventions, and the type rules re-check the resolved form (`verify`
runs them on graphs loaded from files too).

The ops live in submodules; this module collects their definitions into `OPS` and their
builders into `__all__`, and re-exports the builder helpers that reduce.py uses:
- `shape_common`: as_node, resolve, fail, int_tuple (builder argument helpers);
- `shape_layout`: reshape, transpose, broadcast_to; composites expand_dims, squeeze, flatten;
- `shape_join`: concat; composites stack, split;
- `shape_slice`: slice, reverse, pad.
"""

from __future__ import annotations

from graphc.ir.opdef import OpDef
from graphc.ops import shape_join as _join_ops
from graphc.ops import shape_layout as _layout_ops
from graphc.ops import shape_slice as _slice_ops
from graphc.ops.shape_common import as_node as as_node
from graphc.ops.shape_common import fail as fail
from graphc.ops.shape_common import int_tuple as int_tuple
from graphc.ops.shape_common import resolve as resolve
from graphc.ops.shape_join import CONCAT as CONCAT
from graphc.ops.shape_join import concat, split, stack
from graphc.ops.shape_layout import BROADCAST_TO as BROADCAST_TO
from graphc.ops.shape_layout import RESHAPE as RESHAPE
from graphc.ops.shape_layout import TRANSPOSE as TRANSPOSE
from graphc.ops.shape_layout import (
    broadcast_to,
    expand_dims,
    flatten,
    reshape,
    squeeze,
    transpose,
)
from graphc.ops.shape_slice import PAD as PAD
from graphc.ops.shape_slice import REVERSE as REVERSE
from graphc.ops.shape_slice import SLICE as SLICE
from graphc.ops.shape_slice import _pad as _pad
from graphc.ops.shape_slice import _slice as _slice
from graphc.ops.shape_slice import pad, reverse, slice

__all__ = [
    "broadcast_to",
    "concat",
    "expand_dims",
    "flatten",
    "pad",
    "reshape",
    "reverse",
    "slice",
    "split",
    "squeeze",
    "stack",
    "transpose",
]

# Registry order (and so `graphc ops --list`): reshape, transpose, broadcast_to, concat, slice,
# reverse, pad.
OPS: list[OpDef] = [*_layout_ops.OPS, *_join_ops.OPS, *_slice_ops.OPS]
