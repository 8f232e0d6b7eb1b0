"""Benchmark: pipeline + training per stage, on ML-100K and on N generated ratings.

Prints per-stage wall time, rows/s (examples/s for training) and peak memory.
Each stage runs in its own Python process, so wall time includes interpreter and
TensorFlow start-up the way a user sees it, and peak memory (ru_maxrss) is that
stage's own. This is a script that prints numbers, not a timed test.

Usage::

    python tools/benchmark.py --work /tmp/bench [--ml-100k ../shared/data/ml-100k] \\
        [--generated 1000000] [--epochs 3] [--skip-train]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]


def _stage(argv: list[str]) -> dict:
    """Runs ``python -m MODULE ARGS`` in a child and measures it."""
    started = time.time()
    code = (
        "import resource, runpy, sys, json\n"
        f"sys.argv = {argv!r}\n"
        "try:\n"
        "    runpy.run_module(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    rc = e.code or 0\n"
        "else:\n"
        "    rc = 0\n"
        "print('BENCH ' + json.dumps({'rc': rc, 'peak_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)\n"
        "sys.exit(rc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    wall = time.time() - started
    lines = [line for line in result.stdout.splitlines() if line.startswith("BENCH ")]
    if result.returncode != 0 or not lines:
        sys.stderr.write(result.stdout[-3000:] + result.stderr[-3000:])
        raise SystemExit(f"benchmark stage failed: {' '.join(argv)}")
    measured = json.loads(lines[-1][len("BENCH "):])
    return {"wall_seconds": round(wall, 2), "peak_mb": round(measured["peak_mb"], 1), "stdout": result.stdout}


def bench_dataset(name: str, pipeline_args: list[str], work: Path, epochs: int, train: bool) -> list[dict]:
    data = work / "data" / name
    rows = []
    stage = _stage(["beam_pipelines.movielens", *pipeline_args, "--output", str(data)])
    summary = json.loads((data / "dataset.json").read_text())
    lines = summary["counts"]["lines_read"]
    rows.append({
        "dataset": name, "stage": "pipeline (Beam + tf.Transform)", "rows": lines,
        "wall_seconds": stage["wall_seconds"], "stage_seconds": summary["pipeline_seconds"],
        "rows_per_second": round(lines / summary["pipeline_seconds"]), "peak_mb": stage["peak_mb"],
    })
    if train:
        job = work / "jobs" / name
        stage = _stage([
            "trainer.task", "--config", str(REPO / "configs" / "movielens_mf.yaml"), "--data", str(data),
            "--job-dir", str(job), "--set", f"train.epochs={epochs}", "--set", "train.validate_every_epoch=false",
        ])
        metrics = json.loads((job / "metrics.json").read_text())
        rows.append({
            "dataset": name, "stage": f"train MF ({epochs} epochs) + eval + export",
            "rows": summary["counts"]["train_rows"] * epochs, "wall_seconds": stage["wall_seconds"],
            "stage_seconds": metrics["timings"]["train_seconds"],
            "rows_per_second": round(metrics["timings"]["train_examples_per_second"]), "peak_mb": stage["peak_mb"],
            "test_rmse": round(metrics["test"].get("rmse", float("nan")), 4),
        })
    return rows


def bench_ranking(path: Path, work: Path, models: list[str], epochs: int) -> list[dict]:
    """Leave-one-out pipeline on ``path``, then each ranking model: per-epoch examples/s."""
    data = work / "data" / f"{path.stem}-loo"
    stage = _stage(["beam_pipelines.movielens", "--input", str(path), "--split", "leave_one_out",
                    "--num-negatives", "99", "--output", str(data)])
    summary = json.loads((data / "dataset.json").read_text())
    rows = [{
        "dataset": path.stem, "stage": "pipeline leave-one-out + 99 negatives", "rows": summary["counts"]["lines_read"],
        "wall_seconds": stage["wall_seconds"], "stage_seconds": summary["pipeline_seconds"],
        "rows_per_second": round(summary["counts"]["lines_read"] / summary["pipeline_seconds"]), "peak_mb": stage["peak_mb"],
    }]
    for model in models:
        job = work / "jobs" / f"{path.stem}-{model}"
        stage = _stage(["trainer.task", "--config", str(REPO / "configs" / f"movielens_{model}.yaml"), "--data", str(data),
                        "--job-dir", str(job), "--set", f"train.epochs={epochs}"])
        timings = json.loads((job / "metrics.json").read_text())["timings"]
        rows.append({
            "dataset": path.stem, "stage": f"train {model} ({epochs} epochs) + eval + export",
            "rows": summary["counts"]["train_rows"] * epochs, "wall_seconds": stage["wall_seconds"],
            "stage_seconds": timings["train_seconds"], "rows_per_second": round(timings["train_examples_per_second"]),
            "peak_mb": stage["peak_mb"], "epoch_examples_per_second": timings["epoch_examples_per_second"],
        })
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/benchmark.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--ml-100k", type=Path, default=REPO.parent / "shared" / "data" / "ml-100k")
    parser.add_argument("--generated", type=int, default=1_000_000, help="generated ratings (0 to skip)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--ranking-models", default="gmf,mlp,neumf,bpr",
                        help="ranking models timed per epoch on the generated interactions ('' to skip)")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)

    rows: list[dict] = []
    if (args.ml_100k / "u1.base").exists():
        rows += bench_dataset(
            "ml-100k-u1",
            ["--input", str(args.ml_100k / "u1.base"), "--eval-input", str(args.ml_100k / "u1.test"), "--split", "given"],
            args.work, args.epochs, not args.skip_train,
        )
    else:
        print(f"benchmark: {args.ml_100k}/u1.base not found, skipping ML-100K", file=sys.stderr)
    if args.generated:
        path = args.work / f"generated-{args.generated}.tsv"
        started = time.time()
        from rawdata import synth

        synth.main(["movielens", "--num-ratings", str(args.generated), "--format", "tab", "--output", str(path), "--seed", "0"])
        print(f"benchmark: generated {args.generated} ratings in {time.time() - started:.1f} s", file=sys.stderr)
        rows += bench_dataset(f"generated-{args.generated}", ["--input", str(path)], args.work, args.epochs, not args.skip_train)
        if args.ranking_models and not args.skip_train:
            rows += bench_ranking(path, args.work, [m for m in args.ranking_models.split(",") if m], args.epochs)

    header = f"{'dataset':<18} {'stage':<42} {'rows':>10} {'wall s':>8} {'stage s':>8} {'rows/s':>9} {'peak MB':>8}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['dataset']:<18} {row['stage']:<42} {row['rows']:>10} {row['wall_seconds']:>8.1f} "
              f"{row['stage_seconds']:>8.1f} {row['rows_per_second']:>9} {row['peak_mb']:>8.0f}"
              + (f"   eval RMSE {row['eval_rmse']}" if "eval_rmse" in row else "")
              + (f"   per-epoch examples/s {row['epoch_examples_per_second']}" if "epoch_examples_per_second" in row else ""))
    (args.work / "benchmark.json").write_text(json.dumps(rows, indent=2))
    print(f"\nmachine: {os.cpu_count()} cores; written {args.work / 'benchmark.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
