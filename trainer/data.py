"""Reading a pipeline output: the checked ``dataset.json`` contract, and tf.data input of ratings.

Every pipeline writes ``OUT/dataset.json`` last (it is the commit marker) with
``schema`` (the ``schemas`` module its examples follow) and ``splits``
(``{"train"|"valid"|"test": {"examples": N, "files": [relative shard paths]}}``).
``read_dataset`` checks an output against that before any training starts: the
directory and marker exist, the schema is the one the task reads (a GNN config
on a ratings output is one clear error), the shard files on disk are exactly
those listed, and every listed shard reads to its end with the listed number of
examples (a truncated or corrupt shard fails here, not mid-fit). Outputs written
by the earlier train/eval layout are refused with one line that says to re-run
the pipeline.

For the ratings schema it also builds ``DataInfo`` (vocabulary sizes, rating
statistics, the transformed feature spec from tf.Transform's
``transformed_metadata``) and the sharded, shuffled, batched tf.data input.
Nothing here re-declares the schema.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf


SPLITS = ("train", "valid", "test")
PIPELINES = {  # schema -> the command that writes it (for error messages)
    "ratings": "python -m beam_pipelines.movielens",
    "lastfm": "python -m beam_pipelines.lastfm",
    "playlists": "python -m beam_pipelines.playlists",
}


class DataError(ValueError):
    """The data directory cannot be used; the message says why and what to run."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A checked pipeline output.

    Attributes:
      data_dir: the pipeline's ``--output``.
      summary: its ``dataset.json``.
    """

    data_dir: str
    summary: dict[str, Any]

    @property
    def schema(self) -> str:
        return str(self.summary["schema"])

    def examples(self, split: str) -> int:
        """Examples of a split, as the pipeline counted them."""
        return int(self.summary["splits"][split]["examples"])

    def files(self, split: str) -> list[str]:
        """The split's shard files (absolute), in the listed order."""
        return [f"{self.data_dir}/{name}" for name in self.summary["splits"][split]["files"]]


def _rerun_hint(schema: str | None) -> str:
    return PIPELINES.get(schema or "", "the pipeline that wrote it")


def read_dataset(data_dir: str, *, schema: str, model: str, verify_records: bool = True) -> Dataset:
    """Reads ``dataset.json`` and checks the output against it.

    Args:
      data_dir: a pipeline output directory (local or gs://).
      schema: the ``schema`` the task reads (``ratings``, ``lastfm``, ...).
      model: the model's name (for the messages).
      verify_records: read every shard to its end and compare the example counts.

    Raises:
      DataError: one line naming what is wrong and what to run.
    """
    data_dir = data_dir.rstrip("/")
    hint = _rerun_hint(schema)
    if not tf.io.gfile.isdir(data_dir):
        raise DataError(f"data directory {data_dir} does not exist; run a pipeline first ({hint} ... --output {data_dir})")
    summary_path = f"{data_dir}/dataset.json"
    if not tf.io.gfile.exists(summary_path):
        raise DataError(f"{summary_path} is missing: {data_dir} is not a finished pipeline output "
                        f"(dataset.json is written last; rerun {hint})")
    try:
        with tf.io.gfile.GFile(summary_path) as handle:
            summary = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{summary_path} is not valid JSON ({error}); rerun {hint}") from None
    if not isinstance(summary, dict):
        raise DataError(f"{summary_path} does not hold a JSON object; rerun {hint}")
    if "splits" not in summary or "schema" not in summary:
        layout = "train/ + eval/" if tf.io.gfile.isdir(f"{data_dir}/eval") else "an older layout"
        raise DataError(f"{data_dir} was written by an earlier pipeline version ({layout}, no valid split); "
                        f"rerun {_rerun_hint(summary.get('schema', 'ratings' if summary.get('dataset') == 'movielens' else summary.get('dataset')))} "
                        "to write train/ valid/ test/")
    if summary["schema"] != schema:
        raise DataError(f"model {model} trains on {schema} data ({hint}), but {data_dir} holds "
                        f"{summary['schema']} data ({summary.get('dataset', '?')}, written by {_rerun_hint(summary['schema'])})")
    dataset = Dataset(data_dir, summary)
    for split in SPLITS:
        _check_shards(dataset, split, hint, verify_records)
    if dataset.examples("train") == 0:
        raise DataError(f"{data_dir} has no train examples (see dataset.json counts and rejected/)")
    return dataset


def count_records(path: str) -> int:
    """The records of one gzip TFRecord shard, read to its end (a damaged shard raises TensorFlow's error).

    Counted in batches: ``reduce`` runs its function once per element, about
    90 us each here, which made counting 1M records take 90 s; once per batch
    of 8192 it takes 2 s.
    """
    batches = tf.data.TFRecordDataset(path, compression_type="GZIP").batch(8192)
    return int(batches.reduce(tf.constant(0, tf.int64), lambda count, batch: count + tf.size(batch, tf.int64)))


def _check_shards(dataset: Dataset, split: str, hint: str, verify_records: bool) -> None:
    """The split's files on disk are the listed ones and (optionally) hold the listed examples."""
    if split not in dataset.summary["splits"]:
        raise DataError(f"{dataset.data_dir}/dataset.json lists no {split} split; rerun {hint}")
    listed = dataset.files(split)
    found = set(tf.io.gfile.glob(f"{dataset.data_dir}/{split}/part-*"))
    missing = [f for f in listed if f not in found]
    extra = sorted(found - set(listed))
    if missing:
        raise DataError(f"{split} shard {missing[0]} is missing ({len(missing)} of {len(listed)} listed in "
                        f"dataset.json); the output is incomplete, rerun {hint}")
    if extra:
        raise DataError(f"{extra[0]} is not listed in dataset.json (a stale or foreign shard); rerun {hint} "
                        "into an empty --output")
    if not verify_records:
        return
    expected = dataset.examples(split)
    counted = 0
    for path in listed:
        try:
            counted += count_records(path)
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as error:
            # TensorFlow prefixes the reason with the graph function it ran in ("{{function_node ...}}").
            reason = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", str(error)).splitlines()[0][:160]
            raise DataError(f"{path} is corrupt or truncated ({reason}); rerun {hint}") from None
    if counted != expected:
        raise DataError(f"{split} holds {counted} examples but dataset.json says {expected}; "
                        f"the output was changed after the pipeline wrote it; rerun {hint}")


def shard_stats(dataset: Dataset) -> dict[str, tuple[int, int]]:
    """``(length, mtime)`` of every listed shard, taken once the output is checked (see ``check_unchanged``)."""
    stats = {}
    for split in SPLITS:
        for path in dataset.files(split):
            stat = tf.io.gfile.stat(path)
            stats[path] = (int(stat.length), int(stat.mtime_nsec))
    return stats


def check_unchanged(dataset: Dataset, before: dict[str, tuple[int, int]]) -> None:
    """Fails when a shard changed or vanished after ``shard_stats`` (while training and evaluation read it).

    TensorFlow reads a gzip shard that was cut at a record boundary to the cut
    without an error, and a shard replaced by a shorter valid one reads cleanly:
    without this check such a run would report a partial fit as a success.

    Raises:
      DataError: the first shard whose length or modification time differs.
    """
    for path, stat in before.items():
        try:
            now = tf.io.gfile.stat(path)
            changed = (int(now.length), int(now.mtime_nsec)) != stat
        except tf.errors.NotFoundError:
            changed = True
        if changed:
            raise DataError(f"{path} changed while training read it (another process wrote or removed it); "
                            f"nothing was exported; rerun {_rerun_hint(dataset.schema)} and then the training")


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What a ratings model needs to know about the data it trains on."""

    data_dir: str
    summary: dict[str, Any]
    feature_spec: dict[str, Any]
    num_users: int
    num_items: int
    rating_mean: float
    rating_min: float
    rating_max: float

    def rows(self, split: str) -> int:
        return int(self.summary["splits"][split]["examples"])

    @property
    def train_rows(self) -> int:
        return self.rows("train")

    def files(self, split: str) -> list[str]:
        return Dataset(self.data_dir, self.summary).files(split)

    def transform_output(self):
        import tensorflow_transform as tft

        return tft.TFTransformOutput(self.data_dir)


def read_graph_schema(path: str, missing: str):
    """The ``tfgnn.GraphSchema`` text proto at ``path``; ``DataError`` "``path`` is missing``missing``" when absent."""
    import tensorflow_gnn as tfgnn
    from google.protobuf import text_format

    if not tf.io.gfile.exists(path):
        raise DataError(f"{path} is missing{missing}")
    with tf.io.gfile.GFile(path) as handle:
        return text_format.Parse(handle.read(), tfgnn.GraphSchema())


def load_data_info(data_dir: str, required_features: Sequence[str] = (), model: str = "this model",
                   verify_records: bool = True) -> DataInfo:
    """Reads and checks a ratings pipeline output (``beam_pipelines.movielens``).

    Args:
      data_dir: the pipeline's ``--output`` (local or gs://).
      required_features: transformed feature keys the model reads.
      model: the model's name (for the messages).
      verify_records: read every shard and compare its example count with dataset.json.

    Raises:
      DataError: see ``read_dataset``; also a missing transform output, or
        features the model needs but the data lacks.
    """
    import tensorflow_transform as tft

    dataset = read_dataset(data_dir, schema="ratings", model=model, verify_records=verify_records)
    data_dir = dataset.data_dir
    if not tf.io.gfile.isdir(f"{data_dir}/transformed_metadata"):
        raise DataError(f"{data_dir}/transformed_metadata is missing: not a tf.Transform pipeline output")
    spec = tft.TFTransformOutput(data_dir).transformed_feature_spec()
    missing = [key for key in required_features if key not in spec]
    if missing:
        raise DataError(
            f"schema mismatch: {data_dir} lacks feature(s) {', '.join(missing)} that {model} needs "
            f"(it has {', '.join(sorted(spec))})"
        )
    summary = dataset.summary
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


def parsed_dataset(
    files: Sequence[str],
    feature_spec: dict[str, Any],
    batch_size: int,
    *,
    shuffle: bool,
    shuffle_buffer: int = 0,
    seed: int = 0,
    num_input_pipelines: int = 1,
    input_pipeline_id: int = 0,
    keys: Sequence[str] | None = None,
    batch_map: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> tf.data.Dataset:
    """Batches of parsed examples from gzip TFRecord shards.

    ``num_input_pipelines`` / ``input_pipeline_id``: each input pipeline (worker)
    reads a disjoint set of files. ``batch_map`` is applied to every parsed batch
    (e.g. fresh negatives, ``trainer.ranking``).

    Raises:
      DataError: fewer shards than input pipelines (each worker needs one).
    """
    if len(files) < num_input_pipelines:
        raise DataError(
            f"{len(files)} shards for {num_input_pipelines} workers: "
            f"rerun the pipeline with --num-shards >= {num_input_pipelines}"
        )
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
    batched = records.batch(batch_size)
    parsed = batched.map(lambda serialized: tf.io.parse_example(serialized, spec), num_parallel_calls=tf.data.AUTOTUNE)
    if batch_map is not None:
        parsed = parsed.map(batch_map, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return parsed.with_options(options).prefetch(tf.data.AUTOTUNE)


class ShardedBatches:
    """A ``runner.DatasetProvider``-shaped source of shuffled train batches: disjoint shards per input pipeline.

    ``runner.KerasTrainer`` calls ``get_dataset(input_context)`` once per input
    pipeline and repeats the result when ``steps_per_epoch`` is set.
    """

    def __init__(self, info: DataInfo, splits: str | Sequence[str], per_replica_batch: int, *, seed: int,
                 shuffle_buffer: int, keys: Sequence[str] | None = None, batch_map=None):
        splits = (splits,) if isinstance(splits, str) else tuple(splits)
        self._files = [f for split in splits for f in info.files(split)]
        self._spec = info.feature_spec
        self._batch = per_replica_batch
        self._seed = seed
        self._buffer = shuffle_buffer
        self._keys = keys
        self._batch_map = batch_map

    def get_dataset(self, context: tf.distribute.InputContext) -> tf.data.Dataset:
        return parsed_dataset(
            self._files, self._spec, self._batch, shuffle=True, shuffle_buffer=self._buffer, seed=self._seed,
            num_input_pipelines=context.num_input_pipelines, input_pipeline_id=context.input_pipeline_id,
            keys=self._keys, batch_map=self._batch_map,
        )


def local_dataset(info: DataInfo, split: str, batch_size: int, keys: Sequence[str] | None = None) -> tf.data.Dataset:
    """Every row of a split, in file order, for exact evaluation in one process."""
    return parsed_dataset(info.files(split), info.feature_spec, batch_size, shuffle=False, keys=keys)


def column_arrays(info: DataInfo, files: Sequence[str], keys: Sequence[str], *, num_input_pipelines: int = 1,
                  input_pipeline_id: int = 0) -> dict[str, np.ndarray]:
    """``keys``' values of every example of ``files`` as NumPy arrays, parsed once, in file order.

    With several input pipelines, pipeline ``input_pipeline_id`` reads the shards
    ``parsed_dataset`` gives it (every ``num_input_pipelines``-th file), so workers get disjoint
    rows. Read eagerly even when called while a function is traced.

    Raises:
      DataError: fewer shards than input pipelines.
    """
    with tf.init_scope():
        batches = parsed_dataset(files, info.feature_spec, 65536, shuffle=False, keys=keys,
                                 num_input_pipelines=num_input_pipelines, input_pipeline_id=input_pipeline_id)
        parts: dict[str, list[np.ndarray]] = {key: [] for key in keys}
        for batch in batches:
            for key in keys:
                parts[key].append(batch[key].numpy())
    return {key: np.concatenate(value) if value else np.zeros(0, info.feature_spec[key].dtype.as_numpy_dtype)
            for key, value in parts.items()}


def rating_arrays(info: DataInfo, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user indices int64, item indices int64, ratings float32) of every example of ``split``, in file order."""
    from schemas import ratings as F

    columns = column_arrays(info, info.files(split), (F.USER_INDEX, F.ITEM_INDEX, F.RATING))
    return columns[F.USER_INDEX], columns[F.ITEM_INDEX], columns[F.RATING].astype(np.float32)


def steps_for(rows: int, global_batch: int) -> int:
    """Steps of one pass over ``rows`` examples (at least 1)."""
    return max(1, math.ceil(rows / global_batch))
