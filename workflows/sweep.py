"""Grid search of trainer overrides, chosen on the VALID split of one pipeline output.

Every grid point runs ``trainer.experiment.run`` in-process (any registered
model: MF, Bayesian MF, GMF, MLP, NeuMF, BPR, the GNN) and is ranked by a
*valid* metric of its task (default: the task's epoch-selection metric; the
goal, min or max, comes from the task). Test metrics are printed beside it for
the record, never used to rank. The table is printed and written as JSON.

Usage::

    python -m workflows.sweep --config configs/movielens_mf.yaml --data OUT --job-root /tmp/sweep \\
        --grid hparams.l2_embedding=0.02,0.05 --grid train.learning_rate=0.001,0.002 [--metric rmse]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from typing import Sequence

import trainer  # noqa: F401  (Keras 2 before TensorFlow)
from trainer import config as config_lib


def parse_grid(specs: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``["hparams.k=1,2"]`` -> ``[("hparams.k", ["1", "2"])]``.

    Raises:
      config_lib.ConfigError: a spec without values.
    """
    grid = []
    for spec in specs:
        key, _, values = spec.partition("=")
        if not values:
            raise config_lib.ConfigError(f"--grid expects key=v1,v2,..., got {spec!r}")
        grid.append((key, values.split(",")))
    return grid


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflows.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--data", required=True, help="a pipeline output with a non-empty valid split")
    parser.add_argument("--job-root", required=True)
    parser.add_argument("--grid", action="append", default=[], help="key=v1,v2,...")
    parser.add_argument("--set", action="append", default=[], help="fixed override for every point")
    parser.add_argument("--metric", default=None, help="valid metric to rank by (default: the task's monitor)")
    args = parser.parse_args(argv)

    from trainer import models, tasks

    try:
        grid = parse_grid(args.grid)
        points = [[f"{key}={value}" for (key, _), value in zip(grid, values)]
                  for values in itertools.product(*(v for _, v in grid))]
        configs = [config_lib.resolve(args.config, [*args.set, *overrides]) for overrides in points]
        kind = models.REGISTRY[configs[0]["model"]].task
        names = tasks.METRICS[kind]
        metric = args.metric or configs[0]["train"]["monitor"] or tasks.task_class(kind).default_monitor
        if metric not in names:
            raise config_lib.ConfigError(f"--metric {metric!r} is not a {kind} metric; valid: {', '.join(names)}")
    except config_lib.ConfigError as error:
        print(f"sweep: error: {error}", file=sys.stderr)
        return 2
    import tensorflow as tf

    from trainer import data, experiment

    rows = []
    for index, (overrides, config) in enumerate(zip(points, configs)):
        tf.keras.backend.clear_session()
        started = time.time()
        try:
            result = experiment.run(config=config, data_dir=args.data, job=f"{args.job_root}/point-{index:03d}")
        except (config_lib.ConfigError, data.DataError) as error:
            print(f"sweep: error: {error}", file=sys.stderr)
            return 2
        if metric not in result.valid:
            print(f"sweep: error: {args.data} has no valid examples to choose on (rerun the pipeline without "
                  "--no-valid)", file=sys.stderr)
            return 2
        row = {"overrides": overrides, "valid": {metric: result.valid[metric]},
               "test": {metric: result.test.get(metric)}, "best_epoch": result.selection["best_epoch"],
               "seconds": round(time.time() - started, 1), "job_dir": result.outputs.get("job_dir")}
        rows.append(row)
        print(f"sweep: {' '.join(overrides) or '(defaults)'} -> valid {metric}={row['valid'][metric]:.4f} "
              f"(epoch {row['best_epoch']}, {row['seconds']} s)", flush=True)
    rows.sort(key=lambda r: r["valid"][metric], reverse=names[metric] == "max")
    print(f"\nbest first (valid {metric}, {names[metric]}):")
    for row in rows:
        print(f"  {row['valid'][metric]:.4f}  {' '.join(row['overrides']) or '(defaults)'}")
    os.makedirs(args.job_root, exist_ok=True) if "://" not in args.job_root else None
    with tf.io.gfile.GFile(f"{args.job_root}/sweep.json", "w") as handle:
        handle.write(json.dumps({"data": args.data, "config": args.config, "fixed": args.set, "metric": metric,
                                 "goal": names[metric], "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
