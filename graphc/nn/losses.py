"""Per-example losses by name, as a `gc.Model` uses them.

Each `Loss` maps (outputs, targets) to a per-example loss of shape (batch,): losses over
more axes (a sequence of labels, a multi-output regression) are averaged over the
non-batch axes. The model reduces them with the sample mask (a padded batch's weights).
Classification losses take *logits* (no softmax/sigmoid layer at the end), which is
numerically stable.

| name | outputs | targets | task |
|---|---|---|---|
| sparse_categorical_crossentropy | logits (B, ..., C) | int labels (B, ...) | multiclass |
| categorical_crossentropy | logits (B, ..., C) | probabilities (B, ..., C) | categorical |
| binary_crossentropy | logits (B, ...) | 0/1 floats (B, ...) | binary |
| mse, mae | values (B, ...) | values (B, ...) | regression |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from graphc.errors import AttrError, ShapeError
from graphc.ir import DType, Node, TensorType
from graphc.ops import neural as nn_ops
from graphc.ops import reduce as rd

__all__ = ["LOSSES", "Loss", "get"]


def _per_example(v: Node) -> Node:
    """Average over every axis but the first."""
    return v if v.ndim <= 1 else rd.mean(v, axis=tuple(range(1, v.ndim)))


def _check_rank(name: str, out: Node) -> None:
    if out.ndim < 1:
        raise ShapeError(f"outputs: expected a batch axis, got {out.type}", op=name)


def _sparse_ce(out: Node, target: Node) -> Node:
    _check_rank("sparse_categorical_crossentropy", out)
    return _per_example(nn_ops.softmax_cross_entropy(out, target))


def _categorical_ce(out: Node, target: Node) -> Node:
    _check_rank("categorical_crossentropy", out)
    return _per_example(-rd.sum(target * nn_ops.log_softmax(out, axis=-1), axis=-1))


def _binary_ce(out: Node, target: Node) -> Node:
    _check_rank("binary_crossentropy", out)
    return _per_example(nn_ops.sigmoid_binary_cross_entropy(out, target))


def _mse(out: Node, target: Node) -> Node:
    return nn_ops.mse(out, target)


def _mae(out: Node, target: Node) -> Node:
    return nn_ops.mae(out, target)


def _labels(out: TensorType) -> TensorType:
    if out.ndim < 2:
        raise ShapeError(f"outputs: expected logits (batch, ..., classes), got {out}",
                         op="sparse_categorical_crossentropy")
    return TensorType(out.shape[:-1], DType.int32)


def _same(out: TensorType) -> TensorType:
    return out


@dataclass(frozen=True)
class Loss:
    """A named per-example loss: ``fn(outputs, targets) -> (batch,)``; `target_type` gives
    the targets' type for an outputs type; `task` tells metrics how to read predictions
    ("multiclass", "categorical", "binary", "regression")."""

    name: str
    fn: Callable[[Node, Node], Node]
    task: str
    target_type: Callable[[TensorType], TensorType] = _same

    def __call__(self, outputs: Node, targets: Node) -> Node:
        return self.fn(outputs, targets)


LOSSES: dict[str, Loss] = {
    loss.name: loss
    for loss in (
        Loss("sparse_categorical_crossentropy", _sparse_ce, "multiclass", _labels),
        Loss("categorical_crossentropy", _categorical_ce, "categorical"),
        Loss("binary_crossentropy", _binary_ce, "binary"),
        Loss("mse", _mse, "regression"),
        Loss("mae", _mae, "regression"),
    )
}


def get(spec: str | Loss) -> Loss:
    """The loss named `spec`, or `spec` itself if it is a `Loss`."""
    if isinstance(spec, Loss):
        return spec
    try:
        return LOSSES[spec]
    except (KeyError, TypeError):
        raise AttrError(f"unknown loss {spec!r} (known: {', '.join(LOSSES)}; or give a "
                        "gc.nn.losses.Loss)", op="loss") from None
