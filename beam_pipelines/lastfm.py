"""LastFM Asia social graph -> one sampled GraphTensor per labelled user.

Owns the LastFM pipeline: parsing the edges CSV, the targets CSV and the optional
liked-artists JSON (dead-lettering every bad row with its reason), the split of
labelled users into train/valid/test (stratified by a stable hash of a seed, or
given by ``--split-file``), the TF-GNN ``GraphSchema`` written beside the data,
the friendship list of the whole graph (``graph/``: what Correct-and-Smooth and the
network plot of the trainer propagate over), and rooted-subgraph sampling as
Beam transforms (``SampleSubgraphs`` says why not TF-GNN's Beam sampler).

A split file (``{"train": [ids], "valid": [ids], "test": [ids]}``, the layout
users bring from PyG, DGL or a paper) is checked before the pipeline starts: an
id listed twice (in one list or two) or an id that is not a non-negative integer
is one error. An id of the file without a (valid) target row is a counted
rejection in ``rejected/``; a labelled user in no list stays a node of the graph
(a friend others see) but gets no example and no label hint, counted as
``unassigned_users``. ``dataset.json`` records the file's sha256.

Graph: node sets ``user`` and ``artist``; edge sets ``follows`` (user -> user,
both directions of every friendship), ``likes`` (user -> artist) and ``liked_by``
(artist -> user). Output examples carry ``context/label`` (the root's class) and
``context/root_id``; the root is node 0 of ``user``. With ``--label-hints`` the
user nodes carry ``label_hint``: the class of *train* users only, and
``num_classes`` ("unknown") for everyone else, always including the root itself.

``run(argv)`` is the only place that reads or writes, every file through Beam
``FileSystems`` (``beam_pipelines.common``), so ``--edges``, ``--targets``,
``--features``, ``--split-file`` and ``--output`` may all be gs:// paths.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from typing import Any, Iterable, Iterator, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions

from beam_pipelines import common

from schemas.lastfm import (  # noqa: F401  (the graph's names live in the schema module)
    EDGE_FOLLOWS, EDGE_LIKED_BY, EDGE_LIKES, EDGE_SETS, ID, LABEL, LABEL_HINT, NODE_ARTIST, NODE_USER, ROOT_ID,
    SCHEMA_FILE, graph_schema,
)

SPLITS = ("train", "valid", "test")
GRAPH_DIR = "graph"  # OUT/graph/follows-*.jsonl: every friendship once, ["a", "b"] with a < b
OUTPUT_NAMES = ("train", "valid", "test", "rejected", GRAPH_DIR, "dataset.json", SCHEMA_FILE)
DEFAULT_SPLIT = "0.8,0.1,0.1"
DEFAULT_FANOUTS = {EDGE_FOLLOWS: (32, 8), EDGE_LIKES: (16, 4), EDGE_LIKED_BY: (0, 8)}


# --------------------------------------------------------------------------- parsing (pure)
def _parse_id(text: str) -> str | None:
    """Canonical node id: a non-negative decimal integer without leading zeros."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()):  # '²'.isdigit() is True, and int('²') raises
        return None
    return str(int(text))


def parse_edge_line(path: str, line: int, text: str) -> tuple[str, Any]:
    """Classifies one edges-CSV line.

    Returns:
      ``("header"|"blank", None)``, ``("edge", (a, b, path, line))`` with ``a < b``
      as canonical ids (numerically), or ``("rejected", rejection record)``.
    """
    stripped = text.strip()
    if not stripped:
        return "blank", None
    fields = [f.strip() for f in stripped.split(",")]
    if line == 1 and not all(f.isdigit() for f in fields):
        return "header", None
    if len(fields) != 2:
        return "rejected", common.rejection(path, line, f"edge: expected 2 fields, got {len(fields)}", text)
    a, b = _parse_id(fields[0]), _parse_id(fields[1])
    if a is None or b is None:
        return "rejected", common.rejection(path, line, "edge: node id is not a non-negative integer", text)
    if a == b:
        return "rejected", common.rejection(path, line, "edge: self edge", text)
    a, b = sorted((a, b), key=int)
    return "edge", (a, b, path, line)


def parse_target_line(path: str, line: int, text: str, num_classes: int) -> tuple[str, Any]:
    """Classifies one targets-CSV line: ``("target", (user, label, path, line))`` or as above."""
    stripped = text.strip()
    if not stripped:
        return "blank", None
    fields = [f.strip() for f in stripped.split(",")]
    if line == 1 and not all(f.lstrip("-").isdigit() for f in fields):
        return "header", None
    if len(fields) != 2:
        return "rejected", common.rejection(path, line, f"target: expected 2 fields, got {len(fields)}", text)
    user = _parse_id(fields[0])
    if user is None:
        return "rejected", common.rejection(path, line, "target: user id is not a non-negative integer", text)
    if not re.fullmatch(r"-?[0-9]+", fields[1]):  # int() also reads '1_0' and non-ASCII digits
        return "rejected", common.rejection(path, line, "target: label is not an integer", text)
    label = int(fields[1])
    if not 0 <= label < num_classes:
        return "rejected", common.rejection(path, line, f"target: label outside [0, {num_classes})", text)
    return "target", (user, label, path, line)


def parse_features_entries(path: str, content: str) -> Iterator[tuple[str, Any]]:
    """Splits the liked-artists JSON into per-user entries.

    Accepts the LastFM layout (one object ``{"user_id": [artist ids], ...}``) and
    JSON lines (one such object per line). A malformed line of JSON lines is
    rejected on its own; the entry number stands in for the line of a one-object file.

    Yields:
      ``("likes", (user, [artist ids], path, entry))`` or ``("rejected", record)``,
      and ``("blank", None)`` for empty lines of JSON lines.
    """
    try:
        # Objects as lists of pairs: a user id given twice is two entries (the later one
        # a counted duplicate), not one that json.loads silently keeps the last of.
        whole = json.loads(content, object_pairs_hook=_Pairs)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, _Pairs):
        for number, (key, value) in enumerate(whole, start=1):
            yield _classify_features_entry(path, number, key, value, json.dumps({key: value}))
        return
    for number, text in enumerate(content.splitlines(), start=1):
        if not text.strip():
            yield "blank", None
            continue
        try:
            obj = json.loads(text, object_pairs_hook=_Pairs)
        except (json.JSONDecodeError, RecursionError) as error:
            yield "rejected", common.rejection(path, number, f"features: malformed JSON ({getattr(error, 'msg', error)})", text)
            continue
        if not isinstance(obj, _Pairs) or len(obj) != 1:
            yield "rejected", common.rejection(path, number, "features: expected one {user_id: [artists]} object", text)
            continue
        (key, value), = obj
        yield _classify_features_entry(path, number, key, value, text)


class _Pairs(list):
    """A JSON object as its (key, value) pairs in file order (``object_pairs_hook``)."""


def _classify_features_entry(path: str, number: int, key: Any, value: Any, text: str) -> tuple[str, Any]:
    user = _parse_id(str(key))
    if user is None:
        return "rejected", common.rejection(path, number, "features: user id is not a non-negative integer", text)
    if type(value) is not list or not all(  # noqa: E721  (an object, now a _Pairs list, is no artist list)
        (isinstance(v, int) and not isinstance(v, bool) and v >= 0) or (isinstance(v, str) and _parse_id(v))
        for v in value
    ):
        return "rejected", common.rejection(path, number, "features: artists must be a list of non-negative integer ids", text)
    artists = sorted({str(int(v)) for v in value}, key=int)
    return "likes", (user, artists, path, number)


def stratified_split(users_by_label: dict[int, list[str]], fractions: Sequence[float], seed: int) -> dict[str, str]:
    """Assigns every labelled user to train/valid/test, stratified by class.

    Within each class users are ordered by a stable hash of (seed, user); the
    first ``round(n * f_train)`` go to train, the next up to
    ``round(n * (f_train + f_valid))`` to valid, the rest to test. The same seed
    gives the same split in every process and runner.

    Args:
      users_by_label: class -> user ids of that class.
      fractions: (train, valid, test), summing to 1.
      seed: split seed.

    Returns:
      user id -> split name.
    """
    assignment: dict[str, str] = {}
    for label in sorted(users_by_label):
        ordered = sorted(users_by_label[label], key=lambda u: (common.stable_hash64("split", seed, u), u))
        n = len(ordered)
        n_train = int(round(n * fractions[0]))
        n_train_valid = int(round(n * (fractions[0] + fractions[1])))
        for i, user in enumerate(ordered):
            assignment[user] = "train" if i < n_train else "valid" if i < n_train_valid else "test"
    return assignment


def parse_split_file(path: str, text: str) -> dict[str, list[str]]:
    """Reads a split file: ``{"train": [ids], "valid": [ids], "test": [ids]}``.

    Ids may be JSON integers or strings of digits (``7`` and ``"07"`` are the same
    user). Every list must be present (``[]`` is allowed for valid and test).

    Returns:
      split name -> canonical user ids, in the file's order.

    Raises:
      common.PipelineInputError: not JSON, other keys, a list missing or not a list,
        an id that is not a non-negative integer, an id listed twice (in one list
        or in two: the file cannot say which split it belongs to), or no train id.
    """
    def fail(reason: str) -> common.PipelineInputError:
        return common.PipelineInputError(
            f"--split-file {path}: {reason}; expected {{\"train\": [ids], \"valid\": [ids], \"test\": [ids]}}")

    try:
        payload = json.loads(text)
    except json.JSONDecodeError as error:
        raise fail(f"not JSON ({error.msg} at line {error.lineno} column {error.colno})") from None
    if not isinstance(payload, dict) or set(payload) != set(SPLITS):
        keys = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise fail(f"has {keys}, not exactly the keys {list(SPLITS)}")
    lists: dict[str, list[str]] = {}
    first_seen: dict[str, tuple[str, int]] = {}
    for split in SPLITS:
        if not isinstance(payload[split], list):
            raise fail(f"{split!r} is not a list")
        lists[split] = []
        for position, value in enumerate(payload[split], start=1):
            is_int = isinstance(value, int) and not isinstance(value, bool)
            user = _parse_id(str(value)) if is_int or isinstance(value, str) else None
            if user is None:
                raise fail(f"{split}[{position - 1}] = {json.dumps(value)} is not a non-negative integer id")
            if user in first_seen:
                where = first_seen[user]
                raise fail(f"user {user} is listed twice: {where[0]}[{where[1] - 1}] and {split}[{position - 1}]")
            first_seen[user] = (split, position)
            lists[split].append(user)
    if not lists["train"]:
        raise fail("the train list is empty")
    return lists


def parse_fanouts(specs: Sequence[str], hops: int) -> dict[str, tuple[int, ...]]:
    """``["follows=32,8", "likes=16"]`` -> per-edge-set fan-out for each hop (missing hops: 0)."""
    fanouts = {name: tuple(DEFAULT_FANOUTS[name][:hops]) + (0,) * max(0, hops - len(DEFAULT_FANOUTS[name]))
               for name in EDGE_SETS}
    for spec in specs:
        name, _, values = spec.partition("=")
        if name not in EDGE_SETS:
            raise common.PipelineInputError(f"--fanout {spec!r}: unknown edge set; valid: {', '.join(EDGE_SETS)}")
        try:
            sizes = tuple(int(v) for v in values.split(",") if v.strip())
        except ValueError:
            raise common.PipelineInputError(f"--fanout {spec!r}: expected NAME=N1,N2,...") from None
        if len(sizes) > hops or any(s < 0 for s in sizes):
            raise common.PipelineInputError(f"--fanout {spec!r}: at most {hops} non-negative sizes (--hops {hops})")
        fanouts[name] = sizes + (0,) * (hops - len(sizes))
    return fanouts


# --------------------------------------------------------------------------- transforms
class ReadGraph(beam.PTransform):
    """Reads and validates edges, targets and (optionally) liked artists.

    Outputs a dict of PCollections: ``users`` ((user, label)), ``friendships``
    ((a, b) canonical, deduplicated, both ends labelled users), ``likes``
    ((user, artist)), ``rejected`` (dead-letter records).
    """

    def __init__(self, edges: Sequence[str], targets: Sequence[str], features: Sequence[str], num_classes: int):
        super().__init__()
        self._edges, self._targets, self._features = edges, targets, features
        self._num_classes = num_classes

    def expand(self, pbegin):
        num_classes = self._num_classes
        rejected = []

        # Targets: duplicates of a user id keep the first (path, line), reject the rest.
        target_lines = (
            pbegin
            | "ReadTargets" >> common.ReadPositionedLines(self._targets)
            | "CountTargetLines" >> beam.Map(_counted, "target_lines_read")
            | "ParseTargets" >> beam.Map(lambda row: parse_target_line(*row, num_classes))
            | "RouteTargets" >> beam.ParDo(_Route("target")).with_outputs("rejected", main="rows")
        )
        rejected.append(target_lines.rejected)
        users = (
            target_lines.rows
            | "KeyTargets" >> beam.Map(lambda t: (t[0], t))
            | "GroupTargets" >> beam.GroupByKey()
            | "FirstTarget" >> beam.ParDo(_KeepFirst("duplicate_target", "target_duplicates")).with_outputs("rejected", main="kept")
        )
        rejected.append(users.rejected)
        labelled = users.kept | "UserLabel" >> beam.Map(lambda t: (t[0], t[1]))
        known = beam.pvalue.AsDict(labelled)

        # Edges: self edges and malformed rows rejected while parsing; then dangling
        # endpoints (no target row) and duplicates (either direction) here.
        edge_lines = (
            pbegin
            | "ReadEdges" >> common.ReadPositionedLines(self._edges)
            | "CountEdgeLines" >> beam.Map(_counted, "edge_lines_read")
            | "ParseEdges" >> beam.MapTuple(parse_edge_line)
            | "RouteEdges" >> beam.ParDo(_Route("edge")).with_outputs("rejected", main="rows")
        )
        rejected.append(edge_lines.rejected)
        attached = edge_lines.rows | "CheckEndpoints" >> beam.ParDo(_CheckEndpoints(), known).with_outputs(
            "rejected", main="kept"
        )
        rejected.append(attached.rejected)
        edges = (
            attached.kept
            | "KeyEdges" >> beam.Map(lambda e: ((e[0], e[1]), e))
            | "GroupEdges" >> beam.GroupByKey()
            | "FirstEdge" >> beam.ParDo(_KeepFirst("duplicate_edge", "edge_duplicates")).with_outputs("rejected", main="kept")
        )
        rejected.append(edges.rejected)
        friendships = edges.kept | "EdgePair" >> beam.Map(lambda e: (e[0], e[1]))

        if self._features:
            entries = (
                pbegin
                | "ListFeatures" >> beam.Create(sorted(self._features))
                | "ParseFeatures" >> beam.FlatMap(_read_features_file)
                | "RouteFeatures" >> beam.ParDo(_Route("features")).with_outputs("rejected", main="rows")
            )
            rejected.append(entries.rejected)
            checked = entries.rows | "CheckLikers" >> beam.ParDo(_CheckLiker(), known).with_outputs("rejected", main="kept")
            rejected.append(checked.rejected)
            likes = (
                checked.kept
                | "KeyLikers" >> beam.Map(lambda e: (e[0], e))
                | "GroupLikers" >> beam.GroupByKey()
                | "FirstLikes" >> beam.ParDo(_KeepFirst("duplicate_features_user", "features_duplicates")).with_outputs(
                    "rejected", main="kept"
                )
            )
            rejected.append(likes.rejected)
            user_artist = likes.kept | "CountLikers" >> beam.Map(_counted, "likes_users") | "LikePairs" >> beam.FlatMap(lambda e: [(e[0], a) for a in e[1]])
        else:
            user_artist = pbegin | "NoLikes" >> beam.Create([])
        return {
            "users": labelled,
            "friendships": friendships,
            "likes": user_artist | "CountLikes" >> beam.Map(_counted, "likes_edges"),
            "rejected": tuple(rejected) | "FlattenRejected" >> beam.Flatten(),
        }


def _counted(element, name: str):
    common.counter(name).inc()
    return element


def _read_features_file(path: str) -> Iterator[tuple[str, Any]]:
    # Strict UTF-8 and a checked decompression (common.read_text_file): a damaged
    # or mis-encoded file fails as one line instead of losing or changing entries.
    for kind, payload in parse_features_entries(path, common.read_text_file(path)):
        common.counter("features_entries_read").inc()
        yield kind, payload


class _Route(beam.DoFn):
    """Routes parsed rows: rows to main, rejections to ``rejected``, header/blank counted."""

    def __init__(self, kind: str):
        super().__init__()
        self._kind = kind

    def process(self, parsed):
        tag, payload = parsed
        if tag in ("header", "blank"):
            common.counter(f"{self._kind}_{tag}_lines").inc()
        elif tag == "rejected":
            common.counter(f"{self._kind}_rejected").inc()
            yield beam.pvalue.TaggedOutput("rejected", payload)
        else:
            yield payload


class _KeepFirst(beam.DoFn):
    """Of rows grouped by key, keeps the one earliest in (path, line); rejects the rest."""

    def __init__(self, reason: str, counter_name: str):
        super().__init__()
        self._reason, self._counter = reason, counter_name

    def process(self, keyed):
        _, rows = keyed
        rows = sorted(rows, key=lambda r: (r[-2], r[-1]))
        yield rows[0]
        for row in rows[1:]:
            common.counter(self._counter).inc()
            yield beam.pvalue.TaggedOutput(
                "rejected", common.rejection(row[-2], row[-1], self._reason, json.dumps(list(row[:-2])))
            )


class _CheckEndpoints(beam.DoFn):
    def process(self, edge, known):
        a, b, path, line = edge
        if a not in known or b not in known:
            common.counter("edge_dangling").inc()
            yield beam.pvalue.TaggedOutput(
                "rejected", common.rejection(path, line, "edge: dangling endpoint (no target row)", f"{a},{b}")
            )
        else:
            yield edge


class _CheckLiker(beam.DoFn):
    def process(self, entry, known):
        user, artists, path, number = entry
        if user not in known:
            common.counter("features_unlabelled").inc()
            yield beam.pvalue.TaggedOutput(
                "rejected", common.rejection(path, number, "features: unlabelled user (no target row)", json.dumps({user: artists}))
            )
        else:
            yield entry


class AssignSplits(beam.PTransform):
    """(user, label) -> (user, (split, label)), stratified by label (see ``stratified_split``)."""

    def __init__(self, fractions: Sequence[float], seed: int):
        super().__init__()
        self._fractions, self._seed = tuple(fractions), seed

    def expand(self, users):
        fractions, seed = self._fractions, self._seed

        def split_class(label, members):
            members = sorted(members)
            for user, split in sorted(stratified_split({label: members}, fractions, seed).items()):
                common.counter(f"{split}_users").inc()
                yield user, (split, label)

        return (
            users
            | "KeyByLabel" >> beam.Map(lambda ul: (ul[1], ul[0]))
            | "GroupByLabel" >> beam.GroupByKey()
            | "SplitEachClass" >> beam.FlatMapTuple(split_class)
        )


class AssignGivenSplits(beam.PTransform):
    """(user, label) -> (user, (split, label)) from a split file (``parse_split_file``).

    Outputs a dict: ``splits`` (the labelled users the file lists), ``rejected``
    (ids of the file that are not labelled users: no target row, or a rejected
    one; ``line`` is the id's 1-based position in its list). Labelled users the
    file does not list are counted (``unassigned_users``) and get no example.
    """

    def __init__(self, path: str, lists: dict[str, list[str]]):
        super().__init__()
        self._path, self._lists = path, lists

    def expand(self, users):
        assignment = {user: split for split, ids in self._lists.items() for user in ids}

        def assign(user_label):
            user, label = user_label
            split = assignment.get(user)
            if split is None:
                common.counter("unassigned_users").inc()
                return
            common.counter(f"{split}_users").inc()
            yield user, (split, label)

        path = self._path
        entries = [(split, position, user) for split in SPLITS
                   for position, user in enumerate(self._lists[split], start=1)]

        def check_listed(entry, known):
            split, position, user = entry
            if user not in known:
                common.counter("split_file_unknown_ids").inc()
                yield common.rejection(path, position, f"split file: {split} id has no target row (not a labelled user)",
                                       json.dumps({split: user}))

        return {
            "splits": users | "AssignListed" >> beam.FlatMap(assign),
            "rejected": (users.pipeline
                         | "ListSplitFileIds" >> beam.Create(entries)
                         | "CheckListed" >> beam.FlatMap(check_listed, beam.pvalue.AsDict(users))),
        }


def sample_subgraph(
    root: str,
    adjacency: dict[str, dict[str, Sequence[str]]],
    fanouts: dict[str, tuple[int, ...]],
    seed: int,
) -> dict[str, Any]:
    """Samples the rooted subgraph of one user: a tree of sampled edges, nodes deduplicated.

    At hop ``h`` every node reached at hop ``h - 1`` (the root at hop 1) samples up
    to ``fanouts[edge_set][h - 1]`` of its out-edges in each edge set, uniformly
    without replacement, with a generator seeded by a stable hash of (seed, root):
    the same input gives the same subgraph on every run and runner. A node reached
    twice is stored once; edges point from the sampling node to the sampled one.

    Args:
      root: the seed user id.
      adjacency: edge set -> source id -> sorted target ids.
      fanouts: edge set -> fan-out per hop.
      seed: sampling seed.

    Returns:
      ``{"nodes": {node set: [ids]}, "edges": {edge set: [(source index, target index)]}}``;
      the root is ``nodes["user"][0]``.
    """
    import random

    rng = random.Random(common.stable_hash64("sample", seed, root))
    nodes: dict[str, list[str]] = {NODE_USER: [root], NODE_ARTIST: []}
    index: dict[str, dict[str, int]] = {NODE_USER: {root: 0}, NODE_ARTIST: {}}
    edges: dict[str, list[tuple[int, int]]] = {name: [] for name in EDGE_SETS}
    frontier: dict[str, list[str]] = {NODE_USER: [root]}
    hops = len(next(iter(fanouts.values())))
    for hop in range(hops):
        reached: dict[str, list[str]] = {}
        for name in sorted(EDGE_SETS):
            source_set, target_set = EDGE_SETS[name]
            size = fanouts[name][hop]
            if size <= 0:
                continue
            seen_edges = set(edges[name])
            for node in frontier.get(source_set, []):
                neighbors = adjacency[name].get(node, ())
                picked = neighbors if len(neighbors) <= size else rng.sample(list(neighbors), size)
                for other in picked:
                    if other not in index[target_set]:
                        index[target_set][other] = len(nodes[target_set])
                        nodes[target_set].append(other)
                        reached.setdefault(target_set, []).append(other)
                    edge = (index[source_set][node], index[target_set][other])
                    if edge not in seen_edges:
                        seen_edges.add(edge)
                        edges[name].append(edge)
        frontier = reached
    return {"nodes": nodes, "edges": edges}


def subgraph_example(
    root: str,
    label: int,
    subgraph: dict[str, Any],
    train_labels: dict[str, int] | None,
    num_classes: int,
):
    """Serializes a sampled subgraph as a GraphTensor ``tf.train.Example`` (see ``graph_schema``).

    ``label_hint`` (when ``train_labels`` is given) is the class of train users and
    ``num_classes`` for all others; the root's own entry is always ``num_classes``,
    so a node's own label never reaches its own input.
    """
    import tensorflow as tf

    example = tf.train.Example()
    f = example.features.feature
    f[f"context/{LABEL}"].int64_list.value.append(label)
    f[f"context/{ROOT_ID}"].bytes_list.value.append(root.encode())
    for node_set, ids in subgraph["nodes"].items():
        f[f"nodes/{node_set}.#size"].int64_list.value.append(len(ids))
        f[f"nodes/{node_set}.{ID}"].bytes_list.value.extend(i.encode() for i in ids)
    if train_labels is not None:
        f[f"nodes/{NODE_USER}.{LABEL_HINT}"].int64_list.value.extend(
            num_classes if u == root else train_labels.get(u, num_classes) for u in subgraph["nodes"][NODE_USER]
        )
    for name, pairs in subgraph["edges"].items():
        f[f"edges/{name}.#size"].int64_list.value.append(len(pairs))
        f[f"edges/{name}.#source"].int64_list.value.extend(p[0] for p in pairs)
        f[f"edges/{name}.#target"].int64_list.value.extend(p[1] for p in pairs)
    return example


class _SampleAndEncode(beam.DoFn):
    def __init__(self, fanouts, seed: int, label_hints: bool, num_classes: int):
        super().__init__()
        self._fanouts, self._seed = fanouts, seed
        self._label_hints, self._num_classes = label_hints, num_classes

    def process(self, element, follows, likes, liked_by, train_labels):
        user, (split, label) = element
        adjacency = {EDGE_FOLLOWS: follows, EDGE_LIKES: likes, EDGE_LIKED_BY: liked_by}
        subgraph = sample_subgraph(user, adjacency, self._fanouts, self._seed)
        example = subgraph_example(
            user, label, subgraph, train_labels if self._label_hints else None, self._num_classes
        )
        common.counter(f"{split}_examples").inc()
        yield split, example.SerializeToString(deterministic=True)  # map order fixed: same bytes, same shards


class SampleSubgraphs(beam.PTransform):
    """One rooted subgraph per labelled user -> (split, serialized GraphTensor tf.Example).

    Why not TF-GNN's Beam sampler (``tensorflow_gnn.experimental.sampler.beam``):
    wired into this pipeline with in-pipeline feeds it took 2 min 29 s on the real
    LastFM graph on this 2-core machine (its per-hop TF-model stages and joins on
    the DirectRunner), against a 3-minute budget for pipeline + training +
    evaluation, and its output carried no ``#id`` node feature that the id
    embeddings need. Here the per-edge-set adjacency lists are side inputs and each
    seed is sampled by a pure function (``sample_subgraph``), the same
    "rooted tree, nodes deduplicated" layout the TF-GNN sampler produces. The side
    inputs must fit in a worker's memory: true for LastFM-sized graphs (and a few
    million edges); beyond that, switch to a hop-by-hop join.

    Input: the dict from ``ReadGraph`` plus ``splits`` ((user, (split, label))).
    """

    def __init__(self, fanouts, seed: int, label_hints: bool, num_classes: int):
        super().__init__()
        self._fanouts, self._seed = fanouts, seed
        self._label_hints, self._num_classes = label_hints, num_classes

    def expand(self, graph):
        def adjacency(pairs, label):
            return beam.pvalue.AsDict(
                pairs
                | f"Group{label}" >> beam.GroupByKey()
                | f"Sort{label}" >> beam.MapTuple(lambda node, others: (node, tuple(sorted(set(others), key=int))))
            )

        follows = adjacency(
            graph["friendships"] | "BothDirections" >> beam.FlatMapTuple(lambda a, b: [(a, b), (b, a)]), "Follows"
        )
        likes = adjacency(graph["likes"], "Likes")
        liked_by = adjacency(graph["likes"] | "Reverse" >> beam.MapTuple(lambda u, a: (a, u)), "LikedBy")
        train_labels = beam.pvalue.AsDict(
            graph["splits"]
            | "TrainOnly" >> beam.Filter(lambda us: us[1][0] == "train")
            | "TrainLabel" >> beam.MapTuple(lambda u, sl: (u, sl[1]))
        )
        return graph["splits"] | "Sample" >> beam.ParDo(
            _SampleAndEncode(self._fanouts, self._seed, self._label_hints, self._num_classes),
            follows, likes, liked_by, train_labels,
        )


# --------------------------------------------------------------------------- run
def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m beam_pipelines.lastfm",
        allow_abbrev=False,
        description="LastFM Asia graph -> sampled GraphTensor tf.Examples (train/valid/test), rejected/, dataset.json",
    )
    parser.add_argument("--edges", required=True, help="edges CSV (node_1,node_2) file or glob")
    parser.add_argument("--targets", required=True, help="targets CSV (id,target) file or glob")
    parser.add_argument("--features", help="liked-artists JSON {user_id: [artist ids]} (optional)")
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--split", default=None, help=f"train,valid,test fractions (default {DEFAULT_SPLIT})")
    parser.add_argument("--split-file", help='JSON {"train": [ids], "valid": [ids], "test": [ids]} instead of '
                        "--split: the split of PyG, DGL or a paper (local or gs://)")
    parser.add_argument("--seed", type=int, default=0, help="split (without --split-file) and sampling seed")
    parser.add_argument("--num-classes", type=int, default=18)
    parser.add_argument("--hops", type=int, default=2)
    parser.add_argument("--fanout", action="append", default=[], help="EDGE_SET=N1,N2 per hop (repeatable)")
    parser.add_argument("--label-hints", default="true", choices=("true", "false"),
                        help="give user nodes the class of train users (never the root's own)")
    parser.add_argument("--num-shards", type=int, default=4)
    parser.add_argument("--max-rejected-fraction", type=float, default=0.05)
    return common.parse_pipeline_args(parser, argv)


def _validate(args: argparse.Namespace) -> tuple[float, float, float]:
    if args.split_file and args.split is not None:
        raise common.PipelineInputError("--split and --split-file exclude each other: the file says where every user goes")
    args.split = DEFAULT_SPLIT if args.split is None else args.split
    try:
        fractions = tuple(float(f) for f in args.split.split(","))
    except ValueError:
        raise common.PipelineInputError(f"--split must be TRAIN,VALID,TEST fractions, got {args.split!r}") from None
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6 or fractions[0] == 0:
        raise common.PipelineInputError(f"--split fractions must be 3 non-negative numbers summing to 1, got {args.split!r}")
    if args.hops < 1:
        raise common.PipelineInputError("--hops must be >= 1")
    if args.num_shards < 1:
        raise common.PipelineInputError("--num-shards must be >= 1")
    if args.num_classes < 2:
        raise common.PipelineInputError("--num-classes must be >= 2")
    return fractions


def run(argv: Sequence[str] | None = None, save_main_session: bool = False) -> dict[str, Any]:
    """Runs the pipeline and returns the ``dataset.json`` payload.

    Raises:
      common.PipelineInputError: bad flags, unreadable input, or too many rejects.
    """
    args, beam_args = parse_args(argv)
    fractions = _validate(args)
    fanouts = parse_fanouts(args.fanout, args.hops)
    edges = common.check_text_files(common.match_files(args.edges, "--edges"), "--edges")
    targets = common.check_text_files(common.match_files(args.targets, "--targets"), "--targets")
    features = (common.check_text_files(common.match_files(args.features, "--features"), "--features")
                if args.features else [])
    split_file = _read_split_file(args.split_file) if args.split_file else None
    # The TF-GNN sampler resolves relative artifact paths against its own cwd.
    output = args.output if "://" in args.output else os.path.abspath(args.output)
    label_hints = args.label_hints == "true"
    schema = graph_schema(args.num_classes, label_hints)

    options = PipelineOptions(beam_args)
    options.view_as(SetupOptions).save_main_session = save_main_session
    dry_run = common.is_dataflow_dry_run(options)
    if not dry_run:
        common.prepare_output(output, OUTPUT_NAMES)
    started = time.time()
    pipeline = beam.Pipeline(options=options)
    graph = pipeline | "ReadGraph" >> ReadGraph(edges, targets, features, args.num_classes)
    rejected = graph["rejected"]
    if split_file is None:
        graph["splits"] = graph["users"] | "AssignSplits" >> AssignSplits(fractions, args.seed)
    else:
        given = graph["users"] | "AssignGivenSplits" >> AssignGivenSplits(split_file["path"], split_file["lists"])
        graph["splits"] = given["splits"]
        rejected = (rejected, given["rejected"]) | "WithSplitFileRejects" >> beam.Flatten()
    _ = (
        graph["friendships"]
        | "CountFriendships" >> beam.Map(_counted, "follows_pairs")
        | "EncodeFollows" >> beam.MapTuple(lambda a, b: json.dumps([a, b]).encode("utf-8"))
        | "WriteFollows" >> common.WriteDeterministicShards(common.join_path(output, GRAPH_DIR, EDGE_FOLLOWS), 1,
                                                           kind="jsonl")
    )
    examples = graph | "SampleSubgraphs" >> SampleSubgraphs(fanouts, args.seed, label_hints, args.num_classes)
    for split in SPLITS:
        _ = (
            examples
            | f"Select{split.title()}" >> beam.Filter(lambda se, s=split: se[0] == s)
            | f"Drop{split.title()}Key" >> beam.Values()
            | f"Write{split.title()}"
            >> common.WriteDeterministicShards(common.join_path(output, split, "part"), args.num_shards)
        )
    _ = (
        rejected
        | "EncodeRejected" >> beam.Map(common.encode_json_line)
        | "WriteRejected" >> common.WriteDeterministicShards(common.join_path(output, "rejected", "part"), 1, kind="jsonl")
    )
    if dry_run:
        return common.build_dataflow_job(pipeline, output)
    result = common.run_pipeline(pipeline, output)
    counts = common.read_counters(result)
    from google.protobuf import text_format

    common.write_text(common.join_path(output, SCHEMA_FILE), text_format.MessageToString(schema))
    summary = summarize(args, fractions, fanouts, edges, targets, features, counts, label_hints, time.time() - started,
                        split_file=split_file)
    if not summary["accounting"]["balanced"]:
        raise common.PipelineInputError(f"rows do not add up: {json.dumps(summary['accounting'])}")
    if split_file is not None and summary["counts"]["users"]["train"] == 0:
        first = common.first_rejections(output, limit=3, keep=lambda r: r["source"] == split_file["path"])
        raise common.PipelineInputError(
            f"--split-file {split_file['path']}: none of its train ids is a labelled user of --targets "
            f"(first: {', '.join(r['text'] for r in first)}); is it the split of this graph?")
    _require_usable_rows(args, summary, output)  # before the reject share: it names the input that is empty
    if summary["rejected_fraction"] > args.max_rejected_fraction:
        examples_text = "; ".join(
            f"{os.path.basename(r['source'])}:{r['line']}: {r['reason']}" for r in common.first_rejections(output)
        )
        raise common.PipelineInputError(
            f"{summary['rejected_fraction']:.1%} of rows rejected (> --max-rejected-fraction "
            f"{args.max_rejected_fraction}); first: {examples_text}; all in {common.join_path(output, 'rejected')}"
        )
    common.commit_marker(output, summary)
    return summary


def _read_split_file(pattern: str) -> dict[str, Any]:
    """``{"path", "sha256", "lists"}`` of the one file ``--split-file`` names (see ``parse_split_file``)."""
    paths = common.match_files(pattern, "--split-file")
    if len(paths) != 1:
        raise common.PipelineInputError(f"--split-file {pattern!r} matches {len(paths)} files; give one file")
    path = paths[0]
    return {"path": path, "sha256": common.sha256_of(path), "lists": parse_split_file(path, common.read_text_file(path))}


def _require_usable_rows(args: argparse.Namespace, summary: dict[str, Any], output: str) -> None:
    """Targets, edges and (when given) features each gave at least one usable row."""
    detail = summary["counts"]["detail"]
    g = lambda name: detail.get(name, 0)  # noqa: E731
    files = {s["side"]: [] for s in summary["sources"]}
    for source in summary["sources"]:
        files[source["side"]].append(source["path"])
    sides = [("--targets", args.targets, sum(summary["counts"]["users"].values()), "target"),
             ("--edges", args.edges, summary["counts"]["follows_pairs"], "edge")]
    if args.features:
        sides.append(("--features", args.features, summary["counts"]["users_with_likes"], "features"))
    for flag, source, used, kind in sides:
        read = "entries_read" if kind == "features" else "lines_read"
        common.require_usable(flag=flag, source=source, used=used, output=output, files=files[flag[2:]], breakdown={
            "lines read" if read == "lines_read" else "entries read": g(f"{kind}_{read}"),
            "header lines": g(f"{kind}_header_lines"), "blank lines": g(f"{kind}_blank_lines"),
            "rejected": g(f"{kind}_rejected"), "duplicates": g(f"{kind}_duplicates"),
            "dangling": g(f"{kind}_dangling"), "unlabelled": g(f"{kind}_unlabelled")})


def summarize(args, fractions, fanouts, edges, targets, features, c: dict[str, int], label_hints: bool, seconds: float,
              *, split_file: dict[str, Any] | None = None):
    """Builds ``dataset.json``; ``accounting`` proves every input row ended in one place."""
    g = lambda name: c.get(name, 0)  # noqa: E731
    users = {s: g(f"{s}_users") for s in SPLITS}
    examples = {s: g(f"{s}_examples") for s in SPLITS}
    target_rows = (g("target_header_lines") + g("target_blank_lines") + g("target_rejected") + g("target_duplicates")
                   + sum(users.values()) + g("unassigned_users"))
    split_ids = sum(len(ids) for ids in split_file["lists"].values()) if split_file else 0
    edge_rows = (
        g("edge_header_lines") + g("edge_blank_lines") + g("edge_rejected") + g("edge_dangling")
        + g("edge_duplicates") + g("follows_pairs")
    )
    feature_rows = (
        g("features_blank_lines") + g("features_rejected") + g("features_unlabelled") + g("features_duplicates")
        + g("likes_users")
    )
    rejected = sum(g(n) for n in ("target_rejected", "target_duplicates", "edge_rejected", "edge_dangling",
                                  "edge_duplicates", "features_rejected", "features_unlabelled", "features_duplicates",
                                  "split_file_unknown_ids"))
    read = g("target_lines_read") + g("edge_lines_read") + g("features_entries_read") + split_ids
    checks = {
        "targets": {"read": g("target_lines_read"), "accounted": target_rows,
                    "rule": "header + blank + rejected + duplicates + train/valid/test users + unassigned users "
                            "(labelled, in no list of --split-file)"},
        "edges": {"read": g("edge_lines_read"), "accounted": edge_rows,
                  "rule": "header + blank + rejected(malformed, self) + dangling + duplicates + friendships"},
        "features": {"read": g("features_entries_read"), "accounted": feature_rows,
                     "rule": "blank + rejected + unlabelled + duplicates + users with likes"},
        "examples": {"read": sum(users.values()), "accounted": sum(examples.values()),
                     "rule": "one sampled subgraph per labelled user"},
    }
    if split_file:
        checks["split_file"] = {"read": split_ids, "accounted": sum(users.values()) + g("split_file_unknown_ids"),
                                "rule": "ids listed = train/valid/test users + ids without a target row (rejected)"}
        split = {"protocol": "file", "path": split_file["path"], "sha256": split_file["sha256"],
                 "listed": {s: len(ids) for s, ids in split_file["lists"].items()},
                 "unknown_ids": g("split_file_unknown_ids"), "unassigned_users": g("unassigned_users")}
    else:
        split = {"protocol": "stratified", "fractions": list(fractions), "seed": args.seed}
    return {
        "dataset": "lastfm",
        "schema": "lastfm",
        "splits": {name: common.split_summary(args.output, name, args.num_shards, examples[name]) for name in SPLITS},
        "sources": [
            {"path": p, "side": side, "sha256": common.sha256_of(p)}
            for side, paths in (("edges", edges), ("targets", targets), ("features", features))
            for p in paths
        ],
        "split": split,
        "graph": {EDGE_FOLLOWS: {"pairs": g("follows_pairs"),
                                 "files": [common.shard_path(f"{GRAPH_DIR}/{EDGE_FOLLOWS}", 0, 1, ".jsonl")]}},
        "sampling": {"sampler": "beam_pipelines.lastfm.sample_subgraph", "seed_node_set": NODE_USER,
                     "hops": args.hops, "fanouts": {k: list(v) for k, v in fanouts.items()},
                     "strategy": "RANDOM_UNIFORM"},
        "num_classes": args.num_classes,
        "label_hints": label_hints,
        "counts": {
            "users": users, "examples": examples,
            "follows_pairs": g("follows_pairs"), "follows_edges": 2 * g("follows_pairs"),
            "likes_edges": g("likes_edges"), "users_with_likes": g("likes_users"),
            "unassigned_users": g("unassigned_users"),
            "rejected_rows": rejected, "rows_read": read,
            "detail": {k: v for k, v in sorted(c.items())},
        },
        "accounting": {"checks": checks, "balanced": all(v["read"] == v["accounted"] for v in checks.values())},
        "num_shards": args.num_shards,
        "rejected_fraction": rejected / max(1, read - g("target_header_lines") - g("edge_header_lines")),
        "pipeline_seconds": round(seconds, 2),
    }


def _describe(summary: dict[str, Any]) -> str:
    c = summary["counts"]
    unassigned = f" ({c['unassigned_users']} labelled users in no list of the split file)" if c["unassigned_users"] else ""
    return (
        f"users train/valid/test {c['users']['train']}/{c['users']['valid']}/{c['users']['test']}{unassigned}, "
        f"{c['follows_pairs']} friendships, {c['likes_edges']} likes, {c['rejected_rows']} rejected; "
        f"{summary['pipeline_seconds']} s"
    )


def main(argv: Sequence[str] | None = None) -> int:
    return common.pipeline_main("lastfm", run, _describe, argv)


if __name__ == "__main__":
    from beam_pipelines import lastfm as _module

    sys.exit(_module.main())
