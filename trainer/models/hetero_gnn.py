"""Heterogeneous GNN classifier of the root user of a sampled LastFM subgraph.

Owns the architecture only (loss, metrics, evaluation and post-processing live in
``trainer.tasks.graph_classification``, the fit in ``trainer.experiment``). Built from TF-GNN layers:

* initial states (``tfgnn.keras.layers.MapFeatures``): learned id embeddings for
  ``user`` and ``artist`` nodes, ids hashed into a fixed number of buckets (no
  vocabulary to ship; collisions are rare while buckets >> ids); for users
  optionally plus an embedding of ``label_hint`` (the class of *train* users,
  "unknown" for everyone else and always for the root itself);
* ``num_rounds`` ``tfgnn.keras.layers.GraphUpdate``s with one convolution per
  enabled edge set (``SimpleConv`` mean, or ``tensorflow_gnn.models.gat_v2.GATv2Conv``), messages flowing
  from sampled nodes back towards the root (``receiver_tag=SOURCE``: the
  pipeline stores edges from the sampling node to the sampled one), combined by
  ``NextStateFromConcat``;
* dropout on the final user states. The head is not here: the graph
  classification task puts TF-GNN's ``runner.RootNodeMulticlassClassification`` on top (readout of
  the root, node 0 of ``user``, the sampler's seed, and a dense layer giving
  ``num_classes`` logits), and that task also supplies the loss and metrics.
"""
from __future__ import annotations


from schemas import lastfm as schema
from trainer import hparams

USER = schema.NODE_USER
ARTIST = schema.NODE_ARTIST
EDGE_SETS = tuple(schema.EDGE_SETS)
RECEIVER = schema.RECEIVER
LABEL_HINT = schema.LABEL_HINT


Config = hparams.HeteroGNN  # hyperparameters and defaults: trainer/hparams.py (TF-free)


def build_model(config: Config, graph_spec, num_classes: int):
    """Builds the base GNN: one scalar GraphTensor (no label) -> the same graph with final node states.

    Args:
      config: hyperparameters.
      graph_spec: ``GraphTensorSpec`` of the model input: a scalar GraphTensor
        (a batch of subgraphs merged into components), without the label.
      num_classes: number of classes (the label-hint vocabulary is this + "unknown").

    Returns:
      An uncompiled ``tf.keras.Model`` whose output carries ``tfgnn.HIDDEN_STATE``
      on every node set it updates; the root is node 0 of ``user`` in each component.
    """
    import tensorflow as tf
    import tensorflow_gnn as tfgnn

    regularizer = tf.keras.regularizers.l2(config.l2) if config.l2 else None
    has_hints = config.use_label_hints and LABEL_HINT in graph_spec.node_sets_spec[USER].features_spec
    has_artists = any(e in config.edge_sets for e in ("likes", "liked_by"))

    def dense(units: int, activation: str | None = "relu"):
        return tf.keras.layers.Dense(units, activation=activation, kernel_regularizer=regularizer)

    def id_embedding(buckets: int, name: str):
        embedding = tf.keras.layers.Embedding(buckets, config.embedding_dim, embeddings_regularizer=regularizer, name=name)
        return lambda ids: embedding(tf.strings.to_hash_bucket_fast(ids, buckets))

    user_ids = id_embedding(config.user_hash_buckets, "user_id_embedding")
    artist_ids = id_embedding(config.artist_hash_buckets, "artist_id_embedding")
    hint_embedding = tf.keras.layers.Embedding(num_classes + 1, config.embedding_dim, name="label_hint_embedding")
    user_project = dense(config.hidden_dim)
    artist_project = dense(config.hidden_dim)

    def node_sets_fn(node_set, *, node_set_name):
        parts = []
        if node_set_name == USER:
            if config.use_ids:
                parts.append(user_ids(node_set[schema.ID]))
            if has_hints:
                parts.append(hint_embedding(node_set[LABEL_HINT]))
            if not parts:  # structure only: a constant state
                parts.append(tf.ones_like(tf.strings.to_number(node_set[schema.ID], tf.float32))[:, None])
            return user_project(tf.concat(parts, axis=-1) if len(parts) > 1 else parts[0])
        if node_set_name == ARTIST:
            if config.use_ids:
                return artist_project(artist_ids(node_set[schema.ID]))
            return artist_project(tf.ones_like(tf.strings.to_number(node_set[schema.ID], tf.float32))[:, None])
        return None

    def convolution(edge_set: str):
        if config.conv == "gatv2":
            from tensorflow_gnn.models import gat_v2

            return gat_v2.GATv2Conv(
                num_heads=config.num_heads,
                per_head_channels=config.hidden_dim // config.num_heads,
                receiver_tag=tfgnn.SOURCE,
                attention_activation="leaky_relu",
                kernel_regularizer=regularizer,
            )
        return tfgnn.keras.layers.SimpleConv(
            dense(config.hidden_dim), "mean", receiver_tag=tfgnn.SOURCE, name=f"conv_{edge_set}"
        )

    def next_state():
        return tfgnn.keras.layers.NextStateFromConcat(
            tf.keras.Sequential([dense(config.hidden_dim), tf.keras.layers.Dropout(config.dropout)])
        )

    inputs = tf.keras.layers.Input(type_spec=graph_spec)
    graph = tfgnn.keras.layers.MapFeatures(node_sets_fn=node_sets_fn)(inputs)
    for _ in range(config.num_rounds):
        node_set_updates = {}
        for receiver in (USER, ARTIST):
            if receiver == ARTIST and not has_artists:
                continue
            edge_sets = [e for e in config.edge_sets if RECEIVER[e] == receiver]
            if edge_sets:
                node_set_updates[receiver] = tfgnn.keras.layers.NodeSetUpdate(
                    {e: convolution(e) for e in edge_sets}, next_state()
                )
        graph = tfgnn.keras.layers.GraphUpdate(node_sets=node_set_updates)(graph)
    # Dropout on every user state = dropout on the root state the head reads out.
    final_dropout = tf.keras.layers.Dropout(config.dropout)
    graph = tfgnn.keras.layers.MapFeatures(
        node_sets_fn=lambda node_set, *, node_set_name: final_dropout(node_set[tfgnn.HIDDEN_STATE])
        if node_set_name == USER else node_set.features)(graph)
    return tf.keras.Model(inputs, graph)

