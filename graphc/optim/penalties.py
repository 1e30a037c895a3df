"""Weight penalties: scalar loss terms built from variables (add them to the loss).

Mixed float dtypes accumulate in the widest dtype present, like `clipping.global_norm`.
"""

from __future__ import annotations

from collections.abc import Sequence

from graphc.ir import Node
from graphc.ops import elementwise as ew
from graphc.ops import reduce as rd
from graphc.optim.clipping import as_float_list, sum_all, widest

__all__ = ["l1_penalty", "l2_penalty"]


def l1_penalty(variables: Node | Sequence[Node], scale: float) -> Node:
    """``scale * sum_i sum(|v_i|)``: a scalar loss term (add it to the loss)."""
    items = as_float_list(variables, "l1_penalty")
    total = sum_all([rd.sum(ew.abs(v)) for v in items], widest(items))
    return ew.mul(total, float(scale))


def l2_penalty(variables: Node | Sequence[Node], scale: float) -> Node:
    """``scale * sum_i sum(v_i ** 2)`` (Keras' L2 convention: no factor 1/2).

    Its gradient is ``2 * scale * v``; PyTorch's coupled ``weight_decay=wd`` equals
    ``l2_penalty(vars, wd / 2)``.
    """
    items = as_float_list(variables, "l2_penalty")
    total = sum_all([rd.sum(ew.square(v)) for v in items], widest(items))
    return ew.mul(total, float(scale))
