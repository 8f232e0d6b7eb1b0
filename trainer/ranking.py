"""Implicit-feedback ranking: the user's train items, fresh training negatives, eval candidates.

Owns three things every ranking model (``trainer.tasks.ranking``) shares:

* ``TrainItems``: each user's train items as one sorted int64 tensor of keys
  ``user * (num_items + 1) + item``. Membership of any (user, item) batch is one
  vectorized ``tf.searchsorted`` (no hash tables, no Python); the same table
  excludes known items in ``recommend`` and masks them in full ranking.
* ``add_sampled_negatives``: a ``tf.data`` map that draws ``K`` negatives per
  positive afresh every epoch, uniformly over the train vocabulary, redrawing
  (vectorized rejection) any draw the user has in training. Negatives go in
  ``SAMPLED_NEGATIVES`` ``[batch, K]`` with a float mask ``SAMPLED_NEGATIVES_MASK``
  (0 only for a user who has every item, who has no negative to draw).
* ``read_eval_candidates``: the fixed candidates the pipeline wrote (the held-out
  positive plus ``negative_item_index``) as dense ``[users, 1 + N]`` arrays.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from schemas import ratings as F

# Trainer-side features added by the sampler (not pipeline features).
SAMPLED_NEGATIVES = "sampled_negative_index"
SAMPLED_NEGATIVES_MASK = "sampled_negative_mask"
TRAIN_KEYS = (F.USER_INDEX, F.ITEM_INDEX)
# Rejection rounds before giving up on a draw; with a user owning a fraction p of
# the catalogue a draw survives r rounds with probability p^r (p=0.9: 1e-23 at 500).
MAX_REDRAWS = 500


@dataclasses.dataclass(frozen=True)
class TrainItems:
    """Every (user, item) pair of the train split, plus item popularity.

    Attributes:
      num_users: user vocabulary size (the OOV user index equals it).
      num_items: item vocabulary size (the OOV item index equals it).
      keys: sorted unique ``user * (num_items + 1) + item`` of the train pairs.
      item_counts: ``[num_items]`` train interactions per item (popularity).
    """

    num_users: int
    num_items: int
    keys: np.ndarray
    item_counts: np.ndarray

    @classmethod
    def from_pairs(cls, users: np.ndarray, items: np.ndarray, num_users: int, num_items: int) -> "TrainItems":
        users = np.asarray(users, np.int64)
        items = np.asarray(items, np.int64)
        keep = (users < num_users) & (items < num_items)
        keys = np.unique(users[keep] * (num_items + 1) + items[keep])
        counts = np.bincount(items[keep], minlength=num_items)[:num_items]
        return cls(num_users, num_items, keys, counts.astype(np.int64))

    def user_items(self, user: int) -> np.ndarray:
        """The sorted train items of one user (for tests and tools)."""
        stride = self.num_items + 1
        low, high = np.searchsorted(self.keys, [user * stride, (user + 1) * stride])
        return self.keys[low:high] - user * stride

    def popular_items(self) -> np.ndarray:
        """Item indices, most train interactions first (ties: lower index first)."""
        return np.argsort(-self.item_counts, kind="stable")


def load_train_items(info, splits: tuple[str, ...] = ("train",)) -> TrainItems:
    """One pass over the splits a model trains on (user and item indices only).

    ``("train", "valid")`` for a refit: the valid positives then are the user's
    items too (never sampled as negatives, never recommended, masked in full ranking).
    """
    from trainer import data

    users, items = [], []
    for split in splits:
        for batch in data.local_dataset(info, split, 65536, keys=TRAIN_KEYS):
            users.append(batch[F.USER_INDEX].numpy())
            items.append(batch[F.ITEM_INDEX].numpy())
    return TrainItems.from_pairs(np.concatenate(users), np.concatenate(items), info.num_users, info.num_items)


def contains(sorted_keys: tf.Tensor, users: tf.Tensor, items: tf.Tensor, num_items: int) -> tf.Tensor:
    """Whether each (user, item) is a train pair; any shapes that broadcast together.

    Args:
      sorted_keys: 1-D int64 ``TrainItems.keys`` as a tensor.
      users, items: int64 index tensors.
      num_items: item vocabulary size.

    Returns:
      A bool tensor of the broadcast shape.
    """
    users = tf.cast(users, tf.int64)
    items = tf.cast(items, tf.int64)
    query = users * (num_items + 1) + items
    flat = tf.reshape(query, [-1])
    if sorted_keys.shape[0] == 0:
        return tf.zeros_like(query, dtype=tf.bool)
    position = tf.searchsorted(sorted_keys, flat, side="left")
    found = tf.gather(sorted_keys, tf.minimum(position, tf.size(sorted_keys, out_type=position.dtype) - 1))
    return tf.reshape(tf.equal(found, flat), tf.shape(query))


def make_negative_sampler(train_items: TrainItems, num_negatives: int, seed: int):
    """A ``tf.data`` map: ``{user_index, item_index}`` batch -> plus fresh negatives.

    Draws are stateful seeded random ops, so each epoch (each pass of the
    repeated dataset) sees new negatives.

    Args:
      train_items: the train pairs (negatives are never one of the user's items).
      num_negatives: K negatives per positive.
      seed: generator seed.

    Returns:
      A function for ``Dataset.map`` adding ``SAMPLED_NEGATIVES`` ``[B, K]`` int64
      and ``SAMPLED_NEGATIVES_MASK`` ``[B, K]`` float32.
    """
    num_items = train_items.num_items
    keys = tf.constant(train_items.keys, tf.int64)

    def draw(shape):
        return tf.random.uniform(shape, minval=0, maxval=num_items, dtype=tf.int64, seed=seed)

    def add_negatives(features):
        users = tf.cast(features[F.USER_INDEX], tf.int64)
        shape = tf.stack([tf.shape(users)[0], num_negatives])
        user_grid = tf.broadcast_to(users[:, None], shape)
        negatives = draw(shape)
        clash = contains(keys, user_grid, negatives, num_items)

        def redraw(round_, negatives, clash):
            negatives = tf.where(clash, draw(shape), negatives)
            return round_ + 1, negatives, contains(keys, user_grid, negatives, num_items)

        def any_clash(round_, negatives, clash):
            return tf.logical_and(round_ < MAX_REDRAWS, tf.reduce_any(clash))

        _, negatives, clash = tf.while_loop(any_clash, redraw, (tf.constant(0), negatives, clash))
        # A user who owns every item (or an improbable MAX_REDRAWS run) keeps a
        # clashing draw: mask it out of the loss instead of training on a positive.
        mask = 1.0 - tf.cast(clash, tf.float32)
        return {**features, SAMPLED_NEGATIVES: negatives, SAMPLED_NEGATIVES_MASK: mask}

    return add_negatives


@dataclasses.dataclass(frozen=True)
class EvalCandidates:
    """The eval protocol's fixed candidates, one row per eval user.

    Attributes:
      users: ``[U]`` user indices.
      items: ``[U, 1 + N]`` item indices, the held-out positive in column 0
        (padding, where a user has fewer negatives, repeats the positive).
      valid: ``[U, 1 + N]`` bool, False on padding.
    """

    users: np.ndarray
    items: np.ndarray
    valid: np.ndarray


def read_eval_candidates(info, split: str, batch_size: int = 8192) -> EvalCandidates:
    """Reads a held-out split (``valid/`` or ``test/``): each row's positive plus its ``negative_item_index``."""
    from trainer import data

    users, rows = [], []
    keys = (F.USER_INDEX, F.ITEM_INDEX, F.NEGATIVE_ITEM_INDEX)
    for batch in data.local_dataset(info, split, batch_size, keys=keys):
        negatives = batch[F.NEGATIVE_ITEM_INDEX]
        negatives = tf.RaggedTensor.from_sparse(negatives) if isinstance(negatives, tf.SparseTensor) else negatives
        positives = batch[F.ITEM_INDEX].numpy()
        users.append(batch[F.USER_INDEX].numpy())
        if isinstance(negatives, tf.RaggedTensor):
            rows.extend([p, *n] for p, n in zip(positives, negatives.to_list()))
        else:
            rows.extend([p, *n] for p, n in zip(positives, negatives.numpy().tolist()))
    if not rows:
        return EvalCandidates(np.zeros(0, np.int64), np.zeros((0, 1), np.int64), np.zeros((0, 1), bool))
    width = max(len(r) for r in rows)
    items = np.array([r + [r[0]] * (width - len(r)) for r in rows], np.int64)
    valid = np.array([[True] * len(r) + [False] * (width - len(r)) for r in rows], bool)
    return EvalCandidates(np.concatenate(users).astype(np.int64), items, valid)
