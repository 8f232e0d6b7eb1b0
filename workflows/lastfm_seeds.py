"""LastFM over several split seeds: the pipeline, the GNN variants and label propagation on the same splits.

For every split seed: ``beam_pipelines.lastfm --seed S`` writes ``WORK/seed-S/data``;
each ``--variant`` is trained in-process with ``trainer.experiment.run``
(``WORK/seed-S/<variant>/``: metrics.json, plots, export); label propagation
(``baselines.lastfm_label_propagation``) runs on exactly the split that output
holds (read back from its examples' root ids). Variants with post-processing
(Correct and Smooth, prior correction) also get one row per step of the same
fit (``<variant>: gnn``, ``<variant>: + correct and smooth``, ...: the task's
``stages``), so the table shows what each step added.

Printed and written (``WORK/seeds.md``, ``WORK/seeds.json``): per method, the mean,
standard deviation and standard error over seeds of valid and test accuracy and
macro-F1, and each method's paired difference from label propagation on test
(mean over seeds +- its standard error). Valid chose everything; test only reports.

Usage::

    python -m workflows.lastfm_seeds --edges E.csv --targets T.csv --work /tmp/seeds --seeds 0,1,2,3,4 \\
        --variant gnn=configs/lastfm_hetero_gnn.yaml@hparams.correct_and_smooth=false \\
        --variant gnn+cs=configs/lastfm_hetero_gnn.yaml
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Sequence

import trainer  # noqa: F401  (Keras 2 before TensorFlow)
from trainer import config as config_lib
from workflows.leaderboard import parse_entry

BASELINE = "label propagation"
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                              "lastfm_hetero_gnn.yaml")
CELLS = (("valid", "accuracy"), ("valid", "macro_f1"), ("test", "accuracy"), ("test", "macro_f1"))


@dataclasses.dataclass(frozen=True)
class Variant:
    """One trainer config run on every seed.

    Attributes:
      name: the row name.
      config: the YAML path.
      overrides: ``key=value`` overrides on top of it.
    """

    name: str
    config: str
    overrides: tuple[str, ...]


def parse_variant(spec: str) -> Variant:
    """``NAME=CONFIG[@k=v,...]`` -> ``Variant`` (the ``@`` part as in ``workflows.leaderboard``).

    Raises:
      config_lib.ConfigError: no ``NAME=``.
    """
    name, sep, entry = spec.partition("=")
    if not sep or not name or not entry:
        raise config_lib.ConfigError(f"--variant expects NAME=CONFIG[@key=value,...], got {spec!r}")
    path, overrides = parse_entry(entry)
    return Variant(name=name, config=path, overrides=tuple(overrides))


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation and standard error of the mean (``std / sqrt(n)``)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "se": std / math.sqrt(n), "n": n}


def aggregate(per_seed: dict[str, dict[int, dict[str, dict[str, float]]]]) -> dict[str, Any]:
    """Per method and (split, metric): ``summarize`` over seeds; and the paired test difference from the baseline.

    Args:
      per_seed: method -> seed -> split -> metric -> value.
    """
    table: dict[str, Any] = {}
    baseline = per_seed.get(BASELINE, {})
    for method, seeds in per_seed.items():
        row = {f"{split}_{metric}": summarize([seeds[s][split][metric] for s in sorted(seeds)])
               for split, metric in CELLS}
        shared = sorted(set(seeds) & set(baseline))
        if method != BASELINE and shared:
            for metric in ("accuracy", "macro_f1"):
                row[f"test_{metric}_minus_baseline"] = summarize(
                    [seeds[s]["test"][metric] - baseline[s]["test"][metric] for s in shared])
        table[method] = row
    return table


def markdown(table: dict[str, Any], seeds: Sequence[int]) -> str:
    """The aggregate as a Markdown table (mean +- std, standard error in brackets)."""
    def cell(stats):
        return f"{stats['mean']:.4f} ± {stats['std']:.4f} ({stats['se']:.4f})"

    header = ["method", *(f"{split} {metric}" for split, metric in CELLS), "test acc − LP", "test F1 − LP"]
    lines = [f"mean ± std (standard error) over split seeds {','.join(map(str, seeds))}; "
             "differences from label propagation are paired by seed", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, row in table.items():
        diffs = [f"{row[k]['mean']:+.4f} ({row[k]['se']:.4f})" if k in row else "-"
                 for k in ("test_accuracy_minus_baseline", "test_macro_f1_minus_baseline")]
        lines.append("| " + " | ".join([method, *(cell(row[f"{s}_{m}"]) for s, m in CELLS), *diffs]) + " |")
    return "\n".join(lines) + "\n"


def split_of_output(data_dir: str) -> dict[str, str]:
    """user id -> split, read from a LastFM pipeline output's examples (their ``context/root_id``)."""
    import tensorflow as tf

    from schemas import lastfm as schema
    from trainer import data

    dataset = data.read_dataset(data_dir, schema="lastfm", model="label propagation", verify_records=False)
    features = {schema.CONTEXT_ROOT_ID_KEY: tf.io.FixedLenFeature([], tf.string)}
    assignment = {}
    for split in data.SPLITS:
        records = tf.data.TFRecordDataset(dataset.files(split), compression_type="GZIP").batch(4096)
        for batch in records:
            for user in tf.io.parse_example(batch, features)[schema.CONTEXT_ROOT_ID_KEY].numpy():
                assignment[user.decode()] = split
    return assignment


def label_propagation(graph, assignment: dict[str, str], num_classes: int) -> dict[str, dict[str, float]]:
    """The baseline's valid/test metrics on ``assignment`` (users of no split: graph nodes whose label is unused)."""
    import numpy as np

    from baselines import lastfm_label_propagation as lp

    users, labels, edges, _ = graph
    split = np.array([assignment.get(u, "") for u in users])
    result = lp.evaluate_split(labels, edges, split, num_classes, alpha=0.9, iterations=50)
    return {name: {"accuracy": result[name]["accuracy"], "macro_f1": result[name]["macro_f1"]}
            for name in ("valid", "test")}


def _metrics(values: dict[str, Any]) -> dict[str, float]:
    return {"accuracy": float(values["accuracy"]), "macro_f1": float(values["macro_f1"])}


def run_seeds(*, edges: str, targets: str, work: str, seeds: Sequence[int], variants: Sequence[Variant],
              pipeline_args: Sequence[str] = (), num_classes: int = 18, reuse_data: bool = False) -> dict[str, Any]:
    """Runs pipeline, variants and label propagation on every seed; returns the ``seeds.json`` payload."""
    import tensorflow as tf

    from baselines import lastfm_label_propagation as lp
    from beam_pipelines import lastfm
    from trainer import experiment

    configs = {v.name: config_lib.resolve(v.config, list(v.overrides)) for v in variants}  # errors before any work
    graph = lp.read_graph(edges, targets, num_classes)
    per_seed: dict[str, dict[int, dict]] = {BASELINE: {}}
    runs = []
    for seed in seeds:
        data_dir = f"{work}/seed-{seed}/data"
        started = time.time()
        if not (reuse_data and os.path.exists(f"{data_dir}/dataset.json")):
            lastfm.run(["--edges", edges, "--targets", targets, "--output", data_dir, "--seed", str(seed),
                        "--num-classes", str(num_classes), *pipeline_args])
        per_seed[BASELINE][seed] = label_propagation(graph, split_of_output(data_dir), num_classes)
        print(f"seed {seed}: pipeline {time.time() - started:.0f} s; {BASELINE}: "
              f"test acc {per_seed[BASELINE][seed]['test']['accuracy']:.4f} "
              f"macro-F1 {per_seed[BASELINE][seed]['test']['macro_f1']:.4f}", flush=True)
        for variant in variants:
            tf.keras.backend.clear_session()
            started = time.time()
            result = experiment.run(config=configs[variant.name], data_dir=data_dir, job=f"{work}/seed-{seed}/{variant.name}")
            per_seed.setdefault(variant.name, {})[seed] = {s: _metrics(getattr(result, s)) for s in ("valid", "test")}
            for stage in result.test.get("stages", {}):
                per_seed.setdefault(f"{variant.name}: {stage}", {})[seed] = {
                    s: _metrics(getattr(result, s)["stages"][stage]) for s in ("valid", "test")}
            members = (result.selection.get("ensemble") or {}).get("members", [])
            runs.append({"seed": seed, "variant": variant.name, "job_dir": f"{work}/seed-{seed}/{variant.name}",
                         "best_epoch": result.selection["best_epoch"], "seconds": round(time.time() - started, 1),
                         **({"member_best_epochs": [m["best_epoch"] for m in members]} if members else {})})
            print(f"seed {seed}: {variant.name}: valid acc {result.valid['accuracy']:.4f} "
                  f"macro-F1 {result.valid['macro_f1']:.4f} | test acc {result.test['accuracy']:.4f} "
                  f"macro-F1 {result.test['macro_f1']:.4f} ({runs[-1]['seconds']} s)", flush=True)
    return {"edges": edges, "targets": targets, "seeds": list(seeds), "pipeline_args": list(pipeline_args),
            "variants": [dataclasses.asdict(v) for v in variants], "per_seed": per_seed,
            "summary": aggregate(per_seed), "runs": runs}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflows.lastfm_seeds", description=__doc__.split("\n\n")[0])
    parser.add_argument("--edges", required=True)
    parser.add_argument("--targets", required=True)
    parser.add_argument("--work", required=True, help="a local directory for the outputs of every seed")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated split seeds")
    parser.add_argument("--variant", action="append", default=[],
                        help=f"NAME=CONFIG[@key=value,...] (repeatable; default: gnn={DEFAULT_CONFIG})")
    parser.add_argument("--num-classes", type=int, default=18)
    parser.add_argument("--pipeline-arg", action="append", default=[],
                        help="extra flag for beam_pipelines.lastfm, e.g. --pipeline-arg=--num-shards=2")
    parser.add_argument("--reuse-data", action="store_true", help="keep a seed's pipeline output when it exists")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        if len(seeds) < 2:
            raise config_lib.ConfigError("--seeds needs at least 2 seeds for a standard deviation")
        variants = [parse_variant(v) for v in args.variant] or [Variant("gnn", DEFAULT_CONFIG, ())]
        if len({v.name for v in variants}) != len(variants) or BASELINE in {v.name for v in variants}:
            raise config_lib.ConfigError("--variant names must be unique and not the baseline's")
        for variant in variants:
            config_lib.resolve(variant.config, list(variant.overrides))
    except ValueError as error:  # ConfigError, and int() of a seed
        print(f"lastfm_seeds: error: {error}", file=sys.stderr)
        return 2
    from beam_pipelines import common
    from trainer import data

    try:
        payload = run_seeds(edges=args.edges, targets=args.targets, work=args.work, seeds=seeds, variants=variants,
                            pipeline_args=args.pipeline_arg, num_classes=args.num_classes, reuse_data=args.reuse_data)
    except (common.PipelineInputError, config_lib.ConfigError, data.DataError, OSError) as error:
        print(f"lastfm_seeds: error: {error}", file=sys.stderr)
        return 2
    table = markdown(payload["summary"], seeds)
    print("\n" + table)
    os.makedirs(args.work, exist_ok=True)
    with open(os.path.join(args.work, "seeds.md"), "w") as handle:
        handle.write(table)
    with open(os.path.join(args.work, "seeds.json"), "w") as handle:
        json.dump(payload, handle, indent=2)
    print(f"written: {os.path.join(args.work, 'seeds.md')}, {os.path.join(args.work, 'seeds.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
