"""The MovieLens pipeline on the real files in ../shared/data (skipped when absent).

The expected numbers are the verified facts of each dataset's README.md there.
Each test runs the full pipeline (15-40 s): select or skip them with ``-m real_data``.
"""
from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import pytest

from schemas import ratings as F
from beam_pipelines import movielens as ml
from tests.conftest import shared_file

pytestmark = [pytest.mark.real_data, pytest.mark.slow]


def _run(source: Path, out: Path, *flags: str) -> dict[str, Any]:
    return ml.run(
        ["--input", str(source), "--output", str(out), "--num-shards", "4", *flags, "--runner=DirectRunner"],
        save_main_session=False,
    )


def _ratings_histogram(out: Path) -> tuple[dict[float, int], int]:
    """Rating counts over train, valid and test, and the number of records, read with the written spec."""
    import tensorflow as tf
    import tensorflow_transform as tft

    spec = {F.RATING: tft.TFTransformOutput(str(out)).transformed_feature_spec()[F.RATING]}
    files = sorted(str(p) for split in ("train", "valid", "test") for p in (out / split).glob("part-*.tfrecord.gz"))
    histogram: collections.Counter = collections.Counter()
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(20000)
    for batch in dataset:
        histogram.update(tf.io.parse_example(batch, spec)[F.RATING].numpy().tolist())
    return dict(histogram), sum(histogram.values())


def _check_accounting(summary: dict[str, Any], lines: int, rows: int, headers: int = 0) -> dict[str, int]:
    counts = summary["counts"]
    assert summary["accounting"]["balanced"] is True
    assert counts["lines_read"] == lines == summary["accounting"]["accounted"]
    assert counts["header_lines"] == headers
    assert (counts["blank_lines"], counts["rejected_rows"], counts["duplicates_dropped"]) == (0, 0, 0)
    assert counts["train_rows"] + counts["valid_rows"] + counts["test_rows"] == rows
    assert 0.09 < counts["test_rows"] / rows < 0.11  # --test-fraction 0.1
    assert 0.09 < counts["valid_rows"] / (rows - counts["test_rows"]) < 0.11  # --valid-fraction 0.1
    return counts


def test_ml_100k_random_split(tmp_path):
    source = shared_file("ml-100k", "u.data")
    summary = _run(source, tmp_path / "out", "--split", "random", "--seed", "0")
    _check_accounting(summary, lines=100000, rows=100000)
    assert summary["sources"] == [
        {
            "path": str(source),
            "side": "input",
            "format": "tab",
            "sha256": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
            "rating_rule": {"low": 1.0, "high": 5.0, "step": 1.0, "why": "tab: ML-100K whole stars"},
        }
    ]
    assert summary["vocabulary"]["user"] == 943  # every user has >= 20 ratings, so all are in train
    assert 1600 < summary["vocabulary"]["item"] <= 1682
    assert (summary["rating_stats"]["min"], summary["rating_stats"]["max"]) == (1.0, 5.0)
    histogram, records = _ratings_histogram(tmp_path / "out")
    assert records == 100000
    assert histogram == {1.0: 6110, 2.0: 11370, 3.0: 27145, 4.0: 34174, 5.0: 21201}


def test_ml_latest_small_csv_with_header_and_crlf(tmp_path):
    source = shared_file("ml-latest-small", "ratings.csv")
    summary = _run(source, tmp_path / "out")
    _check_accounting(summary, lines=100837, rows=100836, headers=1)
    assert summary["sources"][0]["format"] == "csv"
    assert summary["sources"][0]["sha256"] == "aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646"
    assert summary["vocabulary"]["user"] == 610
    assert summary["vocabulary"]["item"] <= 9724
    histogram, records = _ratings_histogram(tmp_path / "out")
    assert records == 100836
    assert histogram == {
        0.5: 1370, 1.0: 2811, 1.5: 1791, 2.0: 7551, 2.5: 5550,
        3.0: 20047, 3.5: 13136, 4.0: 26818, 4.5: 8551, 5.0: 13211,
    }


def test_ml_1m_partial_gzipped_dat(tmp_path):
    source = shared_file("ml-1m-partial", "ratings.dat.prefix.gz")
    summary = _run(source, tmp_path / "out")
    _check_accounting(summary, lines=487650, rows=487650)
    assert summary["sources"][0]["format"] == "dat"
    assert summary["sources"][0]["sha256"] == "2fedcf5405373a49df4041e3d3fe1e8db9eacf2c77c209ae1f686ea06b7a16d9"
    assert summary["vocabulary"]["user"] == 2999  # users 1..2998 complete, 2999 cut off
    assert summary["vocabulary"]["item"] <= 3615
    histogram, records = _ratings_histogram(tmp_path / "out")
    assert records == 487650
    assert histogram == {1.0: 27472, 2.0: 53838, 3.0: 127216, 4.0: 170579, 5.0: 108545}
