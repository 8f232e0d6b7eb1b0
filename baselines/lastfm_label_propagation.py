"""Label propagation baseline on the LastFM Asia graph, on the pipeline's own splits.

``python -m baselines.lastfm_label_propagation --edges E.csv --targets T.csv [--seeds 0,1,2,3,4]``

For each seed, users are split exactly as ``beam_pipelines.lastfm`` splits them
(``stratified_split``, 80/10/10 by default); train labels are propagated over
the symmetric-normalised follows graph (Zhou et al. 2004: ``F <- a S F + (1-a) Y``,
train rows clamped to their labels) and every other user takes the argmax. It
prints valid/test accuracy and macro-F1 per seed and their mean: the bar the
GNN is compared with on the same splits (``README``, LastFM section).

``--neighbourhoods`` adds, per seed, how much any graph-only model can get from
the labelled neighbourhood of a valid/test user: the share with no train friend,
and the share whose own country is among their train friends' countries (one
hop) or among train users within two hops. A user whose country no train friend
has can only be answered from further away (or the class prior): a measure of how
hard a split is for any graph-only model, not a bound.

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


def both_directions(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(receivers, senders) of every friendship in both directions."""
    return np.concatenate([edges[:, 0], edges[:, 1]]), np.concatenate([edges[:, 1], edges[:, 0]])


def propagate(edges: np.ndarray, num_nodes: int, seeds: np.ndarray, clamp: np.ndarray, alpha: float, iterations: int):
    """Label propagation scores [num_nodes, classes]; rows where ``clamp`` is True stay at ``seeds``."""
    rows, cols = both_directions(edges)
    degree = np.maximum(np.bincount(rows, minlength=num_nodes), 1).astype(float)
    weight = 1.0 / np.sqrt(degree[rows] * degree[cols])
    scores = seeds.copy()
    for _ in range(iterations):
        spread = np.zeros_like(scores)
        np.add.at(spread, rows, weight[:, None] * scores[cols])
        scores = alpha * spread + (1 - alpha) * seeds
        scores[clamp] = seeds[clamp]
    return scores


def split_of(users, labels, seed: int, fractions) -> np.ndarray:
    """Each user's split name, exactly as ``beam_pipelines.lastfm`` assigns it."""
    by_label: dict[int, list[str]] = {}
    for user, label in zip(users, labels):
        by_label.setdefault(int(label), []).append(user)
    assignment = lastfm.stratified_split(by_label, fractions, seed)
    return np.array([assignment[u] for u in users])


def train_one_hot(labels, split: np.ndarray, num_classes: int) -> np.ndarray:
    """[users, classes]: one-hot class of train users, zeros for everyone else."""
    seeds = np.zeros((len(labels), num_classes))
    train = split == "train"
    seeds[train, labels[train]] = 1.0
    return seeds


def neighbourhood_coverage(labels, edges, split: np.ndarray, num_classes: int) -> dict:
    """Per split (valid, test): shares of users by what their *train* neighbourhood says of their own class.

    ``no_train_friend``: no train user among the friends; ``own_class_1_hop``: the user's
    class is the class of at least one train friend; ``own_class_2_hops``: ... of at
    least one train user within two hops.
    """
    num_nodes = len(labels)
    rows, cols = both_directions(edges)
    seeds = train_one_hot(labels, split, num_classes)
    one_hop = np.zeros_like(seeds)
    np.add.at(one_hop, rows, seeds[cols])
    reach = np.zeros_like(seeds)  # train labels two hops away (valid/test users have none of their own)
    np.add.at(reach, rows, one_hop[cols])
    own = np.arange(num_nodes), labels
    in_one = one_hop[own] > 0
    in_two = in_one | (reach[own] > 0)
    result = {}
    for name in ("valid", "test"):
        mask = split == name
        result[name] = {"users": int(mask.sum()), "no_train_friend": float((one_hop[mask].sum(axis=1) == 0).mean()),
                        "own_class_1_hop": float(in_one[mask].mean()), "own_class_2_hops": float(in_two[mask].mean())}
    return result


def evaluate(users, labels, edges, seed: int, fractions, num_classes: int, alpha: float, iterations: int) -> dict:
    """Valid and test accuracy / macro-F1 on the pipeline's split of ``seed``."""
    return evaluate_split(labels, edges, split_of(users, labels, seed, fractions), num_classes, alpha, iterations)


def evaluate_split(labels, edges, split: np.ndarray, num_classes: int, alpha: float, iterations: int) -> dict:
    """Valid and test accuracy / macro-F1 of label propagation from the train users of ``split``.

    Args:
      labels: [users] classes.
      edges: [friendships, 2] user indices.
      split: [users] ``train`` / ``valid`` / ``test``, anything else for users of no split
        (nodes of the graph whose label is not used: a split file that leaves them out).
    """
    train = split == "train"
    seeds = train_one_hot(labels, split, num_classes)
    predicted = propagate(edges, len(labels), seeds, train, alpha, iterations).argmax(axis=1)
    result = {}
    for name in ("valid", "test"):
        mask = split == name
        report = classification_metrics.classification_report(labels[mask], predicted[mask], num_classes)
        result[name] = {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"], "users": int(mask.sum())}
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m baselines.lastfm_label_propagation", description=__doc__.splitlines()[0])
    parser.add_argument("--edges", required=True)
    parser.add_argument("--targets", required=True)
    parser.add_argument("--seeds", default="0", help="comma-separated split seeds")
    parser.add_argument("--split", default="0.8,0.1,0.1")
    parser.add_argument("--num-classes", type=int, default=18)
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--neighbourhoods", action="store_true",
                        help="also print what the train neighbourhood of valid/test users says of their class")
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
        if args.neighbourhoods:
            split = split_of(users, labels, seed, fractions)
            for name, share in neighbourhood_coverage(labels, edges, split, args.num_classes).items():
                print(f"  {name} ({share['users']} users): no train friend {share['no_train_friend']:.3f}; "
                      f"own class among train friends {share['own_class_1_hop']:.3f}, "
                      f"among train users within 2 hops {share['own_class_2_hops']:.3f}")
    if len(results) > 1:
        print("mean test: acc {:.4f} macro-F1 {:.4f}".format(
            np.mean([r["test"]["accuracy"] for r in results]), np.mean([r["test"]["macro_f1"] for r in results])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
