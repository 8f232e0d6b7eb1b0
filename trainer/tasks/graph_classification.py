"""Graph node classification: the country of a LastFM user from its sampled subgraph (``hetero_gnn``).

Inputs: ``beam_pipelines.lastfm``'s GraphTensor examples (one seeded subgraph
per labelled user, parsed with the pipeline's ``graph_schema.pbtxt``), each
batch merged into one graph of components. Under several workers each input
pipeline keeps every N-th example (so any shard count works).

The head, loss and Keras metrics are TF-GNN's
``runner.RootNodeMulticlassClassification`` (root readout of the ``user`` node
set, a dense layer to ``num_classes`` logits, sparse categorical cross-entropy,
its label taken out of the graph by ``runner.ContextLabelFn``). Evaluation:
accuracy, macro-F1, per-class precision/recall and the confusion matrix
(``trainer.classification_metrics``) over every example of ``valid`` or
``test``. Export: a SavedModel whose ``serving_default`` takes serialized
GraphTensor examples and returns ``probabilities``, ``class`` and ``root_id``
(a ``runner.ModelExporter`` of ours: ``KerasModelExporter`` would export the
logits signature on parsed graphs).

With ``hparams.correct_and_smooth`` every evaluation post-processes the GNN's
predictions of *all* users (train, valid and test examples) with Correct and
Smooth over the pipeline's friendship list (``OUT/graph/``, train labels only;
``trainer.correct_and_smooth``), and with ``hparams.prior_correction`` divides
the result by the train class frequencies to a power (logit adjustment).
Valid/test are reported on the final predictions (the epoch chosen by
``train.monitor``, by default their accuracy); each
split's ``stages`` gives the accuracy and macro-F1 after each step (the GNN
alone, then each post-processing), all from the same fit; ``gnn_accuracy`` and
``gnn_macro_f1`` are the GNN alone's, so ``train.monitor: gnn_accuracy`` chooses
the epoch on the GNN's own valid accuracy and post-processes that epoch's model
(as the Correct and Smooth paper does). ``train.ensemble_size`` N: N fits with
seeds ``seed .. seed + N - 1`` whose class probabilities are averaged
(``ensemble``) before the post-processing; the export serves that average. Those predictions are
transductive (they belong to the users of this graph), so the export adds a
``by_user_id`` signature: user id -> the final class distribution, ``known``
false for a user not in the graph.
``plots/network.png`` draws the whole graph (force-directed) by true and by
predicted class, test errors marked.

Every map of the input is deterministic, so a seed gives the same run
(``runner.run``'s own input maps are not: one reason the experiment drives
``runner.KerasTrainer`` itself).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_gnn as tfgnn
from tensorflow_gnn import runner

from schemas import lastfm as schema_names
from trainer import classification_metrics, data, plots
from trainer import correct_and_smooth as cs
from trainer.tasks.base import Metric, Task, traced

EVAL_BATCH = 1024
NETWORK_PLOT_MAX_USERS = 50_000  # a layout of more users is a grey cloud and takes minutes
STAGE_GNN, STAGE_SMOOTH, STAGE_PRIOR = "gnn", "+ correct and smooth", "+ prior correction"


def read_schema(data_dir: str):
    """The pipeline's ``tfgnn.GraphSchema`` (``graph_schema.pbtxt``)."""
    return data.read_graph_schema(f"{data_dir}/{schema_names.SCHEMA_FILE}",
                                  f": not a complete {data.PIPELINES['lastfm']} output")


def graph_spec(schema):
    """The ``GraphTensorSpec`` of one example, with node sets and edge sets in sorted order.

    The schema's protobuf maps iterate in a different order in every process (upb), and
    the model creates its variables in node-set order: unsorted, two workers of one job
    create them in different orders (MultiWorkerMirroredStrategy then fails with a
    collective shape mismatch) and two single-process runs initialize differently.
    """
    spec = tfgnn.create_graph_spec_from_schema_pb(schema)
    return tfgnn.GraphTensorSpec.from_piece_specs(
        context_spec=spec.context_spec,
        node_sets_spec={name: spec.node_sets_spec[name] for name in sorted(spec.node_sets_spec)},
        edge_sets_spec={name: spec.edge_sets_spec[name] for name in sorted(spec.edge_sets_spec)},
    )


def label_fn():
    """TF-GNN's context label function: takes ``label`` out of the graph before the model sees it."""
    return runner.ContextLabelFn(schema_names.LABEL)


def make_dataset(files, schema, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 shuffle_buffer: int = 20_000, num_shards: int = 1, shard_index: int = 0) -> tf.data.Dataset:
    """``(merged scalar GraphTensor without label, label [batch])`` batches, in a fixed order.

    ``num_shards`` / ``shard_index``: keep every ``num_shards``-th example, from
    ``shard_index`` (one disjoint part per input pipeline, whatever the number of files).
    """
    spec, take_label = graph_spec(schema), label_fn()
    dataset = tf.data.TFRecordDataset(list(files), compression_type="GZIP")
    if num_shards > 1:
        dataset = dataset.shard(num_shards, shard_index)
    dataset = dataset.cache()
    if shuffle:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

    def parse(serialized):
        graph, label = take_label(tfgnn.parse_example(spec, serialized).merge_batch_to_components())
        return graph, tf.reshape(label, [-1])  # context field [components, 1] -> [components]

    return dataset.batch(batch_size).map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


class SubgraphBatches:
    """A ``runner.DatasetProvider`` of shuffled train subgraphs: per input pipeline, its own part."""

    def __init__(self, files, schema, per_replica_batch: int, *, seed: int, shuffle_buffer: int):
        self._files, self._schema, self._batch = files, schema, per_replica_batch
        self._seed, self._buffer = seed, shuffle_buffer

    def get_dataset(self, context: tf.distribute.InputContext) -> tf.data.Dataset:
        return make_dataset(self._files, self._schema, self._batch, shuffle=True, seed=self._seed,
                            shuffle_buffer=self._buffer, num_shards=context.num_input_pipelines,
                            shard_index=context.input_pipeline_id)


def read_friendships(data_dir: str, summary: dict[str, Any]) -> list[tuple[str, str]]:
    """Every friendship of the graph once, as (user id, user id), from the pipeline's ``graph/`` files.

    Raises:
      data.DataError: the output has no friendship list (written by an earlier pipeline version).
    """
    files = ((summary.get("graph") or {}).get(schema_names.EDGE_FOLLOWS) or {}).get("files")
    if not files or not all(tf.io.gfile.exists(f"{data_dir}/{name}") for name in files):
        raise data.DataError(f"{data_dir} has no friendship list (graph/); Correct and Smooth and the network plot "
                             f"propagate over it: rerun {data.PIPELINES['lastfm']}")
    pairs = []
    for name in files:
        with tf.io.gfile.GFile(f"{data_dir}/{name}") as handle:
            pairs.extend(tuple(json.loads(line)) for line in handle if line.strip())
    return pairs


@dataclasses.dataclass(frozen=True)
class UserTable:
    """The final class distribution of every user of the graph (the ``by_user_id`` signature).

    Attributes:
      ids: user ids.
      probabilities: [users, classes], rows summing to 1.
    """

    ids: list[str]
    probabilities: np.ndarray


def export_model(model, schema, export_dir: str, user_table: UserTable | None = None) -> None:
    """SavedModel whose ``serving_default`` takes serialized GraphTensor tf.Examples.

    ``model``: the trained Keras model (merged scalar GraphTensor without label -> logits).
    Outputs ``probabilities`` [batch, classes], ``class`` [batch] and ``root_id`` [batch].
    With ``user_table`` a second signature, ``by_user_id``, takes ``user_id`` [batch]
    strings and returns the table's ``probabilities``, ``class`` and ``known`` (false,
    probabilities 0, class -1, for an id not in the table).
    """
    spec = graph_spec(schema_names.serving_schema(schema))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(examples):
        graph = tfgnn.parse_example(spec, examples)
        probabilities = tf.nn.softmax(model(graph.merge_batch_to_components(), training=False), axis=-1)
        return {
            "probabilities": probabilities,
            "class": tf.argmax(probabilities, axis=-1),
            "root_id": tf.reshape(graph.context[schema_names.ROOT_ID], [-1]),
        }

    signatures = {"serving_default": serve}
    if user_table is not None:
        table_ids = np.asarray(user_table.ids, dtype=object).astype(bytes)
        table = np.asarray(user_table.probabilities, dtype=np.float32)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id")])
        def by_user_id(user_id):
            # An exact match against every id (the table is one graph's users, thousands): no
            # hash table resource to track through Keras' SavedModel, the ids are constants.
            matches = tf.equal(tf.strings.strip(user_id)[:, None], tf.constant(table_ids)[None, :])
            known = tf.reduce_any(matches, axis=1)
            rows = tf.gather(tf.constant(table), tf.argmax(tf.cast(matches, tf.int32), axis=1))
            probabilities = tf.where(known[:, None], rows, tf.zeros_like(rows))
            return {"probabilities": probabilities, "known": known,
                    "class": tf.where(known, tf.argmax(rows, axis=-1), tf.constant(-1, tf.int64))}

        signatures["by_user_id"] = by_user_id
    if tf.io.gfile.exists(export_dir):
        tf.io.gfile.rmtree(export_dir)
    model.save(export_dir, signatures=signatures, include_optimizer=False)


class ServingExporter(runner.ModelExporter):
    """Writes ``export_model``'s SavedModel from a runner ``RunResult``.

    ``user_table``: called with the trained model, returns the ``UserTable`` of the
    ``by_user_id`` signature (None: no such signature).
    """

    def __init__(self, schema, user_table=None):
        self._schema = schema
        self._user_table = user_table

    def save(self, run_result, export_dir: str):
        model = run_result.trained_model
        table = self._user_table(model) if self._user_table is not None else None
        export_model(model, self._schema, export_dir, user_table=table)


@dataclasses.dataclass(frozen=True)
class NodePredictions:
    """The predictions of every user of the graph, by node index.

    Attributes:
      ids: node index -> user id (the users with an example, then the rest of the graph's users).
      labels: [nodes] class of users with an example, -1 for the others.
      stages: step name -> [nodes, classes] scores after that step, in order: ``gnn`` (the
        GNN's probabilities, zeros for users without an example), then each post-processing.
      example_nodes: split -> the node index of each of its examples, in file order.
    """

    ids: list[str]
    labels: np.ndarray
    stages: dict[str, np.ndarray]
    example_nodes: dict[str, np.ndarray]

    @property
    def final(self) -> np.ndarray:
        """The scores the metrics read: those of the last stage."""
        return list(self.stages.values())[-1]

    def final_probabilities(self) -> np.ndarray:
        """``final`` as distributions: clipped at 0, each row scaled to sum 1 (uniform for a zero row)."""
        scores = np.clip(self.final, 0.0, None)
        totals = scores.sum(axis=1, keepdims=True)
        return np.divide(scores, totals, out=np.full_like(scores, 1.0 / scores.shape[1]), where=totals > 0)


class GraphClassificationTask(Task):
    """Classifies the root user of each sampled subgraph (LastFM country)."""

    kind = "graph_classification"
    schema = "lastfm"
    pipeline = data.PIPELINES["lastfm"]
    # gnn_*: the GNN's own predictions before any post-processing (= accuracy / macro_f1 without it);
    # train.monitor: gnn_accuracy chooses the epoch on them, and the post-processing is applied to that epoch.
    metrics = (Metric("accuracy", "max"), Metric("macro_f1", "max"),
               Metric("gnn_accuracy", "max"), Metric("gnn_macro_f1", "max"))
    default_monitor = "accuracy"
    supports_ensemble = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._module = self.spec.module()
        self.dataset = data.read_dataset(self.data_dir, schema=self.schema, model=self.spec.name)
        summary = self.dataset.summary
        if not isinstance(summary.get("num_classes"), int) or summary["num_classes"] < 2:
            raise data.DataError(f"{self.data_dir}/dataset.json has no valid num_classes; rerun {self.pipeline}")
        self.num_classes = int(summary["num_classes"])
        self.graph_schema = read_schema(self.data_dir)
        self._input_spec = make_dataset(self.dataset.files("valid"), self.graph_schema, 2).element_spec[0]
        self._base = None
        self._eval_batches: dict[str, list] = {}
        self._smooth = bool(self.hparams.correct_and_smooth)
        self._post_process = self._smooth or self.hparams.prior_correction > 0
        self._friendships = read_friendships(self.data_dir, summary) if self._smooth else None
        self._adjacency = None  # (node ids, normalized adjacency), built on first use

    def train_provider(self, per_replica_batch: int, splits: tuple[str, ...] = ("train",)) -> SubgraphBatches:
        return SubgraphBatches(self.dataset.files("train"), self.graph_schema, per_replica_batch,
                               seed=self.train.seed, shuffle_buffer=self.train.shuffle_buffer)

    def _runner_task(self):
        """TF-GNN's root-node classification task: label, head, loss and Keras metrics."""
        return runner.RootNodeMulticlassClassification(schema_names.NODE_USER, num_classes=self.num_classes,
                                                       label_fn=label_fn())

    def build_model(self, global_batch_size: int):
        task = self._runner_task()
        inputs = tf.keras.layers.Input(type_spec=self._input_spec)
        self._base = self._module.build_model(self.hparams, self._input_spec, self.num_classes)
        return tf.keras.Model(inputs, task.predict(self._base(inputs)))

    def compile(self, model, optimizer) -> None:
        task = self._runner_task()
        model.compile(optimizer, loss=task.losses(), metrics=task.metrics())

    def ensemble(self, models: list):
        """One Keras model whose class probabilities are the mean of ``models``' (same input, logits out).

        Its output is ``log(mean_i softmax(logits_i))``, so the softmax that evaluation and the
        export's ``serving_default`` apply gives exactly the averaged probabilities: the export
        serves the whole ensemble, and Correct and Smooth starts from the averaged distribution.
        """
        inputs = tf.keras.layers.Input(type_spec=self._input_spec)
        probabilities = [tf.keras.layers.Softmax()(member(inputs)) for member in models]
        return tf.keras.Model(inputs, tf.math.log(tf.keras.layers.Average()(probabilities)), name="ensemble")

    def warm_up(self, model) -> None:
        graph, _ = next(iter(make_dataset(self.dataset.files("train"), self.graph_schema, 2)))
        model(graph)

    def _batches(self, split: str) -> list:
        """The parsed ``(graph, label)`` batches of ``split``, read once per job (evaluated every epoch)."""
        if split not in self._eval_batches:
            self._eval_batches[split] = list(make_dataset(self.dataset.files(split), self.graph_schema, EVAL_BATCH))
        return self._eval_batches[split]

    def probabilities(self, model, split: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(root ids, labels, class probabilities) of every example of ``split``, in file order."""
        # One traced function per model: batches differ in their node and edge counts, so
        # the trace is shape-relaxed instead of retraced per batch.
        softmax = traced(model, "probabilities", lambda: tf.function(
            lambda graph: tf.nn.softmax(model(graph, training=False), axis=-1), reduce_retracing=True))
        ids, labels, probabilities = [], [], []
        for graph, label in self._batches(split):
            probabilities.append(softmax(graph).numpy())
            labels.append(label.numpy())
            ids.extend(i.decode() for i in tf.reshape(graph.context[schema_names.ROOT_ID], [-1]).numpy())
        if not labels:
            return [], np.zeros(0, np.int64), np.zeros((0, self.num_classes), np.float32)
        return ids, np.concatenate(labels), np.concatenate(probabilities)

    def predict(self, model, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(labels, predicted classes) of every example of ``split``, in file order (the final predictions)."""
        if self._post_process:
            nodes = self.node_predictions(model)
            index = nodes.example_nodes[split]
            return nodes.labels[index], np.argmax(nodes.final[index], axis=-1)
        _, labels, probabilities = self.probabilities(model, split)
        return labels, np.argmax(probabilities, axis=-1)

    def node_predictions(self, model) -> NodePredictions:
        """The GNN's predictions of every example, placed on the graph's nodes; then Correct and Smooth if enabled."""
        scored = {split: self.probabilities(model, split) for split in data.SPLITS}
        with_examples = [i for split in data.SPLITS for i in scored[split][0]]
        graph_users = sorted({u for pair in self._friendships or () for u in pair} - set(with_examples),
                             key=lambda u: (len(u), u))
        ids = with_examples + graph_users
        index = {user: i for i, user in enumerate(ids)}
        labels = np.full(len(ids), -1, np.int64)
        base = np.zeros((len(ids), self.num_classes))
        example_nodes = {}
        for split, (roots, split_labels, probabilities) in scored.items():
            nodes = np.array([index[u] for u in roots], np.int64)
            labels[nodes], base[nodes] = split_labels, probabilities
            example_nodes[split] = nodes
        stages = {STAGE_GNN: base}
        if self._smooth:
            if self._adjacency is None or self._adjacency[0] != ids:
                pairs = np.array([(index[a], index[b]) for a, b in self._friendships], np.int64)
                self._adjacency = (ids, cs.normalized_adjacency(pairs, len(ids)))
            known = np.zeros(len(ids), bool)
            known[example_nodes["train"]] = True
            settings = cs.Settings(correct_alpha=self.hparams.cs_correct_alpha,
                                   smooth_alpha=self.hparams.cs_smooth_alpha, iterations=self.hparams.cs_iterations)
            stages[STAGE_SMOOTH] = cs.correct_and_smooth(base, np.maximum(labels, 0), known, self._adjacency[1],
                                                         settings)
        if self.hparams.prior_correction > 0:
            # Logit adjustment: log p - tau log prior, kept as p / prior^tau (the same argmax, and
            # still non-negative weights for the exported distribution). Add-one counts: no class is 0.
            counts = np.bincount(labels[example_nodes["train"]], minlength=self.num_classes) + 1.0
            distribution = NodePredictions(ids, labels, stages, example_nodes).final_probabilities()
            stages[STAGE_PRIOR] = distribution / (counts / counts.sum()) ** self.hparams.prior_correction
        return NodePredictions(ids=ids, labels=labels, stages=stages, example_nodes=example_nodes)

    def evaluate(self, model, split: str) -> dict[str, Any]:
        """Accuracy, macro-F1, per-class precision/recall and the confusion matrix (``{}``: no examples).

        With post-processing (Correct and Smooth, prior correction): of the final predictions,
        plus ``stages``: the accuracy and macro-F1 after each step (``gnn``: the GNN alone).
        """
        if not self._post_process:
            labels, predictions = self.predict(model, split)
            stages = {}
            gnn = predictions
        else:
            nodes = self.node_predictions(model)
            index = nodes.example_nodes[split]
            labels = nodes.labels[index]
            stages = {name: np.argmax(scores[index], axis=-1) for name, scores in nodes.stages.items()}
            predictions = stages[list(stages)[-1]]
            gnn = stages[STAGE_GNN]
        if labels.size == 0:
            return {}
        report = classification_metrics.classification_report(labels, predictions, self.num_classes)
        report["num_examples"] = int(labels.size)
        alone = classification_metrics.classification_report(labels, gnn, self.num_classes)
        report["gnn_accuracy"], report["gnn_macro_f1"] = alone["accuracy"], alone["macro_f1"]
        if stages:
            report["stages"] = {}
            for name, predicted in stages.items():
                step = classification_metrics.classification_report(labels, predicted, self.num_classes)
                report["stages"][name] = {"accuracy": step["accuracy"], "macro_f1": step["macro_f1"]}
        return report

    def _user_table(self, model) -> UserTable | None:
        if not self._post_process:
            return None
        nodes = self.node_predictions(model)
        return UserTable(ids=nodes.ids, probabilities=nodes.final_probabilities())

    def export(self, model, export_dir: str) -> None:
        run_result = runner.RunResult(preprocess_model=None, base_model=self._base, trained_model=model)
        ServingExporter(self.graph_schema, self._user_table).save(run_result, export_dir)

    def plots(self, model, plots_dir: str, result: dict[str, Any]) -> list[str]:
        written = []
        test = result.get("test") or {}
        if "confusion_matrix" in test:
            path = f"{plots_dir}/confusion_matrix.png"
            plots.confusion_matrix(test["confusion_matrix"], [str(c) for c in range(self.num_classes)], path,
                                   f"{self.spec.name} test confusion (acc {test['accuracy']:.3f}, "
                                   f"macro-F1 {test['macro_f1']:.3f})")
            written.append(path)
        path = f"{plots_dir}/label_distribution.png"
        plots.label_distribution(self._label_counts(), path, "users per class and split")
        written.append(path)
        network = self._network_plot(model, f"{plots_dir}/network.png")
        if network:
            written.append(network)
        return written

    def _network_plot(self, model, path: str) -> str | None:
        """``network.png``: the whole friendship graph, force-directed, by true and by predicted class."""
        if self._friendships is None:
            try:  # read here too without Correct and Smooth (it also puts users without an example on the plot)
                self._friendships = read_friendships(self.data_dir, self.dataset.summary)
            except data.DataError as error:
                logging.warning("no network plot: %s", error)
                return None
        friendships = self._friendships
        nodes = self.node_predictions(model)
        if len(nodes.ids) > NETWORK_PLOT_MAX_USERS:
            logging.warning("no network plot: %d users > %d", len(nodes.ids), NETWORK_PLOT_MAX_USERS)
            return None
        index = {user: i for i, user in enumerate(nodes.ids)}
        pairs = np.array([(index[a], index[b]) for a, b in friendships if a in index and b in index], np.int64)
        positions = plots.force_directed_layout(pairs, len(nodes.ids), seed=self.train.seed)
        predicted = np.argmax(nodes.final, axis=-1)
        predicted[(nodes.labels < 0) & ~nodes.final.any(axis=-1)] = -1  # nothing reached it: no prediction
        test_errors = np.zeros(len(nodes.ids), bool)
        test = nodes.example_nodes["test"]
        test_errors[test] = predicted[test] != nodes.labels[test]
        what = " + ".join(["GNN"] + ["Correct and Smooth"] * self._smooth
                          + [f"prior correction {self.hparams.prior_correction:g}"] * (self.hparams.prior_correction > 0))
        return plots.network(positions, pairs, nodes.labels, predicted, test_errors, path, num_classes=self.num_classes,
                             title=f"LastFM users ({len(nodes.ids)}) and friendships ({len(pairs)}), "
                                   f"force-directed; {what}: {int(test_errors.sum())} test errors of {test.size}")

    def _label_counts(self) -> dict[str, list[int]]:
        counts = {}
        for split in data.SPLITS:
            labels = [label.numpy() for _, label in make_dataset(self.dataset.files(split), self.graph_schema, 4096)]
            flat = np.concatenate(labels) if labels else np.zeros(0, np.int64)
            counts[split] = np.bincount(flat, minlength=self.num_classes).tolist()
        return counts
