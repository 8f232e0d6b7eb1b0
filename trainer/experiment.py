"""One training run: data -> model (in the strategy scope) -> fit -> evaluate -> export.

Owns the fit loop wiring (callbacks, steps, global batch), exact evaluation of the
eval split with the pure functions in ``trainer.metrics``, and the job outputs::

    JOB/export/ (or $AIP_MODEL_DIR)   JOB/checkpoints/   JOB/backup/ (or $AIP_CHECKPOINT_DIR)
    JOB/tensorboard/ (or $AIP_TENSORBOARD_LOG_DIR)       JOB/metrics.json
    JOB/config.resolved.yaml          JOB/plots/loss.png
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from schemas import ratings as F
from trainer import config as config_lib
from trainer import data, distribute, export, metrics, models, plots, ranking


class TrainingError(RuntimeError):
    """Training went wrong in a way the user can act on (e.g. a non-finite loss)."""


@dataclasses.dataclass(frozen=True)
class JobPaths:
    """Where a job writes; Vertex AI's ``AIP_*`` variables win over ``--job-dir``."""

    job_dir: str
    export: str
    checkpoints: str
    backup: str
    tensorboard: str

    @classmethod
    def from_env(cls, job_dir: str, environ: Mapping[str, str]) -> "JobPaths":
        job_dir = job_dir.rstrip("/")
        return cls(
            job_dir=job_dir,
            export=environ.get("AIP_MODEL_DIR") or f"{job_dir}/export",
            checkpoints=f"{job_dir}/checkpoints",
            backup=environ.get("AIP_CHECKPOINT_DIR") or f"{job_dir}/backup",
            tensorboard=environ.get("AIP_TENSORBOARD_LOG_DIR") or f"{job_dir}/tensorboard",
        )


class _StopOnNonFiniteLoss(tf.keras.callbacks.Callback):
    """Turns a NaN/inf loss into one clear error instead of a silently broken model."""

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingError(
                f"loss became {float(loss)} in epoch {epoch + 1}; lower train.learning_rate or raise the L2 terms"
            )


class _EpochTimer(tf.keras.callbacks.Callback):
    """Wall time of every epoch's training steps (validation excluded), for metrics.json."""

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


def make_optimizer(train: Mapping[str, Any], total_steps: int) -> tf.keras.optimizers.Optimizer:
    name = train["optimizer"].lower()
    rate: Any = float(train["learning_rate"])
    schedule = train["lr_schedule"]
    if schedule == "cosine":
        rate = tf.keras.optimizers.schedules.CosineDecay(rate, decay_steps=max(1, total_steps))
    elif schedule != "constant":
        raise config_lib.ConfigError(f"unknown train.lr_schedule {schedule!r}; valid: constant, cosine")
    if name == "adam":
        return tf.keras.optimizers.Adam(rate)
    if name == "adagrad":
        return tf.keras.optimizers.Adagrad(rate)
    if name == "sgd":
        return tf.keras.optimizers.SGD(rate, momentum=0.9)
    raise config_lib.ConfigError(f"unknown train.optimizer {name!r}; valid: adam, adagrad, sgd")


def evaluate_ratings(model: tf.keras.Model, info: data.DataInfo, batch_size: int) -> dict[str, float]:
    """RMSE and MAE over every eval row (exact, single process)."""
    keys = (F.USER_INDEX, F.ITEM_INDEX, F.RATING)
    predict = tf.function(lambda features: model(features, training=False))
    predictions, targets = [], []
    for batch in data.local_dataset(info, "eval", batch_size, keys=keys):
        predictions.append(predict(batch).numpy())
        targets.append(batch[F.RATING].numpy())
    if not predictions:
        return {}
    predicted, actual = np.concatenate(predictions), np.concatenate(targets)
    return {"rmse": metrics.rmse(predicted, actual), "mae": metrics.mae(predicted, actual), "num_examples": int(actual.size)}


def evaluate_ranking(model, train_items: ranking.TrainItems, info: data.DataInfo, batch_size: int) -> dict[str, float]:
    """HR@K, NDCG@K, MRR on the pipeline's fixed candidates, plus full-catalogue ranking.

    Sampled protocol: each eval user's held-out positive against its
    ``negative_item_index`` (ties count against the model). Full ranking: the
    positive against every train-vocabulary item the user does not have in
    training (Recall@K, NDCG@K); skipped for catalogues too big to score densely.
    """
    candidates = ranking.read_eval_candidates(info, batch_size)
    if candidates.users.size == 0:
        return {}
    score = tf.function(lambda users, items: model.score(users, items))
    rows_per_batch = max(1, batch_size // candidates.items.shape[1])
    scores = []
    for start in range(0, candidates.users.size, rows_per_batch):
        users = candidates.users[start : start + rows_per_batch]
        items = candidates.items[start : start + rows_per_batch]
        flat_users = np.repeat(users, items.shape[1])
        scores.append(score(tf.constant(flat_users), tf.constant(items.reshape(-1))).numpy().reshape(items.shape))
    result = metrics.sampled_ranking_metrics(np.concatenate(scores), candidates.valid)

    positives = candidates.items[:, 0]
    known = (candidates.users < info.num_users) & (positives < info.num_items)
    if known.any() and int(known.sum()) * info.num_items <= 50_000_000:
        users, positives = candidates.users[known], positives[known]
        score_all = tf.function(lambda u: model.score_all_items(u))
        keys = tf.constant(train_items.keys)
        full_scores, exclude = [], []
        rows_per_batch = max(1, 2_000_000 // max(1, info.num_items))
        all_items = tf.range(info.num_items, dtype=tf.int64)[None, :]
        for start in range(0, users.size, rows_per_batch):
            batch_users = tf.constant(users[start : start + rows_per_batch])
            full_scores.append(score_all(batch_users).numpy())
            exclude.append(ranking.contains(keys, batch_users[:, None], all_items, info.num_items).numpy())
        exclude = np.concatenate(exclude)
        exclude[np.arange(users.size), positives] = False  # a re-rated train item stays the target
        result.update(metrics.full_ranking_metrics(np.concatenate(full_scores), positives, exclude))
        result["full_num_users"] = int(users.size)
    return result


def run(config: Mapping[str, Any], data_dir: str, job_dir: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Trains, evaluates and exports one model.

    Args:
      config: a resolved config (``trainer.config.resolve``).
      data_dir: a pipeline output directory.
      job_dir: where the job writes (see the module docstring).
      environ: process environment (``TF_CONFIG``, ``AIP_*``); defaults to ``os.environ``.

    Returns:
      The ``metrics.json`` payload.
    """
    environ = dict(os.environ if environ is None else environ)
    started = time.time()
    task = distribute.task_info(environ)
    spec = models.REGISTRY[config["model"]]
    model_config = config_lib.model_config(config)
    train = config["train"]
    paths = JobPaths.from_env(job_dir, environ)
    info = data.load_data_info(data_dir, spec.required_features)
    if task.is_lead:
        tf.io.gfile.makedirs(paths.job_dir)
        with tf.io.gfile.GFile(f"{paths.job_dir}/config.resolved.yaml", "w") as handle:
            handle.write(config_lib.dump(config))

    tf.keras.utils.set_random_seed(int(train["seed"]))
    if spec.fit is not None:
        return _run_own_fit(config, spec, model_config, info, data_dir, paths, task, started)
    strategy = distribute.make_strategy(task)
    replicas = strategy.num_replicas_in_sync
    per_replica_batch = int(train["batch_size"])
    global_batch = per_replica_batch * replicas
    steps = int(train["steps_per_epoch"] or data.steps_for(info.train_rows, global_batch))
    is_ranking = spec.kind == "ranking"
    # Ranking batches hold positives only; the sampler adds fresh negatives to each.
    train_keys = ranking.TRAIN_KEYS if is_ranking else spec.required_features
    train_items = ranking.load_train_items(info) if is_ranking else None
    with strategy.scope():
        model = spec.build_model(model_config, info, global_batch)
        model.compile(optimizer=make_optimizer(train, steps * int(train["epochs"])))
        # Build the variables before fit(): BackupAndRestore needs a built model.
        model(next(iter(data.local_dataset(info, "train", 2, keys=train_keys))))

    train_ds = data.distributed_dataset(
        strategy, info, "train", per_replica_batch,
        shuffle=True, shuffle_buffer=int(train["shuffle_buffer"]), seed=int(train["seed"]), repeat=True,
        keys=train_keys,
        batch_map=ranking.make_negative_sampler(train_items, model_config.num_negatives, int(train["seed"]))
        if is_ranking else None,
    )
    validation = {}
    # Ranking models are validated by the exact protocol after fit (a Keras loss on
    # eval positives alone would say nothing about ranking).
    if train["validate_every_epoch"] and info.eval_rows > 0 and not is_ranking:
        # Repeated with a fixed step count under several workers, whose shards differ in size.
        validation = {
            "validation_data": data.distributed_dataset(
                strategy, info, "eval", int(train["eval_batch_size"]),
                shuffle=False, shuffle_buffer=0, seed=0, repeat=task.is_distributed, keys=spec.required_features,
            ),
            "validation_steps": data.steps_for(info.eval_rows, int(train["eval_batch_size"]) * replicas)
            if task.is_distributed else None,
        }
    epoch_timer = _EpochTimer()
    callbacks = [
        epoch_timer,
        _StopOnNonFiniteLoss(),
        tf.keras.callbacks.BackupAndRestore(paths.backup),
        tf.keras.callbacks.TensorBoard(paths.tensorboard, update_freq="epoch", profile_batch=0),
        tf.keras.callbacks.ModelCheckpoint(f"{paths.checkpoints}/epoch-{{epoch:03d}}", save_weights_only=True),
    ]
    logging.info("%s: %d replica(s), global batch %d, %d steps/epoch", task.name, replicas, global_batch, steps)
    fit_started = time.time()
    history = model.fit(
        train_ds, epochs=int(train["epochs"]), steps_per_epoch=steps, callbacks=callbacks,
        verbose=2 if task.is_lead else 0, **validation,
    )
    train_seconds = time.time() - fit_started
    epochs_run = len(history.history.get("loss", []))

    evaluation, kept, timings = _evaluate_and_export(model, spec, info, paths, task, train_items,
                                                     int(train["eval_batch_size"]))
    result = _result(config, spec, data_dir, info, evaluation, history.history, kept, started, train_seconds, {
        **timings,
        "train_examples_per_second": round(epochs_run * steps * global_batch / max(train_seconds, 1e-9), 1),
        "epoch_seconds": [round(x, 3) for x in epoch_timer.seconds],
        "epoch_examples_per_second": [round(steps * global_batch / max(x, 1e-9), 1) for x in epoch_timer.seconds],
    }, replicas=replicas, global_batch_size=global_batch, steps_per_epoch=steps)
    _write_results(result, config, data_dir, paths, task)
    return result


def _evaluate_and_export(model, spec, info: data.DataInfo, paths: JobPaths, task, train_items, eval_batch_size: int):
    """Exact evaluation (rating or ranking protocol) and the SavedModel: (metrics, kept export dir, timings)."""
    eval_started = time.time()
    if not info.eval_rows:
        evaluation = {}
    elif spec.kind == "ranking":
        evaluation = evaluate_ranking(model, train_items, info, eval_batch_size)
    else:
        evaluation = evaluate_ratings(model, info, eval_batch_size)
    eval_seconds = time.time() - eval_started
    export_started = time.time()
    if spec.kind == "ranking":
        kept = export.export_ranking_model(model, info, train_items, paths.export, task.is_lead)
    else:
        kept = export.export_rating_model(model, info, paths.export, task.is_lead)
    return evaluation, kept, {"eval_seconds": round(eval_seconds, 3), "export_seconds": round(time.time() - export_started, 3)}


def _result(config, spec, data_dir: str, info: data.DataInfo, evaluation, history: Mapping[str, Any], kept,
            started: float, train_seconds: float, timings: Mapping[str, Any], **extra) -> dict[str, Any]:
    """The ``metrics.json`` payload."""
    return {
        "model": config["model"],
        "kind": spec.kind,
        "data": data_dir,
        "split": info.summary.get("split"),
        "eval": evaluation,
        "history": {k: [float(v) for v in values] for k, values in history.items()},
        "timings": {"train_seconds": round(train_seconds, 3), **timings,
                    "total_seconds": round(time.time() - started, 3)},
        **extra,
        "export_dir": kept,
    }


def _write_results(result: dict[str, Any], config: Mapping[str, Any], data_dir: str, paths: JobPaths, task,
                   xlabel: str = "epoch") -> None:
    if task.is_lead:
        tf.io.gfile.makedirs(f"{paths.job_dir}/plots")
        plots.loss_curves(result["history"], f"{paths.job_dir}/plots/loss.png",
                          f"{config['model']} on {os.path.basename(data_dir.rstrip('/'))}", xlabel)
        with tf.io.gfile.GFile(f"{paths.job_dir}/metrics.json", "w") as handle:
            handle.write(json.dumps(result, indent=2) + "\n")


def _run_own_fit(config, spec, model_config, info: data.DataInfo, data_dir: str, paths: JobPaths, task,
                 started: float) -> dict[str, Any]:
    """A model that trains itself (a Gibbs sampler): same evaluation, export and outputs as fit()."""
    if task.is_distributed:
        raise config_lib.ConfigError(
            f"model {config['model']} trains by Gibbs sampling in one process; run it without TF_CONFIG workers "
            "(--local-workers / Vertex worker pools are for the SGD models)"
        )
    model = spec.build_model(model_config, info, 1)
    model(next(iter(data.local_dataset(info, "train", 2, keys=spec.required_features))))  # build the tables
    sweep_seconds: list[float] = []
    last = [time.time()]

    def on_sweep(sweep: int, values: dict[str, float]) -> None:
        now = time.time()
        sweep_seconds.append(now - last[0])
        last[0] = now

    fit_started = time.time()
    history = spec.fit(model, model_config, info, on_sweep)
    train_seconds = time.time() - fit_started
    evaluation, kept, timings = _evaluate_and_export(model, spec, info, paths, task, None,
                                                     int(config["train"]["eval_batch_size"]))
    result = _result(config, spec, data_dir, info, evaluation, history, kept, started, train_seconds, {
        **timings,
        "train_examples_per_second": round(len(sweep_seconds) * info.train_rows / max(train_seconds, 1e-9), 1),
        "sweep_seconds": [round(x, 3) for x in sweep_seconds],
    }, replicas=1)
    _write_results(result, config, data_dir, paths, task, xlabel="Gibbs sweep")
    return result
