"""Evaluation metrics as pure NumPy functions, checked against hand-computed values.

The Keras metrics inside the Tasks are for progress bars and TensorBoard; the
numbers in ``metrics.json`` come from these functions over the whole eval set.
"""
from __future__ import annotations

import numpy as np


def rmse(predictions: np.ndarray, targets: np.ndarray) -> float:
    """Root mean squared error.

    Raises:
      ValueError: empty or mismatched inputs.
    """
    predictions, targets = _pair(predictions, targets)
    return float(np.sqrt(np.mean((predictions - targets) ** 2)))


def mae(predictions: np.ndarray, targets: np.ndarray) -> float:
    """Mean absolute error."""
    predictions, targets = _pair(predictions, targets)
    return float(np.mean(np.abs(predictions - targets)))


def _pair(predictions: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    predictions = np.asarray(predictions, dtype=np.float64).reshape(-1)
    targets = np.asarray(targets, dtype=np.float64).reshape(-1)
    if predictions.shape != targets.shape:
        raise ValueError(f"{predictions.shape[0]} predictions for {targets.shape[0]} targets")
    if predictions.size == 0:
        raise ValueError("no examples to evaluate")
    return predictions, targets
