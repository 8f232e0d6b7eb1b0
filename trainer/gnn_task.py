"""Trainer for the heterogeneous GNN on LastFM subgraphs (``beam_pipelines.lastfm`` output).

``python -m trainer.gnn_task --data OUT --job-dir JOB [--config YAML] [--set key=value ...]``

is the same as ``python -m trainer.task --config configs/lastfm_hetero_gnn.yaml ...``
(``trainer.task`` hands every config whose ``model`` is ``hetero_gnn`` to ``run``
here, and adds ``--local-workers N``).

The fit is built from TF-GNN runner pieces: ``runner.RootNodeMulticlassClassification``
(label out of the graph with ``runner.ContextLabelFn``, root readout head, loss
and metrics), ``runner.KerasTrainer`` under the strategy from ``TF_CONFIG``
(``trainer.distribute``), our ``DatasetProvider`` of the sharded GraphTensor
examples (parsed with the pipeline's ``graph_schema.pbtxt``) and our
``ModelExporter`` (serving signature). This module adds the config layering
(defaults -> YAML -> ``--set``; unknown keys are errors, via ``trainer.config``'s
helpers), the epoch chosen on *valid* accuracy only (across relaunches), the
exact test evaluation, ``metrics.json`` and plots (lead worker only).

Where it writes (``trainer.experiment.JobPaths``; Vertex AI's variables win):
``JOB/export`` (or ``$AIP_MODEL_DIR``), ``JOB/backup`` (or ``$AIP_CHECKPOINT_DIR``),
``JOB/tensorboard`` (or ``$AIP_TENSORBOARD_LOG_DIR``); ``metrics.json``,
``config.resolved.yaml`` and ``plots/`` always under ``JOB``.

Preemption: ``BackupAndRestore`` saves the model and optimizer after every epoch
and a relaunch with the same directories resumes from the last saved epoch. The
epoch selection (best valid accuracy so far, its weights, the per-epoch history)
is saved beside it after every epoch (``backup/selection/``), so a resumed run
still picks the best epoch of the whole run and reports the whole history.

Several workers (MultiWorkerMirroredStrategy): each worker reads every shard and
keeps every N-th example (so any shard count works), the train and valid inputs
repeat and every epoch is ``ceil(examples / global batch)`` steps on every worker
(global batch = ``train.batch_size`` per replica x replicas). The per-epoch
valid accuracy that picks the epoch is then computed over all workers with a
few examples counted twice; the reported valid and test metrics are computed by
the lead after fit, over every example exactly once. Every worker saves the
model (saving runs collectives), non-leads into a temporary directory they delete.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Sequence

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from trainer import config as config_lib  # noqa: E402  (after the Keras switch)

MODEL = "hetero_gnn"  # the config's ``model`` (trainer.task routes it here)
LABEL = "label"
TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 40,
    "batch_size": 128,  # per replica
    "learning_rate": 0.003,
    "seed": 0,
    "patience": 8,  # epochs without a better valid accuracy before stopping
    "shuffle_buffer": 20_000,
}


def requested_model(yaml_path: str | None, overrides: Sequence[str]) -> str | None:
    """The ``model`` a config names (``--set model=...`` wins over the YAML), or None.

    Raises:
      config_lib.ConfigError: a missing or malformed YAML, or a malformed override.
    """
    model = None
    for layer in config_lib.load_layers(yaml_path, overrides):
        model = layer.get("model", model)
    return model


def resolve_config(yaml_path: str | None, overrides: Sequence[str]) -> dict[str, Any]:
    """``{"model": "hetero_gnn", "train": {...}, "hparams": {...}}`` from defaults, YAML and ``--set``.

    Raises:
      config_lib.ConfigError: unknown sections or keys, another model, or invalid values.
    """
    from trainer.models import hetero_gnn

    layers = config_lib.load_layers(yaml_path, overrides)
    defaults = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(hetero_gnn.Config()).items()}
    resolved = {"model": MODEL, "train": copy.deepcopy(TRAIN_DEFAULTS), "hparams": defaults}
    model = MODEL
    for layer in layers:
        unknown = sorted(set(layer) - set(resolved))
        if unknown:
            raise config_lib.ConfigError(f"unknown section(s) {', '.join(unknown)}; valid: hparams, model, train")
        model = layer.get("model", model)
    if model != MODEL:
        raise config_lib.ConfigError(f"model {model!r}: trainer.gnn_task trains {MODEL} only "
                                     "(the MovieLens models run with trainer.task)")
    config_lib.merge_layers(resolved, layers)
    try:
        hetero_gnn.config_from_dict(resolved["hparams"])
    except (TypeError, ValueError) as error:
        raise config_lib.ConfigError(f"hparams: {error}") from None
    return resolved


# --------------------------------------------------------------------------- data
def read_schema(data: str):
    import tensorflow as tf
    import tensorflow_gnn as tfgnn

    with tf.io.gfile.GFile(os.path.join(data, "graph_schema.pbtxt")) as handle:
        from google.protobuf import text_format

        return text_format.Parse(handle.read(), tfgnn.GraphSchema())


def serving_schema(schema):
    """The schema without the label: what the SavedModel parses (examples may lack a label)."""
    import tensorflow_gnn as tfgnn

    reduced = tfgnn.GraphSchema()
    reduced.CopyFrom(schema)
    del reduced.context.features[LABEL]
    return reduced


def graph_spec(schema):
    """The ``GraphTensorSpec`` of one example, with node sets and edge sets in sorted order.

    The schema's protobuf maps iterate in a different order in every process (upb), and
    the model creates its variables in node-set order: unsorted, two workers of one job
    create them in different orders (MultiWorkerMirroredStrategy then fails with a
    collective shape mismatch) and two single-process runs initialize differently.
    """
    import tensorflow_gnn as tfgnn

    spec = tfgnn.create_graph_spec_from_schema_pb(schema)
    return tfgnn.GraphTensorSpec.from_piece_specs(
        context_spec=spec.context_spec,
        node_sets_spec={name: spec.node_sets_spec[name] for name in sorted(spec.node_sets_spec)},
        edge_sets_spec={name: spec.edge_sets_spec[name] for name in sorted(spec.edge_sets_spec)},
    )


def split_files(data: str, split: str) -> list[str]:
    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(os.path.join(data, split, "part-*.tfrecord.gz")))
    if not files:
        raise FileNotFoundError(f"no {split} shards under {data}/{split}/")
    return files


def label_fn():
    """TF-GNN's context label function: takes ``label`` out of the graph before the model sees it."""
    from tensorflow_gnn import runner

    return runner.ContextLabelFn(LABEL)


def make_dataset(data: str, split: str, schema, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 shuffle_buffer: int = 20_000, num_shards: int = 1, shard_index: int = 0):
    """``(merged scalar GraphTensor without label, label [batch])`` batches of one split, in a fixed order.

    Parsed with the pipeline's schema, each batch merged into one graph of components
    (what TF-GNN's Keras layers take) and the label taken out by the task's
    ``runner.ContextLabelFn``. ``num_shards`` / ``shard_index``: keep every
    ``num_shards``-th example, from ``shard_index`` (one disjoint part per input
    pipeline, whatever the number of files). Every map is deterministic, so a
    seed gives the same run (``runner.run``'s own input maps are not: one reason
    this module drives ``runner.KerasTrainer`` itself).
    """
    import tensorflow as tf
    import tensorflow_gnn as tfgnn

    spec, take_label = graph_spec(schema), label_fn()
    dataset = tf.data.TFRecordDataset(split_files(data, split), compression_type="GZIP")
    if num_shards > 1:
        dataset = dataset.shard(num_shards, shard_index)
    dataset = dataset.cache()
    if shuffle:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

    def parse(serialized):
        graph, label = take_label(tfgnn.parse_example(spec, serialized).merge_batch_to_components())
        return graph, tf.reshape(label, [-1])  # context field [components, 1] -> [components]

    return dataset.batch(batch_size).map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def batches_provider(data: str, split: str, schema, global_batch: int, *, shuffle: bool, seed: int,
                     shuffle_buffer: int = 20_000):
    """A ``runner.DatasetProvider`` for ``runner.KerasTrainer``: per input pipeline, its own part of ``split``."""
    from tensorflow_gnn import runner

    class Batches(runner.DatasetProvider):
        def get_dataset(self, context):
            return make_dataset(data, split, schema, context.get_per_replica_batch_size(global_batch),
                                shuffle=shuffle, seed=seed, shuffle_buffer=shuffle_buffer,
                                num_shards=context.num_input_pipelines, shard_index=context.input_pipeline_id)

    return Batches()


# --------------------------------------------------------------------------- epoch selection
def best_epoch_callback(state_dir: str, patience: int, is_lead: bool, monitor: str):
    """A Keras callback: early stopping on ``monitor`` (higher is better) that survives a relaunch.

    ``tf.keras.callbacks.EarlyStopping(restore_best_weights=True)`` keeps the best
    weights and the history in memory only, so after a preemption the resumed run
    would choose among the epochs after the restart. This one also writes its state
    (per-epoch logs, best epoch, best weights) to ``state_dir`` after every epoch
    (lead only; atomically, by rename) and loads it at the start of a run when it is
    there. Put it *after* ``BackupAndRestore`` in the callback list: the backup is
    written first, so a kill between the two writes loses that epoch's log line,
    never makes the selection point to an epoch the backup does not have. The state
    is deleted at the end of a finished fit, as the backup is.

    Every worker keeps the same state (the valid metric is reduced over workers);
    non-leads read the lead's file on a relaunch (the job directories are shared).
    """
    import io

    import numpy as np
    import tensorflow as tf

    state_json = f"{state_dir}/state.json"
    weights_npz = f"{state_dir}/best_weights.npz"

    def write_atomically(path: str, payload: bytes):
        with tf.io.gfile.GFile(path + ".tmp", "wb") as handle:
            handle.write(payload)
        tf.io.gfile.rename(path + ".tmp", path, overwrite=True)

    class BestValidEpoch(tf.keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.records: dict[int, dict[str, float]] = {}  # 1-based epoch -> logs
            self.best, self.best_epoch, self.best_weights = -np.inf, 0, None
            self.resumed_from = 0
            if tf.io.gfile.exists(state_json) and tf.io.gfile.exists(weights_npz):
                with tf.io.gfile.GFile(state_json) as handle:
                    state = json.load(handle)
                with tf.io.gfile.GFile(weights_npz, "rb") as handle:
                    stored = np.load(io.BytesIO(handle.read()))
                    self.best_weights = [stored[f"w{i}"] for i in range(len(stored.files))]
                self.records = {int(k): v for k, v in state["records"].items()}
                self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])
            self._first_epoch = True

        def on_epoch_begin(self, epoch, logs=None):
            if self._first_epoch:  # BackupAndRestore has set where this run starts
                self.resumed_from, self._first_epoch = epoch, False

        def on_epoch_end(self, epoch, logs=None):
            logs = {k: float(v) for k, v in (logs or {}).items()}
            number = epoch + 1
            self.records[number] = logs
            improved = logs.get(monitor, -np.inf) > self.best
            if improved:
                self.best, self.best_epoch, self.best_weights = logs[monitor], number, self.model.get_weights()
            if is_lead:
                tf.io.gfile.makedirs(state_dir)
                if improved:
                    buffer = io.BytesIO()
                    np.savez(buffer, **{f"w{i}": w for i, w in enumerate(self.best_weights)})
                    write_atomically(weights_npz, buffer.getvalue())
                state = {"records": self.records, "best": self.best, "best_epoch": self.best_epoch}
                write_atomically(state_json, json.dumps(state).encode())
            if number - self.best_epoch >= patience:
                self.model.stop_training = True

        def on_train_end(self, logs=None):
            if self.best_weights is not None:
                self.model.set_weights(self.best_weights)
            if is_lead and tf.io.gfile.exists(state_dir):
                tf.io.gfile.rmtree(state_dir)

        def history(self) -> dict[str, list[float]]:
            """The whole run's logs, epoch by epoch (``epoch`` is 1-based; a lost epoch is absent)."""
            epochs = sorted(self.records)
            names = sorted({name for record in self.records.values() for name in record})
            table = {"epoch": epochs}
            table.update({name: [self.records[e].get(name, float("nan")) for e in epochs] for name in names})
            return table

    return BestValidEpoch()


# --------------------------------------------------------------------------- export
def export_model(model, schema, export_dir: str) -> None:
    """SavedModel whose ``serving_default`` takes serialized GraphTensor tf.Examples.

    ``model``: the trained Keras model (merged scalar GraphTensor without label -> logits).
    Outputs ``probabilities`` [batch, classes], ``class`` [batch] and ``root_id`` [batch].
    """
    import tensorflow as tf
    import tensorflow_gnn as tfgnn

    spec = graph_spec(serving_schema(schema))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(examples):
        graph = tfgnn.parse_example(spec, examples)
        probabilities = tf.nn.softmax(model(graph.merge_batch_to_components(), training=False), axis=-1)
        return {
            "probabilities": probabilities,
            "class": tf.argmax(probabilities, axis=-1),
            "root_id": tf.reshape(graph.context["root_id"], [-1]),
        }

    model.save(export_dir, signatures={"serving_default": serve}, include_optimizer=False)


def serving_exporter(schema):
    """A ``runner.ModelExporter`` writing ``export_model``'s SavedModel.

    Ours rather than ``runner.KerasModelExporter``: that one exports the trained
    model's own call signature (logits from a parsed GraphTensor); users here send
    serialized examples and want probabilities, the class and the root id back.
    """
    from tensorflow_gnn import runner

    class ServingExporter(runner.ModelExporter):
        def save(self, run_result, export_dir: str):
            export_model(run_result.trained_model, schema, export_dir)

    return ServingExporter()


# --------------------------------------------------------------------------- run
VALID_BATCH = 1024  # the exact evaluation after fit
MONITOR = "val_sparse_categorical_accuracy"  # the task's accuracy metric on valid: picks the epoch


def run(data: str, job_dir: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Fits, evaluates on test, writes metrics.json, plots and the export. Returns the metrics.

    Under several workers every worker must call this; only the lead evaluates and
    writes (the others return the metrics without ``valid`` / ``test`` and ``lead`` False).
    """
    import numpy as np
    import tensorflow as tf
    import yaml

    from trainer import classification_metrics, distribute, plots
    from trainer.experiment import JobPaths
    from trainer.models import hetero_gnn

    started = time.time()
    info = distribute.task_info()
    paths = JobPaths.from_env(job_dir, os.environ)
    strategy = distribute.make_strategy(info)
    train_cfg = cfg["train"]
    model_cfg = hetero_gnn.config_from_dict(cfg["hparams"])
    tf.keras.utils.set_random_seed(int(train_cfg["seed"]))
    dataset_json = os.path.join(data, "dataset.json")
    if not tf.io.gfile.exists(dataset_json):
        raise FileNotFoundError(f"{dataset_json} does not exist (write --data with python -m beam_pipelines.lastfm)")
    with tf.io.gfile.GFile(dataset_json) as handle:
        dataset_info = json.load(handle)
    num_classes = int(dataset_info["num_classes"])
    examples = dataset_info["counts"]["examples"]
    schema = read_schema(data)
    replicas = strategy.num_replicas_in_sync
    global_batch = int(train_cfg["batch_size"]) * replicas
    steps_per_epoch = max(1, math.ceil(int(examples["train"]) / global_batch))  # one pass over train

    # TF-GNN runner pieces: the task (label out of the graph, root readout head, loss, metrics),
    # KerasTrainer (fit under the strategy: distributed inputs, repeats under several workers,
    # TensorBoard) and a ModelExporter. Not runner.run: its input maps are non-deterministic
    # (a seed would not give the same run). Around them stays what the runner does not do:
    # choosing the epoch on valid accuracy across a relaunch (best_epoch_callback), the exact
    # one-pass valid/test evaluation by the lead, metrics.json and plots.
    from tensorflow_gnn import runner

    task = runner.RootNodeMulticlassClassification(hetero_gnn.USER, num_classes=num_classes, label_fn=label_fn())
    selection = best_epoch_callback(f"{paths.backup}/selection", int(train_cfg["patience"]), info.is_lead,
                                    monitor=MONITOR)
    # Several workers must run the same number of steps: KerasTrainer then repeats both inputs.
    distributed = info.is_distributed
    trainer = runner.KerasTrainer(
        strategy=strategy,
        model_dir=paths.tensorboard,  # only TensorBoard summaries go here: its checkpoints and backup are off
        steps_per_epoch=steps_per_epoch if distributed else None,
        validation_steps=max(1, math.ceil(int(examples["valid"]) / global_batch)) if distributed else None,
        checkpoint_every_n_steps="never",  # its best checkpoint picks by val_loss and forgets the best on a relaunch
        restore_best_weights=False,  # best_epoch_callback restores
        backup_and_restore=False,  # its backup would run after `callbacks`; ours must run before the selection
        callbacks=[tf.keras.callbacks.BackupAndRestore(paths.backup), selection],
        summarize_every_n_steps="epoch",
        verbose=2 if info.is_lead else 0,
    )
    input_spec = make_dataset(data, "valid", schema, 2).element_spec[0]
    base = {}

    def model_fn():
        inputs = tf.keras.layers.Input(type_spec=input_spec)
        base["model"] = hetero_gnn.build_model(model_cfg, input_spec, num_classes)
        model = tf.keras.Model(inputs, task.predict(base["model"](inputs)))
        model.compile(tf.keras.optimizers.Adam(float(train_cfg["learning_rate"])), loss=task.losses(),
                      metrics=task.metrics())
        return model

    fit_started = time.time()
    model = trainer.train(
        model_fn,
        batches_provider(data, "train", schema, global_batch, shuffle=True, seed=int(train_cfg["seed"]),
                         shuffle_buffer=int(train_cfg["shuffle_buffer"])),
        epochs=int(train_cfg["epochs"]),
        valid_ds_provider=batches_provider(data, "valid", schema, global_batch, shuffle=False, seed=0),
    )
    fit_seconds = time.time() - fit_started
    # Every worker exports (saving runs collectives); only the lead's copy is kept.
    export_dir = paths.export if info.is_lead else tempfile.mkdtemp(prefix="export-worker-")
    serving_exporter(schema).save(runner.RunResult(preprocess_model=None, base_model=base["model"], trained_model=model),
                                  export_dir)
    history = selection.history()
    best_epoch = selection.best_epoch
    metrics = {
        "model": MODEL,
        "selection": {"rule": "best epoch by valid accuracy (early stopping with the best weights restored)",
                      "best_epoch": best_epoch, "epochs_run": len(history["epoch"]),
                      "resumed_after_epoch": selection.resumed_from},
        "config": cfg,
        "examples": examples,
        "replicas": replicas,
        "global_batch_size": global_batch,
        "steps_per_epoch": steps_per_epoch,
        "history": history,
        "outputs": {"export": paths.export, "backup": paths.backup, "tensorboard": paths.tensorboard},
        "timings": {"fit_seconds": round(fit_seconds, 2), "total_seconds": round(time.time() - started, 2)},
        "lead": info.is_lead,
    }
    if not info.is_lead:
        shutil.rmtree(export_dir, ignore_errors=True)
        return metrics

    def predict(dataset):
        labels, predictions = [], []
        for graph, label in dataset:
            predictions.append(np.argmax(model(graph, training=False).numpy(), axis=-1))
            labels.append(label.numpy())
        return np.concatenate(labels), np.concatenate(predictions)

    # Exact: the one-pass datasets, every example once.
    valid_report = classification_metrics.classification_report(
        *predict(make_dataset(data, "valid", schema, VALID_BATCH)), num_classes)
    test_labels, test_predictions = predict(make_dataset(data, "test", schema, VALID_BATCH))
    test_report = classification_metrics.classification_report(test_labels, test_predictions, num_classes)
    metrics["test"] = {k: v for k, v in test_report.items()}
    metrics["valid"] = {"accuracy": valid_report["accuracy"], "macro_f1": valid_report["macro_f1"]}
    tf.io.gfile.makedirs(os.path.join(job_dir, "plots"))
    metrics["timings"]["total_seconds"] = round(time.time() - started, 2)
    with tf.io.gfile.GFile(os.path.join(job_dir, "metrics.json"), "w") as handle:
        handle.write(json.dumps(metrics, indent=2) + "\n")
    with tf.io.gfile.GFile(os.path.join(job_dir, "config.resolved.yaml"), "w") as handle:
        handle.write(yaml.safe_dump(cfg, sort_keys=False))
    names = [str(c) for c in range(num_classes)]
    plots.confusion_matrix(test_report["confusion_matrix"], names, os.path.join(job_dir, "plots", "confusion_matrix.png"),
                           f"LastFM test confusion (acc {test_report['accuracy']:.3f}, macro-F1 {test_report['macro_f1']:.3f})")
    plots.label_distribution(_label_counts(data, schema, num_classes), os.path.join(job_dir, "plots", "label_distribution.png"),
                             "LastFM users per class and split")
    plots.loss_curves({k: v for k, v in history.items() if k != "epoch"}, os.path.join(job_dir, "plots", "loss.png"),
                      f"hetero GNN (best epoch {best_epoch} on valid)", epochs=history["epoch"])
    return metrics


def summary_line(metrics: dict[str, Any], job_dir: str) -> str:
    """One line for the console: the lead's test/valid results, or what a non-lead worker did."""
    selection = metrics["selection"]
    if not metrics.get("lead", True):
        return (f"fit done ({selection['epochs_run']} epochs, best {selection['best_epoch']}); "
                f"not lead: metrics, plots and export are written by the lead")
    test = metrics["test"]
    return (f"test accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f} "
            f"(valid {metrics['valid']['accuracy']:.4f}); best epoch {selection['best_epoch']}; "
            f"{metrics['timings']['total_seconds']} s; outputs in {job_dir}")


def _label_counts(data: str, schema, num_classes: int) -> dict[str, list[int]]:
    import numpy as np

    counts = {}
    for split in ("train", "valid", "test"):
        labels = np.concatenate([label.numpy() for _, label in make_dataset(data, split, schema, 4096)])
        counts[split] = np.bincount(labels, minlength=num_classes).tolist()
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.gnn_task", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="beam_pipelines.lastfm output directory")
    parser.add_argument("--job-dir", required=True)
    parser.add_argument("--config", help="YAML with sections train / hparams")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value (repeatable)")
    args = parser.parse_args(argv)
    try:
        cfg = resolve_config(args.config, args.overrides)
    except config_lib.ConfigError as error:
        print(f"gnn_task: config error: {error}", file=sys.stderr)
        return 2
    metrics = run(args.data, args.job_dir, cfg)
    print(f"gnn_task: {summary_line(metrics, args.job_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
