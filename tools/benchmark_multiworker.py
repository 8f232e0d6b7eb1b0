"""Benchmark: 1 process vs N local workers (MultiWorkerMirroredStrategy on 127.0.0.1).

Runs the trainer three ways on the same pipeline output and config:

* ``1 process, batch G``         the single-process baseline at global batch G;
* ``N workers, batch G/N each``  same global batch (same steps, same math);
* ``1 process, batch G/N``       the same per-step compute as one worker.

and prints examples/s and time per step for each. The per-step collective cost
is ``step(N workers, G/N) - step(1 process, G/N)``: same compute per step, plus
the all-reduce and the cross-process synchronisation (on one machine it also
includes the workers competing for the same cores). Each run is a child process
(``trainer.task``, or ``trainer.launch_local`` for N > 1); times come from each
run's metrics.json (fit wall time over epochs x steps, so the first epoch's
tracing is included: use several epochs).

Usage::

    python tools/benchmark_multiworker.py --work /tmp/bench-mw [--data OUT] [--ratings 50000] \\
        [--workers 2] [--global-batch 2048] [--epochs 3]

Without ``--data`` it generates planted ratings and runs the MovieLens pipeline
with enough shards for the workers.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]


def make_data(work: Path, ratings: int, shards: int) -> Path:
    """Planted two-taste ratings -> pipeline output with ``shards`` train shards."""
    import numpy as np

    rng = np.random.default_rng(0)
    users = max(10, int((ratings / 30) ** 0.5 * 5))
    items = max(10, ratings // users * 2)
    user = rng.integers(1, users + 1, ratings)
    item = rng.integers(1, items + 1, ratings)
    rating = np.where(item % 2 == user % 2, 5, 1)
    raw = work / "ratings.tsv"
    raw.write_text("".join(f"{u}\t{i}\t{r}\t{1_000_000 + n}\n" for n, (u, i, r) in enumerate(zip(user, item, rating))))
    out = work / "data"
    subprocess.run([sys.executable, "-m", "beam_pipelines.movielens", "--input", str(raw), "--split", "random",
                    "--eval-fraction", "0.1", "--output", str(out), "--num-shards", str(shards)],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def run_trainer(data: Path, job: Path, workers: int, per_replica_batch: int, epochs: int, config: str,
                timeout: float) -> dict:
    shutil.rmtree(job, ignore_errors=True)
    trainer_args = [
        "--config", config, "--data", str(data), "--job-dir", str(job),
        "--set", f"train.epochs={epochs}", "--set", f"train.batch_size={per_replica_batch}",
        "--set", "train.validate_every_epoch=false", "--set", "train.lr_schedule=constant",
    ]
    if workers > 1:
        argv = [sys.executable, "-m", "trainer.launch_local", "--workers", str(workers), "--timeout", str(timeout),
                "--", *trainer_args]
    else:
        argv = [sys.executable, "-m", "trainer.task", *trainer_args]
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    started = time.time()
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout + 60)
    if result.returncode != 0:
        raise SystemExit(f"run with {workers} worker(s) failed:\n{(result.stdout + result.stderr)[-3000:]}")
    metrics = json.loads((job / "metrics.json").read_text())
    steps = metrics["cluster"]["steps_per_epoch"] * len(metrics["history"]["loss"])
    return {
        "workers": workers,
        "per_replica_batch": per_replica_batch,
        "global_batch": metrics["cluster"]["global_batch_size"],
        "steps": steps,
        "train_seconds": metrics["timings"]["train_seconds"],
        "examples_per_second": metrics["timings"]["train_examples_per_second"],
        "ms_per_step": 1000.0 * metrics["timings"]["train_seconds"] / steps,
        "rmse": metrics["test"].get("rmse"),
        "wall_seconds": round(time.time() - started, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/benchmark_multiworker.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="scratch directory")
    parser.add_argument("--data", help="existing pipeline output (needs >= --workers train shards)")
    parser.add_argument("--ratings", type=int, default=50_000, help="generated ratings when --data is absent")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--global-batch", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--config", default=str(REPO / "configs" / "movielens_mf.yaml"))
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    args = parser.parse_args(argv)
    if args.workers < 2 or args.global_batch % args.workers:
        parser.error("--workers must be >= 2 and divide --global-batch")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else make_data(work, args.ratings, max(4, args.workers))
    per_worker = args.global_batch // args.workers
    runs = [
        run_trainer(data, work / "job-1p-global", 1, args.global_batch, args.epochs, args.config, args.timeout),
        run_trainer(data, work / f"job-{args.workers}w", args.workers, per_worker, args.epochs, args.config, args.timeout),
        run_trainer(data, work / "job-1p-per-worker", 1, per_worker, args.epochs, args.config, args.timeout),
    ]
    labels = [f"1 process, batch {args.global_batch}", f"{args.workers} workers, batch {per_worker} each",
              f"1 process, batch {per_worker}"]
    print(f"data: {data}  ({args.epochs} epochs, fit wall time; {os.cpu_count()} CPU cores)")
    print(f"{'run':34} {'global batch':>12} {'steps':>6} {'train s':>8} {'examples/s':>11} {'ms/step':>8} {'rmse':>7}")
    for label, run in zip(labels, runs):
        rmse = f"{run['rmse']:.4f}" if run["rmse"] is not None else "-"
        print(f"{label:34} {run['global_batch']:>12} {run['steps']:>6} {run['train_seconds']:>8.1f} "
              f"{run['examples_per_second']:>11.0f} {run['ms_per_step']:>8.1f} {rmse:>7}")
    collective = runs[1]["ms_per_step"] - runs[2]["ms_per_step"]
    print(f"per-step collective cost ({args.workers} workers vs 1 process at the same per-replica batch): "
          f"{collective:.1f} ms/step")
    print(f"speed-up at equal global batch: {runs[1]['examples_per_second'] / runs[0]['examples_per_second']:.2f}x")
    print(json.dumps({"runs": runs, "collective_ms_per_step": round(collective, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
