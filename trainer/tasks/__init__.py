"""One task object per kind of problem (``trainer.tasks.base.Task``), found by the registry's ``ModelSpec.task``.

| kind | module | data (``dataset.json`` schema) | metrics |
| --- | --- | --- | --- |
| ``rating`` | ``rating`` | ``ratings`` (movielens pipeline) | rmse, mae |
| ``ranking`` | ``ranking`` | ``ratings`` with held-out positives + sampled negatives | hr@K, ndcg@K, mrr |
| ``graph_classification`` | ``graph_classification`` | ``lastfm`` (sampled subgraphs) | accuracy, macro_f1, gnn_accuracy, gnn_macro_f1 |
| ``graph_rating`` | ``graph_rating`` | ``ratings`` + its rating graph (``beam_pipelines.rating_graph``) | rmse, mae |
| ``playlist_ranking`` | ``playlist_ranking`` | ``playlists`` (memberships, 50 negatives, KNN candidates) | mrr, hit@K, ndcg@K, knn_* |

The table is resolved lazily: importing this package imports no TensorFlow.
"""
from __future__ import annotations

import importlib

TASKS = {
    "rating": "trainer.tasks.rating:RatingTask",
    "ranking": "trainer.tasks.ranking:RankingTask",
    "graph_classification": "trainer.tasks.graph_classification:GraphClassificationTask",
    "graph_rating": "trainer.tasks.graph_rating:GraphRatingTask",
    "playlist_ranking": "trainer.tasks.playlist_ranking:PlaylistRankingTask",
}


def task_class(kind: str):
    """The ``Task`` subclass of a registry ``task`` kind (imports its module)."""
    module, _, name = TASKS[kind].partition(":")
    return getattr(importlib.import_module(module), name)


# The metric names each kind may report (what tuning, sweeps and the leaderboard accept),
# without importing the task modules (TensorFlow): checked against the classes in tests.
METRICS = {
    "rating": {"rmse": "min", "mae": "min"},
    "ranking": {f"{m}@{k}": "max" for m in ("hr", "hit", "ndcg") for k in (1, 5, 10)} | {"mrr": "max"},
    # gnn_*: the GNN alone, before Correct and Smooth / prior correction (train.monitor: gnn_accuracy).
    "graph_classification": {"accuracy": "max", "macro_f1": "max", "gnn_accuracy": "max", "gnn_macro_f1": "max"},
    "graph_rating": {"rmse": "min", "mae": "min"},
    # 1 positive vs the 50 fixed negatives, and (knn_) over the user's KNN candidates: the served path.
    "playlist_ranking": {f"{p}{m}@{k}": "max" for p in ("", "knn_") for m in ("hr", "hit", "ndcg") for k in (1, 5, 10)}
    | {"mrr": "max", "knn_mrr": "max"},
}


# The metrics the trainer's console summary shows for a kind whose METRICS are too many for one
# line (every metric is in metrics.json); other kinds show all of theirs.
HEADLINE = {
    "playlist_ranking": ("mrr", "hit@1", "hit@5", "hit@10", "knn_mrr", "knn_hit@1", "knn_hit@5", "knn_hit@10"),
}


def headline(kind: str) -> tuple[str, ...]:
    """The metric names the trainer's console summary shows for a task kind."""
    return HEADLINE.get(kind) or tuple(METRICS[kind])
