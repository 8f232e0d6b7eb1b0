"""Shared Beam pieces: bucketed grouping and the raw Arrow batches fed to tf.Transform."""
import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipelines import common
from schemas import ratings as F
from beam_pipelines import movielens as ml


def test_group_into_buckets_keeps_every_element_and_every_bucket():
    with TestPipeline() as pipeline:
        grouped = (
            pipeline
            | beam.Create(list(range(1000)))
            | common.GroupIntoBuckets(lambda x: x % 7, num_buckets=9, chunk_size=13)
            | beam.MapTuple(lambda bucket, values: (bucket, sorted(values)))
        )
        expected = [(b, list(range(b, 1000, 7)) if b < 7 else []) for b in range(9)]
        assert_that(grouped, equal_to(expected))


def test_raw_rows_to_record_batch_matches_the_tensor_adapter_schema():
    rows = [("1", "10", 4.5, 100, ()), ("2", "11", 3.0, 101, ("12", "13"))]
    batch = ml.raw_rows_to_record_batch(rows)
    assert batch.schema.equals(ml.raw_tensor_adapter_config().arrow_schema)
    columns = batch.to_pydict()
    assert columns[F.USER_ID] == [[b"1"], [b"2"]]
    assert columns[F.RATING] == [[4.5], [3.0]]
    assert columns[F.TIMESTAMP] == [[100], [101]]
    assert columns[F.NEGATIVE_ITEM_IDS] == [[], [b"12", b"13"]]


def test_drop_duplicates_keeps_latest_and_rejects_the_rest():
    def row(item, ts, line):
        return ("1", item, 4.0, ts, "f", line, ml.INPUT_SIDE, f"1\t{item}\t4\t{ts}")

    out = list(ml._drop_duplicates(0, [row("5", 10, 1), row("6", 10, 2), row("5", 30, 3), row("5", 20, 4)]))
    kept = sorted((r.item, r.line) for r in out if isinstance(r, ml.Rating))
    rejected = sorted(r.value["line"] for r in out if not isinstance(r, ml.Rating))
    assert kept == [("5", 3), ("6", 2)]
    assert rejected == [1, 4]
