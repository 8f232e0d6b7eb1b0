"""Trainer for the heterogeneous GNN on LastFM subgraphs (``beam_pipelines.lastfm`` output).

``python -m trainer.gnn_task --data OUT --job-dir JOB [--config YAML] [--set key=value ...]``

Owns the GNN fit loop: config layering (defaults -> YAML -> ``--set``; unknown
keys are errors, via ``trainer.config``'s helpers), tf.data input from the
sharded GraphTensor examples parsed with the pipeline's ``graph_schema.pbtxt``
(the label is taken out with TF-GNN's ``runner.ContextLabelFn`` before the model
sees the graph), the strategy from ``TF_CONFIG`` (``trainer.distribute``), the
fit with the epoch chosen on *valid* accuracy only, test evaluation,
``metrics.json``, plots and the SavedModel export (lead worker only).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time
from typing import Any, Sequence

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from trainer import config as config_lib  # noqa: E402  (after the Keras switch)

LABEL = "label"
TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 40,
    "batch_size": 128,  # per replica
    "learning_rate": 0.003,
    "seed": 0,
    "patience": 8,  # epochs without a better valid accuracy before stopping
    "shuffle_buffer": 20_000,
}


def resolve_config(yaml_path: str | None, overrides: Sequence[str]) -> dict[str, Any]:
    """``{"train": {...}, "hparams": {...}}`` from defaults, YAML and ``--set``.

    Raises:
      config_lib.ConfigError: unknown sections or keys, or invalid values.
    """
    import yaml

    from trainer.models import hetero_gnn

    layers = []
    if yaml_path:
        import tensorflow as tf

        if not tf.io.gfile.exists(yaml_path):
            raise config_lib.ConfigError(f"config file {yaml_path} does not exist")
        with tf.io.gfile.GFile(yaml_path) as handle:
            layers.append(yaml.safe_load(handle) or {})
    layers.append(config_lib.parse_overrides(overrides))
    defaults = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(hetero_gnn.Config()).items()}
    resolved = {"train": copy.deepcopy(TRAIN_DEFAULTS), "hparams": defaults}
    for layer in layers:
        unknown = sorted(set(layer) - set(resolved))
        if unknown:
            raise config_lib.ConfigError(f"unknown section(s) {', '.join(unknown)}; valid: hparams, train")
        for section in resolved:
            config_lib._merge_section(resolved[section], layer.get(section) or {}, section)  # noqa: SLF001
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


def split_files(data: str, split: str) -> list[str]:
    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(os.path.join(data, split, "part-*.tfrecord.gz")))
    if not files:
        raise FileNotFoundError(f"no {split} shards under {data}/{split}/")
    return files


def make_dataset(data: str, split: str, schema, batch_size: int, *, shuffle: bool, seed: int, shuffle_buffer: int = 20_000):
    """Batched ``(GraphTensor without label, label)`` pairs of one split."""
    import tensorflow as tf
    import tensorflow_gnn as tfgnn
    from tensorflow_gnn import runner

    spec = tfgnn.create_graph_spec_from_schema_pb(schema)
    label_fn = runner.ContextLabelFn(LABEL)
    files = split_files(data, split)
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").cache()
    if shuffle:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size).map(lambda s: tfgnn.parse_example(spec, s), num_parallel_calls=tf.data.AUTOTUNE)

    def split_label(graph):
        graph, label = label_fn(graph)
        return graph, tf.reshape(label, [-1])  # context field [batch, 1] -> [batch]

    return dataset.map(split_label).prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------- export
def export_model(model, schema, export_dir: str) -> None:
    """SavedModel whose ``serving_default`` takes serialized GraphTensor tf.Examples.

    Outputs ``probabilities`` [batch, classes], ``class`` [batch] and ``root_id`` [batch].
    """
    import tensorflow as tf
    import tensorflow_gnn as tfgnn

    spec = tfgnn.create_graph_spec_from_schema_pb(serving_schema(schema))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(examples):
        graph = tfgnn.parse_example(spec, examples)
        probabilities = tf.nn.softmax(model(graph, training=False), axis=-1)
        return {
            "probabilities": probabilities,
            "class": tf.argmax(probabilities, axis=-1),
            "root_id": tf.reshape(graph.context["root_id"], [-1]),
        }

    model.save(export_dir, signatures={"serving_default": serve}, include_optimizer=False)


# --------------------------------------------------------------------------- run
def run(data: str, job_dir: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Fits, evaluates on test, writes metrics.json, plots and the export. Returns the metrics."""
    import numpy as np
    import tensorflow as tf
    import yaml

    from trainer import classification_metrics, distribute, plots
    from trainer.models import hetero_gnn

    started = time.time()
    info = distribute.task_info()
    strategy = distribute.make_strategy(info)
    train_cfg = cfg["train"]
    model_cfg = hetero_gnn.config_from_dict(cfg["hparams"])
    tf.keras.utils.set_random_seed(int(train_cfg["seed"]))
    with tf.io.gfile.GFile(os.path.join(data, "dataset.json")) as handle:
        dataset_info = json.load(handle)
    num_classes = int(dataset_info["num_classes"])
    schema = read_schema(data)
    global_batch = int(train_cfg["batch_size"]) * strategy.num_replicas_in_sync

    train = make_dataset(data, "train", schema, global_batch, shuffle=True, seed=int(train_cfg["seed"]),
                         shuffle_buffer=int(train_cfg["shuffle_buffer"]))
    valid = make_dataset(data, "valid", schema, 1024, shuffle=False, seed=0)
    test = make_dataset(data, "test", schema, 1024, shuffle=False, seed=0)
    graph_spec = train.element_spec[0]
    with strategy.scope():
        model = hetero_gnn.build_model(model_cfg, graph_spec, num_classes)
        model.compile(
            optimizer=tf.keras.optimizers.Adam(float(train_cfg["learning_rate"])),
            loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )
    # The epoch is chosen on valid accuracy only; test is touched once, after.
    stop = tf.keras.callbacks.EarlyStopping(
        monitor="val_accuracy", mode="max", patience=int(train_cfg["patience"]), restore_best_weights=True
    )
    fit_started = time.time()
    history = model.fit(train, validation_data=valid, epochs=int(train_cfg["epochs"]), callbacks=[stop], verbose=2)
    fit_seconds = time.time() - fit_started
    best_epoch = int(np.argmax(history.history["val_accuracy"])) + 1

    def predict(dataset):
        labels, predictions = [], []
        for graph, label in dataset:
            predictions.append(np.argmax(model(graph, training=False).numpy(), axis=-1))
            labels.append(label.numpy())
        return np.concatenate(labels), np.concatenate(predictions)

    valid_report = classification_metrics.classification_report(*predict(valid), num_classes)
    test_labels, test_predictions = predict(test)
    test_report = classification_metrics.classification_report(test_labels, test_predictions, num_classes)
    metrics = {
        "model": "hetero_gnn",
        "test": {k: v for k, v in test_report.items()},
        "valid": {"accuracy": valid_report["accuracy"], "macro_f1": valid_report["macro_f1"]},
        "selection": {"rule": "best epoch by valid accuracy (EarlyStopping, restore_best_weights)",
                      "best_epoch": best_epoch, "epochs_run": len(history.history["loss"])},
        "config": cfg,
        "examples": dataset_info["counts"]["examples"],
        "timings": {"fit_seconds": round(fit_seconds, 2), "total_seconds": round(time.time() - started, 2)},
    }
    if info.is_lead:
        tf.io.gfile.makedirs(os.path.join(job_dir, "plots"))
        export_model(model, schema, os.path.join(job_dir, "export"))
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
        plots.loss_curves({k: v for k, v in history.history.items()}, os.path.join(job_dir, "plots", "loss.png"),
                          f"hetero GNN (best epoch {best_epoch} on valid)")
    return metrics


def _label_counts(data: str, schema, num_classes: int) -> dict[str, list[int]]:
    import numpy as np

    counts = {}
    for split in ("train", "valid", "test"):
        labels = np.concatenate([label.numpy() for _, label in make_dataset(data, split, schema, 4096, shuffle=False, seed=0)])
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
    test = metrics["test"]
    print(f"gnn_task: test accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f} "
          f"(valid {metrics['valid']['accuracy']:.4f}); best epoch {metrics['selection']['best_epoch']}; "
          f"{metrics['timings']['total_seconds']} s; outputs in {args.job_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
