"""tf.data input from a pipeline output directory.

Owns reading ``dataset.json`` and the tf.Transform output, checking that the
data has what a model needs, and building the sharded, shuffled, batched,
parsed and prefetched datasets. Features are parsed with the pipeline's
``transformed_metadata``; nothing here re-declares the schema.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Callable, Sequence

import tensorflow as tf

from schemas import ratings as F


class DataError(ValueError):
    """The data directory cannot be used; the message says why and what to run."""


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about the data it trains on."""

    data_dir: str
    summary: dict[str, Any]
    feature_spec: dict[str, Any]
    num_users: int
    num_items: int
    rating_mean: float
    rating_min: float
    rating_max: float

    @property
    def train_rows(self) -> int:
        return int(self.summary["counts"]["train_rows"])

    @property
    def eval_rows(self) -> int:
        return int(self.summary["counts"]["eval_rows"])

    def files(self, split: str) -> list[str]:
        return sorted(tf.io.gfile.glob(f"{self.data_dir}/{split}/part-*.tfrecord.gz"))

    def transform_output(self):
        import tensorflow_transform as tft

        return tft.TFTransformOutput(self.data_dir)


def load_data_info(data_dir: str, required_features: Sequence[str] = ()) -> DataInfo:
    """Reads and checks a pipeline output directory.

    Args:
      data_dir: the pipeline's ``--output`` (local or gs://).
      required_features: transformed feature keys the model reads.

    Raises:
      DataError: missing directory, dataset.json, transform output or shards,
        no training rows, or features the model needs but the data lacks.
    """
    import tensorflow_transform as tft

    data_dir = data_dir.rstrip("/")
    if not tf.io.gfile.isdir(data_dir):
        raise DataError(f"data directory {data_dir} does not exist; run a pipeline first (python -m beam_pipelines.movielens ...)")
    summary_path = f"{data_dir}/dataset.json"
    if not tf.io.gfile.exists(summary_path):
        raise DataError(f"{summary_path} is missing: {data_dir} is not a finished pipeline output")
    with tf.io.gfile.GFile(summary_path) as handle:
        summary = json.load(handle)
    if not tf.io.gfile.isdir(f"{data_dir}/transformed_metadata"):
        raise DataError(f"{data_dir}/transformed_metadata is missing: not a tf.Transform pipeline output")
    transform_output = tft.TFTransformOutput(data_dir)
    spec = transform_output.transformed_feature_spec()
    missing = [key for key in required_features if key not in spec]
    if missing:
        raise DataError(
            f"schema mismatch: {data_dir} lacks feature(s) {', '.join(missing)} that the model needs "
            f"(it has {', '.join(sorted(spec))})"
        )
    if not tf.io.gfile.glob(f"{data_dir}/train/part-*.tfrecord.gz"):
        raise DataError(f"no training shards in {data_dir}/train")
    if int(summary.get("counts", {}).get("train_rows", 0)) == 0:
        raise DataError(f"{data_dir} has no training rows (see dataset.json counts)")
    stats = summary.get("rating_stats", {})
    vocab = summary.get("vocabulary", {})
    return DataInfo(
        data_dir=data_dir,
        summary=summary,
        feature_spec=spec,
        num_users=int(vocab.get("user", 0)),
        num_items=int(vocab.get("item", 0)),
        rating_mean=float(stats.get("mean", 0.0)),
        rating_min=float(stats.get("min", 0.0)),
        rating_max=float(stats.get("max", 1.0)),
    )


def _parsed_dataset(
    files: Sequence[str],
    feature_spec: dict[str, Any],
    batch_size: int,
    *,
    shuffle: bool,
    shuffle_buffer: int,
    seed: int,
    num_input_pipelines: int = 1,
    input_pipeline_id: int = 0,
    repeat: bool = False,
    keys: Sequence[str] | None = None,
    batch_map: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> tf.data.Dataset:
    spec = {k: v for k, v in feature_spec.items() if keys is None or k in keys}
    file_ds = tf.data.Dataset.from_tensor_slices(list(files))
    # Shard the *file list* per input pipeline before shuffling (as TF-GNN's
    # dataset provider does): each worker reads a disjoint set of shards.
    file_ds = file_ds.shard(num_input_pipelines, input_pipeline_id)
    if shuffle:
        file_ds = file_ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    records = file_ds.interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type="GZIP"),
        cycle_length=max(1, min(4, len(files))),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=not shuffle,
    )
    if shuffle:
        records = records.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        records = records.repeat()
    batched = records.batch(batch_size)
    parsed = batched.map(lambda serialized: tf.io.parse_example(serialized, spec), num_parallel_calls=tf.data.AUTOTUNE)
    if batch_map is not None:  # e.g. fresh negatives per batch (trainer.ranking)
        parsed = parsed.map(batch_map, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return parsed.with_options(options).prefetch(tf.data.AUTOTUNE)


def distributed_dataset(
    strategy,
    info: DataInfo,
    split: str,
    per_replica_batch: int,
    *,
    shuffle: bool,
    shuffle_buffer: int,
    seed: int,
    repeat: bool,
    keys: Sequence[str] | None = None,
    batch_map: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
):
    """A dataset for ``model.fit``: one input pipeline per worker, disjoint shards.

    ``batch_map`` (optional) is applied to every parsed batch.

    Raises:
      DataError: fewer shards than input pipelines (each worker needs one).
    """
    files = info.files(split)
    if not files:
        raise DataError(f"no {split} shards in {info.data_dir}/{split}")

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        if len(files) < input_context.num_input_pipelines:
            raise DataError(
                f"{len(files)} {split} shards for {input_context.num_input_pipelines} workers: "
                f"rerun the pipeline with --num-shards >= {input_context.num_input_pipelines}"
            )
        return _parsed_dataset(
            files,
            info.feature_spec,
            per_replica_batch,
            shuffle=shuffle,
            shuffle_buffer=shuffle_buffer,
            seed=seed,
            num_input_pipelines=input_context.num_input_pipelines,
            input_pipeline_id=input_context.input_pipeline_id,
            repeat=repeat,
            keys=keys,
            batch_map=batch_map,
        )

    return strategy.distribute_datasets_from_function(dataset_fn)


def local_dataset(info: DataInfo, split: str, batch_size: int, keys: Sequence[str] | None = None) -> tf.data.Dataset:
    """Every row of a split, in file order, for exact evaluation in one process."""
    return _parsed_dataset(info.files(split), info.feature_spec, batch_size, shuffle=False, shuffle_buffer=0, seed=0, keys=keys)


def steps_for(rows: int, global_batch: int) -> int:
    return max(1, math.ceil(rows / global_batch))
