"""Keras callbacks of the one fit loop (``trainer.experiment``), the same for every task.

In the order the experiment lists them:

* ``EpochTimer``: wall time of each epoch's training steps, for ``metrics.json``.
* ``StopOnNonFiniteLoss``: a NaN/inf loss is one clear error, not a broken model.
* ``ValidEvaluation``: the task's *exact* evaluation of ``valid`` after every
  epoch, added to the epoch's logs as ``val_<metric>`` (so Keras' History, the
  TensorBoard callback and the selection below all see it). Exact for every
  task, rather than Keras' ``validation_data``: ranking metrics are not a mean
  over batches, and several workers would each see a part of the data.
* ``tf.keras.callbacks.BackupAndRestore`` (not defined here): the model and
  optimizer after every epoch, for a relaunch after preemption.
* ``BestEpoch``: early stopping on the monitored valid metric with the best
  weights restored, whose state survives a relaunch (must come after the backup).
* ``HypertuneReporter``: the monitored valid metric after every epoch to Vertex
  AI hyperparameter tuning (cloudml-hypertune file), lead worker only.
* ``TrackerReporter``: every epoch's logs to an experiment tracker (``trainer.tracking``).
"""
from __future__ import annotations

import io
import json
import math
import time
from typing import Callable, Mapping

import numpy as np
import tensorflow as tf


class TrainingError(RuntimeError):
    """Training went wrong in a way the user can act on (e.g. a non-finite loss)."""


class EpochTimer(tf.keras.callbacks.Callback):
    """Wall time of every epoch's training steps (validation excluded)."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self._started = 0.0
        self._last_batch_end = 0.0
        self._supports_tf_logs = True  # no per-batch conversion of logs to NumPy

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.time()

    def on_train_batch_end(self, batch, logs=None):
        self._last_batch_end = time.time()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(max(self._last_batch_end, self._started) - self._started)


class StopOnNonFiniteLoss(tf.keras.callbacks.Callback):
    """Turns a NaN/inf loss into one clear error instead of a silently broken model."""

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingError(
                f"loss became {float(loss)} in epoch {epoch + 1}; lower train.learning_rate or raise the L2 terms"
            )


class ValidEvaluation(tf.keras.callbacks.Callback):
    """Adds ``val_<name>`` for the task's metrics ``names`` of ``evaluate(model)`` to the epoch's logs.

    Every worker evaluates the whole valid split with its own (identical, mirrored)
    weights, so every worker takes the same selection decision without collectives.
    """

    def __init__(self, evaluate: Callable[[tf.keras.Model], Mapping[str, float]], names: tuple[str, ...]):
        super().__init__()
        self._evaluate = evaluate
        self._names = names
        self.seconds: list[float] = []

    def on_epoch_end(self, epoch, logs=None):
        started = time.time()
        values = self._evaluate(self.model)
        self.seconds.append(time.time() - started)
        if logs is not None:
            logs.update({f"val_{k}": float(values[k]) for k in self._names if k in values})


class BestEpoch(tf.keras.callbacks.Callback):
    """Early stopping on a valid metric with the best weights restored, surviving a relaunch.

    ``tf.keras.callbacks.EarlyStopping(restore_best_weights=True)`` keeps the best
    weights and the history in memory only, so after a preemption the resumed run
    would choose among the epochs after the restart. This one also writes its state
    (per-epoch logs, best epoch, best weights) to ``state_dir`` after every epoch
    (lead only; atomically, by rename) and loads it at the start of a run when it is
    there. Put it *after* ``BackupAndRestore`` in the callback list: the backup is
    written first, so a kill between the two writes loses that epoch's log line,
    never makes the selection point to an epoch the backup does not have. The state
    is deleted at the end of a finished fit, as the backup is.

    Every worker keeps the same state (each computes the same valid metric); non-leads
    read the lead's file on a relaunch (the job directories are shared).

    Args:
      state_dir: where the state lives (``BACKUP/selection``).
      monitor: the log key that chooses (``val_rmse``); None: keep the last epoch.
      goal: ``min`` or ``max``.
      patience: epochs without improvement before stopping (None: never stop early).
      is_lead: whether this process writes the state.
    """

    def __init__(self, state_dir: str, monitor: str | None, goal: str, patience: int | None, is_lead: bool):
        super().__init__()
        self._state_json = f"{state_dir}/state.json"
        self._weights_npz = f"{state_dir}/best_weights.npz"
        self._state_dir = state_dir
        self.monitor = monitor
        self._sign = -1.0 if goal == "min" else 1.0
        self._patience = patience
        self._is_lead = is_lead
        self.records: dict[int, dict[str, float]] = {}
        self.best, self.best_epoch, self.best_weights = -np.inf, 0, None
        self.resumed_from = 0
        self._first_epoch = True

    def _write_atomically(self, path: str, payload: bytes) -> None:
        with tf.io.gfile.GFile(path + ".tmp", "wb") as handle:
            handle.write(payload)
        tf.io.gfile.rename(path + ".tmp", path, overwrite=True)

    def on_train_begin(self, logs=None):
        self.records, self.best, self.best_epoch, self.best_weights = {}, -np.inf, 0, None
        self.resumed_from, self._first_epoch = 0, True
        if tf.io.gfile.exists(self._state_json) and tf.io.gfile.exists(self._weights_npz):
            with tf.io.gfile.GFile(self._state_json) as handle:
                state = json.load(handle)
            with tf.io.gfile.GFile(self._weights_npz, "rb") as handle:
                stored = np.load(io.BytesIO(handle.read()))
                self.best_weights = [stored[f"w{i}"] for i in range(len(stored.files))]
            self.records = {int(k): v for k, v in state["records"].items()}
            self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch:  # BackupAndRestore has set where this run starts
            self.resumed_from, self._first_epoch = epoch, False

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        number = epoch + 1
        self.records[number] = logs
        if self.monitor is None:  # nothing to choose with: the last epoch is kept
            score = float(number)
        else:
            if self.monitor not in logs:
                raise TrainingError(f"epoch selection: {self.monitor!r} is not in the epoch's logs "
                                    f"(have {', '.join(sorted(logs))})")
            score = self._sign * logs[self.monitor]
        improved = score > self.best
        if improved:
            self.best, self.best_epoch, self.best_weights = score, number, self.model.get_weights()
        if self._is_lead:
            tf.io.gfile.makedirs(self._state_dir)
            if improved:
                buffer = io.BytesIO()
                np.savez(buffer, **{f"w{i}": w for i, w in enumerate(self.best_weights)})
                self._write_atomically(self._weights_npz, buffer.getvalue())
            state = {"records": self.records, "best": self.best, "best_epoch": self.best_epoch}
            self._write_atomically(self._state_json, json.dumps(state).encode())
        if self._patience is not None and number - self.best_epoch >= self._patience:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)
        if self._is_lead and tf.io.gfile.exists(self._state_dir):
            tf.io.gfile.rmtree(self._state_dir)

    def history(self) -> dict[str, list[float]]:
        """The whole run's logs, epoch by epoch (``epoch`` is 1-based; a lost epoch is absent)."""
        epochs = sorted(self.records)
        names = sorted({name for record in self.records.values() for name in record})
        table: dict[str, list] = {"epoch": epochs}
        table.update({name: [self.records[e].get(name, float("nan")) for e in epochs] for name in names})
        return table


class HypertuneReporter(tf.keras.callbacks.Callback):
    """Reports ``val_<metric>`` after every epoch to Vertex AI hyperparameter tuning.

    Args:
      report: ``report(value, step)`` (``trainer.hypertune.report``, bound to the tag).
      metric: the valid metric's name (``rmse``).
      steps_per_epoch: global steps per epoch (the step of each report).
    """

    def __init__(self, report: Callable[[float, int], str], metric: str, steps_per_epoch: int):
        super().__init__()
        self._report, self._key, self._steps = report, f"val_{metric}", steps_per_epoch

    def on_epoch_end(self, epoch, logs=None):
        if logs and self._key in logs:
            self._report(float(logs[self._key]), (epoch + 1) * self._steps)


class TrackerReporter(tf.keras.callbacks.Callback):
    """Hands every epoch's logs to a ``trainer.tracking.Tracker`` (lead worker only)."""

    def __init__(self, tracker):
        super().__init__()
        self._tracker = tracker

    def on_epoch_end(self, epoch, logs=None):
        self._tracker.log_metrics({k: float(v) for k, v in (logs or {}).items()}, epoch + 1)
