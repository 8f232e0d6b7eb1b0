"""The rating graphs of a ratings output in TensorFlow: loading, checking, sampling, batches.

Owns the trainer side of ``beam_pipelines.rating_graph``'s output (names in
``schemas.rating_graph``): it checks the ``dataset.json`` ``graph`` section
against the ratings splits, parses ``graph/train`` and ``graph/train_valid``
into scalar ``tfgnn.GraphTensor``s with the features the model reads (node
``index`` and ``degree``, edge ``weight``), and makes the model's input:

* full graph: every batch of (user, item, rating) pairs comes with the whole
  graph (``FullGraphBatches``);
* sampled: every batch comes with a subgraph around its pairs
  (``SubgraphSampler``): the batch's users and items are the seeds, and for
  each seed and rating level up to ``fanout`` of its edges are drawn by TF-GNN's
  ``InMemUniformEdgesSampler`` (in memory, inside tf.data). A sampled edge's
  ``weight`` is ``degree_at_level / sampled_at_level`` of its receiver, so the
  sum over sampled messages estimates the full sum without bias. With
  ``fanout=None`` every edge is kept: the exact subgraph (evaluation, export).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_gnn as tfgnn
from tensorflow_gnn.experimental import sampler as tfgnn_sampler

from schemas import rating_graph as G
from schemas import ratings as F
from trainer import data
from trainer.models import gcmc

PIPELINE = "python -m beam_pipelines.rating_graph --data OUT"
PAIR_KEYS = (F.USER_INDEX, F.ITEM_INDEX, F.RATING)


def _rerun(data_dir: str) -> str:
    return f"run python -m beam_pipelines.rating_graph --data {data_dir}"


def graph_summary(info: data.DataInfo) -> dict[str, Any]:
    """The checked ``graph`` section of ``dataset.json``.

    Raises:
      data.DataError: no graph, or a graph built from other splits or vocabularies (stale).
    """
    summary = info.summary.get(G.SUMMARY_KEY)
    if not summary:
        raise data.DataError(f"{info.data_dir} has no rating graph (dataset.json has no '{G.SUMMARY_KEY}' section); "
                             f"{_rerun(info.data_dir)}")
    built = summary.get("built_from", {})
    expected = {"train_examples": info.rows("train"), "valid_examples": info.rows("valid")}
    stale = [k for k, v in expected.items() if built.get(k) != v]
    if stale or summary.get("nodes") != {G.NODE_USER: info.num_users, G.NODE_ITEM: info.num_items}:
        raise data.DataError(f"the rating graph of {info.data_dir} was built from other splits or vocabularies "
                             f"(stale after a pipeline rerun); {_rerun(info.data_dir)}")
    if not summary.get("accounting", {}).get("balanced"):
        raise data.DataError(f"{info.data_dir}/dataset.json: the graph's accounting does not add up; {_rerun(info.data_dir)}")
    for name in G.GRAPH_FILES.values():
        if not tf.io.gfile.exists(f"{info.data_dir}/{name}"):
            raise data.DataError(f"{info.data_dir}/{name} is missing; {_rerun(info.data_dir)}")
    return summary


def read_schema(data_dir: str):
    """The rating graph's ``tfgnn.GraphSchema``."""
    return data.read_graph_schema(f"{data_dir}/{G.SCHEMA_FILE}", f"; {_rerun(data_dir)}")


def graph_spec(schema) -> tfgnn.GraphTensorSpec:
    """The schema's spec with node and edge sets in sorted order (variables are created in that order)."""
    spec = tfgnn.create_graph_spec_from_schema_pb(schema, indices_dtype=tf.int64)
    return tfgnn.GraphTensorSpec.from_piece_specs(
        context_spec=spec.context_spec,
        node_sets_spec={name: spec.node_sets_spec[name] for name in sorted(spec.node_sets_spec)},
        edge_sets_spec={name: spec.edge_sets_spec[name] for name in sorted(spec.edge_sets_spec)},
    )


def _count(indices: tf.Tensor, size) -> tf.Tensor:
    """How often each of ``0 .. size-1`` occurs in ``indices`` (float32)."""
    size = tf.cast(size, tf.int32)
    return tf.math.bincount(tf.cast(indices, tf.int32), minlength=size, maxlength=size, dtype=tf.float32)


def with_model_features(graph: tfgnn.GraphTensor) -> tfgnn.GraphTensor:
    """Adds what the model reads: node ``index`` (= position) and ``degree`` (all levels), edge ``weight`` 1."""
    degree = {name: tf.zeros([graph.node_sets[name].total_size], tf.float32) for name in G.NODE_SETS}
    for edge_set in graph.edge_sets.values():
        source = edge_set.adjacency.source_name
        degree[source] += _count(edge_set.adjacency.source, graph.node_sets[source].total_size)
    node_sets = {name: {**node_set.features, G.INDEX: tf.range(node_set.total_size, dtype=tf.int64),
                        G.DEGREE: degree[name]}
                 for name, node_set in graph.node_sets.items()}
    edge_sets = {name: {G.WEIGHT: tf.ones([edge_set.total_size], tf.float32)} for name, edge_set in graph.edge_sets.items()}
    return graph.replace_features(node_sets=node_sets, edge_sets=edge_sets)


@dataclasses.dataclass
class RatingGraphs:
    """The checked rating graphs of one ratings output (parsed when first used).

    Attributes:
      info: the ratings output.
      summary: the ``dataset.json`` ``graph`` section.
      model_info: what the model needs (levels, node counts, side dims, rating range).
    """

    info: data.DataInfo
    summary: dict[str, Any]
    model_info: gcmc.GraphInfo
    spec: tfgnn.GraphTensorSpec
    _graphs: dict[str, tfgnn.GraphTensor] = dataclasses.field(default_factory=dict)
    _samplers: dict[tuple[str, int | None], "SubgraphSampler"] = dataclasses.field(default_factory=dict)

    def graph(self, name: str) -> tfgnn.GraphTensor:
        """``train`` or ``train_valid``, with the model's features."""
        if name not in self._graphs:
            path = f"{self.info.data_dir}/{G.GRAPH_FILES[name]}"
            records = list(tf.data.TFRecordDataset(path, compression_type="GZIP").take(2))
            if len(records) != 1:
                raise data.DataError(f"{path} holds {len(records)} records, not one graph; {_rerun(self.info.data_dir)}")
            self._graphs[name] = with_model_features(tfgnn.parse_single_example(self.spec, records[0]))
        return self._graphs[name]

    def sampler(self, name: str, fanout: int | None) -> "SubgraphSampler":
        """A ``SubgraphSampler`` of graph ``name`` (``fanout`` None: every edge)."""
        if (name, fanout) not in self._samplers:
            self._samplers[(name, fanout)] = SubgraphSampler(self.graph(name), self.model_info.levels, fanout)
        return self._samplers[(name, fanout)]


def load(info: data.DataInfo) -> RatingGraphs:
    """The rating graphs of a checked ratings output.

    Raises:
      data.DataError: no graph, a stale one, or missing files (the message says what to run).
    """
    summary = graph_summary(info)
    schema = read_schema(info.data_dir)
    levels = tuple(float(v) for v in summary["levels"])
    side_dims = {name: int(s["dim"]) for name, s in summary.get("side_features", {}).items()}
    model_info = gcmc.GraphInfo(levels=levels, num_users=info.num_users, num_items=info.num_items,
                                side_dims=side_dims, rating_range=(info.rating_min, info.rating_max))
    return RatingGraphs(info=info, summary=summary, model_info=model_info, spec=graph_spec(schema))


class SubgraphSampler:
    """Subgraphs around batches of (user, item) pairs of one graph (see the module docstring).

    One TF-GNN ``InMemUniformEdgesSampler`` per edge set and direction: a seed
    user's incoming ``rated_by_<v>`` edges are its outgoing ``rating_<v>`` edges
    reversed, and the other way round for items.
    """

    def __init__(self, graph: tfgnn.GraphTensor, levels: Sequence[float], fanout: int | None, seed: int = 0):
        self.graph, self.levels, self.fanout = graph, tuple(levels), fanout
        self._samplers, self._level_degree = {}, {}
        for level in self.levels:
            for edge_set in (G.rating_edge_set(level), G.reverse_edge_set(level)):
                adjacency = graph.edge_sets[edge_set].adjacency
                source_size = graph.node_sets[adjacency.source_name].total_size
                degree = _count(adjacency.source, source_size)
                self._level_degree[edge_set] = degree
                size = fanout or max(1, int(tf.reduce_max(degree)) if source_size else 1)
                self._samplers[edge_set] = tfgnn_sampler.InMemUniformEdgesSampler(
                    source_size, adjacency.source, adjacency.target, sample_size=size, edge_set_name=edge_set,
                    seed=seed)
        self._node_features = {name: dict(graph.node_sets[name].features) for name in G.NODE_SETS}

    def __call__(self, users: tf.Tensor, items: tf.Tensor) -> tuple[tfgnn.GraphTensor, tf.Tensor, tf.Tensor]:
        """``[B]`` user and item node indices -> (subgraph, user positions, item positions) in the subgraph."""
        seed_users, user_position = tf.unique(tf.cast(users, tf.int64))
        seed_items, item_position = tf.unique(tf.cast(items, tf.int64))
        seeds = {G.NODE_USER: seed_users, G.NODE_ITEM: seed_items}
        # receiver node set -> [(edge set into it, senders, receivers, weights)] with global node indices
        sampled: dict[str, list] = {G.NODE_USER: [], G.NODE_ITEM: []}
        for level in self.levels:
            for outgoing, incoming, receiver in ((G.rating_edge_set(level), G.reverse_edge_set(level), G.NODE_USER),
                                                 (G.reverse_edge_set(level), G.rating_edge_set(level), G.NODE_ITEM)):
                edges = self._samplers[outgoing](tf.RaggedTensor.from_tensor(seeds[receiver][None, :]))
                receivers, senders = edges[tfgnn.SOURCE_NAME].values, edges[tfgnn.TARGET_NAME].values
                degree = tf.gather(self._level_degree[outgoing], receivers)
                taken = degree if self.fanout is None else tf.minimum(degree, float(self.fanout))
                sampled[receiver].append((incoming, senders, receivers, degree / tf.maximum(taken, 1.0)))
        # Nodes: the seeds first (so the positions above stay valid), then every sampled sender.
        nodes, index_of = {}, {}
        for node_set in G.NODE_SETS:
            senders = [s for edge_sets in sampled.values() for name, s, _, _ in edge_sets
                       if self.graph.edge_sets[name].adjacency.source_name == node_set]
            nodes[node_set], index_of[node_set] = tf.unique(tf.concat([seeds[node_set], *senders], axis=0))
        node_sets = {
            node_set: tfgnn.NodeSet.from_fields(
                sizes=tf.shape(nodes[node_set], out_type=tf.int64),
                features={name: (nodes[node_set] if name == G.INDEX else tf.gather(value, nodes[node_set]))
                          for name, value in self._node_features[node_set].items()})
            for node_set in G.NODE_SETS
        }
        edge_sets = {}
        for receiver, edge_list in sampled.items():
            sender_set = G.NODE_ITEM if receiver == G.NODE_USER else G.NODE_USER
            for name, senders, receivers, weights in edge_list:
                # Positions in the subgraph's node sets: tf.unique kept first occurrences in order.
                sender_pos = _positions(nodes[sender_set], senders)
                receiver_pos = _positions(nodes[receiver], receivers)
                edge_sets[name] = tfgnn.EdgeSet.from_fields(
                    sizes=tf.shape(senders, out_type=tf.int64), features={G.WEIGHT: weights},
                    adjacency=tfgnn.Adjacency.from_indices((sender_set, sender_pos), (receiver, receiver_pos)))
        graph = tfgnn.GraphTensor.from_pieces(node_sets=node_sets,
                                              edge_sets={name: edge_sets[name] for name in sorted(edge_sets)})
        return graph, user_position, item_position


def _positions(nodes: tf.Tensor, ids: tf.Tensor) -> tf.Tensor:
    """Where each of ``ids`` is in ``nodes`` (unique ids, every one of ``ids`` present)."""
    order = tf.argsort(nodes)
    return tf.gather(order, tf.searchsorted(tf.gather(nodes, order), ids))


def pair_batch(graph: tfgnn.GraphTensor, batch: dict[str, tf.Tensor]) -> dict[str, Any]:
    """A batch of parsed rating examples with the whole graph: positions are the node indices."""
    return {gcmc.GRAPH: graph, gcmc.USER_POSITION: batch[F.USER_INDEX], gcmc.ITEM_POSITION: batch[F.ITEM_INDEX],
            gcmc.RATING: batch[F.RATING]}


def sampled_batch(sampler: SubgraphSampler, batch: dict[str, tf.Tensor]) -> dict[str, Any]:
    """A batch of parsed rating examples with the subgraph around its pairs."""
    graph, users, items = sampler(batch[F.USER_INDEX], batch[F.ITEM_INDEX])
    return {gcmc.GRAPH: graph, gcmc.USER_POSITION: users, gcmc.ITEM_POSITION: items, gcmc.RATING: batch[F.RATING]}


def known_pairs(batch: dict[str, tf.Tensor], num_users: int, num_items: int) -> dict[str, tf.Tensor]:
    """The pairs of a batch whose user and item are both nodes (valid rows of the refit may have an OOV id)."""
    keep = (batch[F.USER_INDEX] < num_users) & (batch[F.ITEM_INDEX] < num_items)
    return {key: tf.boolean_mask(value, keep) for key, value in batch.items()}


class GraphBatches:
    """A ``runner.DatasetProvider`` of shuffled rating pairs, each batch with its graph (whole or sampled).

    Each input pipeline reads its own shards, as for MF. Pairs with an id that is no
    node (only valid rows, in the refit) are left out: there is nothing to encode them from.

    * full graph: the pipeline's pairs are parsed once into memory (``memory_pairs``;
      3 numbers a row, far less than the graph every batch carries) and every epoch is
      a fresh permutation of them (``pair_dataset``). Parsing the gzip TFRecords again
      for every full-batch step cost about as much as the step itself on ML-100K.
    * sampled: streamed from the shards (``data.parsed_dataset``, shuffle buffer), for
      releases whose pairs are many.
    """

    def __init__(self, graphs: RatingGraphs, graph_name: str, splits: Sequence[str], per_replica_batch: int, *,
                 seed: int, shuffle_buffer: int, fanout: int | None):
        self._graphs, self._graph_name, self._fanout = graphs, graph_name, fanout
        self._files = [f for split in splits for f in graphs.info.files(split)]
        self._batch, self._seed, self._buffer = per_replica_batch, seed, shuffle_buffer
        self._sampled = fanout is not None

    def get_dataset(self, context: tf.distribute.InputContext) -> tf.data.Dataset:
        info = self._graphs.model_info
        if self._sampled:
            sampler = self._graphs.sampler(self._graph_name, self._fanout)
            batch_map = lambda batch: sampled_batch(sampler, known_pairs(batch, info.num_users, info.num_items))  # noqa: E731
            return data.parsed_dataset(
                self._files, self._graphs.info.feature_spec, self._batch, shuffle=True, shuffle_buffer=self._buffer,
                seed=self._seed, num_input_pipelines=context.num_input_pipelines,
                input_pipeline_id=context.input_pipeline_id, keys=PAIR_KEYS, batch_map=batch_map)
        graph = self._graphs.graph(self._graph_name)
        pairs = memory_pairs(self._graphs.info, self._files, context.num_input_pipelines, context.input_pipeline_id)
        return pair_dataset(pairs, self._batch, seed=self._seed,
                            batch_map=lambda batch: pair_batch(graph, known_pairs(batch, info.num_users, info.num_items)))


def memory_pairs(info: data.DataInfo, files: Sequence[str], num_input_pipelines: int = 1,
                 input_pipeline_id: int = 0) -> dict[str, np.ndarray]:
    """The (user, item, rating) rows of one input pipeline's shards, parsed once, in file order.

    The shards are split between input pipelines as ``data.parsed_dataset`` splits them
    (every ``num_input_pipelines``-th file), so workers train on disjoint rows.

    Raises:
      data.DataError: fewer shards than input pipelines.
    """
    return data.column_arrays(info, files, PAIR_KEYS, num_input_pipelines=num_input_pipelines,
                              input_pipeline_id=input_pipeline_id)


def pair_dataset(pairs: dict[str, np.ndarray], batch_size: int, *, seed: int, batch_map=None) -> tf.data.Dataset:
    """Endless batches of in-memory rating pairs: every epoch (one pass) a new permutation of all of them.

    Epoch ``e``'s order is a stateless function of ``(seed, e)`` (the same run after run);
    its last batch may be smaller, as in ``data.parsed_dataset``. ``batch_map`` is applied
    to every batch.
    """
    rows = int(next(iter(pairs.values())).shape[0])
    if rows == 0:
        raise data.DataError("no training examples in this input pipeline's shards")
    tensors = {key: tf.constant(value) for key, value in pairs.items()}
    batches = -(-rows // batch_size)

    def epoch(index):
        noise = tf.random.stateless_uniform([rows], seed=tf.stack([tf.constant(seed, tf.int64), index]))
        order = tf.argsort(noise, stable=True)
        shuffled = {key: tf.gather(value, order) for key, value in tensors.items()}
        return tf.data.Dataset.range(batches).map(
            lambda b: {key: value[b * batch_size:(b + 1) * batch_size] for key, value in shuffled.items()})

    dataset = tf.data.Dataset.range(np.iinfo(np.int64).max).flat_map(epoch)
    if batch_map is not None:
        dataset = dataset.map(batch_map, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def split_pairs(info: data.DataInfo, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user indices, item indices, ratings) of every example of ``split``, in file order."""
    return data.rating_arrays(info, split)
