"""The one output writer of every job: ``metrics.json``, ``config.resolved.yaml`` and ``plots/``.

The same files for every model, written by the lead worker only, ``metrics.json``
last; ``RunResult.outputs`` lists what was written and nothing else (a path is
listed only when that file or directory exists). The SavedModel, backup and
TensorBoard directories are written by the experiment and listed here.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

import tensorflow as tf

from trainer import config as config_lib
from trainer import plots

CONFIG_FILE = "config.resolved.yaml"
METRICS_FILE = "metrics.json"
PLOTS_DIR = "plots"


def write_config(job_dir: str, config) -> str:
    """Writes ``JOB/config.resolved.yaml`` (first, so a failed job still says what it ran)."""
    tf.io.gfile.makedirs(job_dir)
    path = f"{job_dir}/{CONFIG_FILE}"
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write(config_lib.dump(config))
    return path


def _loss_plot(result, plots_dir: str) -> str:
    step = result.selection.get("step", "epoch")
    title = f"{result.model} on {os.path.basename(result.data)}"
    if result.selection.get("best_epoch") and step == "epoch":
        title += f" (kept epoch {result.selection['best_epoch']}, by valid {result.selection.get('monitor')})"
    metrics = [m for m in (result.selection.get("monitor"),) if m]
    return plots.loss_curves(result.history, f"{plots_dir}/loss.png", title, xlabel=step, metrics=metrics or None)


def write_run(result, paths, *, export_dir: str | None, wrote_tensorboard: bool,
              extra_plots: Callable[[str], list[str]], started: float):
    """Writes plots and ``metrics.json`` for ``result``; returns it with ``outputs`` and the total time.

    Args:
      result: the ``trainer.experiment.RunResult`` (``outputs`` empty).
      paths: the job's ``JobPaths``.
      export_dir: the kept SavedModel directory.
      wrote_tensorboard: whether TensorBoard event files were written.
      extra_plots: the task's plots, given the plots directory; returns the files written.
      started: when the run started (for ``timings.total_seconds``).
    """
    plots_dir = f"{paths.job_dir}/{PLOTS_DIR}"
    tf.io.gfile.makedirs(plots_dir)
    written = [_loss_plot(result, plots_dir), *extra_plots(plots_dir)]
    candidates = {
        "job_dir": paths.job_dir,
        "metrics": f"{paths.job_dir}/{METRICS_FILE}",
        "config": f"{paths.job_dir}/{CONFIG_FILE}",
        "plots": written,
        "export": export_dir,
        "checkpoints": paths.checkpoints,
        "backup": paths.backup,
        "tensorboard": paths.tensorboard if wrote_tensorboard else None,
    }
    listed = {k: v for k, v in candidates.items()
              if k in ("metrics", "job_dir") or (isinstance(v, list) and v) or (isinstance(v, str) and _holds_files(v))}
    timings = {**result.timings, "total_seconds": round(time.time() - started, 3)}
    final = dataclasses.replace(result, outputs=listed, timings=timings)
    with tf.io.gfile.GFile(listed["metrics"], "w") as handle:
        handle.write(json.dumps(final.to_json(), indent=2, default=_plain) + "\n")
    return final


def _holds_files(path: str) -> bool:
    """A file, or a directory with at least one file below it (an emptied backup is not an output)."""
    if not tf.io.gfile.exists(path):
        return False
    if not tf.io.gfile.isdir(path):
        return True
    return any(files for _, _, files in tf.io.gfile.walk(path))


def _plain(value: Any):
    """JSON for NumPy scalars and arrays that metrics may hold."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
