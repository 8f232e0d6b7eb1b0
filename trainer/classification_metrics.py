"""Multiclass classification metrics as pure NumPy functions (hand-checkable)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def confusion_matrix(labels: Sequence[int], predictions: Sequence[int], num_classes: int) -> np.ndarray:
    """``matrix[true][predicted]`` counts."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return matrix


def classification_report(labels: Sequence[int], predictions: Sequence[int], num_classes: int) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class precision/recall/F1/support.

    A class never predicted has precision 0; a class absent from ``labels`` has
    recall 0 and is left out of the macro average (as scikit-learn's
    ``labels=present`` would): macro-F1 averages over classes with support > 0.

    Returns:
      ``{"accuracy", "macro_f1", "per_class": [{class, precision, recall, f1, support}], "confusion_matrix"}``.
    """
    matrix = confusion_matrix(labels, predictions, num_classes)
    true_positive = np.diag(matrix).astype(float)
    predicted = matrix.sum(axis=0).astype(float)
    support = matrix.sum(axis=1).astype(float)
    precision = np.divide(true_positive, predicted, out=np.zeros(num_classes), where=predicted > 0)
    recall = np.divide(true_positive, support, out=np.zeros(num_classes), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(num_classes), where=denominator > 0)
    present = support > 0
    total = matrix.sum()
    return {
        "accuracy": float(true_positive.sum() / total) if total else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": [
            {"class": c, "precision": float(precision[c]), "recall": float(recall[c]), "f1": float(f1[c]),
             "support": int(support[c])}
            for c in range(num_classes)
        ],
        "confusion_matrix": matrix.tolist(),
    }
