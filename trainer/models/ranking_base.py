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

import numpy as np
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


class UserHistory(tf.keras.layers.Layer):
    """A user vector pooled from the user's latest train items (FISM, Kabbur et al., KDD 2013).

    ``pool(u, i) = sum_j w_uj h_j / sum_j w_uj`` over the user's history ``j != i``
    (``TrainItems.history``: the latest items, weights halving every ``half_life``
    later interactions), ``h`` an item table of its own. Leaving the scored item out
    makes a train positive look like a held-out one, which is never in the history.
    Pooled sums are computed once per distinct user of a batch, and the scored item's
    own weight is one ``searchsorted`` (``ranking._locate``), so scoring N pairs costs
    O(N) memory, not O(N x length).
    Until ``set_history`` every user's history is empty (the pool reads as zeros).
    """

    def __init__(self, num_users: int, num_items: int, dim: int, stddev: float, seed: int, **kwargs):
        super().__init__(**kwargs)
        self.num_items = num_items
        self.item_embedding = MaskedEmbedding(num_items, dim, stddev, seed, name="item_embedding")
        self.set_history(np.full((num_users + 1, 0), num_items, np.int64), np.zeros((num_users + 1, 0), np.float32))

    def set_history(self, items: np.ndarray, weights: np.ndarray) -> None:
        """``[num_users + 1, length]`` items (OOV-padded) and weights (0 on padding)."""
        self.items = tf.constant(items, tf.int64)
        self.weights_ = tf.constant(weights, tf.float32)
        users, slots = np.nonzero(weights > 0)
        keys = users * (self.num_items + 1) + items[users, slots]
        order = np.argsort(keys)
        self.keys = tf.constant(keys[order], tf.int64)
        self.key_weights = tf.constant(weights[users, slots][order], tf.float32)

    def call(self, users, items):
        users = tf.cast(users, tf.int64)
        items = tf.cast(items, tf.int64)
        distinct, which = tf.unique(users)
        weights = tf.gather(self.weights_, distinct)
        sums = tf.einsum("ul,uld->ud", weights, self.item_embedding(tf.gather(self.items, distinct)))
        sums, totals = tf.gather(sums, which), tf.gather(tf.reduce_sum(weights, -1), which)
        position, found = ranking._locate(self.keys, users, items, self.num_items)
        own = tf.where(found, tf.gather(self.key_weights, position), 0.0) if self.keys.shape[0] else tf.zeros_like(totals)
        rest = totals - own
        pooled = sums - own[:, None] * self.item_embedding(items)
        # Rounding can leave a tiny positive `rest` for a history of only the scored item.
        return tf.where((rest > 1e-6)[:, None], pooled / tf.maximum(rest, 1e-6)[:, None], 0.0)

    def penalty(self, items):
        return tf.reduce_sum(tf.square(self.item_embedding(items)))


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
