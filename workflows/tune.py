"""Local hyperparameter tuning: an Optuna study over the Vertex AI search-space YAML.

``./run-cloud.sh tune CONFIG --local`` (or ``python -m workflows.tune``) tunes any
registered model on this machine, with the search space ``./run-cloud.sh tune`` sends to
Vertex AI (``configs/*_tune.yaml``, ``cloud.search_space``). Usage::

    python -m workflows.tune --config configs/movielens_bpr.yaml --study configs/movielens_bpr_tune.yaml \\
        --data OUT --study-dir runs/tune/bpr [--trials 12] [--parallel 2] [--set train.epochs=20] \\
        [--track mlflow] [--no-final] [--dry-run]

What a study does:

* **Tuner**: Optuna (``optuna`` in setup.py). Vertex's default algorithm (Bayesian
  optimisation) maps to Optuna's TPE sampler (seeded, the first ``max(3, N // 3)`` trials
  at random, at most 10), ``RANDOM_SEARCH`` to its random sampler and ``GRID_SEARCH``
  to its grid sampler. OSS Vizier (``google-vizier``, already installed as a TF-GNN
  dependency) was the other candidate: its default GP-bandit designer needs JAX, which
  would add a second numeric stack beside TensorFlow's pins, and it has no pruning of
  running trials; Optuna 5.1 installs as pure-Python wheels (optuna, alembic, colorlog,
  Mako, tqdm) without changing a pinned package.
* **Trials**: every trial is the one experiment (``trainer.experiment.run``) with the
  trial's values as ``--set`` overrides, in its own job directory ``STUDY/trials/<trial
  number>/`` (the same ``JOB/trials/<id>`` convention the trainer follows for a Vertex
  tuning trial, ``CLOUD_ML_TRIAL_ID``). Discrete values that are whole numbers are passed
  as integers.
* **Refit**: a config with ``train.refit: true`` (train again on train + valid for the chosen
  epochs) keeps it for ``best.yaml`` and the final run; the trials skip it, since it never
  changes a run's valid metrics.
* **Objective**: always a metric of the VALID split (the space's ``metric``; checked against
  the model's task), the value at the epoch the trial kept. Unless the config or ``--set``
  names ``train.monitor``, that same metric chooses each trial's epoch. Test is evaluated
  by every run (the experiment always reports it) but never read here, except from the
  final run, which only reports it.
* **Early stopping of bad trials**: every epoch's valid value is reported to the study;
  Optuna's median pruner stops a trial whose value is worse than the median of the earlier
  trials at the same epoch (after ``--prune-after`` epochs, default a third of
  ``train.epochs``, and once 3 trials finished). ``--pruner none`` turns it off.
* **Resumable**: the study lives in ``STUDY/study.db`` (SQLite); rerun the same command
  after a kill and it goes on to ``--trials`` trials. A trial the kill interrupted is
  marked failed (``interrupted``) and its values are queued again. The resumed session's
  sampler is seeded past the first one's (seed + 1000 x trials so far), so it does not
  propose the same points again. Another study in the
  same directory (other config, space, data or ``--set``) is refused with one line.
* **Parallel**: ``--parallel K`` runs K worker processes on the same study (SQLite with a
  lock around choosing the next trial, so exactly ``--trials`` trials run).
* **Outputs**: ``STUDY/results.csv`` and the printed table (every trial: state, valid
  value, kept epoch, seconds, values), ``STUDY/plots/objective.png`` (the objective over
  trials with the best so far, and each trial's per-epoch valid curve, pruned ones
  marked), ``STUDY/best.yaml`` (the best trial's resolved config, a trainer config), then a
  final run of it in ``STUDY/final/`` that reports valid and test, and ``STUDY/summary.json``
  (best trial, its valid value, the final run's valid and test, wall times).
* ``--track NAME`` logs every trial and the final run to a tracker (``trainer.tracking``),
  tagged with the study.

``--dry-run`` prints the plan (sampler, pruner, storage, the job directory of every trial
that would run) and runs nothing. Errors are one line and exit code 2.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import fcntl
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import yaml

import trainer  # noqa: F401  (Keras 2 before TensorFlow)
from cloud import search_space
from trainer import config as config_lib
from trainer import tracking

STUDY_NAME = "study"
STUDY_FILE = "study.json"
DB_FILE = "study.db"
RESULTS_FILE = "results.csv"
SUMMARY_FILE = "summary.json"
BEST_FILE = "best.yaml"
PLOT_FILE = "plots/objective.png"
MIN_PRUNE_STARTUP = 3  # finished trials before the median pruner compares anything


class TuneError(RuntimeError):
    """A study that cannot run as asked; the message is one line."""


class TrialPruned(tracking.RunStopped):
    """Raised from a trial's per-epoch report when the pruner stops it."""


# --- the study's definition --------------------------------------------------------------------

def _default_space(config: str) -> str:
    return str(Path(config).with_name(f"{Path(config).stem}_tune.yaml"))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m workflows.tune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="trainer config YAML (any registered model)")
    parser.add_argument("--study", help="search space YAML (format: cloud/search_space.py; default CONFIG_tune.yaml "
                                        "beside CONFIG)")
    parser.add_argument("--data", required=True, help="a pipeline output with a valid split")
    parser.add_argument("--study-dir", help="where the study lives (default runs/tune/<config name>)")
    parser.add_argument("--trials", type=int, help="trials in all, counting earlier sessions (default: the space's "
                                                   "max_trial_count)")
    parser.add_argument("--parallel", type=int, default=1, help="worker processes running trials at once (default 1)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="fixed override of every trial")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    parser.add_argument("--pruner", choices=("median", "none"), default="median", help="early stopping of bad trials")
    parser.add_argument("--prune-after", type=int, help="epochs before a trial can be pruned (default train.epochs / 3)")
    parser.add_argument("--track", help="also log every trial and the final run to tracker(s) (mlflow, vertex)")
    parser.add_argument("--no-final", action="store_true", help="skip the final run of the best config")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and run nothing")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # a --parallel worker process
    return parser.parse_args(argv)


def _digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def define(args: argparse.Namespace) -> dict[str, Any]:
    """The study's definition (what a resumed study must match), every input checked, no TensorFlow.

    Raises:
      TuneError: a bad config, space, parameter id, metric, data directory or count.
    """
    space_path = args.study or _default_space(args.config)
    try:
        space = search_space.load_search_space(space_path)
        config = config_lib.resolve(args.config, args.set)
        search_space.check_metric(space, config["model"])
    except (search_space.SearchSpaceError, config_lib.ConfigError) as error:
        raise TuneError(str(error)) from None
    metric = space["metric"]["id"]
    fixed = list(args.set)
    if config["train"]["monitor"] is None:  # the objective also chooses each trial's epoch
        fixed.append(f"train.monitor={metric}")
    for parameter in space["parameters"]:  # every id is a key of this model's config, every bound a valid value
        for value in _bounds(parameter):
            try:
                config_lib.resolve(args.config, [*fixed, f"{parameter['id']}={value}"])
            except config_lib.ConfigError as error:
                raise TuneError(f"search space {space_path}: parameter {parameter['id']} = {value}: {error}") from None
    if not (Path(args.data) / "dataset.json").exists():
        raise TuneError(f"--data {args.data} has no dataset.json: run a pipeline (python -m beam_pipelines.DATASET) first")
    trials = args.trials if args.trials is not None else space["max_trial_count"]
    if trials < 1 or args.parallel < 1:
        raise TuneError("--trials and --parallel must be >= 1")
    if space["algorithm"] == "GRID_SEARCH":
        size = math.prod(len(_grid_values(p)) for p in space["parameters"])
        trials = min(trials, size)
    resolved = config_lib.resolve(args.config, fixed)
    epochs = int(resolved["train"]["epochs"])
    # A refit (train + valid, after the epoch is chosen) never changes a run's valid metrics, only
    # its test model: trials skip it; best.yaml and the final run keep the config's setting.
    trial_only = ["train.refit=false"] if resolved["train"]["refit"] else []
    return {
        "config": os.path.abspath(args.config), "config_sha256": _digest(args.config),
        "space": space, "space_file": os.path.abspath(space_path), "data": os.path.abspath(args.data),
        "fixed": fixed, "trial_only": trial_only, "metric": metric, "goal": space["metric"]["goal"],
        "model": config["model"],
        "trials": trials, "parallel": args.parallel, "seed": args.seed, "pruner": args.pruner,
        "prune_after": args.prune_after if args.prune_after is not None else max(1, math.ceil(epochs / 3)),
        "epochs": epochs,
    }


# What a resumed study must share with the one on disk (trial counts and parallelism may change).
IDENTITY = ("config_sha256", "space", "data", "fixed", "metric")


def _bounds(parameter: Mapping[str, Any]) -> list[Any]:
    if parameter["type"] in ("double", "integer"):
        return [_value(parameter, parameter["min"]), _value(parameter, parameter["max"])]
    return [_value(parameter, v) for v in parameter["values"]]


def _grid_values(parameter: Mapping[str, Any]) -> list[Any]:
    if parameter["type"] == "integer":
        return list(range(int(parameter["min"]), int(parameter["max"]) + 1))
    return [_value(parameter, v) for v in parameter["values"]]


def _value(parameter: Mapping[str, Any], value: Any) -> Any:
    """A trial value as the trainer takes it: whole discrete numbers as ints (``64.0`` -> ``64``)."""
    if parameter["type"] == "integer" or (parameter["type"] == "discrete" and float(value).is_integer()):
        return int(value)
    if parameter["type"] in ("double", "discrete"):
        return float(value)
    return str(value)


def suggest(trial, space: Mapping[str, Any]) -> list[str]:
    """The trial's values as ``--set`` overrides, asked of Optuna by the space's parameter types.

    ``reverse_log`` (dense near the maximum) has no Optuna counterpart: it is a log-uniform
    draw ``u`` mirrored as ``min + max - u``.
    """
    overrides = []
    for p in space["parameters"]:
        pid, kind, scale = p["id"], p["type"], p.get("scale", "linear")
        if kind == "double":
            if scale == "reverse_log":
                value = p["min"] + p["max"] - trial.suggest_float(f"{pid}:mirrored", p["min"], p["max"], log=True)
                trial.set_user_attr(pid, value)
            else:
                value = trial.suggest_float(pid, p["min"], p["max"], log=scale == "log")
        elif kind == "integer":
            value = trial.suggest_int(pid, int(p["min"]), int(p["max"]), log=scale == "log")
        else:
            value = trial.suggest_categorical(pid, _grid_values(p))
        overrides.append(f"{pid}={_value(p, value)}")
    return overrides


def _describe(parameter: Mapping[str, Any]) -> str:
    """``hparams.embedding_dim: discrete [64, 128]``, ``train.learning_rate: double 0.0001..0.01 (log)``."""
    if parameter["type"] in ("double", "integer"):
        text = f"{parameter['min']}..{parameter['max']}"
    else:
        text = "[" + ", ".join(str(_value(parameter, v)) for v in parameter["values"]) + "]"
    scale = f" ({parameter['scale']})" if parameter.get("scale", "linear") != "linear" else ""
    return f"{parameter['id']}: {parameter['type']} {text}{scale}"


def _format_value(override: str) -> str:
    key, _, value = override.partition("=")
    try:
        number = float(value)
        return f"{key}={value}" if number.is_integer() or "e" in value else f"{key}={number:.4g}"
    except ValueError:
        return override


# --- storage, locks, the sampler and the pruner ------------------------------------------------

def _storage(study_dir: Path):
    import optuna

    # A generous SQLite timeout: --parallel workers write to the same file.
    return optuna.storages.RDBStorage(f"sqlite:///{study_dir / DB_FILE}",
                                      engine_kwargs={"connect_args": {"timeout": 120}})


def _sampler(definition: Mapping[str, Any], worker: int, existing: int = 0):
    """The space's sampler, seeded with ``seed + worker + 1000 * existing`` (trials already in the study).

    ``existing`` keeps a resumed session from replaying the first session's random stream:
    with the same seed, a fresh TPE sampler proposed exactly the point an interrupted trial
    had (re-queued, so run twice).
    """
    import optuna

    space, seed = definition["space"], definition["seed"] + worker + 1000 * existing
    if space["algorithm"] == "RANDOM_SEARCH":
        return optuna.samplers.RandomSampler(seed=seed)
    if space["algorithm"] == "GRID_SEARCH":
        return optuna.samplers.GridSampler({p["id"]: _grid_values(p) for p in space["parameters"]}, seed=seed)
    startup = min(10, max(3, definition["trials"] // 3))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True,
                                      constant_liar=definition["parallel"] > 1)


def _pruner(definition: Mapping[str, Any]):
    import optuna

    if definition["pruner"] == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=MIN_PRUNE_STARTUP, n_warmup_steps=definition["prune_after"])


def _load(study_dir: Path, definition: Mapping[str, Any], worker: int = 0):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    storage = _storage(study_dir)
    try:
        existing = len(storage.get_all_trials(storage.get_study_id_from_name(STUDY_NAME), deepcopy=False))
    except KeyError:  # a new study
        existing = 0
    return optuna.create_study(storage=storage, study_name=STUDY_NAME, load_if_exists=True,
                               direction=definition["goal"].lower(), sampler=_sampler(definition, worker, existing),
                               pruner=_pruner(definition))


@contextlib.contextmanager
def _locked(path: Path, blocking: bool = True) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``; without ``blocking``, TuneError when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            raise TuneError(f"another tune is running on {path.parent} (pid {handle.read().strip() or '?'}); "
                            "wait for it or stop it") from None
        if not blocking:
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _counted(trial) -> bool:
    """Trials that count towards ``--trials``: all but those a kill interrupted (they run again)."""
    return not trial.user_attrs.get("interrupted")


def recover_interrupted(study) -> list[int]:
    """Marks trials left RUNNING by a killed session as failed (``interrupted``) and queues their values again.

    Only called while this process holds the study lock, so no trial can be running.
    """
    from optuna.trial import TrialState

    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        if trial.params:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        recovered.append(trial.number)
    return recovered


# --- one trial ---------------------------------------------------------------------------------

class TrialReporter(tracking.Tracker):
    """Reports each epoch's valid objective to the Optuna trial and stops the run when the pruner says so.

    A tracker rather than Optuna's Keras integration (``optuna-integration``): the experiment
    hands every model's epoch logs to trackers, Keras fits and samplers alike.
    """

    def __init__(self, trial, metric: str, prune: bool):
        self.trial, self.metric, self.prune = trial, metric, prune
        self.curve: dict[int, float] = {}

    def log_metrics(self, values, step):
        value = values.get(f"val_{self.metric}")
        if value is None or not math.isfinite(float(value)):
            return
        self.trial.report(float(value), int(step))
        self.curve[int(step)] = float(value)
        if self.prune and self.trial.should_prune():
            raise TrialPruned(f"pruned after epoch {step}: valid {self.metric} {float(value):.4f} is worse than the "
                              "median of the earlier trials there")


def _local_environ(trial_id: int | None = None) -> dict[str, str]:
    """This process's environment for a local run: no cluster, no Vertex outputs; a trial's id when given."""
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith("AIP_") and k not in ("TF_CONFIG", "CLOUD_ML_TRIAL_ID")}
    if trial_id is not None:
        environ["CLOUD_ML_TRIAL_ID"] = str(trial_id)
    return environ


def trial_dir(study_dir: Path, number: int) -> Path:
    """Where trial ``number`` writes: ``STUDY/trials/<number>`` (``JOB/trials/<id>`` as for Vertex trials)."""
    return study_dir / "trials" / str(number)


def run_trial(study, trial, study_dir: Path, definition: Mapping[str, Any], track: str | None) -> str:
    """Runs one trial through the one experiment and tells the study its state; returns a progress line.

    Raises:
      TuneError: the config or data cannot be used (the whole study stops).
    """
    import tensorflow as tf
    from optuna.trial import TrialState

    from trainer import data, experiment

    started = time.time()
    overrides = suggest(trial, definition["space"])
    trial.set_user_attr("overrides", overrides)
    trial.set_user_attr("job_dir", str(trial_dir(study_dir, trial.number)))
    shown = " ".join(_format_value(o) for o in overrides)
    try:
        config = config_lib.resolve(definition["config"], [*definition["fixed"], *definition["trial_only"], *overrides])
    except config_lib.ConfigError as error:
        study.tell(trial, state=TrialState.FAIL)
        raise TuneError(f"trial {trial.number} ({shown}): {error}") from None
    reporter = TrialReporter(trial, definition["metric"], definition["pruner"] != "none")
    user = tracking.make_tracker(track)
    # The user's tracker logs each epoch before the reporter may prune; its runs carry the study's name.
    tracker = tracking.TrackerGroup([user, reporter], tags={"study": study_dir.name})
    tf.keras.backend.clear_session()
    try:
        with tracking.closing(tracker):
            result = experiment.run(config=config, data_dir=definition["data"], job=str(study_dir),
                                    environ=_local_environ(trial.number), tracker=tracker)
    except TrialPruned as pruned:
        trial.set_user_attr("seconds", round(time.time() - started, 1))
        trial.set_user_attr("epochs_run", max(reporter.curve, default=0))
        study.tell(trial, state=TrialState.PRUNED)
        return f"trial {trial.number}: {shown} -> {pruned} ({time.time() - started:.0f} s)"
    except experiment.TrainingError as error:  # e.g. a diverged loss: a bad point, not a broken study
        trial.set_user_attr("error", str(error))
        trial.set_user_attr("seconds", round(time.time() - started, 1))
        study.tell(trial, state=TrialState.FAIL)
        return f"trial {trial.number}: {shown} -> failed: {error}"
    except (config_lib.ConfigError, data.DataError, tracking.TrackingError) as error:
        study.tell(trial, state=TrialState.FAIL)
        raise TuneError(f"trial {trial.number}: {error}") from None
    metric = definition["metric"]
    if metric not in result.valid:
        study.tell(trial, state=TrialState.FAIL)
        raise TuneError(f"{definition['data']} has no valid examples to tune on (rerun the pipeline without --no-valid)")
    value = float(result.valid[metric])
    trial.set_user_attr("best_epoch", result.selection.get("best_epoch"))
    trial.set_user_attr("epochs_run", result.selection.get("epochs_run"))
    trial.set_user_attr("seconds", round(time.time() - started, 1))
    study.tell(trial, value)
    best = study.best_trial
    return (f"trial {trial.number}: {shown} -> valid {metric}={value:.4f} (epoch {result.selection.get('best_epoch')} "
            f"of {result.selection.get('epochs_run')}, {time.time() - started:.0f} s); best so far "
            f"{best.value:.4f} (trial {best.number})")


def work(study_dir: Path, definition: Mapping[str, Any], track: str | None, worker: int = 0,
         on_trial: Callable[[], None] = lambda: None) -> int:
    """Runs trials until the study has ``definition['trials']`` counted trials; returns how many this process ran.

    ``on_trial`` is called after every trial (the session record's wall time, kept current for a kill).
    """
    from optuna.trial import TrialState

    study = _load(study_dir, definition, worker)
    ran = 0
    while True:
        with _locked(study_dir / ".ask.lock"):  # count and ask as one step: exactly N trials in all
            trials = study.get_trials(deepcopy=False)
            counted = [t for t in trials if _counted(t)]
            failed = [t for t in counted if t.state == TrialState.FAIL]
            limit = definition["space"]["max_failed_trial_count"]
            if len(counted) >= definition["trials"] or (limit and len(failed) > limit):
                break
            trial = study.ask()
        line = run_trial(study, trial, study_dir, definition, track)
        ran += 1
        print(f"[tune] {line}", flush=True)
        on_trial()
    return ran


# --- after the trials: table, plot, best config, final run ----------------------------------

def rows(study) -> list[dict[str, Any]]:
    """One row per trial, in trial order (the results table)."""
    table = []
    for trial in study.get_trials(deepcopy=False):
        curve = trial.intermediate_values
        value = trial.value if trial.value is not None else (curve[max(curve)] if curve else None)
        table.append({
            "trial": trial.number, "state": ("interrupted" if trial.user_attrs.get("interrupted")
                                             else trial.state.name.lower()),
            "valid": value, "best_epoch": trial.user_attrs.get("best_epoch"),
            "epochs_run": trial.user_attrs.get("epochs_run") or (max(curve) if curve else None),
            "seconds": trial.user_attrs.get("seconds"), "overrides": trial.user_attrs.get("overrides", []),
            "job_dir": trial.user_attrs.get("job_dir"), "curve": dict(sorted(curve.items())),
        })
    return table


def write_results(study_dir: Path, table: Sequence[Mapping[str, Any]], definition: Mapping[str, Any]) -> Path:
    keys = [p["id"] for p in definition["space"]["parameters"]]
    path = study_dir / RESULTS_FILE
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trial", "state", f"valid_{definition['metric']}", "best_epoch", "epochs_run", "seconds",
                         *keys, "job_dir"])
        for row in table:
            values = dict(o.split("=", 1) for o in row["overrides"])
            writer.writerow([row["trial"], row["state"], "" if row["valid"] is None else f"{row['valid']:.6f}",
                             row["best_epoch"] or "", row["epochs_run"] or "", row["seconds"] or "",
                             *[values.get(k, "") for k in keys], row["job_dir"] or ""])
    return path


def table_lines(table: Sequence[Mapping[str, Any]], definition: Mapping[str, Any], best: int | None) -> list[str]:
    metric = definition["metric"]
    lines = [f"{'trial':>5}  {'state':11s} {'valid ' + metric:>12s} {'epoch':>7s} {'seconds':>8s}  values"]
    for row in table:
        value = "" if row["valid"] is None else f"{row['valid']:.4f}"
        epoch = (f"{row['best_epoch']}/{row['epochs_run']}" if row["best_epoch"]
                 else f"-/{row['epochs_run']}" if row["epochs_run"] else "")
        mark = "*" if row["trial"] == best else " "
        lines.append(f"{row['trial']:>4}{mark}  {row['state']:11s} {value:>12s} {epoch:>7s} "
                     f"{row['seconds'] or '':>8}  {' '.join(_format_value(o) for o in row['overrides'])}")
    return lines


def plot(study_dir: Path, table: Sequence[Mapping[str, Any]], definition: Mapping[str, Any], best: int | None) -> Path:
    """``plots/objective.png``: the objective over trials (best so far) and every trial's per-epoch valid curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, maximize = definition["metric"], definition["goal"] == "MAXIMIZE"
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    done = [r for r in table if r["state"] == "complete"]
    pruned = [r for r in table if r["state"] == "pruned" and r["valid"] is not None]
    left.plot([r["trial"] for r in done], [r["valid"] for r in done], "o", color="tab:blue", label="complete")
    left.plot([r["trial"] for r in pruned], [r["valid"] for r in pruned], "x", color="tab:gray",
              label="pruned (last reported epoch)")
    running, xs, ys = None, [], []
    for row in sorted(done, key=lambda r: r["trial"]):
        if running is None or (row["valid"] > running if maximize else row["valid"] < running):
            running = row["valid"]
        xs.append(row["trial"])
        ys.append(running)
    if xs:
        last = max(r["trial"] for r in table)
        if last > xs[-1]:  # carry the best to the last trial (pruned or failed ones after it)
            xs.append(last)
            ys.append(running)
        left.step(xs, ys, where="post", color="tab:red", label="best so far")
    if best is not None:
        chosen = next(r for r in table if r["trial"] == best)
        left.annotate(f"best: trial {best}\n{chosen['valid']:.4f}", (best, chosen["valid"]),
                      textcoords="offset points", xytext=(8, -24 if maximize else 12), fontsize=8)
    left.set_xlabel("trial")
    left.set_ylabel(f"valid {metric}")
    left.set_title(f"objective over trials ({definition['goal'].lower()})")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    for row in table:
        if not row["curve"]:
            continue
        steps, values = list(row["curve"]), list(row["curve"].values())
        if row["trial"] == best:
            right.plot(steps, values, marker="o", color="tab:red", linewidth=2.2, zorder=3, label=f"trial {best} (best)")
        elif row["state"] == "pruned":
            right.plot(steps, values, marker="x", color="tab:gray", alpha=0.7, linestyle="--")
        else:
            right.plot(steps, values, marker=".", color="tab:blue", alpha=0.45)
    right.set_xlabel("epoch")
    right.set_ylabel(f"valid {metric}")
    right.set_title("per-epoch valid value (blue: complete, gray dashed: pruned)")
    right.grid(alpha=0.3)
    if best is not None:
        right.legend(fontsize=8)
    from matplotlib.ticker import MaxNLocator

    for axis in (left, right):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    counts = {s: sum(r["state"] == s for r in table) for s in ("complete", "pruned", "fail", "interrupted")}
    fig.suptitle(f"{definition['model']} study: {counts['complete']} complete, {counts['pruned']} pruned, "
                 f"{counts['fail']} failed, {counts['interrupted']} interrupted")
    fig.tight_layout()
    path = study_dir / PLOT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_best(study_dir: Path, best, definition: Mapping[str, Any], table: Sequence[Mapping[str, Any]]) -> Path:
    """``best.yaml``: the best trial's resolved config (a trainer config), with how it was chosen."""
    config = config_lib.resolve(definition["config"], [*definition["fixed"], *best.user_attrs["overrides"]])
    counts = {s: sum(r["state"] == s for r in table) for s in ("complete", "pruned", "fail")}
    header = [
        f"# Chosen by python -m workflows.tune on the VALID split of {definition['data']} (test not used):",
        f"# trial {best.number} of {len(table)} ({counts['complete']} complete, {counts['pruned']} pruned, "
        f"{counts['fail']} failed), valid {definition['metric']} = {best.value:.4f}.",
        f"# Base config {definition['config']}; search space {definition['space_file']}; "
        f"values: {' '.join(best.user_attrs['overrides'])}",
        f"# Final run: python -m trainer.task --config {study_dir / BEST_FILE} --data {definition['data']} "
        f"--job-dir {study_dir / 'final'}",
    ]
    path = study_dir / BEST_FILE
    path.write_text("\n".join(header) + "\n" + yaml.safe_dump(config, sort_keys=False))
    return path


def final_run(study_dir: Path, best_file: Path, definition: Mapping[str, Any], track: str | None):
    """The best config trained once more in ``STUDY/final`` (valid chose; this run reports test too)."""
    import tensorflow as tf

    from trainer import experiment

    tf.keras.backend.clear_session()
    config = config_lib.resolve(str(best_file))
    tracker = tracking.TrackerGroup([tracking.make_tracker(track)], tags={"study": study_dir.name})
    with tracking.closing(tracker):
        return experiment.run(config=config, data_dir=definition["data"], job=str(study_dir / "final"),
                              environ=_local_environ(), tracker=tracker)


# --- sessions and the command line --------------------------------------------------------------

def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    temporary.replace(path)


class Session:
    """This command's record in ``study.json`` (start time and seconds so far, kept up to date)."""

    def __init__(self, study_dir: Path, definition: Mapping[str, Any]):
        self.path = study_dir / STUDY_FILE
        self.started = time.time()
        stored = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.record = {**{k: definition[k] for k in (*IDENTITY, "config", "space_file", "model", "goal")},
                       "sessions": stored.get("sessions", [])}
        self.record["sessions"].append({"started": datetime.datetime.now().isoformat(timespec="seconds"), "seconds": 0.0})
        self.touch()

    def touch(self) -> None:
        self.record["sessions"][-1]["seconds"] = round(time.time() - self.started, 1)
        _write_json(self.path, self.record)

    @property
    def total_seconds(self) -> float:
        return round(sum(s["seconds"] for s in self.record["sessions"]), 1)


def check_identity(study_dir: Path, definition: Mapping[str, Any]) -> None:
    """Refuses a study directory that holds another study (config, space, data or fixed overrides differ)."""
    path = study_dir / STUDY_FILE
    if not path.exists():
        return
    stored = json.loads(path.read_text())
    differ = [k for k in IDENTITY if json.dumps(stored.get(k), sort_keys=True) != json.dumps(definition[k], sort_keys=True)]
    if differ:
        raise TuneError(f"{study_dir} holds another study (its {', '.join(differ)} differ{'s' if len(differ) == 1 else ''}); "
                        "pass another --study-dir, or the same config, space, data and --set to resume it")


def plan(study_dir: Path, definition: Mapping[str, Any]) -> dict[str, Any]:
    """What a run would do (the dry run): sampler, pruner, storage and the trials' job directories."""
    done = 0
    if (study_dir / DB_FILE).exists():
        study = _load(study_dir, definition)
        done = sum(_counted(t) and t.state.is_finished() for t in study.get_trials(deepcopy=False))
        numbers = range(len(study.get_trials(deepcopy=False)), len(study.get_trials(deepcopy=False)) + definition["trials"] - done)
    else:
        numbers = range(definition["trials"])
    space = definition["space"]
    algorithm = {"RANDOM_SEARCH": "optuna RandomSampler", "GRID_SEARCH": "optuna GridSampler"}.get(
        space["algorithm"], f"optuna TPESampler (first {min(10, max(3, definition['trials'] // 3))} trials random)")
    return {
        "study_dir": str(study_dir), "storage": f"sqlite:///{study_dir / DB_FILE}",
        "objective": f"valid {definition['metric']} ({definition['goal']})", "model": definition["model"],
        "sampler": f"{algorithm}, seed {definition['seed']}",
        "pruner": ("none" if definition["pruner"] == "none" else
                   f"optuna MedianPruner after epoch {definition['prune_after']} and {MIN_PRUNE_STARTUP} finished trials"),
        "trials": definition["trials"], "finished_before": done, "parallel": definition["parallel"],
        "fixed": definition["fixed"], "trial_only": definition["trial_only"],
        "parameters": [_describe(p) for p in space["parameters"]],
        "trial_job_dirs": [str(trial_dir(study_dir, n)) + "/" for n in numbers],
        "then": [str(study_dir / RESULTS_FILE), str(study_dir / PLOT_FILE), str(study_dir / BEST_FILE),
                 str(study_dir / "final") + "/", str(study_dir / SUMMARY_FILE)],
    }


def _run_workers(args_list: Sequence[str], count: int, session: Session) -> int:
    """Starts ``count`` worker processes on the study and waits for them (touching the session record)."""
    processes = [subprocess.Popen([sys.executable, "-m", "workflows.tune", *args_list, "--worker", str(index)])
                 for index in range(count)]
    try:
        while any(p.poll() is None for p in processes):
            time.sleep(5)
            session.touch()
    except KeyboardInterrupt:
        for p in processes:
            p.terminate()
        raise
    codes = [p.wait() for p in processes]
    return max(codes)


def report(study_dir: Path, definition: Mapping[str, Any], session: Session, args) -> int:
    """Table, CSV, plot, best config, final run and summary of the study as it stands."""
    study = _load(study_dir, definition)
    table = rows(study)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    best = study.best_trial if complete else None
    print(f"\n[tune] {len(table)} trials in {study_dir} (valid {definition['metric']}, {definition['goal'].lower()}):")
    for line in table_lines(table, definition, best.number if best else None):
        print(line)
    results = write_results(study_dir, table, definition)
    figure = plot(study_dir, table, definition, best.number if best else None)
    print(f"[tune] results: {results}\n[tune] plot:    {figure}")
    if best is None:
        raise TuneError("no trial completed, so there is no best config (see the table above)")
    best_file = write_best(study_dir, best, definition, table)
    print(f"[tune] best: trial {best.number}, valid {definition['metric']}={best.value:.4f}; config: {best_file}")
    summary: dict[str, Any] = {
        "study_dir": str(study_dir), "model": definition["model"], "metric": definition["metric"],
        "goal": definition["goal"], "trials": {s: sum(r["state"] == s for r in table)
                                               for s in ("complete", "pruned", "fail", "interrupted")},
        "best": {"trial": best.number, "valid": best.value, "values": best.user_attrs["overrides"],
                 "job_dir": best.user_attrs["job_dir"], "config": str(best_file)},
        "trial_seconds": round(sum(r["seconds"] or 0 for r in table), 1),
        "results": str(results), "plot": str(figure),
    }
    if not args.no_final:
        started = time.time()
        result = final_run(study_dir, best_file, definition, args.track)
        summary["final"] = {"job_dir": str(study_dir / "final"), "valid": result.valid, "test": result.test,
                            "best_epoch": result.selection.get("best_epoch"), "seconds": round(time.time() - started, 1)}
        metric = definition["metric"]
        print(f"[tune] final run {study_dir / 'final'}: valid {metric}={result.valid.get(metric, float('nan')):.4f}, "
              f"test {metric}={result.test.get(metric, float('nan')):.4f} (test only reports)")
    session.touch()
    summary["wall_seconds"] = {"this_session": session.record["sessions"][-1]["seconds"],
                               "all_sessions": session.total_seconds, "sessions": len(session.record["sessions"])}
    _write_json(study_dir / SUMMARY_FILE, summary)
    print(f"[tune] summary: {study_dir / SUMMARY_FILE} (wall {summary['wall_seconds']['all_sessions']} s over "
          f"{summary['wall_seconds']['sessions']} session(s))")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        definition = define(args)
        study_dir = Path(args.study_dir or f"runs/tune/{Path(args.config).stem}").resolve()
        if args.worker is not None:
            work(study_dir, definition, args.track, args.worker)
            return 0
        tracking.check_name(args.track)
        check_identity(study_dir, definition)
        if args.dry_run:
            print(json.dumps(plan(study_dir, definition), indent=2))
            return 0
        study_dir.mkdir(parents=True, exist_ok=True)
        with _locked(study_dir / ".tune.lock", blocking=False):
            session = Session(study_dir, definition)
            study = _load(study_dir, definition)
            recovered = recover_interrupted(study)
            if recovered:
                print(f"[tune] resuming {study_dir}: trial(s) {', '.join(map(str, recovered))} were interrupted "
                      "and run again", flush=True)
            finished = sum(_counted(t) and t.state.is_finished() for t in study.get_trials(deepcopy=False))
            print(f"[tune] {definition['model']}: {finished} of {definition['trials']} trials finished; "
                  f"objective valid {definition['metric']} ({definition['goal'].lower()}); study {study_dir}",
                  flush=True)
            if args.parallel > 1:
                worker_args = [a for a in argv if a != "--dry-run"]
                worker_args += ["--study-dir", str(study_dir)]
                code = _run_workers(worker_args, args.parallel, session)
                if code:
                    raise TuneError(f"a worker process failed (exit code {code}); rerun the same command to resume")
            else:
                work(study_dir, definition, args.track, on_trial=session.touch)
            return report(study_dir, definition, session, args)
    except TuneError as error:
        print(f"tune: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
