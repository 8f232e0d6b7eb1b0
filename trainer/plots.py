"""PNG plots written next to ``metrics.json`` (matplotlib, headless)."""
from __future__ import annotations

import io
from typing import Mapping, Sequence

import tensorflow as tf


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


SKIPPED_CURVES = ("epoch", "regularization_loss", "total_loss")


def loss_curves(history: Mapping[str, Sequence[float]], path: str, title: str, xlabel: str = "epoch",
                epochs: Sequence[int] | None = None, metrics: Sequence[str] | None = None) -> str:
    """Plots the training logs and the valid metrics, one panel per quantity.

    A panel shows ``name`` (train) and ``val_name`` (valid) when both exist, or
    whichever exists (ranking metrics are measured on valid only).

    Args:
      history: per-epoch logs (``loss``, ``rmse``, ``val_rmse``, ...); ``epoch`` is skipped.
      path: output PNG (local or gs://).
      title: figure title.
      xlabel: what one step on the x axis is (``epoch``, or ``Gibbs sweep``).
      epochs: the x value of each entry (default ``history["epoch"]`` or 1, 2, ...).
      metrics: valid-only panels to show (default: every ``val_*`` entry).
    """
    plt = _figure()
    names = [k for k in history if not k.startswith("val_") and k not in SKIPPED_CURVES]
    valid_only = [k[4:] for k in history if k.startswith("val_") and k[4:] not in names
                  and (metrics is None or k[4:] in metrics)]
    names += valid_only
    if epochs is None:
        epochs = history.get("epoch") or range(1, 1 + max((len(v) for v in history.values()), default=0))
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(4.5 * max(1, len(names)), 3.6), squeeze=False)
    for axis, name in zip(axes[0], names):
        xs = list(epochs)
        if name in history:
            axis.plot(xs[:len(history[name])], history[name], marker="o", label="train")
        if f"val_{name}" in history:
            axis.plot(xs[:len(history[f"val_{name}"])], history[f"val_{name}"], marker="s", label="valid")
        axis.set_xlabel(xlabel)
        axis.set_title(name)
        axis.grid(alpha=0.3)
        axis.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig, plt, path: str) -> str:
    """Writes a figure as PNG through tf.io.gfile (so gs:// works) and closes it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    with tf.io.gfile.GFile(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return path


def confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str, title: str) -> str:
    """Plots a confusion matrix (rows: true class, columns: predicted), row-normalized colours.

    Args:
      matrix: square counts, ``matrix[true][predicted]``.
      class_names: one name per class.
      path: output PNG (local or gs://).
      title: figure title.
    """
    import numpy as np

    plt = _figure()
    counts = np.asarray(matrix, dtype=np.int64)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)
    size = max(5.0, 0.42 * len(class_names) + 2)
    fig, axis = plt.subplots(figsize=(size + 1.2, size))
    image = axis.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            if counts[i, j]:
                axis.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                          color="white" if share[i, j] > 0.5 else "black")
    axis.set_xticks(range(len(class_names)), class_names, rotation=90, fontsize=8)
    axis.set_yticks(range(len(class_names)), class_names, fontsize=8)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    fig.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="share of the true class")
    axis.set_title(title)
    fig.tight_layout()
    return _save(fig, plt, path)


def label_distribution(counts_by_split: Mapping[str, Sequence[int]], path: str, title: str) -> str:
    """Plots class counts per split as grouped bars (log scale: classes are very imbalanced).

    Args:
      counts_by_split: split name -> count per class (same length for every split).
      path: output PNG (local or gs://).
      title: figure title.
    """
    plt = _figure()
    splits = list(counts_by_split)
    num_classes = len(next(iter(counts_by_split.values())))
    width = 0.8 / max(1, len(splits))
    fig, axis = plt.subplots(figsize=(max(6.0, 0.5 * num_classes + 2), 3.8))
    for k, split in enumerate(splits):
        xs = [c + (k - (len(splits) - 1) / 2) * width for c in range(num_classes)]
        axis.bar(xs, counts_by_split[split], width=width, label=f"{split} ({sum(counts_by_split[split])})")
    axis.set_yscale("log")
    axis.set_xticks(range(num_classes))
    axis.set_xlabel("class")
    axis.set_ylabel("users (log scale)")
    axis.grid(axis="y", alpha=0.3)
    axis.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: never over the tallest bars
    axis.set_title(title)
    fig.tight_layout()
    return _save(fig, plt, path)


def force_directed_layout(pairs: Sequence[Sequence[int]], num_nodes: int, seed: int = 0):
    """2-D positions [nodes, 2] of a Fruchterman-Reingold layout of an undirected graph.

    igraph's C implementation: 0.6-2.3 s for the 7.6k users and 28k friendships of LastFM
    Asia here, where networkx's spring layout took 156 s. igraph draws its random start
    from the generator it is given, here one seeded with ``seed`` (so a rerun draws the
    same picture); passing start positions instead made it 70x slower (170 s: a start in
    a small box is far from the layout's scale).
    """
    import random

    import igraph
    import numpy as np

    graph = igraph.Graph(n=num_nodes, edges=[tuple(map(int, p)) for p in pairs])
    igraph.set_random_number_generator(random.Random(seed))
    try:
        return np.asarray(graph.layout_fruchterman_reingold(niter=500).coords)
    finally:
        igraph.set_random_number_generator(random)  # igraph's default: the random module


def network(positions, pairs, labels, predicted, marked, path: str, *, num_classes: int, title: str) -> str:
    """Two panels of one graph: nodes coloured by true class, and by predicted class with ``marked`` nodes crossed.

    Args:
      positions: [nodes, 2] layout.
      pairs: [edges, 2] node indices (drawn as faint lines).
      labels: [nodes] true class, -1 unknown (grey).
      predicted: [nodes] predicted class, -1 none (grey).
      marked: [nodes] bool, e.g. the test users predicted wrongly (black crosses on the right panel).
      path: output PNG (local or gs://).
      num_classes: colours needed (tab20 up to 20 classes).
      title: figure title.
    """
    import numpy as np
    from matplotlib.collections import LineCollection

    plt = _figure()
    positions = np.asarray(positions, dtype=float)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    # tab20 without its two greys (grey is "unknown" here): 18 distinct colours, LastFM Asia's classes
    distinct = [c for i, c in enumerate(plt.get_cmap("tab20").colors) if i not in (14, 15)]
    colours = distinct[:num_classes] if num_classes <= len(distinct) else [
        plt.get_cmap("turbo")(c / max(num_classes - 1, 1)) for c in range(num_classes)]
    palette = np.array([(*c[:3], 1.0) for c in colours] + [(0.75, 0.75, 0.75, 1.0)])
    size = float(np.clip(30000 / max(len(positions), 1), 3, 16))  # dots shrink as the graph grows
    edge_alpha = float(np.clip(300 / max(len(pairs), 1), 0.012, 0.25))  # dense clusters must not turn black
    fig, axes = plt.subplots(1, 2, figsize=(18, 9.6))
    for axis, classes, name in ((axes[0], np.asarray(labels), "true class"),
                                (axes[1], np.asarray(predicted), "predicted class (x: test user predicted wrongly)")):
        axis.add_collection(LineCollection(positions[pairs], colors=(0.3, 0.3, 0.3, edge_alpha), linewidths=0.3))
        axis.scatter(positions[:, 0], positions[:, 1], s=size, c=palette[np.where(classes < 0, num_classes, classes)],
                     linewidths=0)
        axis.set_title(name)
        axis.set_aspect("equal")
        axis.axis("off")
    crossed = np.asarray(marked, dtype=bool)
    axes[1].scatter(positions[crossed, 0], positions[crossed, 1], s=28, marker="x", c="black", linewidths=0.9)
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=palette[c], label=str(c)) for c in range(num_classes)]
    fig.legend(handles=handles, loc="lower center", ncol=min(num_classes, 20), title="class", frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    return _save(fig, plt, path)
