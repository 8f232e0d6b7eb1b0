"""The users' current playlist ranker: id-only BPR (Rendle et al., UAI 2009), and the base of every playlist ranker.

``s(u, p) = e_u . e_p`` with user and playlist id embeddings (128 each, no
bias), trained on (user, positive playlist, K fresh negatives) with the
pairwise loss ``-log sigmoid(s(u, p) - s(u, n))`` (K = 4, batch 16384, Adam at
0.005, 5 epochs: ``configs/playlists_bpr.yaml``). TFRS has no pairwise task,
so the loss lives in ``compute_loss`` of a ``tfrs.models.Model``, as in
``trainer.models.bpr``.

What it cannot do: a playlist with no train interaction (often a held-out
playlist whose only member is its owner) keeps the embedding that its
initialisation and negative sampling gave it, i.e. it is pushed *away* from
users; ``trainer.models.playlist_tracks_bpr`` scores such playlists from their
tracks.

``PlaylistRanker`` is what the playlist task, evaluation and serving rely on:
``user_vectors`` and ``playlist_vectors`` (any shape of indices, OOV index ->
a defined vector), ``score`` as their dot product, and the shared loss.
"""
from __future__ import annotations

import tensorflow as tf
import tensorflow_recommenders as tfrs

from schemas import playlists as S
from trainer import hparams, ranking
from trainer.models.ranking_base import MaskedEmbedding

Config = hparams.PlaylistBPR  # hyperparameters and defaults: trainer/hparams.py (TF-free)


class PlaylistRanker(tfrs.models.Model):
    """Base: dot product of a user vector and a playlist vector, BPR loss over sampled negatives.

    Subclasses define ``user_vectors(users [B]) -> [B, d]`` and
    ``_playlist_vectors(playlists [N]) -> [N, d]``.
    """

    def __init__(self, num_users: int, num_playlists: int, num_negatives: int, global_batch_size: int,
                 l2_embedding: float):
        super().__init__()
        self.num_users = num_users
        self.num_playlists = num_playlists
        self.num_negatives = num_negatives
        self.global_batch_size = global_batch_size
        self.l2_embedding = l2_embedding

    def user_vectors(self, users: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def _playlist_vectors(self, playlists: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def playlist_vectors(self, playlists: tf.Tensor) -> tf.Tensor:
        """Playlist indices of any shape ``[...]`` -> ``[..., d]``."""
        playlists = tf.cast(playlists, tf.int64)
        flat = self._playlist_vectors(tf.reshape(playlists, [-1]))
        return tf.reshape(flat, tf.concat([tf.shape(playlists), tf.shape(flat)[-1:]], 0))

    def score(self, users: tf.Tensor, playlists: tf.Tensor) -> tf.Tensor:
        """``users [B]`` with ``playlists [B]`` -> ``[B]``, or with ``[B, C]`` -> ``[B, C]`` (dot products)."""
        u = self.user_vectors(tf.cast(users, tf.int64))
        p = self.playlist_vectors(playlists)
        if p.shape.rank == 3:
            return tf.einsum("bd,bcd->bc", u, p)
        return tf.reduce_sum(u * p, -1)

    def call(self, features, training: bool = False):
        return self.score(features[S.USER_INDEX], features[S.PLAYLIST_INDEX])

    def compute_loss(self, features, training: bool = False):
        users = tf.cast(features[S.USER_INDEX], tf.int64)
        positives = tf.cast(features[S.PLAYLIST_INDEX], tf.int64)
        negatives = tf.cast(features[ranking.SAMPLED_NEGATIVES], tf.int64)
        mask = tf.cast(features[ranking.SAMPLED_NEGATIVES_MASK], tf.float32)
        u = self.user_vectors(users)  # [B, d]
        # One pass over positives and negatives: a content model gathers their tracks once.
        both = self.playlist_vectors(tf.concat([positives[:, None], negatives], 1))  # [B, 1 + K, d]
        q_pos, q_neg = both[:, 0], both[:, 1:]
        positive_scores = tf.reduce_sum(u * q_pos, -1)
        negative_scores = tf.einsum("bd,bkd->bk", u, q_neg)
        loss = tf.reduce_sum(-tf.math.log_sigmoid(positive_scores[:, None] - negative_scores) * mask)
        if self.l2_embedding:
            # Per occurrence: each of the K pairs touches u, q_pos and its q_neg once.
            k = float(self.num_negatives)
            loss += self.l2_embedding * (k * tf.reduce_sum(tf.square(u)) + k * tf.reduce_sum(tf.square(q_pos))
                                         + tf.reduce_sum(tf.square(q_neg) * mask[..., None]))
        # SUM / global count: right under MultiWorkerMirroredStrategy, which sums replica gradients.
        return loss / float(self.global_batch_size * self.num_negatives)


class PlaylistBPR(PlaylistRanker):
    """Id-only BPR: one embedding per user and per playlist."""

    def __init__(self, config: Config, num_users: int, num_playlists: int, global_batch_size: int):
        super().__init__(num_users, num_playlists, config.num_negatives, global_batch_size, config.l2_embedding)
        self.config = config
        self.user_embedding = MaskedEmbedding(num_users, config.embedding_dim, config.init_stddev, config.seed,
                                              name="user_embedding")
        self.playlist_embedding = MaskedEmbedding(num_playlists, config.embedding_dim, config.init_stddev,
                                                  config.seed + 1, name="playlist_embedding")

    def user_vectors(self, users):
        return self.user_embedding(users)

    def _playlist_vectors(self, playlists):
        return self.playlist_embedding(playlists)


def build_model(config: Config, data, global_batch_size: int) -> PlaylistBPR:
    """The id-only BPR for ``data`` (a ``trainer.playlists.PlaylistData``)."""
    return PlaylistBPR(config, data.num_users, data.num_playlists, global_batch_size)
