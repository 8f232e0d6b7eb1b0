"""Synthetic datasets with planted structure, at any scale, in the raw formats we read.

This module owns generating fake-but-learnable raw input for tests and benchmarks.
It does not parse or transform data (that is ``beam_pipelines``) and it does not
download anything (that is ``rawdata.registry``).

MovieLens (``movielens`` subcommand): every user and item gets a rank-``k`` latent
factor and a bias; item popularity is Zipf-like, per-user rating counts are heavy
tailed with a floor, and a rating is ``clip(round(mean + b_u + b_i + u.v + noise), 1, 5)``,
so a model that learns (biases, matrix factorization) clearly beats the global mean.
Timestamps increase per user. The writers produce every MovieLens raw format:
``tab`` (``u.data``), ``dat`` (``ratings.dat``, ``::``), ``csv`` (header
``userId,movieId,rating,timestamp``) and ``ncf`` (NCF ``.rating``, tab), optionally
corrupted (CRLF, UTF-8 BOM, blank trailing lines, malformed lines at given positions)
so that tests can exercise the parsers' dead-letter paths.

Generation is vectorized numpy (no Python loop per rating): one million ratings are
generated and written in a few seconds.

Usage::

    python -m rawdata.synth movielens --num-ratings 1000000 [--num-users U] [--num-items I] \\
        --format tab|dat|csv|ncf --output FILE [--seed 0] [--rank 8] [--noise 0.5]

    python -m rawdata.synth lastfm --num-users 5000 --output DIR [--seed 0] \\
        [--follow-homophily 0.55] [--like-homophily 0.45]   # DIR/{edges.csv,target.csv,features.json}

LastFM (``lastfm`` subcommand): Zipf-sized countries; friendships and liked
artists both lean towards the user's own country (``generate_lastfm``).

Other datasets add a subcommand: a ``(add_arguments, command)`` pair in ``COMMANDS``.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from typing import IO, Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

FORMATS = ("tab", "dat", "csv", "ncf")
DELIMITERS = {"tab": "\t", "ncf": "\t", "dat": "::", "csv": ","}
HEADER_FIELDS = ("userId", "movieId", "rating", "timestamp")  # ML-20M/25M/latest ratings.csv
UTF8_BOM = "\ufeff"

# 2000-01-01T00:00:00Z and a three-year window for the users' first ratings.
_FIRST_TIMESTAMP = 946684800
_START_WINDOW_SECONDS = 3 * 365 * 86400
_CHUNK_ROWS = 1 << 18  # rows per vectorized step: bounds peak memory at any scale
_MAX_SAMPLING_ROUNDS = 8


# --------------------------------------------------------------------------- generation
@dataclasses.dataclass(frozen=True)
class PlantedModel:
    """The ground truth behind generated ratings (before noise, rounding and clipping).

    Attributes:
      global_mean: the offset every rating starts from.
      user_bias: ``[num_users]``; row ``u`` belongs to user id ``first_id + u``.
      item_bias: ``[num_items]``; row ``i`` belongs to item id ``first_id + i``.
      user_factors: ``[num_users, rank]``.
      item_factors: ``[num_items, rank]``.
      item_popularity: ``[num_items]`` sampling probabilities (sum to 1).
    """

    global_mean: float
    user_bias: np.ndarray
    item_bias: np.ndarray
    user_factors: np.ndarray
    item_factors: np.ndarray
    item_popularity: np.ndarray

    def expected_rating(self, user_index: np.ndarray, item_index: np.ndarray) -> np.ndarray:
        """``mean + b_u + b_i + u.v`` for 0-based user and item indices (no noise)."""
        return (
            self.global_mean
            + self.user_bias[user_index]
            + self.item_bias[item_index]
            + np.einsum("nk,nk->n", self.user_factors[user_index], self.item_factors[item_index])
        )


@dataclasses.dataclass(frozen=True)
class SyntheticRatings:
    """Generated ratings as parallel arrays, sorted by (user, timestamp).

    Attributes:
      users: int64 user ids (``first_id``-based).
      items: int64 item ids (``first_id``-based).
      ratings: float32 ratings on the 1..5 scale (half stars when asked).
      timestamps: int64 unix seconds, non-decreasing within each user.
      truth: the planted model the ratings were drawn from.
      first_id: the id of user 0 and item 0.
    """

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    truth: PlantedModel
    first_id: int = 1

    def __len__(self) -> int:
        return len(self.users)

    def rows(self) -> Iterator[tuple[int, int, float, int]]:
        """``(user, item, rating, timestamp)`` tuples of Python scalars."""
        return zip(self.users.tolist(), self.items.tolist(), self.ratings.tolist(), self.timestamps.tolist())


def _ratings_per_user(
    rng: np.random.Generator, num_users: int, num_items: int, total: int, min_per_user: int
) -> np.ndarray:
    """Heavy-tailed per-user counts that sum to ``total``, each at least ``min_per_user`` when possible."""
    floor = min(min_per_user, num_items, total // num_users)
    # Nobody rates more than half the catalogue unless the total needs it (so every
    # user keeps unrated items to sample negatives from).
    cap = max(floor, num_items // 2)
    if total > cap * num_users:
        cap = num_items
    counts = np.full(num_users, floor, dtype=np.int64)
    # Log-normal activity: most users rate a little, a few rate a lot (as in MovieLens).
    activity = rng.lognormal(mean=0.0, sigma=1.1, size=num_users)
    remaining = total - counts.sum()
    while remaining > 0:
        weights = np.where(counts < cap, activity, 0.0)
        counts += rng.multinomial(remaining, weights / weights.sum())
        over = counts > cap
        remaining = int((counts[over] - cap).sum())
        counts[over] = cap
    return counts


def _draw_distinct_items(
    rng: np.random.Generator, counts: np.ndarray, popularity: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Draws ``counts[u]`` distinct items for every user ``u``, favouring popular items.

    Oversamples with replacement and keeps the first distinct draws, in rounds for
    the users still short; the few users left short after that (those who rate
    nearly the whole catalogue) are filled from their unrated items directly.

    Returns:
      0-based ``(user_index, item_index)`` arrays, grouped by user in draw order.
    """
    num_users, num_items = len(counts), len(popularity)
    cdf = np.cumsum(popularity)
    cdf[-1] = 1.0
    accepted_keys = np.empty(0, dtype=np.int64)  # user * num_items + item, sorted
    pieces: list[np.ndarray] = []
    missing = counts.copy()
    for _ in range(_MAX_SAMPLING_ROUNDS):
        short = np.flatnonzero(missing > 0)
        if not len(short):
            break
        # Probability mass a user already rated: draws there are wasted, so draw more.
        rated_mass = np.bincount(
            accepted_keys // num_items, weights=popularity[accepted_keys % num_items], minlength=num_users
        )[short]
        draws = np.ceil(missing[short] * 1.2 / np.maximum(1.0 - rated_mass, 0.02)).astype(np.int64) + 2
        user = np.repeat(short, draws)
        item = np.minimum(np.searchsorted(cdf, rng.random(len(user)), side="right"), num_items - 1)
        keys = user * num_items + item
        keys = keys[~_sorted_contains(accepted_keys, keys)]
        order = np.argsort(keys, kind="stable")
        is_first = np.ones(len(keys), dtype=bool)
        is_first[order[1:]] = keys[order[1:]] != keys[order[:-1]]
        keys = keys[is_first]  # distinct, still grouped by user in draw order
        key_user = keys // num_items
        group_start = np.searchsorted(key_user, key_user, side="left")
        keys = keys[np.arange(len(keys)) - group_start < missing[key_user]]
        pieces.append(keys)
        accepted_keys = np.sort(np.concatenate([accepted_keys, keys]))  # disjoint by construction
        missing -= np.bincount(keys // num_items, minlength=num_users)
    for user in np.flatnonzero(missing > 0):  # rare: users near the catalogue size
        rated = accepted_keys[(accepted_keys // num_items) == user] % num_items
        unrated = np.setdiff1d(np.arange(num_items), rated)
        weights = popularity[unrated] / popularity[unrated].sum()
        chosen = rng.choice(unrated, size=missing[user], replace=False, p=weights)
        pieces.append(user * num_items + chosen)
    keys = np.concatenate(pieces) if pieces else np.empty(0, dtype=np.int64)
    # Shuffle each user's items (later rounds lean towards rarer items) and group by user.
    order = np.lexsort((rng.random(len(keys)), keys // num_items))
    keys = keys[order]
    return keys // num_items, keys % num_items


def _sorted_contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Vectorized membership of ``keys`` in the sorted array ``sorted_keys``."""
    if not len(sorted_keys):
        return np.zeros(len(keys), dtype=bool)
    position = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[position] == keys


def _user_timestamps(rng: np.random.Generator, user_index: np.ndarray, num_users: int) -> np.ndarray:
    """Increasing timestamps per user: sessions of quick ratings separated by long gaps."""
    n = len(user_index)
    long_gap = rng.random(n) < 0.15
    gaps = 1 + np.floor(np.where(long_gap, rng.exponential(5 * 86400, n), rng.exponential(90, n))).astype(np.int64)
    total = np.cumsum(gaps)
    group_start = np.searchsorted(user_index, user_index, side="left")
    within = total - (total[group_start] - gaps[group_start])  # restart the sum at each user
    start = _FIRST_TIMESTAMP + rng.integers(0, _START_WINDOW_SECONDS, size=num_users)
    return start[user_index] + within


def _draw_ratings(
    rng: np.random.Generator,
    truth: PlantedModel,
    user_index: np.ndarray,
    item_index: np.ndarray,
    noise: float,
    half_stars: bool,
) -> np.ndarray:
    """Noisy, rounded, clipped ratings, computed in chunks to bound memory."""
    out = np.empty(len(user_index), dtype=np.float32)
    step = 0.5 if half_stars else 1.0
    low = 0.5 if half_stars else 1.0
    for start in range(0, len(user_index), _CHUNK_ROWS):
        end = min(start + _CHUNK_ROWS, len(user_index))
        score = truth.expected_rating(user_index[start:end], item_index[start:end])
        score += noise * rng.standard_normal(end - start)
        out[start:end] = np.clip(np.round(score / step) * step, low, 5.0)
    return out


def generate_ratings(
    num_users: int,
    num_items: int,
    num_ratings: int,
    seed: int,
    rank: int = 8,
    noise: float = 0.5,
    *,
    min_per_user: int = 5,
    zipf_exponent: float = 1.0,
    duplicate_fraction: float = 0.0,
    half_stars: bool = False,
    first_id: int = 1,
) -> SyntheticRatings:
    """Generates MovieLens-like ratings with planted low-rank structure.

    Args:
      num_users: users (ids ``first_id .. first_id + num_users - 1``); each rates at
        least ``min_per_user`` items when ``num_ratings`` allows it.
      num_items: items in the catalogue; popularity is Zipf-like, so rare items may
        end up with no rating at all.
      num_ratings: rows to generate, duplicates included.
      seed: seed of the generator; the same arguments give the same ratings.
      rank: dimension of the planted user and item factors.
      noise: standard deviation of the Gaussian noise added before rounding.
      min_per_user: floor of each user's number of distinct items.
      zipf_exponent: item popularity is proportional to ``1 / popularity_rank**exponent``.
      duplicate_fraction: fraction of rows that re-rate an already rated (user, item)
        pair later in time, with a freshly drawn rating (for dedup tests).
      half_stars: ratings on the 0.5..5 half-star scale of ML-latest instead of 1..5.
      first_id: id of the first user and of the first item (NCF files are 0-based).

    Returns:
      ``SyntheticRatings`` sorted by (user, timestamp).

    Raises:
      ValueError: impossible sizes (fewer ratings than users, more distinct pairs
        than users x items, a fraction outside [0, 1)).
    """
    if num_users < 1 or num_items < 1 or rank < 1:
        raise ValueError("num_users, num_items and rank must be >= 1")
    if not 0.0 <= duplicate_fraction < 1.0:
        raise ValueError(f"duplicate_fraction must be in [0, 1), got {duplicate_fraction}")
    num_duplicates = int(round(duplicate_fraction * num_ratings))
    num_distinct = num_ratings - num_duplicates
    if num_distinct < num_users:
        raise ValueError(f"{num_distinct} distinct ratings cannot cover {num_users} users")
    if num_distinct > num_users * num_items:
        raise ValueError(
            f"{num_distinct} distinct (user, item) pairs do not fit in {num_users} users x {num_items} items"
        )
    rng = np.random.default_rng(seed)

    # Zipf popularity over a random order of the ids, so popularity is not id order.
    popularity = 1.0 / np.arange(1, num_items + 1, dtype=np.float64) ** zipf_exponent
    popularity = rng.permutation(popularity / popularity.sum())
    log_popularity = np.log(popularity)
    popularity_z = (log_popularity - log_popularity.mean()) / max(log_popularity.std(), 1e-9)
    # Factor scale such that u.v has a standard deviation of about 0.7 at any rank.
    factor_scale = (0.7**2 / rank) ** 0.25
    truth = PlantedModel(
        global_mean=3.4,
        user_bias=rng.normal(0.0, 0.45, num_users),
        # Popular items are rated a little higher, as in MovieLens.
        item_bias=rng.normal(0.0, 0.35, num_items) + 0.15 * popularity_z,
        user_factors=rng.normal(0.0, factor_scale, (num_users, rank)),
        item_factors=rng.normal(0.0, factor_scale, (num_items, rank)),
        item_popularity=popularity,
    )

    counts = _ratings_per_user(rng, num_users, num_items, num_distinct, min_per_user)
    user_index, item_index = _draw_distinct_items(rng, counts, popularity)
    timestamps = _user_timestamps(rng, user_index, num_users)
    ratings = _draw_ratings(rng, truth, user_index, item_index, noise, half_stars)

    if num_duplicates:
        source = rng.integers(0, num_distinct, size=num_duplicates)
        user_index = np.concatenate([user_index, user_index[source]])
        item_index = np.concatenate([item_index, item_index[source]])
        later = timestamps[source] + 1 + rng.integers(0, 30 * 86400, size=num_duplicates)
        timestamps = np.concatenate([timestamps, later])
        rerated = _draw_ratings(rng, truth, user_index[num_distinct:], item_index[num_distinct:], noise, half_stars)
        ratings = np.concatenate([ratings, rerated])
        order = np.lexsort((timestamps, user_index))
        user_index, item_index = user_index[order], item_index[order]
        timestamps, ratings = timestamps[order], ratings[order]

    return SyntheticRatings(
        users=user_index + first_id,
        items=item_index + first_id,
        ratings=ratings,
        timestamps=timestamps,
        truth=truth,
        first_id=first_id,
    )


# --------------------------------------------------------------------------- writing
class WriteReport(NamedTuple):
    """What ``write_ratings`` put in a file; line numbers are 1-based, as the pipeline counts.

    Attributes:
      path: the file written.
      fmt: its format.
      data_lines: rating rows written.
      header_lines: 1 when a header was written, else 0.
      malformed_lines: line numbers of the injected malformed lines, in file order.
      blank_lines: blank lines written (trailing).
      total_lines: every line of the file.
    """

    path: str
    fmt: str
    data_lines: int
    header_lines: int
    malformed_lines: list[int]
    blank_lines: int
    total_lines: int


RatingRows = SyntheticRatings | Iterable[Sequence[object]]


def _columns(rows: RatingRows) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(rows, SyntheticRatings):
        return rows.users, rows.items, rows.ratings, rows.timestamps
    table = list(rows)
    if not table:
        return (np.empty(0, np.int64),) * 2 + (np.empty(0, np.float32), np.empty(0, np.int64))
    users, items, ratings, timestamps = zip(*table)
    return (
        np.asarray(users, dtype=np.int64),
        np.asarray(items, dtype=np.int64),
        np.asarray(ratings, dtype=np.float64),
        np.asarray(timestamps, dtype=np.int64),
    )


def format_rating(value: float, fmt: str) -> str:
    """A rating as MovieLens writes it: ``4.0``/``3.5`` in CSV, ``4``/``3.5`` elsewhere."""
    if fmt == "csv":
        return f"{value:.1f}"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _format_lines(columns: tuple[np.ndarray, ...], fmt: str, start: int, end: int) -> list[str]:
    users, items, ratings, timestamps = (c[start:end] for c in columns)
    # Ratings take few distinct values: format each once, not once per row.
    distinct, inverse = np.unique(ratings, return_inverse=True)
    texts = np.array([format_rating(v, fmt) for v in distinct.tolist()], dtype=object)[inverse.reshape(-1)]
    delimiter = DELIMITERS[fmt]
    fields = zip(map(str, users.tolist()), map(str, items.tolist()), texts, map(str, timestamps.tolist()))
    return list(map(delimiter.join, fields))


def _open_for_write(path: str) -> IO[bytes]:
    """Opens through Beam's FileSystems: gs:// works, ``.gz``/``.bz2`` are compressed."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.create(path, compression_type=CompressionTypes.AUTO)


def write_ratings(
    rows: RatingRows,
    path: str,
    fmt: str,
    *,
    header: bool | None = None,
    crlf: bool = False,
    bom: bool = False,
    trailing_blank_lines: int = 0,
    malformed: Sequence[tuple[int, str]] = (),
) -> WriteReport:
    """Writes ratings in a MovieLens raw format, optionally corrupted for tests.

    Args:
      rows: ``SyntheticRatings`` or ``(user, item, rating, timestamp)`` rows.
      path: destination (local or gs://; ``.gz`` compresses).
      fmt: ``tab`` (u.data), ``dat`` (``::``), ``csv`` (header
        ``userId,movieId,rating,timestamp``) or ``ncf`` (tab, for ``*.rating``).
      header: write a header line; default only for ``csv``.
      crlf: end lines with CRLF instead of LF.
      bom: start the file with a UTF-8 byte order mark.
      trailing_blank_lines: empty lines appended at the end.
      malformed: ``(position, text)`` lines to inject; a line is written before
        data row ``position`` (0-based; ``>=`` the row count appends it after the
        last row). Lines at the same position keep their given order.

    Returns:
      A ``WriteReport`` with the file's line numbers of the malformed lines.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    columns = _columns(rows)
    count = len(columns[0])
    write_header = (fmt == "csv") if header is None else header
    newline = "\r\n" if crlf else "\n"
    injected = sorted(((min(position, count), order, text) for order, (position, text) in enumerate(malformed)))
    malformed_lines: list[int] = []
    line_number = 0

    def chunks() -> Iterator[str]:
        nonlocal line_number
        prefix = UTF8_BOM if bom else ""
        if write_header:
            line_number += 1
            yield prefix + DELIMITERS[fmt].join(HEADER_FIELDS) + newline
            prefix = ""
        next_injected = 0
        for start in range(0, max(count, 1), _CHUNK_ROWS):
            end = min(start + _CHUNK_ROWS, count)
            lines = _format_lines(columns, fmt, start, end) if end > start else []
            boundary = end if end < count else math.inf  # the last chunk takes every remaining injection
            pieces: list[str] = []
            cursor = start
            while next_injected < len(injected) and injected[next_injected][0] <= boundary:
                position, _, text = injected[next_injected]
                pieces.extend(lines[cursor - start:position - start])
                line_number += position - cursor
                cursor = position
                line_number += 1
                malformed_lines.append(line_number)
                pieces.append(text)
                next_injected += 1
            pieces.extend(lines[cursor - start:])
            line_number += end - cursor
            if pieces:
                yield prefix + newline.join(pieces) + newline
                prefix = ""
        if prefix:  # nothing written yet: the BOM still starts the file
            yield prefix
        line_number += trailing_blank_lines
        yield newline * trailing_blank_lines

    with _open_for_write(path) as handle:
        for text in chunks():
            handle.write(text.encode("utf-8"))
    return WriteReport(
        path=path,
        fmt=fmt,
        data_lines=count,
        header_lines=int(write_header),
        malformed_lines=malformed_lines,
        blank_lines=trailing_blank_lines,
        total_lines=line_number,
    )


# --------------------------------------------------------------------------- LastFM
@dataclasses.dataclass(frozen=True)
class LastFMGraph:
    """A generated LastFM-format social graph with planted country structure.

    Attributes:
      labels: ``[num_users]`` country of user ``u`` (ids are ``0..num_users-1``).
      edges: ``[E, 2]`` undirected friendships ``(a, b)``, ``a < b``, no duplicates.
      likes: user id -> sorted artist ids.
      artist_country: ``[num_artists]`` home country of each artist.
    """

    labels: np.ndarray
    edges: np.ndarray
    likes: dict[int, list[int]]
    artist_country: np.ndarray


def generate_lastfm(
    num_users: int,
    seed: int,
    *,
    num_classes: int = 18,
    avg_degree: float = 7.0,
    follow_homophily: float = 0.55,
    num_artists: int | None = None,
    avg_likes: float = 12.0,
    like_homophily: float = 0.45,
) -> LastFMGraph:
    """Generates users in countries that follow and like along country lines.

    Country sizes are Zipf-like (as LastFM Asia: a few big countries, a long tail).
    Each friendship picks a same-country partner with probability
    ``follow_homophily`` (else anyone); each like picks an artist of the user's
    country with probability ``like_homophily`` (else any artist), artists drawn by
    Zipf popularity. Both edge types therefore carry the label, each only in part,
    so a model that uses both beats one that uses either alone.
    """
    if num_users < num_classes:
        raise ValueError(f"--num-users must be at least the number of classes ({num_classes})")
    rng = np.random.default_rng(seed)
    class_p = 1.0 / np.arange(1, num_classes + 1) ** 0.9
    class_p /= class_p.sum()
    labels = rng.choice(num_classes, size=num_users, p=class_p)
    labels[:num_classes] = np.arange(num_classes)  # every class present
    members = [np.flatnonzero(labels == c) for c in range(num_classes)]

    num_pairs = int(num_users * avg_degree / 2)
    sources = rng.integers(0, num_users, size=num_pairs)
    same = rng.random(num_pairs) < follow_homophily
    targets = rng.integers(0, num_users, size=num_pairs)
    for c in range(num_classes):
        pick = same & (labels[sources] == c)
        targets[pick] = rng.choice(members[c], size=int(pick.sum()))
    pairs = np.stack([np.minimum(sources, targets), np.maximum(sources, targets)], axis=1)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    pairs = np.unique(pairs, axis=0)

    num_artists = num_artists or max(num_classes * 5, num_users // 2)
    artist_country = rng.choice(num_classes, size=num_artists, p=class_p)
    popularity = 1.0 / np.arange(1, num_artists + 1) ** 0.8
    rng.shuffle(popularity)
    by_country = [np.flatnonzero(artist_country == c) for c in range(num_classes)]
    counts = 1 + rng.poisson(avg_likes - 1, size=num_users)
    likes: dict[int, list[int]] = {}
    for user in range(num_users):
        k = int(counts[user])
        local = by_country[labels[user]]
        home = rng.random(k) < like_homophily
        chosen = rng.choice(num_artists, size=k, p=popularity / popularity.sum())
        if len(local) and home.any():
            local_p = popularity[local] / popularity[local].sum()
            chosen[home] = rng.choice(local, size=int(home.sum()), p=local_p)
        likes[user] = sorted(set(chosen.tolist()))
    return LastFMGraph(labels=labels, edges=pairs, likes=likes, artist_country=artist_country)


def write_lastfm(graph: LastFMGraph, output_dir: str) -> dict[str, str]:
    """Writes ``edges.csv`` (node_1,node_2), ``target.csv`` (id,target), ``features.json``."""
    import json

    paths = {name: f"{output_dir.rstrip('/')}/{name}" for name in ("edges.csv", "target.csv", "features.json")}
    with _open_for_write(paths["edges.csv"]) as handle:
        handle.write(("node_1,node_2\n" + "".join(f"{a},{b}\n" for a, b in graph.edges.tolist())).encode())
    with _open_for_write(paths["target.csv"]) as handle:
        handle.write(("id,target\n" + "".join(f"{u},{c}\n" for u, c in enumerate(graph.labels.tolist()))).encode())
    with _open_for_write(paths["features.json"]) as handle:
        handle.write(json.dumps({str(u): a for u, a in graph.likes.items()}).encode())
    return paths


def _add_lastfm_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-users", type=int, required=True)
    parser.add_argument("--output", required=True, help="directory for edges.csv, target.csv, features.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-classes", type=int, default=18)
    parser.add_argument("--avg-degree", type=float, default=7.0)
    parser.add_argument("--follow-homophily", type=float, default=0.55)
    parser.add_argument("--num-artists", type=int)
    parser.add_argument("--avg-likes", type=float, default=12.0)
    parser.add_argument("--like-homophily", type=float, default=0.45)


def _lastfm(args: argparse.Namespace) -> str:
    started = time.time()
    graph = generate_lastfm(
        args.num_users, args.seed, num_classes=args.num_classes, avg_degree=args.avg_degree,
        follow_homophily=args.follow_homophily, num_artists=args.num_artists, avg_likes=args.avg_likes,
        like_homophily=args.like_homophily,
    )
    paths = write_lastfm(graph, args.output)
    return (
        f"wrote {len(graph.labels)} users, {len(graph.edges)} friendships, "
        f"{sum(len(v) for v in graph.likes.values())} likes to {args.output} "
        f"({', '.join(sorted(p.rsplit('/', 1)[1] for p in paths.values()))}) in {time.time() - started:.1f} s"
    )


# --------------------------------------------------------------------------- CLI
def _add_movielens_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-ratings", type=int, required=True)
    parser.add_argument("--num-users", type=int, help="default: about one user per 100 ratings (as ml-100k)")
    parser.add_argument(
        "--num-items", type=int, help="default: about one item per 60 ratings (as ml-100k), at least 2 x ratings / users"
    )
    parser.add_argument("--format", default="tab", choices=FORMATS)
    parser.add_argument("--output", required=True, help="file to write (local or gs://; .gz compresses)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument("--min-per-user", type=int, default=5)
    parser.add_argument("--duplicate-fraction", type=float, default=0.0)
    parser.add_argument("--half-stars", action="store_true", help="0.5..5 ratings, as ML-latest")
    parser.add_argument("--first-id", type=int, help="first user/item id; default 0 for ncf, else 1")
    parser.add_argument("--crlf", action="store_true", help="CRLF line endings")
    parser.add_argument("--bom", action="store_true", help="start with a UTF-8 BOM")


def _movielens(args: argparse.Namespace) -> str:
    num_users = args.num_users or max(10, args.num_ratings // 106)
    # At small scales ml-100k's proportions leave too few (user, item) pairs: keep
    # users x items at least twice the ratings.
    num_items = args.num_items or max(20, args.num_ratings // 60, math.ceil(2 * args.num_ratings / num_users))
    first_id = args.first_id if args.first_id is not None else (0 if args.format == "ncf" else 1)
    started = time.time()
    data = generate_ratings(
        num_users,
        num_items,
        args.num_ratings,
        args.seed,
        rank=args.rank,
        noise=args.noise,
        min_per_user=args.min_per_user,
        duplicate_fraction=args.duplicate_fraction,
        half_stars=args.half_stars,
        first_id=first_id,
    )
    report = write_ratings(data, args.output, args.format, crlf=args.crlf, bom=args.bom)
    return (
        f"wrote {report.data_lines} ratings ({len(np.unique(data.users))} users, "
        f"{len(np.unique(data.items))} of {num_items} items, seed {args.seed}, format {args.format}) "
        f"to {report.path} in {time.time() - started:.1f} s"
    )


# name -> (add its arguments, run it and return the line to print)
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], str]]] = {
    "movielens": (_add_movielens_arguments, _movielens),
    "lastfm": (_add_lastfm_arguments, _lastfm),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rawdata.synth", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="dataset", required=True)
    for name, (add_arguments, _) in COMMANDS.items():
        add_arguments(commands.add_parser(name, help=f"synthetic {name} data"))
    args = parser.parse_args(argv)
    try:
        print(COMMANDS[args.dataset][1](args))
    except ValueError as error:
        print(f"rawdata.synth: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
