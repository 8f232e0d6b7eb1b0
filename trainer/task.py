"""Trainer entry point: flags and environment, then hand-off to ``trainer.experiment``.

Usage::

    python -m trainer.task --config configs/movielens_mf.yaml --data OUT --job-dir JOB \\
        [--set train.epochs=3 --set hparams.embedding_dim=32]

``TF_CONFIG`` selects the strategy; ``AIP_MODEL_DIR``, ``AIP_CHECKPOINT_DIR`` and
``AIP_TENSORBOARD_LOG_DIR`` (set by Vertex AI) override the job sub-directories.
Errors the user can fix are printed as one line (exit code 2), never as a traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

import trainer  # noqa: F401  (selects Keras 2 before TensorFlow is imported)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m trainer.task", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML config (sections model/train/hparams)")
    parser.add_argument("--data", required=True, help="pipeline output directory (local or gs://)")
    parser.add_argument("--job-dir", required=True, help="where the job writes (local or gs://)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.epochs=3")
    parser.add_argument("--verbose", action="store_true", help="INFO logging")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from trainer import config as config_lib
    from trainer import data, experiment

    try:
        config = config_lib.resolve(args.config, args.set)
        result = experiment.run(config, args.data, args.job_dir)
    except (config_lib.ConfigError, data.DataError, experiment.TrainingError) as error:
        print(f"trainer: error: {error}", file=sys.stderr)
        return 2
    evaluation = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in result["eval"].items())
    print(f"trainer: {result['model']} eval: {evaluation or 'no eval rows'}")
    print(f"trainer: train {result['timings']['train_seconds']:.1f} s "
          f"({result['timings']['train_examples_per_second']:.0f} examples/s); export: {result['export_dir'] or '(not lead)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
