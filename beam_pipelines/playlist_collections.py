"""Raw playlist inputs -> validated rows -> playlists, vocabularies and every user's collection.

Owns the raw layouts read by ``beam_pipelines.playlists`` and their validation
(a row or entry that cannot be used becomes a dead-letter record with its
reason, never an exception inside Beam), duplicate detection, and grouping into
playlists and collections:

* Pichl "Spotify Playlists" CSV (``user_id, artistname, trackname, playlistname``;
  header names may carry stray spaces and quotes): each line is parsed with
  Python's csv module. A playlist is (owner, name), a track (artist, track name).
  An empty artist is allowed (counted); an empty user, track or playlist name is
  a rejection, as is a line that is not 4 CSV fields (so a quoted field holding
  a line break rejects both halves of its row).
* Million Playlist Dataset slices (JSON): no user ids, so playlist ``pid`` is
  owned by user ``mpd:<pid>`` and has no other member; tracks are their
  ``track_uri``. A malformed entry is rejected with its location: ``line`` is
  the playlist's position in the file (1-based), the reason names the pid and
  track index.
* Interactions CSV ``user_id, playlist_id[, timestamp]`` (header optional):
  follows of other users' playlists, ``playlist_id`` = ``<owner>/<name>``.

Duplicates (first input position wins, later rows go to ``rejected/`` as
duplicates): a repeated (playlist, track); a second MPD entry with an already
seen pid; a repeated follow, or a follow of one's own playlist.

Rows cross the two shuffles as pickled chunks per user bucket (``_ChunkedRows``):
at a few million rows the per-element cost of Beam's shuffle dominated the
DirectRunner run.
"""
from __future__ import annotations

import contextlib
import csv
import gc
import json
import operator
import pickle
import re
import zlib
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

from beam_pipelines import common
from schemas import playlists as S

PICHL_COLUMNS = ("user_id", "artistname", "trackname", "playlistname")
INTERACTION_COLUMNS = ("user_id", "playlist_id")
NUM_BUCKETS = 64  # user buckets of the row and membership shuffles
CHUNK_ROWS = 4096  # rows per pickled chunk
_BAD_USER_CHARACTER = re.compile(r"[\s/]")
_POSITION = operator.itemgetter(3, 4, 5)  # (file, line, sub) of a Row


class RowError(ValueError):
    """A malformed row or entry; the message is the reason written to ``rejected/``."""


class Row(NamedTuple):
    """One playlist-track row and where it came from.

    ``file`` indexes the playlist input paths; ``line`` is the CSV line, or the
    MPD playlist's position; ``sub`` is 0 for CSV rows, the MPD track index + 1.
    """

    owner: str
    name: str
    track: str
    file: int
    line: int
    sub: int


def bucket_of(user: str) -> int:
    """The shuffle bucket of a user (owner or follower); crc32 is stable across processes."""
    return zlib.crc32(user.encode("utf-8")) % NUM_BUCKETS


# --------------------------------------------------------------------------- parsing (pure)
def detect_format(path: str, first_line: str) -> str:
    """``mpd`` for ``.json`` files or a first line opening a JSON object, else ``pichl``."""
    name = path.lower()[:-3] if path.lower().endswith(".gz") else path.lower()
    return "mpd" if name.endswith(".json") or first_line.lstrip().startswith("{") else "pichl"


def _csv_fields(text: str) -> list[str]:
    if '"' not in text:  # no quoting: csv would split at every comma too (fields are stripped later)
        return text.split(",")
    try:
        # skipinitialspace: the original Pichl file writes `", "` between quoted fields.
        return next(csv.reader([text], skipinitialspace=True, strict=True), [])
    except csv.Error as error:
        raise RowError(f"malformed CSV ({error})") from None


def header_names(text: str) -> tuple[str, ...]:
    """Column names of a header line, stray spaces and quotes stripped, lower case."""
    try:
        fields = _csv_fields(text)
    except RowError:
        return ()
    return tuple(f.strip().strip('"').strip().lower() for f in fields)


def is_header(text: str) -> bool:
    """A line whose first column is named like a user id column (the Pichl and interactions headers)."""
    names = header_names(text)
    return bool(names) and names[0] in ("user_id", "userid", "user")


def _user_id(raw: str) -> str:
    user = raw.strip()
    if not user:
        raise RowError("empty user_id")
    if _BAD_USER_CHARACTER.search(user):
        raise RowError(f"user_id {user[:40]!r} contains '/' or white space")
    if user.startswith(S.MPD_OWNER_PREFIX):
        raise RowError(f"user_id {user[:40]!r} uses the prefix reserved for MPD owners")
    return user


def parse_pichl_line(text: str) -> tuple[str, str, str, bool]:
    """One Pichl CSV data line -> ``(owner, cleaned playlist name, track id, has artist)``.

    Raises:
      RowError: not 4 CSV fields, or an empty user, track name or playlist name.
    """
    fields = _csv_fields(text)
    if len(fields) != 4:
        raise RowError(f"expected 4 CSV fields (user_id, artistname, trackname, playlistname), found {len(fields)}")
    owner = _user_id(fields[0])
    artist, title, name = S.clean_text(fields[1]), S.clean_text(fields[2]), S.clean_text(fields[3])
    if not title:
        raise RowError("empty trackname")
    if not name:
        raise RowError("empty playlistname")
    return owner, name, f"{artist}{S.TRACK_KEY_SEPARATOR}{title}", bool(artist)


def parse_interaction_line(text: str) -> tuple[str, str, int | None]:
    """One interactions data line -> ``(user, playlist id, timestamp or None)``.

    Raises:
      RowError: not 2 or 3 fields, a bad user or playlist id, a timestamp that is not a non-negative integer.
    """
    fields = _csv_fields(text)
    if len(fields) not in (2, 3):
        raise RowError(f"expected 2 or 3 CSV fields (user_id, playlist_id[, timestamp]), found {len(fields)}")
    user = _user_id(fields[0])
    try:
        owner, name = S.split_playlist_id(fields[1].strip())
    except ValueError as error:
        raise RowError(str(error)) from None
    if not S.clean_text(name):
        raise RowError("empty playlist name in playlist_id")
    timestamp = None
    if len(fields) == 3 and fields[2].strip():
        raw = fields[2].strip()
        if not (raw.isascii() and raw.isdigit()):
            raise RowError(f"timestamp {raw[:40]!r} is not a non-negative integer")
        timestamp = int(raw)
    return user, S.playlist_id(owner, name), timestamp


def parse_mpd_document(content: str) -> list:
    """The ``playlists`` array of an MPD slice.

    Raises:
      RowError: not JSON, or not an object with a ``playlists`` list.
    """
    try:
        document = json.loads(content)
    except json.JSONDecodeError as error:
        raise RowError(f"mpd: file is not JSON ({error.msg} at line {error.lineno} column {error.colno})") from None
    if not isinstance(document, dict) or not isinstance(document.get("playlists"), list):
        raise RowError('mpd: expected an object with a "playlists" list')
    return document["playlists"]


def check_mpd_playlist(entry: Any) -> tuple[int, str, list]:
    """An MPD playlist entry -> ``(pid, cleaned name, tracks)``.

    Raises:
      RowError: not an object; ``pid`` not a non-negative integer; ``name`` missing or
        empty; ``tracks`` not a list.
    """
    if not isinstance(entry, dict):
        raise RowError("entry is not an object")
    pid = entry.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid < 0:
        raise RowError(f"pid {pid!r} is not a non-negative integer")
    name = entry.get("name")
    if not isinstance(name, str) or not S.clean_text(name):
        raise RowError(f"pid {pid}: name is missing or empty")
    if not isinstance(entry.get("tracks"), list):
        raise RowError(f"pid {pid}: tracks is not a list")
    return pid, S.clean_text(name), entry["tracks"]


def check_mpd_track(track: Any) -> str:
    """An MPD track entry -> its ``track_uri``.

    Raises:
      RowError: not an object, or no non-empty ``track_uri`` string without white space.
    """
    if not isinstance(track, dict):
        raise RowError("track entry is not an object")
    uri = track.get("track_uri")
    if not isinstance(uri, str) or not uri.strip() or any(c.isspace() for c in uri.strip()):
        raise RowError(f"track_uri {uri!r} is missing or not an id")
    return uri.strip()


def _mpd_summary(entry: Any) -> str:
    """A rejected MPD entry as text: its fields without the (long) track list."""
    if isinstance(entry, dict):
        shown = {k: v for k, v in entry.items() if k != "tracks"}
        if isinstance(entry.get("tracks"), list):
            shown["tracks"] = f"<{len(entry['tracks'])} tracks>"
        return json.dumps(shown, sort_keys=True, ensure_ascii=False)
    return json.dumps(entry, ensure_ascii=False)[:1000]


# --------------------------------------------------------------------------- grouping (pure)
class BuiltBucket(NamedTuple):
    """What ``build_playlists`` made of one bucket of rows.

    Attributes:
      playlists: ``(playlist id, owner, track ids in first-seen order)``, sorted by id.
      duplicates: dead-letter records of the duplicate rows.
      counts: counter name -> value.
    """

    playlists: list[tuple[str, str, tuple[str, ...]]]
    duplicates: list[dict[str, Any]]
    counts: dict[str, int]


def build_playlists(rows: Iterable[Row], sources: Sequence[str]) -> BuiltBucket:
    """Groups rows into playlists; the first (file, line, track index) wins, later repeats are duplicates.

    Args:
      rows: every row of the owners of one bucket (any order).
      sources: playlist input paths by file index (for the dead-letter records).
    """
    counts = dict.fromkeys(("pichl_rows_used", "pichl_duplicates", "mpd_tracks_used", "mpd_track_duplicates",
                            "mpd_playlists_used", "mpd_playlists_duplicate"), 0)
    first_entry: dict[str, tuple[int, int]] = {}
    duplicate_entries: set[tuple[str, int, int]] = set()
    seen: dict[tuple[str, str], tuple[int, int, int]] = {}
    playlists: dict[str, tuple[str, list[str]]] = {}
    duplicates = []
    for row in sorted(rows, key=_POSITION):
        mpd = row.owner.startswith(S.MPD_OWNER_PREFIX)
        if mpd:
            entry = first_entry.setdefault(row.owner, (row.file, row.line))
            if entry != (row.file, row.line):  # the same pid again (e.g. a copy of a slice)
                duplicate_entries.add((row.owner, row.file, row.line))
                counts["mpd_track_duplicates"] += 1
                duplicates.append(common.rejection(
                    sources[row.file], row.line,
                    f"duplicate MPD playlist {row.owner}: first at {sources[entry[0]]} playlist #{entry[1]}",
                    _row_text(row)))
                continue
        playlist = f"{row.owner}{S.PLAYLIST_ID_SEPARATOR}{row.name}"  # the name is clean already
        first = seen.get((playlist, row.track))
        if first is not None:  # rows come in position order, so the kept one is earlier
            counts["mpd_track_duplicates" if mpd else "pichl_duplicates"] += 1
            where = f"{sources[first[0]]}:{first[1]}" + (f" track {first[2] - 1}" if mpd else "")
            duplicates.append(common.rejection(
                sources[row.file], row.line, f"duplicate (playlist, track): first at {where}", _row_text(row)))
            continue
        seen[(playlist, row.track)] = (row.file, row.line, row.sub)
        counts["mpd_tracks_used" if mpd else "pichl_rows_used"] += 1
        playlists.setdefault(playlist, (row.owner, []))[1].append(row.track)
    counts["mpd_playlists_used"] = len(first_entry)
    counts["mpd_playlists_duplicate"] = len(duplicate_entries)
    built = [(pid, owner, tuple(tracks)) for pid, (owner, tracks) in sorted(playlists.items())]
    return BuiltBucket(built, duplicates, counts)


def _row_text(row: Row) -> str:
    """A row as text for ``rejected/`` (re-quoted CSV for Pichl rows, JSON for MPD rows)."""
    if row.owner.startswith(S.MPD_OWNER_PREFIX):
        return json.dumps({"pid": int(row.owner[len(S.MPD_OWNER_PREFIX):]), "track_uri": row.track})
    artist, _, title = row.track.partition(S.TRACK_KEY_SEPARATOR)
    fields = (row.owner, artist, title, row.name)
    return ",".join('"' + f.replace('"', '""') + '"' if any(c in f for c in ',"') else f for f in fields)


def collect_memberships(owned: Iterable[tuple[str, str]], follows: Iterable[tuple[str, str, int, int]],
                        playlist_index: dict[str, int], sources: Sequence[str]):
    """Every user's collection from the owned playlists and follow rows of one bucket.

    A follow of a playlist that does not exist is rejected; a follow of one's own
    playlist or a repeated follow (the first (file, line) wins) is a duplicate.

    Args:
      owned: ``(owner, playlist id)`` pairs.
      follows: ``(user, playlist id, file, line)`` rows.
      playlist_index: playlist id -> index (the vocabulary).
      sources: interaction paths by file index.

    Returns:
      ``(collections, rejections, counts)``; collections are ``(user, ((playlist
      index, is_owner), ...))`` sorted by user, each by playlist index.
    """
    members: dict[str, dict[int, int]] = {}
    for owner, playlist in owned:
        members.setdefault(owner, {})[playlist_index[playlist]] = 1
    counts = dict.fromkeys(("interactions_used", "interactions_unknown_playlist", "interactions_own_playlist",
                            "interactions_duplicates"), 0)
    rejections = []
    first_follow: dict[tuple[str, int], tuple[int, int]] = {}
    for user, playlist, file, line in sorted(follows, key=lambda f: (f[2], f[3])):
        index = playlist_index.get(playlist)
        text = f"{user},{playlist}"
        if index is None:
            counts["interactions_unknown_playlist"] += 1
            rejections.append(common.rejection(sources[file], line, "unknown playlist_id (no such playlist)", text))
            continue
        collection = members.setdefault(user, {})
        if collection.get(index) == 1:
            counts["interactions_own_playlist"] += 1
            rejections.append(common.rejection(sources[file], line, "duplicate: the user owns this playlist", text))
        elif index in collection:
            counts["interactions_duplicates"] += 1
            at = first_follow[(user, index)]
            rejections.append(common.rejection(
                sources[file], line, f"duplicate follow: first at {sources[at[0]]}:{at[1]}", text))
        else:
            counts["interactions_used"] += 1
            collection[index] = 0
            first_follow[(user, index)] = (file, line)
    collections = [(user, tuple(sorted(c.items()))) for user, c in sorted(members.items()) if c]
    return collections, rejections, counts


@contextlib.contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """Pauses Python's cyclic garbage collector around a bucket's pure processing.

    These functions build hundreds of thousands of small tuples and dicts and no
    reference cycles (refcounting frees them); with the collector on, its repeated
    passes over the young objects tripled their CPU time (measured: grouping 60k
    rows took 11.9 us per row with it, 3.5 us without).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# --------------------------------------------------------------------------- vocabularies
def encode_ids(ids: Iterable[str]) -> bytes:
    """Sorted ids as one UTF-8 blob, one per line: the form vocabularies travel in as side inputs.

    One bytes value instead of a list of strings: Beam's side-input cache sizes
    every object it holds by walking it, which took seconds per stage for lists
    of a million strings.
    """
    return "".join(f"{i}\n" for i in sorted(ids)).encode("utf-8")


class Lookup:
    """A vocabulary blob -> ``ids`` (index -> id) and ``index`` (id -> index), built once per DoFn instance."""

    def __init__(self):
        self._size = -1
        self.ids: list[str] = []
        self.index: dict[str, int] = {}

    def __call__(self, blob: bytes) -> "Lookup":
        if len(blob) != self._size:  # one vocabulary per pipeline: its size identifies it
            with no_cyclic_gc():
                self.ids = blob.decode("utf-8").split("\n")[:-1]
                self.index = {value: i for i, value in enumerate(self.ids)}
            self._size = len(blob)
        return self


# --------------------------------------------------------------------------- DoFns
class _ChunkedRows:
    """Per-bucket row buffers emitted as pickled chunks: one shuffle element per ``CHUNK_ROWS`` rows."""

    def __init__(self):
        self._buffers: dict[int, list] = {}

    def add(self, bucket: int, row: tuple) -> Iterator[tuple[int, bytes]]:
        buffer = self._buffers.setdefault(bucket, [])
        buffer.append(row)
        if len(buffer) >= CHUNK_ROWS:
            self._buffers[bucket] = []
            yield bucket, pickle.dumps(buffer, protocol=pickle.HIGHEST_PROTOCOL)

    def flush(self) -> Iterator[Any]:
        for bucket, buffer in sorted(self._buffers.items()):
            if buffer:
                yield GlobalWindows.windowed_value((bucket, pickle.dumps(buffer, protocol=pickle.HIGHEST_PROTOCOL)))
        self._buffers = {}


def _unchunk(chunks: Iterable[bytes]) -> Iterator[tuple]:
    for chunk in chunks:
        yield from pickle.loads(chunk)


class _ParseLines(beam.DoFn):
    """Pichl or interactions lines -> bucketed row chunks; header, blank and rejected lines counted.

    Counts are kept in plain ints and added to the Beam counters once per bundle:
    a counter increment per line cost as much as parsing the line.
    """

    NAMES = ("lines_read", "header_lines", "blank_lines", "rejected", "rows_without_artist")

    def __init__(self, kind: str, files: Sequence[str]):
        super().__init__()
        self._kind = kind
        self._file_index = {path: i for i, path in enumerate(files)}
        self._chunks = _ChunkedRows()
        self._counts = dict.fromkeys(self.NAMES, 0)
        self._bucket: tuple[str, int] = ("", 0)

    def start_bundle(self):
        self._chunks = _ChunkedRows()
        self._counts = dict.fromkeys(self.NAMES, 0)

    def process(self, element: tuple[str, int, str]):
        path, number, text = element
        counts = self._counts
        counts["lines_read"] += 1
        if not text.strip():
            counts["blank_lines"] += 1
            return
        if number == 1 and is_header(text):
            counts["header_lines"] += 1
            return
        try:
            if self._kind == "pichl":
                owner, name, track, has_artist = parse_pichl_line(text)
                counts["rows_without_artist"] += not has_artist
                row = (owner, name, track, self._file_index[path], number, 0)
            else:
                owner, playlist, _ = parse_interaction_line(text)
                row = (owner, playlist, self._file_index[path], number)
        except RowError as error:
            counts["rejected"] += 1
            yield beam.pvalue.TaggedOutput("rejected", common.rejection(path, number, str(error), text))
            return
        if self._bucket[0] != owner:  # rows come grouped by owner in both real and generated files
            self._bucket = (owner, bucket_of(owner))
        yield from self._chunks.add(self._bucket[1], row)

    def finish_bundle(self):
        for name, value in self._counts.items():
            common.counter(f"{self._kind}_{name}").inc(value)
        yield from self._chunks.flush()


class _ReadMpdFiles(beam.DoFn):
    """MPD slice paths -> bucketed row chunks; malformed files, playlists and tracks rejected and counted."""

    def __init__(self, files: Sequence[str]):
        super().__init__()
        self._file_index = {path: i for i, path in enumerate(files)}
        self._chunks = _ChunkedRows()

    def setup(self):
        names = ("files_read", "files_rejected", "files_parsed", "playlists_read", "playlists_rejected",
                 "tracks_read", "tracks_rejected")
        self._count = {n: common.count(f"mpd_{n}") for n in names}

    def start_bundle(self):
        self._chunks = _ChunkedRows()

    def process(self, path: str):
        self._count["files_read"]()
        # Strict UTF-8 and a checked decompression (common.read_text_file): a damaged or
        # mis-encoded slice fails the run as one line instead of losing or changing entries.
        content = common.read_text_file(path)
        try:
            entries = parse_mpd_document(content)
        except RowError as error:
            self._count["files_rejected"]()
            yield beam.pvalue.TaggedOutput("rejected", common.rejection(path, 0, str(error), content[:200]))
            return
        self._count["files_parsed"]()
        for number, entry in enumerate(entries, start=1):
            yield from self._entry(path, number, entry)

    def _entry(self, path: str, number: int, entry: Any) -> Iterator[Any]:
        self._count["playlists_read"]()
        try:
            pid, name, tracks = check_mpd_playlist(entry)
        except RowError as error:
            self._count["playlists_rejected"]()
            yield beam.pvalue.TaggedOutput("rejected", common.rejection(
                path, number, f"mpd playlist #{number}: {error}", _mpd_summary(entry)))
            return
        owner, kept = S.mpd_owner(pid), 0
        for position, track in enumerate(tracks):
            self._count["tracks_read"]()
            try:
                uri = check_mpd_track(track)
            except RowError as error:
                self._count["tracks_rejected"]()
                yield beam.pvalue.TaggedOutput("rejected", common.rejection(
                    path, number, f"mpd pid {pid} track {position}: {error}", json.dumps(track, ensure_ascii=False)))
                continue
            kept += 1
            yield from self._chunks.add(bucket_of(owner), (owner, name, uri, self._file_index[path], number,
                                                           position + 1))
        if not kept:
            self._count["playlists_rejected"]()
            yield beam.pvalue.TaggedOutput("rejected", common.rejection(
                path, number, f"mpd pid {pid}: no valid tracks", _mpd_summary(entry)))

    def finish_bundle(self):
        yield from self._chunks.flush()


class _BuildBucket(beam.DoFn):
    """(bucket, row chunks) -> the bucket's playlists (one list), duplicates and owned memberships (tagged)."""

    def __init__(self, sources: Sequence[str]):
        super().__init__()
        self._sources = list(sources)

    def process(self, keyed):
        bucket, chunks = keyed
        with no_cyclic_gc():
            built = build_playlists(map(Row._make, _unchunk(chunks)), self._sources)
        for name, value in built.counts.items():
            common.counter(name).inc(value)
        common.counter("playlists").inc(len(built.playlists))
        for record in built.duplicates:
            yield beam.pvalue.TaggedOutput("rejected", record)
        yield built.playlists
        owned = [(owner, playlist) for playlist, owner, _ in built.playlists]
        yield beam.pvalue.TaggedOutput("owned", (bucket, pickle.dumps(owned, protocol=pickle.HIGHEST_PROTOCOL)))


class _Vocabularies(beam.CombineFn):
    """Lists of playlists -> (playlist ids blob, track ids blob), sorted (``encode_ids``)."""

    def create_accumulator(self):
        return set(), set()

    def add_input(self, accumulator, playlists):
        for playlist, _, tracks in playlists:
            accumulator[0].add(playlist)
            accumulator[1].update(tracks)
        return accumulator

    def merge_accumulators(self, accumulators):
        playlists, tracks = set(), set()
        for p, t in accumulators:
            playlists |= p
            tracks |= t
        return playlists, tracks

    def extract_output(self, accumulator):
        return encode_ids(accumulator[0]), encode_ids(accumulator[1])


class _Collections(beam.DoFn):
    """(bucket, {"owned": chunks, "follows": chunks}) -> the bucket's collections (one list); follow rejects tagged."""

    def __init__(self, sources: Sequence[str]):
        super().__init__()
        self._sources = list(sources)
        self._playlists = Lookup()

    def process(self, keyed, vocabulary):
        _, grouped = keyed
        with no_cyclic_gc():
            collections, rejections, counts = collect_memberships(
                _unchunk(grouped["owned"]), _unchunk(grouped["follows"]), self._playlists(vocabulary[0]).index,
                self._sources)
        for name, value in counts.items():
            common.counter(name).inc(value)
        for record in rejections:
            yield beam.pvalue.TaggedOutput("rejected", record)
        yield collections


# --------------------------------------------------------------------------- transforms
class ReadPlaylists(beam.PTransform):
    """Input files -> ``{"rows": (bucket, row chunk), "follows": (bucket, follow chunk), "rejected": records}``."""

    def __init__(self, pichl: Sequence[str], mpd: Sequence[str], interactions: Sequence[str]):
        super().__init__()
        self._pichl, self._mpd, self._interactions = list(pichl), list(mpd), list(interactions)

    def expand(self, pbegin):
        rows, follows, rejected = [], [], []
        if self._pichl:
            pichl = (pbegin | "ReadPichl" >> common.ReadPositionedLines(self._pichl)
                     | "ParsePichl" >> beam.ParDo(_ParseLines("pichl", self._pichl)).with_outputs("rejected", main="rows"))
            rows.append(pichl.rows)
            rejected.append(pichl.rejected)
        if self._mpd:
            # Playlist positions index the Pichl and MPD paths together (``Row.file``).
            mpd = (pbegin | "ListMpd" >> beam.Create(self._mpd) | "SpreadMpd" >> beam.Reshuffle()
                   | "ReadMpd" >> beam.ParDo(_ReadMpdFiles(self._pichl + self._mpd)).with_outputs(
                       "rejected", main="rows"))
            rows.append(mpd.rows)
            rejected.append(mpd.rejected)
        if self._interactions:
            parsed = (pbegin | "ReadInteractions" >> common.ReadPositionedLines(self._interactions)
                      | "ParseInteractions" >> beam.ParDo(_ParseLines("interactions", self._interactions)).with_outputs(
                          "rejected", main="rows"))
            follows.append(parsed.rows)
            rejected.append(parsed.rejected)
        return {name: tuple(parts) | f"Flatten{name.title()}" >> beam.Flatten(pipeline=pbegin.pipeline)
                for name, parts in (("rows", rows), ("follows", follows), ("rejected", rejected))}


class BuildCollections(beam.PTransform):
    """Row and follow chunks -> playlists, vocabularies and per-user collections.

    Outputs: ``playlists`` (per bucket, a list of (id, owner, track ids)),
    ``vocabulary`` (singleton: playlist ids blob, track ids blob), ``collections``
    (per bucket, a list of (user, ((playlist index, is_owner), ...))), ``users``
    (singleton: user ids blob), ``rejected``.

    Args:
      sources: playlist input paths (Pichl then MPD), as indexed by ``Row.file``.
      interaction_sources: interaction paths.
    """

    def __init__(self, sources: Sequence[str], interaction_sources: Sequence[str]):
        super().__init__()
        self._sources, self._interaction_sources = list(sources), list(interaction_sources)

    def expand(self, read):
        built = (
            read["rows"]
            | "GroupRows" >> beam.GroupByKey()
            | "BuildPlaylists" >> beam.ParDo(_BuildBucket(self._sources)).with_outputs(
                "rejected", "owned", main="playlists")
        )
        vocabulary = built.playlists | "Vocabularies" >> beam.CombineGlobally(_Vocabularies())
        collections = (
            {"owned": built.owned, "follows": read["follows"]}
            | "GroupMembers" >> beam.CoGroupByKey()
            | "Collections" >> beam.ParDo(_Collections(self._interaction_sources),
                                          beam.pvalue.AsSingleton(vocabulary)).with_outputs("rejected", main="users")
        )
        users = (collections.users | "UserIds" >> beam.Map(lambda bucket: [user for user, _ in bucket])
                 | "AllUsers" >> beam.combiners.ToList()
                 | "EncodeUsers" >> beam.Map(lambda lists: encode_ids(u for users in lists for u in users)))
        return {
            "playlists": built.playlists, "vocabulary": vocabulary, "collections": collections.users, "users": users,
            "rejected": (built.rejected, collections.rejected) | "FlattenBuildRejected" >> beam.Flatten(),
        }
