"""Popularity baseline for playlist ranking, on the playlists pipeline's own splits and both protocols.

``python -m baselines.playlist_popularity --data OUT [--output popularity.json]``

Scores every playlist by its number of **train** members (its owner, when the
owner's membership is in train, plus its train followers) and ranks with it
exactly as the playlist rankers are ranked (``trainer.playlists.evaluate_scores``):
each held-out positive against its 50 fixed negatives, and over the user's KNN
candidates (``knn_*``). Ties count against the model, as for every model: a
held-out playlist that nobody else follows has no train member at all, so it
ties with (and loses to) every negative that has one. That is what popularity
knows about such a playlist, and the bar the learnt rankers must clear.

Valid and test are both reported; nothing is chosen, so neither is used to tune.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

import numpy as np


def popularity_scorer(member_counts: np.ndarray):
    """``(users [U], items [U, C]) -> [U, C]`` the items' train member counts (the user is ignored)."""
    counts = np.asarray(member_counts, np.float32)

    def score(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return counts[items]

    return score


def evaluate(data_dir: str) -> dict[str, Any]:
    """Both protocols on ``valid`` and ``test`` of a playlists pipeline output.

    Raises:
      trainer.data.DataError: the output cannot be used (one line: what to run).
    """
    from trainer import playlists

    data = playlists.load_playlist_data(data_dir, model="playlist_popularity")
    score = popularity_scorer(data.train_items.item_counts)
    result: dict[str, Any] = {"model": "playlist_popularity", "data": data.data_dir,
                              "rule": "score = train members of the playlist; ties count against the model"}
    for split in playlists.EVAL_SPLITS:
        values, _ = playlists.evaluate_scores(score, data.evals[split], data.knn_candidates(split))
        result[split] = values
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m baselines.playlist_popularity",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a beam_pipelines.playlists output")
    parser.add_argument("--output", help="also write the metrics here as JSON (local or gs://)")
    args = parser.parse_args(argv)
    import trainer  # noqa: F401  (Keras 2 before TensorFlow)
    from trainer import data as data_lib
    from trainer import tasks

    try:
        result = evaluate(args.data)
    except data_lib.DataError as error:
        print(f"playlist_popularity: error: {error}", file=sys.stderr)
        return 2
    names = tasks.headline("playlist_ranking")
    for split in ("valid", "test"):
        shown = ", ".join(f"{n}={result[split][n]:.4f}" for n in names if n in result[split])
        print(f"playlist_popularity {split}: {shown or 'no examples'}")
    if args.output:
        import tensorflow as tf

        with tf.io.gfile.GFile(args.output, "w") as handle:
            handle.write(json.dumps(result, indent=2) + "\n")
        print(f"playlist_popularity: wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
