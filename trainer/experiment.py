"""The one experiment every model runs through: config -> task -> fit -> select on valid -> evaluate -> export.

``run(*, config, data_dir, job)`` is the only training path (``trainer.task`` is
its command line; sweeps, the leaderboard and tuning call it in-process). Its
stages:

1. **Task**: the registry names the model's kind; its ``trainer.tasks`` object
   reads and checks the pipeline output (schema, splits, shards, counts).
2. **Fit**, one of two:
   * Keras models: the strategy from ``TF_CONFIG`` (``trainer.distribute``);
     TF-GNN's ``runner.KerasTrainer`` runs ``fit`` under it with the task's
     ``DatasetProvider`` (repeated, ``steps_per_epoch`` = one pass over train at
     the global batch) and our callbacks (``trainer.callbacks``): the task's
     exact ``valid`` evaluation after every epoch, ``BackupAndRestore`` and the
     epoch selection that survives a relaunch, TensorBoard, per-epoch hypertune
     reports.
   * ``train.ensemble_size`` N > 1 (tasks with ``supports_ensemble``): N such
     fits with seeds ``train.seed .. train.seed + N - 1``, each selected on valid;
     the task's ``ensemble`` of them is the model evaluated and exported.
   * models that train themselves (``ModelSpec.own_fit``: Bayesian MF's Gibbs
     sampler): one process, the model module's ``fit``; TensorBoard scalars per step.
3. **Select**: the best epoch by ``valid`` (``train.monitor``, or the task's
   default), its weights restored and saved to ``checkpoints/selected``.
4. **Evaluate** ``valid`` and ``test`` exactly (lead only): test only reports.
5. **Export** the serving SavedModel (every worker saves: collectives; only the
   lead's copy is kept) and write the outputs (``trainer.outputs``).

Where a job writes::

    JOB/export/ (or $AIP_MODEL_DIR)   JOB/checkpoints/selected*   JOB/backup/
    (with $AIP_CHECKPOINT_DIR: $AIP_CHECKPOINT_DIR/kept/selected* and $AIP_CHECKPOINT_DIR/backup/)
    JOB/tensorboard/ (or $AIP_TENSORBOARD_LOG_DIR)   JOB/metrics.json   JOB/config.resolved.yaml   JOB/plots/

A Vertex AI tuning trial (``CLOUD_ML_TRIAL_ID`` set) writes under ``JOB/trials/<id>/``
instead, so parallel trials never overwrite each other.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
import time
from typing import Any, Iterator, Mapping

import tensorflow as tf
from tensorflow_gnn import runner

from trainer import callbacks as callbacks_lib
from trainer import config as config_lib
from trainer import data, distribute, hypertune, models, outputs, tasks, tracking

TrainingError = callbacks_lib.TrainingError


@dataclasses.dataclass(frozen=True)
class JobPaths:
    """Where a job writes; Vertex AI's ``AIP_*`` variables win over ``--job-dir``.

    A tuning trial (``CLOUD_ML_TRIAL_ID``) gets its own ``JOB/trials/<id>``. With
    ``AIP_CHECKPOINT_DIR`` the backup is ``$AIP_CHECKPOINT_DIR/backup`` and the kept
    weights ``$AIP_CHECKPOINT_DIR/kept``.
    """

    job_dir: str
    export: str
    checkpoints: str
    backup: str
    tensorboard: str

    @classmethod
    def from_env(cls, job_dir: str, environ: Mapping[str, str]) -> "JobPaths":
        job_dir = job_dir.rstrip("/")
        trial = environ.get("CLOUD_ML_TRIAL_ID")
        if trial:
            job_dir = f"{job_dir}/trials/{trial}"
        # Vertex AI's AIP_CHECKPOINT_DIR is JOB/checkpoints/ itself: the backup and the kept
        # weights get their own sub-directories there, so their checkpoint index files never meet.
        aip_checkpoints = (environ.get("AIP_CHECKPOINT_DIR") or "").rstrip("/")
        return cls(
            job_dir=job_dir,
            export=environ.get("AIP_MODEL_DIR") or f"{job_dir}/export",
            checkpoints=f"{aip_checkpoints}/kept" if aip_checkpoints else f"{job_dir}/checkpoints",
            backup=f"{aip_checkpoints}/backup" if aip_checkpoints else f"{job_dir}/backup",
            tensorboard=environ.get("AIP_TENSORBOARD_LOG_DIR") or f"{job_dir}/tensorboard",
        )


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What one run produced; ``to_json()`` is ``metrics.json`` (the same top level for every model).

    Attributes:
      model, task, data: the model name, its task kind and the pipeline output.
      dataset: the pipeline's split protocol and example counts per split.
      valid, test: the exact metrics of each split (lead only; ``{}`` elsewhere).
      history: per epoch (or sampler step): train logs and ``val_<metric>``.
      selection: how the kept epoch was chosen, and which it is.
      timings: seconds and examples/s of every stage.
      config: the resolved config.
      outputs: the paths this run wrote (only those that exist).
      cluster: replicas, global batch, steps per epoch, this task's role.
    """

    model: str
    task: str
    data: str
    dataset: dict[str, Any]
    valid: dict[str, Any]
    test: dict[str, Any]
    history: dict[str, Any]
    selection: dict[str, Any]
    timings: dict[str, Any]
    config: dict[str, Any]
    outputs: dict[str, Any]
    cluster: dict[str, Any]

    @property
    def is_lead(self) -> bool:
        return bool(self.cluster.get("is_lead", True))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class _Fit:
    """What a fit hands on to evaluation and export."""

    model: Any
    history: dict[str, Any]
    selection: dict[str, Any]
    timings: dict[str, Any]
    cluster: dict[str, Any]
    wrote_tensorboard: bool = True


def make_optimizer(train: config_lib.TrainConfig, total_steps: int) -> tf.keras.optimizers.Optimizer:
    """The optimizer of ``train`` (learning rate constant or cosine-decayed over ``total_steps``)."""
    rate: Any = float(train.learning_rate)
    if train.lr_schedule == "cosine":
        rate = tf.keras.optimizers.schedules.CosineDecay(rate, decay_steps=max(1, total_steps))
    from trainer import optimizers  # LazyAdam: sparse rows only; DenseAllReduce*: see their docstrings

    dense = train.sparse_all_reduce == "dense"
    if train.optimizer == "adagrad":
        return (optimizers.DenseAllReduceAdagrad if dense else tf.keras.optimizers.Adagrad)(rate)
    if train.optimizer == "sgd":
        return (optimizers.DenseAllReduceSGD if dense else tf.keras.optimizers.SGD)(rate, momentum=0.9)
    if train.optimizer == "lazy_adam":
        return optimizers.LazyAdam(rate)
    return (optimizers.DenseAllReduceAdam if dense else tf.keras.optimizers.Adam)(rate)


def run(*, config: Mapping[str, Any], data_dir: str, job: str | JobPaths,
        environ: Mapping[str, str] | None = None, hypertune_metric: str | None = None,
        tracker: tracking.Tracker | None = None) -> RunResult:
    """Trains, selects on valid, evaluates valid and test, and exports one model.

    Args:
      config: a resolved config (``trainer.config.resolve``).
      data_dir: a pipeline output directory.
      job: the job directory (``--job-dir``), or its resolved ``JobPaths``.
      environ: process environment (``TF_CONFIG``, ``AIP_*``, ``CLOUD_ML_TRIAL_ID``); default ``os.environ``.
      hypertune_metric: a valid metric of the task to report to Vertex AI tuning
        after every epoch and, last, for the chosen epoch.
      tracker: an experiment tracker (``trainer.tracking``) the lead reports to.

    Returns:
      The ``RunResult`` (also written as ``metrics.json`` by the lead).

    Raises:
      trainer.config.ConfigError: the config does not fit the task (monitor, hypertune metric, workers).
      trainer.data.DataError: the pipeline output cannot be used, or a shard fails mid-fit.
      TrainingError: training diverged.
    """
    environ = dict(os.environ if environ is None else environ)
    started = time.time()
    cluster = distribute.task_info(environ)
    paths = job if isinstance(job, JobPaths) else JobPaths.from_env(job, environ)
    spec = models.REGISTRY[config["model"]]
    train = config_lib.train_config(config)
    if spec.own_fit and cluster.is_distributed:
        raise config_lib.ConfigError(
            f"model {spec.name} trains by Gibbs sampling in one process; run it without TF_CONFIG workers "
            "(--local-workers / Vertex worker pools are for the SGD models)"
        )
    # MultiWorkerMirroredStrategy must exist before any TensorFlow op runs (the task's data checks run some).
    strategy = None if spec.own_fit else distribute.make_strategy(cluster)
    task = tasks.task_class(spec.task)(spec=spec, hparams=config_lib.model_config(config), train=train,
                                       data_dir=data_dir)
    shards = data.shard_stats(task.dataset)  # the checked shards, compared again before the export
    monitor = task.monitor  # raises ConfigError for a train.monitor the task does not have
    if hypertune_metric:
        task.metric(hypertune_metric)
    if train.refit and not task.supports_refit:
        raise config_lib.ConfigError(f"train.refit is not supported by {task.kind} models "
                                     "(rating and ranking models only)")
    if train.ensemble_size > 1 and not task.supports_ensemble:
        raise config_lib.ConfigError(f"train.ensemble_size > 1 is not supported by {task.kind} models "
                                     "(graph classification only)")
    if train.refit and task.examples("valid") == 0:
        raise config_lib.ConfigError(f"train.refit needs a valid split, and {task.data_dir} has none "
                                     "(rerun the pipeline without --no-valid)")
    tracker = tracker if (tracker is not None and cluster.is_lead) else tracking.Tracker()
    if cluster.is_lead:
        outputs.write_config(paths.job_dir, config)
        tracker.start(config=config, run_name=os.path.basename(paths.job_dir),
                      tags={"model": spec.name, "task": task.kind, "data": task.data_dir,
                            "trial": environ.get("CLOUD_ML_TRIAL_ID", "")})
    tf.keras.utils.set_random_seed(train.seed)
    loaded = time.time()
    with _reading(task):
        if spec.own_fit:
            fit = _fit_own(task, config, paths, cluster, tracker=tracker)
        elif train.ensemble_size > 1:
            fit = _fit_ensemble(task, train, paths, cluster, strategy, environ, tracker=tracker)
        else:
            fit = _fit_keras(task, train, paths, cluster, strategy, environ, hypertune_metric, tracker=tracker)
    fit.timings["load_seconds"] = round(loaded - started, 3)

    valid, test = {}, {}
    with _reading(task):
        if cluster.is_lead:
            eval_started = time.time()
            valid = task.evaluate(fit.model, "valid")
            fit.timings["eval_seconds"] = round(time.time() - eval_started, 3)
        final = fit.model
        if train.refit:
            final = _refit(task, train, paths, cluster, strategy, fit, config)
        if cluster.is_lead:
            eval_started = time.time()
            test = task.evaluate(final, "test")
            fit.timings["eval_seconds"] += round(time.time() - eval_started, 3)
    data.check_unchanged(task.dataset, shards)
    export_started = time.time()
    export_dir = _export(task, final, paths.export, cluster.is_lead)
    fit.timings["export_seconds"] = round(time.time() - export_started, 3)
    if hypertune_metric and cluster.is_lead and hypertune_metric in valid:
        steps = len(fit.history.get("epoch", [])) * int(fit.cluster.get("steps_per_epoch", 1))
        hypertune.report(hypertune_metric, float(valid[hypertune_metric]), steps, environ)
    summary = task.dataset.summary
    result = RunResult(
        model=spec.name, task=task.kind, data=task.data_dir,
        dataset={"dataset": summary.get("dataset"), "split": summary.get("split"),
                 "examples": {s: task.examples(s) for s in data.SPLITS}},
        valid=valid, test=test, history=fit.history, selection={**fit.selection, "monitor": monitor.name,
                                                                "goal": monitor.goal},
        timings=fit.timings, config=dict(config), outputs={}, cluster=fit.cluster,
    )
    if not cluster.is_lead:
        return result
    written = outputs.write_run(result, paths, export_dir=export_dir, wrote_tensorboard=fit.wrote_tensorboard,
                                extra_plots=lambda plots_dir: task.plots(fit.model, plots_dir, result.to_json()),
                                started=started)
    tracker.finish(written)
    return written


@contextlib.contextmanager
def _reading(task) -> Iterator[None]:
    """A shard that fails while tf.data reads it (fit, evaluation) -> one ``DataError`` line; nothing is exported.

    ``read_dataset`` read every shard before training, so this is a shard that
    changed or vanished since (a copy still running, a disk failing): a partial
    fit is never reported as a success.
    """
    try:
        yield
    except (tf.errors.DataLossError, tf.errors.NotFoundError) as error:
        if isinstance(error, tf.errors.NotFoundError) and task.data_dir not in str(error):
            raise  # not one of the pipeline's files
        raise data.DataError(f"reading {task.data_dir} failed during training or evaluation "
                             f"({str(error).splitlines()[0][:200]}); nothing was exported; rerun {task.pipeline}") from None


def _export(task, model, export_dir: str, is_lead: bool) -> str | None:
    """Every worker saves (saving runs collectives); non-leads into a temporary directory they delete."""
    target = export_dir if is_lead else tempfile.mkdtemp(prefix="export-worker-")
    task.export(model, target)
    if not is_lead:
        shutil.rmtree(target, ignore_errors=True)
        return None
    return target


def _fit_keras(task, train: config_lib.TrainConfig, paths: JobPaths, cluster, strategy, environ,
               hypertune_metric, *, splits: tuple[str, ...] = ("train",), epochs: int | None = None,
               backup: str | None = None, tensorboard: str | None = None,
               tracker: tracking.Tracker | None = None, checkpoint: str | None = None) -> _Fit:
    """Keras ``fit`` under the strategy, via TF-GNN's ``runner.KerasTrainer``, with selection on valid.

    The refit (``splits`` train + valid, ``epochs`` the chosen count) runs the same loop without
    valid evaluation, with its own backup and TensorBoard directories; its learning-rate schedule
    is the selection run's (``train.epochs`` long), stopped at the chosen epoch.
    """
    replicas = strategy.num_replicas_in_sync
    global_batch = train.batch_size * replicas
    steps = train.steps_per_epoch or data.steps_for(sum(task.examples(s) for s in splits), global_batch)
    validate = train.validate_every_epoch and task.examples("valid") > 0 and "valid" not in splits
    epochs = epochs or train.epochs
    backup, tensorboard = backup or paths.backup, tensorboard or paths.tensorboard
    timer = callbacks_lib.EpochTimer()
    valid_eval = callbacks_lib.ValidEvaluation(lambda model: task.evaluate(model, "valid"),
                                                tuple(m.name for m in task.metrics)) if validate else None
    monitor = task.monitor
    selection = callbacks_lib.BestEpoch(f"{backup}/selection", f"val_{monitor.name}" if validate else None,
                                        monitor.goal, train.patience if validate else None, cluster.is_lead)
    callbacks: list = [timer, callbacks_lib.StopOnNonFiniteLoss()]
    if valid_eval is not None:
        callbacks.append(valid_eval)
    callbacks += [
        tf.keras.callbacks.BackupAndRestore(backup),
        selection,  # after the backup (see BestEpoch)
        tf.keras.callbacks.TensorBoard(tensorboard, update_freq="epoch", profile_batch=train.profile_range()),
    ]
    if tracker is not None and cluster.is_lead:
        callbacks.append(callbacks_lib.TrackerReporter(tracker))
    if hypertune_metric and validate and cluster.is_lead:
        callbacks.append(callbacks_lib.HypertuneReporter(
            lambda value, step: hypertune.report(hypertune_metric, value, step, environ), hypertune_metric, steps))

    def model_fn():
        model = task.build_model(global_batch)
        task.compile(model, make_optimizer(train, steps * train.epochs))
        task.warm_up(model)  # variables exist before BackupAndRestore restores into them
        return model

    # KerasTrainer: fit under the strategy with distributed, repeated inputs. Its own
    # checkpoints, backup and TensorBoard (weight histograms and embedding projector
    # checkpoints every epoch: costly for big embedding tables) are off; ours above.
    trainer = runner.KerasTrainer(
        strategy, model_dir=tensorboard, steps_per_epoch=steps, checkpoint_every_n_steps="never",
        backup_and_restore=False, summarize_every_n_steps="never", restore_best_weights=False,
        callbacks=callbacks, verbose=2 if cluster.is_lead else 0,
    )
    logging.info("%s: %d replica(s), global batch %d, %d steps/epoch", cluster.name, replicas, global_batch, steps)
    fit_started = time.time()
    model = trainer.train(model_fn, task.train_provider(train.batch_size, splits), epochs=epochs)
    train_seconds = time.time() - fit_started
    _save_selected(model, paths.checkpoints, cluster.is_lead,
                   checkpoint or ("refit" if "valid" in splits else "selected"))
    history = selection.history()
    epochs_run = len(history["epoch"])
    rule = (f"the epoch with the best valid {monitor.name} ({monitor.goal}); its weights kept"
            + (f"; early stopping after {train.patience} epochs without improvement" if train.patience else "")
            if validate else "the last epoch (no valid evaluation per epoch)")
    timings = {
        "train_seconds": round(train_seconds, 3),
        "train_examples_per_second": round(len(timer.seconds) * steps * global_batch / max(sum(timer.seconds), 1e-9), 1),
        "epoch_seconds": [round(x, 3) for x in timer.seconds],
        "epoch_examples_per_second": [round(steps * global_batch / max(x, 1e-9), 1) for x in timer.seconds],
        "valid_seconds": [round(x, 3) for x in valid_eval.seconds] if valid_eval else [],
    }
    return _Fit(
        model=model, history=history, timings=timings,
        selection={"rule": rule, "best_epoch": selection.best_epoch, "epochs_run": epochs_run,
                   "resumed_after_epoch": selection.resumed_from},
        cluster={"task": cluster.name, "is_lead": cluster.is_lead, "replicas": replicas,
                 "global_batch_size": global_batch, "steps_per_epoch": steps},
    )


def _fit_ensemble(task, train: config_lib.TrainConfig, paths: JobPaths, cluster, strategy, environ,
                  tracker: tracking.Tracker | None = None) -> _Fit:
    """``train.ensemble_size`` fits with seeds ``train.seed + i``; the task averages their probabilities.

    Member ``i`` is exactly the single fit of the config with ``train.seed + i`` (same
    initialisation, dropout and shuffling; its epoch chosen on valid by the same monitor),
    with its own backup, TensorBoard and kept weights (``member-i``). The returned model is
    the task's ``ensemble`` of the members (one Keras model: what evaluation, the export and
    the plots see). Per-epoch hypertune reports are off (members would report from epoch 1
    again); the run's final report is the ensemble's valid metric. A relaunch redoes the
    members that had finished (same seeds: same weights) and resumes the interrupted one.
    ``history`` and ``best_epoch`` are member 0's; ``selection.ensemble.members`` lists every member's.
    """
    fits = []
    for member in range(train.ensemble_size):
        member_train = dataclasses.replace(train, seed=train.seed + member)
        task.train = member_train  # the task's input pipeline shuffles with train.seed
        tf.keras.utils.set_random_seed(member_train.seed)
        fits.append(_fit_keras(task, member_train, paths, cluster, strategy, environ, None,
                               backup=f"{paths.backup}/member-{member}",
                               tensorboard=f"{paths.tensorboard}/member-{member}",
                               tracker=tracker if member == 0 else None, checkpoint=f"selected-member-{member}"))
    task.train = train
    with strategy.scope():
        model = task.ensemble([fit.model for fit in fits])
    first = fits[0]
    members = [{"seed": train.seed + i, "best_epoch": fit.selection["best_epoch"],
                "epochs_run": fit.selection["epochs_run"], "resumed_after_epoch": fit.selection["resumed_after_epoch"],
                "train_seconds": fit.timings["train_seconds"], "history": fit.history} for i, fit in enumerate(fits)]
    selection = {**first.selection,
                 "rule": f"{len(fits)} fits (seeds {train.seed}..{train.seed + len(fits) - 1}), each: "
                         f"{first.selection['rule']}; their class probabilities averaged",
                 "ensemble": {"size": len(fits), "members": members}}
    timings = {**first.timings, "train_seconds": round(sum(f.timings["train_seconds"] for f in fits), 3),
               "valid_seconds": [x for f in fits for x in f.timings["valid_seconds"]]}
    return _Fit(model=model, history=first.history, selection=selection, timings=timings, cluster=first.cluster)


def _save_selected(model, checkpoints: str, is_lead: bool, name: str = "selected") -> None:
    """The kept weights as ``checkpoints/selected`` (NeuMF pre-training loads them); non-leads: a temp dir."""
    target = checkpoints if is_lead else tempfile.mkdtemp(prefix="checkpoints-worker-")
    tf.io.gfile.makedirs(target)
    model.save_weights(f"{target}/{name}")
    if not is_lead:
        shutil.rmtree(target, ignore_errors=True)


def _fit_own(task, config: Mapping[str, Any], paths: JobPaths, cluster, splits: tuple[str, ...] = ("train",),
             tensorboard: str | None = None, tracker: tracking.Tracker | None = None) -> _Fit:
    """A model that trains itself (a Gibbs sampler): one process, per-step history and TensorBoard scalars."""
    model = task.build_model(1)
    task.warm_up(model)
    step_seconds: list[float] = []
    last = [time.time()]
    writer = tf.summary.create_file_writer(tensorboard or paths.tensorboard)

    def on_step(step: int, values: dict[str, float]) -> None:
        now = time.time()
        step_seconds.append(now - last[0])
        last[0] = now
        with writer.as_default(step=step + 1):
            for name, value in values.items():
                tf.summary.scalar(name, value)
        if tracker is not None:
            tracker.log_metrics(values, step + 1)

    fit_started = time.time()
    history = task.spec.module().fit(model, task.hparams, task.data, on_step, splits=splits)
    writer.flush()
    train_seconds = time.time() - fit_started
    _save_selected(model, paths.checkpoints, True, "refit" if "valid" in splits else "selected")
    steps = len(step_seconds)
    history = {"epoch": list(range(1, steps + 1)), **history}
    return _Fit(
        model=model, history=history,
        timings={"train_seconds": round(train_seconds, 3),
                 "train_examples_per_second": round(steps * sum(task.examples(s) for s in splits)
                                                    / max(train_seconds, 1e-9), 1),
                 "step_seconds": [round(x, 3) for x in step_seconds]},
        selection={"rule": "none: the sampler runs its configured sweeps and averages the kept samples; "
                           "valid is monitored per sweep, not used to choose",
                   "best_epoch": steps, "epochs_run": steps, "resumed_after_epoch": 0, "step": "Gibbs sweep"},
        cluster={"task": cluster.name, "is_lead": True, "replicas": 1, "global_batch_size": None,
                 "steps_per_epoch": 1},
    )


def _refit(task, train: config_lib.TrainConfig, paths: JobPaths, cluster, strategy, fit: _Fit,
           config: Mapping[str, Any]):
    """``train.refit``: a fresh model trained on train + valid for the chosen number of epochs.

    Everything was chosen on valid (hyperparameters before, the epoch in ``fit``); the refit only
    gives the final model the valid rows too, as a final fit after model selection does. The
    valid metrics reported stay those of ``fit`` (a model that never saw valid); the refit model
    is the one exported and tested. ``fit.selection["refit"]`` records what it did, with the
    test metrics of the selection model beside it for comparison.
    """
    tf.keras.utils.set_random_seed(train.seed)
    before = task.evaluate(fit.model, "test") if cluster.is_lead else {}
    if task.spec.own_fit:
        refit = _fit_own(task, config, paths, cluster, splits=("train", "valid"),
                         tensorboard=f"{paths.tensorboard}/refit")
    else:
        refit = _fit_keras(task, train, paths, cluster, strategy, {}, None, splits=("train", "valid"),
                           epochs=fit.selection["best_epoch"], backup=f"{paths.backup}/refit",
                           tensorboard=f"{paths.tensorboard}/refit")
    fit.selection["refit"] = {
        "rule": "a fresh model on train + valid for the chosen epochs (or the sampler's sweeps); exported and tested",
        "epochs": refit.selection["epochs_run"],
        "train_examples": task.examples("train") + task.examples("valid"),
        "test_of_the_selection_model": before,
    }
    fit.history["refit_loss" if "loss" in refit.history else "refit_rmse"] = refit.history.get(
        "loss", refit.history.get("rmse", []))
    fit.timings["refit_seconds"] = refit.timings["train_seconds"]
    return refit.model
