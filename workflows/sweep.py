"""Grid search of trainer overrides on a VALIDATION pipeline output.

Hyperparameters are chosen here, on data carved out of the training side (for
example ``--split random`` over ``u1.base``), never on a test split. Each grid
point runs ``trainer.experiment.run`` in-process and the table is printed and
written as JSON.

Usage::

    python -m workflows.sweep --config configs/movielens_mf.yaml --data VAL_OUT --job-root /tmp/sweep \\
        --grid hparams.l2_embedding=0.02,0.05 --grid train.learning_rate=0.001,0.002 [--metric rmse]
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from typing import Sequence

import trainer  # noqa: F401  (Keras 2 before TensorFlow)


def parse_grid(specs: Sequence[str]) -> list[tuple[str, list[str]]]:
    grid = []
    for spec in specs:
        key, _, values = spec.partition("=")
        if not values:
            raise SystemExit(f"--grid expects key=v1,v2,..., got {spec!r}")
        grid.append((key, values.split(",")))
    return grid


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflows.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--data", required=True, help="a validation pipeline output (not the test split)")
    parser.add_argument("--job-root", required=True)
    parser.add_argument("--grid", action="append", default=[], help="key=v1,v2,...")
    parser.add_argument("--set", action="append", default=[], help="fixed override for every point")
    parser.add_argument("--metric", default="rmse")
    parser.add_argument("--maximize", action="store_true", help="higher metric is better")
    args = parser.parse_args(argv)

    import tensorflow as tf

    from trainer import config as config_lib
    from trainer import experiment

    grid = parse_grid(args.grid)
    rows = []
    for index, values in enumerate(itertools.product(*(v for _, v in grid))):
        overrides = [f"{key}={value}" for (key, _), value in zip(grid, values)]
        config = config_lib.resolve(args.config, [*args.set, *overrides])
        tf.keras.backend.clear_session()
        started = time.time()
        result = experiment.run(config, args.data, f"{args.job_root}/point-{index:03d}")
        row = {"overrides": overrides, args.metric: result["eval"][args.metric], "seconds": round(time.time() - started, 1)}
        rows.append(row)
        print(f"sweep: {' '.join(overrides)} -> {args.metric}={row[args.metric]:.4f} ({row['seconds']} s)", flush=True)
    rows.sort(key=lambda r: r[args.metric], reverse=args.maximize)
    print("\nbest first:")
    for row in rows:
        print(f"  {row[args.metric]:.4f}  {' '.join(row['overrides'])}")
    with open(f"{args.job_root}/sweep.json", "w") as handle:
        json.dump({"data": args.data, "config": args.config, "fixed": args.set, "results": rows}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
