"""Graph convolutional matrix completion, GCMC (Berg, Kipf & Welling 2017), on TF-GNN layers.

Owns the architecture only; the ``graph_rating`` task (``trainer.tasks.graph_rating``)
owns the graphs, the inputs (full graph or sampled subgraphs), evaluation and export.

Input of every call: ``{"graph": GraphTensor, "user_position": [B], "item_position": [B]}``
(plus ``rating`` for the loss), where the graph is the whole rating graph or a
sampled subgraph (``schemas.rating_graph`` names; the trainer adds the node
features ``index`` and ``degree`` and the edge feature ``weight``), and the
positions say which of its user and item nodes each of the B pairs is.

Encoder (one graph convolution and a dense layer, eq. 2-4 of the paper), built
from TF-GNN pieces:

* ``MapFeatures``: every node's message per rating level, ``W_r x_j`` with a
  one-hot ``x_j`` = row ``j`` of a per-level table (``OrdinalMessageTable``;
  with ordinal weight sharing ``W_r = T_1 + ... + T_r``), times the sender's
  normaliser ``1/sqrt(deg_j)`` (symmetric) or 1 (left), then node dropout
  (``tfgnn.keras.layers.ItemDropout``: all of a node's messages dropped together).
* ``GraphUpdate`` with a ``NodeSetUpdate`` per node set: one ``RatingLevelConv``
  (``AnyToAnyConvolutionBase``: broadcast the level's message, times the edge
  weight, summed at the receiver) per incoming edge set, and ``GCMCNextState``:
  the levels accumulated (``stack``: concatenated, or ``sum``), times the
  receiver's normaliser (``1/sqrt(deg_i)`` or ``1/deg_i``), activation, dropout,
  the dense layer (plus, with side features, ``W_2 relu(W_1 f_i + b)``).

Decoder (eq. 5-7): bilinear with basis decomposition, ``logit_r = sum_s a_rs u^T P_s v``,
softmax over the rating levels; the prediction is the expected rating. Loss:
cross-entropy of the observed level.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Sequence

import tensorflow as tf
import tensorflow_gnn as tfgnn
import tensorflow_recommenders as tfrs

from schemas import rating_graph as G
from trainer import hparams

Config = hparams.GCMC  # hyperparameters and defaults: trainer/hparams.py (TF-free)

MESSAGES = "messages"  # node feature inside the encoder: [nodes, levels, units]
GRAPH, USER_POSITION, ITEM_POSITION, RATING = "graph", "user_position", "item_position", "rating"


@dataclasses.dataclass(frozen=True)
class GraphInfo:
    """What the model needs to know about the rating graph.

    Attributes:
      levels: the rating levels, ascending (one edge set each way per level).
      num_users, num_items: nodes per node set (= vocabulary sizes).
      side_dims: node set -> length of its ``side`` feature vector ({} without side features).
      rating_range: (min, max) of the train ratings (predictions are clipped to it outside training).
    """

    levels: tuple[float, ...]
    num_users: int
    num_items: int
    side_dims: dict[str, int]
    rating_range: tuple[float, float]

    def num_nodes(self, node_set: str) -> int:
        return self.num_users if node_set == G.NODE_USER else self.num_items


def _activation(name: str):
    if name == "leaky_relu":
        return lambda x: tf.nn.leaky_relu(x, alpha=0.1)
    return tf.keras.activations.get(None if name == "linear" else name)


def receiver_norm(degree: tf.Tensor, normalization: str) -> tf.Tensor:
    """The factor of a receiver's summed messages: ``1/sqrt(deg)`` (symmetric) or ``1/deg`` (left); 0 for no edges."""
    safe = tf.maximum(degree, 1.0)
    factor = tf.math.rsqrt(safe) if normalization == "symmetric" else 1.0 / safe
    return tf.where(degree > 0, factor, tf.zeros_like(factor))


def sender_norm(degree: tf.Tensor, normalization: str) -> tf.Tensor:
    """The factor of a sender's messages: ``1/sqrt(deg)`` (symmetric) or 1 (left)."""
    if normalization == "symmetric":
        return tf.where(degree > 0, tf.math.rsqrt(tf.maximum(degree, 1.0)), tf.zeros_like(degree))
    return tf.ones_like(degree)


class OrdinalMessageTable(tf.keras.layers.Layer):
    """``W_r x_j`` for one-hot node inputs: a ``[levels, nodes, units]`` table, cumulated over levels when ordinal.

    With ordinal weight sharing (section 2.4 of the paper) the level-``r`` weight is
    ``T_1 + ... + T_r``, so what a node says with a 4 builds on what it says with a 3.
    Initialised per level like a Glorot-uniform ``[nodes, units]`` matrix.
    """

    def __init__(self, num_nodes: int, num_levels: int, units: int, *, ordinal: bool, seed: int, **kwargs):
        super().__init__(**kwargs)
        self.num_nodes, self.num_levels, self.units, self.ordinal = num_nodes, num_levels, units, ordinal
        limit = math.sqrt(6.0 / (num_nodes + units))
        self._initializer = tf.keras.initializers.RandomUniform(-limit, limit, seed=seed)

    def build(self, input_shape):
        self.table = self.add_weight(name="table", shape=(self.num_levels, self.num_nodes, self.units),
                                     initializer=self._initializer)
        super().build(input_shape)

    def call(self, index: tf.Tensor) -> tf.Tensor:
        """Node indices ``[n]`` -> messages ``[n, levels, units]``."""
        rows = tf.gather(self.table, index, axis=1)  # [levels, n, units]
        if self.ordinal:
            rows = tf.cumsum(rows, axis=0)
        return tf.transpose(rows, [1, 0, 2])


class RatingLevelConv(tfgnn.keras.layers.AnyToAnyConvolutionBase):
    """The convolution of one rating level: the sender's level message times the edge weight, summed.

    The normalisers live outside (sender side in ``MapFeatures``, receiver side in
    ``GCMCNextState``) because they are per node, not per edge: the same sum.
    """

    def __init__(self, level_index: int, **kwargs):
        super().__init__(receiver_tag=tfgnn.TARGET, receiver_feature=None, sender_node_feature=MESSAGES,
                         sender_edge_feature=G.WEIGHT, **kwargs)
        self.level_index = level_index

    def get_config(self):
        return dict(level_index=self.level_index, **super().get_config())

    def convolve(self, *, sender_node_input, sender_edge_input, receiver_input, broadcast_from_sender_node,
                 broadcast_from_receiver, pool_to_receiver, training):
        del receiver_input, broadcast_from_receiver, training
        messages = broadcast_from_sender_node(sender_node_input[:, self.level_index, :])
        return pool_to_receiver(messages * sender_edge_input[:, None], reduce_type="sum")


class GCMCNextState(tf.keras.layers.Layer):
    """A node's new state from its per-level sums: accumulate, normalise, activate, drop out, dense (+ side)."""

    def __init__(self, edge_set_order: Sequence[str], config: Config, *, side: bool, name: str):
        super().__init__(name=name)
        self.edge_set_order = tuple(edge_set_order)
        self.config = config
        self.side = side
        self._activation = _activation(config.activation)
        self._dropout = tf.keras.layers.Dropout(config.dropout, seed=config.seed + 7)
        init = tf.keras.initializers.GlorotUniform(seed=config.seed + 11)
        self._dense = tf.keras.layers.Dense(config.out_dim, use_bias=False, kernel_initializer=init, name="dense")
        if side:
            self._side_hidden = tf.keras.layers.Dense(config.side_hidden_dim, activation="relu",
                                                      kernel_initializer=init, name="side_hidden")
            self._side_out = tf.keras.layers.Dense(config.out_dim, use_bias=False, kernel_initializer=init,
                                                   name="side_out")
        self._dense_activation = _activation(config.dense_activation)

    def call(self, inputs, training=None):
        node, edges, _ = inputs
        parts = [edges[name] for name in self.edge_set_order]
        hidden = tf.concat(parts, axis=-1) if self.config.accumulation == "stack" else tf.add_n(parts)
        hidden = hidden * receiver_norm(node[G.DEGREE], self.config.normalization)[:, None]
        out = self._dense(self._dropout(self._activation(hidden), training=training))
        if self.side:
            out = out + self._side_out(self._side_hidden(node[G.SIDE]))
        return self._dense_activation(out)


class BilinearDecoder(tf.keras.layers.Layer):
    """``logit_r(u, v) = sum_s a_rs u^T P_s v``: bilinear forms from ``num_basis`` shared matrices (eq. 5-7).

    In two steps so that each user state is projected once however many pairs it
    is in: ``project`` computes ``u^T P_s`` per user node, ``score`` finishes the
    pairs (at ML-100K's 72k train pairs per step, ~20x less work than projecting per pair).
    """

    def __init__(self, num_levels: int, num_basis: int, seed: int, **kwargs):
        super().__init__(**kwargs)
        self.num_levels, self.num_basis, self.seed = num_levels, num_basis, seed

    def build(self, input_shape):
        units = int(input_shape[-1])
        self.bases = self.add_weight(name="bases", shape=(self.num_basis, units, units),
                                     initializer=tf.keras.initializers.GlorotUniform(seed=self.seed + 13))
        self.coefficients = self.add_weight(name="coefficients", shape=(self.num_basis, self.num_levels),
                                            initializer=tf.keras.initializers.GlorotUniform(seed=self.seed + 17))
        super().build(input_shape)

    def call(self, users: tf.Tensor) -> tf.Tensor:
        """User states ``[n, d]`` -> ``[n, bases, d]``: ``u^T P_s`` for every basis."""
        return project_users(users, self.bases)

    def score(self, projected_users: tf.Tensor, items: tf.Tensor) -> tf.Tensor:
        """Projected users ``[B, bases, d]`` and item states ``[B, d]`` of B pairs -> logits ``[B, levels]``."""
        return pair_logits(projected_users, items, self.coefficients)


def project_users(users: tf.Tensor, bases: tf.Tensor) -> tf.Tensor:
    """``[n, d]`` user states -> ``[n, bases, d]``, ``u^T P_s`` (one ``[n, d] x [d, bases * d]`` product)."""
    num_basis, units = tf.shape(bases)[0], tf.shape(bases)[1]
    projected = tf.matmul(users, tf.reshape(tf.transpose(bases, [1, 0, 2]), [units, num_basis * units]))
    return tf.reshape(projected, [-1, num_basis, units])


def pair_logits(projected_users: tf.Tensor, items: tf.Tensor, coefficients: tf.Tensor) -> tf.Tensor:
    """``[B, bases, d]`` projected users and ``[B, d]`` items -> ``[B, levels]`` logits."""
    return tf.matmul(tf.reduce_sum(projected_users * items[:, None, :], axis=-1), coefficients)


def expected_rating(logits: tf.Tensor, levels: tf.Tensor) -> tf.Tensor:
    """The mean of the predicted distribution over rating levels (eq. 8)."""
    return tf.reduce_sum(tf.nn.softmax(logits, axis=-1) * levels[None, :], axis=-1)


class GCMC(tfrs.models.Model):
    """GCMC encoder + bilinear decoder; ``compute_loss`` is the level cross-entropy (TFRS model style)."""

    def __init__(self, config: Config, graph: GraphInfo, *, num_replicas: int = 1):
        super().__init__()
        self.config = config
        self.graph_info = graph
        self.num_replicas = num_replicas
        self.levels = tf.constant(graph.levels, tf.float32)
        num_levels = len(graph.levels)
        if config.accumulation == "stack" and config.hidden_dim % num_levels:
            raise ValueError(f"hidden_dim {config.hidden_dim} must be a multiple of the {num_levels} rating levels "
                             "with accumulation=stack")
        units = config.hidden_dim // num_levels if config.accumulation == "stack" else config.hidden_dim
        self.tables = {
            node_set: OrdinalMessageTable(graph.num_nodes(node_set), num_levels, units, ordinal=config.ordinal_sharing,
                                          seed=config.seed + offset, name=f"{node_set}_messages")
            for offset, node_set in enumerate(G.NODE_SETS)
        }
        self.node_dropout = {node_set: tfgnn.keras.layers.ItemDropout(config.dropout, seed=config.seed + 3 + offset)
                             for offset, node_set in enumerate(G.NODE_SETS)}
        self.use_side = {node_set: bool(config.side_features and graph.side_dims.get(node_set))
                         for node_set in G.NODE_SETS}
        incoming = {G.NODE_ITEM: [G.rating_edge_set(level) for level in graph.levels],
                    G.NODE_USER: [G.reverse_edge_set(level) for level in graph.levels]}
        self.update = tfgnn.keras.layers.GraphUpdate(node_sets={
            node_set: tfgnn.keras.layers.NodeSetUpdate(
                {name: RatingLevelConv(index, name=f"conv_{name}") for index, name in enumerate(incoming[node_set])},
                GCMCNextState(incoming[node_set], config, side=self.use_side[node_set], name=f"{node_set}_state"),
                node_input_feature=[G.DEGREE] + ([G.SIDE] if self.use_side[node_set] else []),
            )
            for node_set in G.NODE_SETS
        })
        self.decoder = BilinearDecoder(num_levels, config.num_basis, config.seed, name="decoder")
        self.rmse_metric = tf.keras.metrics.RootMeanSquaredError(name="rmse")
        self.averages: list[tf.Variable] = []  # exponential moving averages of the weights (ema_decay > 0)

    def track_averages(self) -> None:
        """Creates the moving averages of the trainable weights (call once they exist, in the strategy scope).

        As the authors' code does (``tf.train.ExponentialMovingAverage`` with the step
        count): after every step ``a = d a + (1 - d) w`` with ``d = min(ema_decay,
        (1 + step) / (10 + step))``. Evaluation and export use the averages
        (``averaged_weights``); they are weights of the model, so the kept epoch's
        checkpoint and a relaunch's backup carry them.
        """
        if self.config.ema_decay <= 0 or self.averages:
            return
        # ONLY_FIRST_REPLICA: every replica holds the same weights; the update runs in replica context.
        self.averages = [tf.Variable(v.read_value(), trainable=False, name=f"average/{v.name.split(':')[0]}",
                                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
                         for v in self.trainable_variables]

    def train_step(self, inputs):
        logs = super().train_step(inputs)
        if self.averages:
            step = tf.cast(self.optimizer.iterations, tf.float32)
            decay = tf.minimum(self.config.ema_decay, (1.0 + step) / (10.0 + step))
            for average, weight in zip(self.averages, self.trainable_variables):
                average.assign(decay * average + (1.0 - decay) * weight)
        return logs

    @contextlib.contextmanager
    def averaged_weights(self):
        """The trainable weights replaced by their moving averages inside the block (no-op without them)."""
        if not self.averages:
            yield self
            return
        current = [v.read_value() for v in self.trainable_variables]
        for weight, average in zip(self.trainable_variables, self.averages):
            weight.assign(average)
        try:
            yield self
        finally:
            for weight, value in zip(self.trainable_variables, current):
                weight.assign(value)

    def get_config(self) -> dict[str, Any]:
        return {"config": dataclasses.asdict(self.config), "graph": dataclasses.asdict(self.graph_info)}

    def _messages(self, node_set, *, node_set_name: str, training: bool):
        if node_set_name not in self.tables:
            return node_set.features
        messages = self.tables[node_set_name](node_set[G.INDEX])
        messages = messages * sender_norm(node_set[G.DEGREE], self.config.normalization)[:, None, None]
        return {**node_set.features, MESSAGES: self.node_dropout[node_set_name](messages, training=training)}

    def encode(self, graph: tfgnn.GraphTensor, training: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
        """Final user and item states ``[nodes, out_dim]`` of every node of ``graph``."""
        with_messages = tfgnn.keras.layers.MapFeatures(
            node_sets_fn=lambda node_set, *, node_set_name: self._messages(node_set, node_set_name=node_set_name,
                                                                           training=training))(graph)
        encoded = self.update(with_messages, training=training)
        return (encoded.node_sets[G.NODE_USER][tfgnn.HIDDEN_STATE],
                encoded.node_sets[G.NODE_ITEM][tfgnn.HIDDEN_STATE])

    def call(self, features, training: bool = False) -> tf.Tensor:
        """Logits ``[B, levels]`` of the B pairs of ``features``."""
        users, items = self.encode(features[GRAPH], training=training)
        return self.decoder.score(tf.gather(self.decoder(users), features[USER_POSITION]),
                                  tf.gather(items, features[ITEM_POSITION]))

    def predict_rating(self, logits: tf.Tensor) -> tf.Tensor:
        """Expected rating, clipped to the train rating range."""
        return tf.clip_by_value(expected_rating(logits, self.levels), *self.graph_info.rating_range)

    def level_index(self, rating: tf.Tensor) -> tf.Tensor:
        """The index of the nearest rating level (train ratings are levels exactly)."""
        return tf.argmin(tf.abs(rating[:, None] - self.levels[None, :]), axis=1)

    def compute_loss(self, features, training: bool = False) -> tf.Tensor:
        logits = self(features, training=training)
        rating = tf.cast(features[RATING], tf.float32)
        losses = tf.keras.losses.sparse_categorical_crossentropy(self.level_index(rating), logits, from_logits=True)
        self.rmse_metric.update_state(rating, expected_rating(logits, self.levels))
        # The mean over this replica's batch, divided by the replicas: the replicas' gradients
        # are summed, so the update is that of the mean over the global batch (equal shards).
        return tf.reduce_sum(losses) / (tf.cast(tf.maximum(tf.size(losses), 1), tf.float32) * self.num_replicas)


def build_model(config: Config, graph: GraphInfo, num_replicas: int = 1) -> GCMC:
    """The GCMC model for a rating graph (called inside the strategy scope).

    Raises:
      ValueError: side features asked for but the graph has none, or a stack width
        that the number of levels does not divide.
    """
    if config.side_features and not any(graph.side_dims.values()):
        raise ValueError("hparams.side_features is true but the graph has no side features "
                         "(rerun beam_pipelines.rating_graph with --user-features / --item-features)")
    return GCMC(config, graph, num_replicas=num_replicas)


class ServingGCMC(tf.Module):
    """A trained GCMC for serving: precomputed node states and the decoder's weights, called like MF.

    ``trainer.export.RatingServer`` calls it with ``{user_index, item_index}``
    (the tf.Transform output of raw ids). The node states were computed once, at
    export, by the encoder over the train + valid graph; row ``num_users`` /
    ``num_items`` (the OOV index) holds the mean state of its node set, the
    answer for an id the pipeline never saw. Plain variables, so the SavedModel
    needs no graph and no distribution strategy to serve.
    """

    def __init__(self, model: GCMC, user_states: tf.Tensor, item_states: tf.Tensor):
        super().__init__(name="serving_gcmc")
        info = model.graph_info
        self.num_users, self.num_items = info.num_users, info.num_items
        # The users' states already multiplied by the decoder's basis matrices (``u^T P_s``).
        self.projected_users = tf.Variable(project_users(tf.convert_to_tensor(user_states),
                                                         tf.convert_to_tensor(model.decoder.bases)),
                                           trainable=False, name="projected_users")
        self.item_states = tf.Variable(tf.convert_to_tensor(item_states), trainable=False, name="item_states")
        self.coefficients = tf.Variable(tf.convert_to_tensor(model.decoder.coefficients), trainable=False,
                                        name="coefficients")
        self.levels = tf.constant(info.levels, tf.float32)
        self.rating_range = info.rating_range

    def __call__(self, features, training: bool = False) -> tf.Tensor:
        from schemas import ratings as F

        users = tf.minimum(features[F.USER_INDEX], self.num_users)
        items = tf.minimum(features[F.ITEM_INDEX], self.num_items)
        logits = pair_logits(tf.gather(self.projected_users, users), tf.gather(self.item_states, items),
                             self.coefficients)
        return tf.clip_by_value(expected_rating(logits, self.levels), *self.rating_range)
