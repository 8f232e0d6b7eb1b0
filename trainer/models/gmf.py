"""Generalized Matrix Factorization (He et al., "Neural Collaborative Filtering", WWW 2017, sec. 3.2).

``logit(u, i) = h . (p_u * q_i) + b``: the element-wise product of the user and
item embeddings, weighted by a learned output layer. Trained pointwise with
binary cross-entropy on each positive and its fresh sampled negatives.
"""
from __future__ import annotations


import tensorflow as tf

from trainer import hparams
from trainer.models import ranking_base
from trainer.models.ranking_base import REQUIRED_FEATURES  # noqa: F401  (registry reads it here)


Config = hparams.GMF  # hyperparameters and defaults: trainer/hparams.py (TF-free)


class GMFTower(tf.keras.layers.Layer):
    """(users, items) -> ``p_u * q_i``; shared with NeuMF."""

    def __init__(self, num_users: int, num_items: int, dim: int, stddev: float, seed: int, **kwargs):
        super().__init__(**kwargs)
        self.user_embedding = ranking_base.MaskedEmbedding(num_users, dim, stddev, seed, name="user_embedding")
        self.item_embedding = ranking_base.MaskedEmbedding(num_items, dim, stddev, seed + 1, name="item_embedding")

    def call(self, users, items, user_offset=None):
        """``user_offset``: added to the user embedding (NeuMF's pooled history)."""
        user = self.user_embedding(users)
        return (user if user_offset is None else user + user_offset) * self.item_embedding(items)

    def penalty(self, users, items):
        return tf.reduce_sum(tf.square(self.user_embedding(users))) + tf.reduce_sum(tf.square(self.item_embedding(items)))


class GMF(ranking_base.PointwiseRankingModel):
    def __init__(self, config: Config, num_users: int, num_items: int, global_batch_size: int):
        super().__init__(num_users, num_items, config.num_negatives, global_batch_size, l2_embedding=config.l2_embedding)
        self.config = config
        self.tower = GMFTower(num_users, num_items, config.embedding_dim, config.init_stddev, config.seed, name="gmf")
        self.prediction = tf.keras.layers.Dense(1, kernel_initializer="lecun_uniform", name="prediction")

    def score(self, users, items):
        return tf.squeeze(self.prediction(self.tower(users, items)), -1)

    def embedding_penalty(self, users, items):
        return self.tower.penalty(users, items)

    def score_all_items(self, users):
        # (p_u * h) @ Q^T + b: one matmul instead of scoring every pair.
        kernel, bias = self.prediction.kernel, self.prediction.bias
        user_vectors = self.tower.user_embedding(tf.cast(users, tf.int64)) * tf.transpose(kernel)
        return tf.matmul(user_vectors, self.tower.item_embedding.table(), transpose_b=True) + bias


def build_model(config: Config, info, global_batch_size: int) -> GMF:
    return GMF(config, info.num_users, info.num_items, global_batch_size)
