"""ONNX's NonMaxSuppression, folded at import.

How many boxes survive depends on the boxes' and scores' values, and graphc graphs have
static shapes, so the op needs its inputs known when the model is imported (then it is
computed here with numpy, as ONNX's reference does: per batch and class, boxes above
score_threshold in descending score order, each kept unless its IoU with a kept box
exceeds iou_threshold, at most max_output_boxes_per_class of them).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from graphc.onnx.convert import Context, Value, rule

Inputs = list[Value | None]


def _corners(boxes: np.ndarray, center_point_box: int) -> np.ndarray:
    """(..., 4) boxes as (y_min, x_min, y_max, x_max), from either diagonal's corners
    (center_point_box 0) or (x_center, y_center, width, height) (1)."""
    if center_point_box:
        xc, yc, w, h = np.moveaxis(boxes, -1, 0)
        return np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], -1)
    y1, x1, y2, x2 = np.moveaxis(boxes, -1, 0)
    return np.stack([np.minimum(y1, y2), np.minimum(x1, x2), np.maximum(y1, y2),
                     np.maximum(x1, x2)], -1)


def _suppresses(a: np.ndarray, b: np.ndarray, threshold: float) -> bool:
    """Whether boxes a and b (corner form) overlap with IoU above `threshold`."""
    height = min(a[2], b[2]) - max(a[0], b[0])
    width = min(a[3], b[3]) - max(a[1], b[1])
    if height <= 0 or width <= 0:
        return False
    inter = height * width
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    union = area_a + area_b - inter
    if area_a <= 0 or area_b <= 0 or union <= 0:
        return False
    return bool(inter / union > threshold)


def _scalar(ctx: Context, inputs: Inputs, i: int, what: str) -> float | None:
    v = inputs[i] if len(inputs) > i else None
    if v is None:
        return None
    a = ctx.need_known(v, what).reshape(-1)
    return float(a[0]) if a.size else None


@rule("NonMaxSuppression", 10)
def _nms(ctx: Context, inputs: Inputs, attrs: dict[str, Any]) -> list[Value]:
    boxes = ctx.need_known(inputs[0], "boxes")
    scores = ctx.need_known(inputs[1], "scores")
    if boxes.ndim != 3 or boxes.shape[2] != 4 or scores.ndim != 3 or \
            scores.shape[0] != boxes.shape[0] or scores.shape[2] != boxes.shape[1]:
        raise ctx.error(f"boxes {boxes.shape} and scores {scores.shape}: expected (B, N, 4) "
                        "and (B, C, N)")
    limit = _scalar(ctx, inputs, 2, "max_output_boxes_per_class")
    iou = _scalar(ctx, inputs, 3, "iou_threshold") or 0.0
    floor = _scalar(ctx, inputs, 4, "score_threshold")
    keep_max = max(int(limit), 0) if limit is not None else 0
    corners = _corners(boxes.astype(np.float64), int(attrs.get("center_point_box", 0)))
    selected = []
    for b in range(boxes.shape[0]):
        for c in range(scores.shape[1]):
            s = scores[b, c]
            candidates = [i for i in range(s.size) if floor is None or s[i] > floor]
            candidates.sort(key=lambda i: (-s[i], i))  # higher score, then lower index
            kept: list[int] = []
            for i in candidates:
                if len(kept) >= keep_max:
                    break
                if not any(_suppresses(corners[b, i], corners[b, j], iou) for j in kept):
                    kept.append(i)
                    selected.append((b, c, i))
    return [np.array(selected, np.int64).reshape(-1, 3)]
