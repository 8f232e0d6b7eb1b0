"""Benchmark: 1 process vs N local workers (MultiWorkerMirroredStrategy on 127.0.0.1), per model.

For each model (MF, NeuMF, BPR, the heterogeneous GNN) and each global batch G it
runs the trainer on the same pipeline output and config:

* ``1 process``                          the single-process baseline at global batch G;
* ``N workers, TF's thread pools``       G/N per worker (same global batch, same steps, same
                                         math), each worker with TensorFlow's default pools, as
                                         large as the machine (``--threads-per-worker 0``);
* ``N workers, cores // N threads each`` the same with ``--threads-per-worker -1``: each
                                         worker's intra-op and inter-op pools at cores // N threads;
* ``N workers, ..., dense all-reduce``   the same, with ``train.sparse_all_reduce: dense``: the
                                         embedding tables' gradients summed as dense tensors
                                         (ring all-reduce) instead of all-gathered batch rows
                                         (MF, NeuMF and BPR);
* ``1 process, batch G/N``               the same per-step compute as one worker.

Examples/s come from the steady epochs (every epoch after the first, whose time
includes tracing), from each run's metrics.json (``timings.epoch_seconds``,
``cluster.steps_per_epoch`` x ``global_batch_size``); valid evaluation and the
refit are switched off, so an epoch is training steps only. Efficiency is the N
workers' examples/s over the one process's at the same global batch. On one
machine the workers share its cores; they can still pass 1.0 where one process
leaves cores idle on small steps (README, "Scaling table"). The
per-step collective cost is ``ms/step(N workers, G/N) - ms/step(1 process, G/N)``:
the all-reduce and the cross-process synchronisation (plus, on one machine, the
workers competing for the same cores).

Data are generated (``rawdata.synth``) and run through the real pipelines:
ratings -> ``beam_pipelines.movielens`` (random split for MF, leave-one-out for
NeuMF and BPR) and a LastFM-shaped graph -> ``beam_pipelines.lastfm``.

Usage::

    python tools/benchmark_multiworker.py --work /tmp/bench-mw [--models mf,neumf,bpr,gnn] \\
        [--ratings 1000000] [--gnn-users 7624] [--workers 2] [--epochs 3] [--batch-scales 1,4]

Prints one table per model and a summary; writes WORK/scaling.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]

# model -> (config, data kind, global batch at scale 1). The batches are the configs' own where a step
# already has real work (BPR 8192, the GNN 128 subgraphs); MF and NeuMF ship 256, at which a step on this
# machine is ~1 ms of compute and any multi-worker job is all synchronisation.
MODELS = {
    "mf": ("configs/movielens_mf.yaml", "random", 8192),
    "neumf": ("configs/movielens_neumf.yaml", "leave_one_out", 4096),
    "bpr": ("configs/movielens_bpr.yaml", "leave_one_out", 8192),
    "gnn": ("configs/lastfm_hetero_gnn.yaml", "lastfm", 128),
}


def _quiet(argv: list[str]) -> None:
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} failed:\n{(result.stdout + result.stderr)[-3000:]}")


def make_ratings_data(work: Path, ratings: int, split: str, shards: int) -> Path:
    """Generated ML-100K-shaped ratings -> a movielens pipeline output with ``shards`` train shards."""
    raw = work / f"ratings-{ratings}.tsv"
    if not raw.exists():
        _quiet([sys.executable, "-m", "rawdata.synth", "movielens", "--num-ratings", str(ratings),
                "--output", str(raw), "--seed", "0"])
    out = work / f"data-{split}-{ratings}"
    if not (out / "dataset.json").exists():
        extra = ["--num-negatives", "99"] if split == "leave_one_out" else []
        _quiet([sys.executable, "-m", "beam_pipelines.movielens", "--input", str(raw), "--split", split,
                "--output", str(out), "--num-shards", str(shards), "--seed", "0", *extra])
    return out


def make_lastfm_data(work: Path, users: int, shards: int) -> Path:
    """A generated LastFM-shaped graph (follows + liked artists) -> a lastfm pipeline output."""
    raw = work / f"lastfm-{users}"
    out = work / f"data-lastfm-{users}"
    if not (out / "dataset.json").exists():
        _quiet([sys.executable, "-m", "rawdata.synth", "lastfm", "--num-users", str(users), "--output", str(raw),
                "--seed", "0"])
        _quiet([sys.executable, "-m", "beam_pipelines.lastfm", "--edges", str(raw / "edges.csv"),
                "--targets", str(raw / "target.csv"), "--features", str(raw / "features.json"),
                "--output", str(out), "--num-shards", str(shards)])
    return out


def run_trainer(data: Path, job: Path, *, config: str, workers: int, per_replica_batch: int, epochs: int,
                threads: int, timeout: float, extra: Sequence[str] = (), reuse: bool = False) -> dict:
    if not (reuse and (job / "metrics.json").exists()):
        _train(data, job, config=config, workers=workers, per_replica_batch=per_replica_batch, epochs=epochs,
               threads=threads, timeout=timeout, extra=extra)
    metrics = json.loads((job / "metrics.json").read_text())
    steps = metrics["cluster"]["steps_per_epoch"]
    global_batch = metrics["cluster"]["global_batch_size"]
    steady = metrics["timings"]["epoch_seconds"][1:] or metrics["timings"]["epoch_seconds"]
    seconds = statistics.median(steady)
    return {
        "workers": workers,
        "threads": threads,
        "per_replica_batch": per_replica_batch,
        "global_batch": global_batch,
        "steps_per_epoch": steps,
        "epoch_seconds": metrics["timings"]["epoch_seconds"],
        "examples_per_second": round(steps * global_batch / seconds, 1),
        "ms_per_step": round(1000.0 * seconds / steps, 2),
        "total_seconds": metrics["timings"]["total_seconds"],
    }


def _train(data: Path, job: Path, *, config: str, workers: int, per_replica_batch: int, epochs: int,
           threads: int, timeout: float, extra: Sequence[str]) -> None:
    shutil.rmtree(job, ignore_errors=True)
    trainer_args = [
        "--config", config, "--data", str(data), "--job-dir", str(job),
        "--set", f"train.epochs={epochs}", "--set", f"train.patience={epochs}",
        "--set", f"train.batch_size={per_replica_batch}", "--set", "train.validate_every_epoch=false",
        "--set", "train.refit=false", "--set", "train.lr_schedule=constant", *extra,
    ]
    if "lastfm" in config:
        trainer_args += ["--set", "train.ensemble_size=1"]
    if workers > 1:
        argv = [sys.executable, "-m", "trainer.launch_local", "--workers", str(workers), "--timeout", str(timeout),
                "--threads-per-worker", str(threads), "--", *trainer_args]
    else:
        argv = [sys.executable, "-m", "trainer.task", *trainer_args]
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CONFIG", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")}
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout + 60)
    if result.returncode != 0:
        raise SystemExit(f"run with {workers} worker(s) failed:\n{(result.stdout + result.stderr)[-3000:]}")


def bench_model(name: str, data: Path, work: Path, *, workers: int, global_batch: int, epochs: int,
                timeout: float, reuse: bool) -> dict:
    config = str(REPO / MODELS[name][0])
    per_worker = global_batch // workers
    each = -1  # the launcher's --threads-per-worker -1: cores // workers threads per worker
    common = dict(config=config, epochs=epochs, timeout=timeout, reuse=reuse)
    runs = {
        "1 process": run_trainer(data, work / f"job-{name}-{global_batch}-1p", workers=1,
                                 per_replica_batch=global_batch, threads=0, **common),
        f"{workers} workers, TF's thread pools": run_trainer(
            data, work / f"job-{name}-{global_batch}-{workers}w", workers=workers, per_replica_batch=per_worker,
            threads=0, **common),
        f"{workers} workers, cores // {workers} threads each": run_trainer(
            data, work / f"job-{name}-{global_batch}-{workers}w-t", workers=workers, per_replica_batch=per_worker,
            threads=each, **common),
    }
    if name != "gnn":  # its tables are hashed features the batch touches sparsely; no id embeddings (use_ids: false)
        runs[f"{workers} workers, cores // {workers} threads, dense all-reduce"] = run_trainer(
            data, work / f"job-{name}-{global_batch}-{workers}w-dense", workers=workers, per_replica_batch=per_worker,
            threads=each, extra=["--set", "train.sparse_all_reduce=dense"], **common)
    runs[f"1 process, batch {per_worker}"] = run_trainer(data, work / f"job-{name}-{global_batch}-1p-half", workers=1,
                                                      per_replica_batch=per_worker, threads=0, **common)
    base = runs["1 process"]["examples_per_second"]
    for run in runs.values():
        run["efficiency"] = round(run["examples_per_second"] / base, 3)
    best_workers = max((r for r in runs.values() if r["workers"] > 1), key=lambda r: r["examples_per_second"])
    collective = best_workers["ms_per_step"] - runs[f"1 process, batch {per_worker}"]["ms_per_step"]
    return {"model": name, "global_batch": global_batch, "runs": runs, "efficiency": best_workers["efficiency"],
            "collective_ms_per_step": round(collective, 2)}


def print_table(result: dict, data: Path) -> None:
    print(f"\n{result['model']}  global batch {result['global_batch']}  data {data}")
    print(f"  {'run':48} {'global batch':>12} {'steps/epoch':>11} {'examples/s':>11} {'ms/step':>8} {'vs 1 process':>12}")
    for label, run in result["runs"].items():
        print(f"  {label:48} {run['global_batch']:>12} {run['steps_per_epoch']:>11} {run['examples_per_second']:>11.0f} "
              f"{run['ms_per_step']:>8.1f} {run['efficiency']:>11.2f}x")
    print(f"  per-step cost of the workers over 1 process at the same per-replica batch: "
          f"{result['collective_ms_per_step']:.1f} ms")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/benchmark_multiworker.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="scratch directory (generated data is kept and reused)")
    parser.add_argument("--models", default="mf,neumf,bpr,gnn", help=f"comma list of {', '.join(MODELS)}")
    parser.add_argument("--ratings", type=int, default=1_000_000, help="generated ratings for mf, neumf and bpr")
    parser.add_argument("--gnn-users", type=int, default=7624, help="generated LastFM users (the real graph's count)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="the first is dropped (tracing); at least 2")
    parser.add_argument("--batch-scales", default="1,4",
                        help="global batches to run, as multiples of each model's default (comma list)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the finished runs already in WORK (same arguments) and run only the missing ones")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    if args.workers < 2:
        parser.error("--workers must be >= 2")
    if args.epochs < 2:
        parser.error("--epochs must be >= 2: the first epoch's time includes tracing and is not counted")
    scales = [int(s) for s in args.batch_scales.split(",") if s.strip()]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    shards = max(4, args.workers)
    results = []
    for name in models:
        kind, default_batch = MODELS[name][1], MODELS[name][2]
        data = (make_lastfm_data(work, args.gnn_users, shards) if kind == "lastfm"
                else make_ratings_data(work, args.ratings, kind, shards))
        for scale in scales:
            batch = default_batch * scale
            if batch % args.workers:
                parser.error(f"{name}: global batch {batch} does not split over {args.workers} workers")
            result = bench_model(name, data, work, workers=args.workers, global_batch=batch, epochs=args.epochs,
                                 timeout=args.timeout, reuse=args.reuse)
            result["data"] = str(data)
            results.append(result)
            print_table(result, data)
            (work / "scaling.json").write_text(json.dumps({"cpu_cores": os.cpu_count(), "results": results}, indent=1))
    print(f"\nscaling ({args.workers} local workers on {os.cpu_count()} cores; steady epochs; best worker setting):")
    print(f"  {'model':6} {'global batch':>12} {'1 process ex/s':>15} {'workers ex/s':>13} {'efficiency':>10} "
          f"{'sync ms/step':>12}")
    for r in results:
        best = max((x for x in r["runs"].values() if x["workers"] > 1), key=lambda x: x["examples_per_second"])
        print(f"  {r['model']:6} {r['global_batch']:>12} {r['runs']['1 process']['examples_per_second']:>15.0f} "
              f"{best['examples_per_second']:>13.0f} {r['efficiency']:>9.2f}x {r['collective_ms_per_step']:>12.1f}")
    print(f"wrote {work / 'scaling.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
