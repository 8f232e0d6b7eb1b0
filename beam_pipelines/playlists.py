"""Playlists (users own or follow playlists of tracks) -> held-out splits, playlist content, KNN candidates.

Usage::

    python -m beam_pipelines.playlists --input FILES --output OUT [--format auto|pichl|mpd] \\
        [--interactions FOLLOWS.csv] [--seed 0] [--num-negatives 50] [--num-shards 4] \\
        [--min-reachable 20 --max-neighbours 50 --num-candidates 75] [--runner DataflowRunner ...]

Owns the playlist raw layouts and their validation (every row that is not used
goes to ``rejected/`` with its reason), the per-user hold-out split with fixed
negatives, the playlist -> tracks content table, the vocabularies, the output
examples, and the wiring of the KNN pairing (``beam_pipelines.knn_pairing``).
``run(argv)`` is the only place that reads or writes; everything else is a pure
function or a composite PTransform. Id rules and feature keys: ``schemas.playlists``.

Output (gzip TFRecords of tf.Example; every index is a 0-based line of a vocabulary file)::

    OUT/train/part-*.tfrecord.gz     user_index, playlist_index, is_owner: one per train membership
    OUT/valid/, OUT/test/            the same + negative_playlist_index (50), positive_in_candidates
    OUT/playlist_tracks/part-*       playlist_index, track_index: every playlist's tracks (content)
    OUT/candidates/part-*            user_index, candidate_playlist_index (<= 75), num_reachable
    OUT/neighbours/part-*            user_index, neighbour_user_index, neighbour_similarity
    OUT/pairing/                     pairing_report.json and three histogram PNGs
    OUT/vocab/{users,playlists,tracks}.txt   raw ids, sorted, one per line
    OUT/rejected/part-00000-of-00001.jsonl   every unused row: source, line, reason, text
    OUT/dataset.json                 counts, accounting, splits, sources; written last

Inputs (layouts, validation and duplicate rules: ``beam_pipelines.playlist_collections``):
Pichl "Spotify Playlists" CSV and Million Playlist Dataset JSON slices
(``--input``, format detected per file), and optionally ``--interactions``, a
CSV ``user_id, playlist_id[, timestamp]`` of users following other users'
playlists (``playlist_id`` = ``<owner>/<name>``, ``schemas.playlists``). MPD
playlists have no users: pid ``N`` is owned by user ``mpd:N`` alone.

A user's collection is the playlists they own or follow; their liked tracks are
the tracks of their collection.

What is hidden and what is content (leakage): a playlist's track list is
content, like an item's features: it is public and known at serving time, so
``playlist_tracks/`` holds every playlist, held-out ones included (a held-out
playlist often has no member but its owner, and the ranker must still score
it). What is hidden is the held-out *user -> playlist* edge: it is in no train
example, and the user's liked-track vector for the pairing is built from their
train-side collection only, so the held-out playlist's tracks do not reach the
user's own vector (they do reach another member's vector, where they are that
member's train data). The vocabularies hold every user, playlist and track.

Split (seeded, stable hashes, made once here): a user with at least
``--min-playlists-for-holdout`` (3) collection playlists has them ordered by
stable_hash64(seed, "holdout", user id, playlist id); the first goes to
``test/``, the second to ``valid/``, the rest to ``train/``. Users with fewer
stay train-only (counted). Each valid/test example carries ``--num-negatives``
(50) distinct playlists never in the user's collection (train or held out):
the first such draws, over all playlists, of a SplitMix64 stream seeded with
stable_hash64(seed, "negatives", split, user id) (``negative_draws``); and
whether the held-out playlist is among the user's KNN candidates. Train
examples are (user, playlist, is_owner); the trainer draws fresh negatives per
batch.

Accounting: every line / entry read ends in exactly one place (header, blank,
rejected, duplicate, used) and ``dataset.json`` ``accounting`` proves it per
input; memberships (owned playlists + used follows) equal train + valid + test
examples. ``dataset.json`` is written last: a run that dies leaves none.

Memory per worker: the vocabularies as id -> index dicts (about 100 bytes per
id: ~80 MB at 100k users, 600k playlists, 200k tracks), one bucket of rows at a
time (1/64 of the input), and the pairing index (``knn_pairing``). Same input
and seed give byte-identical files on every rerun (shards by stable hash, sorted).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Collection, Iterable, Iterator, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions

from beam_pipelines import common
from beam_pipelines import knn_pairing as knn
from beam_pipelines import playlist_collections as pc
from schemas import playlists as S

FORMATS = ("pichl", "mpd")
TABLES = (S.PLAYLIST_TRACKS_DIR, S.CANDIDATES_DIR, S.NEIGHBOURS_DIR)
OUTPUT_NAMES = (*S.SPLITS, *TABLES, S.PAIRING_DIR, S.VOCAB_DIR, "rejected", "dataset.json")


# --------------------------------------------------------------------------- split (pure)
def holdout(user: str, playlists: Sequence[str], seed: int, min_playlists: int) -> tuple[str | None, str | None]:
    """The user's ``(test, valid)`` playlist ids: the first two by stable hash order; None when too few."""
    if len(playlists) < max(3, min_playlists):
        return None, None
    ordered = sorted(playlists, key=lambda p: (common.stable_hash64(seed, "holdout", user, p), p))
    return ordered[0], ordered[1]


_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def negative_draws(seeds: Sequence[int], start: int, count: int, num_playlists: int) -> np.ndarray:
    """Draws ``start .. start+count-1`` of each seed's stream: SplitMix64 of ``seed + (j + 1) * gamma``, mod ``num_playlists``.

    One vectorized pass serves a whole bucket of users (a numpy generator per
    user cost ~60 us just to create); the stream of a seed depends on nothing
    else, so it is the same on every runner and bucketing. The modulo bias is
    below ``num_playlists / 2**64``.

    Returns:
      ``[len(seeds), count]`` int64 playlist indices.
    """
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps, as SplitMix64 means it to
        z = (np.asarray(seeds, dtype=np.uint64)[:, None]
             + (np.arange(start + 1, start + count + 1, dtype=np.uint64) * _GOLDEN_GAMMA)[None, :])
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(max(1, num_playlists))).astype(np.int64)


def sample_negatives_many(num_playlists: int, collections: Sequence[Collection[int]], count: int,
                          seeds: Sequence[int]) -> list[list[int]]:
    """For each user, ``count`` distinct playlists outside their collection: the first such draws of their stream.

    Args:
      num_playlists: playlists ``0..num_playlists-1`` to draw from.
      collections: each user's playlist indices (never drawn).
      count: negatives per user.
      seeds: each user's stream seed (stable hash of run seed, split and user).

    Returns:
      Per user, the negatives in draw order; every playlist outside the collection
      (ascending) when fewer than ``count`` exist.
    """
    n = len(seeds)
    if not n or count <= 0:
        return [[] for _ in range(n)]
    # Common case, vectorized for the whole bucket: a user's first ``count`` draws
    # are distinct and outside their collection (with 50 of ~10^5 playlists nearly
    # always), so they are the answer. Other users walk their stream in Python.
    draws = negative_draws(seeds, 0, count, num_playlists)
    stride = np.int64(max(1, num_playlists))
    owned = np.array([r * stride + p for r, c in enumerate(collections) for p in c], dtype=np.int64)
    clash = np.isin(np.arange(n, dtype=np.int64)[:, None] * stride + draws, owned).any(axis=1)
    clash |= (np.diff(np.sort(draws, axis=1), axis=1) == 0).any(axis=1)
    result = draws.tolist()
    for r in np.flatnonzero(clash).tolist():
        result[r] = _walk_stream(num_playlists, collections[r], count, seeds[r])
    return result


def _walk_stream(num_playlists: int, collection: Collection[int], count: int, seed: int) -> list[int]:
    """The first ``count`` distinct draws of ``seed``'s stream outside ``collection`` (all outside when fewer)."""
    if num_playlists - len(collection) <= count:
        return [p for p in range(num_playlists) if p not in collection]
    chosen: list[int] = []
    seen: set[int] = set()
    start, width = 0, 2 * count + 16
    while len(chosen) < count:
        for p in negative_draws([seed], start, width, num_playlists)[0].tolist():
            if p not in seen and p not in collection and len(chosen) < count:
                seen.add(p)
                chosen.append(p)
        start += width
    return chosen


def sample_negatives(num_playlists: int, collection: Collection[int], count: int, seed: int) -> list[int]:
    """``sample_negatives_many`` for one user."""
    return sample_negatives_many(num_playlists, [collection], count, [seed])[0]


# --------------------------------------------------------------------------- tf.Example bytes
_EXAMPLE_CLASS = None  # built once per process


def example_class():
    """``tf.train.Example`` as a protobuf class built from its descriptor, without importing TensorFlow.

    Importing TensorFlow costs 10 s and ~650 MB per worker process, and nothing
    else here needs it; a hand-written encoder was 7-15x slower than protobuf's
    own C serializer. The messages are declared exactly as
    ``tensorflow/core/example/{example,feature}.proto`` (field numbers and types;
    names in a private pool), so the bytes are those of TensorFlow's classes
    (``tests/test_playlists_parsing.py`` compares them).
    """
    global _EXAMPLE_CLASS
    if _EXAMPLE_CLASS is None:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        field = descriptor_pb2.FieldDescriptorProto
        proto = descriptor_pb2.FileDescriptorProto(name="playlists/example.proto", package="playlists", syntax="proto3")
        for name, kind in (("BytesList", field.TYPE_BYTES), ("FloatList", field.TYPE_FLOAT),
                           ("Int64List", field.TYPE_INT64)):
            proto.message_type.add(name=name).field.add(name="value", number=1, type=kind, label=field.LABEL_REPEATED)
        feature = proto.message_type.add(name="Feature")
        feature.oneof_decl.add(name="kind")
        for number, name in enumerate(("bytes_list", "float_list", "int64_list"), start=1):
            type_name = ".playlists." + name.title().replace("_", "")
            feature.field.add(name=name, number=number, type=field.TYPE_MESSAGE, label=field.LABEL_OPTIONAL,
                              type_name=type_name, oneof_index=0)
        features = proto.message_type.add(name="Features")
        entry = features.nested_type.add(name="FeatureEntry")
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
        entry.field.add(name="value", number=2, type=field.TYPE_MESSAGE, label=field.LABEL_OPTIONAL,
                        type_name=".playlists.Feature")
        features.field.add(name="feature", number=1, type=field.TYPE_MESSAGE, label=field.LABEL_REPEATED,
                           type_name=".playlists.Features.FeatureEntry")
        proto.message_type.add(name="Example").field.add(name="features", number=1, type=field.TYPE_MESSAGE,
                                                          label=field.LABEL_OPTIONAL, type_name=".playlists.Features")
        pool = descriptor_pool.DescriptorPool()
        pool.Add(proto)
        _EXAMPLE_CLASS = message_factory.GetMessageClass(pool.FindMessageTypeByName("playlists.Example"))
    return _EXAMPLE_CLASS


def encode_example(int64s: dict[str, Sequence[int]], floats: dict[str, Sequence[float]] | None = None) -> bytes:
    """A serialized ``tf.train.Example`` of int64 (and float) list features, deterministic bytes.

    Args:
      int64s: feature name -> int64 values.
      floats: feature name -> float values.

    Returns:
      The bytes of ``tf.train.Example.SerializeToString(deterministic=True)`` (map sorted by key).
    """
    example = example_class()()
    feature = example.features.feature
    for key, values in int64s.items():
        feature[key].int64_list.value.extend(values)
    for key, values in (floats or {}).items():
        feature[key].float_list.value.extend(values)
    return example.SerializeToString(deterministic=True)


# --------------------------------------------------------------------------- DoFns
class _IndexPlaylists(beam.DoFn):
    """A bucket's playlists -> ``(playlist indices, track offsets, track indices)`` arrays, with the vocabularies."""

    def __init__(self):
        super().__init__()
        self._playlists, self._tracks = pc.Lookup(), pc.Lookup()

    def process(self, playlists, vocabulary):
        index, tracks = self._playlists(vocabulary[0]).index, self._tracks(vocabulary[1]).index
        with pc.no_cyclic_gc():
            chunk = (np.array([index[p] for p, _, _ in playlists], dtype=np.int64),
                     np.concatenate([[0], np.cumsum([len(ts) for _, _, ts in playlists])]).astype(np.int64),
                     np.array([tracks[t] for _, _, ts in playlists for t in ts], dtype=np.int64))
        yield chunk


def split_bucket(collections: Sequence[tuple[str, Sequence[tuple[int, int]]]], user_index: dict[str, int],
                 playlist_ids: Sequence[str], *, seed: int, num_negatives: int, min_playlists: int):
    """Hold-out, negatives and train examples for the users of one bucket.

    Args:
      collections: ``(user id, ((playlist index, is_owner), ...))`` per user.
      user_index: user id -> index.
      playlist_ids: playlist index -> id (the vocabulary).
      seed, num_negatives, min_playlists: the split's parameters (see the module docstring).

    Returns:
      ``(train, evals, users, counts)``: serialized train examples; ``(user index,
      (split, playlist, is_owner, negatives))`` rows; ``(user index, user id, train
      playlists, valid, test)`` per user for the pairing; counter values.
    """
    train_records: list[bytes] = []
    evals, users = [], []
    counts = dict.fromkeys(("train_examples", "valid_examples", "test_examples", "users", "users_train_only",
                            "eval_negatives", "users_short_of_negatives"), 0)
    pending = []  # (user index, split, playlist, is_owner, collection, seed): negatives drawn for all at once
    for user, members in collections:
        u = user_index[user]
        owner_of = dict(members)
        by_id = {playlist_ids[p]: p for p, _ in members}
        test, valid = holdout(user, list(by_id), seed, min_playlists)
        held = {} if test is None else {"test": by_id[test], "valid": by_id[valid]}
        for split, playlist in sorted(held.items()):
            pending.append((u, split, playlist, owner_of[playlist], owner_of.keys(),
                            common.stable_hash64(seed, "negatives", split, user)))
        train = [p for p, _ in members if p not in held.values()]
        counts["train_examples"] += len(train)
        train_records.extend(encode_example({S.USER_INDEX: [u], S.PLAYLIST_INDEX: [p], S.IS_OWNER: [owner_of[p]]})
                             for p in train)
        users.append((u, user, train, held.get("valid", -1), held.get("test", -1)))
        counts["users"] += 1
        counts["users_train_only"] += not held
    negatives = sample_negatives_many(len(playlist_ids), [p[4] for p in pending], num_negatives,
                                      [p[5] for p in pending])
    for (u, split, playlist, is_owner, _, _), drawn in zip(pending, negatives):
        counts[f"{split}_examples"] += 1
        counts["eval_negatives"] += len(drawn)
        counts["users_short_of_negatives"] += len(drawn) < num_negatives
        evals.append((u, (split, playlist, is_owner, tuple(drawn))))
    return train_records, evals, users, counts


class _AssignSplits(beam.DoFn):
    """A bucket's collections -> train examples (main), eval rows (``eval``), one ``knn.UserChunk`` (``users``)."""

    def __init__(self, seed: int, num_negatives: int, min_playlists: int):
        super().__init__()
        self._seed, self._num_negatives, self._min_playlists = seed, num_negatives, min_playlists
        self._users, self._playlists = pc.Lookup(), pc.Lookup()

    def process(self, collections, users: bytes, vocabulary):
        with pc.no_cyclic_gc():
            train, evals, paired, counts = split_bucket(
                collections, self._users(users).index, self._playlists(vocabulary[0]).ids, seed=self._seed,
                num_negatives=self._num_negatives, min_playlists=self._min_playlists)
            chunk = knn.user_chunk(paired, self._seed)
        for name, value in counts.items():
            common.counter(name).inc(value)
        yield from train
        for row in evals:
            yield beam.pvalue.TaggedOutput("eval", row)
        yield beam.pvalue.TaggedOutput("users", chunk)


def eval_example(user: int, row: tuple, hits: tuple[int, int]) -> tuple[str, bytes]:
    """A valid/test row + the user's (valid_hit, test_hit) from the pairing -> (split, serialized example)."""
    split, playlist, is_owner, negatives = row
    hit = hits[0] if split == "valid" else hits[1]
    return split, encode_example({S.USER_INDEX: [user], S.PLAYLIST_INDEX: [playlist], S.IS_OWNER: [is_owner],
                                  S.NEGATIVE_PLAYLIST_INDEX: negatives, S.POSITIVE_IN_CANDIDATES: [max(0, hit)]})


def _eval_examples(keyed) -> Iterator[tuple[str, bytes]]:
    user, grouped = keyed
    hits = list(grouped["hits"])
    for row in grouped["rows"]:
        yield eval_example(user, row, hits[0] if hits else (0, 0))


def playlist_table(chunks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """``_IndexPlaylists`` chunks -> the CSR ``(offsets, tracks)`` of every playlist, in playlist index order."""
    chunks = [c for c in chunks if len(c[0])]
    if not chunks:
        return np.zeros(1, np.int64), np.empty(0, np.int64)
    playlists = np.concatenate([c[0] for c in chunks])
    order = np.argsort(playlists, kind="stable")
    counts = np.concatenate([np.diff(c[1]) for c in chunks])[order]
    base = np.cumsum([0] + [len(c[2]) for c in chunks[:-1]])
    starts = np.concatenate([c[1][:-1] + b for c, b in zip(chunks, base)])[order]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    gather = np.repeat(starts - offsets[:-1], counts) + np.arange(offsets[-1])
    return offsets, np.concatenate([c[2] for c in chunks])[gather]


def playlist_track_examples(chunk: tuple[np.ndarray, np.ndarray, np.ndarray]) -> Iterator[bytes]:
    """The ``playlist_tracks/`` examples of one ``_IndexPlaylists`` chunk."""
    playlists, offsets, tracks = chunk
    for i, playlist in enumerate(playlists.tolist()):
        yield encode_example({S.PLAYLIST_INDEX: [playlist], S.TRACK_INDEX: tracks[offsets[i]:offsets[i + 1]].tolist()})


def pairing_examples(result: knn.PairingResult) -> tuple[bytes, bytes]:
    """The ``candidates/`` and ``neighbours/`` examples of one user's pairing."""
    return (
        encode_example({S.USER_INDEX: [result.user_index], S.CANDIDATE_PLAYLIST_INDEX: result.candidates.tolist(),
                        S.NUM_REACHABLE: [result.num_reachable]}),
        encode_example({S.USER_INDEX: [result.user_index], S.NEIGHBOUR_USER_INDEX: result.neighbours.tolist()},
                       {S.NEIGHBOUR_SIMILARITY: result.similarities.tolist()}),
    )


def write_vocabulary(blob: bytes, path: str, kind: str) -> str:
    """Writes a vocabulary blob (one id per line, index = line number); counts its ids as ``vocabulary_<kind>``.

    Plain text written here rather than a tf.Transform vocabulary: the indices are
    needed inside this pipeline (negatives, pairing, tables) before any TensorFlow
    would run, and the trainer and serving model read a text file directly
    (``tf.lookup.TextFileInitializer``); ids hold no line breaks (``schemas.playlists``).
    """
    with FileSystems.create(path) as handle:
        handle.write(blob)
    common.counter(f"vocabulary_{kind}").inc(blob.count(b"\n"))
    return path


# --------------------------------------------------------------------------- transforms
class WriteShards(beam.PTransform):
    """Serialized records -> ``OUT/NAME/part-*`` (``common.WriteDeterministicShards``), counted as ``NAME_records``."""

    def __init__(self, output: str, name: str, num_shards: int):
        super().__init__()
        self._prefix, self._name, self._num_shards = common.join_path(output, name, "part"), name, num_shards

    def expand(self, records):
        return (records | "Count" >> beam.ParDo(_CountRecords(f"{self._name}_records"))
                | "Write" >> common.WriteDeterministicShards(self._prefix, self._num_shards))


class _CountRecords(beam.DoFn):
    def __init__(self, name: str):
        super().__init__()
        self._name = name

    def setup(self):
        self._inc = common.count(self._name)

    def process(self, record):
        self._inc()
        yield record


# --------------------------------------------------------------------------- run
def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m beam_pipelines.playlists", allow_abbrev=False, description=__doc__.split("\n\n")[0],
        epilog="Any other flag is a Beam pipeline option (--runner, --project, --region, --temp_location, ...).",
    )
    parser.add_argument("--input", required=True, action="append",
                        help="playlists file or glob (local or gs://); repeatable; Pichl CSV or MPD JSON")
    parser.add_argument("--output", required=True, help="output directory (local or gs://)")
    parser.add_argument("--format", default="auto", choices=("auto", *FORMATS))
    parser.add_argument("--interactions", help="follows CSV user_id,playlist_id[,timestamp] (file or glob)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-negatives", type=int, default=50, help="fixed negatives per valid/test example")
    parser.add_argument("--min-playlists-for-holdout", type=int, default=3)
    parser.add_argument("--num-shards", type=common.shard_count, default="auto",
                        help="files per output: an integer, or auto (default): 4, or one per 64 MiB of input if more")
    parser.add_argument("--knn-k", type=int, default=50, help="exact top-K neighbours scored per user")
    parser.add_argument("--min-reachable", type=int, default=20, help="take neighbours until this many playlists are reachable")
    parser.add_argument("--max-neighbours", type=int, default=50)
    parser.add_argument("--num-candidates", type=int, default=75)
    parser.add_argument("--pairing-block-size", type=int, default=0, help="users per scored block (0: automatic)")
    parser.add_argument("--max-rejected-fraction", type=float, default=0.05)
    return common.parse_pipeline_args(parser, argv)  # a misspelt flag is an error, not a silent Beam option


def _check_header(path: str, side: str, expected: Sequence[str]) -> None:
    first = common.first_lines(path, 1)
    if first and pc.is_header(first[0]) and pc.header_names(first[0])[:len(expected)] != tuple(expected):
        raise common.PipelineInputError(
            f"{path}: header columns {', '.join(pc.header_names(first[0]))} are not {', '.join(expected)} ({side})")


def resolve_inputs(args: argparse.Namespace) -> dict[str, list[str]]:
    """Matches the input globs and tells each file's format; headers are checked here, before Beam starts.

    Returns:
      ``{"pichl": [...], "mpd": [...], "interactions": [...]}`` sorted paths.

    Raises:
      common.PipelineInputError: no file, or a header with other columns.
    """
    files = sorted({p for pattern in args.input for p in common.check_text_files(common.match_files(pattern, "--input"),
                                                                                   "--input")})
    found: dict[str, list[str]] = {"pichl": [], "mpd": [], "interactions": []}
    for path in files:
        fmt = args.format if args.format != "auto" else pc.detect_format(path, (common.first_lines(path, 1) or [""])[0])
        if fmt == "pichl":
            _check_header(path, "Pichl playlists CSV", pc.PICHL_COLUMNS)
        found[fmt].append(path)
    if args.interactions:
        found["interactions"] = common.check_text_files(common.match_files(args.interactions, "--interactions"),
                                                        "--interactions")
        for path in found["interactions"]:
            _check_header(path, "interactions CSV", pc.INTERACTION_COLUMNS)
    return found


def _validate(args: argparse.Namespace) -> knn.PairingConfig:
    for name in ("num_negatives", "min_playlists_for_holdout", "pairing_block_size"):
        if getattr(args, name) < 0:
            raise common.PipelineInputError(f"--{name.replace('_', '-')} must be >= 0")
    if args.min_playlists_for_holdout < 3:
        raise common.PipelineInputError("--min-playlists-for-holdout must be >= 3 (one test, one valid, one train)")
    if not 0.0 <= args.max_rejected_fraction <= 1.0:
        raise common.PipelineInputError("--max-rejected-fraction must be in [0, 1]")
    config = knn.PairingConfig(k=args.knn_k, min_reachable=args.min_reachable, max_neighbours=args.max_neighbours,
                               num_candidates=args.num_candidates, seed=args.seed, block_size=args.pairing_block_size)
    config.validate()
    return config


def build_pipeline(pipeline: beam.Pipeline, inputs: dict[str, list[str]], output: str, args: argparse.Namespace,
                   config: knn.PairingConfig) -> None:
    """Wires every stage of the pipeline onto ``pipeline`` (the outputs are written by its sinks)."""
    sources = inputs["pichl"] + inputs["mpd"]  # file index space of the playlist rows
    read = pipeline | "Read" >> pc.ReadPlaylists(inputs["pichl"], inputs["mpd"], inputs["interactions"])
    built = read | "Collections" >> pc.BuildCollections(sources, inputs["interactions"])
    vocabulary, users = beam.pvalue.AsSingleton(built["vocabulary"]), beam.pvalue.AsSingleton(built["users"])

    split = built["collections"] | "AssignSplits" >> beam.ParDo(
        _AssignSplits(args.seed, args.num_negatives, args.min_playlists_for_holdout), users, vocabulary
    ).with_outputs("eval", "users", main="train")
    entries = built["playlists"] | "IndexPlaylists" >> beam.ParDo(_IndexPlaylists(), vocabulary)
    table = entries | "AllPlaylists" >> beam.combiners.ToList() | "PlaylistTable" >> beam.Map(playlist_table)
    num_tracks = built["vocabulary"] | "NumTracks" >> beam.Map(lambda v: v[1].count(b"\n"))
    paired = split.users | "Pairing" >> knn.PairUsers(config, table, num_tracks)

    hits = (paired["pairings"] | "HeldOutUsers" >> beam.Filter(lambda r: r.valid_hit >= 0 or r.test_hit >= 0)
            | "Hits" >> beam.Map(lambda r: (r.user_index, (r.valid_hit, r.test_hit))))
    evaluated = ({"rows": split.eval, "hits": hits} | "JoinHits" >> beam.CoGroupByKey()
                 | "EvalExamples" >> beam.FlatMap(_eval_examples))
    _ = split.train | "WriteTrain" >> WriteShards(output, "train", args.num_shards)
    for name in ("valid", "test"):
        _ = (evaluated | f"Select{name.title()}" >> beam.Filter(lambda e, n=name: e[0] == n)
             | f"Drop{name.title()}Key" >> beam.Values() | f"Write{name.title()}" >> WriteShards(output, name, args.num_shards))
    _ = (entries | "EncodePlaylistTracks" >> beam.FlatMap(playlist_track_examples)
         | "WritePlaylistTracks" >> WriteShards(output, S.PLAYLIST_TRACKS_DIR, args.num_shards))
    tables = paired["pairings"] | "EncodePairings" >> beam.Map(pairing_examples)
    for position, name in enumerate((S.CANDIDATES_DIR, S.NEIGHBOURS_DIR)):
        _ = (tables | f"Pick{name.title()}" >> beam.Map(lambda t, i=position: t[i])
             | f"Write{name.title()}" >> WriteShards(output, name, args.num_shards))
    _ = paired["report"] | "WritePairingReport" >> knn.WritePairingReport(common.join_path(output, S.PAIRING_DIR))
    vocab_dir = common.join_path(output, S.VOCAB_DIR)
    _ = built["users"] | "WriteUsers" >> beam.Map(write_vocabulary, common.join_path(vocab_dir, S.USER_VOCAB), "users")
    _ = built["vocabulary"] | "WritePlaylistsTracks" >> beam.FlatMap(lambda v: [
        write_vocabulary(v[0], common.join_path(vocab_dir, S.PLAYLIST_VOCAB), "playlists"),
        write_vocabulary(v[1], common.join_path(vocab_dir, S.TRACK_VOCAB), "tracks")])
    _ = (
        (read["rejected"], built["rejected"])
        | "FlattenRejected" >> beam.Flatten()
        | "EncodeRejected" >> beam.Map(common.encode_json_line)
        | "WriteRejected" >> common.WriteDeterministicShards(common.join_path(output, "rejected", "part"), 1, kind="jsonl")
    )


def run(argv: Sequence[str] | None = None, save_main_session: bool = False) -> dict[str, Any]:
    """Runs the pipeline and returns the ``dataset.json`` payload.

    Raises:
      common.PipelineInputError: bad flags, unreadable input, rows that do not add up, or too many rejects.
    """
    args, beam_args = parse_args(argv)
    config = _validate(args)
    inputs = resolve_inputs(args)
    args.num_shards = common.resolve_shard_count(args.num_shards, [p for files in inputs.values() for p in files], 4)
    if not inputs["pichl"] and not inputs["mpd"]:
        raise common.PipelineInputError("--input matches only interactions-like files; no playlists to read")
    options = PipelineOptions(beam_args)
    options.view_as(SetupOptions).save_main_session = save_main_session
    dry_run = common.is_dataflow_dry_run(options)
    if not dry_run:
        common.prepare_output(args.output, OUTPUT_NAMES)
    started = time.time()
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, inputs, args.output, args, config)
    if dry_run:
        return common.build_dataflow_job(pipeline, args.output)
    result = common.run_pipeline(pipeline, args.output)
    counts = common.read_counters(result)
    report = common.read_json(common.join_path(args.output, S.PAIRING_DIR, S.PAIRING_REPORT))
    summary = summarize(args, inputs, counts, report, time.time() - started)
    if not summary["accounting"]["balanced"]:
        unbalanced = {k: v for k, v in summary["accounting"]["checks"].items() if v["read"] != v["accounted"]}
        raise common.PipelineInputError(f"rows do not add up: {json.dumps(unbalanced)}; outputs are incomplete")
    _require_usable_rows(args, inputs, counts)
    if summary["rejected_fraction"] > args.max_rejected_fraction:
        first = "; ".join(f"{os.path.basename(r['source'])}:{r['line']}: {r['reason']}"
                          for r in common.first_rejections(args.output, keep=lambda r: not r["reason"].startswith("duplicate")))
        raise common.PipelineInputError(
            f"{summary['rejected_fraction']:.1%} of rows rejected (> --max-rejected-fraction "
            f"{args.max_rejected_fraction}); first: {first}; all in {common.join_path(args.output, 'rejected')}")
    common.commit_marker(args.output, summary)
    return summary


def _require_usable_rows(args: argparse.Namespace, inputs: dict[str, list[str]], c: dict[str, int]) -> None:
    """The playlist inputs gave at least one playlist, and ``--interactions`` (when given) one follow."""
    g = lambda name: c.get(name, 0)  # noqa: E731
    common.require_usable(
        flag="--input", source=" ".join(args.input), used=g("playlists"), output=args.output,
        files=inputs["pichl"] + inputs["mpd"], what="playlist", breakdown={
            "CSV lines read": g("pichl_lines_read"), "header lines": g("pichl_header_lines"),
            "blank lines": g("pichl_blank_lines"), "rejected lines": g("pichl_rejected"),
            "MPD files read": g("mpd_files_read"), "MPD files rejected": g("mpd_files_rejected"),
            "MPD playlists rejected": g("mpd_playlists_rejected")})
    if args.interactions:
        common.require_usable(
            flag="--interactions", source=args.interactions, used=g("interactions_used"), output=args.output,
            files=inputs["interactions"], what="follow", breakdown={
                "lines read": g("interactions_lines_read"), "header lines": g("interactions_header_lines"),
                "blank lines": g("interactions_blank_lines"), "rejected": g("interactions_rejected"),
                "unknown playlist": g("interactions_unknown_playlist"),
                "own playlist": g("interactions_own_playlist"), "duplicates": g("interactions_duplicates")})


def _files(name: str, num_shards: int) -> list[str]:
    return [common.shard_path(f"{name}/part", i, num_shards, ".tfrecord.gz") for i in range(num_shards)]


def _checks(g) -> dict[str, dict[str, Any]]:
    """Per input, the rows read against where they ended (``g``: counter by name, 0 when absent)."""
    def check(read: str, parts: Sequence[str], rule: str) -> dict[str, Any]:
        return {"read": g(read), "accounted": sum(g(p) for p in parts), "rule": rule}

    return {
        "pichl_lines": check("pichl_lines_read", ("pichl_header_lines", "pichl_blank_lines", "pichl_rejected",
                                                  "pichl_duplicates", "pichl_rows_used"),
                             "lines = header + blank + rejected + duplicate (playlist, track) + used rows"),
        "mpd_files": check("mpd_files_read", ("mpd_files_rejected", "mpd_files_parsed"), "files = rejected + parsed"),
        "mpd_playlists": check("mpd_playlists_read", ("mpd_playlists_rejected", "mpd_playlists_duplicate",
                                                      "mpd_playlists_used"),
                               "playlist entries = rejected (malformed or no valid track) + duplicate pid + used"),
        "mpd_tracks": check("mpd_tracks_read", ("mpd_tracks_rejected", "mpd_track_duplicates", "mpd_tracks_used"),
                            "track entries of well-formed playlists = rejected + duplicate + used"),
        "interactions_lines": check("interactions_lines_read", (
            "interactions_header_lines", "interactions_blank_lines", "interactions_rejected",
            "interactions_unknown_playlist", "interactions_own_playlist", "interactions_duplicates", "interactions_used"),
            "lines = header + blank + rejected + unknown playlist + own playlist + repeated follow + used follows"),
        "memberships": {"read": g("playlists") + g("interactions_used"),
                        "accounted": g("train_examples") + g("valid_examples") + g("test_examples"),
                        "rule": "owned playlists + used follows = train + valid + test examples"},
        "pairing": {"read": g("users"), "accounted": g("pairing_users"), "rule": "every user is paired once"},
        "tables": {"read": g("playlists") + 2 * g("users"),
                   "accounted": g(f"{S.PLAYLIST_TRACKS_DIR}_records") + g(f"{S.CANDIDATES_DIR}_records")
                   + g(f"{S.NEIGHBOURS_DIR}_records"),
                   "rule": "playlist_tracks = playlists; candidates = neighbours = users"},
    }


def summarize(args: argparse.Namespace, inputs: dict[str, list[str]], c: dict[str, int], report: dict[str, Any],
              seconds: float) -> dict[str, Any]:
    """Builds ``dataset.json``: the contract keys the trainer checks, counts, accounting, pairing summary."""
    g = lambda name: c.get(name, 0)  # noqa: E731
    checks = _checks(g)
    examples = {name: g(f"{name}_examples") for name in S.SPLITS}
    rejected = sum(g(n) for n in ("pichl_rejected", "mpd_files_rejected", "mpd_playlists_rejected", "mpd_tracks_rejected",
                                  "interactions_rejected", "interactions_unknown_playlist"))
    units = (g("pichl_lines_read") - g("pichl_header_lines") - g("pichl_blank_lines") + g("mpd_files_read")
             + g("mpd_playlists_read") + g("mpd_tracks_read") + g("interactions_lines_read")
             - g("interactions_header_lines") - g("interactions_blank_lines"))
    recall = {split: {"examples": examples[split], "positive_in_candidates": g(f"{split}_positive_in_candidates"),
                      "positive_reachable": g(f"{split}_positive_reachable"),
                      "candidate_recall": round(g(f"{split}_positive_in_candidates") / max(1, examples[split]), 6)}
              for split in ("valid", "test")}
    return {
        "dataset": "playlists",
        "schema": "playlists",
        "splits": {name: {"examples": examples[name], "files": _files(name, args.num_shards)} for name in S.SPLITS},
        "tables": {name: {"records": g(f"{name}_records"), "files": _files(name, args.num_shards)} for name in TABLES},
        "vocabulary": {"users": g("vocabulary_users"), "playlists": g("vocabulary_playlists"),
                       "tracks": g("vocabulary_tracks"),
                       "files": {kind: f"{S.VOCAB_DIR}/{name}" for kind, name in
                                 (("users", S.USER_VOCAB), ("playlists", S.PLAYLIST_VOCAB), ("tracks", S.TRACK_VOCAB))}},
        "sources": [{"path": p, "format": fmt, "side": "interactions" if fmt == "interactions" else "playlists",
                     "sha256": common.sha256_of(p)} for fmt in ("pichl", "mpd", "interactions") for p in inputs[fmt]],
        "ids": {
            "user": "input user_id; MPD playlists have none: see mpd_owner_mapping",
            "playlist": "<owner user id>/<playlist name> (name stripped, control characters -> space; owners hold no '/')",
            "track": "Pichl: <artist>\\x1f<track name>; MPD: track_uri",
            "index": "0-based line number in the sorted vocabulary file",
        },
        "mpd_owner_mapping": {"rule": "each MPD playlist pid is owned by its own user 'mpd:<pid>' and has no other "
                                      "member (the MPD has no user ids)", "users": g("mpd_playlists_used")},
        "split": {
            "protocol": "per_user_holdout", "seed": args.seed, "num_negatives": args.num_negatives,
            "min_playlists_for_holdout": args.min_playlists_for_holdout,
            "rules": {
                "holdout": "collection playlists ordered by stable_hash64(seed, 'holdout', user id, playlist id): "
                           "1st -> test, 2nd -> valid, rest -> train; users with fewer playlists stay train-only",
                "negatives": "the first distinct draws never in the user's collection (train or held out) of "
                             "splitmix64(stable_hash64(seed, 'negatives', split, user id) + (j+1) * 0x9E3779B97F4A7C15) "
                             "mod num_playlists, j = 0, 1, ...",
                "hidden": "the held-out user -> playlist edges: in no train example and not in the user's pairing vector",
                "content": "every playlist's track list (playlist_tracks/, held-out playlists included): public "
                           "content known at serving time",
            },
        },
        "pairing": {
            **{k: report["config"][k] for k in ("k", "min_reachable", "max_neighbours", "num_candidates")},
            "similarity": "cosine of L2-normalised binary liked-track vectors from train-side collections",
            "statistics": report["statistics"],
            "report": f"{S.PAIRING_DIR}/{S.PAIRING_REPORT}",
            "users_without_neighbours": g("pairing_users_without_neighbours"),
            "users_below_min_reachable": g("pairing_users_below_min_reachable"),
            "users_short_of_candidates": g("pairing_users_short_of_candidates"),
            "candidates": g("pairing_candidates"),
            "candidate_recall": recall,
            "seconds": {"index": g("pairing_index_ms") / 1000, "blocks": g("pairing_blocks_ms") / 1000},
        },
        "counts": {
            "users": g("users"), "users_train_only": g("users_train_only"), "playlists": g("playlists"),
            "tracks": g("vocabulary_tracks"), "examples": examples, "follows": g("interactions_used"),
            "eval_negatives": g("eval_negatives"), "users_short_of_negatives": g("users_short_of_negatives"),
            "rows_without_artist": g("pichl_rows_without_artist"), "rejected_rows": rejected,
            "detail": dict(sorted(c.items())),
        },
        "accounting": {
            "rule": "for every input: rows read = header + blank + rejected + duplicates + used (see checks); "
                    "memberships = train + valid + test examples",
            "checks": checks,
            "balanced": all(v["read"] == v["accounted"] for v in checks.values()),
        },
        "num_shards": args.num_shards,
        "rejected_fraction": rejected / max(1, units),
        "pipeline_seconds": round(seconds, 2),
    }


def _describe(summary: dict[str, Any]) -> str:
    c, p = summary["counts"], summary["pairing"]
    e = c["examples"]
    return (f"{c['users']} users, {c['playlists']} playlists, {c['tracks']} tracks; examples train/valid/test "
            f"{e['train']}/{e['valid']}/{e['test']}; {c['rejected_rows']} rejected; candidate recall valid "
            f"{p['candidate_recall']['valid']['candidate_recall']:.3f} test {p['candidate_recall']['test']['candidate_recall']:.3f}; "
            f"pairing {p['seconds']['index'] + p['seconds']['blocks']:.1f} s; {summary['pipeline_seconds']} s")


def main(argv: Sequence[str] | None = None) -> int:
    return common.pipeline_main("playlists", run, _describe, argv)


if __name__ == "__main__":
    # Run through the importable module, not __main__: workers unpickle DoFns by module path.
    from beam_pipelines import playlists as _module

    sys.exit(_module.main())
