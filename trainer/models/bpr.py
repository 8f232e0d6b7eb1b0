"""Bayesian Personalized Ranking matrix factorization (Rendle et al., UAI 2009).

``s(u, i) = p_u . q_i + b_i`` trained on (user, positive, negative) triples with
the pairwise loss ``-log sigmoid(s(u, i) - s(u, j))``, ``K`` fresh negatives per
positive. The loss lives in ``compute_loss`` of a TFRS base model (TFRS has no
BPR task); L2 applies per occurrence to the rows a batch touches, as in the
paper's SGD updates.
"""
from __future__ import annotations


import tensorflow as tf

from trainer import hparams
from trainer.models import ranking_base
from trainer.models.ranking_base import REQUIRED_FEATURES  # noqa: F401  (registry reads it here)


Config = hparams.BPR  # hyperparameters and defaults: trainer/hparams.py (TF-free)


class BPR(ranking_base.RankingModel):
    def __init__(self, config: Config, num_users: int, num_items: int, global_batch_size: int):
        super().__init__(num_users, num_items, config.num_negatives, global_batch_size)
        self.config = config
        self.user_embedding = ranking_base.MaskedEmbedding(num_users, config.embedding_dim, config.init_stddev, config.seed, name="user_embedding")
        self.item_embedding = ranking_base.MaskedEmbedding(num_items, config.embedding_dim, config.init_stddev, config.seed + 1, name="item_embedding")
        self.item_bias = ranking_base.MaskedEmbedding(num_items, 1, 0.0, config.seed + 2, name="item_bias")

    def _bias(self, items):
        if not self.config.use_item_bias:
            return 0.0
        return tf.squeeze(self.item_bias(items), -1)

    def score(self, users, items):
        return tf.reduce_sum(self.user_embedding(users) * self.item_embedding(items), -1) + self._bias(items)

    def score_all_items(self, users):
        scores = tf.matmul(self.user_embedding(tf.cast(users, tf.int64)), self.item_embedding.table(), transpose_b=True)
        if self.config.use_item_bias:
            scores += tf.transpose(self.item_bias.table())
        return scores

    def compute_loss(self, features, training: bool = False):
        users, positives, negatives, mask = self._positives_and_negatives(features)
        p = self.user_embedding(users)  # [B, d]
        q_pos = self.item_embedding(positives)  # [B, d]
        q_neg = self.item_embedding(negatives)  # [B, K, d]
        positive_scores = tf.reduce_sum(p * q_pos, -1) + self._bias(positives)
        negative_scores = tf.einsum("bd,bkd->bk", p, q_neg) + self._bias(negatives)
        rows = self._row_weights(features, positives)
        pair_losses = -tf.math.log_sigmoid(positive_scores[:, None] - negative_scores) * mask * rows[:, None]
        loss = tf.reduce_sum(pair_losses)
        if self.config.l2_embedding:
            # Each pair touches p_u, q_i and q_j once.
            k = float(self.num_negatives)
            loss += self.config.l2_embedding * (
                k * tf.reduce_sum(tf.square(p)) + k * tf.reduce_sum(tf.square(q_pos))
                + tf.reduce_sum(tf.square(q_neg) * mask[..., None])
            )
        return loss / float(self.global_batch_size * self.num_negatives)


def build_model(config: Config, info, global_batch_size: int) -> BPR:
    return BPR(config, info.num_users, info.num_items, global_batch_size)
