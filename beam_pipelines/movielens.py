"""MovieLens ratings -> deduplicated, split, tf.Transform-ed, sharded TFRecords.

Usage::

    python -m beam_pipelines.movielens --input u.data --output OUT \\
        [--split random|given|temporal|leave_one_out] [--runner DataflowRunner ...]

Owns the MovieLens raw formats (``u.data`` tab, ``ratings.dat`` ``::``, the header
CSV of ML-20M/25M/latest, and the NCF ``.rating`` files), their validation, the
four split protocols and sampled negatives. ``run(argv)`` is the only place that
reads or writes; everything else is a pure function or a composite PTransform.

Output (see ARCHITECTURE.md)::

    OUT/{train,valid,test}/part-*.tfrecord.gz   tf.Examples, transformed
    OUT/transform_fn/  OUT/transformed_metadata/  tf.Transform output (analyzed on train only)
    OUT/rejected/part-*.jsonl                     every unused row + reason
    OUT/dataset.json                              counts that add up; written last (the commit marker)

``valid/`` chooses (epochs, hyperparameters); ``test/`` only reports. ``valid/``
is carved out of the training side by the same rule as ``test/``:

  ============== ================================== ==========================================
  ``--split``    test                               valid (``--valid-fraction`` of the train side)
  ============== ================================== ==========================================
  random         stable hash of (seed, user, item)  another stable hash of (seed, user, item)
  given          ``--test-input`` (e.g. u1.test)    a seeded fraction of ``--input``, or
                                                    ``--valid-input``; with ``--negatives-input``
                                                    each user's latest ``--input`` rating with
                                                    ``--num-negatives`` sampled negatives
  temporal       the latest whole days              the latest whole days before the test days
  leave_one_out  each user's latest rating + N      each user's second-latest + its own N
                 sampled negatives                  sampled negatives
  ============== ================================== ==========================================

``--no-valid`` keeps every non-test row in training (``valid/`` is then empty).

Rules:
  * Every non-blank, non-header line lands in exactly one of train, valid,
    test, rejected (malformed) or rejected (duplicate (user, item): the latest
    rating wins; equal timestamps -> the later input position wins).
  * Leave-one-out holds out each user's latest rating (ties: ``--tie-rule``,
    the later input position by default, or the larger item id) and samples
    ``--num-negatives`` items the user never rated, from all items of the
    input, with a generator seeded by a stable hash of (seed, user); valid is
    the second-latest with its own negatives. Users with one rating keep it in
    train; users with two give train + test and no valid row.
  * Splits and samples are made from stable hashes, so the same input and seed
    give the same files on every rerun and runner.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import time
import zlib
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, SetupOptions
from apache_beam.pvalue import TaggedOutput

from beam_pipelines import common
from schemas import ratings as F

FORMATS = ("tab", "dat", "csv", "ncf")
DELIMITERS = {"tab": "\t", "ncf": "\t", "dat": "::", "csv": ","}
SPLITS = ("random", "given", "temporal", "leave_one_out")
OUTPUT_NAMES = ("train", "valid", "test", "eval", "rejected", "transform_fn", "transformed_metadata", "dataset.json",
                "graph", "graph_schema.pbtxt")  # the last two: beam_pipelines.rating_graph's, stale after a rerun
SECONDS_PER_DAY = 86400
DEDUP_BUCKETS = 64  # shuffle buckets for duplicate detection
USER_BUCKETS = 64  # shuffle buckets for the per-user protocols (leave-one-out, listed negatives)
RECORD_BATCH_SIZE = 20_000  # rows per Arrow record batch fed to tf.Transform
TRAIN, VALID, TEST = "train", "valid", "test"
SPLIT_NAMES = (TRAIN, VALID, TEST)
INPUT_SIDE, VALID_INPUT_SIDE, TEST_INPUT_SIDE = "input", "valid_input", "test_input"
TIE_RULES = ("later-position", "larger-item")  # leave-one-out: which of equal latest timestamps is held out


# Counters used outside DoFn instances are created once, not per element.
_DUPLICATES_DROPPED = common.counter("duplicates_dropped")
_NEGATIVES = {VALID: common.counter("valid_negatives"), TEST: common.counter("test_negatives")}
_ROWS = {name: common.counter(f"{name}_rows") for name in SPLIT_NAMES}
_LOO_ONE_RATING = common.counter("loo_users_with_one_rating")
_LOO_NO_VALID = common.counter("loo_users_without_valid")
_LOO_SHORT = common.counter("loo_users_short_of_negatives")
_CUTOFF_DAY = {TEST: common.counter("temporal_cutoff_day_value"), VALID: common.counter("temporal_valid_cutoff_day_value")}
_NEGATIVES_UNMATCHED = common.counter("test_rows_without_listed_negatives")
_NEGATIVES_WITH_POSITIVE = common.counter("listed_negatives_holding_the_positive")


class RowError(ValueError):
    """A malformed row; the message is the reason written to ``rejected/``."""


class Rating(NamedTuple):
    """One parsed rating and where it came from."""

    user: str
    item: str
    rating: float
    timestamp: int
    source: str
    line: int
    side: str  # INPUT_SIDE, or VALID_INPUT_SIDE / TEST_INPUT_SIDE for --valid-input / --test-input
    text: str

    def position(self) -> tuple[int, str, int]:
        """Orders ratings by time, then input position (the documented tie rule)."""
        return (self.timestamp, self.source, self.line)

    def larger_item_position(self) -> tuple[int, int, str, int]:
        """Orders ratings by time, then item id (equal times: the larger item id is later)."""
        return (self.timestamp, int(self.item), self.source, self.line)


def position_key(tie_rule: str):
    """The ordering of one user's ratings that picks the held-out ones (latest last)."""
    return Rating.larger_item_position if tie_rule == "larger-item" else Rating.position


# --------------------------------------------------------------------------- parsing
def detect_format(path: str, lines: Sequence[str]) -> str:
    """Guesses a MovieLens file's format from its name and first lines.

    Raises:
      common.PipelineInputError: the format cannot be told.
    """
    name = os.path.basename(path).lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(".rating"):
        return "ncf"
    first = next((line for line in lines if line.strip()), "")
    if not first:
        raise common.PipelineInputError(
            f"cannot tell the format of {path}: its first lines are blank; check that it is a ratings file, "
            f"or pass --format ({'|'.join(FORMATS)})")
    if "::" in first:
        return "dat"
    if "\t" in first:
        return "tab"
    if "," in first:
        return "csv"
    raise common.PipelineInputError(
        f"cannot tell the format of {path}: first line {first[:80]!r} has no tab, '::' or ','; "
        f"pass --format ({'|'.join(FORMATS)})"
    )


def is_header(text: str, fmt: str) -> bool:
    """A first line whose first field is a word (``userId``), not an id."""
    first_field = text.split(DELIMITERS[fmt], 1)[0].strip().strip('"')
    return bool(first_field) and not first_field.isdigit() and any(c.isalpha() for c in first_field)


def _parse_id(value: str, what: str) -> str:
    value = value.strip()
    if not value:
        raise RowError(f"empty {what}")
    # str.isdigit() alone accepts '²' (int() then raises ValueError, which would
    # crash the pipeline instead of rejecting the row) and '١' (int() maps it to 1).
    if not (value.isascii() and value.isdigit()):
        raise RowError(f"{what} {value[:40]!r} is not a non-negative integer")
    return str(int(value))  # canonical: '007' and '7' are the same id


class RatingRule(NamedTuple):
    """Valid ratings of a file: ``low <= rating <= high`` and, when ``step`` > 0, a multiple of ``step``."""

    low: float
    high: float
    step: float = 0.0

    def describe(self) -> str:
        return f"{self.low:g}..{self.high:g}" + (f" in steps of {self.step:g}" if self.step else "")


WHOLE_STARS = RatingRule(1.0, 5.0, 1.0)  # ML-100K, ML-1M (and the NCF files made from ML-1M)
HALF_STARS = RatingRule(0.5, 5.0, 0.5)  # ML-10M, ML-20M, ML-25M, ml-latest(-small)
_ML10M_PATH = re.compile(r"ml-?10m|10m100k")  # ML-10M's ratings.dat looks like ML-1M's; only its folder tells
_INTEGER = re.compile(r"[+-]?[0-9]+")


def default_rating_rule(path: str, fmt: str) -> tuple[RatingRule, str]:
    """The MovieLens release rule for a file (``--rating-range`` overrides it) and why it applies.

    ``tab`` is ML-100K and ``ncf`` the NCF files of ML-1M: whole stars 1..5;
    ``csv`` is ML-20M/25M/latest: half stars 0.5..5; ``dat`` is ML-1M (whole
    stars) unless the path names ML-10M (half stars).
    """
    if fmt == "csv":
        return HALF_STARS, "csv: ML-20M/25M/latest half stars"
    if fmt == "dat" and _ML10M_PATH.search(path.lower()):
        return HALF_STARS, "dat under an ML-10M folder: half stars"
    if fmt == "dat":
        return WHOLE_STARS, "dat: ML-1M whole stars (ML-10M elsewhere: --rating-range 0.5,5,0.5)"
    return WHOLE_STARS, {"tab": "tab: ML-100K whole stars", "ncf": "ncf: NCF ML-1M whole stars"}.get(fmt, fmt)


def parse_rating_range(value: str) -> RatingRule:
    """``--rating-range LOW,HIGH[,STEP]`` -> ``RatingRule`` (no STEP: any value in the range).

    Raises:
      common.PipelineInputError: not 2 or 3 finite numbers with LOW <= HIGH and STEP >= 0.
    """
    try:
        numbers = [float(v) for v in value.split(",")]
    except ValueError:
        numbers = []
    if len(numbers) not in (2, 3) or not all(map(math.isfinite, numbers)) or numbers[0] > numbers[1] or (
            len(numbers) == 3 and numbers[2] < 0):
        raise common.PipelineInputError(
            f"--rating-range must be LOW,HIGH or LOW,HIGH,STEP (e.g. 1,5,1 or 0.5,5,0.5), got {value!r}")
    return RatingRule(*numbers)


def parse_rating_fields(text: str, fmt: str, rating_range: tuple[float, ...]) -> tuple[str, str, float, int]:
    """Parses one data line into ``(user, item, rating, timestamp)``.

    Args:
      text: the decoded line without its newline.
      fmt: one of ``FORMATS``.
      rating_range: inclusive ``(low, high)`` bounds of a valid rating, or a
        ``RatingRule`` (``(low, high, step)``: also a multiple of ``step``).

    Returns:
      Canonical user id, item id, rating and unix timestamp (seconds).

    Raises:
      RowError: the line is malformed; the message says how.
    """
    delimiter = DELIMITERS[fmt]
    fields = text.split(delimiter)
    if len(fields) != 4:
        shown = "tab" if delimiter == "\t" else repr(delimiter)
        raise RowError(f"expected 4 {shown}-separated fields, found {len(fields)}")
    user = _parse_id(fields[0], "user id")
    item = _parse_id(fields[1], "item id")
    raw_rating = fields[2].strip()
    try:
        # float() also reads '1_0' (10.0) and non-ASCII digits ('٣' is 3.0): not a rating.
        if not raw_rating.isascii() or "_" in raw_rating:
            raise ValueError(raw_rating)
        rating = float(raw_rating)
    except ValueError:
        raise RowError(f"rating {raw_rating[:40]!r} is not a number") from None
    if not math.isfinite(rating):
        raise RowError(f"rating {raw_rating!r} is not finite")
    low, high, *step = rating_range
    if not low <= rating <= high:
        raise RowError(f"rating {rating:g} is outside [{low:g}, {high:g}]")
    if step and step[0] and abs(rating / step[0] - round(rating / step[0])) > 1e-9:
        raise RowError(f"rating {rating:g} is not a multiple of {step[0]:g}")
    raw_timestamp = fields[3].strip()
    if not _INTEGER.fullmatch(raw_timestamp):  # int() also reads '1_000' and non-ASCII digits
        raise RowError(f"timestamp {raw_timestamp[:40]!r} is not an integer")
    timestamp = int(raw_timestamp)
    if timestamp < 0:
        raise RowError(f"timestamp {timestamp} is negative")
    return user, item, rating, timestamp


def parse_negative_line(text: str) -> tuple[str, str, list[str]]:
    """Parses one NCF ``.test.negative`` line: ``(user,item)<TAB>neg1<TAB>...``.

    Returns:
      Canonical user id, held-out item id and the listed negatives, in file order.

    Raises:
      RowError: the line is malformed.
    """
    head, _, rest = text.partition("\t")
    head = head.strip()
    if not (head.startswith("(") and head.endswith(")") and head.count(",") == 1):
        raise RowError(f"expected '(user,item)' before the first tab, found {head[:40]!r}")
    user, item = head[1:-1].split(",")
    negatives = [_parse_id(v, "negative item id") for v in rest.split("\t") if v.strip()]
    if not negatives:
        raise RowError("no negatives listed")
    return _parse_id(user, "user id"), _parse_id(item, "item id"), negatives


class ParseNegativeLines(beam.DoFn):
    """NCF ``.test.negative`` lines -> ``(user, (item, negatives))``; rejects tagged ``rejected``."""

    def __init__(self):
        super().__init__()
        self._lines = common.count("negative_lines_read")
        self._rejected = common.count("negative_lines_rejected")

    def process(self, element: tuple[str, int, str]) -> Iterator[Any]:
        path, number, text = element
        if not text.strip():
            return
        self._lines()
        try:
            user, item, negatives = parse_negative_line(text)
        except RowError as error:
            self._rejected()
            yield TaggedOutput("rejected", common.rejection(path, number, str(error), text))
            return
        yield user, (item, negatives)


def attach_given_negatives(rating: Rating, given: dict[str, tuple[str, list[str]]]) -> list[str]:
    """The listed negatives of a test rating, without its own positive item.

    The NCF ML-1M file lists the held-out item among its own 99 negatives for
    156 users; a candidate equal to the positive is dropped (and counted).
    """
    entry = given.get(rating.user)
    if entry is None or entry[0] != rating.item:
        _NEGATIVES_UNMATCHED.inc()
        return []
    negatives = [n for n in entry[1] if n != rating.item]
    if len(negatives) != len(entry[1]):
        _NEGATIVES_WITH_POSITIVE.inc()
    return negatives


class ParseRatingLines(beam.DoFn):
    """``(path, line, text)`` -> ``Rating``; tagged ``rejected`` for malformed rows.

    Blank lines and a header on a file's first line are counted, not emitted.
    """

    def __init__(self, formats: dict[str, str], side: str, rating_range: tuple[float, ...] | dict[str, tuple]):
        super().__init__()
        self._formats = formats
        self._side = side
        self._rating_range = rating_range
        self._lines = common.count("lines_read")
        self._blank = common.count("blank_lines")
        self._header = common.count("header_lines")
        self._rejected = common.count("rejected_rows")

    def process(self, element: tuple[str, int, str]) -> Iterator[Any]:
        path, number, text = element
        self._lines()
        if not text.strip():
            self._blank()
            return
        fmt = self._formats[path]
        if number == 1 and is_header(text, fmt):
            self._header()
            return
        try:
            rule = self._rating_range[path] if isinstance(self._rating_range, dict) else self._rating_range
            user, item, rating, timestamp = parse_rating_fields(text, fmt, rule)
        except RowError as error:
            self._rejected()
            yield TaggedOutput("rejected", common.rejection(path, number, str(error), text))
            return
        yield Rating(user, item, rating, timestamp, path, number, self._side, text)


def keep_latest(ratings: Iterable[Rating]) -> tuple[Rating, list[Rating]]:
    """Picks the latest of several ratings of one (user, item) pair.

    Returns:
      The kept rating and the superseded ones.
    """
    ordered = sorted(ratings, key=Rating.position)
    return ordered[-1], ordered[:-1]


def _pair_bucket(rating: tuple) -> int:
    """Bucket of a rating's (side, user, item): all ratings of one pair meet in one bucket."""
    user, item, side = rating[0], rating[1], rating[6]
    return zlib.crc32(f"{side}\x1f{user}\x1f{item}".encode()) % DEDUP_BUCKETS


def _drop_duplicates(bucket: int, ratings: list[tuple]) -> Iterator[Any]:
    """Keeps the latest rating of every (side, user, item) pair in a bucket."""
    first: dict[tuple[str, str, str], tuple] = {}
    repeated: dict[tuple[str, str, str], list[tuple]] = {}
    for row in ratings:  # the common case, one rating per pair, stays cheap
        key = (row[6], row[0], row[1])
        if key in first:
            repeated.setdefault(key, [first[key]]).append(row)
        else:
            first[key] = row
    for key, row in first.items():
        if key not in repeated:
            yield Rating._make(row)
    for group in repeated.values():
        kept, dropped = keep_latest(Rating._make(r) for r in group)
        yield kept
        for rating in dropped:
            _DUPLICATES_DROPPED.inc()
            reason = f"duplicate (user, item): superseded by {kept.source}:{kept.line}"
            yield TaggedOutput("duplicates", common.rejection(rating.source, rating.line, reason, rating.text))


# --------------------------------------------------------------------------- splits
def hash_split(rating: Rating, seed: int, test_fraction: float, valid_fraction: float) -> str:
    """Random split: test by a stable hash of (seed, user, item), valid by another one among the rest.

    ``valid_fraction`` is a fraction of the train side (the rows not in test).
    """
    if common.stable_fraction(seed, "split", rating.user, rating.item) < test_fraction:
        return TEST
    return hashed_valid(rating, seed, valid_fraction)


def hashed_valid(rating: Rating, seed: int, valid_fraction: float) -> str:
    """``VALID`` for a seeded ``valid_fraction`` of train-side ratings, else ``TRAIN``."""
    if valid_fraction and common.stable_fraction(seed, "valid", rating.user, rating.item) < valid_fraction:
        return VALID
    return TRAIN


def given_split(rating: Rating, seed: int, valid_fraction: float, has_valid_input: bool) -> str:
    """Given files: ``--test-input`` rows are test, ``--valid-input`` rows valid, the rest train or valid."""
    if rating.side == TEST_INPUT_SIDE:
        return TEST
    if rating.side == VALID_INPUT_SIDE:
        return VALID
    return TRAIN if has_valid_input else hashed_valid(rating, seed, valid_fraction)


def temporal_cutoff_day(day_counts: Iterable[tuple[int, int]], fraction: float, flag: str = "--test-fraction") -> int:
    """The first day D such that ratings on days >= D are at most ``fraction`` of them.

    Whole days go to one side, so the held-out share can fall a little short of
    the fraction; ratings on or after D are held out.

    Raises:
      common.PipelineInputError: even the last day alone exceeds the fraction.
    """
    counts = sorted(day_counts)
    total = sum(c for _, c in counts)
    budget = fraction * total
    tail = 0
    cutoff = None
    for day, c in reversed(counts):
        if tail + c > budget:
            break
        tail += c
        cutoff = day
    if cutoff is None or tail == 0:
        raise common.PipelineInputError(
            f"temporal split: the last day alone holds more than {flag} {fraction} of the ratings"
        )
    return cutoff


def sample_negatives(all_items: Sequence[str], rated: set[str], count: int, seed: int) -> list[str]:
    """Draws ``count`` distinct items the user never rated, reproducibly.

    Args:
      all_items: the sorted item catalogue.
      rated: every item the user rated (train and held out).
      count: how many negatives to draw.
      seed: generator seed (a stable hash of the run seed and the user).

    Returns:
      The negatives in draw order; all unrated items when fewer than ``count`` exist.
    """
    # ``rated`` is a subset of the catalogue: both come from the same input.
    if len(all_items) - len(rated) <= count:
        return [item for item in all_items if item not in rated]
    rng = np.random.default_rng(seed)
    chosen: list[str] = []
    seen: set[str] = set()
    while len(chosen) < count:
        for index in rng.integers(0, len(all_items), size=2 * (count - len(chosen)) + 8):
            item = all_items[index]
            if item in rated or item in seen:
                continue
            seen.add(item)
            chosen.append(item)
            if len(chosen) == count:
                break
    return chosen


def _negatives_for(user: str, split: str, rated: set[str], all_items: Sequence[str], num_negatives: int,
                   seed: int) -> list[str]:
    """The sampled candidates of one held-out rating; test keeps the seed stream it always had."""
    if not num_negatives:
        return []
    stream = "negatives" if split == TEST else "valid_negatives"
    negatives = sample_negatives(all_items, rated, num_negatives, common.stable_hash64(seed, stream, user))
    if len(negatives) < num_negatives:
        _LOO_SHORT.inc()
    return negatives


def leave_one_out(
    user: str, ratings: Iterable[Rating], all_items: Sequence[str], num_negatives: int, seed: int,
    with_valid: bool = True, tie_rule: str = "later-position",
) -> Iterator[tuple[str, Rating, list[str]]]:
    """Holds out the user's latest rating for test and the second-latest for valid, with negatives.

    Yields:
      ``(TRAIN, rating, [])`` for training rows, one ``(TEST, rating, negatives)``
      and (with ``with_valid`` and at least three ratings) one ``(VALID, rating, negatives)``.
    """
    ordered = sorted(ratings, key=position_key(tie_rule))
    if len(ordered) < 2:
        _LOO_ONE_RATING.inc()
        for rating in ordered:
            yield TRAIN, rating, []
        return
    rated = {r.item for r in ordered}
    held = {TEST: ordered[-1]}
    if with_valid and len(ordered) >= 3:
        held[VALID] = ordered[-2]
    elif with_valid:
        _LOO_NO_VALID.inc()
    for rating in ordered[: len(ordered) - len(held)]:
        yield TRAIN, rating, []
    for split in (VALID, TEST):
        if split in held:
            yield split, held[split], _negatives_for(user, split, rated, all_items, num_negatives, seed)


def given_with_listed_negatives(
    user: str, ratings: Iterable[Rating], given: dict[str, tuple[str, list[str]]], all_items: Sequence[str],
    num_negatives: int, seed: int, with_valid: bool, tie_rule: str,
) -> Iterator[tuple[str, Rating, list[str]]]:
    """Given files with listed test negatives (NCF): test from ``--test-input`` with its listed
    negatives, valid = the user's latest ``--input`` rating with ``num_negatives`` sampled ones."""
    ratings = list(ratings)
    base = sorted((r for r in ratings if r.side == INPUT_SIDE), key=position_key(tie_rule))
    rated = {r.item for r in ratings}
    for rating in ratings:
        if rating.side == TEST_INPUT_SIDE:
            yield TEST, rating, attach_given_negatives(rating, given)
    held = base[-1] if with_valid and len(base) >= 2 else None
    for rating in base:
        if rating is not held:
            yield TRAIN, rating, []
    if held is not None:
        yield VALID, held, _negatives_for(user, VALID, rated, all_items, num_negatives, seed)


RawRow = tuple  # (user, item, rating, timestamp, negatives): one row for tf.Transform


def to_raw_row(rating: Rating, negatives: Sequence[str] = ()) -> RawRow:
    """The raw row handed to tf.Transform (columns of ``features.RAW_RATING_COLUMNS``)."""
    return (rating.user, rating.item, rating.rating, rating.timestamp, tuple(negatives))


def raw_rows_to_record_batch(rows: Sequence[RawRow]):
    """Raw rows -> one Arrow RecordBatch in the layout tf.Transform's TFXIO expects.

    Every column is a ``large_list`` (one value per row for the fixed features,
    any number for the negatives). Built column-wise in Arrow: serializing rows
    to CSV and decoding them again cost more than all of tf.Transform here.
    """
    import numpy as np
    import pyarrow as pa

    n = len(rows)
    single = pa.array(np.arange(n + 1, dtype=np.int64))

    def fixed(values, arrow_type):
        return pa.LargeListArray.from_arrays(single, pa.array(values, type=arrow_type))

    negatives = [r[4] for r in rows]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum([len(x) for x in negatives], out=offsets[1:])
    return pa.RecordBatch.from_arrays(
        [
            fixed([r[0].encode() for r in rows], pa.large_binary()),
            fixed([r[1].encode() for r in rows], pa.large_binary()),
            fixed([r[2] for r in rows], pa.float32()),
            fixed([r[3] for r in rows], pa.int64()),
            pa.LargeListArray.from_arrays(
                pa.array(offsets), pa.array([i.encode() for x in negatives for i in x], type=pa.large_binary())
            ),
        ],
        names=list(F.RAW_RATING_COLUMNS),
    )


class BatchRawRows(beam.DoFn):
    """Raw rows -> Arrow RecordBatches of up to ``batch_size`` rows."""

    def __init__(self, batch_size: int):
        super().__init__()
        self._batch_size = batch_size
        self._rows: list[RawRow] = []

    def start_bundle(self):
        self._rows = []

    def process(self, row: RawRow):
        self._rows.append(row)
        if len(self._rows) >= self._batch_size:
            rows, self._rows = self._rows, []
            yield raw_rows_to_record_batch(rows)

    def finish_bundle(self):
        from apache_beam.transforms.window import GlobalWindows

        if self._rows:
            rows, self._rows = self._rows, []
            yield GlobalWindows.windowed_value(raw_rows_to_record_batch(rows))


def raw_tensor_adapter_config():
    """TFXIO's description of the raw record batches (Arrow schema + tensor representations)."""
    import pyarrow as pa
    from tensorflow_transform.tf_metadata import schema_utils
    from tfx_bsl.public import tfxio
    from tfx_bsl.tfxio import tensor_representation_util

    schema = schema_utils.schema_from_feature_spec(F.raw_rating_feature_spec())
    arrow_schema = pa.schema(
        [
            pa.field(F.USER_ID, pa.large_list(pa.large_binary())),
            pa.field(F.ITEM_ID, pa.large_list(pa.large_binary())),
            pa.field(F.RATING, pa.large_list(pa.float32())),
            pa.field(F.TIMESTAMP, pa.large_list(pa.int64())),
            pa.field(F.NEGATIVE_ITEM_IDS, pa.large_list(pa.large_binary())),
        ]
    )
    representations = tensor_representation_util.InferTensorRepresentationsFromSchema(schema)
    return tfxio.TensorAdapterConfig(arrow_schema, representations)


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """How ``SplitRatings`` divides the ratings (the pipeline flags, validated)."""

    protocol: str  # one of SPLITS
    seed: int = 0
    test_fraction: float = 0.1  # random / temporal
    valid_fraction: float = 0.1  # of the train side; 0: valid/ stays empty
    num_negatives: int = 99  # leave_one_out, and valid of given + listed negatives
    has_valid_input: bool = False  # given: valid rows come from --valid-input
    tie_rule: str = "later-position"

    @property
    def with_valid(self) -> bool:
        return self.has_valid_input or self.valid_fraction > 0


class SplitRatings(beam.PTransform):
    """Deduplicated ``Rating``s -> ``{"train", "valid", "test"}`` PCollections of raw rows."""

    def __init__(self, spec: SplitSpec, given_negatives=None, spill_dir: str | None = None):
        """``given_negatives``: optional PCollection of ``(user, (item, negatives))``
        from an NCF ``.test.negative`` file, attached to the test rows of a given split.
        ``spill_dir``: the per-user grouping and the temporal passes go through local files."""
        super().__init__()
        self._spec = spec
        self._given_negatives = given_negatives
        self._spill_dir = spill_dir

    def expand(self, ratings):
        spec = self._spec
        if spec.protocol == "leave_one_out" or (spec.protocol == "given" and self._given_negatives is not None):
            assigned = self._per_user(ratings)
        elif spec.protocol == "temporal":
            assigned = self._temporal(ratings)
        elif spec.protocol == "given":
            assigned = ratings | "AssignBySide" >> beam.Map(
                lambda r: (given_split(r, spec.seed, spec.valid_fraction, spec.has_valid_input), r, []))
        else:
            assigned = ratings | "AssignByHash" >> beam.Map(
                lambda r: (hash_split(r, spec.seed, spec.test_fraction, spec.valid_fraction), r, []))
        parts = assigned | "Partition" >> beam.Partition(lambda a, _: SPLIT_NAMES.index(a[0]), len(SPLIT_NAMES))
        return {name: parts[i] | f"Encode{name.title()}" >> beam.Map(_encode_counted, name)
                for i, name in enumerate(SPLIT_NAMES)}

    def _per_user(self, ratings):
        """Leave-one-out, or given files with listed negatives: every user's ratings in one place."""
        spec = self._spec
        all_items = (
            ratings
            | "Items" >> beam.Map(lambda r: r.item)
            | "DistinctItems" >> beam.Distinct()
            | "ItemList" >> beam.combiners.ToList()
            | "SortItems" >> beam.Map(sorted)
        )
        grouped = (ratings
                   | "AsTuples" >> beam.Map(tuple)
                   | "GroupByUserBucket" >> common.GroupIntoBuckets(_user_bucket, USER_BUCKETS,
                                                                     spill_dir=self._spill_dir)
                   | "GroupByUser" >> beam.FlatMapTuple(_group_by_user))
        if spec.protocol == "leave_one_out":
            return grouped | "LeaveOneOut" >> beam.FlatMap(
                lambda group, items: leave_one_out(group[0], map(Rating._make, group[1]), items, spec.num_negatives,
                                                   spec.seed, spec.with_valid, spec.tie_rule),
                items=beam.pvalue.AsSingleton(all_items),
            )
        return grouped | "GivenWithNegatives" >> beam.FlatMap(
            lambda group, items, given: given_with_listed_negatives(
                group[0], map(Rating._make, group[1]), given, items, spec.num_negatives, spec.seed,
                spec.with_valid, spec.tie_rule),
            items=beam.pvalue.AsSingleton(all_items),
            given=beam.pvalue.AsDict(self._given_negatives),
        )

    def _temporal(self, ratings):
        """The latest whole days are test; the latest whole days before them are valid."""
        spec = self._spec

        def cutoff(rows, label: str, split: str, fraction: float, flag: str):
            return (
                rows
                | f"Day{label}" >> beam.Map(lambda r: r.timestamp // SECONDS_PER_DAY)
                | f"CountPerDay{label}" >> beam.combiners.Count.PerElement()
                | f"DayCounts{label}" >> beam.combiners.ToList()
                | f"CutoffDay{label}" >> beam.Map(lambda counts: _record_cutoff(
                    temporal_cutoff_day(counts, fraction, flag), split))
            )

        # Each pass reads the ratings twice (the day counts, then the assignment that waits for the
        # cutoff): spilled, the runner holds the paths between the two, not the ratings.
        spill = self._spill_dir
        ratings = ratings | "SpillRatings" >> common.SpillToDisk(spill, chunk_size=5000)
        test_day = cutoff(ratings | "ReadForTestDay" >> common.ReadSpilled(spill),
                          "", TEST, spec.test_fraction, "--test-fraction")
        by_test = ratings | "ReadForTestSplit" >> common.ReadSpilled(spill) | "AssignTestByTime" >> beam.Map(
            lambda r, day: (TEST if r.timestamp // SECONDS_PER_DAY >= day else TRAIN, r, []),
            day=beam.pvalue.AsSingleton(test_day),
        )
        if not spec.valid_fraction:
            return by_test
        parts = by_test | "TestOrNot" >> beam.Partition(lambda a, _: 0 if a[0] == TEST else 1, 2)
        train_side = (parts[1]
                      | "TrainSide" >> beam.Map(lambda a: a[1])
                      | "SpillTrainSide" >> common.SpillToDisk(spill, chunk_size=5000))
        valid_day = cutoff(train_side | "ReadForValidDay" >> common.ReadSpilled(spill),
                           "Valid", VALID, spec.valid_fraction, "--valid-fraction")
        by_valid = train_side | "ReadForValidSplit" >> common.ReadSpilled(spill) | "AssignValidByTime" >> beam.Map(
            lambda r, day: (VALID if r.timestamp // SECONDS_PER_DAY >= day else TRAIN, r, []),
            day=beam.pvalue.AsSingleton(valid_day),
        )
        return (parts[0], by_valid) | "FlattenTemporal" >> beam.Flatten()


def _user_bucket(row: tuple) -> int:
    return zlib.crc32(row[0].encode()) % USER_BUCKETS


def _group_by_user(bucket: int, rows: list[tuple]) -> list[tuple[str, list[tuple]]]:
    """A bucket's rows -> ``(user, [rows])`` per user."""
    users: dict[str, list[tuple]] = {}
    for row in rows:
        users.setdefault(row[0], []).append(row)
    return list(users.items())


def _record_cutoff(day: int, split: str) -> int:
    """Passes the cutoff on and records it (a counter incremented once by its value)."""
    _CUTOFF_DAY[split].inc(day)
    return day


def _encode_counted(assigned: tuple[str, Rating, list[str]], partition: str) -> RawRow:
    _, rating, negatives = assigned
    _ROWS[partition].inc()
    if negatives:
        _NEGATIVES[partition].inc(len(negatives))
    return to_raw_row(rating, negatives)


# --------------------------------------------------------------------------- tf.Transform
def preprocessing_fn(inputs: dict[str, Any]) -> dict[str, Any]:
    """tf.Transform: id vocabularies (train side) and rating statistics.

    Unknown ids map to the OOV index (= vocabulary size); the model answers them
    with its defined fallback (see ``trainer.models.mf``).
    """
    import tensorflow as tf
    import tensorflow_transform as tft

    rating = inputs[F.RATING]
    item_vocab = tft.vocabulary(inputs[F.ITEM_ID], vocab_filename=F.ITEM_VOCAB)
    ones = tf.ones_like(rating)
    # The mean from a float64 sum and a count, not tft.mean: tft.mean combines float32
    # partial means in whatever order the runner's bundles come, so its last bits (and
    # with them every shard's bytes) differed between DirectRunner modes. A float64 sum
    # of MovieLens ratings (multiples of 0.5) is exact in any order.
    rating64 = tf.cast(rating, tf.float64)
    mean = tf.cast(tft.sum(rating64) / tf.cast(tft.size(rating64), tf.float64), tf.float32)
    return {
        F.USER_INDEX: tft.compute_and_apply_vocabulary(
            inputs[F.USER_ID], vocab_filename=F.USER_VOCAB, num_oov_buckets=1
        ),
        F.ITEM_INDEX: tft.apply_vocabulary(inputs[F.ITEM_ID], item_vocab, num_oov_buckets=1),
        F.NEGATIVE_ITEM_INDEX: tft.apply_vocabulary(inputs[F.NEGATIVE_ITEM_IDS], item_vocab, num_oov_buckets=1),
        F.RATING: rating,
        F.TIMESTAMP: inputs[F.TIMESTAMP],
        F.RATING_MEAN: ones * mean,
        F.RATING_MIN: ones * tft.min(rating),
        F.RATING_MAX: ones * tft.max(rating),
    }


class TransformAndWrite(beam.PTransform):
    """Raw rows -> Arrow RecordBatches -> tf.Transform -> TFRecord shards.

    tf.Transform is fed RecordBatches with a TFXIO TensorAdapterConfig (the
    fast path of PITFALLS.md; Python dicts are slow and crash at exit).

    Analyzes the train rows only, transforms train, valid and test with the
    same ``transform_fn`` and writes it beside the data.
    """

    def __init__(self, output: str, temp_dir: str, num_shards: int, spill_dir: str | None = None):
        super().__init__()
        self._output = output
        self._temp_dir = temp_dir
        self._num_shards = num_shards
        self._spill_dir = spill_dir

    def expand(self, rows: dict[str, Any]):
        import tensorflow_transform.beam as tft_beam
        from tfx_bsl.coders import example_coder

        config = raw_tensor_adapter_config()
        spill = self._spill_dir
        # Large record batches: tf.Transform's cost is dominated by per-batch
        # TensorFlow calls, so fewer, bigger batches are much faster. The batches are
        # spilled when a spill directory is given: the analysis and the transforms
        # run in later stages (the transforms wait for the analysis), so without it
        # the runner holds every split's batches in memory until then.
        with tft_beam.Context(temp_dir=self._temp_dir, desired_batch_size=RECORD_BATCH_SIZE):
            raw = {name: rows[name]
                   | f"Batch{name.title()}" >> beam.ParDo(BatchRawRows(RECORD_BATCH_SIZE))
                   | f"Spill{name.title()}" >> common.SpillToDisk(spill)
                   for name in SPLIT_NAMES}
            transform_fn = ((raw[TRAIN] | "ReadTrainForAnalysis" >> common.ReadSpilled(spill), config)
                            | "Analyze" >> tft_beam.AnalyzeDataset(preprocessing_fn))
            transformed = {}
            for name in SPLIT_NAMES:
                batches = raw[name] | f"Read{name.title()}ForTransform" >> common.ReadSpilled(spill)
                transformed[name], _ = ((batches, config), transform_fn) | f"Transform{name.title()}" >> (
                    tft_beam.TransformDataset(output_record_batches=True))
            written = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(self._output)

        def to_examples(batch_and_passthrough):
            from tensorflow.core.example import example_pb2

            # RecordBatchToExamples writes each Example's feature map in an arbitrary
            # order that changes between runs; the shard of a record and the order
            # within a shard come from its bytes, so the bytes must be canonical
            # (deterministic serialization sorts the map; ~2 us per record).
            return [
                example_pb2.Example.FromString(serialized).SerializeToString(deterministic=True)
                for serialized in example_coder.RecordBatchToExamples(batch_and_passthrough[0])
            ]

        for name, data in transformed.items():
            _ = (
                data
                | f"ToExamples{name.title()}" >> beam.FlatMap(to_examples)
                | f"Write{name.title()}"
                >> common.WriteDeterministicShards(
                    common.join_path(self._output, name, "part"), self._num_shards, spill_dir=spill
                )
            )
        return written


# --------------------------------------------------------------------------- wiring
class ReadRatings(beam.PTransform):
    """Files -> ``{"ratings": deduplicated Rating, "rejected": JSON rows}``."""

    def __init__(self, files_by_side: dict[str, list[str]], formats: dict[str, str], rating_range,
                 spill_dir: str | None = None):
        super().__init__()
        self._files_by_side = files_by_side
        self._formats = formats
        self._rating_range = rating_range
        self._spill_dir = spill_dir

    def expand(self, pbegin):
        parsed, rejected = [], []
        for side, files in sorted(self._files_by_side.items()):
            label = {INPUT_SIDE: "", VALID_INPUT_SIDE: "Valid", TEST_INPUT_SIDE: "Test"}[side]
            result = (
                pbegin
                | f"Read{label}Lines" >> common.ReadPositionedLines(files)
                | f"Parse{label}Lines"
                >> beam.ParDo(ParseRatingLines(self._formats, side, self._rating_range)).with_outputs(
                    "rejected", main="ratings"
                )
            )
            parsed.append(result.ratings)
            rejected.append(result.rejected)
        deduped = (
            parsed
            | "FlattenSides" >> beam.Flatten()
            # Plain tuples across the shuffle: Beam's fast coder handles them natively.
            | "AsTuples" >> beam.Map(tuple)
            | "GroupByPairBucket" >> common.GroupIntoBuckets(_pair_bucket, DEDUP_BUCKETS, spill_dir=self._spill_dir)
            | "KeepLatest" >> beam.FlatMapTuple(_drop_duplicates).with_outputs("duplicates", main="ratings")
        )
        all_rejected = (*rejected, deduped.duplicates) | "FlattenRejected" >> beam.Flatten()
        return {"ratings": deduped.ratings, "rejected": all_rejected}


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The pipeline's flags and the Beam options; any other argument is an error.

    Raises:
      common.PipelineInputError: an argument that is neither (e.g. ``--eval_fraction``).
    """
    parser = argparse.ArgumentParser(
        prog="python -m beam_pipelines.movielens",
        description=__doc__.split("\n\n")[0],
        epilog="Any other flag must be a Beam pipeline option (--runner, --project, --region, "
        "--temp_location, --setup_file, ...); anything else is an error.",
        allow_abbrev=False,
    )
    parser.add_argument("--input", required=True, help="ratings file or glob (local or gs://)")
    parser.add_argument("--output", required=True, help="output directory (local or gs://)")
    parser.add_argument("--format", default="auto", choices=("auto", *FORMATS))
    parser.add_argument("--split", default="random", choices=SPLITS)
    parser.add_argument("--test-fraction", "--eval-fraction", dest="test_fraction", type=float, default=0.1,
                        help="random/temporal: share of the ratings held out for test (--eval-fraction: old name)")
    parser.add_argument("--valid-fraction", type=float, default=0.1,
                        help="share of the train side held out for valid (every protocol but leave_one_out "
                             "and given with --valid-input / --negatives-input)")
    parser.add_argument("--no-valid", action="store_true", help="no valid split: every non-test row trains")
    parser.add_argument("--test-input", "--eval-input", dest="test_input",
                        help="given split: the test file or glob (e.g. u1.test; --eval-input: old name)")
    parser.add_argument("--valid-input", help="given split: a file or glob of valid rows (instead of a fraction)")
    parser.add_argument("--num-negatives", type=int, default=99,
                        help="leave_one_out (and valid of given + --negatives-input): sampled negatives per held-out user")
    parser.add_argument(
        "--negatives-input",
        help="given split: NCF .test.negative file whose listed negatives become the test candidates",
    )
    parser.add_argument("--tie-rule", default="later-position", choices=TIE_RULES,
                        help="leave_one_out: which of a user's equally latest ratings is held out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-shards", type=common.shard_count, default="auto",
                        help="files per split: an integer, or auto (default): 8, or one per 64 MiB of input if more")
    parser.add_argument("--max-rejected-fraction", type=float, default=0.01)
    parser.add_argument("--spill", default="auto", choices=common.SPILL_CHOICES,
                        help="move the large shuffles through local files so memory stays bounded: "
                             "auto (default) on the DirectRunner, not on Dataflow (its shuffle spills already)")
    parser.add_argument("--rating-range", default=None,
                        help="inclusive LOW,HIGH[,STEP] of a valid rating (STEP: ratings are its multiples); "
                             "default per format: 1,5,1 for tab/ncf and ML-1M .dat, 0.5,5,0.5 for csv and ML-10M .dat")
    return common.parse_pipeline_args(parser, argv)


def _validate(args: argparse.Namespace) -> tuple[RatingRule | None, SplitSpec]:
    """Checks flag combinations; returns the ``--rating-range`` rule (None: per format) and the split spec.

    Raises:
      common.PipelineInputError: a flag value or combination that cannot work.
    """
    if args.split == "given" and not args.test_input:
        raise common.PipelineInputError("--split given needs --test-input (e.g. u1.test)")
    for flag, value in (("--test-input", args.test_input), ("--valid-input", args.valid_input),
                        ("--negatives-input", args.negatives_input)):
        if value and args.split != "given":
            raise common.PipelineInputError(f"{flag} is only used with --split given")
    if args.valid_input and args.negatives_input:
        raise common.PipelineInputError(
            "--valid-input cannot be combined with --negatives-input: with listed test negatives the valid "
            "rows are each user's latest --input rating with --num-negatives sampled negatives")
    if args.valid_input and args.no_valid:
        raise common.PipelineInputError("--valid-input and --no-valid contradict each other")
    if args.split in ("random", "temporal") and not 0.0 < args.test_fraction < 1.0:
        raise common.PipelineInputError(f"--test-fraction must be in (0, 1), got {args.test_fraction}")
    if not 0.0 <= args.valid_fraction < 1.0:
        raise common.PipelineInputError(f"--valid-fraction must be in [0, 1), got {args.valid_fraction}")
    if args.num_negatives < 0:
        raise common.PipelineInputError(f"--num-negatives must be >= 0, got {args.num_negatives}")
    if not 0.0 <= args.max_rejected_fraction <= 1.0:
        raise common.PipelineInputError("--max-rejected-fraction must be in [0, 1]")
    rating_rule = parse_rating_range(args.rating_range) if args.rating_range is not None else None
    valid_fraction = 0.0 if args.no_valid else args.valid_fraction
    if args.split == "leave_one_out" or (args.split == "given" and args.negatives_input):
        valid_fraction = 0.0 if args.no_valid else 1.0  # one held-out row per user, not a fraction
    spec = SplitSpec(args.split, seed=args.seed, test_fraction=args.test_fraction, valid_fraction=valid_fraction,
                     num_negatives=args.num_negatives, has_valid_input=bool(args.valid_input), tie_rule=args.tie_rule)
    return rating_rule, spec


def run(argv: Sequence[str] | None = None, save_main_session: bool = False) -> dict[str, Any]:
    """Runs the pipeline and returns the ``dataset.json`` payload.

    Raises:
      common.PipelineInputError: bad flags, an unreadable, damaged or binary input, an input without a
        usable row, an output that cannot be written, or too many rejects.
    """
    args, beam_args = parse_args(argv)
    rating_rule, spec = _validate(args)
    files_by_side = {INPUT_SIDE: common.check_text_files(common.match_files(args.input, "--input"), "--input")}
    if args.test_input:
        files_by_side[TEST_INPUT_SIDE] = common.check_text_files(
            common.match_files(args.test_input, "--test-input"), "--test-input")
    if args.valid_input:
        files_by_side[VALID_INPUT_SIDE] = common.check_text_files(
            common.match_files(args.valid_input, "--valid-input"), "--valid-input")
    negative_files = (common.check_text_files(common.match_files(args.negatives_input, "--negatives-input"),
                                              "--negatives-input") if args.negatives_input else [])
    args.num_shards = common.resolve_shard_count(
        args.num_shards, [path for files in files_by_side.values() for path in files], minimum=8)
    formats = {
        path: (args.format if args.format != "auto" else detect_format(path, common.first_lines(path)))
        for files in files_by_side.values()
        for path in files
    }
    rules = {path: (rating_rule, "--rating-range") if rating_rule else default_rating_rule(path, fmt)
             for path, fmt in formats.items()}
    options = PipelineOptions(beam_args)
    options.view_as(SetupOptions).save_main_session = save_main_session
    dry_run = common.is_dataflow_dry_run(options)
    spill = not dry_run and common.wants_spill(args.spill, options)
    if not dry_run:
        common.prepare_output(args.output, OUTPUT_NAMES)
    temp_location = options.view_as(GoogleCloudOptions).temp_location
    if dry_run and common.gcs_emulated():
        # tf.Transform creates its temp directory while the graph is built, through TensorFlow's own
        # gs:// file system, which cannot be pointed at a storage emulator: a dry run against one
        # builds with a local temp directory (a real run, or a dry run against GCS, keeps temp_location).
        temp_location = None
    local_temp = None if temp_location else tempfile.mkdtemp(prefix="movielens-tft-")
    temp_dir = common.join_path(temp_location, "tft") if temp_location else local_temp
    spill_dir = tempfile.mkdtemp(prefix="movielens-spill-") if spill else None

    try:
        started = time.time()
        pipeline = beam.Pipeline(options=options)
        read = pipeline | "ReadRatings" >> ReadRatings(
            files_by_side, formats, {p: r for p, (r, _) in rules.items()}, spill_dir)
        given_negatives = None
        rejected = [read["rejected"]]
        if args.negatives_input:
            parsed_negatives = (
                pipeline
                | "ReadNegativeLines" >> common.ReadPositionedLines(negative_files)
                | "ParseNegativeLines" >> beam.ParDo(ParseNegativeLines()).with_outputs("rejected", main="negatives")
            )
            given_negatives = parsed_negatives.negatives
            rejected.append(parsed_negatives.rejected)
        rows = read["ratings"] | "Split" >> SplitRatings(spec, given_negatives, spill_dir)
        _ = rows | "TransformAndWrite" >> TransformAndWrite(args.output, temp_dir, args.num_shards, spill_dir)
        _ = (
            rejected
            | "FlattenAllRejected" >> beam.Flatten()
            | "EncodeRejected" >> beam.Map(common.encode_json_line)
            | "WriteRejected"
            >> common.WriteDeterministicShards(common.join_path(args.output, "rejected", "part"), 1, kind="jsonl")
        )
        if dry_run:
            return common.build_dataflow_job(pipeline, args.output)
        result = common.run_pipeline(pipeline, args.output)
    finally:
        for path in (local_temp, spill_dir):
            if path:
                shutil.rmtree(path, ignore_errors=True)
    counts = common.read_counters(result)
    summary = summarize(args, spec, files_by_side, formats, counts, time.time() - started)
    for source in summary["sources"]:
        rule, why = rules[source["path"]]
        source["rating_rule"] = {"low": rule.low, "high": rule.high, "step": rule.step, "why": why}
    _check_rejects(args, summary)
    if not summary["accounting"]["balanced"]:
        # Never seen on the default in_memory DirectRunner or Dataflow; seen with
        # Beam 2.77's DirectRunner --direct_running_mode=multi_threading, which
        # drops elements nondeterministically. Fail rather than hand on short data.
        raise common.PipelineInputError(
            f"rows do not add up: {summary['accounting']['accounted']} accounted for, "
            f"{summary['counts']['lines_read']} read (runner {options.get_all_options().get('direct_running_mode')}); "
            "outputs are incomplete, rerun with the default DirectRunner mode"
        )
    _require_usable_rows(args, summary)
    logging.info("Wrote %s", common.commit_marker(args.output, summary))
    return summary


def _require_usable_rows(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    """Each input side gave at least one row to its split (a header alone, blank lines, an empty file fail)."""
    counts = summary["counts"]
    breakdown = {"lines read": counts["lines_read"], "header lines": counts["header_lines"],
                 "blank lines": counts["blank_lines"], "rejected": counts["rejected_rows"],
                 "duplicates dropped": counts["duplicates_dropped"]}
    sides = [("--input", args.input, counts["train_rows"], INPUT_SIDE)]
    if args.test_input:
        sides.append(("--test-input", args.test_input, counts["test_rows"], TEST_INPUT_SIDE))
    if args.valid_input:
        sides.append(("--valid-input", args.valid_input, counts["valid_rows"], VALID_INPUT_SIDE))
    for flag, source, used, side in sides:
        common.require_usable(flag=flag, source=source, used=used, breakdown=breakdown, output=args.output,
                              files=[s["path"] for s in summary["sources"] if s["side"] == side])


COUNT_NAMES = (
    "lines_read", "header_lines", "blank_lines", "rejected_rows", "duplicates_dropped",
    "train_rows", "valid_rows", "test_rows", "valid_negatives", "test_negatives",
    "loo_users_with_one_rating", "loo_users_without_valid", "loo_users_short_of_negatives",
)
ACCOUNTED = ("header_lines", "blank_lines", "rejected_rows", "duplicates_dropped", "train_rows", "valid_rows", "test_rows")


def split_protocol(args: argparse.Namespace, spec: SplitSpec, counters: dict[str, int]) -> dict[str, Any]:
    """The ``dataset.json`` ``split`` entry: how test and valid were made."""
    split: dict[str, Any] = {"protocol": spec.protocol, "seed": spec.seed}
    if spec.protocol in ("random", "temporal"):
        split["test_fraction"] = spec.test_fraction
    if spec.protocol == "temporal":
        split["cutoff_day"] = counters.get("temporal_cutoff_day_value")
    if spec.protocol == "leave_one_out":
        split["num_negatives"] = spec.num_negatives
        split["tie_rule"] = {"later-position": "latest timestamp; equal timestamps -> later (file path, line)",
                             "larger-item": "latest timestamp; equal timestamps -> larger item id"}[spec.tie_rule]
    if not spec.with_valid:
        valid = {"rule": "none (--no-valid): every non-test row trains"}
    elif spec.protocol == "leave_one_out":
        valid = {"rule": "each user's second-latest rating (same tie rule), its own sampled negatives",
                 "num_negatives": spec.num_negatives}
    elif args.negatives_input:
        valid = {"rule": "each user's latest --input rating, with sampled negatives", "num_negatives": spec.num_negatives}
    elif spec.has_valid_input:
        valid = {"rule": "--valid-input rows", "source": args.valid_input}
    elif spec.protocol == "temporal":
        valid = {"rule": "the latest whole days before the test days", "valid_fraction": spec.valid_fraction,
                 "cutoff_day": counters.get("temporal_valid_cutoff_day_value")}
    else:
        valid = {"rule": "a stable hash of (seed, user, item) over the train side", "valid_fraction": spec.valid_fraction}
    split["valid"] = valid
    return split


def summarize(
    args: argparse.Namespace,
    spec: SplitSpec,
    files_by_side: dict[str, list[str]],
    formats: dict[str, str],
    counters: dict[str, int],
    seconds: float,
) -> dict[str, Any]:
    """Builds ``dataset.json``: sources, split protocol, counts, vocabularies, statistics."""
    import tensorflow_transform as tft

    counts = {name: counters.get(name, 0) for name in COUNT_NAMES}
    accounted = sum(counts[n] for n in ACCOUNTED)
    transform_output = tft.TFTransformOutput(args.output)
    stats = _rating_statistics(transform_output)
    split = split_protocol(args, spec, counters)
    if args.negatives_input:
        split["given_negatives"] = {
            "source": args.negatives_input,
            "sha256": [common.sha256_of(p) for p in common.match_files(args.negatives_input, "--negatives-input")],
            **{
                name: counters.get(name, 0)
                for name in (
                    "negative_lines_read", "negative_lines_rejected",
                    "test_rows_without_listed_negatives", "listed_negatives_holding_the_positive",
                )
            },
        }
    return {
        "dataset": "movielens",
        "schema": "ratings",
        "sources": [
            {"path": path, "side": side, "format": formats[path], "sha256": common.sha256_of(path)}
            for side, files in sorted(files_by_side.items())
            for path in files
        ],
        "split": split,
        "splits": {name: common.split_summary(args.output, name, args.num_shards, counts[f"{name}_rows"])
                   for name in SPLIT_NAMES},
        "counts": counts,
        "accounting": {
            "rule": "lines_read = " + " + ".join(ACCOUNTED),
            "accounted": accounted,
            "balanced": accounted == counts["lines_read"],
        },
        "vocabulary": {
            "user": transform_output.vocabulary_size_by_name(F.USER_VOCAB),
            "item": transform_output.vocabulary_size_by_name(F.ITEM_VOCAB),
        },
        "rating_stats": stats,
        "num_shards": args.num_shards,
        "rejected_fraction": counts["rejected_rows"] / max(1, counts["lines_read"] - counts["header_lines"] - counts["blank_lines"]),
        "pipeline_seconds": round(seconds, 2),
    }


def _rating_statistics(transform_output) -> dict[str, float]:
    """Reads the tf.Transform rating statistics out of the transform graph."""
    import tensorflow as tf

    layer = transform_output.transform_features_layer()
    outputs = layer(
        {
            F.USER_ID: tf.constant([""]),
            F.ITEM_ID: tf.constant([""]),
            F.RATING: tf.constant([0.0]),
            F.TIMESTAMP: tf.constant([0], tf.int64),
            F.NEGATIVE_ITEM_IDS: tf.sparse.from_dense(tf.constant([[""]]))
        }
    )
    return {
        "mean": float(outputs[F.RATING_MEAN][0]),
        "min": float(outputs[F.RATING_MIN][0]),
        "max": float(outputs[F.RATING_MAX][0]),
    }


def _check_rejects(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    if summary["rejected_fraction"] <= args.max_rejected_fraction:
        return
    examples = "; ".join(
        f"{os.path.basename(r['source'])}:{r['line']}: {r['reason']} ({r['text'][:60]!r})"
        for r in common.first_rejections(args.output, keep=lambda r: not r["reason"].startswith("duplicate"))
    )
    rules = sorted({f"{s['format']}: {RatingRule(s['rating_rule']['low'], s['rating_rule']['high'], s['rating_rule']['step']).describe()}"
                    for s in summary["sources"] if "rating_rule" in s})
    raise common.PipelineInputError(
        f"{summary['counts']['rejected_rows']} of the rows of {args.input} were rejected "
        f"({summary['rejected_fraction']:.2%} > --max-rejected-fraction {args.max_rejected_fraction:.2%}); "
        f"first: {examples}; all in {common.join_path(args.output, 'rejected')}"
        + (f"; valid ratings ({'; '.join(rules)}) can be changed with --rating-range LOW,HIGH[,STEP]"
           if "rating " in examples else "")
    )


def _describe(summary: dict[str, Any]) -> str:
    counts = summary["counts"]
    return (
        f"{counts['train_rows']} train, {counts['valid_rows']} valid, {counts['test_rows']} test, "
        f"{counts['rejected_rows']} rejected, {counts['duplicates_dropped']} duplicates dropped; "
        f"{summary['vocabulary']['user']} users, {summary['vocabulary']['item']} items; "
        f"{summary['pipeline_seconds']} s"
    )


def main(argv: Sequence[str] | None = None) -> int:
    return common.pipeline_main("movielens", run, _describe, argv)


if __name__ == "__main__":
    # Run through the importable module, not __main__: Dataflow workers and the
    # multi_processing DirectRunner unpickle classes (Rating, DoFns) by module path.
    from beam_pipelines import movielens as _module

    sys.exit(_module.main())
