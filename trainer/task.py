"""Trainer entry point: flags and environment, then hand-off to ``trainer.experiment``.

Usage::

    python -m trainer.task --config configs/movielens_mf.yaml --data OUT --job-dir JOB \\
        [--set train.epochs=3 --set hparams.embedding_dim=32]

    python -m trainer.task --local-workers 2 ...    # 1 chief + 1 worker on 127.0.0.1 (trainer.launch_local)

    python -m trainer.task --config configs/lastfm_hetero_gnn.yaml --data LASTFM_OUT --job-dir JOB

A config whose ``model`` is ``hetero_gnn`` (LastFM graphs) is trained by
``trainer.gnn_task`` (its own config defaults and outputs), under the same
strategy selection; ``--hypertune-metric`` then reports a *valid* metric
(``accuracy`` or ``macro_f1``), never a test one.

Vertex AI tuning trials append ``--hparams.KEY=VALUE`` / ``--train.KEY=VALUE``
(same as ``--set``); ``--hypertune-metric rmse`` (or ``$CLOUD_ML_HP_METRIC_TAG``)
reports the final eval metric to ``$CLOUD_ML_HP_METRIC_FILE`` (cloudml-hypertune format).

``TF_CONFIG`` selects the strategy; ``AIP_MODEL_DIR``, ``AIP_CHECKPOINT_DIR`` and
``AIP_TENSORBOARD_LOG_DIR`` (set by Vertex AI) override the job sub-directories.
Errors the user can fix are printed as one line (exit code 2), never as a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from typing import Sequence

import trainer  # noqa: F401  (selects Keras 2 before TensorFlow is imported)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m trainer.task", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML config (sections model/train/hparams)")
    parser.add_argument("--data", required=True, help="pipeline output directory (local or gs://)")
    parser.add_argument("--job-dir", required=True, help="where the job writes (local or gs://)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.epochs=3")
    parser.add_argument("--verbose", action="store_true", help="INFO logging")
    parser.add_argument(
        "--local-workers", type=int, default=0, metavar="N",
        help="run N local processes (1 chief + N-1 workers on 127.0.0.1) via trainer.launch_local; needs >= N shards",
    )
    parser.add_argument(
        "--hypertune-metric", default=None, metavar="TAG",
        help="report eval metric TAG (e.g. rmse) for Vertex AI tuning; default $CLOUD_ML_HP_METRIC_TAG when set",
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


def report_hypertune_metric(tag: str, value: float, step: int, environ=None) -> str:
    """Appends one metric record the way the cloudml-hypertune library does.

    Vertex AI hyperparameter tuning reads JSON lines from ``$CLOUD_ML_HP_METRIC_FILE``
    (default ``/tmp/hypertune/output.metrics``); each holds the tag, value, global step
    and a timestamp. Returns the file written.
    """
    environ = os.environ if environ is None else environ
    path = environ.get("CLOUD_ML_HP_METRIC_FILE") or "/tmp/hypertune/output.metrics"
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    record = {"timestamp": time.time(), "trial": str(environ.get("CLOUD_ML_TRIAL_ID", "0")),
              tag: str(value), "global_step": str(int(step)), "checkpoint_path": ""}
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.local_workers > 1:
        if os.environ.get("TF_CONFIG"):
            print("trainer: error: --local-workers starts its own cluster; unset TF_CONFIG", file=sys.stderr)
            return 2
        from trainer import launch_local

        raw = list(sys.argv[1:] if argv is None else argv)
        return launch_local.launch(_strip_local_workers(raw), args.local_workers)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from trainer import config as config_lib
    from trainer import gnn_task

    try:
        if gnn_task.requested_model(args.config, args.set) == gnn_task.MODEL:
            return _run_gnn(args)
    except config_lib.ConfigError as error:
        print(f"trainer: error: {error}", file=sys.stderr)
        return 2
    from trainer import data, experiment

    try:
        config = config_lib.resolve(args.config, args.set)
        result = experiment.run(config, args.data, args.job_dir)
    except (config_lib.ConfigError, data.DataError, experiment.TrainingError) as error:
        print(f"trainer: error: {error}", file=sys.stderr)
        return 2
    tag = args.hypertune_metric or os.environ.get("CLOUD_ML_HP_METRIC_TAG")
    if tag:
        from trainer import distribute

        if tag not in result["eval"]:
            print(f"trainer: error: hypertune metric {tag!r} is not an eval metric "
                  f"(have: {', '.join(result['eval']) or 'none'})", file=sys.stderr)
            return 2
        if distribute.task_info().is_lead:
            steps = len(result["history"].get("loss", [])) * int(result["steps_per_epoch"])
            path = report_hypertune_metric(tag, float(result["eval"][tag]), steps)
            print(f"trainer: reported {tag}={result['eval'][tag]:.4f} for hyperparameter tuning to {path}")
    evaluation = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in result["eval"].items())
    print(f"trainer: {result['model']} eval: {evaluation or 'no eval rows'}")
    print(f"trainer: train {result['timings']['train_seconds']:.1f} s "
          f"({result['timings']['train_examples_per_second']:.0f} examples/s); export: {result['export_dir'] or '(not lead)'}")
    return 0


def _run_gnn(args: argparse.Namespace) -> int:
    """The LastFM heterogeneous GNN: ``trainer.gnn_task`` with this command's flags.

    Raises:
      trainer.config.ConfigError: an invalid config (``main`` prints it as one line).
    """
    from trainer import distribute, gnn_task

    cfg = gnn_task.resolve_config(args.config, args.set)
    tag = args.hypertune_metric or os.environ.get("CLOUD_ML_HP_METRIC_TAG")
    if tag and tag not in ("accuracy", "macro_f1"):
        print(f"trainer: error: hypertune metric {tag!r} is not a {gnn_task.MODEL} valid metric "
              "(have: accuracy, macro_f1)", file=sys.stderr)
        return 2
    try:
        metrics = gnn_task.run(args.data, args.job_dir, cfg)
    except FileNotFoundError as error:  # no shards / dataset.json under --data
        print(f"trainer: error: {error}", file=sys.stderr)
        return 2
    if tag and distribute.task_info().is_lead:
        steps = metrics["selection"]["epochs_run"] * int(metrics["steps_per_epoch"])
        path = report_hypertune_metric(tag, float(metrics["valid"][tag]), steps)
        print(f"trainer: reported valid {tag}={metrics['valid'][tag]:.4f} for hyperparameter tuning to {path}")
    print(f"trainer: {gnn_task.MODEL} {gnn_task.summary_line(metrics, args.job_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
