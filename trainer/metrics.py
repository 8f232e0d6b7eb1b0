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


# --------------------------------------------------------------------------- ranking
def positive_ranks(scores: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """0-based rank of each row's positive among its candidates; ties count against the model.

    Args:
      scores: ``[users, 1 + negatives]`` model scores, the positive in column 0.
      valid: optional boolean mask of the same shape; False marks padding (a user
        with fewer negatives than others). Column 0 must be valid.

    Returns:
      ``[users]`` int ranks: the number of valid negatives scoring >= the positive.

    Raises:
      ValueError: not a 2-D array with at least one candidate column, or a mask of another shape.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] < 1 or scores.shape[0] == 0:
        raise ValueError(f"scores must be [users, 1 + negatives] with users > 0, got shape {scores.shape}")
    negatives = scores[:, 1:]
    beaten_or_tied = negatives >= scores[:, :1]
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != scores.shape:
            raise ValueError(f"mask shape {valid.shape} != scores shape {scores.shape}")
        beaten_or_tied &= valid[:, 1:]
    return beaten_or_tied.sum(axis=1)


def hit_rate(ranks: np.ndarray, k: int) -> float:
    """HR@K: fraction of users whose positive is among the top K."""
    return float(np.mean(np.asarray(ranks) < k))


def ndcg(ranks: np.ndarray, k: int) -> float:
    """NDCG@K with one relevant item: 1 / log2(rank + 2) inside the top K, else 0."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return float(np.mean(np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)))


def mrr(ranks: np.ndarray) -> float:
    """Mean reciprocal rank of the positive (over all candidates, no cut-off)."""
    return float(np.mean(1.0 / (np.asarray(ranks, dtype=np.float64) + 1.0)))


def sampled_ranking_metrics(scores: np.ndarray, valid: np.ndarray | None = None, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """HR@K, NDCG@K, MRR for a positive ranked among fixed sampled negatives.

    Args:
      scores: ``[users, 1 + negatives]``, the positive in column 0.
      valid: optional mask of real candidates (see ``positive_ranks``).
      ks: cut-offs; ``hit@K`` equals ``hr@K`` and is reported under both names.

    Returns:
      ``{"hr@K", "hit@K", "ndcg@K" for each K, "mrr", "num_users", "num_candidates"}``.
    """
    ranks = positive_ranks(scores, valid)
    result: dict[str, float] = {}
    for k in ks:
        result[f"hr@{k}"] = hit_rate(ranks, k)
        result[f"hit@{k}"] = result[f"hr@{k}"]
        result[f"ndcg@{k}"] = ndcg(ranks, k)
    result["mrr"] = mrr(ranks)
    result["num_users"] = int(ranks.size)
    result["num_candidates"] = int(np.asarray(scores).shape[1])
    return result


def full_ranking_metrics(scores: np.ndarray, positives: np.ndarray, exclude: np.ndarray, ks: tuple[int, ...] = (10, 20)) -> dict[str, float]:
    """Recall@K and NDCG@K of one held-out item per user, ranked against the whole catalogue.

    Args:
      scores: ``[users, items]`` scores of every item.
      positives: ``[users]`` column of each user's held-out item.
      exclude: ``[users, items]`` boolean, True for items the user has in training
        (they can never count as a miss); the positive itself must not be excluded.
      ks: cut-offs.

    Returns:
      ``{"full_recall@K", "full_ndcg@K" for each K, "full_mrr"}``; ties count against the model.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=np.int64)
    rows = np.arange(scores.shape[0])
    positive_scores = scores[rows, positives]
    others = (scores >= positive_scores[:, None]) & ~np.asarray(exclude, dtype=bool)
    others[rows, positives] = False
    ranks = others.sum(axis=1)
    result: dict[str, float] = {}
    for k in ks:
        result[f"full_recall@{k}"] = hit_rate(ranks, k)  # one relevant item: recall == hit rate
        result[f"full_ndcg@{k}"] = ndcg(ranks, k)
    result["full_mrr"] = mrr(ranks)
    return result
