"""Benchmark of GCMC: full-graph seconds per epoch on ML-100K, sampled training on an ML-10M-shape dataset.

Prints, per stage, wall time, the trainer's own seconds per epoch, examples/s,
peak memory (ru_maxrss of the stage's own process) and the test RMSE. Every
stage is the command a user runs (``beam_pipelines.movielens``,
``beam_pipelines.rating_graph``, ``trainer.task``), each in its own process.
This is a script that prints numbers, not a timed test.

Stages:

* ``ml-100k``: u1.base / u1.test (valid carved from u1.base), the graph, then
  ``configs/movielens_gcmc.yaml`` (full graph) and
  ``configs/movielens_gcmc_sampled.yaml`` (sampled subgraphs), both with the
  refit: seconds per epoch, and how far the sampled test RMSE is from the
  full-graph one (the refit models' and the train-only models');
* ``generated``: ``rawdata.synth`` ratings of ML-10M's shape (10M half-star
  ratings, 69878 users, 10677 items; ``--generated N`` for another size with
  the same users and items), a random split (test 10 %, valid 10 % of the
  rest), the graph, then sampled training for ``--epochs`` epochs: seconds per
  epoch and peak memory. Files are named by size, so sizes do not mix.

Usage::

    python tools/benchmark_gcmc.py --work /tmp/bench-gcmc [--ml-100k ../shared/data/ml-100k] \\
        [--generated 10000054] [--epochs 1] [--only ml-100k|generated]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

from benchmark import _stage  # noqa: E402  (the same per-process measurement as tools/benchmark.py)

ML10M_USERS, ML10M_ITEMS = 69878, 10677


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _train(name: str, data: Path, job: Path, overrides: Sequence[str], config: str = "movielens_gcmc.yaml") -> dict:
    started_load = _load()
    stage = _stage(["trainer.task", "--config", str(REPO / "configs" / config), "--data", str(data),
                    "--job-dir", str(job), *[a for o in overrides for a in ("--set", o)]])
    metrics = json.loads((job / "metrics.json").read_text())
    epochs = metrics["timings"]["epoch_seconds"]
    steady = epochs[1:] or epochs  # the first epoch traces the functions
    train_only = metrics["selection"].get("refit", {}).get("test_of_the_selection_model", metrics["test"])
    return {
        "stage": name, "wall_seconds": stage["wall_seconds"], "peak_mb": stage["peak_mb"],
        "epochs": len(epochs), "steps_per_epoch": metrics["cluster"]["steps_per_epoch"],
        "seconds_per_epoch": round(sum(steady) / len(steady), 3),
        "seconds_per_step": round(sum(steady) / len(steady) / metrics["cluster"]["steps_per_epoch"], 4),
        "valid_seconds_per_epoch": round(sum(metrics["timings"]["valid_seconds"]) / max(1, len(epochs)), 3),
        "train_examples_per_second": metrics["timings"]["train_examples_per_second"],
        "valid_rmse": round(metrics["valid"].get("rmse", float("nan")), 4),
        "test_rmse": round(metrics["test"].get("rmse", float("nan")), 4),
        # With train.refit the test above is the refit's; this one is the model chosen on valid (train only).
        "test_rmse_train_only": round(train_only.get("rmse", float("nan")), 4),
        "load_at_start": started_load, "load_at_end": _load(),
    }


def _pipelines(name: str, pipeline_args: list[str], graph_args: list[str], data: Path) -> list[dict]:
    rows = []
    stage = _stage(["beam_pipelines.movielens", *pipeline_args, "--output", str(data)])
    summary = json.loads((data / "dataset.json").read_text())
    rows.append({"stage": f"{name}: movielens pipeline", "wall_seconds": stage["wall_seconds"],
                 "peak_mb": stage["peak_mb"], "rows": summary["counts"]["lines_read"]})
    stage = _stage(["beam_pipelines.rating_graph", "--data", str(data), *graph_args])
    graph = json.loads((data / "dataset.json").read_text())["graph"]
    rows.append({"stage": f"{name}: rating_graph pipeline", "wall_seconds": stage["wall_seconds"],
                 "peak_mb": stage["peak_mb"], "rows": graph["edges"]["train_valid"]})
    return rows


def bench_ml100k(ml100k: Path, work: Path) -> list[dict]:
    data = work / "data" / "ml-100k-u1"
    rows = _pipelines("ml-100k u1", ["--input", str(ml100k / "u1.base"), "--test-input", str(ml100k / "u1.test"),
                                     "--split", "given"], [], data)
    full = _train("ml-100k u1: full graph", data, work / "jobs" / "ml100k-full", [])
    sampled = _train("ml-100k u1: sampled", data, work / "jobs" / "ml100k-sampled",
                     ["train.refit=true"],  # as the full-graph config
                     config="movielens_gcmc_sampled.yaml")
    sampled["test_rmse_minus_full_graph"] = round(sampled["test_rmse"] - full["test_rmse"], 4)
    sampled["train_only_test_rmse_minus_full_graph"] = round(
        sampled["test_rmse_train_only"] - full["test_rmse_train_only"], 4)
    return rows + [full, sampled]


def bench_generated(num_ratings: int, work: Path, epochs: int) -> list[dict]:
    # Named by size: a rerun with another --generated must not reuse (or write into) another size's files.
    name = f"ml-10m-shape-{num_ratings}"
    raw = work / "raw" / name / "ratings.dat"
    raw.parent.mkdir(parents=True, exist_ok=True)
    if not raw.exists():
        subprocess.run([sys.executable, "-m", "rawdata.synth", "movielens", "--num-ratings", str(num_ratings),
                        "--num-users", str(ML10M_USERS), "--num-items", str(ML10M_ITEMS), "--half-stars",
                        "--format", "dat", "--output", str(raw)], cwd=REPO, check=True)
    data = work / "data" / name
    label = f"ml-10m shape, {num_ratings} ratings"
    rows = _pipelines(label, ["--input", str(raw), "--split", "random", "--test-fraction", "0.1",
                              "--rating-range", "0.5,5,0.5", "--num-shards", "16"], [], data)
    rows.append(_train(f"{label}: sampled, {epochs} epoch(s)", data, work / "jobs" / f"{name}-sampled",
                       [f"train.epochs={epochs}"], config="movielens_gcmc_sampled.yaml"))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/benchmark_gcmc.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--ml-100k", type=Path, default=REPO.parent / "shared" / "data" / "ml-100k")
    parser.add_argument("--generated", type=int, default=10_000_054, help="ratings of the ML-10M-shape dataset")
    parser.add_argument("--epochs", type=int, default=1, help="sampled epochs on the generated dataset")
    parser.add_argument("--only", choices=("ml-100k", "generated"))
    args = parser.parse_args(argv)
    started = time.time()
    rows = []
    if args.only in (None, "ml-100k"):
        rows += bench_ml100k(args.ml_100k, args.work)
    if args.only in (None, "generated"):
        rows += bench_generated(args.generated, args.work, args.epochs)
    print(f"\nGCMC benchmark ({os.cpu_count()} CPUs, load {_load()} at the end, {time.time() - started:.0f} s):")
    for row in rows:
        print("  " + json.dumps(row))
    (args.work / "benchmark_gcmc.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
