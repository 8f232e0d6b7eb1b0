"""Correct and Smooth: post-processing of a node classifier's predictions over the graph.

Huang, He, Singh, Lim & Benson, "Combining Label Propagation and Simple Models
Out-performs Graph Neural Networks" (ICLR 2021). The GNN classifies each user
from a sampled two-hop subgraph; these two propagations over the *whole*
friendship graph add what lies further away, using the train labels only:

1. **Correct**: the base model's errors on train users (``Y - Z``) are spread
   to their neighbours (``E <- a1 S E + (1 - a1) E0``, clipped to [-1, 1]) and
   added back with the paper's autoscale (each user's spread error rescaled to
   the mean L1 error on train): errors of a neighbourhood are correlated.
2. **Smooth**: the corrected predictions, with train users set to their true
   one-hot label, are propagated as label propagation does
   (``G <- a2 S G + (1 - a2) G0``).

``S = D^-1/2 A D^-1/2`` is the symmetric-normalised adjacency of the undirected
graph (no self loops), as in the paper and in the label propagation baseline.

Why our own code: neither TensorFlow, TF-GNN nor the libraries installed here
ship it (PyTorch Geometric's ``CorrectAndSmooth`` needs PyTorch); the whole
method is two sparse-matrix power iterations, written here with SciPy and
checked by hand in ``tests/test_correct_and_smooth.py``.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse


@dataclasses.dataclass(frozen=True)
class Settings:
    """The two propagations' parameters.

    Attributes:
      correct_alpha: weight of the neighbours in the error propagation (0: no correction).
      smooth_alpha: weight of the neighbours in the label smoothing (0: no smoothing).
      iterations: power iterations of each propagation.
    """

    correct_alpha: float = 0.8
    smooth_alpha: float = 0.8
    iterations: int = 50


def normalized_adjacency(pairs: np.ndarray, num_nodes: int) -> scipy.sparse.csr_matrix:
    """``D^-1/2 A D^-1/2`` of the undirected graph whose edges are ``pairs`` ([edges, 2] node indices).

    Each pair is one undirected edge (both directions are added); a pair given in
    both orders counts once. Isolated nodes keep an all-zero row.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    rows = np.concatenate([pairs[:, 0], pairs[:, 1]])
    cols = np.concatenate([pairs[:, 1], pairs[:, 0]])
    adjacency = scipy.sparse.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(num_nodes, num_nodes))
    adjacency.data[:] = 1.0  # duplicates were summed: one edge is one edge
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    inverse_sqrt = np.zeros(num_nodes)
    inverse_sqrt[degree > 0] = 1.0 / np.sqrt(degree[degree > 0])
    scaling = scipy.sparse.diags(inverse_sqrt)
    return (scaling @ adjacency @ scaling).tocsr()


def propagate(adjacency: scipy.sparse.csr_matrix, start: np.ndarray, alpha: float, iterations: int,
              clip: bool = False) -> np.ndarray:
    """``iterations`` steps of ``X <- alpha S X + (1 - alpha) X0`` from ``X0 = start``.

    Args:
      adjacency: ``S``, the normalised adjacency.
      start: ``X0`` [nodes, classes].
      alpha: weight of the neighbours.
      iterations: number of steps.
      clip: clip ``X`` to [-1, 1] after every step (the correction step's errors).
    """
    values = start.copy()
    restart = (1.0 - alpha) * start
    for _ in range(iterations):
        values = alpha * (adjacency @ values) + restart
        if clip:
            np.clip(values, -1.0, 1.0, out=values)
    return values


def correct_and_smooth(base: np.ndarray, labels: np.ndarray, known: np.ndarray,
                       adjacency: scipy.sparse.csr_matrix, settings: Settings) -> np.ndarray:
    """The corrected and smoothed class scores of every node.

    Args:
      base: the base model's class probabilities [nodes, classes] (rows of zeros
        for nodes it did not score: they only pass on what reaches them).
      labels: the class of every node [nodes] (read only where ``known``).
      known: [nodes] bool, the nodes whose label may be used (the train users).
      adjacency: ``normalized_adjacency`` of the graph.
      settings: the propagation parameters.

    Returns:
      Scores [nodes, classes] (argmax is the prediction; rows need not sum to 1).
    """
    base = np.asarray(base, dtype=np.float64)
    truth = np.zeros_like(base)
    truth[known, np.asarray(labels)[known]] = 1.0
    corrected = base
    if settings.correct_alpha > 0 and known.any():
        error = np.zeros_like(base)
        error[known] = truth[known] - base[known]
        spread = propagate(adjacency, error, settings.correct_alpha, settings.iterations, clip=True)
        # Autoscale: each node's spread error gets the size of the average train error.
        sigma = np.abs(error[known]).sum() / known.sum()
        size = np.abs(spread).sum(axis=1)
        scale = np.divide(sigma, size, out=np.ones_like(size), where=size > 1e-12)
        corrected = base + scale[:, None] * spread
    start = corrected.copy()
    start[known] = truth[known]
    if settings.smooth_alpha <= 0:
        return start
    return propagate(adjacency, start, settings.smooth_alpha, settings.iterations)
