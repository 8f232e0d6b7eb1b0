"""Benchmark of scale: how time and peak memory grow with the number of ratings (issue 15).

For each size N: generated ratings in the ML-25M CSV layout (``ratings.csv``:
header, half stars, ML-25M's ratios of about 154 ratings per user and 423 per
item), then the stages a user runs, each in its own process (wall time includes
start-up; peak memory is that process's ru_maxrss):

* ``pipeline``: ``python -m beam_pipelines.movielens --split random`` (DirectRunner,
  ``--spill auto``: its large shuffles go through local files); at sizes up to
  ``--spill-off-up-to`` also with ``--spill off`` (every shuffle in memory, as
  before spilling), for a before/after from the same run;
* ``train``: ``python -m trainer.task`` with ``configs/movielens_mf.yaml``, one
  epoch at ``--batch-size`` (default 8192: the config's 256 is ML-100K's, and at
  25M it would mean ~80k steps an epoch), no refit (its own timings split load,
  the epoch, evaluation and export).

A size whose projected peak (a straight line through the sizes measured so far)
would not fit in the machine's available memory is skipped and said so, rather
than pushing the machine into swap. Prints a table, writes ``scale.json`` and
``scale.png`` (time and peak memory against N) under ``--work``. A script that
prints numbers, not a timed test.

Usage::

    python tools/benchmark_scale.py --work /tmp/bench-scale [--sizes 1000000,5000000,10000000,25000000]
        [--spill-off-up-to 5000000] [--batch-size 8192]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

from benchmark import _stage  # noqa: E402  (the same per-process measurement as tools/benchmark.py)

RATINGS_PER_USER, RATINGS_PER_ITEM = 154, 423  # ML-25M: 25,000,095 ratings, 162,541 users, 59,047 items


def available_mb() -> float:
    with open("/proc/meminfo") as handle:
        fields = dict(line.split(":", 1) for line in handle)
    return int(fields["MemAvailable"].split()[0]) / 1024


def projected_peak_mb(measured: list[tuple[int, float]], size: int) -> float | None:
    """The peak at ``size`` on the line through the two largest measured sizes (None: fewer than two)."""
    if len(measured) < 2:
        return None
    (n0, m0), (n1, m1) = sorted(measured)[-2:]
    return m1 + (m1 - m0) / (n1 - n0) * (size - n1)


def bench_size(size: int, work: Path, spill_modes: Sequence[str], batch_size: int) -> list[dict]:
    raw = work / "raw" / f"ratings-{size}.csv"
    raw.parent.mkdir(parents=True, exist_ok=True)
    if not raw.exists():
        generated = _stage(["rawdata.synth", "movielens", "--num-ratings", str(size),
                            "--num-users", str(max(1, size // RATINGS_PER_USER)),
                            "--num-items", str(max(1, size // RATINGS_PER_ITEM)),
                            "--format", "csv", "--half-stars", "--seed", "0", "--output", str(raw)])
        print(f"  generated {size} ratings in {generated['wall_seconds']} s", file=sys.stderr)
    data, job = work / "data" / str(size), work / "jobs" / str(size)
    rows = []
    for mode in spill_modes:  # "off" first: the data that training reads is the last run's ("auto")
        pipeline = _stage(["beam_pipelines.movielens", "--input", str(raw), "--split", "random",
                           "--spill", mode, "--output", str(data)])
        summary = json.loads((data / "dataset.json").read_text())
        rows.append({"ratings": size, "stage": f"pipeline (spill {mode})", "wall_seconds": pipeline["wall_seconds"],
                     "rows_per_second": round(size / summary["pipeline_seconds"]), "peak_mb": pipeline["peak_mb"],
                     "num_shards": summary["num_shards"]})
        print(f"  {rows[-1]}", file=sys.stderr)
    train = _stage(["trainer.task", "--config", str(REPO / "configs" / "movielens_mf.yaml"), "--data", str(data),
                    "--job-dir", str(job), "--set", "train.epochs=1", "--set", "train.refit=false",
                    "--set", f"train.batch_size={batch_size}"])
    metrics = json.loads((job / "metrics.json").read_text())
    timings = metrics["timings"]
    rows.append({"ratings": size, "stage": f"train: 1 MF epoch (batch {batch_size}) + eval + export",
                 "wall_seconds": train["wall_seconds"],
                 "rows_per_second": round(timings["train_examples_per_second"]), "peak_mb": train["peak_mb"],
                 "epoch_seconds": timings["train_seconds"], "eval_seconds": timings.get("eval_seconds"),
                 "test_rmse": round(metrics["test"]["rmse"], 4)})
    print(f"  {rows[-1]}", file=sys.stderr)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for stage in dict.fromkeys(r["stage"] for r in rows):
        points = sorted((r["ratings"] / 1e6, r["wall_seconds"], r["peak_mb"] / 1024) for r in rows if r["stage"] == stage)
        sizes = [p[0] for p in points]
        time_axis.plot(sizes, [p[1] for p in points], "o-", label=stage)
        memory_axis.plot(sizes, [p[2] for p in points], "o-", label=stage)
    time_axis.set(xlabel="ratings (millions)", ylabel="wall seconds", title="time")
    memory_axis.set(xlabel="ratings (millions)", ylabel="peak RSS (GiB)", title="peak memory")
    memory_axis.axhline(8, color="grey", linestyle="--", linewidth=1, label="8 GiB")
    for axis in (time_axis, memory_axis):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/benchmark_scale.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--sizes", default="1000000,5000000,10000000,25000000", help="comma-separated rating counts")
    parser.add_argument("--spill-off-up-to", type=int, default=5_000_000,
                        help="also run the pipeline with --spill off at sizes up to this (0: never)")
    parser.add_argument("--batch-size", type=int, default=8192, help="training batch of the one MF epoch")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    args.work.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    skipped: list[str] = []
    started = time.time()
    for size in sizes:
        measured = [(r["ratings"], r["peak_mb"]) for r in rows if r["stage"] == "pipeline (spill auto)"]
        projected, free = projected_peak_mb(measured, size), available_mb()
        if projected is not None and projected > 0.9 * free:
            skipped.append(f"{size}: skipped, projected pipeline peak {projected / 1024:.1f} GiB "
                           f"> 90% of the {free / 1024:.1f} GiB available")
            print(f"benchmark_scale: {skipped[-1]}", file=sys.stderr)
            continue
        print(f"benchmark_scale: {size} ratings", file=sys.stderr)
        modes = ("off", "auto") if size <= args.spill_off_up_to else ("auto",)
        rows += bench_size(size, args.work, modes, args.batch_size)
        # After every size, so a run stopped part-way keeps what it measured.
        (args.work / "scale.json").write_text(json.dumps({"rows": rows, "skipped": skipped}, indent=2) + "\n")
        plot(rows, args.work / "scale.png")
    (args.work / "scale.json").write_text(json.dumps({"rows": rows, "skipped": skipped}, indent=2) + "\n")
    header = f"{'ratings':>10} {'stage':<40} {'wall s':>8} {'rows/s':>9} {'peak MB':>9}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['ratings']:>10} {row['stage']:<40} {row['wall_seconds']:>8.1f} {row['rows_per_second']:>9} "
              f"{row['peak_mb']:>9.0f}")
    for size in dict.fromkeys(r["ratings"] for r in rows):
        stages = [r for r in rows if r["ratings"] == size and "spill off" not in r["stage"]]
        print(f"{size:>10} {'total: pipeline (spill auto) + train':<40} {sum(r['wall_seconds'] for r in stages):>8.1f} "
              f"{'':>9} {max(r['peak_mb'] for r in stages):>9.0f}")
    for line in skipped:
        print(line)
    print(f"total {time.time() - started:.0f} s; wrote {args.work / 'scale.json'} and {args.work / 'scale.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
