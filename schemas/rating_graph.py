"""The bipartite rating graph of a ratings output: node sets, edge sets, features, files.

Written by ``beam_pipelines.rating_graph`` beside a ``beam_pipelines.movielens``
output; read by the ``graph_rating`` task (``trainer.tasks.graph_rating``) and
the ``gcmc`` model. One place for every name.

Graph (one ``tfgnn.GraphTensor`` per file, serialized as one tf.Example):

* node sets ``user`` and ``item``: node ``i`` is vocabulary index ``i`` of the
  pipeline's tf.Transform vocabulary (``user_index`` / ``item_index`` of the
  examples), so a rating example points straight at its two nodes. Feature
  ``#id``: the raw id. Optional feature ``side``: a float vector of side features
  (``dataset.json`` ``graph.side_features.<node set>.columns`` names its columns);
  a node without a feature row has zeros there.
* one edge set per rating level found in the train split: ``rating_<v>`` (user ->
  item, the user rated the item ``v``) and its reverse ``rated_by_<v>`` (item ->
  user). ``v`` is the level with ``.`` written as ``_`` (``rating_4_5``); the
  numeric level of every edge set is in ``dataset.json`` ``graph.levels``.
  Edges are sorted by (source, target), so the same input gives the same bytes.

Files (``OUT/`` is the ratings output)::

    OUT/graph/train.tfrecord.gz         edges of the train split: message passing in training and for valid
    OUT/graph/train_valid.tfrecord.gz   train + valid edges: message passing for test, refit and serving
    OUT/graph/levels.json               the rating levels (from the train split), ascending
    OUT/graph/<node set>_columns.json   names of the side-feature columns (with side features)
    OUT/graph_schema.pbtxt              the tfgnn.GraphSchema of both
    OUT/rejected/graph-*.jsonl          unused side-feature rows (malformed, duplicate), with reasons
    OUT/dataset.json ``graph``          levels, node and edge counts, side-feature accounting
"""
from __future__ import annotations

from typing import Sequence

NODE_USER = "user"
NODE_ITEM = "item"
NODE_SETS = (NODE_USER, NODE_ITEM)
ID = "#id"  # node feature: the raw id (string)
SIDE = "side"  # node feature: float side-feature vector (optional)
# Features the trainer adds when it loads a graph (never in the files): the node's vocabulary
# index, its degree (edges over all levels, in the graph loaded), and per edge the weight of
# its message (1; in a sampled subgraph the inverse share of the receiver's edges sampled).
INDEX = "index"
DEGREE = "degree"
WEIGHT = "weight"
SCHEMA_FILE = "graph_schema.pbtxt"
GRAPH_DIR = "graph"
GRAPH_FILES = {  # which ratings are edges -> file, relative to OUT/
    "train": f"{GRAPH_DIR}/train.tfrecord.gz",
    "train_valid": f"{GRAPH_DIR}/train_valid.tfrecord.gz",
}
REJECTED_PREFIX = "rejected/graph"  # rejected/graph-00000-of-00001.jsonl
SUMMARY_KEY = "graph"  # the section of dataset.json

# Side-feature encodings (the column names are written to dataset.json).
AGE_SCALE = 50.0  # u.user age -> age / AGE_SCALE
GENDERS = ("F", "M")
# The 19 genre flags of ML-100K's u.item, in file order (u.genre).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)


def level_name(level: float) -> str:
    """``4.0`` -> ``4``, ``4.5`` -> ``4_5``: the level as it appears in edge set names."""
    text = f"{level:g}"
    if "e" in text:
        raise ValueError(f"rating level {level!r} has no short decimal form")
    return text.replace(".", "_").replace("-", "m")


def rating_edge_set(level: float) -> str:
    """The user -> item edge set of a rating level."""
    return f"rating_{level_name(level)}"


def reverse_edge_set(level: float) -> str:
    """The item -> user edge set of a rating level."""
    return f"rated_by_{level_name(level)}"


def edge_sets(levels: Sequence[float]) -> dict[str, tuple[str, str]]:
    """Edge set name -> (source node set, target node set), every level both ways, in level order."""
    sets: dict[str, tuple[str, str]] = {}
    for level in levels:
        sets[rating_edge_set(level)] = (NODE_USER, NODE_ITEM)
    for level in levels:
        sets[reverse_edge_set(level)] = (NODE_ITEM, NODE_USER)
    return sets


def graph_schema(levels: Sequence[float], side_dims: dict[str, int] | None = None):
    """The ``tfgnn.GraphSchema`` of a rating graph.

    Args:
      levels: the rating levels, ascending (one edge set each way per level).
      side_dims: node set -> length of its ``side`` feature vector (absent: no side features).
    """
    import tensorflow_gnn as tfgnn

    side_dims = side_dims or {}
    schema = tfgnn.GraphSchema()
    descriptions = {NODE_USER: "users of the train split; node i = vocabulary index i (user_index)",
                    NODE_ITEM: "items of the train split; node i = vocabulary index i (item_index)"}
    for node_set in NODE_SETS:
        schema.node_sets[node_set].description = descriptions[node_set]
        schema.node_sets[node_set].features[ID].dtype = 7  # DT_STRING
        schema.node_sets[node_set].features[ID].description = "raw id"
        if side_dims.get(node_set):
            side = schema.node_sets[node_set].features[SIDE]
            side.dtype = 1  # DT_FLOAT
            side.shape.dim.add().size = side_dims[node_set]
            side.description = "side features (columns in dataset.json graph.side_features); zeros when absent"
    for level in levels:
        for name, (source, target), what in (
            (rating_edge_set(level), (NODE_USER, NODE_ITEM), f"user rated item {level:g}"),
            (reverse_edge_set(level), (NODE_ITEM, NODE_USER), f"item was rated {level:g} by user (reverse)"),
        ):
            schema.edge_sets[name].source = source
            schema.edge_sets[name].target = target
            schema.edge_sets[name].description = what
    return schema
