"""Implicit-feedback ranking: GMF, MLP, NeuMF (NCF) and BPR.

Inputs: each ``train/`` row is a positive; ``hparams.num_negatives`` negatives
per positive are drawn afresh every batch inside tf.data
(``trainer.ranking.make_negative_sampler``: never an item the user has in
training), with each positive's recency weight when ``hparams.recency_half_life``
is set (the user's train timestamps are then read too). The models own their
losses (TFRS Ranking task with binary cross-entropy for NCF, the pairwise
log-sigmoid loss for BPR).

Evaluation (``valid`` and ``test`` alike): each held-out positive against the
pipeline's fixed ``negative_item_index`` candidates (HR@K = hit@K, NDCG@K for K
= 1, 5, 10, MRR; ties count against the model), plus full-catalogue
``full_recall@K`` / ``full_ndcg@K`` with train items masked when the catalogue
is small enough to score densely.

Export: ``trainer.export.RankingServer`` (``score(user_id, item_id)``,
``recommend(user_id, k)`` never returning a train item; unknown users get the
most popular items with ``popular_fallback``).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from trainer import data, export, metrics, ranking
from trainer.tasks.base import Metric, Task, traced

FULL_RANKING_MAX_SCORES = 50_000_000  # users x items scored densely at most for the full-catalogue metrics


class RankingTask(Task):
    """Sampled and full ranking metrics on the movielens pipeline's leave-one-out (or NCF) output."""

    kind = "ranking"
    supports_refit = True
    schema = "ratings"
    pipeline = data.PIPELINES["ratings"]
    metrics = tuple(Metric(f"{m}@{k}", "max") for m in ("hr", "hit", "ndcg") for k in (1, 5, 10)) + (Metric("mrr", "max"),)
    default_monitor = "ndcg@10"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._module = self.spec.module()
        self.info = data.load_data_info(self.data_dir, self._module.REQUIRED_FEATURES, model=self.spec.name)
        self.dataset = data.Dataset(self.info.data_dir, self.info.summary)
        # The items each user has in what the model trains on: train, or train + valid after a refit
        # (sampling, full-ranking masks and recommend all exclude them).
        self.train_items = ranking.load_train_items(self.info, timestamps=self._timestamps)
        self._candidates: dict[str, ranking.EvalCandidates] = {}

    @property
    def data(self) -> data.DataInfo:
        return self.info

    def train_provider(self, per_replica_batch: int, splits: tuple[str, ...] = ("train",)) -> data.ShardedBatches:
        if tuple(splits) != ("train",):
            self.train_items = ranking.load_train_items(self.info, tuple(splits), timestamps=self._timestamps)
        # Batches hold positives only; the sampler adds fresh negatives to each.
        return data.ShardedBatches(
            self.info, splits, per_replica_batch, seed=self.train.seed, shuffle_buffer=self.train.shuffle_buffer,
            keys=ranking.TRAIN_KEYS,
            batch_map=ranking.make_negative_sampler(
                self.train_items, self.hparams.num_negatives, self.train.seed,
                recency_half_life=self.hparams.recency_half_life, recency_floor=self.hparams.recency_floor),
        )

    @property
    def _history_length(self) -> int:
        return getattr(self.hparams, "history_length", 0)

    @property
    def _timestamps(self) -> bool:
        return self.hparams.recency_half_life > 0 or self._history_length > 0

    def build_model(self, global_batch_size: int):
        model = self._module.build_model(self.hparams, self.info, global_batch_size)
        if self._history_length:
            # What the model trains on (train, or train + valid in a refit: train_provider ran first).
            model.set_user_history(*self.train_items.history(self._history_length, self.hparams.history_half_life))
        return model

    def warm_up(self, model) -> None:
        model(next(iter(data.local_dataset(self.info, "train", 2, keys=ranking.TRAIN_KEYS))))

    def candidates(self, split: str) -> ranking.EvalCandidates:
        """The split's fixed candidates (read once, kept for the per-epoch evaluation)."""
        if split not in self._candidates:
            self._candidates[split] = ranking.read_eval_candidates(self.info, split, self.train.eval_batch_size)
        return self._candidates[split]

    def evaluate(self, model, split: str) -> dict[str, Any]:
        """HR@K, NDCG@K, MRR on the split's fixed candidates, plus full-catalogue ranking (``{}``: no rows)."""
        candidates = self.candidates(split)
        if candidates.users.size == 0:
            return {}
        score = traced(model, "score", lambda: tf.function(lambda users, items: model.score(users, items)))
        rows_per_batch = max(1, self.train.eval_batch_size // candidates.items.shape[1])
        scores = []
        for start in range(0, candidates.users.size, rows_per_batch):
            users = candidates.users[start : start + rows_per_batch]
            items = candidates.items[start : start + rows_per_batch]
            flat_users = np.repeat(users, items.shape[1])
            scores.append(score(tf.constant(flat_users), tf.constant(items.reshape(-1))).numpy().reshape(items.shape))
        result = metrics.sampled_ranking_metrics(np.concatenate(scores), candidates.valid)
        result.update(self._full_ranking(model, candidates))
        return result

    def _full_ranking(self, model, candidates: ranking.EvalCandidates) -> dict[str, Any]:
        """Recall@K / NDCG@K of the positive against every item the user has not trained on."""
        info = self.info
        positives = candidates.items[:, 0]
        known = (candidates.users < info.num_users) & (positives < info.num_items)
        if not known.any() or int(known.sum()) * info.num_items > FULL_RANKING_MAX_SCORES:
            return {}
        users, positives = candidates.users[known], positives[known]
        score_all = traced(model, "score_all", lambda: tf.function(lambda u: model.score_all_items(u)))
        keys = tf.constant(self.train_items.keys)
        full_scores, exclude = [], []
        rows_per_batch = max(1, 2_000_000 // max(1, info.num_items))
        all_items = tf.range(info.num_items, dtype=tf.int64)[None, :]
        for start in range(0, users.size, rows_per_batch):
            batch_users = tf.constant(users[start : start + rows_per_batch])
            full_scores.append(score_all(batch_users).numpy())
            exclude.append(ranking.contains(keys, batch_users[:, None], all_items, info.num_items).numpy())
        exclude = np.concatenate(exclude)
        exclude[np.arange(users.size), positives] = False  # a re-rated train item stays the target
        result = metrics.full_ranking_metrics(np.concatenate(full_scores), positives, exclude)
        result["full_num_users"] = int(users.size)
        return result

    def export(self, model, export_dir: str) -> None:
        export.export_ranking_model(model, self.info, self.train_items, export_dir)
