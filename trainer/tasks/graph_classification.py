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

Every map of the input is deterministic, so a seed gives the same run
(``runner.run``'s own input maps are not: one reason the experiment drives
``runner.KerasTrainer`` itself).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_gnn as tfgnn
from google.protobuf import text_format
from tensorflow_gnn import runner

from schemas import lastfm as schema_names
from trainer import classification_metrics, data, plots
from trainer.tasks.base import Metric, Task, traced

EVAL_BATCH = 1024


def read_schema(data_dir: str):
    """The pipeline's ``tfgnn.GraphSchema`` (``graph_schema.pbtxt``)."""
    path = f"{data_dir}/{schema_names.SCHEMA_FILE}"
    if not tf.io.gfile.exists(path):
        raise data.DataError(f"{path} is missing: not a complete {data.PIPELINES['lastfm']} output")
    with tf.io.gfile.GFile(path) as handle:
        return text_format.Parse(handle.read(), tfgnn.GraphSchema())


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


def export_model(model, schema, export_dir: str) -> None:
    """SavedModel whose ``serving_default`` takes serialized GraphTensor tf.Examples.

    ``model``: the trained Keras model (merged scalar GraphTensor without label -> logits).
    Outputs ``probabilities`` [batch, classes], ``class`` [batch] and ``root_id`` [batch].
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

    if tf.io.gfile.exists(export_dir):
        tf.io.gfile.rmtree(export_dir)
    model.save(export_dir, signatures={"serving_default": serve}, include_optimizer=False)


class ServingExporter(runner.ModelExporter):
    """Writes ``export_model``'s SavedModel from a runner ``RunResult``."""

    def __init__(self, schema):
        self._schema = schema

    def save(self, run_result, export_dir: str):
        export_model(run_result.trained_model, self._schema, export_dir)


class GraphClassificationTask(Task):
    """Classifies the root user of each sampled subgraph (LastFM country)."""

    kind = "graph_classification"
    schema = "lastfm"
    pipeline = data.PIPELINES["lastfm"]
    metrics = (Metric("accuracy", "max"), Metric("macro_f1", "max"))
    default_monitor = "accuracy"

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

    def warm_up(self, model) -> None:
        graph, _ = next(iter(make_dataset(self.dataset.files("train"), self.graph_schema, 2)))
        model(graph)

    def _batches(self, split: str) -> list:
        """The parsed ``(graph, label)`` batches of ``split``, read once per job (evaluated every epoch)."""
        if split not in self._eval_batches:
            self._eval_batches[split] = list(make_dataset(self.dataset.files(split), self.graph_schema, EVAL_BATCH))
        return self._eval_batches[split]

    def predict(self, model, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(labels, predicted classes) of every example of ``split``, in file order."""
        # One traced function per model: batches differ in their node and edge counts, so
        # the trace is shape-relaxed instead of retraced per batch.
        logits = traced(model, "predict", lambda: tf.function(lambda graph: model(graph, training=False),
                                                                reduce_retracing=True))
        labels, predictions = [], []
        for graph, label in self._batches(split):
            predictions.append(np.argmax(logits(graph).numpy(), axis=-1))
            labels.append(label.numpy())
        if not labels:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(labels), np.concatenate(predictions)

    def evaluate(self, model, split: str) -> dict[str, Any]:
        """Accuracy, macro-F1, per-class precision/recall and the confusion matrix (``{}``: no examples)."""
        labels, predictions = self.predict(model, split)
        if labels.size == 0:
            return {}
        report = classification_metrics.classification_report(labels, predictions, self.num_classes)
        report["num_examples"] = int(labels.size)
        return report

    def export(self, model, export_dir: str) -> None:
        run_result = runner.RunResult(preprocess_model=None, base_model=self._base, trained_model=model)
        ServingExporter(self.graph_schema).save(run_result, export_dir)

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
        return written

    def _label_counts(self) -> dict[str, list[int]]:
        counts = {}
        for split in data.SPLITS:
            labels = [label.numpy() for _, label in make_dataset(self.dataset.files(split), self.graph_schema, 4096)]
            flat = np.concatenate(labels) if labels else np.zeros(0, np.int64)
            counts[split] = np.bincount(flat, minlength=self.num_classes).tolist()
        return counts
