"""Evaluation metrics computed in numpy on predictions, with textbook definitions.

Classification (labels are any integers; predictions are labels unless stated):

- ``accuracy = #(y_pred == y_true) / n``.
- ``top_k_accuracy(y_true, scores, k)``: an example counts when fewer than k classes score
  strictly higher than its true class (ties are resolved in its favour).
- ``confusion_matrix``: ``C[i, j]`` = number of examples of true class ``labels[i]``
  predicted as ``labels[j]`` (rows true, columns predicted; sklearn's convention).
- Per class c: ``precision = TP / (TP + FP)``, ``recall = TP / (TP + FN)``,
  ``F1 = 2 P R / (P + R)`` (= 2 TP / (2 TP + FP + FN)); a 0/0 is defined as 0.
- ``average="binary"``: the scores of class `pos_label`. ``"macro"``: the unweighted mean
  of the per-class scores over `labels` (default: the sorted union of the classes in
  y_true and y_pred); macro F1 is the mean of per-class F1, *not* F1 of macro P and R.
  ``"micro"``: from the summed TP/FP/FN (equals accuracy for single-label data).
  ``None``: the per-class array.

Regression (multi-output arrays (n, k) are scored per column and averaged, as sklearn):

- ``mean_squared_error = mean((y_pred - y_true)**2)``, ``mean_absolute_error = mean(|.|)``.
- ``r2_score = 1 - SS_res / SS_tot`` with ``SS_tot = sum((y - mean(y))**2)``; a constant
  y_true gives 1.0 for a perfect prediction and 0.0 otherwise.

`resolve` adapts these to a `Model`'s raw outputs (logits) per loss task.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np

from graphc.errors import AttrError, ShapeError

__all__ = [
    "accuracy",
    "confusion_matrix",
    "f1_score",
    "mae",
    "mean_absolute_error",
    "mean_squared_error",
    "mse",
    "precision",
    "precision_recall_f1",
    "r2",
    "r2_score",
    "recall",
    "resolve",
    "top_k_accuracy",
]

ArrayLike = Any


def _pair(y_true: ArrayLike, y_pred: ArrayLike, what: str) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.shape != p.shape:
        raise ShapeError(f"y_true has shape {t.shape} but y_pred has shape {p.shape}", op=what)
    if t.size == 0:
        raise ShapeError("no examples (empty arrays)", op=what)
    return t, p


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """The fraction of predicted labels equal to the true ones."""
    t, p = _pair(y_true, y_pred, "accuracy")
    return float(np.mean(t == p))


def top_k_accuracy(y_true: ArrayLike, scores: ArrayLike, k: int = 5) -> float:
    """The fraction of examples whose true class is among the k highest scores.

    `scores` is (n, classes), `y_true` (n,) int labels in [0, classes).
    """
    t, s = np.asarray(y_true), np.asarray(scores)
    if s.ndim != 2 or t.shape != s.shape[:1]:
        raise ShapeError(f"expected y_true (n,) and scores (n, classes), got {t.shape} and "
                         f"{s.shape}", op="top_k_accuracy")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise AttrError(f"k must be an int >= 1, got {k!r}", op="top_k_accuracy")
    if t.size == 0:
        raise ShapeError("no examples (empty arrays)", op="top_k_accuracy")
    if t.min() < 0 or t.max() >= s.shape[1]:
        raise ShapeError(f"labels must lie in [0, {s.shape[1]})", op="top_k_accuracy")
    true_score = s[np.arange(len(t)), t]
    higher = np.sum(s > true_score[:, None], axis=1)
    return float(np.mean(higher < k))


def _labels(t: np.ndarray, p: np.ndarray, labels: ArrayLike | None) -> np.ndarray:
    if labels is not None:
        return np.asarray(labels)
    return np.union1d(np.unique(t), np.unique(p))


def _positions(labels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The index of each value in `labels` (-1 where absent), vectorized."""
    order = np.argsort(labels, kind="stable")
    ordered = labels[order]
    at = np.clip(np.searchsorted(ordered, values), 0, max(len(labels) - 1, 0))
    found = (ordered[at] == values) if len(labels) else np.zeros(len(values), bool)
    return np.where(found, order[at] if len(labels) else -1, -1).astype(np.int64)


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike,
                     labels: ArrayLike | None = None) -> np.ndarray:
    """``C[i, j]`` = #(true == labels[i] and pred == labels[j]) as int64 (see module doc).

    Examples whose true or predicted label is not in `labels` are not counted.
    """
    t, p = _pair(y_true, y_pred, "confusion_matrix")
    t, p = t.ravel(), p.ravel()
    labs = _labels(t, p, labels)
    ti, pi = _positions(labs, t), _positions(labs, p)
    keep = (ti >= 0) & (pi >= 0)
    out = np.zeros((len(labs), len(labs)), dtype=np.int64)
    np.add.at(out, (ti[keep], pi[keep]), 1)
    return out


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0/0 (and x/0) defined as 0."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def precision_recall_f1(y_true: ArrayLike, y_pred: ArrayLike, average: str | None = "binary",
                        pos_label: Any = 1, labels: ArrayLike | None = None
                        ) -> tuple[Any, Any, Any]:
    """(precision, recall, F1) under `average` (see the module docstring)."""
    t, p = _pair(y_true, y_pred, "precision_recall_f1")
    t, p = t.ravel(), p.ravel()
    if average == "binary":
        labs = np.asarray([pos_label])
    elif average in ("macro", "micro", None):
        labs = _labels(t, p, labels)
    else:
        raise AttrError(f"average must be 'binary', 'macro', 'micro' or None, got {average!r}",
                        op="precision_recall_f1")
    tp = np.array([np.sum((t == c) & (p == c)) for c in labs], dtype=np.float64)
    fp = np.array([np.sum((t != c) & (p == c)) for c in labs], dtype=np.float64)
    fn = np.array([np.sum((t == c) & (p != c)) for c in labs], dtype=np.float64)
    if average == "micro":
        tp, fp, fn = tp.sum(keepdims=True), fp.sum(keepdims=True), fn.sum(keepdims=True)
    prec = _div(tp, tp + fp)
    rec = _div(tp, tp + fn)
    f1 = _div(2 * tp, 2 * tp + fp + fn)
    if average is None:
        return prec, rec, f1
    return float(np.mean(prec)), float(np.mean(rec)), float(np.mean(f1))


def precision(y_true: ArrayLike, y_pred: ArrayLike, average: str | None = "binary",
              pos_label: Any = 1, labels: ArrayLike | None = None) -> Any:
    """TP / (TP + FP) (see the module docstring for `average`)."""
    return precision_recall_f1(y_true, y_pred, average, pos_label, labels)[0]


def recall(y_true: ArrayLike, y_pred: ArrayLike, average: str | None = "binary",
           pos_label: Any = 1, labels: ArrayLike | None = None) -> Any:
    """TP / (TP + FN) (see the module docstring for `average`)."""
    return precision_recall_f1(y_true, y_pred, average, pos_label, labels)[1]


def f1_score(y_true: ArrayLike, y_pred: ArrayLike, average: str | None = "binary",
             pos_label: Any = 1, labels: ArrayLike | None = None) -> Any:
    """2 P R / (P + R) per class (see the module docstring for `average`)."""
    return precision_recall_f1(y_true, y_pred, average, pos_label, labels)[2]


def _columns(y_true: ArrayLike, y_pred: ArrayLike, what: str) -> tuple[np.ndarray, np.ndarray]:
    t, p = _pair(y_true, y_pred, what)
    t, p = t.astype(np.float64), p.astype(np.float64)
    if t.ndim <= 1:
        return t.reshape(-1, 1), p.reshape(-1, 1)
    return t.reshape(len(t), -1), p.reshape(len(p), -1)


def mean_squared_error(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """mean((y_pred - y_true)**2) over all elements."""
    t, p = _columns(y_true, y_pred, "mean_squared_error")
    return float(np.mean((p - t) ** 2))


def mean_absolute_error(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """mean(|y_pred - y_true|) over all elements."""
    t, p = _columns(y_true, y_pred, "mean_absolute_error")
    return float(np.mean(np.abs(p - t)))


def r2_score(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """The coefficient of determination, averaged over output columns (module docstring)."""
    t, p = _columns(y_true, y_pred, "r2_score")
    ss_res = np.sum((t - p) ** 2, axis=0)
    ss_tot = np.sum((t - t.mean(axis=0)) ** 2, axis=0)
    perfect = np.where(ss_res == 0, 1.0, 0.0)
    scores = np.where(ss_tot > 0, 1.0 - _div(ss_res, ss_tot), perfect)
    return float(np.mean(scores))


mse = mean_squared_error
mae = mean_absolute_error
r2 = r2_score

# --- adapting metrics to a model's raw outputs ----------------------------------------------

MetricFn = Callable[[np.ndarray, np.ndarray], float]


def _class_view(task: str, y_true: np.ndarray, out: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """(true labels, predicted labels) from targets and raw outputs (logits)."""
    if task == "multiclass":
        return y_true, np.argmax(out, axis=-1)
    if task == "categorical":
        return np.argmax(y_true, axis=-1), np.argmax(out, axis=-1)
    if task == "binary":
        return (y_true > 0.5).astype(np.int64), (out > 0).astype(np.int64)
    raise AttrError(f"a classification metric needs a classification loss, not task {task!r}",
                    op="metrics")


def resolve(spec: str | Callable[..., float], task: str) -> tuple[str, MetricFn]:
    """(name, fn(y_true, outputs) -> float) for a metric name or callable and a loss task.

    Names: accuracy (acc), top_k_accuracy / top<k>_accuracy (default k 5; multiclass and
    categorical), precision, recall, f1 (binary for a binary task, else macro), mse, mae, r2.
    A callable is used as is, named by its ``__name__``.
    """
    if callable(spec):
        return getattr(spec, "__name__", "metric"), spec
    if not isinstance(spec, str):
        raise AttrError(f"a metric is a name or a callable, got {spec!r}", op="metrics")
    name = "accuracy" if spec == "acc" else spec
    average = "binary" if task == "binary" else "macro"
    top = re.fullmatch(r"top_?(\d*)_?k?_accuracy", name)
    if name == "accuracy":
        return name, lambda t, o: accuracy(*_class_view(task, t, o))
    if top:
        k = int(top.group(1) or 5)
        if task not in ("multiclass", "categorical"):
            raise AttrError(f"{name} needs class scores (a multiclass loss)", op="metrics")

        def top_k(t: np.ndarray, o: np.ndarray) -> float:
            labels = np.argmax(t, axis=-1) if task == "categorical" else t
            return top_k_accuracy(labels.reshape(-1), o.reshape(-1, o.shape[-1]), k)

        return name, top_k
    if name in ("precision", "recall", "f1"):
        pick = {"precision": 0, "recall": 1, "f1": 2}[name]
        return name, lambda t, o: precision_recall_f1(*_class_view(task, t, o),
                                                      average=average)[pick]
    regression = {"mse": mean_squared_error, "mae": mean_absolute_error, "r2": r2_score}
    if name in regression:
        return name, regression[name]
    raise AttrError(f"unknown metric {spec!r} (accuracy, top_k_accuracy, precision, recall, "
                    "f1, mse, mae, r2, or a callable)", op="metrics")
