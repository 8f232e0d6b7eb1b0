"""The LastFM social graph: node sets, edge sets and features of the sampled subgraphs.

Used by ``beam_pipelines.lastfm`` (writes GraphTensor examples and
``graph_schema.pbtxt``), ``trainer.models.hetero_gnn`` (reads the node sets and
edge sets), the graph classification task (label, serving schema) and
``trainer.gnn_predict`` (finds a user's subgraph by its root id).

Graph: node sets ``user`` and ``artist``; edge sets ``follows`` (user -> user,
both directions of every friendship), ``likes`` (user -> artist) and
``liked_by`` (artist -> user). Each example is one subgraph rooted at a
labelled user, node 0 of ``user``; edges point from the sampling node to the
sampled one, so messages towards the root flow to the edge's SOURCE.
"""
from __future__ import annotations

NODE_USER = "user"
NODE_ARTIST = "artist"
EDGE_FOLLOWS = "follows"
EDGE_LIKES = "likes"
EDGE_LIKED_BY = "liked_by"
EDGE_SETS = {  # name -> (source node set, target node set)
    EDGE_FOLLOWS: (NODE_USER, NODE_USER),
    EDGE_LIKES: (NODE_USER, NODE_ARTIST),
    EDGE_LIKED_BY: (NODE_ARTIST, NODE_USER),
}
# edge set -> node set that receives its messages towards the root (the edge's source)
RECEIVER = {name: source for name, (source, _) in EDGE_SETS.items()}
ID = "#id"  # node feature: the raw node id (string)
LABEL = "label"  # context feature: the root user's class
ROOT_ID = "root_id"  # context feature: the root user's raw id
LABEL_HINT = "label_hint"  # user feature: the class of train users, num_classes ("unknown") otherwise
# tf.Example keys of the context features (TF-GNN's "context/<name>" encoding)
CONTEXT_LABEL_KEY = f"context/{LABEL}"
CONTEXT_ROOT_ID_KEY = f"context/{ROOT_ID}"
SCHEMA_FILE = "graph_schema.pbtxt"


def graph_schema(num_classes: int, label_hints: bool):
    """The ``tfgnn.GraphSchema`` of the sampled subgraphs.

    Args:
      num_classes: number of classes of the label (the hint vocabulary is this + "unknown").
      label_hints: whether user nodes carry ``label_hint``.
    """
    import tensorflow_gnn as tfgnn

    schema = tfgnn.GraphSchema()
    schema.context.features[LABEL].dtype = 9  # DT_INT64
    schema.context.features[LABEL].description = f"class of the root user, 0..{num_classes - 1}"
    schema.context.features[ROOT_ID].dtype = 7  # DT_STRING
    schema.context.features[ROOT_ID].description = "id of the root (seed) user; node 0 of the user node set"
    for node_set in (NODE_USER, NODE_ARTIST):
        schema.node_sets[node_set].features[ID].dtype = 7
    if label_hints:
        hint = schema.node_sets[NODE_USER].features[LABEL_HINT]
        hint.dtype = 9
        hint.description = f"class of train users; {num_classes} (unknown) for other users and the root itself"
    for name, (source, target) in EDGE_SETS.items():
        schema.edge_sets[name].source = source
        schema.edge_sets[name].target = target
    schema.node_sets[NODE_USER].description = "LastFM users; the root is node 0"
    schema.node_sets[NODE_ARTIST].description = "artists liked by users (empty without --features)"
    return schema


def serving_schema(schema):
    """The schema without the label: what the SavedModel parses (requests carry no label)."""
    import tensorflow_gnn as tfgnn

    reduced = tfgnn.GraphSchema()
    reduced.CopyFrom(schema)
    del reduced.context.features[LABEL]
    return reduced
