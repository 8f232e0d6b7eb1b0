"""One table of every model on its dataset: valid (which chose) and test (which only reports).

Each entry is a config trained in-process with ``trainer.experiment.run`` on a
pipeline output: ``--run CONFIG DATA`` pairs (every registered model on its own
data: MF and Bayesian MF on ratings, NCF/BPR on leave-one-out, the GNN on
LastFM), or ``--config CONFIG`` entries that share ``--data``. The table (model,
task, data, the task's metrics on valid and test, the kept epoch, train seconds,
examples/s) is printed and written to ``JOB_ROOT/leaderboard.md`` and
``JOB_ROOT/leaderboard.json``.

``--pretrained-neumf CONFIG`` runs a NeuMF config after all other entries,
initialised from the board's last GMF and MLP jobs (He et al. 2017's
pre-training; ``python -m workflows.ncf_pretrain`` is that in one command).

Usage::

    python -m workflows.leaderboard --job-root /tmp/board \\
        --run configs/movielens_bayesian_mf.yaml /tmp/u1 --run configs/movielens_mf.yaml /tmp/u1 \\
        --run configs/movielens_neumf.yaml /tmp/ml100k_loo --run configs/lastfm_hetero_gnn.yaml /tmp/lastfm

A config may carry its own overrides after ``@``: ``configs/movielens_bpr.yaml@train.epochs=3,hparams.num_negatives=8``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any, Sequence

import trainer  # noqa: F401  (Keras 2 before TensorFlow)
from trainer import config as config_lib

# The metrics shown per task kind (all are also in leaderboard.json).
COLUMNS = {
    "rating": ("rmse", "mae"),
    "ranking": ("hr@10", "ndcg@10", "mrr"),
    "graph_classification": ("accuracy", "macro_f1"),
    "graph_rating": ("rmse", "mae"),
    # 1 positive vs 50 fixed negatives, then over the user's KNN candidates (the served path)
    "playlist_ranking": ("mrr", "hit@1", "hit@5", "hit@10", "knn_mrr", "knn_hit@5"),
}


def parse_entry(entry: str) -> tuple[str, list[str]]:
    """``path.yaml@a=1,b=[2,3]`` -> (path, ["a=1", "b=[2,3]"]); splits only before a key."""
    path, _, overrides = entry.partition("@")
    return path, [o for o in re.split(r",(?=\s*(?:model|train\.|hparams\.))", overrides) if o]


def _cell(values: dict[str, Any], names: Sequence[str]) -> str:
    shown = [f"{name} {values[name]:.4f}" for name in names if name in values]
    return ", ".join(shown) or "-"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows of the leaderboard as a Markdown table."""
    header = ["model", "task", "data", "valid", "test", "kept epoch", "train s", "examples/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        names = COLUMNS.get(row["task"], ())
        cells = [row["model"], row["task"], os.path.basename(row["data"].rstrip("/")),
                 _cell(row["valid"], names), _cell(row["test"], names),
                 f"{row['best_epoch']}/{row['epochs_run']}", f"{row['train_seconds']:.1f}",
                 f"{row['examples_per_second']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_board(job_root: str, entries: Sequence[tuple[str, str]], fixed: Sequence[str] = (),
              pretrained_neumf: Sequence[tuple[str, str]] = ()) -> list[dict[str, Any]]:
    """Trains every ``(config entry, data)`` in order, then the pre-trained NeuMF entries.

    Returns:
      The rows (also written to JOB_ROOT).

    Raises:
      config_lib.ConfigError: a bad config, or ``pretrained_neumf`` without a gmf and an mlp entry before it.
    """
    import tensorflow as tf

    from trainer import experiment

    rows: list[dict[str, Any]] = []
    finished: dict[str, str] = {}  # model name -> job dir of its latest run
    plan = [(entry, data, False) for entry, data in entries] + [(e, d, True) for e, d in pretrained_neumf]
    for index, (entry, data_dir, pretrained) in enumerate(plan):
        path, overrides = parse_entry(entry)
        config = config_lib.resolve(path, [*fixed, *overrides])
        name = f"{index:02d}-{config['model']}"
        if pretrained:
            if config["model"] != "neumf" or "gmf" not in finished or "mlp" not in finished:
                raise config_lib.ConfigError(
                    "--pretrained-neumf needs a neumf config and a gmf and an mlp entry on the board")
            overrides = [*overrides, f"hparams.pretrained_gmf_dir={finished['gmf']}",
                         f"hparams.pretrained_mlp_dir={finished['mlp']}"]
            config = config_lib.resolve(path, [*fixed, *overrides])
            name += "-pretrained"
        job_dir = f"{job_root.rstrip('/')}/{name}"
        tf.keras.backend.clear_session()
        result = experiment.run(config=config, data_dir=data_dir, job=job_dir)
        finished[config["model"]] = result.outputs.get("job_dir", job_dir)
        rows.append({
            "name": name, "model": config["model"], "task": result.task, "config": path, "data": data_dir,
            "overrides": [*fixed, *overrides], "valid": result.valid, "test": result.test,
            "best_epoch": result.selection["best_epoch"], "epochs_run": result.selection["epochs_run"],
            "monitor": result.selection["monitor"], "train_seconds": result.timings["train_seconds"],
            "examples_per_second": result.timings["train_examples_per_second"], "job_dir": job_dir,
        })
        names = COLUMNS.get(result.task, ())
        print(f"leaderboard: {name}: valid {_cell(result.valid, names)}; test {_cell(result.test, names)}", flush=True)
    table = markdown_table(rows)
    tf.io.gfile.makedirs(job_root)
    with tf.io.gfile.GFile(f"{job_root.rstrip('/')}/leaderboard.md", "w") as handle:
        handle.write("Chosen on valid; test only reports.\n\n" + table)
    with tf.io.gfile.GFile(f"{job_root.rstrip('/')}/leaderboard.json", "w") as handle:
        handle.write(json.dumps({"rows": rows}, indent=2, default=lambda v: v.tolist()) + "\n")
    print("\n" + table)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflows.leaderboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--job-root", required=True)
    parser.add_argument("--run", nargs=2, action="append", default=[], metavar=("CONFIG", "DATA"),
                        help="a config (optionally @k=v,k=v) and the pipeline output it trains on")
    parser.add_argument("--data", help="the pipeline output of every --config entry")
    parser.add_argument("--config", action="append", default=[], help="a config on --data")
    parser.add_argument("--set", action="append", default=[], help="override for every entry")
    parser.add_argument("--pretrained-neumf", action="append", default=[],
                        help="a neumf config on --data, run last, initialised from the board's gmf and mlp jobs")
    args = parser.parse_args(argv)
    if (args.config or args.pretrained_neumf) and not args.data:
        parser.error("--config and --pretrained-neumf entries need --data")
    entries = [tuple(run) for run in args.run] + [(c, args.data) for c in args.config]
    if not entries:
        parser.error("nothing to run: give --run CONFIG DATA or --data DIR --config CONFIG")
    from trainer import data, experiment

    try:
        run_board(args.job_root, entries, args.set, [(c, args.data) for c in args.pretrained_neumf])
    except (config_lib.ConfigError, data.DataError, experiment.TrainingError) as error:
        print(f"leaderboard: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
