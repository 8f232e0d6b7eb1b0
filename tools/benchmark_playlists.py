"""Benchmark of the playlists data side: generator, Beam pipeline, and the KNN pairing alone, at several scales.

Prints per stage: wall time, CPU time (user + sys), rows/s and peak memory
(ru_maxrss of the stage's own process and its children). Every stage runs in
its own Python process, as a user runs it, so start-up is included. This is a
script that prints numbers, not a timed test.

Stages per size N (users):
  1. ``python -m rawdata.playlist_synth --num-users N`` (CSV + follows CSV).
  2. ``python -m beam_pipelines.playlists`` on them (DirectRunner); its
     ``dataset.json`` also gives the time spent inside the pairing stage.
  3. The pairing alone (``--pair-only``, this file): reads the pipeline's
     ``train/``, ``valid/``, ``test/`` and ``playlist_tracks/`` (no TensorFlow),
     builds the ``knn_pairing.PairingIndex`` and pairs every block in one process;
     checks that its candidates equal the pipeline's ``candidates/``.
  4. Each ``--train`` config (default: the id-only BPR and the track-content
     BPR) through ``python -m trainer.task`` on that output: the whole job
     (wall, CPU, peak memory), then every epoch (wall and examples/s of the fit
     alone, from ``metrics.json``; the exact valid evaluation after each epoch is
     listed apart) and the load, evaluation and export stages.

Usage::

    python tools/benchmark_playlists.py --work /tmp/bench-playlists [--sizes 10000,100000] [--seed 0] \
        [--train configs/playlists_bpr.yaml --train configs/playlists_tracks_bpr.yaml | --no-train]
"""
from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
_WRAPPER = (
    "import json, resource, runpy, sys\n"
    "sys.argv = {argv!r}\n"
    "try:\n"
    "    runpy.{runner}(sys.argv[0], run_name='__main__')\n"
    "except SystemExit as e:\n"
    "    rc = e.code or 0\n"
    "else:\n"
    "    rc = 0\n"
    "me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print('BENCH ' + json.dumps({{'rc': rc, 'peak_mb': max(me.ru_maxrss, kids.ru_maxrss) / 1024,\n"
    "    'cpu_s': me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime}}), flush=True)\n"
    "sys.exit(rc)\n"
)


def _stage(argv: list[str], script: bool = False) -> dict:
    """Runs ``python -m MODULE ARGS`` (or a script path) in a child process and measures it."""
    code = _WRAPPER.format(argv=argv, runner="run_path" if script else "run_module")
    started = time.time()
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.time() - started
    lines = [line for line in result.stdout.splitlines() if line.startswith("BENCH ")]
    if result.returncode != 0 or not lines:
        sys.stderr.write(result.stdout[-3000:] + result.stderr[-3000:])
        raise SystemExit(f"benchmark stage failed: {' '.join(argv)}")
    measured = json.loads(lines[-1][len("BENCH "):])
    return {"wall_s": round(wall, 1), "cpu_s": round(measured["cpu_s"], 1), "peak_mb": round(measured["peak_mb"]),
            "stdout": result.stdout}


DEFAULT_TRAIN = ("configs/playlists_bpr.yaml", "configs/playlists_tracks_bpr.yaml")


def bench_training(users: int, out: Path, work: Path, config: str) -> list[dict]:
    """One ``trainer.task`` job on a pipeline output: the whole job, then per epoch and per stage."""
    job = work / f"job-{users}-{Path(config).stem}"
    stage = _stage(["trainer.task", "--config", config, "--data", str(out), "--job-dir", str(job)])
    metrics = json.loads((job / "metrics.json").read_text())
    timings, cluster = metrics["timings"], metrics["cluster"]
    per_epoch = cluster["steps_per_epoch"] * cluster["global_batch_size"]
    epochs = len(timings["epoch_seconds"])
    rows = [{"users": users, "stage": f"trainer {metrics['model']} (whole job)", "rows": per_epoch * epochs, **stage,
             "detail": {"valid_mrr": round(metrics["valid"].get("mrr", 0.0), 4),
                        "valid_knn_mrr": round(metrics["valid"].get("knn_mrr", 0.0), 4),
                        "kept_epoch": metrics["selection"]["best_epoch"],
                        **{k: timings.get(k) for k in ("load_seconds", "eval_seconds", "export_seconds")}}}]
    for epoch, (seconds, valid) in enumerate(zip(timings["epoch_seconds"], timings["valid_seconds"] or
                                                  [None] * epochs), start=1):
        rows.append({"users": users, "stage": f"  epoch {epoch} fit (then valid eval {valid} s)", "rows": per_epoch,
                     "wall_s": seconds, "cpu_s": None, "peak_mb": None})
    return rows


def bench_size(users: int, work: Path, seed: int, train: Sequence[str] = ()) -> list[dict]:
    csv_path, follows, out = work / f"playlists-{users}.csv", work / f"follows-{users}.csv", work / f"out-{users}"
    rows = []
    stage = _stage(["rawdata.playlist_synth", "--num-users", str(users), "--output", str(csv_path),
                    "--interactions", str(follows), "--seed", str(seed)])
    lines = sum(1 for _ in open(csv_path, "rb")) + sum(1 for _ in open(follows, "rb"))
    rows.append({"users": users, "stage": "generator (CSV + follows)", "rows": lines, **stage})
    stage = _stage(["beam_pipelines.playlists", "--input", str(csv_path), "--interactions", str(follows),
                    "--output", str(out), "--seed", str(seed)])
    summary = json.loads((out / "dataset.json").read_text())
    detail = summary["counts"]["detail"]
    read = detail.get("pichl_lines_read", 0) + detail.get("interactions_lines_read", 0)
    rows.append({"users": users, "stage": "pipeline (DirectRunner, all stages)", "rows": read, **stage,
                 "inside_s": summary["pipeline_seconds"]})
    seconds = summary["pairing"]["seconds"]
    rows.append({"users": users, "stage": "  of which pairing stage (in-pipeline)", "rows": users,
                 "wall_s": round(seconds["index"] + seconds["blocks"], 1), "cpu_s": None, "peak_mb": None})
    stage = _stage([__file__, "--pair-only", str(out)], script=True)
    pair = json.loads([line for line in stage["stdout"].splitlines() if line.startswith("PAIR ")][-1][5:])
    rows.append({"users": users, "stage": "pairing alone (load + index + blocks)", "rows": users, **stage,
                 "detail": pair})
    for config in train:
        rows += bench_training(users, out, work, config)
    return rows


# --------------------------------------------------------------------------- --pair-only
def _records(pattern: str):
    """Serialized records of gzip TFRecord files, without TensorFlow (length, crc, data, crc)."""
    for path in sorted(glob.glob(pattern)):
        with gzip.open(path, "rb") as handle:
            while header := handle.read(12):
                (length,) = struct.unpack("<Q", header[:8])
                yield handle.read(length)
                handle.read(4)


def pair_only(out: str) -> dict:
    """Loads a pipeline output, pairs every user in this process, compares with ``candidates/``."""
    import numpy as np

    from beam_pipelines import knn_pairing as knn
    from beam_pipelines import playlists
    from schemas import playlists as S

    example = playlists.example_class()  # the pipeline's own tf.Example class, without TensorFlow
    ints = lambda record, key: list(example.FromString(record).features.feature[key].int64_list.value)  # noqa: E731
    started = time.perf_counter()
    users = (Path(out) / S.VOCAB_DIR / S.USER_VOCAB).read_text(encoding="utf-8").split("\n")[:-1]
    train: list[list[int]] = [[] for _ in users]
    for record in _records(f"{out}/train/part-*.tfrecord.gz"):
        train[ints(record, S.USER_INDEX)[0]].append(ints(record, S.PLAYLIST_INDEX)[0])
    held = {split: np.full(len(users), -1, np.int64) for split in ("valid", "test")}
    for split, positives in held.items():
        for record in _records(f"{out}/{split}/part-*.tfrecord.gz"):
            positives[ints(record, S.USER_INDEX)[0]] = ints(record, S.PLAYLIST_INDEX)[0]
    table = sorted((ints(r, S.PLAYLIST_INDEX)[0], ints(r, S.TRACK_INDEX)) for r in
                   _records(f"{out}/{S.PLAYLIST_TRACKS_DIR}/part-*.tfrecord.gz"))
    offsets = np.concatenate([[0], np.cumsum([len(t) for _, t in table])]).astype(np.int64)
    tracks = np.array([t for _, ts in table for t in ts], dtype=np.int64)
    summary = json.loads((Path(out) / "dataset.json").read_text())
    loaded = time.perf_counter()
    chunk = knn.user_chunk([(u, users[u], train[u], int(held["valid"][u]), int(held["test"][u]))
                            for u in range(len(users))], summary["split"]["seed"])
    config = knn.PairingConfig(seed=summary["split"]["seed"])
    index = knn.build_index([chunk], (offsets, tracks), summary["vocabulary"]["tracks"])
    indexed = time.perf_counter()
    candidates = {}
    for block in range(index.num_blocks):
        for result in knn.pair_block(index, block, config):
            candidates[result.user_index] = result.candidates.tolist()
    paired = time.perf_counter()
    written = {ints(r, S.USER_INDEX)[0]: ints(r, S.CANDIDATE_PLAYLIST_INDEX)
               for r in _records(f"{out}/{S.CANDIDATES_DIR}/part-*.tfrecord.gz")}
    mismatches = sum(candidates[u] != written.get(u) for u in candidates)
    return {"load_s": round(loaded - started, 1), "index_s": round(indexed - loaded, 1),
            "blocks_s": round(paired - indexed, 1), "blocks": index.num_blocks, "block_size": index.block_size,
            "user_track_pairs": int(index.vectors.nnz), "users": len(users),
            "candidates_equal_pipeline": mismatches == 0, "mismatches": mismatches}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/benchmark_playlists.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path)
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated numbers of users")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", action="append", metavar="CONFIG",
                        help=f"trainer config to time on each output (repeatable; default {', '.join(DEFAULT_TRAIN)})")
    parser.add_argument("--no-train", action="store_true", help="time the data side only")
    parser.add_argument("--pair-only", metavar="OUT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.pair_only:
        print("PAIR " + json.dumps(pair_only(args.pair_only)), flush=True)
        return 0
    if not args.work:
        parser.error("--work is required")
    args.work.mkdir(parents=True, exist_ok=True)
    train = () if args.no_train else tuple(args.train or DEFAULT_TRAIN)
    rows = [row for size in args.sizes.split(",") for row in bench_size(int(size), args.work, args.seed, train)]
    header = f"{'users':>7} {'stage':<48} {'rows':>9} {'wall s':>7} {'cpu s':>7} {'rows/s':>8} {'peak MB':>8}"
    print(header)
    print("-" * len(header))
    for row in rows:
        rate = round(row["rows"] / row["wall_s"]) if row["wall_s"] else 0
        cpu = f"{row['cpu_s']:>7.1f}" if row["cpu_s"] is not None else f"{'':>7}"
        peak = f"{row['peak_mb']:>8}" if row["peak_mb"] is not None else f"{'':>8}"
        print(f"{row['users']:>7} {row['stage']:<48} {row['rows']:>9} {row['wall_s']:>7.1f} {cpu} {rate:>8} {peak}")
        if "detail" in row:
            print(f"{'':>7}   {json.dumps(row['detail'])}")
    for row in rows:
        row.pop("stdout", None)
    (args.work / "benchmark_playlists.json").write_text(json.dumps(rows, indent=2))
    load = os.getloadavg()
    print(f"\nmachine: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end "
          f"(other jobs share the cores: compare cpu s with wall s); written {args.work / 'benchmark_playlists.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
