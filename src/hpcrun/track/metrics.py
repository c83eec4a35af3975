"""Evaluation metrics, defined as scikit-learn defines them (threshold 0.5 unless configured).

sensitivity = recall of the positive class, specificity = recall of the negative class.
A metric that is undefined for the data (AUROC with one class present) is NaN.
"""

from __future__ import annotations

import math

import numpy as np

from ..rundir import EVALUATION_COLUMNS


def binary_metrics(labels: np.ndarray, probs: np.ndarray,
                   threshold: float = 0.5) -> dict[str, float]:
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        f1_score,
        matthews_corrcoef,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    y = np.asarray(labels).astype(int)
    p = np.asarray(probs, dtype=np.float64)
    pred = (p >= threshold).astype(int)
    both = len(np.unique(y)) == 2
    out = {
        "auroc": float(roc_auc_score(y, p)) if both else math.nan,
        "auprc": float(average_precision_score(y, p)) if y.any() else math.nan,
        "accuracy": float(accuracy_score(y, pred)),
        "sensitivity": float(recall_score(y, pred, pos_label=1, zero_division=0)),
        "specificity": float(recall_score(y, pred, pos_label=0, zero_division=0)),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "mcc": float(matthews_corrcoef(y, pred)),
    }
    assert list(out) == EVALUATION_COLUMNS[1:]
    return out


def separation_stats(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Mean/std of predicted probabilities per class and their difference (pos - neg)."""
    y = np.asarray(labels) > 0.5
    p = np.asarray(probs, dtype=np.float64)
    pos, neg = p[y], p[~y]
    stats = {
        "pos_mean": float(pos.mean()) if pos.size else math.nan,
        "pos_std": float(pos.std()) if pos.size else math.nan,
        "neg_mean": float(neg.mean()) if neg.size else math.nan,
        "neg_std": float(neg.std()) if neg.size else math.nan,
    }
    stats["separation"] = stats["pos_mean"] - stats["neg_mean"]
    return stats


def separation_from_sums(n_pos: float, s_pos: float, q_pos: float, n_neg: float, s_neg: float,
                         q_neg: float) -> dict[str, float]:
    """The same statistics from running sums (count, sum, sum of squares) per class."""

    def moments(n: float, s: float, q: float) -> tuple[float, float]:
        if n <= 0:
            return math.nan, math.nan
        mean = s / n
        return mean, math.sqrt(max(q / n - mean * mean, 0.0))

    pos_mean, pos_std = moments(n_pos, s_pos, q_pos)
    neg_mean, neg_std = moments(n_neg, s_neg, q_neg)
    return {"pos_mean": pos_mean, "pos_std": pos_std, "neg_mean": neg_mean, "neg_std": neg_std,
            "separation": pos_mean - neg_mean}


def multiclass_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """evaluation.csv's metrics for ``probs`` of shape (N, C): one-vs-rest, macro-averaged over
    the classes (AUROC, AUPRC, sensitivity = recall, specificity, precision, F1); accuracy and
    MCC over all classes at once. A metric undefined for the data is NaN."""
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        f1_score,
        matthews_corrcoef,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    y = np.asarray(labels).astype(int)
    p = np.asarray(probs, dtype=np.float64)
    classes = np.arange(p.shape[1])
    pred = p.argmax(axis=1)
    onehot = (y[:, None] == classes[None, :]).astype(int)
    present = onehot.any(axis=0) & ~onehot.all(axis=0)
    auroc = auprc = math.nan
    if present.any():
        auroc = float(np.mean([roc_auc_score(onehot[:, c], p[:, c])
                               for c in classes if present[c]]))
        auprc = float(np.mean([average_precision_score(onehot[:, c], p[:, c])
                               for c in classes if present[c]]))
    specificity = []
    for c in classes:
        negatives = y != c
        if negatives.any():
            specificity.append(float(np.mean(pred[negatives] != c)))
    recall = float(recall_score(y, pred, labels=classes, average="macro", zero_division=0))
    out = {
        "auroc": auroc, "auprc": auprc, "accuracy": float(accuracy_score(y, pred)),
        "sensitivity": recall,
        "specificity": float(np.mean(specificity)) if specificity else math.nan,
        "precision": float(precision_score(y, pred, labels=classes, average="macro",
                                           zero_division=0)),
        "recall": recall,
        "f1": float(f1_score(y, pred, labels=classes, average="macro", zero_division=0)),
        "mcc": float(matthews_corrcoef(y, pred)),
    }
    assert list(out) == EVALUATION_COLUMNS[1:]
    return out


def regression_metrics(targets: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """evaluation.csv's metrics for a regression (``REGRESSION_COLUMNS``)."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    y = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
    p = np.asarray(predictions, dtype=np.float64).reshape(len(predictions), -1)
    return {"rmse": float(math.sqrt(mean_squared_error(y, p))),
            "mae": float(mean_absolute_error(y, p)),
            "r2": float(r2_score(y, p)) if len(y) > 1 else math.nan}
