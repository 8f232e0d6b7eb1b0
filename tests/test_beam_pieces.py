"""Shared Beam pieces: bucketed grouping and the raw Arrow batches fed to tf.Transform."""
import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipelines import common
from schemas import ratings as F
from beam_pipelines import movielens as ml


@pytest.mark.parametrize("spill", [False, True], ids=["in-memory", "spilled"])
def test_group_into_buckets_keeps_every_element_and_every_bucket(spill, tmp_path):
    spill_dir = str(tmp_path) if spill else None
    with TestPipeline() as pipeline:
        grouped = (
            pipeline
            | beam.Create(list(range(1000)))
            | common.GroupIntoBuckets(lambda x: x % 7, num_buckets=9, chunk_size=13, spill_dir=spill_dir)
            | beam.MapTuple(lambda bucket, values: (bucket, sorted(values)))
        )
        expected = [(b, list(range(b, 1000, 7)) if b < 7 else []) for b in range(9)]
        assert_that(grouped, equal_to(expected))
    # Spilled: the chunks went through files (1000 elements in chunks of at most 13); in memory, no file at all.
    files = len(list(tmp_path.glob("*.pkl")))
    assert files >= 1000 // 13 if spill else files == 0


def test_spilled_pcollection_is_read_whole_by_each_reader(tmp_path):
    elements = [("row", i, float(i) / 3) for i in range(500)]
    with TestPipeline() as pipeline:
        paths = pipeline | beam.Create(elements) | common.SpillToDisk(str(tmp_path), chunk_size=7)
        first = paths | "First" >> common.ReadSpilled(str(tmp_path))
        second = paths | "Second" >> common.ReadSpilled(str(tmp_path))
        assert_that(first, equal_to(elements), label="FirstReader")
        assert_that(second, equal_to(elements), label="SecondReader")
    assert len(list(tmp_path.glob("*.pkl"))) >= 500 // 7


@pytest.mark.parametrize(("choice", "runner", "expected"), [
    ("auto", None, True), ("auto", "DirectRunner", True), ("auto", "DataflowRunner", False),
    ("off", "DirectRunner", False), ("on", "DirectRunner", True),
])
def test_spill_is_on_for_local_runners_only(choice, runner, expected):
    from apache_beam.options.pipeline_options import PipelineOptions

    assert common.wants_spill(choice, PipelineOptions([f"--runner={runner}"] if runner else [])) is expected


def test_spill_on_with_dataflow_is_refused_before_anything_runs():
    from apache_beam.options.pipeline_options import PipelineOptions

    with pytest.raises(common.PipelineInputError, match="--spill on needs the DirectRunner"):
        common.wants_spill("on", PipelineOptions(["--runner=DataflowRunner"]))


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
