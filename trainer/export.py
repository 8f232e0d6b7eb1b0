"""SavedModel export: serving signatures that take RAW ids.

The tf.Transform layer (vocabularies computed by the pipeline) is inside the
SavedModel, so clients send the same ids that are in the raw files and there is
no training/serving skew. An id the pipeline never saw maps to the OOV index and
gets the model's defined fallback; the outputs say which ids were known.
"""
from __future__ import annotations

import os

import tensorflow as tf

from schemas import ratings as F

# ``recommend`` scores every known item for each user: a batch of B users costs
# B x num_items scores (and, for MLP/NeuMF, hidden activations per pair). It runs
# in steps of at most this many scores, so a request of 100k users has the memory
# of one step (16 MB of float32 scores) instead of growing with the batch (100k
# users x ML-1M's 3.7k items at once: 1.5 GB of scores alone).
RECOMMEND_SCORES_PER_STEP = 1 << 22


class RatingServer(tf.Module):
    """``serving_default`` / ``score``: (user_id, item_id) strings -> predicted rating."""

    def __init__(self, model: tf.keras.Model, transform_output, num_users: int, num_items: int):
        super().__init__()
        self.model = model
        self.tft_layer = transform_output.transform_features_layer()
        self.num_users = num_users
        self.num_items = num_items

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, name=F.USER_ID),
            tf.TensorSpec([None], tf.string, name=F.ITEM_ID),
        ]
    )
    def score(self, user_id, item_id):
        transformed = self.tft_layer({F.USER_ID: user_id, F.ITEM_ID: item_id})
        users = transformed[F.USER_INDEX]
        items = transformed[F.ITEM_INDEX]
        rating = self.model({F.USER_INDEX: users, F.ITEM_INDEX: items}, training=False)
        return {"rating": rating, "known_user": users < self.num_users, "known_item": items < self.num_items}


def _replace(export_dir: str) -> str:
    """Clears an earlier export at ``export_dir`` (a rerun replaces it) and returns the path."""
    if tf.io.gfile.exists(export_dir):
        tf.io.gfile.rmtree(export_dir)
    return export_dir


def export_rating_model(model, info, export_dir: str) -> None:
    """Writes the rating SavedModel (``serving_default`` = ``score``) to ``export_dir``.

    Under MultiWorkerMirroredStrategy every worker must call this (saving runs
    collectives); the experiment gives non-lead workers a temporary directory.
    """
    server = RatingServer(model, info.transform_output(), info.num_users, info.num_items)
    tf.saved_model.save(server, _replace(export_dir), signatures={"serving_default": server.score, "score": server.score})


class RankingServer(tf.Module):
    """Ranking signatures on raw ids.

    * ``score(user_id, item_id)`` -> ``score`` (logit; higher ranks first),
      ``known_user``, ``known_item``.
    * ``recommend(user_id, k)`` -> the top-``k`` RAW ``item_id``s and their
      ``score``s per user, never an item the user has in training. An unknown
      user gets the ``k`` most popular train items (``score`` = train count) and
      ``popular_fallback`` True.

    Every known item is scored (``model.score_all_items``) then ``tf.math.top_k``:
    exact, and fine for catalogues of ~10^5 items; NCF's MLP scores are not dot
    products, so a dot-product index (TFRS BruteForce / ScaNN) does not apply to
    every model here.
    """

    def __init__(self, model: tf.keras.Model, transform_output, train_items):
        super().__init__()
        self.model = model
        self.tft_layer = transform_output.transform_features_layer()
        self.num_users = train_items.num_users
        self.num_items = train_items.num_items
        vocabulary = transform_output.vocabulary_by_name(F.ITEM_VOCAB)
        self.item_ids = tf.constant([v if isinstance(v, bytes) else str(v).encode() for v in vocabulary][: self.num_items], tf.string)
        self.train_keys = tf.constant(train_items.keys, tf.int64)
        popular = train_items.popular_items()
        self.popular_items = tf.constant(popular, tf.int64)
        self.popular_scores = tf.constant(train_items.item_counts[popular].astype("float32"))
        self.users_per_step = max(1, RECOMMEND_SCORES_PER_STEP // max(1, self.num_items))

    def _indices(self, user_id, item_id=None):
        item_id = tf.zeros_like(user_id) if item_id is None else item_id
        transformed = self.tft_layer({F.USER_ID: user_id, F.ITEM_ID: item_id})
        return transformed[F.USER_INDEX], transformed[F.ITEM_INDEX]

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, name=F.USER_ID),
            tf.TensorSpec([None], tf.string, name=F.ITEM_ID),
        ]
    )
    def score(self, user_id, item_id):
        users, items = self._indices(user_id, item_id)
        scores = self.model.score(users, items)
        return {"score": scores, "known_user": users < self.num_users, "known_item": items < self.num_items}

    @tf.function(
        input_signature=[tf.TensorSpec([None], tf.string, name=F.USER_ID), tf.TensorSpec([], tf.int32, name="k")]
    )
    def recommend(self, user_id, k):
        from trainer import ranking

        users, _ = self._indices(user_id)
        k = tf.minimum(tf.maximum(k, 1), self.num_items)
        known_user = users < self.num_users
        safe_users = tf.where(known_user, users, tf.zeros_like(users))
        batch = tf.shape(users)[0]
        # Steps of users (see RECOMMEND_SCORES_PER_STEP); at least one step, so an
        # empty batch needs no special case (its padding user is sliced off).
        step = tf.maximum(1, tf.minimum(self.users_per_step, batch))
        steps = tf.maximum(1, (batch + step - 1) // step)
        blocks = tf.reshape(tf.pad(safe_users, [[0, steps * step - batch]]), [steps, step])

        def top_k_unowned(block):
            scores = self.model.score_all_items(block)
            owned = ranking.contains(self.train_keys, block[:, None], tf.range(self.num_items, dtype=tf.int64)[None, :],
                                     self.num_items)
            values, indices = tf.math.top_k(tf.where(owned, tf.fill(tf.shape(scores), float("-inf")), scores), k=k)
            return values, indices

        top_scores, top_items = tf.map_fn(
            top_k_unowned, blocks, parallel_iterations=1,
            fn_output_signature=(tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([None, None], tf.int32)))
        top_scores = tf.reshape(top_scores, [-1, k])[:batch]
        top_items = tf.reshape(top_items, [-1, k])[:batch]
        popular_items = tf.broadcast_to(self.popular_items[None, :k], [batch, k])
        popular_scores = tf.broadcast_to(self.popular_scores[None, :k], [batch, k])
        items = tf.where(known_user[:, None], tf.cast(top_items, tf.int64), popular_items)
        return {
            "item_id": tf.gather(self.item_ids, items),
            "score": tf.where(known_user[:, None], top_scores, popular_scores),
            "known_user": known_user,
            "popular_fallback": tf.logical_not(known_user),
        }


def export_ranking_model(model, info, train_items, export_dir: str) -> None:
    """Writes a ranking SavedModel (``serving_default`` = ``score``, plus ``recommend``); see ``export_rating_model``."""
    server = RankingServer(model, info.transform_output(), train_items)
    tf.saved_model.save(
        server, _replace(export_dir),
        signatures={"serving_default": server.score, "score": server.score, "recommend": server.recommend},
    )


def load_for_serving(export_dir: str):
    """Loads an export and returns its ``serving_default`` function."""
    if not tf.io.gfile.exists(os.path.join(export_dir, "saved_model.pb")):
        raise FileNotFoundError(f"no SavedModel in {export_dir}")
    return tf.saved_model.load(export_dir).signatures["serving_default"]
