"""Biased matrix factorization for explicit ratings (Koren, Bell & Volinsky 2009).

``r_hat(u, i) = mu + b_u + b_i + p_u . q_i``, with ``mu`` starting at the
train-side mean that tf.Transform computed, and L2 on the parameters a batch
touches (per occurrence, as in the SGD formulation of the paper) rather than on
whole tables every step: frequent users and items are regularized more, which is
what makes MF work on sparse rating matrices.

Unknown ids (the tf.Transform OOV index, equal to the vocabulary size) get a
defined answer: their embedding and bias are treated as zero, so an unknown user
is scored ``mu + b_i`` and an unknown pair ``mu``. Predictions outside training
are clipped to the observed rating range.
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf
import tensorflow_recommenders as tfrs

from schemas import ratings as F
from trainer import hparams

REQUIRED_FEATURES = (F.USER_INDEX, F.ITEM_INDEX, F.RATING)


Config = hparams.MF  # hyperparameters and defaults: trainer/hparams.py (TF-free)


class MatrixFactorization(tfrs.models.Model):
    """MF with biases; the ranking Task owns the MSE loss and RMSE/MAE metrics."""

    def __init__(
        self,
        config: Config,
        num_users: int,
        num_items: int,
        rating_mean: float,
        rating_range: tuple[float, float],
        global_batch_size: int,
        user_counts=None,
        item_counts=None,
    ):
        super().__init__()
        self.config = config
        self.num_users = num_users
        self.num_items = num_items
        self.rating_range = rating_range
        self.global_batch_size = global_batch_size
        init = tf.keras.initializers.RandomNormal(stddev=config.init_stddev, seed=config.seed)
        # One extra row per table: the OOV index (masked to zero in call()).
        self.user_embedding = tf.keras.layers.Embedding(num_users + 1, config.embedding_dim, embeddings_initializer=init, name="user_embedding")
        self.item_embedding = tf.keras.layers.Embedding(
            num_items + 1, config.embedding_dim,
            embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=config.init_stddev, seed=config.seed + 1),
            name="item_embedding",
        )
        self.user_bias = tf.keras.layers.Embedding(num_users + 1, 1, embeddings_initializer="zeros", name="user_bias")
        self.item_bias = tf.keras.layers.Embedding(num_items + 1, 1, embeddings_initializer="zeros", name="item_bias")
        self.global_bias = tf.Variable(rating_mean, dtype=tf.float32, name="global_bias")
        self.user_reg_weight = self._occurrence_weights(user_counts, num_users, "user_reg_weight")
        self.item_reg_weight = self._occurrence_weights(item_counts, num_items, "item_reg_weight")
        self.task = tfrs.tasks.Ranking(
            # SUM, divided by the global batch in compute_loss: correct gradients
            # when MultiWorkerMirroredStrategy sums them across replicas.
            loss=tf.keras.losses.MeanSquaredError(reduction=tf.keras.losses.Reduction.SUM),
            metrics=[tf.keras.metrics.RootMeanSquaredError(name="rmse"), tf.keras.metrics.MeanAbsoluteError(name="mae")],
        )

    def _occurrence_weights(self, counts, size: int, name: str) -> tf.Variable:
        """Per-occurrence L2 weight n^(exponent - 1), normalized to mean 1 over occurrences."""
        import numpy as np

        exponent = self.config.frequency_exponent
        counts = np.ones(size + 1) if counts is None else np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
        weights = counts ** (exponent - 1.0)
        weights /= np.sum(weights * counts) / np.sum(counts)
        return tf.Variable(weights.astype(np.float32), trainable=False, name=name)

    def get_config(self):
        return {
            "config": dataclasses.asdict(self.config),
            "num_users": self.num_users,
            "num_items": self.num_items,
            "rating_range": list(self.rating_range),
            "global_batch_size": self.global_batch_size,
        }

    def _factors(self, features):
        users = features[F.USER_INDEX]
        items = features[F.ITEM_INDEX]
        known_user = tf.cast(users < self.num_users, tf.float32)[:, None]
        known_item = tf.cast(items < self.num_items, tf.float32)[:, None]
        p = self.user_embedding(users) * known_user
        q = self.item_embedding(items) * known_item
        b_u = tf.squeeze(self.user_bias(users) * known_user, -1)
        b_i = tf.squeeze(self.item_bias(items) * known_item, -1)
        return p, q, b_u, b_i

    def _predict(self, p, q, b_u, b_i, training: bool):
        prediction = self.global_bias + b_u + b_i + tf.reduce_sum(p * q, axis=-1)
        if not training and self.config.clip_predictions:
            prediction = tf.clip_by_value(prediction, *self.rating_range)
        return prediction

    def call(self, features, training: bool = False):
        return self._predict(*self._factors(features), training=training)

    def compute_loss(self, features, training: bool = False):
        p, q, b_u, b_i = self._factors(features)
        prediction = self._predict(p, q, b_u, b_i, training=training)
        # [batch, 1]: Keras' MSE averages over the last axis, so 1-D inputs would
        # collapse to one number before the SUM reduction.
        loss = self.task(labels=features[F.RATING][:, None], predictions=prediction[:, None], training=training)
        w_u = tf.gather(self.user_reg_weight, features[F.USER_INDEX])
        w_i = tf.gather(self.item_reg_weight, features[F.ITEM_INDEX])
        penalty = self.config.l2_embedding * (
            tf.reduce_sum(w_u * tf.reduce_sum(p * p, -1)) + tf.reduce_sum(w_i * tf.reduce_sum(q * q, -1))
        ) + self.config.l2_bias * (tf.reduce_sum(w_u * b_u * b_u) + tf.reduce_sum(w_i * b_i * b_i))
        if not training:  # evaluation: the plain mean squared error of this batch
            return loss / tf.cast(tf.shape(prediction)[0], tf.float32)
        return (loss + penalty) / self.global_batch_size


def train_counts(info) -> tuple:
    """Train-side rating counts per user index and per item index (one pass over train/)."""
    import numpy as np

    from trainer import data

    users = np.zeros(info.num_users + 1, np.int64)
    items = np.zeros(info.num_items + 1, np.int64)
    for batch in data.local_dataset(info, "train", 65536, keys=(F.USER_INDEX, F.ITEM_INDEX)):
        users += np.bincount(batch[F.USER_INDEX].numpy(), minlength=info.num_users + 1)[: info.num_users + 1]
        items += np.bincount(batch[F.ITEM_INDEX].numpy(), minlength=info.num_items + 1)[: info.num_items + 1]
    return users, items


def build_model(config: Config, info, global_batch_size: int) -> MatrixFactorization:
    user_counts, item_counts = train_counts(info) if config.frequency_exponent != 1.0 else (None, None)
    return MatrixFactorization(
        config,
        num_users=info.num_users,
        num_items=info.num_items,
        rating_mean=info.rating_mean,
        rating_range=(info.rating_min, info.rating_max),
        global_batch_size=global_batch_size,
        user_counts=user_counts,
        item_counts=item_counts,
    )
