"""Label propagation baseline on the LastFM Asia graph, on the pipeline's own splits.

``python -m tools.lastfm_label_propagation --edges E.csv --targets T.csv [--seeds 0,1,2,3,4]``

For each seed, users are split exactly as ``beam_pipelines.lastfm`` splits them
(``stratified_split``, 80/10/10 by default); train labels are propagated over
the symmetric-normalised follows graph (Zhou et al. 2004: ``F <- a S F + (1-a) Y``,
train rows clamped to their labels) and every other user takes the argmax. It
prints valid/test accuracy and macro-F1 per seed and their mean: the bar the
GNN is compared with on the same splits (``README``, LastFM section).

Bad rows are skipped here (the pipeline is where they are counted); the run
says how many.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import numpy as np

from beam_pipelines import lastfm
from trainer import classification_metrics


def read_graph(edges_path: str, targets_path: str, num_classes: int):
    """(user ids, labels, undirected edge index pairs, skipped row count)."""
    labels: dict[str, int] = {}
    skipped = 0
    with open(targets_path, encoding="utf-8-sig") as handle:
        for number, text in enumerate(handle, 1):
            kind, value = lastfm.parse_target_line(targets_path, number, text, num_classes)
            if kind == "target":
                labels[value[0]] = value[1]
            skipped += kind == "rejected"
    users = sorted(labels, key=int)
    index = {u: i for i, u in enumerate(users)}
    pairs = set()
    with open(edges_path, encoding="utf-8-sig") as handle:
        for number, text in enumerate(handle, 1):
            kind, value = lastfm.parse_edge_line(edges_path, number, text)
            if kind == "edge" and value[0] in index and value[1] in index:
                pairs.add((index[value[0]], index[value[1]]))
            skipped += kind == "rejected" or (kind == "edge" and not (value[0] in index and value[1] in index))
    return users, np.array([labels[u] for u in users]), np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2), skipped


def propagate(edges: np.ndarray, num_nodes: int, seeds: np.ndarray, clamp: np.ndarray, alpha: float, iterations: int):
    """Label propagation scores [num_nodes, classes]; rows where ``clamp`` is True stay at ``seeds``."""
    rows = np.concatenate([edges[:, 0], edges[:, 1]])
    cols = np.concatenate([edges[:, 1], edges[:, 0]])
    degree = np.maximum(np.bincount(rows, minlength=num_nodes), 1).astype(float)
    weight = 1.0 / np.sqrt(degree[rows] * degree[cols])
    scores = seeds.copy()
    for _ in range(iterations):
        spread = np.zeros_like(scores)
        np.add.at(spread, rows, weight[:, None] * scores[cols])
        scores = alpha * spread + (1 - alpha) * seeds
        scores[clamp] = seeds[clamp]
    return scores


def evaluate(users, labels, edges, seed: int, fractions, num_classes: int, alpha: float, iterations: int) -> dict:
    by_label: dict[int, list[str]] = {}
    for user, label in zip(users, labels):
        by_label.setdefault(int(label), []).append(user)
    assignment = lastfm.stratified_split(by_label, fractions, seed)
    split = np.array([assignment[u] for u in users])
    train = split == "train"
    seeds = np.zeros((len(users), num_classes))
    seeds[train, labels[train]] = 1.0
    predicted = propagate(edges, len(users), seeds, train, alpha, iterations).argmax(axis=1)
    result = {}
    for name in ("valid", "test"):
        mask = split == name
        report = classification_metrics.classification_report(labels[mask], predicted[mask], num_classes)
        result[name] = {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"], "users": int(mask.sum())}
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.lastfm_label_propagation", description=__doc__.splitlines()[0])
    parser.add_argument("--edges", required=True)
    parser.add_argument("--targets", required=True)
    parser.add_argument("--seeds", default="0", help="comma-separated split seeds")
    parser.add_argument("--split", default="0.8,0.1,0.1")
    parser.add_argument("--num-classes", type=int, default=18)
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--iterations", type=int, default=50)
    args = parser.parse_args(argv)
    fractions = tuple(float(f) for f in args.split.split(","))
    users, labels, edges, skipped = read_graph(args.edges, args.targets, args.num_classes)
    print(f"{len(users)} labelled users, {len(edges)} friendships, {skipped} rows skipped")
    results = []
    for seed in (int(s) for s in args.seeds.split(",")):
        result = evaluate(users, labels, edges, seed, fractions, args.num_classes, args.alpha, args.iterations)
        results.append(result)
        print(f"seed {seed}: valid acc {result['valid']['accuracy']:.4f} macro-F1 {result['valid']['macro_f1']:.4f} | "
              f"test acc {result['test']['accuracy']:.4f} macro-F1 {result['test']['macro_f1']:.4f}")
    if len(results) > 1:
        print("mean test: acc {:.4f} macro-F1 {:.4f}".format(
            np.mean([r["test"]["accuracy"] for r in results]), np.mean([r["test"]["macro_f1"] for r in results])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
