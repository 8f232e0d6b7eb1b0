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
