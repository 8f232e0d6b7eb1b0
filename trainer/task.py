"""Trainer entry point: flags and environment, then hand-off to ``trainer.experiment.run``.

Usage::

    python -m trainer.task --config configs/movielens_mf.yaml --data OUT --job-dir JOB \\
        [--set train.epochs=3 --set hparams.embedding_dim=32]

    python -m trainer.task --local-workers 2 ...    # 1 chief + 1 worker on 127.0.0.1 (trainer.launch_local)

Every registered model (``trainer.models.REGISTRY``: MF, Bayesian MF, GMF, MLP,
NeuMF, BPR, the LastFM GNN) runs through the same experiment and writes the
same outputs. The config is validated before TensorFlow is imported, so a bad
flag, key or value is answered at once with one line (exit code 2).

Vertex AI tuning trials append ``--hparams.KEY=VALUE`` / ``--train.KEY=VALUE``
(same as ``--set``); ``--hypertune-metric NAME`` (or ``$CLOUD_ML_HP_METRIC_TAG``)
reports that *valid* metric after every epoch and for the chosen epoch to
``$CLOUD_ML_HP_METRIC_FILE`` (cloudml-hypertune format); a trial
(``CLOUD_ML_TRIAL_ID``) writes under ``JOB/trials/<id>/``.

``TF_CONFIG`` selects the strategy; ``AIP_MODEL_DIR``, ``AIP_CHECKPOINT_DIR`` and
``AIP_TENSORBOARD_LOG_DIR`` (set by Vertex AI) override the job sub-directories.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from typing import Any, Sequence

import trainer  # noqa: F401  (selects Keras 2 before TensorFlow is imported)
from trainer import config as config_lib


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The trainer's flags; Vertex AI's ``--hparams.KEY=VALUE`` / ``--train.KEY=VALUE`` become ``--set``."""
    parser = argparse.ArgumentParser(prog="python -m trainer.task", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("--config", help="YAML config (sections model/train/hparams)")
    parser.add_argument("--data", required=True, help="pipeline output directory (local or gs://)")
    parser.add_argument("--job-dir", required=True, help="where the job writes (local or gs://)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.epochs=3")
    parser.add_argument("--verbose", action="store_true", help="INFO logging")
    parser.add_argument(
        "--local-workers", type=int, default=0, metavar="N",
        help="run N local processes (1 chief + N-1 workers on 127.0.0.1) via trainer.launch_local; needs >= N shards",
    )
    parser.add_argument("--track", default=None, metavar="NAME",
                        help="also log the run to experiment tracker(s) (trainer.tracking): mlflow (MLFLOW_TRACKING_URI), "
                             "vertex (Vertex AI Experiments), or mlflow,vertex")
    parser.add_argument(
        "--hypertune-metric", default=None, metavar="NAME",
        help="report valid metric NAME (e.g. rmse) for Vertex AI tuning; default $CLOUD_ML_HP_METRIC_TAG when set",
    )
    args, unknown = parser.parse_known_args(argv)
    # Vertex AI hyperparameter tuning appends each trial's values as --PARAMETER_ID=VALUE;
    # parameter ids are config keys (hparams.l2_embedding), so they become --set overrides.
    rest = list(unknown)
    while rest:
        arg = rest.pop(0)
        match = re.fullmatch(r"--((?:train|hparams)\.\w+)(?:=(.*))?", arg)
        if not match:
            parser.error(f"unrecognized arguments: {' '.join([arg, *rest])}")
        value = match.group(2)
        if value is None:
            if not rest:
                parser.error(f"{arg} needs a value")
            value = rest.pop(0)
        args.set.append(f"{match.group(1)}={value}")
    return args


def _strip_local_workers(argv: Sequence[str]) -> list[str]:
    """The trainer arguments without ``--local-workers N`` / ``--local-workers=N``."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--local-workers":
            skip = True
        elif not arg.startswith("--local-workers="):
            kept.append(arg)
    return kept


def validate(args: argparse.Namespace) -> tuple[dict[str, Any], str | None]:
    """The resolved config and the hypertune metric, checked without TensorFlow.

    Raises:
      config_lib.ConfigError: a bad config, override or metric name.
    """
    from trainer import models, tasks, tracking

    tracking.check_name(args.track)
    config = config_lib.resolve(args.config, args.set)
    kind = models.REGISTRY[config["model"]].task
    names = tasks.METRICS[kind]
    for flag, name in (("train.monitor", config["train"]["monitor"]),
                       ("--hypertune-metric", args.hypertune_metric or os.environ.get("CLOUD_ML_HP_METRIC_TAG"))):
        if name and name not in names:
            raise config_lib.ConfigError(f"{flag} {name!r} is not a valid metric of {config['model']} "
                                         f"({kind}); valid: {', '.join(names)}")
    return config, args.hypertune_metric or os.environ.get("CLOUD_ML_HP_METRIC_TAG")


def _describe_outputs(outputs: dict[str, Any]) -> list[str]:
    """One line per output that exists (``RunResult.outputs`` lists only those)."""
    labels = (("metrics", "metrics"), ("export", "SavedModel"), ("plots", "plots"), ("config", "config"),
              ("checkpoints", "checkpoints"), ("tensorboard", "TensorBoard"))
    lines = []
    for key, label in labels:
        value = outputs.get(key)
        if value:
            lines.append(f"  {label:12s} {', '.join(value) if isinstance(value, list) else value}")
    return lines


def summary_lines(result) -> list[str]:
    """What the console says about a finished run (true paths only)."""
    if not result.is_lead:
        return [f"trainer: {result.model} fit done on {result.cluster['task']} "
                f"({result.selection['epochs_run']} epochs); not lead: metrics, plots and export are written by the lead"]
    from trainer import tasks

    names = tasks.headline(result.task)

    def line(values):
        shown = [f"{k}={values[k]:.4f}" for k in names if k in values]
        return ", ".join(shown) or "no examples"

    selection = result.selection
    if selection.get("step", "epoch") != "epoch":
        kept = f"{selection['epochs_run']} {selection['step']}s"
    elif selection["rule"].startswith("the last epoch"):
        kept = f"the last of {selection['epochs_run']} epochs kept: no valid examples to choose with"
    elif selection.get("ensemble"):
        members = selection["ensemble"]["members"]
        seeds = ", ".join(str(m["seed"]) for m in members)
        epochs = ", ".join(f"{m['best_epoch']} of {m['epochs_run']}" for m in members)
        kept = f"mean of {len(members)} fits, seeds {seeds}: epochs {epochs} kept, by valid {selection['monitor']}"
    else:
        kept = f"epoch {selection['best_epoch']} of {selection['epochs_run']} kept, by valid {selection['monitor']}"
    refit = selection.get("refit")
    refit_note = (f" (refit on train + valid for {refit['epochs']} {selection.get('step', 'epoch')}s; "
                  f"the selection model's: {line(refit['test_of_the_selection_model'])})" if refit else "")
    timings = result.timings
    return [
        f"trainer: {result.model} valid: {line(result.valid)} ({kept})",
        f"trainer: {result.model} test:  {line(result.test)}{refit_note}",
        f"trainer: train {timings['train_seconds']:.1f} s ({timings['train_examples_per_second']:.0f} examples/s), "
        f"total {timings['total_seconds']:.1f} s; outputs:",
        *_describe_outputs(result.outputs),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config, hypertune_metric = validate(args)
    except config_lib.ConfigError as error:
        print(f"trainer: error: {error}", file=sys.stderr)
        return 2
    if args.local_workers > 1:
        if os.environ.get("TF_CONFIG"):
            print("trainer: error: --local-workers starts its own cluster; unset TF_CONFIG", file=sys.stderr)
            return 2
        from trainer import launch_local

        raw = list(sys.argv[1:] if argv is None else argv)
        return launch_local.launch(_strip_local_workers(raw), args.local_workers)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from trainer import data, experiment, tracking

    try:
        tracker = tracking.make_tracker(args.track)
        with tracking.closing(tracker):
            result = experiment.run(config=config, data_dir=args.data, job=args.job_dir,
                                    hypertune_metric=hypertune_metric, tracker=tracker)
    except (config_lib.ConfigError, data.DataError, experiment.TrainingError, tracking.TrackingError) as error:
        print(f"trainer: error: {error}", file=sys.stderr)
        return 2
    for line in summary_lines(result):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
