"""Splittable reading (issue 15): large inputs read as byte ranges keep every line's exact number.

A file larger than ``common.READ_SPLIT_BYTES`` is planned as byte ranges; a
count step gives each range its first line number. Whatever the range size,
the lines read, and their numbers, must be exactly a whole-file read's (a
movielens run in ranges is compared byte for byte with a whole-file run in
``test_movielens_pipeline.py``, where the mixed-format fixture already runs).
"""
from __future__ import annotations

import random

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from beam_pipelines import common


def _ranged_read(path: str, split_bytes: int) -> list[tuple[str, int, str]]:
    """The reader's plan, counts and ranged reads without Beam, in range order."""
    size = len(open(path, "rb").read())
    ranges = common.plan_ranges(path, size, split_bytes)
    lines, first = [], 1
    for source, start, end in ranges:
        if end < 0:
            return list(common.read_positioned_lines(path))
        got = list(common.read_range_lines(source, start, end, first))
        assert len(got) == common.count_line_starts(source, start, end), (start, end)
        lines.extend(got)
        first += len(got)
    return lines


def _awkward_bytes(rng: random.Random) -> bytes:
    """Lines of 0..40 bytes, LF or CRLF, blank ones, a BOM, non-UTF-8 bytes, maybe no final newline."""
    parts = [b"\xef\xbb\xbf"] if rng.random() < 0.5 else []
    for _ in range(rng.randint(0, 30)):
        body = bytes(rng.choice(b"abc,.19\xe9") for _ in range(rng.randint(0, 40)))
        parts.append(body + rng.choice([b"\n", b"\r\n", b"\n\n"]))
    data = b"".join(parts)
    return data.rstrip(b"\n") if rng.random() < 0.3 else data


def test_every_range_size_gives_the_whole_file_read(tmp_path):
    rng = random.Random(0)
    for case in range(60):
        path = tmp_path / f"f{case}.csv"
        path.write_bytes(_awkward_bytes(rng))
        whole = list(common.read_positioned_lines(str(path)))
        for split in (1, 2, 3, 5, 8, 13, 64, 10_000):
            assert _ranged_read(str(path), split) == whole, (case, split)


def test_a_compressed_or_small_file_is_one_range():
    assert common.plan_ranges("x.csv.gz", 10 ** 9, 100) == [("x.csv.gz", 0, -1)]
    assert common.plan_ranges("x.csv", 100, 100) == [("x.csv", 0, -1)]
    assert common.plan_ranges("x.csv", 250, 100) == [("x.csv", 0, 100), ("x.csv", 100, 200), ("x.csv", 200, 250)]


def test_the_beam_transform_reads_split_files_exactly(tmp_path):
    rng = random.Random(1)
    paths = []
    for case in range(3):
        path = tmp_path / f"part{case}.csv"
        path.write_bytes(_awkward_bytes(rng) + b"last line\n")
        paths.append(str(path))
    (tmp_path / "small.csv.gz").write_bytes(__import__("gzip").compress(b"a\nb\n"))
    paths.append(str(tmp_path / "small.csv.gz"))
    expected = [line for path in paths for line in common.read_positioned_lines(path)]
    with beam.Pipeline() as pipeline:
        read = pipeline | common.ReadPositionedLines(paths, split_bytes=7)
        assert_that(read, equal_to(expected))


def test_auto_shard_count_follows_the_input_size(tmp_path, monkeypatch):
    import gzip

    plain, packed = tmp_path / "ratings.csv", tmp_path / "more.csv.gz"
    plain.write_bytes(b"x" * 1000)
    packed.write_bytes(gzip.compress(b"y" * 1000))
    paths = [str(plain), str(packed)]
    assert common.resolve_shard_count("auto", paths, minimum=8) == 8  # small inputs: the minimum, as before
    assert common.resolve_shard_count(3, paths, minimum=8) == 3  # an explicit count is kept
    monkeypatch.setattr(common, "SHARD_TARGET_BYTES", 100)
    expected = -(-(1000 + 4 * packed.stat().st_size) // 100)  # a compressed file counts 4x its size
    assert common.resolve_shard_count("auto", paths, minimum=8) == expected > 10


@pytest.mark.parametrize("value", ["0", "-2", "many"])
def test_a_bad_shard_count_is_one_argparse_error(value, capsys):
    from beam_pipelines import movielens

    with pytest.raises(SystemExit) as exit_info:
        movielens.parse_args(["--input", "x", "--output", "y", "--num-shards", value])
    assert exit_info.value.code == 2
    assert f"argument --num-shards: must be 'auto' or an integer >= 1, got '{value}'" in capsys.readouterr().err
