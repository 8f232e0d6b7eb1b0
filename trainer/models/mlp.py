"""NCF's Multi-Layer Perceptron (He et al., "Neural Collaborative Filtering", WWW 2017, sec. 3.3).

User and item embeddings (each half of ``layers[0]``) are concatenated and passed
through a ReLU tower (the paper's 64-32-16-8 on MovieLens) and a logit layer.
Trained pointwise with binary cross-entropy on each positive and its negatives.
"""
from __future__ import annotations


import tensorflow as tf

from trainer import hparams
from trainer.models import ranking_base
from trainer.models.ranking_base import REQUIRED_FEATURES  # noqa: F401  (registry reads it here)


Config = hparams.MLP  # hyperparameters and defaults: trainer/hparams.py (TF-free)


class MLPTower(tf.keras.layers.Layer):
    """(users, items) -> the last hidden layer of the ReLU tower; shared with NeuMF."""

    def __init__(self, num_users: int, num_items: int, layers, stddev: float, seed: int, **kwargs):
        super().__init__(**kwargs)
        half = layers[0] // 2
        self.user_embedding = ranking_base.MaskedEmbedding(num_users, half, stddev, seed + 2, name="user_embedding")
        self.item_embedding = ranking_base.MaskedEmbedding(num_items, half, stddev, seed + 3, name="item_embedding")
        self.hidden = [
            tf.keras.layers.Dense(width, activation="relu", kernel_initializer=tf.keras.initializers.GlorotUniform(seed=seed + 10 + n), name=f"hidden_{n}")
            for n, width in enumerate(layers[1:])
        ]

    def call(self, users, items, user_offset=None):
        """``user_offset``: added to the user embedding (NeuMF's pooled history)."""
        user = self.user_embedding(users)
        vector = tf.concat([user if user_offset is None else user + user_offset, self.item_embedding(items)], -1)
        for layer in self.hidden:
            vector = layer(vector)
        return vector

    def penalty(self, users, items):
        return tf.reduce_sum(tf.square(self.user_embedding(users))) + tf.reduce_sum(tf.square(self.item_embedding(items)))


class MLP(ranking_base.PointwiseRankingModel):
    def __init__(self, config: Config, num_users: int, num_items: int, global_batch_size: int):
        super().__init__(num_users, num_items, config.num_negatives, global_batch_size, l2_embedding=config.l2_embedding)
        self.config = config
        self.tower = MLPTower(num_users, num_items, config.layers, config.init_stddev, config.seed, name="mlp")
        self.prediction = tf.keras.layers.Dense(1, kernel_initializer="lecun_uniform", name="prediction")

    def score(self, users, items):
        return tf.squeeze(self.prediction(self.tower(users, items)), -1)

    def embedding_penalty(self, users, items):
        return self.tower.penalty(users, items)


def build_model(config: Config, info, global_batch_size: int) -> MLP:
    return MLP(config, info.num_users, info.num_items, global_batch_size)
