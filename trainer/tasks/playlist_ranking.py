"""Playlist ranking: which playlists a user adds to their collection (``beam_pipelines.playlists`` output).

Inputs: each ``train/`` membership (user, playlist) is a positive;
``hparams.num_negatives`` negatives per positive are drawn afresh in every
batch inside tf.data, uniformly over all playlists and never one of the user's
*train* collection (``trainer.ranking.make_negative_sampler``: the playlist is
its item; held-out playlists are unknown to training, so they may be drawn,
as any unseen playlist may). The memberships are read once and permuted with
``train.seed`` before the shuffle buffer (the pipeline's shards are sorted, not
shuffled). Models own their loss (BPR's pairwise log-sigmoid:
``trainer.models.playlist_bpr``).

Evaluation (``valid`` and ``test`` alike; ``trainer.playlists``): each
held-out positive against the pipeline's 50 fixed negatives (``mrr``,
``hit@K`` = ``hr@K``, ``ndcg@K``, K = 1, 5, 10), and the production path
``knn_*``: the same metrics when the user's KNN candidates are what is ranked,
a positive outside the candidates counting as a miss (``knn_in_*``: over the
examples whose positive is a candidate; ``knn_candidate_recall``: their share).
Both score every user and playlist vector once (``vector_tables``), exact.

Export: ``trainer.playlist_serving`` (``recommend(user_id)`` -> the top 5 raw
playlist ids among the user's candidates, never one of the user's playlists;
popular playlists with ``popular_fallback`` for an unknown user). Plots: the
positive's rank in both protocols.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from schemas import playlists as S
from schemas import ratings as R
from trainer import data, playlist_serving, playlists, plots, ranking
from trainer.tasks.base import Metric, Task, traced

SCORE_ROWS = 2048  # eval users scored per NumPy block ([rows, candidates, d] floats at once)
VECTOR_CHUNK = 65536  # users or playlists per call when building the vector tables

METRIC_NAMES = tuple(f"{prefix}{m}@{k}" for prefix in ("", "knn_") for m in ("hr", "hit", "ndcg") for k in playlists.KS)
METRIC_NAMES += ("mrr", "knn_mrr")


class MembershipBatches:
    """A ``runner.DatasetProvider`` of shuffled train memberships with fresh negatives, one part per input pipeline."""

    def __init__(self, users: np.ndarray, playlists_: np.ndarray, per_replica_batch: int, *, seed: int,
                 shuffle_buffer: int, batch_map):
        order = np.random.default_rng(seed).permutation(len(users))
        self._users, self._playlists = users[order], playlists_[order]
        self._batch, self._seed, self._buffer, self._batch_map = per_replica_batch, seed, shuffle_buffer, batch_map

    def get_dataset(self, context: tf.distribute.InputContext) -> tf.data.Dataset:
        dataset = tf.data.Dataset.from_tensor_slices({S.USER_INDEX: self._users, S.PLAYLIST_INDEX: self._playlists})
        # Each input pipeline (worker) keeps every N-th membership: disjoint parts, any shard count.
        dataset = dataset.shard(context.num_input_pipelines, context.input_pipeline_id)
        dataset = dataset.shuffle(self._buffer, seed=self._seed, reshuffle_each_iteration=True)
        # Repeat before batching: every step is a full batch (one pass is steps_per_epoch of them, the
        # last running into the next pass), so each step's loss is over the same number of pairs.
        dataset = dataset.repeat().batch(self._batch).map(self._batch_map, num_parallel_calls=tf.data.AUTOTUNE)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def playlist_negative_sampler(train_items: ranking.TrainItems, num_negatives: int, seed: int):
    """``trainer.ranking.make_negative_sampler`` on playlist batches (the playlist is the sampler's item).

    Returns:
      A ``Dataset.map`` function: ``{user_index, playlist_index}`` -> plus
      ``ranking.SAMPLED_NEGATIVES`` ``[B, K]`` and ``ranking.SAMPLED_NEGATIVES_MASK``.
    """
    sample = ranking.make_negative_sampler(train_items, num_negatives, seed)

    def add_negatives(features):
        drawn = sample({R.USER_INDEX: features[S.USER_INDEX], R.ITEM_INDEX: features[S.PLAYLIST_INDEX]})
        return {**features, ranking.SAMPLED_NEGATIVES: drawn[ranking.SAMPLED_NEGATIVES],
                ranking.SAMPLED_NEGATIVES_MASK: drawn[ranking.SAMPLED_NEGATIVES_MASK]}

    return add_negatives


def vector_tables(model) -> tuple[np.ndarray, np.ndarray]:
    """``(users [num_users, d], playlists [num_playlists, d])`` of a ``PlaylistRanker``: every vector once."""
    user_fn = traced(model, "user_vectors", lambda: tf.function(lambda ids: model.user_vectors(ids)))
    playlist_fn = traced(model, "playlist_vectors", lambda: tf.function(lambda ids: model.playlist_vectors(ids)))

    def table(fn, n: int) -> np.ndarray:
        return np.concatenate([fn(tf.range(start, min(start + VECTOR_CHUNK, n), dtype=tf.int64)).numpy()
                               for start in range(0, n, VECTOR_CHUNK)])

    return table(user_fn, model.num_users), table(playlist_fn, model.num_playlists)


def dot_scorer(user_table: np.ndarray, playlist_table: np.ndarray):
    """``(users [U], items [U, C]) -> [U, C]`` dot products from the tables, in blocks of ``SCORE_ROWS`` users."""

    def score(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        out = np.empty(items.shape, np.float32)
        for start in range(0, len(users), SCORE_ROWS):
            block = slice(start, start + SCORE_ROWS)
            out[block] = np.einsum("ud,ucd->uc", user_table[users[block]], playlist_table[items[block]])
        return out

    return score


def rank_histograms(ranks: dict[str, dict[str, np.ndarray]], path: str, title: str) -> str:
    """PNG: the positive's 0-based rank, per split, among its 50 negatives and among the KNN candidates.

    Args:
      ranks: split -> ``{"sampled": ranks, "knn": ranks (-1: not a candidate)}``.
      path: output PNG (local or gs://).
      title: figure title.
    """
    plt = plots._figure()  # the trainer's headless matplotlib and gs://-safe writer (trainer.plots)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for split, values in ranks.items():
        sampled = values["sampled"]
        axes[0].hist(sampled, bins=np.arange(sampled.max(initial=0) + 2) - 0.5, alpha=0.55,
                     label=f"{split} (n={sampled.size}, MRR {np.mean(1.0 / (sampled + 1)):.3f})")
        knn = values["knn"]
        inside = knn[knn >= 0]
        axes[1].hist(inside, bins=np.arange(inside.max(initial=0) + 2) - 0.5, alpha=0.55,
                     label=f"{split}: {inside.size} of {knn.size} positives are candidates")
    axes[0].set_title("rank of the positive among 1 + 50 fixed negatives")
    axes[1].set_title("rank among the KNN candidates (when it is one)")
    for axis in axes:
        axis.set_xlabel("rank (0 = first)")
        axis.set_ylabel("examples")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return plots._save(fig, plt, path)


class PlaylistRankingTask(Task):
    """Ranks playlists for users: 1 positive vs 50 fixed negatives, and the KNN candidates of the served system."""

    kind = "playlist_ranking"
    schema = "playlists"
    pipeline = data.PIPELINES["playlists"]
    metrics = tuple(Metric(name, "max") for name in METRIC_NAMES)
    default_monitor = "mrr"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._module = self.spec.module()
        self.playlist_data = playlists.load_playlist_data(self.data_dir, model=self.spec.name)
        self.dataset = self.playlist_data.dataset
        self._knn = {split: self.playlist_data.knn_candidates(split) for split in playlists.EVAL_SPLITS}
        self._ranks: dict[str, dict[str, np.ndarray]] = {}

    @property
    def data(self) -> playlists.PlaylistData:
        return self.playlist_data

    def train_provider(self, per_replica_batch: int, splits: tuple[str, ...] = ("train",)) -> MembershipBatches:
        d = self.playlist_data
        return MembershipBatches(d.train_users, d.train_playlists, per_replica_batch, seed=self.train.seed,
                                 shuffle_buffer=self.train.shuffle_buffer,
                                 batch_map=playlist_negative_sampler(d.train_items, self.hparams.num_negatives,
                                                                     self.train.seed))

    def build_model(self, global_batch_size: int):
        return self._module.build_model(self.hparams, self.playlist_data, global_batch_size)

    def warm_up(self, model) -> None:
        d = self.playlist_data
        batch = playlist_negative_sampler(d.train_items, self.hparams.num_negatives, self.train.seed)(
            {S.USER_INDEX: tf.constant(d.train_users[:2]), S.PLAYLIST_INDEX: tf.constant(d.train_playlists[:2])})
        model(batch)

    def evaluate(self, model, split: str) -> dict[str, Any]:
        """Both protocols on ``split`` (``{}`` when it has no examples); see the module docstring."""
        rows = self.playlist_data.evals[split]
        if rows.size == 0:
            return {}
        result, ranks = playlists.evaluate_scores(dot_scorer(*vector_tables(model)), rows, self._knn[split])
        self._ranks[split] = ranks  # the last evaluation of each split (the kept model's) feeds the plot
        return result

    def export(self, model, export_dir: str) -> None:
        playlist_serving.export_playlist_model(model, self.playlist_data, export_dir)

    def plots(self, model, plots_dir: str, result: dict[str, Any]) -> list[str]:
        if not self._ranks:
            return []
        path = f"{plots_dir}/positive_rank.png"
        return [rank_histograms(self._ranks, path, f"{self.spec.name}: where the held-out playlist ranks")]
