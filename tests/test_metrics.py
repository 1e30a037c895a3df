"""Metrics: hand-computed values, an independent implementation from the confusion matrix
(and sklearn when installed), edge cases, and the adapters a Model uses on raw outputs."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.training import metrics as mt

Y_TRUE = np.array([0, 1, 2, 2, 1, 0, 1])
Y_PRED = np.array([0, 2, 2, 2, 1, 0, 0])


def test_multiclass_by_hand() -> None:
    assert mt.accuracy(Y_TRUE, Y_PRED) == pytest.approx(5 / 7)
    np.testing.assert_array_equal(mt.confusion_matrix(Y_TRUE, Y_PRED),
                                  [[2, 0, 0], [1, 1, 1], [0, 0, 2]])
    p, r, f = mt.precision_recall_f1(Y_TRUE, Y_PRED, average=None)
    np.testing.assert_allclose(p, [2 / 3, 1.0, 2 / 3])
    np.testing.assert_allclose(r, [1.0, 1 / 3, 1.0])
    np.testing.assert_allclose(f, [0.8, 0.5, 0.8])
    assert mt.precision(Y_TRUE, Y_PRED, average="macro") == pytest.approx(7 / 9)
    assert mt.recall(Y_TRUE, Y_PRED, average="macro") == pytest.approx(7 / 9)
    # Macro F1 is the mean of per-class F1 (0.7), not the F1 of macro P and R (7/9).
    assert mt.f1_score(Y_TRUE, Y_PRED, average="macro") == pytest.approx(0.7)
    assert mt.f1_score(Y_TRUE, Y_PRED, average="micro") == pytest.approx(5 / 7)
    # Explicit labels fix the row/column order; examples with other labels are not counted.
    np.testing.assert_array_equal(mt.confusion_matrix([0, 1, 2, 5], [1, 1, 2, 0],
                                                      labels=[2, 1, 0]),
                                  [[1, 0, 0], [0, 1, 0], [0, 1, 0]])


def test_binary_by_hand() -> None:
    t = np.array([1, 0, 1, 1, 0, 0, 1, 0])
    p = np.array([1, 1, 0, 1, 0, 1, 1, 0])  # TP 3, FP 2, FN 1, TN 2
    assert mt.precision(t, p) == pytest.approx(3 / 5)
    assert mt.recall(t, p) == pytest.approx(3 / 4)
    assert mt.f1_score(t, p) == pytest.approx(2 / 3)
    assert mt.precision(t, p, pos_label=0) == pytest.approx(2 / 3)
    # 0/0 is 0: no predicted positives, no true positives.
    assert mt.precision(t, np.zeros_like(t)) == 0.0
    assert mt.f1_score(np.zeros(4, int), np.zeros(4, int)) == 0.0


def test_top_k_by_hand() -> None:
    scores = np.array([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.8, 0.1, 0.1]])
    labels = np.array([2, 0, 1])
    assert mt.top_k_accuracy(labels, scores, k=1) == 0.0
    assert mt.top_k_accuracy(labels, scores, k=2) == 1.0  # ties count in the label's favour
    assert mt.top_k_accuracy(np.array([1, 2, 0]), scores, k=1) == 1.0
    with pytest.raises(gc.ShapeError, match="labels must lie"):
        mt.top_k_accuracy(np.array([3, 0, 0]), scores, k=1)


def test_regression_by_hand() -> None:
    t = np.array([3.0, -0.5, 2.0, 7.0])
    p = np.array([2.5, 0.0, 2.0, 8.0])
    assert mt.mean_squared_error(t, p) == pytest.approx(0.375)
    assert mt.mean_absolute_error(t, p) == pytest.approx(0.5)
    # SS_res = 1.5, mean 2.875, SS_tot = 29.1875
    assert mt.r2_score(t, p) == pytest.approx(1 - 1.5 / 29.1875)
    t2 = np.array([[0.5, 1.0], [-1.0, 1.0], [7.0, -6.0]])
    p2 = np.array([[0.0, 2.0], [-1.0, 2.0], [8.0, -5.0]])
    col0 = 1 - 1.25 / np.sum((t2[:, 0] - t2[:, 0].mean()) ** 2)
    col1 = 1 - 3.0 / np.sum((t2[:, 1] - t2[:, 1].mean()) ** 2)
    assert mt.r2_score(t2, p2) == pytest.approx((col0 + col1) / 2)
    assert mt.r2_score([2.0, 2.0], [2.0, 2.0]) == 1.0
    assert mt.r2_score([2.0, 2.0], [2.0, 3.0]) == 0.0


def _independent(t: np.ndarray, p: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per-class precision/recall/F1 from a confusion matrix built with a plain loop."""
    cm = np.zeros((k, k))
    for a, b in zip(t, p):
        cm[a, b] += 1
    tp = np.diag(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.nan_to_num(tp / cm.sum(axis=0))
        rec = np.nan_to_num(tp / cm.sum(axis=1))
        f1 = np.nan_to_num(2 * prec * rec / (prec + rec))
    return {"cm": cm, "p": prec, "r": rec, "f1": f1}


@pytest.mark.parametrize("seed", range(5))
def test_random_labels_against_independent_formulas(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = 4
    t = rng.integers(0, k, 60)
    p = np.where(rng.random(60) < 0.6, t, rng.integers(0, k, 60))
    ref = _independent(t, p, k)
    np.testing.assert_array_equal(mt.confusion_matrix(t, p, labels=range(k)), ref["cm"])
    prec, rec, f1 = mt.precision_recall_f1(t, p, average=None, labels=range(k))
    np.testing.assert_allclose(prec, ref["p"])
    np.testing.assert_allclose(rec, ref["r"])
    np.testing.assert_allclose(f1, ref["f1"])
    assert mt.f1_score(t, p, average="macro", labels=range(k)) == pytest.approx(ref["f1"].mean())
    assert mt.accuracy(t, p) == pytest.approx(np.trace(ref["cm"]) / 60)
    y = rng.standard_normal((30, 2))
    yp = y + 0.3 * rng.standard_normal((30, 2))
    ss = ((y - yp) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)
    assert mt.r2_score(y, yp) == pytest.approx(np.mean(1 - ss))


@pytest.mark.parametrize("seed", range(3))
def test_against_sklearn(seed: int) -> None:
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    t, p = rng.integers(0, 5, 80), rng.integers(0, 5, 80)
    for avg in ("macro", "micro"):
        assert mt.f1_score(t, p, average=avg) == pytest.approx(sk.f1_score(t, p, average=avg))
        assert mt.precision(t, p, average=avg) == pytest.approx(
            sk.precision_score(t, p, average=avg, zero_division=0))
    np.testing.assert_array_equal(mt.confusion_matrix(t, p), sk.confusion_matrix(t, p))
    scores = rng.standard_normal((80, 5))
    assert mt.top_k_accuracy(t, scores, 3) == pytest.approx(
        sk.top_k_accuracy_score(t, scores, k=3))
    y, yp = rng.standard_normal(50), rng.standard_normal(50)
    assert mt.r2_score(y, yp) == pytest.approx(sk.r2_score(y, yp))


def test_model_adapters_read_raw_outputs() -> None:
    logits = np.array([[2.0, 0.1, 0.0], [0.0, 0.2, 0.1], [0.0, 0.0, 3.0]])
    labels = np.array([0, 2, 2])
    name, acc = mt.resolve("acc", "multiclass")
    assert name == "accuracy" and acc(labels, logits) == pytest.approx(2 / 3)
    name, top2 = mt.resolve("top2_accuracy", "multiclass")
    assert top2(labels, logits) == 1.0
    _, cat = mt.resolve("accuracy", "categorical")
    assert cat(np.eye(3)[labels], logits) == pytest.approx(2 / 3)
    _, f1 = mt.resolve("f1", "binary")  # logits > 0 is the positive class
    assert f1(np.array([[1.0], [0.0], [1.0]]), np.array([[0.3], [-1.0], [-0.2]])) == \
        pytest.approx(mt.f1_score([1, 0, 1], [1, 0, 0]))
    _, r2 = mt.resolve("r2", "regression")
    assert r2(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0])) == 1.0
    with pytest.raises(gc.AttrError, match="unknown metric 'auc'"):
        mt.resolve("auc", "binary")
    with pytest.raises(gc.AttrError, match="needs a classification loss"):
        mt.resolve("accuracy", "regression")[1](np.zeros(2), np.zeros(2))
    with pytest.raises(gc.ShapeError, match=r"shape \(3,\) but y_pred has shape \(2,\)"):
        mt.accuracy([1, 2, 3], [1, 2])
