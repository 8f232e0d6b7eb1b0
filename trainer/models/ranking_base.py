"""Shared pieces of the implicit-feedback ranking models (GMF, MLP, NeuMF, BPR).

A ranking model is a ``tfrs.models.Model`` that scores (user, item) index pairs
with a logit (``score``) and trains on batches of positives that
``trainer.ranking.make_negative_sampler`` extended with ``K`` fresh negatives:

* ``PointwiseRankingModel``: NCF's log loss (He et al., WWW 2017, eq. 7): label 1
  for the positive, 0 for each negative, owned by a ``tfrs.tasks.Ranking`` task
  with binary cross-entropy on logits;
* BPR (``trainer.models.bpr``) overrides ``compute_loss`` with the pairwise loss.

Losses are SUMs divided by the global number of scored examples, which keeps
gradients right when MultiWorkerMirroredStrategy sums them over replicas.
Unknown ids (the tf.Transform OOV index, equal to the vocabulary size) have their
embeddings masked to zero, as in MF: an unknown user or item gets a defined score.
"""
from __future__ import annotations

import tensorflow as tf
import tensorflow_recommenders as tfrs

from schemas import ratings as F
from trainer import ranking

REQUIRED_FEATURES = (F.USER_INDEX, F.ITEM_INDEX, F.NEGATIVE_ITEM_INDEX)


class MaskedEmbedding(tf.keras.layers.Layer):
    """An embedding table with one extra OOV row that always reads as zeros."""

    def __init__(self, vocab_size: int, dim: int, stddev: float, seed: int, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.embedding = tf.keras.layers.Embedding(
            vocab_size + 1, dim,
            embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=stddev, seed=seed),
            name="embeddings",
        )

    def call(self, indices):
        known = tf.cast(indices < self.vocab_size, tf.float32)[..., None]
        return self.embedding(indices) * known

    def table(self):
        """The ``[vocab_size, dim]`` rows of known ids."""
        return self.embedding.embeddings[: self.vocab_size]


class RankingModel(tfrs.models.Model):
    """Base: ``score(users, items)`` -> logits; ``call`` scores a feature dict."""

    def __init__(self, num_users: int, num_items: int, num_negatives: int, global_batch_size: int):
        super().__init__()
        self.num_users = num_users
        self.num_items = num_items
        self.num_negatives = num_negatives
        self.global_batch_size = global_batch_size

    def score(self, users: tf.Tensor, items: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def call(self, features, training: bool = False):
        return self.score(features[F.USER_INDEX], features[F.ITEM_INDEX])

    def score_all_items(self, users: tf.Tensor) -> tf.Tensor:
        """``[B]`` users -> ``[B, num_items]`` logits of every known item (generic: tiles the pairs)."""
        users = tf.cast(users, tf.int64)
        items = tf.range(self.num_items, dtype=tf.int64)
        batch = tf.shape(users)[0]
        grid_users = tf.reshape(tf.broadcast_to(users[:, None], [batch, self.num_items]), [-1])
        grid_items = tf.reshape(tf.broadcast_to(items[None, :], [batch, self.num_items]), [-1])
        return tf.reshape(self.score(grid_users, grid_items), [batch, self.num_items])

    def _positives_and_negatives(self, features):
        users = tf.cast(features[F.USER_INDEX], tf.int64)
        positives = tf.cast(features[F.ITEM_INDEX], tf.int64)
        negatives = tf.cast(features[ranking.SAMPLED_NEGATIVES], tf.int64)
        mask = tf.cast(features[ranking.SAMPLED_NEGATIVES_MASK], tf.float32)
        return users, positives, negatives, mask

    @staticmethod
    def _row_weights(features, positives):
        """``[B]`` each positive's recency weight (1 without ``SAMPLE_WEIGHT``)."""
        if ranking.SAMPLE_WEIGHT in features:
            return tf.cast(features[ranking.SAMPLE_WEIGHT], tf.float32)
        return tf.ones_like(positives, tf.float32)


class PointwiseRankingModel(RankingModel):
    """NCF training: binary cross-entropy on the positive (1) and its negatives (0)."""

    def __init__(self, *args, l2_embedding: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.l2_embedding = l2_embedding
        self.task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.BinaryCrossentropy(from_logits=True, reduction=tf.keras.losses.Reduction.SUM),
        )

    def embedding_penalty(self, users: tf.Tensor, items: tf.Tensor) -> tf.Tensor:
        """Sum of squared embedding rows the batch touched (0 unless a subclass has embeddings)."""
        return tf.constant(0.0)

    def compute_loss(self, features, training: bool = False):
        users, positives, negatives, mask = self._positives_and_negatives(features)
        k = tf.shape(negatives)[1]
        all_users = tf.concat([users, tf.reshape(tf.repeat(users[:, None], k, axis=1), [-1])], 0)
        all_items = tf.concat([positives, tf.reshape(negatives, [-1])], 0)
        labels = tf.concat([tf.ones_like(positives, tf.float32), tf.zeros_like(tf.reshape(mask, [-1]))], 0)
        rows = self._row_weights(features, positives)
        weights = tf.concat([rows, tf.reshape(mask * rows[:, None], [-1])], 0)
        logits = self.score(all_users, all_items)
        # [N, 1]: Keras' BCE averages over the last axis before the SUM reduction.
        loss = self.task(labels=labels[:, None], predictions=logits[:, None], sample_weight=weights[:, None], training=training)
        if self.l2_embedding:
            loss += self.l2_embedding * self.embedding_penalty(all_users, all_items)
        return loss / float(self.global_batch_size * (1 + self.num_negatives))
