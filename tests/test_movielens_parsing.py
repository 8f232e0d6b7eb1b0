"""Pure functions of the MovieLens pipeline, without Beam: parsing, format detection,
dedup and split rules, negative sampling, stable hashing and TFRecord framing."""
from __future__ import annotations

import math

import pytest

from beam_pipelines import common
from beam_pipelines import movielens as ml
from beam_pipelines.movielens import Rating, RowError

RANGE = (0.0, 5.0)


def _rating(user="1", item="10", rating=4.0, timestamp=100, source="/d/u.data", line=1, side=ml.INPUT_SIDE):
    return Rating(user, item, rating, timestamp, source, line, side, f"{user}\t{item}\t{rating}\t{timestamp}")


# --------------------------------------------------------------------------- parse_rating_fields
@pytest.mark.parametrize(
    "fmt, text",
    [
        ("tab", "196\t242\t3\t881250949"),
        ("ncf", "196\t242\t3\t881250949"),
        ("dat", "196::242::3::881250949"),
        ("csv", "196,242,3.0,881250949"),
    ],
)
def test_parse_each_format(fmt, text):
    assert ml.parse_rating_fields(text, fmt, RANGE) == ("196", "242", 3.0, 881250949)


def test_parse_canonicalizes_ids_and_strips_spaces():
    assert ml.parse_rating_fields(" 007 , 0042 , 4.5 , 12 ", "csv", RANGE) == ("7", "42", 4.5, 12)
    assert ml.parse_rating_fields("1,2,0.5,0", "csv", RANGE) == ("1", "2", 0.5, 0)


@pytest.mark.parametrize(
    "fmt, text, reason",
    [
        ("tab", "1\t2\t3", "expected 4 tab-separated fields, found 3"),
        ("ncf", "1\t2\t3\t4\t5", "expected 4 tab-separated fields, found 5"),
        ("dat", "1::2::3", "expected 4 '::'-separated fields, found 3"),
        ("csv", "1,2,3,4,5", "expected 4 ','-separated fields, found 5"),
        ("tab", "1 2 3 4", "expected 4 tab-separated fields, found 1"),
        ("tab", "\t2\t3\t4", "empty user id"),
        ("tab", "1\t \t3\t4", "empty item id"),
        ("tab", "u1\t2\t3\t4", "user id 'u1' is not a non-negative integer"),
        ("tab", "-1\t2\t3\t4", "user id '-1' is not a non-negative integer"),
        ("dat", "1::2.5::3::4", "item id '2.5' is not a non-negative integer"),
        # Unicode digits: '²' used to crash int(), '١' used to become id 1.
        ("tab", "\u00b2\t2\t3\t4", "user id '\u00b2' is not a non-negative integer"),
        ("tab", "1\t\u0661\t3\t4", "item id '\u0661' is not a non-negative integer"),
        ("tab", "1\t2\tfive\t4", "rating 'five' is not a number"),
        ("tab", "1\t2\t\t4", "rating '' is not a number"),
        ("tab", "1\t2\tnan\t4", "rating 'nan' is not finite"),
        ("csv", "1,2,NaN,4", "rating 'NaN' is not finite"),
        ("tab", "1\t2\tinf\t4", "rating 'inf' is not finite"),
        ("tab", "1\t2\t-Infinity\t4", "rating '-Infinity' is not finite"),
        ("tab", "1\t2\t6\t4", "rating 6 is outside [0, 5]"),
        ("csv", "1,2,5.5,4", "rating 5.5 is outside [0, 5]"),
        ("tab", "1\t2\t-1\t4", "rating -1 is outside [0, 5]"),
        ("tab", "1\t2\t3\t88125.5", "timestamp '88125.5' is not an integer"),
        ("tab", "1\t2\t3\tyesterday", "timestamp 'yesterday' is not an integer"),
        ("tab", "1\t2\t3\t", "timestamp '' is not an integer"),
        ("tab", "1\t2\t3\t-5", "timestamp -5 is negative"),
    ],
)
def test_parse_rejects_malformed_rows_with_reason(fmt, text, reason):
    with pytest.raises(RowError) as caught:
        ml.parse_rating_fields(text, fmt, RANGE)
    assert str(caught.value) == reason


def test_parse_rating_range_is_inclusive_and_configurable():
    assert ml.parse_rating_fields("1\t2\t1\t0", "tab", (1.0, 5.0))[2] == 1.0
    assert ml.parse_rating_fields("1\t2\t5\t0", "tab", (1.0, 5.0))[2] == 5.0
    with pytest.raises(RowError, match=r"rating 0.5 is outside \[1, 5\]"):
        ml.parse_rating_fields("1\t2\t0.5\t0", "tab", (1.0, 5.0))


# --------------------------------------------------------------------------- detect_format / is_header
@pytest.mark.parametrize(
    "path, lines, expected",
    [
        ("/data/ml-100k/u.data", ["196\t242\t3\t881250949"], "tab"),
        ("/data/ml-100k/u1.base", ["1\t1\t5\t874965758"], "tab"),
        ("/data/ml-1m/ratings.dat", ["1::1193::5::978300760"], "dat"),
        ("gs://bucket/ml-1m/ratings.dat.prefix.gz", ["1::1193::5::978300760"], "dat"),
        ("/data/ml-latest-small/ratings.csv", ["userId,movieId,rating,timestamp", "1,1,4.0,964982703"], "csv"),
        ("/data/ncf/ml-1m.test.rating", ["0\t25\t5\t978824351"], "ncf"),
        ("/data/ncf/ml-1m.train.rating.gz", ["0\t32\t4\t978824330"], "ncf"),
        ("/data/ncf/ML-1M.TEST.RATING", ["anything at all"], "ncf"),
        ("/data/blank-first.txt", ["", "   ", "1::2::3::4"], "dat"),
    ],
)
def test_detect_format(path, lines, expected):
    assert ml.detect_format(path, lines) == expected


@pytest.mark.parametrize("lines", [["1 2 3 4"], [], ["", ""]])
def test_detect_format_undetectable_raises(lines):
    with pytest.raises(common.PipelineInputError) as caught:
        ml.detect_format("/data/mystery.txt", lines)
    message = str(caught.value)
    assert "/data/mystery.txt" in message and "--format" in message


@pytest.mark.parametrize(
    "text, fmt, expected",
    [
        ("userId,movieId,rating,timestamp", "csv", True),
        ('"userId","movieId","rating","timestamp"', "csv", True),
        ("UserID::MovieID::Rating::Timestamp", "dat", True),
        ("user_id\titem_id\trating\ttimestamp", "tab", True),
        ("1,1,4.0,964982703", "csv", False),
        ("196\t242\t3\t881250949", "tab", False),
        ("1::1193::5::978300760", "dat", False),
        ("", "csv", False),
        ("-1,2,3,4", "csv", False),
    ],
)
def test_is_header(text, fmt, expected):
    assert ml.is_header(text, fmt) is expected


# --------------------------------------------------------------------------- decode_line
@pytest.mark.parametrize(
    "raw, first, expected",
    [
        (b"1\t2\t3\t4\n", True, "1\t2\t3\t4"),
        (b"1,2,3,4\r\n", False, "1,2,3,4"),
        (b"\xef\xbb\xbfuserId,movieId\r\n", True, "userId,movieId"),
        # A BOM is only a BOM at the very start of the file.
        (b"\xef\xbb\xbfuserId\n", False, "\ufeffuserId"),
        (b"Mis\xe9rables\n", False, "Misérables"),  # Latin-1 (u.item)
        ("Misérables\n".encode("utf-8"), False, "Misérables"),
        (b"no newline", False, "no newline"),
        (b"\r\n", False, ""),
    ],
)
def test_decode_line(raw, first, expected):
    assert common.decode_line(raw, first) == expected


@pytest.mark.parametrize("name", ["ratings.csv", "ratings.csv.gz", "ratings.csv.bz2"])
def test_read_positioned_lines_plain_and_compressed(tmp_path, name):
    import bz2
    import gzip

    raw = b"\xef\xbb\xbfuserId,movieId,rating,timestamp\r\n1,2,3.5,4\r\n\r\nMis\xe9rables\n5,6,1.0,7"
    compress = {".gz": gzip.compress, ".bz2": bz2.compress}.get("." + name.rsplit(".", 1)[-1], lambda b: b)
    path = tmp_path / name
    path.write_bytes(compress(raw))
    expected = ["userId,movieId,rating,timestamp", "1,2,3.5,4", "", "Misérables", "5,6,1.0,7"]
    assert list(common.read_positioned_lines(str(path))) == [
        (str(path), n, text) for n, text in enumerate(expected, start=1)
    ]
    assert common.first_lines(str(path)) == expected[:2]


# --------------------------------------------------------------------------- keep_latest
def test_keep_latest_prefers_latest_timestamp_then_later_position():
    early = _rating(rating=1.0, timestamp=100, line=9)
    late = _rating(rating=2.0, timestamp=200, line=1)
    kept, dropped = ml.keep_latest([late, early])
    assert kept == late and dropped == [early]

    # Equal timestamps: the later (source, line) wins, whatever the arrival order.
    a = _rating(rating=1.0, timestamp=100, source="/d/a.csv", line=7)
    b = _rating(rating=2.0, timestamp=100, source="/d/a.csv", line=3)
    c = _rating(rating=3.0, timestamp=100, source="/d/b.csv", line=1)
    kept, dropped = ml.keep_latest([c, a, b])
    assert kept == c and dropped == [b, a]
    kept, dropped = ml.keep_latest([a, b])
    assert kept == a and dropped == [b]


def test_keep_latest_single_rating():
    only = _rating()
    assert ml.keep_latest([only]) == (only, [])


# --------------------------------------------------------------------------- temporal_cutoff_day
def test_temporal_cutoff_day():
    counts = [(10, 50), (11, 30), (12, 10), (13, 10)]
    # 20% of 100: days 12 and 13 (20 ratings) fit; adding day 11 would not.
    assert ml.temporal_cutoff_day(counts, 0.2) == 12
    assert ml.temporal_cutoff_day(list(reversed(counts)), 0.2) == 12  # order does not matter
    assert ml.temporal_cutoff_day(counts, 0.15) == 13  # whole days: falls short of 15
    assert ml.temporal_cutoff_day(counts, 0.5) == 11


def test_temporal_cutoff_day_last_day_too_big():
    with pytest.raises(common.PipelineInputError, match="last day alone"):
        ml.temporal_cutoff_day([(1, 10), (2, 90)], 0.5)


# --------------------------------------------------------------------------- sample_negatives
ITEMS = [str(i) for i in range(100, 150)]


def test_sample_negatives_unrated_distinct_deterministic():
    rated = {"100", "101", "120", "149"}
    first = ml.sample_negatives(ITEMS, rated, 10, seed=42)
    assert len(first) == 10
    assert len(set(first)) == 10
    assert not set(first) & rated
    assert set(first) <= set(ITEMS)
    assert ml.sample_negatives(ITEMS, rated, 10, seed=42) == first
    assert ml.sample_negatives(ITEMS, rated, 10, seed=43) != first


def test_sample_negatives_returns_all_unrated_when_too_few():
    rated = set(ITEMS[3:])
    assert ml.sample_negatives(ITEMS, rated, 10, seed=1) == ITEMS[:3]
    assert ml.sample_negatives(ITEMS, rated, 3, seed=1) == ITEMS[:3]
    assert ml.sample_negatives(ITEMS, set(ITEMS), 5, seed=1) == []


def test_sample_negatives_near_exhaustion_still_distinct():
    rated = set(ITEMS[:-5])
    negatives = ml.sample_negatives(ITEMS, rated, 4, seed=7)
    assert len(negatives) == 4 and len(set(negatives)) == 4 and set(negatives) <= set(ITEMS[-5:])


# --------------------------------------------------------------------------- leave_one_out
def test_leave_one_out_holds_out_latest_with_negatives():
    ratings = [
        _rating(item="100", timestamp=300, line=1),
        _rating(item="101", timestamp=100, line=2),
        _rating(item="102", timestamp=200, line=3),
    ]
    out = list(ml.leave_one_out("1", ratings, ITEMS, 5, seed=0))
    assert [(side, r.item) for side, r, _ in out] == [("train", "101"), ("valid", "102"), ("test", "100")]
    assert [n for side, _, n in out if side == ml.TRAIN] == [[]]
    for (_, _, negatives), stream in zip(out[1:], ("valid_negatives", "negatives")):
        expected = ml.sample_negatives(ITEMS, {"100", "101", "102"}, 5, common.stable_hash64(0, stream, "1"))
        assert negatives == expected
        assert len(negatives) == 5 and not {"100", "101", "102"} & set(negatives)
    assert out[1][2] != out[2][2]  # valid has its own negatives
    no_valid = list(ml.leave_one_out("1", ratings, ITEMS, 5, seed=0, with_valid=False))
    assert [(side, r.item) for side, r, _ in no_valid] == [("train", "101"), ("train", "102"), ("test", "100")]


def test_leave_one_out_tie_rule_by_source_and_line():
    ratings = [
        _rating(item="100", timestamp=500, source="/d/a", line=9),
        _rating(item="101", timestamp=500, source="/d/b", line=1),
        _rating(item="102", timestamp=500, source="/d/a", line=2),
    ]
    out = list(ml.leave_one_out("1", ratings, ITEMS, 0, seed=0))
    assert [(side, r.item) for side, r, _ in out] == [("train", "102"), ("valid", "100"), ("test", "101")]
    assert out[-1][2] == []  # --num-negatives 0
    by_item = list(ml.leave_one_out("1", ratings, ITEMS, 0, seed=0, tie_rule="larger-item"))
    assert [(side, r.item) for side, r, _ in by_item] == [("train", "100"), ("valid", "101"), ("test", "102")]


def test_leave_one_out_single_rating_stays_in_train():
    only = _rating(item="100")
    assert list(ml.leave_one_out("1", [only], ITEMS, 5, seed=0)) == [("train", only, [])]


# --------------------------------------------------------------------------- splits and records
def test_random_split_is_stable_and_about_the_fraction():
    ratings = [_rating(user=str(u), item=str(i)) for u in range(60) for i in range(50)]
    chosen = [ml.hash_split(r, 0, 0.2, 0.1) for r in ratings]
    assert chosen == [ml.hash_split(r, 0, 0.2, 0.1) for r in ratings]
    assert abs(chosen.count("test") / len(chosen) - 0.2) < 0.03
    assert abs(chosen.count("valid") / (len(chosen) - chosen.count("test")) - 0.1) < 0.03
    assert chosen != [ml.hash_split(r, 1, 0.2, 0.1) for r in ratings]
    assert "valid" not in [ml.hash_split(r, 0, 0.2, 0.0) for r in ratings]


# --------------------------------------------------------------------------- common
def test_stable_hash64_known_values():
    # Computed once; they must never change (splits and negatives depend on them).
    assert common.stable_hash64(0, "split", "1", "10") == 8881128109250961189
    assert common.stable_hash64(b"abc") == 6455300059550759896
    assert common.stable_hash64("abc") == common.stable_hash64(b"abc")
    assert common.stable_hash64(1, 2) == common.stable_hash64("1", "2") != common.stable_hash64("12")
    assert math.isclose(common.stable_fraction(0, "split", "1", "10"), 8881128109250961189 / 2.0**64)
    assert 0.0 <= common.stable_fraction("x") < 1.0


def test_tfrecord_frame_matches_tf_writer(tmp_path):
    import tensorflow as tf

    records = [b"", b"hello", bytes(range(256)) * 5]
    path = str(tmp_path / "r.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)
    assert (tmp_path / "r.tfrecord").read_bytes() == b"".join(common.tfrecord_frame(r) for r in records)


def test_rejection_and_json_line():
    record = common.rejection("/d/u.data", 3, "empty user id", "\t1\t2\t3")
    assert record == {"source": "/d/u.data", "line": 3, "reason": "empty user id", "text": "\t1\t2\t3"}
    assert common.encode_json_line({"b": "é", "a": 1}) == '{"a": 1, "b": "é"}'.encode("utf-8")
