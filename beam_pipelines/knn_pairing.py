"""KNN pairing of users as a Beam stage: exact cosine neighbours, the reachable-playlists rule, seeded candidates.

Owns what the playlists system does ahead of serving: every user is paired with
the users most similar to them, and the playlists those neighbours have become
the user's candidates, which the ranker scores (top 5 served).

Rule (``take_neighbours``, ``sample_candidates``), parameters in ``PairingConfig``:

1. A user's vector is the binary user x track vector of the tracks in their
   **train-side** collection playlists (owned or followed), L2-normalised; the
   held-out valid/test playlists take no part, so their tracks do not leak into
   the pairing. Similarity is the cosine (the dot product of the vectors).
2. The exact top ``k`` (50) other users by similarity, most similar first; only
   users with a positive similarity (at least one shared track) count; ties
   (equal similarity, compared after rounding to 9 decimals, so floating-point
   noise does not decide them) go to the lower user index.
3. Neighbours are taken in that order until at least ``min_reachable`` (20)
   playlists are reachable, never more than ``max_neighbours`` (50). A playlist
   is reachable when a taken neighbour has it in their train-side collection and
   the user does not have it in their own train-side collection (a user's own
   playlists are never their candidates). The user's held-out playlists are not
   excluded: hiding them is what makes candidate recall measurable.
4. ``num_candidates`` (75) of the reachable playlists are sampled uniformly
   without replacement by a generator seeded with a stable hash of
   (seed, "candidates", user id); all of them when fewer are reachable (counted:
   with the stop rule at 20, most users have fewer than 75). Candidates are
   stored in ascending playlist index.

Scale-out and memory (``PairUsers``): the users are cut into blocks of
``block_size`` consecutive user indices; each block is one element, reshuffled
across workers, and scored as one sparse matrix product
``vectors[block] @ vectors.T`` (scipy), so no worker ever holds all users x all
users. What one worker must hold is the ``PairingIndex`` side input: the
normalised user x track matrix and its transpose (12 bytes per train (user,
track) pair each: about 110 MB at 100k users with ~47 tracks each), the user ->
train playlists table (8 bytes per pair), the user ids and two int arrays per
user. It grows with the number of train (user, track) pairs, not with users
squared. A block's scores take at most ``block_size x num_users`` entries (12
bytes each); the default block size keeps that under 2**24 entries (~200 MB),
and the real fill is far lower (about 2k non-zero similarities per user on
generated 100k-user data). Past ~10^8 (user, track) pairs the index no longer
fits a worker: then shard the transpose by track and sum partial products per
block with a keyed join instead of the side input.

Cost: the product's work is sum over tracks of (users having the track)^2, so a
few tracks that everybody has (hits) dominate it; exact search stays cheap while
no track is in a large share of all collections.
"""
from __future__ import annotations

import dataclasses
import io
import json
import time
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from beam_pipelines import common
from schemas import playlists as S

SIMILARITY_DECIMALS = 9
BLOCK_SCORE_BUDGET = 1 << 24  # block_size x num_users entries of one block's scores at most
MAX_BLOCK_SIZE = 4096
HISTOGRAMS = {  # report key -> (file name, title, x label)
    "neighbours_per_user": ("neighbours_per_user.png", "Neighbours taken per user", "neighbours"),
    "times_chosen_as_neighbour": ("times_chosen_as_neighbour.png", "Times a user was chosen as a neighbour",
                                  "times chosen"),
    "reachable_playlists": ("reachable_playlists.png", "Playlists reachable through neighbours",
                            "reachable playlists"),
}


@dataclasses.dataclass(frozen=True)
class PairingConfig:
    """Parameters of the pairing rule (defaults: the users' current system).

    Attributes:
      k: neighbours scored exactly per user (top-k by cosine).
      min_reachable: stop taking neighbours once this many playlists are reachable.
      max_neighbours: never take more neighbours than this (at most ``k`` are known).
      num_candidates: candidates sampled from the reachable playlists.
      seed: seed of the candidate sampling.
      block_size: users per scored block; 0 picks one from ``BLOCK_SCORE_BUDGET``.
    """

    k: int = 50
    min_reachable: int = 20
    max_neighbours: int = 50
    num_candidates: int = 75
    seed: int = 0
    block_size: int = 0

    def validate(self) -> None:
        """Raises ``common.PipelineInputError`` naming the first parameter out of range."""
        for name in ("k", "min_reachable", "max_neighbours", "num_candidates"):
            if getattr(self, name) < 1:
                raise common.PipelineInputError(f"pairing: {name.replace('_', '-')} must be >= 1")
        if self.block_size < 0:
            raise common.PipelineInputError("pairing: block size must be >= 0")


class UserChunk(NamedTuple):
    """What the pairing needs of a group of users, as arrays (one chunk per shuffle bucket).

    Attributes:
      user_index: ``[n]`` user indices.
      train_offsets: ``[n + 1]``; user ``i``'s train-side playlists are
        ``train_playlists[train_offsets[i]:train_offsets[i + 1]]``, sorted.
      train_playlists: ``[m]`` playlist indices.
      valid_playlist: ``[n]`` the held-out valid playlist, -1 when none.
      test_playlist: ``[n]`` the held-out test playlist, -1 when none.
      candidate_seed: ``[n]`` uint64 seeds of the candidate sampling (``candidate_seed``).
    """

    user_index: np.ndarray
    train_offsets: np.ndarray
    train_playlists: np.ndarray
    valid_playlist: np.ndarray
    test_playlist: np.ndarray
    candidate_seed: np.ndarray


def user_chunk(users: Sequence[tuple[int, str, Sequence[int], int, int]], seed: int) -> UserChunk:
    """Per-user ``(user index, user id, train playlists, valid playlist, test playlist)`` -> a ``UserChunk``."""
    counts = [len(u[2]) for u in users]
    return UserChunk(
        user_index=np.array([u[0] for u in users], dtype=np.int64),
        train_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        train_playlists=np.array([p for u in users for p in sorted(u[2])], dtype=np.int64),
        valid_playlist=np.array([u[3] for u in users], dtype=np.int64),
        test_playlist=np.array([u[4] for u in users], dtype=np.int64),
        candidate_seed=np.array([candidate_seed(seed, u[1]) for u in users], dtype=np.uint64),
    )


class PairingResult(NamedTuple):
    """The pairing of one user.

    Attributes:
      user_index: the user.
      neighbours: the neighbours taken, most similar first.
      similarities: their cosine similarities.
      num_reachable: playlists reachable through them.
      candidates: the sampled candidates, ascending.
      valid_hit, test_hit: 1 when the held-out playlist is a candidate, 0 when
        not, -1 when the user has none.
      valid_reachable, test_reachable: the same for the reachable set (before sampling).
    """

    user_index: int
    neighbours: np.ndarray
    similarities: np.ndarray
    num_reachable: int
    candidates: np.ndarray
    valid_hit: int
    test_hit: int
    valid_reachable: int
    test_reachable: int


@dataclasses.dataclass
class PairingIndex:
    """Everything a worker holds to pair any block of users (see the module docstring).

    Attributes:
      candidate_seeds: ``[users]`` uint64 generator seed of each user's candidate sampling.
      vectors: ``[users, tracks]`` CSR, rows L2-normalised binary liked-track vectors.
      vectors_t: its transpose as CSR (``[tracks, users]``), the track -> users index.
      train_offsets: ``[users + 1]`` offsets into ``train_playlists``.
      train_playlists: every user's sorted train-side playlist indices, back to back.
      valid_playlist: ``[users]`` held-out valid playlist, -1 when none.
      test_playlist: ``[users]`` held-out test playlist, -1 when none.
      block_size: users per block.
    """

    candidate_seeds: np.ndarray
    vectors: Any
    vectors_t: Any
    train_offsets: np.ndarray
    train_playlists: np.ndarray
    valid_playlist: np.ndarray
    test_playlist: np.ndarray
    block_size: int

    @property
    def num_users(self) -> int:
        return len(self.candidate_seeds)

    @property
    def num_blocks(self) -> int:
        return -(-self.num_users // self.block_size) if self.num_users else 0

    def playlists_of(self, user: int) -> np.ndarray:
        """The sorted train-side playlists of one user."""
        return self.train_playlists[self.train_offsets[user]:self.train_offsets[user + 1]]


# --------------------------------------------------------------------------- pure pieces
def user_vectors(train_offsets: np.ndarray, train_playlists: np.ndarray, playlist_offsets: np.ndarray,
                 playlist_tracks: np.ndarray, num_tracks: int):
    """L2-normalised binary user x track vectors from the train-side collections.

    Args:
      train_offsets, train_playlists: user -> train playlists (CSR layout).
      playlist_offsets, playlist_tracks: playlist -> tracks (CSR layout).
      num_tracks: the track vocabulary size.

    Returns:
      ``[users, tracks]`` scipy CSR (float64) with sorted indices; a user without
      tracks has an all-zero row.
    """
    import scipy.sparse as sp

    num_users, num_playlists = len(train_offsets) - 1, len(playlist_offsets) - 1
    memberships = sp.csr_matrix(
        (np.ones(len(train_playlists)), train_playlists, train_offsets), shape=(num_users, num_playlists)
    )
    contents = sp.csr_matrix(
        (np.ones(len(playlist_tracks)), playlist_tracks, playlist_offsets), shape=(num_playlists, num_tracks)
    )
    liked = (memberships @ contents).tocsr()
    liked.data[:] = 1.0  # a track in two of the user's playlists is still one liked track
    counts = np.diff(liked.indptr)
    liked.data /= np.sqrt(np.repeat(counts, counts))
    liked.sort_indices()
    return liked


def top_k_neighbours(columns: np.ndarray, values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact top-``k`` of one user's similarity row, ties to the lower user index.

    Args:
      columns: user indices with a positive similarity (the user itself removed).
      values: their similarities, already rounded (``SIMILARITY_DECIMALS``).
      k: how many to keep.

    Returns:
      ``(neighbours, similarities)`` most similar first, at most ``k`` each.
    """
    if len(values) > k:
        # Everything tied with the k-th value stays in, so the tie rule decides the cut.
        kth = np.partition(-values, k - 1)[k - 1]
        inside = -values <= kth
        columns, values = columns[inside], values[inside]
    order = np.lexsort((columns, -values))[:k]
    return columns[order].astype(np.int64), values[order]


def similarity_rows(index: "PairingIndex", start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cosine similarities of users ``start..stop-1`` with every user: one sparse product.

    Returns:
      CSR ``(indptr, columns, values)`` of the block's rows: values rounded to
      ``SIMILARITY_DECIMALS`` (so floating-point noise never breaks a tie), only
      positive ones, and never a user with itself.
    """
    scores = (index.vectors[start:stop] @ index.vectors_t).tocsr()
    values = np.round(scores.data, SIMILARITY_DECIMALS)
    rows = np.repeat(np.arange(start, stop), np.diff(scores.indptr))
    keep = (values > 0) & (scores.indices != rows)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows[keep] - start, minlength=stop - start))])
    return indptr, scores.indices[keep], values[keep]


def take_neighbours(neighbours: Sequence[int], own: np.ndarray, playlists_of, min_reachable: int,
                    max_neighbours: int) -> tuple[int, np.ndarray]:
    """Takes neighbours in order until ``min_reachable`` playlists are reachable or ``max_neighbours`` are taken.

    Args:
      neighbours: candidate neighbours, most similar first.
      own: the user's own (train-side) playlists, never reachable for them.
      playlists_of: neighbour -> that neighbour's (train-side) playlists.
      min_reachable: stop once this many distinct playlists are reachable.
      max_neighbours: take at most this many neighbours.

    Returns:
      ``(number of neighbours taken, sorted reachable playlist indices)``.
    """
    own_set = set(np.asarray(own).tolist())
    reachable: set[int] = set()
    taken = 0
    for neighbour in neighbours:
        if taken >= max_neighbours or len(reachable) >= min_reachable:
            break
        taken += 1
        reachable.update(p for p in np.asarray(playlists_of(neighbour)).tolist() if p not in own_set)
    return taken, np.array(sorted(reachable), dtype=np.int64)


def candidate_seed(seed: int, user_id: str) -> int:
    """The generator seed of one user's candidate sampling: stable_hash64(seed, "candidates", user id)."""
    return common.stable_hash64(seed, "candidates", user_id)


def sample_candidates(reachable: np.ndarray, num_candidates: int, user_seed: int) -> np.ndarray:
    """``num_candidates`` of the reachable playlists drawn with the user's seed; all when fewer. Ascending."""
    if len(reachable) <= num_candidates:
        return np.asarray(reachable, dtype=np.int64)
    rng = np.random.default_rng(int(user_seed))
    return np.sort(rng.choice(reachable, size=num_candidates, replace=False)).astype(np.int64)


def _hit(playlist: int, chosen: np.ndarray) -> int:
    if playlist < 0:
        return -1
    position = np.searchsorted(chosen, playlist)
    return int(position < len(chosen) and chosen[position] == playlist)


def pair_block(index: PairingIndex, block: int, config: PairingConfig) -> Iterator[PairingResult]:
    """Pairs the users of one block: one sparse product, then the rule per user.

    Args:
      index: the pairing index.
      block: block number; users ``block * block_size`` up to the next block.
      config: the rule's parameters.

    Yields:
      One ``PairingResult`` per user of the block, in user order.
    """
    start = block * index.block_size
    stop = min(start + index.block_size, index.num_users)
    indptr, columns, values = similarity_rows(index, start, stop)
    for row, user in enumerate(range(start, stop)):
        low, high = indptr[row], indptr[row + 1]
        neighbours, similarities = top_k_neighbours(columns[low:high], values[low:high], config.k)
        taken, reachable = take_neighbours(
            neighbours, index.playlists_of(user), index.playlists_of, config.min_reachable, config.max_neighbours
        )
        candidates = sample_candidates(reachable, config.num_candidates, index.candidate_seeds[user])
        valid, test = int(index.valid_playlist[user]), int(index.test_playlist[user])
        yield PairingResult(
            user_index=user, neighbours=neighbours[:taken], similarities=similarities[:taken],
            num_reachable=len(reachable), candidates=candidates,
            valid_hit=_hit(valid, candidates), test_hit=_hit(test, candidates),
            valid_reachable=_hit(valid, reachable), test_reachable=_hit(test, reachable),
        )


def build_index(chunks: Iterable[UserChunk], playlist_table: tuple[np.ndarray, np.ndarray], num_tracks: int,
                block_size: int = 0) -> PairingIndex:
    """Builds the ``PairingIndex`` from the users' chunks and the playlist -> tracks table.

    Args:
      chunks: ``UserChunk``s that together hold every user index ``0..N-1`` once.
      playlist_table: ``(offsets, tracks)`` of every playlist (CSR layout).
      num_tracks: the track vocabulary size.
      block_size: users per block; 0 picks ``BLOCK_SCORE_BUDGET // N`` (at most ``MAX_BLOCK_SIZE``).

    Raises:
      ValueError: the chunks do not hold exactly the user indices ``0..N-1``.
    """
    chunks = [c for c in chunks if len(c.user_index)]
    if not chunks:
        raise ValueError("pairing: no users")
    join = lambda name: np.concatenate([getattr(c, name) for c in chunks])  # noqa: E731
    users = join("user_index").astype(np.int64)
    order = np.argsort(users, kind="stable")
    if not np.array_equal(users[order], np.arange(len(users))):
        raise ValueError("pairing: the user chunks must hold user indices 0..N-1 exactly once")
    # Each user's train playlists, moved from chunk order into user order.
    counts = np.concatenate([np.diff(c.train_offsets) for c in chunks])[order]
    base = np.cumsum([0] + [len(c.train_playlists) for c in chunks[:-1]])
    starts = np.concatenate([c.train_offsets[:-1] + b for c, b in zip(chunks, base)])[order]
    train_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    gather = np.repeat(starts - train_offsets[:-1], counts) + np.arange(train_offsets[-1])
    train_playlists = join("train_playlists").astype(np.int64)[gather]
    offsets, tracks = playlist_table
    vectors = user_vectors(train_offsets, train_playlists, offsets, tracks, num_tracks)
    size = block_size or max(1, min(MAX_BLOCK_SIZE, BLOCK_SCORE_BUDGET // max(1, len(users))))
    return PairingIndex(
        candidate_seeds=join("candidate_seed").astype(np.uint64)[order], vectors=vectors, vectors_t=vectors.T.tocsr(),
        train_offsets=train_offsets, train_playlists=train_playlists,
        valid_playlist=join("valid_playlist").astype(np.int64)[order],
        test_playlist=join("test_playlist").astype(np.int64)[order],
        block_size=size,
    )


# --------------------------------------------------------------------------- report (pure)
def summary_statistics(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    """min, max, mean, median and the 25/75/90/99th percentiles (linear interpolation)."""
    array = np.asarray(values, dtype=np.float64)
    if not len(array):
        return {name: 0.0 for name in ("count", "min", "max", "mean", "median", "p25", "p75", "p90", "p99")}
    p25, median, p75, p90, p99 = np.percentile(array, [25, 50, 75, 90, 99])
    return {"count": int(len(array)), "min": float(array.min()), "max": float(array.max()),
            "mean": round(float(array.mean()), 4), "median": float(median), "p25": float(p25), "p75": float(p75),
            "p90": float(p90), "p99": float(p99)}


def histogram_png(values: np.ndarray, title: str, xlabel: str, stats: dict[str, float],
                  marks: dict[str, float] | None = None) -> bytes:
    """A histogram of integer counts with its statistics in a box, as PNG bytes (matplotlib Agg).

    Args:
      values: one count per user.
      title, xlabel: the chart's title and x label.
      stats: ``summary_statistics(values)``.
      marks: label -> x of dashed vertical lines (the rule's thresholds).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    values = np.asarray(values, dtype=np.int64)
    top = int(values.max()) if len(values) else 0
    # One bar per integer up to 100, else about 60 equal bins.
    edges = np.arange(-0.5, top + 1.5) if top <= 100 else np.linspace(-0.5, top + 0.5, 61)
    figure, axes = plt.subplots(figsize=(8.5, 4.5), dpi=100)
    heights, _, _ = axes.hist(values, bins=edges, color="#3b75af", edgecolor="white", linewidth=0.4)
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("users")
    filled = heights[heights > 0]
    if len(filled) and filled.max() > 30 * np.median(filled):
        axes.set_yscale("log")  # a long tail would be invisible next to the tallest bars
        axes.set_ylabel("users (log scale)")
    for label, x in (marks or {}).items():
        axes.axvline(x, color="#c0392b", linestyle="--", linewidth=1)
        axes.annotate(label, (x, 1), xycoords=("data", "axes fraction"), xytext=(-3, -12), textcoords="offset points",
                      color="#c0392b", fontsize=8, ha="right")
    lines = [f"{'n':<6}{stats['count']:>9}"] + [f"{name:<6}{stats[name]:>9.4g}" for name in
                                                ("min", "p25", "median", "mean", "p75", "p90", "p99", "max")]
    # Outside the axes, right of them: never over a bar or a threshold line.
    axes.text(1.02, 1.0, "\n".join(lines), transform=axes.transAxes, ha="left", va="top", family="monospace",
              fontsize=8, bbox={"facecolor": "white", "edgecolor": "#999999"})
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def pairing_report(parts: Iterable[dict[str, np.ndarray]], num_users: int, config: PairingConfig) -> dict[str, Any]:
    """The pairing report from the per-block statistics: the three distributions and their summaries.

    Args:
      parts: per block ``{"neighbours": [n], "reachable": [n], "chosen": [m]}``
        (neighbours taken and reachable playlists per user; every chosen neighbour index).
      num_users: users in the vocabulary (users never chosen count as 0).
      config: the rule's parameters (recorded in the report).

    Returns:
      ``{"config", "distributions": {name: values}, "statistics": {name: summary}}``.
    """
    parts = list(parts)
    concat = lambda key: np.concatenate([p[key] for p in parts]) if parts else np.empty(0, np.int64)  # noqa: E731
    chosen = concat("chosen").astype(np.int64)
    distributions = {
        "neighbours_per_user": concat("neighbours").astype(np.int64),
        "times_chosen_as_neighbour": np.bincount(chosen, minlength=num_users).astype(np.int64),
        "reachable_playlists": concat("reachable").astype(np.int64),
    }
    return {
        "config": dataclasses.asdict(config),
        "distributions": distributions,
        "statistics": {name: summary_statistics(values) for name, values in distributions.items()},
    }


# --------------------------------------------------------------------------- Beam
class _BuildIndex(beam.DoFn):
    """All user chunks (one list) + the playlist table -> the ``PairingIndex`` (timed)."""

    def __init__(self, block_size: int):
        super().__init__()
        self._block_size = block_size
        self._ms = common.count("pairing_index_ms")

    def process(self, chunks: list, playlist_table, num_tracks: int):
        if not any(len(UserChunk._make(c).user_index) for c in chunks):
            # Every playlist row was a header, blank or rejected: the input's problem, one line (not a crash).
            raise common.worker_input_error(
                "--input: no usable playlist (every row was a header, blank or rejected); check that the files "
                "are Pichl playlist CSV or MPD JSON slices and --format")
        started = time.perf_counter()
        index = build_index(map(UserChunk._make, chunks), playlist_table, num_tracks, self._block_size)
        self._ms(int(1000 * (time.perf_counter() - started)))
        yield index


class _PairBlock(beam.DoFn):
    """One block of users -> their ``PairingResult``s, plus the block's report statistics (tagged)."""

    def __init__(self, config: PairingConfig):
        super().__init__()
        self._config = config
        self._counters = {name: common.count(name) for name in (
            "pairing_users", "pairing_users_without_neighbours", "pairing_users_below_min_reachable",
            "pairing_users_short_of_candidates", "pairing_blocks_ms", "pairing_candidates",
            "valid_positive_in_candidates", "test_positive_in_candidates",
            "valid_positive_reachable", "test_positive_reachable",
        )}

    def process(self, block: int, index: PairingIndex):
        started = time.perf_counter()
        c, config = self._counters, self._config
        taken, reachable, chosen = [], [], []
        for result in pair_block(index, block, config):
            c["pairing_users"](1)
            c["pairing_candidates"](len(result.candidates))
            if not len(result.neighbours):
                c["pairing_users_without_neighbours"](1)
            if result.num_reachable < config.min_reachable:
                c["pairing_users_below_min_reachable"](1)
            if len(result.candidates) < config.num_candidates:
                c["pairing_users_short_of_candidates"](1)
            for split in ("valid", "test"):
                c[f"{split}_positive_in_candidates"](max(0, getattr(result, f"{split}_hit")))
                c[f"{split}_positive_reachable"](max(0, getattr(result, f"{split}_reachable")))
            taken.append(len(result.neighbours))
            reachable.append(result.num_reachable)
            chosen.append(result.neighbours)
            yield result
        yield beam.pvalue.TaggedOutput("stats", {
            "neighbours": np.array(taken, np.int64), "reachable": np.array(reachable, np.int64),
            "chosen": np.concatenate(chosen) if chosen else np.empty(0, np.int64),
        })
        c["pairing_blocks_ms"](int(1000 * (time.perf_counter() - started)))


class PairUsers(beam.PTransform):
    """User chunks -> ``{"pairings": PairingResult per user, "report": one report dict}``.

    Args:
      config: the rule's parameters.
      playlist_table: singleton PCollection of the playlist -> tracks table ``(offsets, tracks)``.
      num_tracks: singleton PCollection of the track vocabulary size.
    """

    def __init__(self, config: PairingConfig, playlist_table, num_tracks):
        super().__init__()
        self._config = config
        self._playlist_table = playlist_table
        self._num_tracks = num_tracks

    def expand(self, users):
        config = self._config
        index = (
            users
            | "AllChunks" >> beam.combiners.ToList()
            | "BuildIndex" >> beam.ParDo(_BuildIndex(config.block_size), beam.pvalue.AsSingleton(self._playlist_table),
                                         beam.pvalue.AsSingleton(self._num_tracks))
        )
        paired = (
            index
            | "Blocks" >> beam.FlatMap(lambda ix: range(ix.num_blocks))
            # Spreads the blocks over workers (Create/FlatMap output would stay on one).
            | "SpreadBlocks" >> beam.Reshuffle()
            | "PairBlocks" >> beam.ParDo(_PairBlock(config), beam.pvalue.AsSingleton(index)).with_outputs(
                "stats", main="pairings")
        )
        report = (
            paired.stats
            | "AllStats" >> beam.combiners.ToList()
            | "Report" >> beam.Map(lambda parts, ix: pairing_report(parts, ix.num_users, config),
                                   beam.pvalue.AsSingleton(index))
        )
        return {"pairings": paired.pairings, "report": report}


class WritePairingReport(beam.PTransform):
    """The report -> ``OUT/pairing/pairing_report.json`` and one PNG histogram per distribution."""

    def __init__(self, directory: str):
        super().__init__()
        self._directory = directory

    def expand(self, report):
        return report | "WriteReport" >> beam.Map(self._write)

    def _write(self, report: dict[str, Any]) -> str:
        files = {}
        config = report["config"]
        marks = {"neighbours_per_user": {f"max {config['max_neighbours']}": config["max_neighbours"]},
                 "reachable_playlists": {f"min {config['min_reachable']}": config["min_reachable"]}}
        for name, (file_name, title, xlabel) in HISTOGRAMS.items():
            png = histogram_png(report["distributions"][name], title, xlabel, report["statistics"][name],
                                marks.get(name))
            path = common.join_path(self._directory, file_name)
            with FileSystems.create(path) as handle:
                handle.write(png)
            files[name] = f"{S.PAIRING_DIR}/{file_name}"
        payload = {"config": report["config"], "statistics": report["statistics"], "histograms": files}
        path = common.join_path(self._directory, S.PAIRING_REPORT)
        common.write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
        return path
