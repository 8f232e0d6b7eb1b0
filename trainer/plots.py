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


def loss_curves(history: Mapping[str, Sequence[float]], path: str, title: str) -> str:
    """Plots every metric of a Keras history, train and validation side by side.

    Args:
      history: ``History.history`` (``loss``, ``val_loss``, ``rmse``, ...).
      path: output PNG (local or gs://).
      title: figure title.
    """
    plt = _figure()
    names = [k for k in history if not k.startswith("val_") and k not in ("regularization_loss", "total_loss")]
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.6), squeeze=False)
    for axis, name in zip(axes[0], names):
        epochs = range(1, len(history[name]) + 1)
        axis.plot(epochs, history[name], marker="o", label="train")
        if f"val_{name}" in history:
            axis.plot(range(1, len(history[f"val_{name}"]) + 1), history[f"val_{name}"], marker="s", label="eval")
        axis.set_xlabel("epoch")
        axis.set_title(name)
        axis.grid(alpha=0.3)
        axis.legend()
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    with tf.io.gfile.GFile(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return path
