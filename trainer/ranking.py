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
* Recency weights (``recency_half_life`` > 0): each positive weighs
  ``floor + (1 - floor) * 0.5 ** (later / half_life)``, ``later`` the number of the
  user's training interactions with a strictly later timestamp (ties share it). The
  sampler adds them as ``SAMPLE_WEIGHT``; the models weight the positive's loss terms
  (its negatives too) with it. Time-weighted CF (Ding and Li, CIKM 2005): a user's
  latest interactions say most about the next one.
* ``TrainItems.history``: each user's latest train items with weights halving
  every ``half_life`` later interactions, for NeuMF's pooled user vector
  (``trainer.models.ranking_base.UserHistory``).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from schemas import ratings as F

# Trainer-side features added by the sampler (not pipeline features).
SAMPLED_NEGATIVES = "sampled_negative_index"
SAMPLED_NEGATIVES_MASK = "sampled_negative_mask"
SAMPLE_WEIGHT = "sample_weight"  # [B] recency weight of each positive (only with recency_half_life > 0)
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
      later: ``[len(keys)]`` for each pair, how many of the user's train interactions
        have a strictly later timestamp (0: the latest); None without timestamps.
    """

    num_users: int
    num_items: int
    keys: np.ndarray
    item_counts: np.ndarray
    later: np.ndarray | None = None

    @classmethod
    def from_pairs(cls, users: np.ndarray, items: np.ndarray, num_users: int, num_items: int,
                   timestamps: np.ndarray | None = None) -> "TrainItems":
        users = np.asarray(users, np.int64)
        items = np.asarray(items, np.int64)
        keep = (users < num_users) & (items < num_items)
        pair_keys = users[keep] * (num_items + 1) + items[keep]
        keys, inverse = np.unique(pair_keys, return_inverse=True)
        counts = np.bincount(items[keep], minlength=num_items)[:num_items]
        later = None
        if timestamps is not None:
            # A re-rated pair counts from its latest occurrence.
            row_later = _later_counts(users[keep], np.asarray(timestamps, np.int64)[keep])
            later = np.full(keys.size, np.iinfo(np.int64).max, np.int64)
            np.minimum.at(later, inverse.reshape(-1), row_later)
        return cls(num_users, num_items, keys, counts.astype(np.int64), later)

    def recency_weights(self, half_life: float, floor: float) -> np.ndarray:
        """``[len(keys)]`` float32 weights ``floor + (1 - floor) * 0.5 ** (later / half_life)``."""
        if self.later is None:
            raise ValueError("recency weights need the train timestamps (load_train_items(..., timestamps=True))")
        return (floor + (1.0 - floor) * np.power(0.5, self.later / half_life)).astype(np.float32)

    def history(self, length: int, half_life: float) -> tuple[np.ndarray, np.ndarray]:
        """Each user's ``length`` latest train items and their pooling weights (``UserHistory``).

        Returns:
          ``items`` ``[num_users + 1, length]`` int64, latest first (ties: lower item
          first), padded with the OOV item ``num_items``; ``weights`` float32 of the same
          shape, ``0.5 ** (later / half_life)`` (1 with ``half_life`` 0), 0 on padding.
          The last row is the OOV user's, empty.
        """
        if self.later is None:
            raise ValueError("a user history needs the train timestamps (load_train_items(..., timestamps=True))")
        stride = self.num_items + 1
        users, items = self.keys // stride, self.keys % stride
        order = np.lexsort((items, self.later, users))  # by user, latest first, then item
        users, items = users[order], items[order]
        weights = self.recency_weights(half_life, 0.0)[order] if half_life > 0 else np.ones(users.size, np.float32)
        starts = np.searchsorted(users, np.arange(self.num_users + 1))
        rank = np.arange(users.size) - starts[users]
        keep = rank < length
        history_items = np.full((self.num_users + 1, length), self.num_items, np.int64)
        history_weights = np.zeros((self.num_users + 1, length), np.float32)
        history_items[users[keep], rank[keep]] = items[keep]
        history_weights[users[keep], rank[keep]] = weights[keep]
        return history_items, history_weights

    def user_items(self, user: int) -> np.ndarray:
        """The sorted train items of one user (for tests and tools)."""
        stride = self.num_items + 1
        low, high = np.searchsorted(self.keys, [user * stride, (user + 1) * stride])
        return self.keys[low:high] - user * stride

    def popular_items(self) -> np.ndarray:
        """Item indices, most train interactions first (ties: lower index first)."""
        return np.argsort(-self.item_counts, kind="stable")


def _later_counts(users: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """For each row, how many rows of the same user have a strictly later timestamp."""
    if users.size == 0:
        return np.zeros(0, np.int64)
    time_rank = np.unique(timestamps, return_inverse=True)[1].reshape(-1).astype(np.int64)
    stride = int(time_rank.max()) + 2
    row_keys = users * stride + time_rank
    order_keys = np.sort(row_keys)
    user_ends = np.searchsorted(order_keys, (users + 1) * stride, side="left")
    return user_ends - np.searchsorted(order_keys, row_keys, side="right")


def load_train_items(info, splits: tuple[str, ...] = ("train",), timestamps: bool = False) -> TrainItems:
    """One pass over the splits a model trains on (user and item indices, and timestamps if asked).

    ``("train", "valid")`` for a refit: the valid positives then are the user's
    items too (never sampled as negatives, never recommended, masked in full ranking),
    and the latest ones for the recency weights.
    """
    from trainer import data

    keys = TRAIN_KEYS + ((F.TIMESTAMP,) if timestamps else ())
    columns = {key: [] for key in keys}
    for split in splits:
        for batch in data.local_dataset(info, split, 65536, keys=keys):
            for key in keys:
                columns[key].append(batch[key].numpy())
    users, items = (np.concatenate(columns[key]) for key in TRAIN_KEYS)
    return TrainItems.from_pairs(users, items, info.num_users, info.num_items,
                                 np.concatenate(columns[F.TIMESTAMP]) if timestamps else None)


def contains(sorted_keys: tf.Tensor, users: tf.Tensor, items: tf.Tensor, num_items: int) -> tf.Tensor:
    """Whether each (user, item) is a train pair; any shapes that broadcast together.

    Args:
      sorted_keys: 1-D int64 ``TrainItems.keys`` as a tensor.
      users, items: int64 index tensors.
      num_items: item vocabulary size.

    Returns:
      A bool tensor of the broadcast shape.
    """
    return _locate(sorted_keys, users, items, num_items)[1]


def _locate(sorted_keys: tf.Tensor, users: tf.Tensor, items: tf.Tensor, num_items: int) -> tuple[tf.Tensor, tf.Tensor]:
    """``(position, found)`` of each (user, item) key in ``sorted_keys``, both of the broadcast shape.

    ``position`` (int64) indexes ``sorted_keys`` and arrays aligned with it (``TrainItems.later``)
    and is only meaningful where ``found``; with no keys at all, nothing is found.
    """
    query = tf.cast(users, tf.int64) * (num_items + 1) + tf.cast(items, tf.int64)
    if sorted_keys.shape[0] == 0:
        return tf.zeros_like(query), tf.zeros_like(query, dtype=tf.bool)
    flat = tf.reshape(query, [-1])
    position = tf.minimum(tf.searchsorted(sorted_keys, flat, side="left", out_type=tf.int64),
                          tf.size(sorted_keys, out_type=tf.int64) - 1)
    found = tf.equal(tf.gather(sorted_keys, position), flat)
    return tf.reshape(position, tf.shape(query)), tf.reshape(found, tf.shape(query))


def make_negative_sampler(train_items: TrainItems, num_negatives: int, seed: int,
                          recency_half_life: float = 0.0, recency_floor: float = 0.0):
    """A ``tf.data`` map: ``{user_index, item_index}`` batch -> plus fresh negatives.

    Draws are stateful seeded random ops, so each epoch (each pass of the
    repeated dataset) sees new negatives.

    Args:
      train_items: the train pairs (negatives are never one of the user's items).
      num_negatives: K negatives per positive.
      seed: generator seed.
      recency_half_life: > 0 adds ``SAMPLE_WEIGHT`` (module docstring); needs
        ``train_items.later``.
      recency_floor: the weight an interaction tends to far from the user's latest.

    Returns:
      A function for ``Dataset.map`` adding ``SAMPLED_NEGATIVES`` ``[B, K]`` int64
      and ``SAMPLED_NEGATIVES_MASK`` ``[B, K]`` float32 (and ``SAMPLE_WEIGHT``).
    """
    num_items = train_items.num_items
    keys = tf.constant(train_items.keys, tf.int64)
    weights = (tf.constant(train_items.recency_weights(recency_half_life, recency_floor))
               if recency_half_life > 0 else None)

    def recency(users, items):
        position, found = _locate(keys, users, items, num_items)
        # A positive missing from the table (an OOV id) keeps weight 1.
        return tf.where(found, tf.gather(weights, position), 1.0)

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
        extra = {SAMPLE_WEIGHT: recency(users, features[F.ITEM_INDEX])} if weights is not None else {}
        return {**features, SAMPLED_NEGATIVES: negatives, SAMPLED_NEGATIVES_MASK: mask, **extra}

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
