"""``beam_pipelines.movielens.run`` end to end on the DirectRunner, on tiny fixtures.

Each pipeline run costs several seconds (tf.Transform), so every scenario runs once
in a module-scoped fixture and several tests check its output:

* ``mixed``: one file per raw format (tab with malformed rows, duplicates and blank
  lines; dat with blank lines; CSV with header, CRLF and BOM; gzipped NCF), random split;
  rerun with the same seed (``mixed_again``) and with another seed (``mixed_seed1``).
* ``given``: NCF train/test files as ``--input`` / ``--test-input``; valid a seeded fraction of the input.
* ``temporal`` and ``leave_one_out`` on generated ratings (valid carved from the train side by the same rule).
* a run whose rejected fraction is too high, and inputs that do not exist.

Expected outputs are computed here from the fixture rows, independently of Beam.
"""
from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any, Iterable, NamedTuple

import numpy as np
import pytest

from beam_pipelines import common
from schemas import ratings as F
from beam_pipelines import movielens as ml
from tests.conftest import read_examples, read_records
from rawdata import synth

BEAM_FLAGS = ["--runner=DirectRunner"]


class Row(NamedTuple):
    """A data row as written to a fixture file, and where."""

    user: str
    item: str
    rating: float
    timestamp: int
    path: str
    line: int


def _run(*flags: str) -> dict[str, Any]:
    return ml.run([*flags, *BEAM_FLAGS], save_main_session=False)


def _rows(data: synth.SyntheticRatings, user_offset: int = 0) -> list[tuple[int, int, float, int]]:
    return [(u + user_offset, i, r, t) for u, i, r, t in data.rows()]


def _write(rows, path: Path, fmt: str, **knobs) -> tuple[synth.WriteReport, list[Row]]:
    """Writes a fixture with rawdata.synth and returns the data rows with their line numbers."""
    report = synth.write_ratings(rows, str(path), fmt, **knobs)
    skipped = set(report.malformed_lines) | set(range(1, report.header_lines + 1))
    skipped |= set(range(report.total_lines - report.blank_lines + 1, report.total_lines + 1))
    lines = [n for n in range(1, report.total_lines + 1) if n not in skipped]
    assert len(lines) == len(rows)
    return report, [Row(str(u), str(i), float(r), int(t), str(path), n) for (u, i, r, t), n in zip(rows, lines)]


def _dedup(rows: Iterable[Row]) -> tuple[list[Row], list[tuple[Row, Row]]]:
    """Keeps the latest row per (user, item); returns kept rows and (dropped, kept) pairs."""
    groups: dict[tuple[str, str], list[Row]] = collections.defaultdict(list)
    for row in rows:
        groups[(row.user, row.item)].append(row)
    kept, dropped = [], []
    for group in groups.values():
        group.sort(key=lambda r: (r.timestamp, r.path, r.line))
        kept.append(group[-1])
        dropped.extend((row, group[-1]) for row in group[:-1])
    return kept, dropped


def _decoded(out: Path, split: str) -> list[tuple[str | None, str | None, float, int, tuple[str | None, ...]]]:
    """Output rows with indices mapped back to raw ids through the written vocabularies
    (None for the OOV index), sorted."""
    import tensorflow_transform as tft

    transform = tft.TFTransformOutput(str(out))
    users = [v.decode() for v in transform.vocabulary_by_name(F.USER_VOCAB)]
    items = [v.decode() for v in transform.vocabulary_by_name(F.ITEM_VOCAB)]

    def lookup(vocab, index):
        assert 0 <= index <= len(vocab)  # len(vocab) is the OOV bucket
        return vocab[index] if index < len(vocab) else None

    rows = []
    for ex in read_examples(out / split / "part-*.tfrecord.gz"):
        rows.append(
            (
                lookup(users, ex[F.USER_INDEX][0]),
                lookup(items, ex[F.ITEM_INDEX][0]),
                ex[F.RATING][0],
                ex[F.TIMESTAMP][0],
                tuple(lookup(items, i) for i in ex[F.NEGATIVE_ITEM_INDEX]),
            )
        )
    return sorted(rows, key=repr)


def _as_output(rows: Iterable[Row], train_users: set[str], train_items: set[str]):
    """What ``_decoded`` should give for ``rows`` (ids outside the train vocabularies -> None)."""
    known = lambda value, vocab: value if value in vocab else None  # noqa: E731
    return sorted(
        ((known(r.user, train_users), known(r.item, train_items), r.rating, r.timestamp, ()) for r in rows), key=repr
    )


def _rejected(out: Path) -> list[dict[str, Any]]:
    files = sorted((out / "rejected").glob("part-*.jsonl"))
    assert [f.name for f in files] == ["part-00000-of-00001.jsonl"]
    return [json.loads(line) for f in files for line in f.read_text(encoding="utf-8").splitlines()]


def _shard_records(out: Path) -> dict[str, list[bytes]]:
    return {
        f"{split}/{path.name}": read_records(path)
        for split in ml.SPLIT_NAMES
        for path in sorted((out / split).glob("part-*.tfrecord.gz"))
    }


def _assert_balanced(summary: dict[str, Any], out: Path) -> dict[str, int]:
    counts = summary["counts"]
    parts = ("header_lines", "blank_lines", "rejected_rows", "duplicates_dropped", "train_rows", "valid_rows", "test_rows")
    assert counts["lines_read"] == sum(counts[p] for p in parts)
    assert {name: split["examples"] for name, split in summary["splits"].items()} == {
        name: counts[f"{name}_rows"] for name in ml.SPLIT_NAMES}
    for name, split in summary["splits"].items():
        assert sorted(str(p.relative_to(out)) for p in (out / name).iterdir()) == split["files"]
    assert summary["accounting"] == {
        "rule": summary["accounting"]["rule"],
        "accounted": counts["lines_read"],
        "balanced": True,
    }
    assert json.loads((out / "dataset.json").read_text()) == summary
    return counts


# --------------------------------------------------------------------------- mixed formats
MALFORMED_TAB = [
    (10, "1\t2\t3", "expected 4 tab-separated fields, found 3"),
    (50, "\t5\t3\t881250949", "empty user id"),
    (100, "x1\t5\t3\t881250949", "user id 'x1' is not a non-negative integer"),
    (200, "\u00b2\t5\t3\t881250949", "user id '\u00b2' is not a non-negative integer"),
    (300, "1\t5\tfive\t881250949", "rating 'five' is not a number"),
    (400, "1\t5\tnan\t881250949", "rating 'nan' is not finite"),
    (500, "1\t5\t9\t881250949", "rating 9 is outside [1, 5]"),
    (600, "1\t5\t3\t1.5", "timestamp '1.5' is not an integer"),
    (700, "1\t5\t3\t-7", "timestamp -7 is negative"),
]


class Fixture(NamedTuple):
    input: str  # glob or file
    kept: list[Row]
    dropped: list[tuple[Row, Row]]
    malformed: list[tuple[str, int, str, str]]  # (path, line, reason, text)
    lines: int
    blank: int
    header: int


@pytest.fixture(scope="module")
def mixed_fixture(tmp_path_factory) -> Fixture:
    folder = tmp_path_factory.mktemp("mixed")
    tab_rows = _rows(synth.generate_ratings(60, 80, 1200, seed=1))
    (u0, i0, r0, t0), (u1, i1, r1, t1), (u2, i2, r2, t2) = tab_rows[:3]
    other = lambda r: float(int(r) % 5 + 1)  # noqa: E731 - a different valid rating
    tab_rows += [
        (u0, i0, other(r0), t0 + 1000),  # later: supersedes the original
        (u1, i1, other(r1), t1 - 1000),  # earlier: superseded by the original
        (u2, i2, other(r2), t2),  # same time, later line: supersedes the original
    ]
    files = [
        _write(
            tab_rows,
            folder / "u.data",
            "tab",
            trailing_blank_lines=2,
            malformed=[(position, text) for position, text, _ in MALFORMED_TAB],
        ),
        _write(
            _rows(synth.generate_ratings(10, 30, 150, seed=2), 1000),
            folder / "ratings.dat",
            "dat",
            malformed=[(20, ""), (40, "   ")],
        ),
        _write(
            _rows(synth.generate_ratings(10, 30, 150, seed=3, half_stars=True), 2000),
            folder / "ratings.csv",
            "csv",
            crlf=True,
            bom=True,
            trailing_blank_lines=1,
        ),
        # gzip, as the NCF and ML-1M files often come: detected from "*.rating.gz", read inflated.
        _write(
            _rows(synth.generate_ratings(10, 30, 150, seed=4, first_id=0), 3000), folder / "train.rating.gz", "ncf"
        ),
    ]
    tab_report = files[0][0]
    malformed = [
        (str(folder / "u.data"), line, reason, text)
        for line, (_, text, reason) in zip(tab_report.malformed_lines, MALFORMED_TAB)
    ]
    kept, dropped = _dedup(row for _, rows in files for row in rows)
    assert len(dropped) == 3
    return Fixture(
        input=str(folder / "*"),
        kept=kept,
        dropped=dropped,
        malformed=malformed,
        lines=sum(report.total_lines for report, _ in files),
        blank=2 + 2 + 1,
        header=1,
    )


def _mixed_run(tmp_path_factory, fixture: Fixture, seed: int, name: str, *flags: str) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp(name) / "out"
    summary = _run(
        "--input", fixture.input, "--output", str(out), "--split", "random", "--test-fraction", "0.2",
        "--seed", str(seed), "--num-shards", "3", "--max-rejected-fraction", "0.05", *flags,
    )
    return out, summary


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, mixed_fixture):
    return _mixed_run(tmp_path_factory, mixed_fixture, 0, "mixed")


def test_reading_in_byte_ranges_writes_the_same_bytes(mixed, mixed_fixture, tmp_path_factory, monkeypatch):
    """Issue 15: the uncompressed inputs split into 97-byte ranges (the .gz one read whole); every output file,
    the rejects with their file:line included, equals the whole-file run's."""
    monkeypatch.setattr(common, "READ_SPLIT_BYTES", 97)
    files = sorted(Path(mixed_fixture.input).parent.iterdir())
    assert len(common.ReadPositionedLines([str(p) for p in files])._plan()) > 3 * len(files)
    split_out, split_summary = _mixed_run(tmp_path_factory, mixed_fixture, 0, "mixed-ranges")
    whole_out, whole_summary = mixed

    def files_of(out: Path) -> dict[str, bytes]:
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
                if p.is_file() and p.name != "dataset.json" and "transform_fn" not in p.parts}

    assert files_of(split_out) == files_of(whole_out)
    assert split_summary["counts"] == whole_summary["counts"]
    assert len(_rejected(split_out)) == len(mixed_fixture.malformed) + len(mixed_fixture.dropped) > 0


def test_mixed_formats_detected_and_counts_add_up(mixed, mixed_fixture):
    out, summary = mixed
    assert {Path(s["path"]).name: s["format"] for s in summary["sources"]} == {
        "u.data": "tab", "ratings.dat": "dat", "ratings.csv": "csv", "train.rating.gz": "ncf",
    }
    assert all(len(s["sha256"]) == 64 and s["side"] == "input" for s in summary["sources"])
    counts = _assert_balanced(summary, out)
    assert counts["lines_read"] == mixed_fixture.lines
    assert counts["header_lines"] == mixed_fixture.header
    assert counts["blank_lines"] == mixed_fixture.blank
    assert counts["rejected_rows"] == len(MALFORMED_TAB)
    assert counts["duplicates_dropped"] == 3
    assert counts["train_rows"] + counts["valid_rows"] + counts["test_rows"] == len(mixed_fixture.kept)
    assert summary["split"] == {"protocol": "random", "seed": 0, "test_fraction": 0.2, "valid": {
        "rule": "a stable hash of (seed, user, item) over the train side", "valid_fraction": 0.1}}
    assert summary["schema"] == "ratings"
    assert summary["rejected_fraction"] == pytest.approx(len(MALFORMED_TAB) / (mixed_fixture.lines - 1 - 5))


def _random_split(row: Row, seed: int) -> str:
    """The documented rule, computed here: test by one stable hash, valid by another among the rest."""
    if common.stable_fraction(seed, "split", row.user, row.item) < 0.2:
        return "test"
    return "valid" if common.stable_fraction(seed, "valid", row.user, row.item) < 0.1 else "train"


def test_mixed_split_content_exact(mixed, mixed_fixture):
    """Every kept row is in train, valid or test, as the stable hashes say; ids and values survive."""
    out, summary = mixed
    expected = {name: [r for r in mixed_fixture.kept if _random_split(r, 0) == name] for name in ml.SPLIT_NAMES}
    expected_train = expected["train"]
    train_users = {r.user for r in expected_train}
    train_items = {r.item for r in expected_train}
    assert summary["vocabulary"] == {"user": len(train_users), "item": len(train_items)}
    assert summary["counts"]["test_rows"] == len(expected["test"])
    assert summary["counts"]["valid_rows"] == len(expected["valid"])
    assert 0.15 < len(expected["test"]) / len(mixed_fixture.kept) < 0.25
    assert 0.05 < len(expected["valid"]) / (len(mixed_fixture.kept) - len(expected["test"])) < 0.15
    for name in ml.SPLIT_NAMES:  # valid and test use the train vocabularies (tf.Transform analyzed train only)
        assert _decoded(out, name) == _as_output(expected[name], train_users, train_items)
    # Half-star CSV ratings and the values of each format made it through.
    ratings = {r[2] for r in _decoded(out, "train")}
    assert 3.5 in ratings and {1.0, 5.0} <= ratings
    train_ratings = [r.rating for r in expected_train]
    assert summary["rating_stats"] == pytest.approx(
        {"mean": float(np.mean(train_ratings)), "min": min(train_ratings), "max": max(train_ratings)}, rel=1e-5
    )


def test_mixed_rejected_rows_have_reasons(mixed, mixed_fixture):
    out, _ = mixed
    rejected = _rejected(out)
    is_duplicate = lambda r: r["reason"].startswith("duplicate")  # noqa: E731
    malformed = sorted((r["source"], r["line"], r["reason"], r["text"]) for r in rejected if not is_duplicate(r))
    assert malformed == sorted(mixed_fixture.malformed)
    duplicates = sorted((r["source"], r["line"], r["reason"]) for r in rejected if is_duplicate(r))
    assert duplicates == sorted(
        (dropped.path, dropped.line, f"duplicate (user, item): superseded by {kept.path}:{kept.line}")
        for dropped, kept in mixed_fixture.dropped
    )
    assert len(rejected) == len(MALFORMED_TAB) + 3


def test_mixed_duplicates_keep_latest(mixed, mixed_fixture):
    out, _ = mixed
    output = {(u, i, r, t) for name in ml.SPLIT_NAMES for u, i, r, t, _ in _decoded(out, name)}
    by_time = {(r[2], r[3]) for r in output}
    for dropped, kept in mixed_fixture.dropped:
        assert (kept.rating, kept.timestamp) in by_time
        assert dropped.line < kept.line or dropped.timestamp < kept.timestamp
    # The 'later line wins' tie: same (user, item, timestamp), the appended rating kept.
    ties = [(d, k) for d, k in mixed_fixture.dropped if d.timestamp == k.timestamp]
    assert len(ties) == 1 and ties[0][1].line > ties[0][0].line
    assert sum(1 for r in output if r[3] == ties[0][1].timestamp and r[2] == ties[0][1].rating) >= 1


def test_mixed_transformed_records_parse_with_the_written_spec(mixed):
    import tensorflow as tf
    import tensorflow_transform as tft

    out, summary = mixed
    spec = tft.TFTransformOutput(str(out)).transformed_feature_spec()
    assert set(spec) == {
        F.USER_INDEX, F.ITEM_INDEX, F.NEGATIVE_ITEM_INDEX, F.RATING, F.TIMESTAMP,
        F.RATING_MEAN, F.RATING_MIN, F.RATING_MAX,
    }
    for split in ml.SPLIT_NAMES:
        records = [r for path in sorted((out / split).glob("*.gz")) for r in read_records(path)]
        parsed = tf.io.parse_example(tf.constant(records), spec)
        assert parsed[F.USER_INDEX].shape == (summary["counts"][f"{split}_rows"],)
        assert parsed[F.USER_INDEX].dtype == tf.int64 and parsed[F.RATING].dtype == tf.float32
        assert int(tf.reduce_max(parsed[F.USER_INDEX])) <= summary["vocabulary"]["user"]
        assert parsed[F.NEGATIVE_ITEM_INDEX].values.shape == (0,)  # no negatives outside leave-one-out
        np.testing.assert_allclose(parsed[F.RATING_MEAN].numpy(), summary["rating_stats"]["mean"], rtol=1e-6)
    shards = sorted(p.name for p in (out / "train").iterdir())
    assert shards == [f"part-0000{i}-of-00003.tfrecord.gz" for i in range(3)]


@pytest.fixture(scope="module")
def mixed_again(tmp_path_factory, mixed_fixture):
    """The same run with every shuffle in memory (``mixed`` spills them, the DirectRunner's default)."""
    return _mixed_run(tmp_path_factory, mixed_fixture, 0, "mixed_again", "--spill", "off")


@pytest.fixture(scope="module")
def mixed_seed1(tmp_path_factory, mixed_fixture):
    return _mixed_run(tmp_path_factory, mixed_fixture, 1, "mixed_seed1")


def test_same_seed_gives_identical_shards(mixed, mixed_again):
    """A rerun gives the same bytes, and so does spilling the shuffles to disk (issue 15): the rerun keeps them
    in memory."""
    first, second = _shard_records(mixed[0]), _shard_records(mixed_again[0])
    assert list(first) == [f"{s}/part-0000{i}-of-00003.tfrecord.gz" for s in ml.SPLIT_NAMES for i in range(3)]
    assert first == second
    counts = mixed[1]["counts"]
    assert sum(len(v) for v in first.values()) == counts["train_rows"] + counts["valid_rows"] + counts["test_rows"]
    assert (mixed[0] / "rejected" / "part-00000-of-00001.jsonl").read_bytes() == (
        mixed_again[0] / "rejected" / "part-00000-of-00001.jsonl"
    ).read_bytes()


def test_other_seed_gives_other_split(mixed, mixed_seed1, mixed_fixture):
    test0 = {(r[2], r[3]) for r in _decoded(mixed[0], "test")}
    test1 = {(r[2], r[3]) for r in _decoded(mixed_seed1[0], "test")}
    assert test0 != test1
    assert len(test0 & test1) < 0.5 * len(test0)  # about 20% overlap expected, not most
    counts = _assert_balanced(mixed_seed1[1], mixed_seed1[0])
    assert counts["train_rows"] + counts["valid_rows"] + counts["test_rows"] == len(mixed_fixture.kept)


# --------------------------------------------------------------------------- given split (NCF files)
@pytest.fixture(scope="module")
def given(tmp_path_factory):
    folder = tmp_path_factory.mktemp("given")
    data = synth.generate_ratings(30, 40, 400, seed=5, first_id=0)
    rows = _rows(data)
    # NCF protocol: each user's latest rating is the test row (rows are in time order per user).
    last = {u: n for n, (u, *_rest) in enumerate(rows)}
    test_rows = [rows[n] for n in sorted(last.values())] + [(500, 3, 4.0, 978824351)]  # user 500: test only
    train_rows = [row for n, row in enumerate(rows) if n not in set(last.values())]
    _, train = _write(train_rows, folder / "ml.train.rating", "ncf")
    _, test = _write(test_rows, folder / "ml.test.rating", "ncf")
    out = folder / "out"
    summary = _run(
        "--input", str(folder / "ml.train.rating"), "--test-input", str(folder / "ml.test.rating"),
        "--output", str(out), "--split", "given", "--num-shards", "2",
    )
    return out, summary, train, test


def test_given_split_test_from_test_input_valid_from_a_seeded_fraction_of_input(given):
    out, summary, base, test = given
    counts = _assert_balanced(summary, out)
    in_valid = lambda r: common.stable_fraction(0, "valid", r.user, r.item) < 0.1  # noqa: E731
    valid = [r for r in base if in_valid(r)]
    train = [r for r in base if not in_valid(r)]
    assert (counts["train_rows"], counts["valid_rows"], counts["test_rows"], counts["rejected_rows"]) == (
        len(train), len(valid), len(test), 0)
    assert valid and summary["split"]["valid"]["valid_fraction"] == 0.1
    assert sorted((Path(s["path"]).name, s["side"], s["format"]) for s in summary["sources"]) == [
        ("ml.test.rating", "test_input", "ncf"), ("ml.train.rating", "input", "ncf"),
    ]
    train_users, train_items = {r.user for r in train}, {r.item for r in train}
    assert summary["vocabulary"] == {"user": len(train_users), "item": len(train_items)}
    assert _decoded(out, "train") == _as_output(train, train_users, train_items)
    assert _decoded(out, "valid") == _as_output(valid, train_users, train_items)
    decoded_test = _decoded(out, "test")
    assert decoded_test == _as_output(test, train_users, train_items)
    assert [r[3] for r in decoded_test if r[0] is None] == [978824351]  # the unseen user maps to OOV


def test_given_split_with_a_valid_file_and_without_valid(tmp_path):
    rows = _rows(synth.generate_ratings(20, 30, 200, seed=11))
    _write(rows[:150], tmp_path / "base.data", "tab")
    _write(rows[150:180], tmp_path / "valid.data", "tab")
    _write(rows[180:], tmp_path / "test.data", "tab")
    common_flags = ["--input", str(tmp_path / "base.data"), "--test-input", str(tmp_path / "test.data"),
                    "--split", "given", "--num-shards", "1"]
    with_file = _run(*common_flags, "--valid-input", str(tmp_path / "valid.data"), "--output", str(tmp_path / "a"))
    assert [with_file["counts"][f"{n}_rows"] for n in ml.SPLIT_NAMES] == [150, 30, 20]
    assert with_file["split"]["valid"] == {"rule": "--valid-input rows", "source": str(tmp_path / "valid.data")}
    none = _run(*common_flags, "--no-valid", "--output", str(tmp_path / "b"))
    assert [none["counts"][f"{n}_rows"] for n in ml.SPLIT_NAMES] == [150, 0, 20]
    assert none["splits"]["valid"]["examples"] == 0 and (tmp_path / "b" / "valid").is_dir()
    _assert_balanced(none, tmp_path / "b")


# --------------------------------------------------------------------------- temporal split
@pytest.fixture(scope="module")
def temporal(tmp_path_factory):
    folder = tmp_path_factory.mktemp("temporal")
    _, rows = _write(_rows(synth.generate_ratings(50, 40, 800, seed=9)), folder / "ratings.dat", "dat")
    out = folder / "out"
    summary = _run(
        "--input", str(folder / "ratings.dat"), "--output", str(out), "--split", "temporal",
        "--test-fraction", "0.2", "--valid-fraction", "0.15", "--num-shards", "2",
    )
    return out, summary, rows


def test_temporal_split_valid_then_test_after_train(temporal):
    out, summary, rows = temporal
    counts = _assert_balanced(summary, out)
    day = lambda ts: ts // ml.SECONDS_PER_DAY  # noqa: E731
    days = {name: [day(r[3]) for r in _decoded(out, name)] for name in ml.SPLIT_NAMES}
    assert [len(days[n]) for n in ml.SPLIT_NAMES] == [counts[f"{n}_rows"] for n in ml.SPLIT_NAMES]
    assert days["test"] and days["valid"]
    assert max(days["train"]) < min(days["valid"]) <= max(days["valid"]) < min(days["test"])
    cutoff, valid_cutoff = summary["split"]["cutoff_day"], summary["split"]["valid"]["cutoff_day"]
    assert min(days["test"]) >= cutoff > max(days["valid"]) and min(days["valid"]) >= valid_cutoff
    expected = ml.temporal_cutoff_day(collections.Counter(day(r.timestamp) for r in rows).items(), 0.2)
    assert cutoff == expected
    before = [r for r in rows if day(r.timestamp) < cutoff]
    assert valid_cutoff == ml.temporal_cutoff_day(collections.Counter(day(r.timestamp) for r in before).items(), 0.15)
    assert counts["test_rows"] == sum(1 for r in rows if day(r.timestamp) >= cutoff)
    assert 0.1 * len(rows) < counts["test_rows"] <= 0.2 * len(rows)


# --------------------------------------------------------------------------- leave-one-out
NUM_NEGATIVES = 5


@pytest.fixture(scope="module")
def leave_one_out(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loo")
    rows = _rows(synth.generate_ratings(40, 60, 500, seed=7))
    # Two users who rated every item, in opposite time orders, so every item has a train
    # row (the negatives can then be told apart in the vocabulary) and both are short of negatives.
    rows += [(96, i, 3.0, 1000 + i) for i in range(1, 61)]
    rows += [(97, i, 4.0, 2000 - i) for i in range(1, 61)]
    # tie: the later line (item 6) is the test row, item 5 the valid row, item 7 trains
    rows += [(98, 5, 2.0, 5000), (98, 6, 5.0, 5000), (98, 7, 1.0, 4000)]
    rows += [(99, 8, 4.0, 6000)]  # a single rating stays in train
    rows += [(95, 9, 4.0, 6000), (95, 10, 2.0, 6001)]  # two ratings: train + test, no valid row
    _, written = _write(rows, folder / "u.data", "tab")
    out = folder / "out"
    summary = _run(
        "--input", str(folder / "u.data"), "--output", str(out), "--split", "leave_one_out",
        "--num-negatives", str(NUM_NEGATIVES), "--seed", "3", "--num-shards", "2",
    )
    return out, summary, written


def test_leave_one_out_invariants(leave_one_out):
    out, summary, rows = leave_one_out
    counts = _assert_balanced(summary, out)
    by_user: dict[str, list[Row]] = collections.defaultdict(list)
    for row in rows:
        by_user[row.user].append(row)
    all_items = sorted({r.item for r in rows})
    train, valid, test = (_decoded(out, name) for name in ml.SPLIT_NAMES)
    assert all(u is not None and i is not None for u, i, *_ in train + valid + test)  # every id has a train row

    test_users = [u for u, *_ in test]
    valid_users = [u for u, *_ in valid]
    assert sorted(test_users) == sorted(u for u, rs in by_user.items() if len(rs) >= 2)  # exactly one each
    assert sorted(valid_users) == sorted(u for u, rs in by_user.items() if len(rs) >= 3)
    assert "99" not in test_users and sum(1 for r in train if r[0] == "99") == 1
    assert "95" in test_users and "95" not in valid_users
    assert counts["test_rows"] == len(by_user) - 1 and counts["valid_rows"] == len(by_user) - 2
    assert counts["loo_users_with_one_rating"] == 1 and counts["loo_users_without_valid"] == 1
    assert counts["loo_users_short_of_negatives"] == 4  # users 96 and 97 rated everything: test and valid
    assert counts["test_negatives"] == NUM_NEGATIVES * (counts["test_rows"] - 2)
    assert counts["valid_negatives"] == NUM_NEGATIVES * (counts["valid_rows"] - 2)
    assert summary["split"]["num_negatives"] == NUM_NEGATIVES and summary["split"]["seed"] == 3
    assert summary["split"]["valid"]["num_negatives"] == NUM_NEGATIVES

    train_by_user = collections.defaultdict(set)
    for u, i, r, t, negatives in train:
        assert negatives == ()
        train_by_user[u].add((i, r, t))
    held = {"test": {e[0]: e for e in test}, "valid": {e[0]: e for e in valid}}
    for user, rated_rows in by_user.items():
        ordered = sorted(rated_rows, key=lambda r: (r.timestamp, r.line))
        rated = {r.item for r in ordered}
        n_held = 0
        for name, position, stream in (("test", -1, "negatives"), ("valid", -2, "valid_negatives")):
            if user not in held[name]:
                continue
            n_held += 1
            _, item, rating, timestamp, negatives = held[name][user]
            row = ordered[position]
            assert (item, rating, timestamp) == (row.item, row.rating, row.timestamp)
            assert not rated & set(negatives) and len(set(negatives)) == len(negatives)
            if user in ("96", "97"):
                assert negatives == ()
            else:
                seed = common.stable_hash64(3, stream, user)
                assert list(negatives) == ml.sample_negatives(all_items, rated, NUM_NEGATIVES, seed)
        assert train_by_user[user] == {(r.item, r.rating, r.timestamp) for r in ordered[: len(ordered) - n_held]}
    assert (held["test"]["98"][1], held["valid"]["98"][1]) == ("6", "5")
    assert held["test"]["97"][4] != held["valid"]["97"][4] or held["test"]["97"][4] == ()


def test_leave_one_out_tie_rule_larger_item_and_no_valid(tmp_path):
    rows = [(1, 3, 4.0, 100), (1, 9, 5.0, 200), (1, 4, 3.0, 200), (1, 2, 1.0, 50),
            (2, 1, 1.0, 10), (2, 2, 2.0, 20), (2, 5, 3.0, 30)]  # held-out items have no train row: told by rating
    _write(rows, tmp_path / "u.data", "tab")
    flags = ["--input", str(tmp_path / "u.data"), "--split", "leave_one_out", "--num-negatives", "1",
             "--num-shards", "1"]
    larger = _run(*flags, "--tie-rule", "larger-item", "--output", str(tmp_path / "a"))
    assert "larger item id" in larger["split"]["tie_rule"]
    test = {u: r for u, _, r, *_ in _decoded(tmp_path / "a", "test")}
    valid = {u: r for u, _, r, *_ in _decoded(tmp_path / "a", "valid")}
    assert test == {"1": 5.0, "2": 3.0} and valid == {"1": 3.0, "2": 2.0}  # item 9 (5.0) > item 4 (3.0) at t=200
    position = _run(*flags, "--output", str(tmp_path / "b"))  # default: the later line (item 4, 3.0) is test
    assert {u: r for u, _, r, *_ in _decoded(tmp_path / "b", "test")}["1"] == 3.0
    none = _run(*flags, "--no-valid", "--output", str(tmp_path / "c"))
    assert none["counts"]["valid_rows"] == 0 and none["counts"]["test_rows"] == 2
    assert none["split"]["valid"]["rule"].startswith("none")
    assert position["counts"]["valid_rows"] == 2


# --------------------------------------------------------------------------- failures
def test_too_many_rejects_names_file_lines_and_reasons(tmp_path):
    # Six superseded duplicates come first, so the message must skip them to show the malformed rows.
    rows = [(1, i, 3.0, 100 + i) for i in range(1, 7)]
    rows += [(1, i, 4.0, 900 + i) for i in range(1, 7)] + [(2, i, 5.0, 50) for i in range(1, 5)]
    report = synth.write_ratings(
        rows, str(tmp_path / "bad.data"), "tab", malformed=[(12, "1\t2\t3"), (13, "7\t\t3\t5"), (16, "8\t9\tx\t5")]
    )
    out = tmp_path / "out"
    with pytest.raises(common.PipelineInputError) as caught:
        _run("--input", str(tmp_path / "bad.data"), "--output", str(out))
    message = str(caught.value)
    assert str(tmp_path / "bad.data") in message
    assert "3 of the rows" in message and "> --max-rejected-fraction 1.00%" in message
    lines = report.malformed_lines
    assert lines == [13, 15, 19]
    reasons = ["expected 4 tab-separated fields, found 3", "empty item id", "rating 'x' is not a number"]
    for line, reason in zip(lines, reasons):
        assert f"bad.data:{line}: {reason}" in message
    assert "duplicate" not in message
    assert str(out / "rejected") in message
    assert not (out / "dataset.json").exists()


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--input", "{d}/absent.data"], "--input '{d}/absent.data' matches no file"),
        (["--input", "{d}/nothing-*.csv"], "matches no file"),
        (["--input", "{d}/empty.data"], "matches only empty files"),
        (["--input", "{d}/ok.data", "--split", "given", "--test-input", "{d}/absent.test"], "--test-input"),
        (["--input", "{d}/ok.data", "--split", "given", "--eval-input", "{d}/absent.test"], "--test-input"),
        (["--input", "{d}/ok.data", "--split", "given"], "--split given needs --test-input"),
        (["--input", "{d}/ok.data", "--eval-fraction", "1.5"], "--test-fraction must be in (0, 1)"),
        (["--input", "{d}/ok.data", "--valid-fraction", "1"], "--valid-fraction must be in [0, 1)"),
        (["--input", "{d}/ok.data", "--valid-input", "{d}/ok.data"], "--valid-input is only used with --split given"),
        (["--input", "{d}/ok.data", "--eval_fraction", "0.2"],
         "unrecognized argument(s) --eval_fraction 0.2: neither a flag of python -m beam_pipelines.movielens "
         "nor a Beam pipeline option"),
        (["--input", "{d}/ok.data", "--test-frac", "0.2"], "unrecognized argument(s) --test-frac"),
        (["--input", "{d}/odd.txt"], "cannot tell the format of"),
    ],
)
def test_bad_inputs_raise_before_running(tmp_path, make_file, flags, expected):
    make_file("empty.data", b"")
    make_file("ok.data", "1\t2\t3\t4\n")
    make_file("odd.txt", "1 2 3 4\n")
    d = str(tmp_path)
    with pytest.raises(common.PipelineInputError) as caught:
        _run(*[f.format(d=d) for f in flags], "--output", str(tmp_path / "out"))
    assert expected.format(d=d) in str(caught.value)
    assert not (tmp_path / "out").exists()
