"""Rating prediction on the bipartite rating graph (``gcmc``): inputs, exact evaluation, export.

Data: a ratings output (``beam_pipelines.movielens``) with its rating graph
(``beam_pipelines.rating_graph``); the examples, their splits and vocabularies
are the ones MF and Bayesian MF use, so all three are scored on the same rows.

Which ratings are edges (message passing) when:

* training and ``valid``: the train graph (``graph/train``); the pairs trained
  on are the train examples, whose own edges are in the graph (as in the paper:
  the decoder reconstructs observed edges, node dropout regularises);
* ``test`` and the export: the train + valid graph (``graph/train_valid``):
  every rating known before test is used, as DGL's GCMC does; with
  ``train.refit`` the refit model also trains on it.

Two ways to train, the same experiment, strategy and outputs:

* full graph (``hparams.sampled: false``, ML-100K/1M): every batch carries the
  whole graph; with ``train.batch_size`` >= the train examples a step is one
  full-batch epoch of the paper (set ``train.steps_per_epoch`` to evaluate valid
  every N steps);
* sampled (``hparams.sampled: true``, graphs too large to encode whole every
  step): every batch carries a subgraph of ``hparams.fanout`` edges per seed and
  level around its pairs (``trainer.rating_graph.SubgraphSampler``).

Evaluation: exact node states of every node (the whole graph at once, or, when
sampled, chunks of ``hparams.eval_batch_pairs`` nodes with all their edges),
then the decoder on every pair of the split; RMSE and MAE of the expected
rating (``trainer.metrics``). An id the pipeline never saw (the OOV index) gets
the mean state of its node set: the answer for "a typical user / item".

Export: ``trainer.export.RatingServer`` (``user_id, item_id -> rating,
known_user, known_item``, the tf.Transform layer inside) around
``gcmc.ServingGCMC``: the node states of the train + valid graph and the decoder.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from trainer import data, export, metrics
from trainer import rating_graph as graph_data
from trainer.tasks.base import Metric, Task, traced


class GraphRatingTask(Task):
    """RMSE/MAE rating prediction by a GNN on the rating graph of a ratings output."""

    kind = "graph_rating"
    supports_refit = True
    schema = "ratings"
    pipeline = f"{data.PIPELINES['ratings']} then {graph_data.PIPELINE}"
    metrics = (Metric("rmse", "min"), Metric("mae", "min"))
    default_monitor = "rmse"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._module = self.spec.module()
        self.info = data.load_data_info(self.data_dir, graph_data.PAIR_KEYS, model=self.spec.name)
        self.dataset = data.Dataset(self.info.data_dir, self.info.summary)
        self.graphs = graph_data.load(self.info)
        self._pairs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._train_graph = "train"

    @property
    def data(self) -> graph_data.RatingGraphs:
        return self.graphs

    @property
    def _fanout(self) -> int | None:
        return self.hparams.fanout if self.hparams.sampled else None

    def train_provider(self, per_replica_batch: int, splits: tuple[str, ...] = ("train",)) -> graph_data.GraphBatches:
        # The refit (train + valid pairs) passes messages over the train + valid graph too.
        # The experiment asks for the provider before it builds the model, which reads this.
        self._train_graph = "train_valid" if "valid" in splits else "train"
        return graph_data.GraphBatches(self.graphs, self._train_graph, splits, per_replica_batch, seed=self.train.seed,
                                       shuffle_buffer=self.train.shuffle_buffer, fanout=self._fanout)

    def build_model(self, global_batch_size: int):
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        return self._module.build_model(self.hparams, self.graphs.model_info, num_replicas=replicas)

    def warm_up(self, model) -> None:
        pairs = {key: tf.constant(value[:2]) for key, value in zip(graph_data.PAIR_KEYS, self._split_pairs("train"))}
        if self._fanout is None:
            model(graph_data.pair_batch(self.graphs.graph(self._train_graph), pairs))
        else:
            model(graph_data.sampled_batch(self.graphs.sampler(self._train_graph, 2), pairs))
        model.track_averages()

    # ------------------------------------------------------------------ evaluation
    def _split_pairs(self, split: str):
        if split not in self._pairs:
            self._pairs[split] = graph_data.split_pairs(self.info, split)
        return self._pairs[split]

    def node_states(self, model, graph_name: str) -> tuple[tf.Tensor, tf.Tensor]:
        """Exact final states of every user and item of a graph, plus one OOV row each (the mean state)."""
        if not self.hparams.sampled:
            graph = self.graphs.graph(graph_name)
            encode = traced(model, "encode", lambda: tf.function(
                lambda g: model.encode(g, training=False),
                input_signature=[graph.spec.relax(num_nodes=True, num_edges=True)]))
            users, items = encode(graph)
        else:
            sampler = self.graphs.sampler(graph_name, None)
            chunk_states = traced(model, f"chunk_states/{graph_name}", lambda: tf.function(
                lambda u, i: self._chunk_states(model, sampler, u, i),
                input_signature=[tf.TensorSpec([None], tf.int64)] * 2))
            info, chunk = self.graphs.model_info, self.hparams.eval_batch_pairs
            user_parts, item_parts = [], []
            for start in range(0, max(info.num_users, info.num_items), chunk):
                user_states, item_states = chunk_states(
                    tf.range(min(start, info.num_users), min(start + chunk, info.num_users), dtype=tf.int64),
                    tf.range(min(start, info.num_items), min(start + chunk, info.num_items), dtype=tf.int64))
                user_parts.append(user_states)
                item_parts.append(item_states)
            users, items = tf.concat(user_parts, 0), tf.concat(item_parts, 0)
        return (tf.concat([users, tf.reduce_mean(users, 0, keepdims=True)], 0),
                tf.concat([items, tf.reduce_mean(items, 0, keepdims=True)], 0))

    @staticmethod
    def _chunk_states(model, sampler, users, items):
        """Exact states of some users and items: encoded on the subgraph of all their edges."""
        subgraph, user_position, item_position = sampler(users, items)
        user_states, item_states = model.encode(subgraph, training=False)
        return tf.gather(user_states, user_position), tf.gather(item_states, item_position)

    def predict(self, model, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(predicted, actual) ratings of every example of ``split``, in file order."""
        users, items, ratings = self._split_pairs(split)
        user_states, item_states = self.node_states(model, "train" if split == "valid" else "train_valid")
        score = traced(model, "score", lambda: tf.function(
            lambda u, i: model.predict_rating(model.decoder.score(u, i)), reduce_retracing=True))
        projected = model.decoder(user_states)
        info, batch = self.graphs.model_info, self.train.eval_batch_size
        predicted = []
        for start in range(0, users.size, batch):
            u = np.minimum(users[start:start + batch], info.num_users)  # OOV -> the mean-state row
            i = np.minimum(items[start:start + batch], info.num_items)
            predicted.append(score(tf.gather(projected, u), tf.gather(item_states, i)).numpy())
        return (np.concatenate(predicted) if predicted else np.zeros(0, np.float32)), ratings

    def evaluate(self, model, split: str) -> dict[str, Any]:
        """RMSE and MAE over every row of ``split`` (``{}`` when it has none), with the averaged weights if any."""
        if not self.info.rows(split):
            return {}
        with model.averaged_weights():
            predicted, actual = self.predict(model, split)
        return {"rmse": metrics.rmse(predicted, actual), "mae": metrics.mae(predicted, actual),
                "num_examples": int(actual.size),
                "message_passing_graph": "train" if split == "valid" else "train_valid"}

    def export(self, model, export_dir: str) -> None:
        with model.averaged_weights():
            user_states, item_states = self.node_states(model, "train_valid")
            server = self._module.ServingGCMC(model, user_states, item_states)
        export.export_rating_model(server, self.info, export_dir)
