"""The bipartite rating graph of a movielens output, built in Beam, written beside it.

Usage::

    python -m beam_pipelines.movielens --input u1.base --test-input u1.test --split given --output OUT
    python -m beam_pipelines.rating_graph --data OUT [--user-features u.user] [--item-features u.item|movies.dat|movies.csv]

Owns the GCMC input graph (``schemas.rating_graph`` names every part): from
the ratings output's own ``train/`` (and ``valid/``) tf.Examples, node sets
``user`` and ``item`` in vocabulary order (node ``i`` = ``user_index`` /
``item_index`` ``i``), one edge set per rating level found in ``train/`` plus
its reverse, and optional side features read from MovieLens' metadata files:

* users: ``u.user`` (ML-100K: ``id|age|gender|occupation|zip``) or ``users.dat``
  (ML-1M: ``id::gender::age::occupation::zip``) -> ``age / 50``, gender one-hot
  (F, M), occupation one-hot (the occupations found in the file, sorted);
* items: ``u.item`` (ML-100K: 19 genre flags), ``movies.dat`` (ML-1M/10M:
  ``id::title::A|B``) or ``movies.csv`` (ML-20M/25M/latest) -> genre multi-hot
  (u.item: the 19 flags; else the genres found in the file, sorted).

Every feature line ends in one place: the features of a node, or ``rejected/``
with its reason (malformed, a duplicate id, or an id that is not a node: no
train rating); nodes without a line get zeros and are counted. ``dataset.json``
gets a ``graph`` section whose accounting adds up, written last.

Outputs (beside the ratings output, which stays as it was)::

    OUT/graph/train.tfrecord.gz         one GraphTensor tf.Example: the train ratings as edges
    OUT/graph/train_valid.tfrecord.gz   the same with the valid ratings too (test-time encoder, refit, serving)
    OUT/graph_schema.pbtxt              tfgnn.GraphSchema
    OUT/rejected/graph-00000-of-00001.jsonl
    OUT/dataset.json                    + "graph": levels, nodes, edges per set, side features, accounting

Each graph is one element (a combine of every edge), so it must fit one
worker's memory: 10M ratings are about 0.3 GB of edge indices.
"""
from __future__ import annotations

import argparse
import array
import csv
import io
import logging
import os
import sys
import time
from typing import Any, Iterable, Iterator, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions
from apache_beam.pvalue import TaggedOutput

from beam_pipelines import common
from schemas import rating_graph as G
from schemas import ratings as F

USER_FORMATS = ("uuser", "dat")
ITEM_FORMATS = ("uitem", "dat", "csv")
TRAIN, VALID = "train", "valid"


class RowError(ValueError):
    """A malformed feature row; the message is the reason written to ``rejected/``."""


# --------------------------------------------------------------------------- parsing (pure)
def _node_id(value: str, what: str) -> str:
    value = value.strip()
    if not (value.isascii() and value.isdigit()):
        raise RowError(f"{what} {value[:40]!r} is not a non-negative integer")
    return str(int(value))  # the ratings pipeline's canonical form


def parse_user_line(text: str, fmt: str) -> tuple[str, float, str, str]:
    """One user metadata line -> ``(id, age, gender, occupation)``.

    Args:
      text: the decoded line.
      fmt: ``uuser`` (``id|age|gender|occupation|zip``) or ``dat`` (``id::gender::age::occupation::zip``).

    Raises:
      RowError: the line is malformed; the message says how.
    """
    fields = text.split("|" if fmt == "uuser" else "::")
    if len(fields) != 5:
        raise RowError(f"user features: expected 5 {'|' if fmt == 'uuser' else '::'}-separated fields, found {len(fields)}")
    user = _node_id(fields[0], "user features: user id")
    age_text, gender = (fields[1], fields[2]) if fmt == "uuser" else (fields[2], fields[1])
    try:
        age = float(int(age_text.strip()))
    except ValueError:
        raise RowError(f"user features: age {age_text.strip()[:20]!r} is not an integer") from None
    if not 0 < age < 130:
        raise RowError(f"user features: age {age:g} is outside 1..129")
    gender = gender.strip().upper()
    if gender not in G.GENDERS:
        raise RowError(f"user features: gender {gender[:10]!r} is not one of {', '.join(G.GENDERS)}")
    occupation = fields[3].strip()
    if not occupation:
        raise RowError("user features: empty occupation")
    return user, age, gender, occupation


def parse_item_line(text: str, fmt: str) -> tuple[str, tuple[str, ...]]:
    """One item metadata line -> ``(id, genres)``.

    Args:
      text: the decoded line.
      fmt: ``uitem`` (ML-100K ``u.item``: 5 fields then 19 genre flags), ``dat``
        (``id::title::A|B``) or ``csv`` (``id,title,A|B``, the title maybe quoted).

    Raises:
      RowError: the line is malformed.
    """
    if fmt == "uitem":
        fields = text.split("|")
        if len(fields) != 5 + len(G.ML100K_GENRES):
            raise RowError(f"item features: expected {5 + len(G.ML100K_GENRES)} |-separated fields, found {len(fields)}")
        flags = [f.strip() for f in fields[5:]]
        if any(f not in ("0", "1") for f in flags):
            raise RowError("item features: genre flags must be 0 or 1")
        return _node_id(fields[0], "item features: item id"), tuple(
            g for g, f in zip(G.ML100K_GENRES, flags) if f == "1")
    if fmt == "dat":
        fields = text.split("::")
    else:
        try:
            fields = next(csv.reader(io.StringIO(text)))
        except (csv.Error, StopIteration) as error:
            raise RowError(f"item features: not a CSV row ({error})") from None
    if len(fields) != 3:
        raise RowError(f"item features: expected 3 fields (id, title, genres), found {len(fields)}")
    genres = tuple(sorted({g.strip() for g in fields[2].split("|") if g.strip()}))
    if not genres:
        raise RowError("item features: no genres")
    return _node_id(fields[0], "item features: item id"), genres


def detect_feature_format(path: str, node_set: str, first: str) -> str:
    """The metadata format from the file name (``u.user``, ``users.dat``, ``u.item``, ``movies.dat|csv``).

    Raises:
      common.PipelineInputError: the format cannot be told.
    """
    name = os.path.basename(path).lower().removesuffix(".gz")
    if node_set == G.NODE_USER:
        fmt = "dat" if "::" in first else "uuser" if "|" in first else None
    elif name.endswith(".csv") or (name.startswith("movies") and "," in first and "::" not in first):
        fmt = "csv"
    else:
        fmt = "dat" if "::" in first else "uitem" if "|" in first else None
    if fmt is None:
        choices = USER_FORMATS if node_set == G.NODE_USER else ITEM_FORMATS
        raise common.PipelineInputError(f"cannot tell the format of {path} (first line {first[:60]!r}); "
                                        f"pass --{node_set}-format ({'|'.join(choices)})")
    return fmt


def user_columns(occupations: Sequence[str]) -> list[str]:
    """Column names of the user ``side`` vector."""
    return [f"age/{G.AGE_SCALE:g}"] + [f"gender={g}" for g in G.GENDERS] + [f"occupation={o}" for o in occupations]


def user_vector(row: tuple[str, float, str, str], occupations: Sequence[str]) -> list[float]:
    """``[age/50, gender one-hot, occupation one-hot]`` of a parsed user row."""
    _, age, gender, occupation = row
    vector = [age / G.AGE_SCALE] + [1.0 if gender == g else 0.0 for g in G.GENDERS]
    return vector + [1.0 if occupation == o else 0.0 for o in occupations]


def item_vector(row: tuple[str, tuple[str, ...]], genres: Sequence[str]) -> list[float]:
    """The genre multi-hot of a parsed item row."""
    present = set(row[1])
    return [1.0 if g in present else 0.0 for g in genres]


def parse_rating_example(serialized: bytes) -> tuple[int, int, float]:
    """A ratings tf.Example -> ``(user_index, item_index, rating)``."""
    from tensorflow.core.example import example_pb2

    feature = example_pb2.Example.FromString(serialized).features.feature
    return (int(feature[F.USER_INDEX].int64_list.value[0]), int(feature[F.ITEM_INDEX].int64_list.value[0]),
            float(feature[F.RATING].float_list.value[0]))


# --------------------------------------------------------------------------- graph assembly (pure)
class CollectEdges(beam.CombineFn):
    """Every (user, item, rating) -> ``{rating: (users, items)}`` sorted by (user, item).

    Accumulates into ``array('q')`` per level instead of a list of tuples: a
    tuple per edge would cost ~10x the memory at 10M edges.
    """

    def create_accumulator(self) -> dict[float, tuple[array.array, array.array]]:
        return {}

    def add_input(self, accumulator, edge: tuple[int, int, float]):
        user, item, rating = edge
        users, items = accumulator.setdefault(rating, (array.array("q"), array.array("q")))
        users.append(user)
        items.append(item)
        return accumulator

    def merge_accumulators(self, accumulators):
        merged: dict[float, tuple[array.array, array.array]] = {}
        for accumulator in accumulators:
            for rating, (users, items) in accumulator.items():
                into = merged.setdefault(rating, (array.array("q"), array.array("q")))
                into[0].extend(users)
                into[1].extend(items)
        return merged

    def extract_output(self, accumulator) -> dict[float, tuple[np.ndarray, np.ndarray]]:
        output = {}
        for rating, (users, items) in accumulator.items():
            users, items = np.frombuffer(users, np.int64), np.frombuffer(items, np.int64)
            order = np.lexsort((items, users))
            output[rating] = (users[order], items[order])
        return output


def graph_example(*, user_ids: Sequence[str], item_ids: Sequence[str], levels: Sequence[float],
                  edges: dict[float, tuple[np.ndarray, np.ndarray]],
                  side: dict[str, np.ndarray | None]):
    """One rating graph as a GraphTensor ``tf.train.Example`` (``schemas.rating_graph.graph_schema`` layout).

    Args:
      user_ids, item_ids: raw ids in node (vocabulary) order.
      levels: the edge sets' rating levels, ascending; ``edges`` must use no other.
      edges: level -> (user nodes, item nodes), sorted by (user, item).
      side: node set -> its ``[nodes, dim]`` side features, or None.

    Raises:
      ValueError: an edge at a level not in ``levels``.
    """
    from tensorflow.core.example import example_pb2

    unknown = sorted(set(edges) - set(levels))
    if unknown:
        raise ValueError(f"edges at rating(s) {unknown} that are not levels {list(levels)}")
    example = example_pb2.Example()
    feature = example.features.feature
    for node_set, ids in ((G.NODE_USER, user_ids), (G.NODE_ITEM, item_ids)):
        feature[f"nodes/{node_set}.#size"].int64_list.value.append(len(ids))
        feature[f"nodes/{node_set}.{G.ID}"].bytes_list.value.extend(i.encode() for i in ids)
        if side.get(node_set) is not None:
            feature[f"nodes/{node_set}.{G.SIDE}"].float_list.value.extend(np.asarray(side[node_set], np.float32).ravel().tolist())
    empty = np.zeros(0, np.int64)
    for level in levels:
        users, items = edges.get(level, (empty, empty))
        reverse = np.lexsort((users, items))
        for name, sources, targets in ((G.rating_edge_set(level), users, items),
                                       (G.reverse_edge_set(level), items[reverse], users[reverse])):
            feature[f"edges/{name}.#size"].int64_list.value.append(len(sources))
            feature[f"edges/{name}.#source"].int64_list.value.extend(sources.tolist())
            feature[f"edges/{name}.#target"].int64_list.value.extend(targets.tolist())
    return example


def dense_side_features(rows: Iterable[tuple[int, list[float]]], num_nodes: int, dim: int) -> np.ndarray:
    """``(node, vector)`` pairs -> a ``[num_nodes, dim]`` matrix (zeros for nodes without a row)."""
    matrix = np.zeros((num_nodes, dim), np.float32)
    for node, vector in rows:
        matrix[node] = vector
    return matrix


# --------------------------------------------------------------------------- transforms
def _counted(element, name: str):
    common.counter(name).inc()
    return element


class ReadRatingEdges(beam.PTransform):
    """The ratings output's train and valid shards -> ``{"train", "valid"}`` (user, item, rating) edges.

    Train rows are always edges (their ids make the vocabulary); a valid row
    whose user or item is not a node (OOV) is counted and left out of the graph.
    """

    def __init__(self, shards: dict[str, list[str]], num_users: int, num_items: int):
        super().__init__()
        self._shards, self._num_users, self._num_items = shards, num_users, num_items

    def expand(self, pbegin):
        num_users, num_items = self._num_users, self._num_items
        out = {}
        for split in (TRAIN, VALID):
            rows = (
                pbegin
                | f"List{split.title()}Shards" >> beam.Create(self._shards[split])
                | f"Read{split.title()}" >> beam.io.ReadAllFromTFRecord(compression_type=CompressionTypes.GZIP)
                | f"Parse{split.title()}" >> beam.Map(parse_rating_example)
                | f"Count{split.title()}" >> beam.Map(_counted, f"graph_{split}_examples")
            )
            out[split] = rows | f"Known{split.title()}" >> beam.ParDo(_KnownNodes(split, num_users, num_items))
        return out


class _KnownNodes(beam.DoFn):
    def __init__(self, split: str, num_users: int, num_items: int):
        super().__init__()
        self._split, self._num_users, self._num_items = split, num_users, num_items

    def process(self, edge):
        if edge[0] >= self._num_users or edge[1] >= self._num_items:
            common.counter(f"graph_{self._split}_unknown_node").inc()
            return
        yield edge


class ReadSideFeatures(beam.PTransform):
    """A metadata file -> ``{"rows": (node index, vector), "rejected": records, "columns": [names]}``.

    Lines are parsed (malformed -> rejected), duplicate ids keep the first
    (path, line) (the others rejected), ids that are not nodes are rejected as
    ``not a node``, and the rest become side-feature vectors.
    """

    def __init__(self, node_set: str, files: Sequence[str], fmt: str, vocabulary: Sequence[str]):
        super().__init__()
        self._node_set, self._files, self._fmt = node_set, files, fmt
        self._index = {raw: i for i, raw in enumerate(vocabulary)}

    def expand(self, pbegin):
        node_set, fmt, index = self._node_set, self._fmt, self._index
        label = node_set.title()
        parsed = (
            pbegin
            | f"Read{label}Features" >> common.ReadPositionedLines(self._files)
            | f"Parse{label}Features" >> beam.ParDo(_ParseFeatureLine(node_set, fmt)).with_outputs("rejected",
                                                                                                  main="rows")
        )
        kept = (
            parsed.rows
            | f"Key{label}Rows" >> beam.Map(lambda r: (r[0][0], r))
            | f"Group{label}Rows" >> beam.GroupByKey()
            | f"First{label}Row" >> beam.ParDo(_FirstRowAsNode(node_set, index)).with_outputs("rejected", main="rows")
        )
        rejected = (parsed.rejected, kept.rejected) | f"Flatten{label}Rejected" >> beam.Flatten()
        if node_set == G.NODE_USER:
            vocabulary = (kept.rows | "Occupations" >> beam.Map(lambda r: r[1][3]) | "DistinctOccupations" >> beam.Distinct()
                          | "OccupationList" >> beam.combiners.ToList() | "SortOccupations" >> beam.Map(sorted))
            columns = vocabulary | "UserColumns" >> beam.Map(user_columns)
            encode = lambda r, values: (r[0], user_vector(r[1], values))  # noqa: E731
        else:
            if fmt == "uitem":
                vocabulary = pbegin | "Ml100kGenres" >> beam.Create([list(G.ML100K_GENRES)])
            else:
                vocabulary = (kept.rows | "Genres" >> beam.FlatMap(lambda r: r[1][1]) | "DistinctGenres" >> beam.Distinct()
                              | "GenreList" >> beam.combiners.ToList() | "SortGenres" >> beam.Map(sorted))
            columns = vocabulary | "ItemColumns" >> beam.Map(lambda genres: [f"genre={g}" for g in genres])
            encode = lambda r, values: (r[0], item_vector(r[1], values))  # noqa: E731
        rows = kept.rows | f"Encode{label}" >> beam.Map(encode, values=beam.pvalue.AsSingleton(vocabulary))
        return {"rows": rows, "rejected": rejected, "columns": columns}


class _ParseFeatureLine(beam.DoFn):
    def __init__(self, node_set: str, fmt: str):
        super().__init__()
        self._node_set, self._fmt = node_set, fmt
        self._parse = parse_user_line if node_set == G.NODE_USER else parse_item_line

    def process(self, element):
        path, number, text = element
        prefix = f"{self._node_set}_features"
        common.counter(f"{prefix}_lines_read").inc()
        if not text.strip():
            common.counter(f"{prefix}_blank_lines").inc()
            return
        if number == 1 and self._fmt == "csv" and text.split(",", 1)[0].strip().lower() == "movieid":
            common.counter(f"{prefix}_header_lines").inc()
            return
        try:
            row = self._parse(text, self._fmt)
        except RowError as error:
            common.counter(f"{prefix}_rejected").inc()
            yield TaggedOutput("rejected", common.rejection(path, number, str(error), text))
            return
        yield row, path, number, text


class _FirstRowAsNode(beam.DoFn):
    """Of one id's rows keeps the first (path, line); the rest are duplicates; ids that are not nodes are rejected."""

    def __init__(self, node_set: str, index: dict[str, int]):
        super().__init__()
        self._node_set, self._index = node_set, index

    def process(self, keyed):
        raw_id, rows = keyed
        rows = sorted(rows, key=lambda r: (r[1], r[2]))
        prefix = f"{self._node_set}_features"
        for row, path, number, text in rows[1:]:
            common.counter(f"{prefix}_duplicates").inc()
            yield TaggedOutput("rejected", common.rejection(path, number, f"duplicate {self._node_set} id {raw_id} "
                                                            f"(line {rows[0][2]} kept)", text))
        row, path, number, text = rows[0]
        node = self._index.get(raw_id)
        if node is None:
            common.counter(f"{prefix}_not_in_graph").inc()
            yield TaggedOutput("rejected", common.rejection(
                path, number, f"not a node: {self._node_set} {raw_id} has no train rating", text))
            return
        common.counter(f"{prefix}_used").inc()
        yield node, row


class BuildGraphs(beam.PTransform):
    """Edges -> ``(name, serialized GraphTensor tf.Example)`` for the train and train+valid graphs.

    Levels are the distinct train ratings; a valid edge at another level has no
    edge set and is counted (``graph_valid_unseen_level``), not added.
    """

    def __init__(self, user_ids: Sequence[str], item_ids: Sequence[str]):
        super().__init__()
        self._user_ids, self._item_ids = list(user_ids), list(item_ids)

    def expand(self, inputs):
        edges, side = inputs["edges"], inputs["side"]
        levels = (edges[TRAIN] | "Ratings" >> beam.Map(lambda e: e[2]) | "DistinctRatings" >> beam.Distinct()
                  | "RatingList" >> beam.combiners.ToList() | "SortLevels" >> beam.Map(sorted))
        valid_edges = edges[VALID] | "ValidAtLevels" >> beam.ParDo(_AtLevels(), beam.pvalue.AsSingleton(levels))
        graphs = {
            "train": edges[TRAIN],
            "train_valid": (edges[TRAIN], valid_edges) | "TrainAndValid" >> beam.Flatten(),
        }
        built = []
        for name, graph_edges in graphs.items():
            label = "".join(part.title() for part in name.split("_"))
            built.append(
                graph_edges
                | f"Count{label}Edges" >> beam.Map(_counted, f"graph_{name}_edges")
                | f"Collect{label}" >> beam.CombineGlobally(CollectEdges())
                | f"Encode{label}" >> beam.ParDo(
                    _EncodeGraph(name, self._user_ids, self._item_ids), beam.pvalue.AsSingleton(levels),
                    beam.pvalue.AsSingleton(side[G.NODE_USER]), beam.pvalue.AsSingleton(side[G.NODE_ITEM]))
            )
        return {"graphs": built | "FlattenGraphs" >> beam.Flatten(), "levels": levels}


class _EncodeGraph(beam.DoFn):
    """Collected edges -> ``(name, serialized GraphTensor)``; counts the edges of every edge set."""

    def __init__(self, name: str, user_ids: Sequence[str], item_ids: Sequence[str]):
        super().__init__()
        self._name, self._user_ids, self._item_ids = name, user_ids, item_ids

    def process(self, collected, levels, user_side, item_side):
        for level in levels:
            count = len(collected.get(level, ((),))[0])
            common.counter(f"graph_{self._name}_{G.rating_edge_set(level)}").inc(count)
        example = graph_example(user_ids=self._user_ids, item_ids=self._item_ids, levels=levels, edges=collected,
                                side={G.NODE_USER: user_side, G.NODE_ITEM: item_side})
        yield self._name, example.SerializeToString(deterministic=True)  # map order fixed: same bytes every run


class _AtLevels(beam.DoFn):
    def process(self, edge, levels):
        if edge[2] not in levels:
            common.counter("graph_valid_unseen_level").inc()
            return
        yield edge


def _write_graph(named: tuple[str, bytes], output: str) -> str:
    """Writes one serialized graph as a one-record gzip TFRecord file."""
    name, serialized = named
    path = common.join_path(output, G.GRAPH_FILES[name])
    with FileSystems.create(path, compression_type=CompressionTypes.GZIP) as handle:
        handle.write(common.tfrecord_frame(serialized))
    return path


def _write_levels(levels: list[float], output: str) -> None:
    common.write_json(common.join_path(output, G.GRAPH_DIR, "levels.json"), {"levels": levels})


# --------------------------------------------------------------------------- run
def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m beam_pipelines.rating_graph", allow_abbrev=False,
        description="A movielens output -> its bipartite rating graph (GraphTensor + GraphSchema) beside it",
        epilog="Any other flag must be a Beam pipeline option (--runner, --project, --temp_location, ...).",
    )
    parser.add_argument("--data", required=True, help="a beam_pipelines.movielens --output (local or gs://)")
    parser.add_argument("--user-features", help="u.user (ML-100K) or users.dat (ML-1M): user side features")
    parser.add_argument("--item-features", help="u.item (ML-100K), movies.dat (ML-1M/10M) or movies.csv: genres")
    parser.add_argument("--user-format", default="auto", choices=("auto", *USER_FORMATS))
    parser.add_argument("--item-format", default="auto", choices=("auto", *ITEM_FORMATS))
    parser.add_argument("--max-rejected-fraction", type=float, default=0.01,
                        help="of the feature lines, the malformed and duplicate ones (ids that are no node do not count)")
    return common.parse_pipeline_args(parser, argv)


def _read_vocabulary(data: str, name: str) -> list[str]:
    """A tf.Transform vocabulary of the ratings output, one id per line.

    Found the way ``tft.TFTransformOutput.vocabulary_file_by_name`` finds it
    (``transformed_metadata/asset_map``, else the name, under
    ``transform_fn/assets/``) but read through Beam's FileSystems: TensorFlow's
    own gs:// file system cannot reach a storage emulator, so with it a Dataflow
    dry run against the emulator could not be built (tests/test_dataflow_dry_run.py).

    Raises:
      common.PipelineInputError: the vocabulary file is missing.
    """
    mapping_path = common.join_path(data, "transformed_metadata", "asset_map")
    mapping = common.read_json(mapping_path) if FileSystems.exists(mapping_path) else {}
    path = common.join_path(data, "transform_fn", "assets", mapping.get(name, name))
    if not FileSystems.exists(path):
        raise common.PipelineInputError(f"{data}: the {name} vocabulary ({path}) is missing; rerun beam_pipelines.movielens")
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return [line.decode("utf-8") for line in handle.read().splitlines()]


def _ratings_output(data: str) -> dict[str, Any]:
    """The ratings output's ``dataset.json``, checked to be one this pipeline can read.

    Raises:
      common.PipelineInputError: not a finished ratings output.
    """
    path = common.join_path(data, "dataset.json")
    if not FileSystems.exists(path):
        raise common.PipelineInputError(f"{path} is missing: run python -m beam_pipelines.movielens --output {data} first")
    summary = common.read_json(path)
    if summary.get("schema") != "ratings" or "splits" not in summary:
        raise common.PipelineInputError(f"{data} is not a ratings output of beam_pipelines.movielens "
                                        f"(schema {summary.get('schema')!r}); rerun it")
    return summary


def _clear_graph_outputs(data: str, summary: dict[str, Any]) -> None:
    """Removes an earlier graph (the dataset.json section first, then its files) so none survives half-replaced.

    Not ``common.clear_outputs``: that removes the ratings output's own ``dataset.json``.
    """
    if G.SUMMARY_KEY in summary:
        common.commit_marker(data, {k: v for k, v in summary.items() if k != G.SUMMARY_KEY})
    stale = [m.path for pattern in (f"{G.GRAPH_DIR}/*", G.SCHEMA_FILE, f"{G.REJECTED_PREFIX}-*")
             for m in FileSystems.match([common.join_path(data, pattern)])[0].metadata_list]
    if stale:
        FileSystems.delete(stale)


def run(argv: Sequence[str] | None = None, save_main_session: bool = False) -> dict[str, Any]:
    """Builds the graph and returns the updated ``dataset.json`` payload.

    Raises:
      common.PipelineInputError: not a ratings output, unreadable feature files, or too many bad feature rows.
    """
    args, beam_args = parse_args(argv)
    if not 0.0 <= args.max_rejected_fraction <= 1.0:
        raise common.PipelineInputError("--max-rejected-fraction must be in [0, 1]")
    data = args.data.rstrip("/")
    summary = _ratings_output(data)
    user_ids, item_ids = _read_vocabulary(data, F.USER_VOCAB), _read_vocabulary(data, F.ITEM_VOCAB)
    if [len(user_ids), len(item_ids)] != [summary["vocabulary"]["user"], summary["vocabulary"]["item"]]:
        raise common.PipelineInputError(f"{data}: vocabularies do not match dataset.json; rerun beam_pipelines.movielens")
    shards = {split: [common.join_path(data, f) for f in summary["splits"][split]["files"]] for split in (TRAIN, VALID)}
    feature_files: dict[str, tuple[list[str], str]] = {}
    for node_set, pattern, fmt in ((G.NODE_USER, args.user_features, args.user_format),
                                   (G.NODE_ITEM, args.item_features, args.item_format)):
        if pattern:
            files = common.match_files(pattern, f"--{node_set}-features")
            feature_files[node_set] = (files, fmt if fmt != "auto" else detect_feature_format(
                files[0], node_set, (common.first_lines(files[0], 1) or [""])[0]))
    options = PipelineOptions(beam_args)
    options.view_as(SetupOptions).save_main_session = save_main_session
    dry_run = common.is_dataflow_dry_run(options)
    if not dry_run:
        _clear_graph_outputs(data, summary)
    started = time.time()
    pipeline = beam.Pipeline(options=options)
    edges = pipeline | "ReadRatingEdges" >> ReadRatingEdges(shards, len(user_ids), len(item_ids))
    side, rejected, columns = {}, [], {}
    for node_set, ids in ((G.NODE_USER, user_ids), (G.NODE_ITEM, item_ids)):
        label = node_set.title()
        if node_set in feature_files:
            files, fmt = feature_files[node_set]
            read = pipeline | f"{label}SideFeatures" >> ReadSideFeatures(node_set, files, fmt, ids)
            rejected.append(read["rejected"])
            columns[node_set] = read["columns"]
            side[node_set] = (read["rows"]
                              | f"{label}Matrix" >> beam.combiners.ToList()
                              | f"{label}Dense" >> beam.Map(lambda rows, names, n=len(ids): dense_side_features(
                                  rows, n, len(names)), names=beam.pvalue.AsSingleton(read["columns"])))
        else:
            side[node_set] = pipeline | f"No{label}Features" >> beam.Create([None])
    built = {"edges": edges, "side": side} | "BuildGraphs" >> BuildGraphs(user_ids, item_ids)
    _ = built["graphs"] | "WriteGraphs" >> beam.Map(_write_graph, data)
    _ = built["levels"] | "WriteLevels" >> beam.Map(_write_levels, data)
    for node_set, names in columns.items():
        _ = names | f"Write{node_set.title()}Columns" >> beam.Map(
            lambda c, n=node_set: common.write_json(common.join_path(data, G.GRAPH_DIR, f"{n}_columns.json"),
                                                    {"columns": c}))
    if rejected:
        _ = (tuple(rejected) | "FlattenRejected" >> beam.Flatten()
             | "EncodeRejected" >> beam.Map(common.encode_json_line)
             | "WriteRejected" >> common.WriteDeterministicShards(common.join_path(data, G.REJECTED_PREFIX), 1,
                                                                 kind="jsonl"))
    if dry_run:  # Beam's --dry_run: the job is built, nothing is submitted, DATA is neither cleared nor written
        return common.build_dataflow_job(pipeline, data)
    result = common.run_pipeline(pipeline, data)  # a damaged input met in a worker: one line, not a traceback
    counts = common.read_counters(result)
    graph = _graph_summary(args, data, summary, feature_files, counts, len(user_ids), len(item_ids))
    from google.protobuf import text_format

    common.write_text(common.join_path(data, G.SCHEMA_FILE), text_format.MessageToString(
        G.graph_schema(graph["levels"], {n: s["dim"] for n, s in graph["side_features"].items()})))
    if not graph["accounting"]["balanced"]:
        raise common.PipelineInputError(f"rows do not add up: {graph['accounting']}; the graph is incomplete, rerun")
    bad = graph["side_features_rejected_fraction"]
    if bad > args.max_rejected_fraction:
        sources = {path for files, _ in feature_files.values() for path in files}
        first = "; ".join(f"{os.path.basename(r['source'])}:{r['line']}: {r['reason']}" for r in common.first_rejections(
            data, keep=lambda r: r["source"] in sources and "not a node" not in r["reason"]))
        raise common.PipelineInputError(
            f"{bad:.2%} of the feature lines are malformed or duplicates (> --max-rejected-fraction "
            f"{args.max_rejected_fraction:.2%}); first: {first}; all in {common.join_path(data, 'rejected')}")
    graph["pipeline_seconds"] = round(time.time() - started, 2)
    summary = {**summary, G.SUMMARY_KEY: graph}
    common.commit_marker(data, summary)  # last: the commit marker
    return summary


def _graph_summary(args, data: str, summary: dict[str, Any], feature_files, c: dict[str, int],
                   num_users: int, num_items: int) -> dict[str, Any]:
    """The ``dataset.json`` ``graph`` section: what was built from what, and counts that add up."""
    g = lambda name: c.get(name, 0)  # noqa: E731
    levels = common.read_json(common.join_path(data, G.GRAPH_DIR, "levels.json"))["levels"]
    examples = {split: summary["splits"][split]["examples"] for split in (TRAIN, VALID)}
    checks = {
        "train": {"read": g("graph_train_examples"), "accounted": g("graph_train_edges") + g("graph_train_unknown_node"),
                  "expected": examples[TRAIN], "rule": "train examples = train graph edges (+ unknown nodes: never)"},
        "valid": {"read": g("graph_valid_examples"),
                  "accounted": (g("graph_train_valid_edges") - g("graph_train_edges") + g("graph_valid_unknown_node")
                                + g("graph_valid_unseen_level")),
                  "expected": examples[VALID],
                  "rule": "valid examples = train_valid edges - train edges + unknown user/item + rating level not in train"},
    }
    balanced = all(v["read"] == v["accounted"] == v["expected"] for v in checks.values()) and g("graph_train_unknown_node") == 0
    side_features: dict[str, Any] = {}
    bad = read = 0
    for node_set, (files, fmt) in feature_files.items():
        prefix = f"{node_set}_features"
        counts = {name: g(f"{prefix}_{name}") for name in
                  ("lines_read", "header_lines", "blank_lines", "rejected", "duplicates", "not_in_graph", "used")}
        accounted = sum(v for k, v in counts.items() if k != "lines_read")
        columns = common.read_json(common.join_path(data, G.GRAPH_DIR, f"{node_set}_columns.json"))["columns"]
        nodes = num_users if node_set == G.NODE_USER else num_items
        side_features[node_set] = {
            "sources": [{"path": p, "sha256": common.sha256_of(p)} for p in files], "format": fmt,
            "columns": columns, "dim": len(columns), "counts": counts,
            "nodes_with_features": counts["used"], "nodes_without_features": nodes - counts["used"],
            "accounting": {"rule": "lines_read = header + blank + rejected + duplicates + not_in_graph + used",
                           "balanced": accounted == counts["lines_read"]},
        }
        balanced = balanced and accounted == counts["lines_read"]
        bad += counts["rejected"] + counts["duplicates"]
        read += counts["lines_read"] - counts["header_lines"] - counts["blank_lines"]
    return {
        "schema": "rating_graph",
        "schema_file": G.SCHEMA_FILE,
        "files": dict(G.GRAPH_FILES),
        "levels": levels,
        "edge_sets": {name: {"source": source, "target": target, "level": level,
                             "edges": {graph_name: g(f"graph_{graph_name}_{G.rating_edge_set(level)}")
                                       for graph_name in G.GRAPH_FILES}}
                      for level in levels for name, (source, target) in G.edge_sets([level]).items()},
        "nodes": {G.NODE_USER: num_users, G.NODE_ITEM: num_items},
        "edges": {"train": g("graph_train_edges"), "train_valid": g("graph_train_valid_edges")},
        "built_from": {"train_examples": examples[TRAIN], "valid_examples": examples[VALID],
                       "valid_unknown_node": g("graph_valid_unknown_node"),
                       "valid_unseen_level": g("graph_valid_unseen_level")},
        "side_features": side_features,
        "side_features_rejected_fraction": bad / max(1, read),
        "accounting": {"checks": checks, "balanced": balanced},
    }


def _describe(summary: dict[str, Any]) -> str:
    graph = summary[G.SUMMARY_KEY]
    side = ", ".join(f"{n} side features {s['dim']} columns ({s['nodes_without_features']} nodes without)"
                     for n, s in graph["side_features"].items()) or "no side features"
    return (f"{graph['nodes']['user']} users, {graph['nodes']['item']} items, levels "
            f"{', '.join(f'{v:g}' for v in graph['levels'])}; {graph['edges']['train']} train edges, "
            f"{graph['edges']['train_valid']} train+valid edges (each also reversed); {side}; "
            f"{graph['pipeline_seconds']} s")


def main(argv: Sequence[str] | None = None) -> int:
    return common.pipeline_main("rating_graph", run, _describe, argv)


if __name__ == "__main__":
    from beam_pipelines import rating_graph as _module

    sys.exit(_module.main())
