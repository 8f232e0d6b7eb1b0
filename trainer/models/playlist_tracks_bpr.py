"""BPR whose playlists are their tracks: scores playlists that have no training interaction.

A playlist's vector is the pooled embedding of its tracks (``playlist_tracks/``:
content, known for every playlist, held-out ones included), plus a playlist id
embedding when ``use_playlist_ids``; a user's vector is a user id embedding
plus, when ``use_user_tracks``, the pooled embedding of the distinct tracks of
the user's *train* collection (the same track table). Score: the dot product;
loss, negatives and batches as the id-only ``trainer.models.playlist_bpr``.

Why tracks: most held-out playlists are owned by the user and followed by
nobody, so they have no train interaction and an id embedding learns nothing
for them but what negative sampling pushes onto it (away from every user).
Their tracks are known, and tracks are shared with playlists that do train.
With ``use_user_tracks`` the score of a playlist whose tracks the user already
likes is high even before the id embeddings have learnt much.

The two CSR tables (playlist -> tracks, user -> tracks) are non-trainable
variables of the model, so the SavedModel carries them and serving scores any
playlist by index with no other input. Pooling reads only the table rows a
batch needs (``tf.ragged.range`` over the offsets, one sparse x dense product
with the track table: ``TrackPool``), so the forward pass costs O(tracks of the
batch's playlists and users); the track table's gradient (and Adam's update) is
dense, O(tracks x d) per step (gathering only the batch's distinct tracks first, for a sparse
gradient, made a step slower at 100k users: the lazy Adam update took 0.82 CPU s instead of 0.43).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from trainer import hparams
from trainer.models.playlist_bpr import PlaylistRanker
from trainer.models.ranking_base import MaskedEmbedding

Config = hparams.PlaylistTracksBPR  # hyperparameters and defaults: trainer/hparams.py (TF-free)


class TrackPool(tf.keras.layers.Layer):
    """Rows of a CSR id -> tracks table -> the pooled (mean or sum / sqrt n) embeddings of their tracks.

    The pooling of a batch is one sparse x dense product, ``W @ track_table`` with
    ``W[i, t] = 1/n_i`` (or ``1/sqrt(n_i)``) for the ``n_i`` tracks of row ``i``,
    rather than a gather of every (row, track) embedding and a segment sum: the
    gather materialises ``nnz x d`` floats forward and again as the gradient's
    IndexedSlices (about 600 MB per step at batch 16384 on the 100k-user data),
    while the product's gradient is one dense ``[tracks, d]`` table. Measured on
    that shape: about 10% less CPU per step and a fraction of the memory.
    ``tf.nn.embedding_lookup_sparse`` is the gather form (measured the same as it).
    The product is TensorFlow's CSR one (``csr_product``): ``tf.sparse.sparse_dense_matmul``
    took 1.26 CPU s forward + backward for 16384 users' ~57 tracks each, the CSR product 0.39.

    Args:
      offsets: ``[rows + 1]`` int64 CSR offsets.
      tracks: ``[nnz]`` int64 track indices (each < the track table's rows).
      pooling: ``mean`` or ``sqrt``.
    """

    def __init__(self, offsets: np.ndarray, tracks: np.ndarray, pooling: str, **kwargs):
        super().__init__(**kwargs)
        self.num_rows = len(offsets) - 1
        # Variables, not constants: the SavedModel stores them once as variables
        # instead of inlining millions of ints into every traced function.
        self.offsets = tf.Variable(np.asarray(offsets, np.int64), trainable=False, name="offsets")
        self.tracks = tf.Variable(np.asarray(tracks, np.int64), trainable=False, name="tracks")
        self.pooling = pooling

    def call(self, ids, track_table):
        """``ids [N]`` -> ``[N, d]`` pooled rows of ``track_table`` (``[tracks, d]``); the OOV id (rows) -> zeros."""
        ids = tf.cast(ids, tf.int64)
        known = ids < self.num_rows
        safe = tf.where(known, ids, tf.zeros_like(ids))
        starts = tf.gather(self.offsets, safe)
        lengths = (tf.gather(self.offsets, safe + 1) - starts) * tf.cast(known, tf.int64)
        positions = tf.ragged.range(starts, starts + lengths)
        rows = positions.value_rowids()
        count = tf.cast(tf.maximum(lengths, 1), tf.float32)
        weight = 1.0 / (count if self.pooling == "mean" else tf.sqrt(count))
        return csr_product(
            tf.stack([rows, tf.gather(self.tracks, positions.flat_values)], axis=1),  # row-major: ragged.range
            tf.gather(weight, rows),
            tf.stack([tf.size(ids, out_type=tf.int64), tf.shape(track_table, out_type=tf.int64)[0]]),
            track_table)


@tf.custom_gradient
def csr_product(indices, values, dense_shape, table):
    """``W @ table`` for the sparse ``W`` (COO ``indices`` in row-major order, ``values``, ``dense_shape``).

    TensorFlow's CSR matrix ops (``SparseMatrixMatMul``, Eigen's sparse product, multi-threaded)
    rather than ``tf.sparse.sparse_dense_matmul``: the same sums, about 3x less CPU forward and
    backward at the 100k-user shape (README "Playlists"). The gradient is written here, for
    ``table`` only (``W^T @ upstream``): the registered one of ``SparseMatrixMatMul`` also builds
    ``W``'s gradient, which needs static shapes a batch does not have, and ``W`` is not trained.
    """
    def matrix():  # built again in the gradient: a SavedModel cannot capture a variant-typed tensor
        return tf.raw_ops.SparseTensorToCSRSparseMatrix(indices=indices, values=values, dense_shape=dense_shape)

    def grad(upstream):
        return None, None, None, tf.raw_ops.SparseMatrixMatMul(a=matrix(), b=upstream, transpose_a=True)

    return tf.raw_ops.SparseMatrixMatMul(a=matrix(), b=table), grad


class PlaylistTracksBPR(PlaylistRanker):
    """Playlist vector = pooled track embeddings (+ id); user vector = id (+ pooled liked tracks)."""

    def __init__(self, config: Config, data, global_batch_size: int):
        super().__init__(data.num_users, data.num_playlists, config.num_negatives, global_batch_size,
                         config.l2_embedding)
        self.config = config
        dim, stddev, seed = config.embedding_dim, config.init_stddev, config.seed
        self.user_embedding = MaskedEmbedding(data.num_users, dim, stddev, seed, name="user_embedding")
        # Every track index in the tables is known (< num_tracks): no OOV row needed.
        self.track_embedding = self.add_weight(
            name="track_embedding", shape=(max(1, data.num_tracks), dim),
            initializer=tf.keras.initializers.RandomNormal(stddev=stddev, seed=seed + 2))
        self.playlist_pool = TrackPool(data.playlist_tracks.offsets, data.playlist_tracks.values, config.pooling,
                                       name="playlist_tracks")
        self.playlist_embedding = (MaskedEmbedding(data.num_playlists, dim, stddev, seed + 1, name="playlist_embedding")
                                   if config.use_playlist_ids else None)
        self.user_pool = None
        if config.use_user_tracks:
            liked = data.user_tracks()
            self.user_pool = TrackPool(liked.offsets, liked.values, config.pooling, name="user_tracks")

    def user_vectors(self, users):
        vectors = self.user_embedding(users)
        if self.user_pool is not None:
            vectors += self.user_pool(users, self.track_embedding)
        return vectors

    def _playlist_vectors(self, playlists):
        vectors = self.playlist_pool(playlists, self.track_embedding)
        if self.playlist_embedding is not None:
            vectors += self.playlist_embedding(playlists)
        return vectors


def build_model(config: Config, data, global_batch_size: int) -> PlaylistTracksBPR:
    """The track-content BPR for ``data`` (a ``trainer.playlists.PlaylistData``)."""
    return PlaylistTracksBPR(config, data, global_batch_size)
