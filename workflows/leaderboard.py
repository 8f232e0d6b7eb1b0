"""Runs several configs on ONE pipeline output and prints one comparison table.

Each config trains in-process with ``trainer.experiment.run``; the table (model,
every eval metric, train seconds, train examples/s) is printed and written to
``JOB_ROOT/leaderboard.md`` and ``JOB_ROOT/leaderboard.json``.

``--pretrained-neumf CONFIG`` runs a NeuMF config after all ``--config`` entries,
initialised from the last GMF and last MLP job of the board
(``pretrained_gmf_dir`` / ``pretrained_mlp_dir``, He et al. 2017's pre-training);
``python -m workflows.ncf_pretrain`` is GMF + MLP + pre-trained NeuMF in one command.

Usage::

    python -m workflows.leaderboard --data /tmp/ml100k_loo --job-root /tmp/board \\
        --config configs/movielens_gmf.yaml --config configs/movielens_mlp.yaml \\
        --config configs/movielens_neumf.yaml --config configs/movielens_bpr.yaml \
        [--pretrained-neumf configs/movielens_neumf_pretrained.yaml] [--set k=v]

A config may carry its own overrides after ``@``: ``configs/movielens_bpr.yaml@train.epochs=3,hparams.num_negatives=8``.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any, Sequence

import trainer  # noqa: F401  (Keras 2 before TensorFlow)

RANKING_COLUMNS = ("hr@10", "ndcg@10", "mrr", "hit@1", "hit@5", "full_recall@10", "full_ndcg@10")
RATING_COLUMNS = ("rmse", "mae")


def parse_entry(entry: str) -> tuple[str, list[str]]:
    """``path.yaml@a=1,b=[2,3]`` -> (path, ["a=1", "b=[2,3]"]); splits only before a key."""
    path, _, overrides = entry.partition("@")
    return path, [o for o in re.split(r",(?=\s*(?:model|train\.|hparams\.))", overrides) if o]


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows of the leaderboard as a Markdown table (metric columns that any row has)."""
    metric_columns = [c for c in (*RANKING_COLUMNS, *RATING_COLUMNS) if any(c in r["eval"] for r in rows)]
    header = ["model", "job", *metric_columns, "train s", "examples/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["model"], row["name"]]
        cells += [f"{row['eval'][c]:.4f}" if c in row["eval"] else "" for c in metric_columns]
        cells += [f"{row['train_seconds']:.1f}", f"{row['examples_per_second']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_board(
    data: str, job_root: str, entries: Sequence[str], fixed: Sequence[str] = (), pretrained_neumf: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """Trains every entry in order, then the pre-trained NeuMF entries; returns the rows (also written to JOB_ROOT)."""
    import tensorflow as tf

    from trainer import config as config_lib
    from trainer import experiment

    rows: list[dict[str, Any]] = []
    finished: dict[str, str] = {}  # model name -> job dir of its latest run
    plan = [(entry, False) for entry in entries] + [(entry, True) for entry in pretrained_neumf]
    for index, (entry, pretrained) in enumerate(plan):
        path, overrides = parse_entry(entry)
        config = config_lib.resolve(path, [*fixed, *overrides])
        name = f"{index:02d}-{config['model']}"
        if pretrained:
            if config["model"] != "neumf" or "gmf" not in finished or "mlp" not in finished:
                raise SystemExit("--pretrained-neumf needs a neumf config and a gmf and an mlp --config on the board")
            overrides = [
                *overrides, f"hparams.pretrained_gmf_dir={finished['gmf']}", f"hparams.pretrained_mlp_dir={finished['mlp']}"
            ]
            config = config_lib.resolve(path, [*fixed, *overrides])
            name += "-pretrained"
        job_dir = f"{job_root.rstrip('/')}/{name}"
        tf.keras.backend.clear_session()
        result = experiment.run(config, data, job_dir)
        finished[config["model"]] = job_dir
        rows.append({
            "name": name, "model": config["model"], "config": path, "overrides": [*fixed, *overrides],
            "eval": result["eval"], "train_seconds": result["timings"]["train_seconds"],
            "examples_per_second": result["timings"]["train_examples_per_second"], "job_dir": job_dir,
        })
        print(f"leaderboard: {name}: " + ", ".join(f"{k}={result['eval'][k]:.4f}" for k in (*RANKING_COLUMNS, *RATING_COLUMNS) if k in result["eval"]), flush=True)
    table = markdown_table(rows)
    tf.io.gfile.makedirs(job_root)
    with tf.io.gfile.GFile(f"{job_root.rstrip('/')}/leaderboard.md", "w") as handle:
        handle.write(f"Data: `{data}`\n\n" + table)
    with tf.io.gfile.GFile(f"{job_root.rstrip('/')}/leaderboard.json", "w") as handle:
        handle.write(json.dumps({"data": data, "rows": rows}, indent=2) + "\n")
    print("\n" + table)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflows.leaderboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="one pipeline output shared by every config")
    parser.add_argument("--job-root", required=True)
    parser.add_argument("--config", action="append", required=True, help="a config YAML, optionally @k=v,k=v")
    parser.add_argument("--set", action="append", default=[], help="override for every config")
    parser.add_argument(
        "--pretrained-neumf", action="append", default=[],
        help="a neumf config run last, initialised from the board's gmf and mlp jobs",
    )
    args = parser.parse_args(argv)
    run_board(args.data, args.job_root, args.config, args.set, args.pretrained_neumf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
