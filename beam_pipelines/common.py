"""Pieces every pipeline shares, written once.

Owns: stable hashing (never Python's ``hash()``, which is salted per process),
reading lines together with their file and line number, dead-letter records,
deterministic sharded writers (TFRecord and JSON lines), Beam counters and the
``dataset.json`` summary. All file access goes through Beam ``FileSystems`` so
``gs://`` works wherever a local path does.

Also the reliability rules every pipeline follows (``run`` wires them):

* inputs: ``check_text_file`` before the pipeline (binary, UTF-16, zip, a
  compression the name does not say), ``read_byte_lines`` while it runs (a
  compressed file must reach its end-of-stream marker and checksum: a truncated
  or corrupt ``.gz`` / ``.bz2`` / ``.xz`` fails, it is never silently shortened);
  ``require_usable`` when a side has no usable row;
* outputs: ``prepare_output`` (the location is a writable directory; the earlier
  commit marker is removed first, then every earlier output), ``commit_marker``
  (``dataset.json`` written last, atomically: a run that dies leaves nothing that
  looks finished);
* errors: ``run_pipeline`` turns a bad file met inside a Beam worker into one
  ``PipelineInputError`` line, and ``pipeline_main`` prints every error as one
  line (exit 2 for bad input; 1, with ``VERBOSE=1`` for the traceback, otherwise).
"""
from __future__ import annotations

import argparse
import bz2
import contextlib
import gzip
import hashlib
import json
import lzma
import os
import re
import zlib
import logging
import struct
from typing import Any, Callable, Iterable, Iterator, Sequence

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import Metrics, MetricsFilter

COUNTER_NAMESPACE = "pipeline"
_UTF8_BOM = b"\xef\xbb\xbf"


class PipelineInputError(Exception):
    """Bad input that the operator must fix; ``main()`` prints it as one line."""


INPUT_ERROR_MARKER = "[input file error] "


class InputFileError(PipelineInputError):
    """A file that cannot be read to its end: unreadable, not text, corrupt or truncated compression.

    It may be raised inside a Beam worker; the message starts with
    ``INPUT_ERROR_MARKER`` so ``run_pipeline`` finds it in whatever the runner
    re-raises (the DirectRunner keeps the type, Dataflow reports the text). One
    string argument, so runners can re-create it with an augmented message.
    """


def worker_input_error(message: str) -> InputFileError:
    """A bad-input error raised inside a worker that names no one file (``run_pipeline`` prints ``message``)."""
    return InputFileError(f"{INPUT_ERROR_MARKER}{message}")


def input_file_error(path: str, reason: str, todo: str, flag: str = "") -> InputFileError:
    """``InputFileError`` saying which file (and flag), what is wrong with it and what to do."""
    return InputFileError(f"{INPUT_ERROR_MARKER}{flag + ' ' if flag else ''}{path}: {reason}; {todo}")


_DAMAGED = "the file is damaged or incomplete (an interrupted download or copy?): fetch or copy it again"


# --------------------------------------------------------------------------- hashing
def stable_hash64(*parts: Any) -> int:
    """A 64-bit hash that is identical in every process, run and runner.

    Args:
      *parts: values joined by their ``str()``; bytes are used as they are.

    Returns:
      An unsigned 64-bit integer.
    """
    if len(parts) == 1 and isinstance(parts[0], bytes):
        data = parts[0]
    else:
        data = "\x1f".join(map(str, parts)).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def stable_fraction(*parts: Any) -> float:
    """Maps ``parts`` to a uniform float in [0, 1), stable across processes."""
    return stable_hash64(*parts) / 2.0**64


# --------------------------------------------------------------------------- reading
def decode_line(raw: bytes, is_first_line: bool) -> str:
    """Decodes one raw line: strips the newline (LF or CRLF) and a leading BOM.

    UTF-8 is tried first; MovieLens' older files are Latin-1, which can decode
    any byte string, so it is the fallback.
    """
    if is_first_line and raw.startswith(_UTF8_BOM):
        raw = raw[len(_UTF8_BOM):]
    raw = raw.rstrip(b"\r\n")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


# Decompressors that check the end-of-stream marker (and gzip's CRC-32 and length):
# Beam's CompressedFile stops quietly where a truncated file ends. DEFLATE and
# ZSTD files are read by Beam's reader, which cannot tell a truncated stream.
_CHECKED_DECOMPRESSORS = {
    CompressionTypes.GZIP: lambda raw: gzip.GzipFile(fileobj=raw, mode="rb"),
    CompressionTypes.BZIP2: lambda raw: bz2.BZ2File(raw, mode="rb"),
    CompressionTypes.LZMA: lambda raw: lzma.LZMAFile(raw, mode="rb"),
}
_READ_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError)


def _reason(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{error.__class__.__name__}: {text[:200]}" if text else error.__class__.__name__


@contextlib.contextmanager
def open_input(path: str) -> Iterator[Any]:
    """Opens ``path`` for reading bytes, decompressed by its suffix (``.gz``, ``.bz2``, ``.xz``, ...).

    Raises:
      InputFileError: the file cannot be opened.
    """
    compression = CompressionTypes.detect_compression_type(path)
    try:
        if compression in _CHECKED_DECOMPRESSORS:
            raw = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
            stream = _CHECKED_DECOMPRESSORS[compression](raw)
        else:
            raw = stream = FileSystems.open(path, compression_type=compression)
    except Exception as error:  # Beam wraps local and GCS failures in several types
        raise input_file_error(path, f"cannot open it ({_reason(error)})",
                               "check the path and its permissions") from None
    try:
        yield stream
    finally:
        stream.close()
        if raw is not stream:
            raw.close()


def read_byte_lines(path: str) -> Iterator[bytes]:
    """Yields the raw lines of ``path`` (newline kept), decompressed; a damaged file fails.

    Raises:
      InputFileError: the file cannot be read to its end: a read error, or a
        compressed stream that is corrupt, fails its checksum, or ends before its
        end-of-stream marker (a truncated download). Never a silently shorter file.
    """
    number = 0
    with open_input(path) as stream:
        try:
            # Beam's CompressedFile (.deflate, .zst) has readline() but is not iterable.
            for number, raw in enumerate(iter(stream.readline, b""), start=1):
                yield raw
        except _READ_ERRORS as error:
            where = f"cannot be read past line {number}" if number else "cannot be read"
            raise input_file_error(path, f"{where} ({_reason(error)})", _DAMAGED) from None
    if number == 0 and CompressionTypes.detect_compression_type(path) in _CHECKED_DECOMPRESSORS:
        # Python's readers take a 0-byte file for an empty stream; a compressed empty file has a header.
        if FileSystems.match([path])[0].metadata_list[0].size_in_bytes == 0:
            raise input_file_error(path, "is a 0-byte file, not compressed data", _DAMAGED)


def read_positioned_lines(path: str) -> Iterator[tuple[str, int, str]]:
    """Yields ``(path, line_number, text)`` for every line of ``path`` (1-based).

    Compression is detected from the file name (``.gz``, ``.bz2`` ...).

    Raises:
      InputFileError: see ``read_byte_lines``.
    """
    for number, raw in enumerate(read_byte_lines(path), start=1):
        yield path, number, decode_line(raw, number == 1)


def read_text_file(path: str) -> str:
    """The whole of a UTF-8 text file (a JSON document), decompressed, without a leading BOM.

    Raises:
      InputFileError: unreadable or damaged (see ``read_byte_lines``), or not UTF-8
        (JSON is UTF-8 by its standard; a Latin-1 fallback would change ids silently).
    """
    data = b"".join(read_byte_lines(path))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise input_file_error(
            path, f"is not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start})",
            "save it as UTF-8 (e.g. iconv -f LATIN1 -t UTF-8)") from None
    return text.lstrip("\ufeff")


_MAGIC = ((b"\x1f\x8b", "gzip", ".gz"), (b"BZh", "bzip2", ".bz2"), (b"\xfd7zXZ\x00", "xz", ".xz"))
_SNIFF_BYTES = 1 << 16


def check_text_file(path: str, flag: str) -> None:
    """Fails early, with what to do, when ``path`` cannot be a text input.

    Checks the first bytes: a zip archive; gzip/bzip2/xz data without the
    matching suffix (or a ``.gz`` name on other data); UTF-16/32 text; binary
    data (NUL bytes, or more than 5% control characters).

    Raises:
      InputFileError: one of the above, or the file cannot be opened.
    """
    def fail(reason: str, todo: str) -> InputFileError:
        return input_file_error(path, reason, todo, flag)

    compression = CompressionTypes.detect_compression_type(path)
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            head = handle.read(8)
    except Exception as error:  # noqa: BLE001  (Beam wraps local and GCS failures in several types)
        raise fail(f"cannot open it ({_reason(error)})", "check the path and its permissions") from None
    if head.startswith(b"PK\x03\x04"):
        raise fail("is a zip archive", "unzip it and pass the file inside")
    for magic, kind, suffix in _MAGIC:
        named = CompressionTypes.detect_compression_type(f"x{suffix}")
        if head.startswith(magic) and compression != named:
            raise fail(f"holds {kind} data but its name does not end in {suffix}",
                       f"rename it to end in {suffix} (compression is told from the name)")
        if compression == named and not head.startswith(magic):
            raise fail(f"is named {suffix} but does not hold {kind} data", "decompress or rename it, or fetch it again")
    with open_input(path) as stream:
        try:
            sample = stream.read(_SNIFF_BYTES)
        except _READ_ERRORS as error:
            raise fail(f"cannot be read ({_reason(error)})", _DAMAGED) from None
    head16 = sample[:64]
    utf16 = len(head16) >= 4 and any(head16) and (set(head16[1::2]) == {0} or set(head16[0::2]) == {0})
    if sample.startswith((b"\xff\xfe", b"\xfe\xff")) or utf16:
        raise fail("is UTF-16 or UTF-32 text", "convert it to UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)")
    control = sum(sample.count(bytes([c])) for c in (*range(9), 11, 12, *range(14, 32), 127))
    if b"\x00" in sample or control > 0.05 * len(sample):
        raise fail(f"is binary data, not text (NUL or control bytes in its first {len(sample)} bytes)",
                   "pass the text file this flag expects")


def check_text_files(paths: Sequence[str], flag: str) -> list[str]:
    """``check_text_file`` for each path; returns the paths."""
    for path in paths:
        check_text_file(path, flag)
    return list(paths)


# Uncompressed inputs larger than this are read as several byte ranges (see ``ReadPositionedLines``).
READ_SPLIT_BYTES = 64 << 20
_COUNT_BLOCK = 8 << 20


def plan_ranges(path: str, size: int, split_bytes: int) -> list[tuple[str, int, int]]:
    """``(path, start, end)`` byte ranges of one input; one range if it is compressed or small.

    A compressed stream cannot be entered in the middle, so it is one range
    (``end`` = -1: to its end) read by one worker.
    """
    if CompressionTypes.detect_compression_type(path) != CompressionTypes.UNCOMPRESSED or size <= split_bytes:
        return [(path, 0, -1)]
    return [(path, start, min(start + split_bytes, size)) for start in range(0, size, split_bytes)]


def count_line_starts(path: str, start: int, end: int) -> int:
    """How many lines begin in the bytes ``[start, end)`` of an uncompressed file.

    A line begins at offset 0 and after every newline but the file's last byte;
    the newline that starts a line at ``p`` sits at ``p - 1``, so the count is
    the newlines in ``[start - 1, end - 1)`` (and 1 for offset 0).
    """
    begin = max(start - 1, 0)
    total = 1 if start == 0 else 0
    with open_input(path) as stream:
        try:
            stream.seek(begin)
            left = end - 1 - begin
            while left > 0:
                block = stream.read(min(_COUNT_BLOCK, left))
                if not block:
                    raise EOFError(f"the file ended before byte {end}")
                total += block.count(b"\n")
                left -= len(block)
        except _READ_ERRORS as error:
            raise input_file_error(path, f"cannot be read at bytes {start}..{end} ({_reason(error)})",
                                   _DAMAGED) from None
    return total


def read_range_lines(path: str, start: int, end: int, first_number: int) -> Iterator[tuple[str, int, str]]:
    """``(path, line_number, text)`` of every line that begins in ``[start, end)`` of an uncompressed file.

    The line that straddles ``start`` belongs to the range before it (the one
    its first byte is in); ``first_number`` is the number of the first line that
    begins here, so numbers are exactly those of a whole-file read.
    """
    number = first_number
    with open_input(path) as stream:
        try:
            position = start
            if start > 0:
                stream.seek(start - 1)
                if stream.read(1) != b"\n":
                    position += len(stream.readline())  # the end of a line begun in the range before
            while position < end:
                raw = stream.readline()
                if not raw:
                    break
                yield path, number, decode_line(raw, number == 1)
                number += 1
                position += len(raw)
        except _READ_ERRORS as error:
            raise input_file_error(path, f"cannot be read past line {number - 1} ({_reason(error)})",
                                   _DAMAGED) from None


def _read_planned_range(planned: tuple[str, int, int], starts: dict[tuple[str, int], int]):
    path, start, end = planned
    if end < 0:
        yield from read_positioned_lines(path)
        return
    first = 1 + sum(count for (other, other_start), count in starts.items() if other == path and other_start < start)
    yield from read_range_lines(path, start, end, first)


class ReadPositionedLines(beam.PTransform):
    """Reads files into ``(path, line_number, text)`` elements, large ones in parallel byte ranges.

    Beam's ``ReadFromText`` splits files for parallelism but cannot tell a line's
    number, which the dedup tie rule (latest input position wins), the reject
    report and the leave-one-out tie rule all need. Here an uncompressed file
    larger than ``split_bytes`` (``READ_SPLIT_BYTES``, 64 MiB) is planned as byte
    ranges while the pipeline is built: one step counts the lines that begin in
    each range (a newline count, no parsing), and the reading step numbers its
    lines from the counts of the ranges before it, so every line keeps its exact
    whole-file number and a rerun reads exactly the same elements. A compressed
    file, or a small one, is one range read by one worker.
    """

    def __init__(self, paths: Sequence[str], split_bytes: int | None = None):
        super().__init__()
        self._paths = sorted(paths)
        self._split_bytes = split_bytes or READ_SPLIT_BYTES

    def _plan(self) -> list[tuple[str, int, int]]:
        ranges = []
        for path in self._paths:
            size = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
            ranges.extend(plan_ranges(path, size, self._split_bytes))
        return ranges

    def expand(self, pbegin):
        planned = self._plan()
        if all(end < 0 for _, _, end in planned):  # nothing to split: one worker per file, as before
            return (pbegin
                    | "ListFiles" >> beam.Create(self._paths)
                    | "ReadLines" >> beam.FlatMap(read_positioned_lines))
        ranges = (pbegin
                  | "ListRanges" >> beam.Create(planned)
                  | "SpreadRanges" >> beam.Reshuffle())  # ranges to different workers, not fused to one
        starts = (ranges
                  | "OnlySplitRanges" >> beam.Filter(lambda r: r[2] >= 0)
                  | "CountLineStarts" >> beam.Map(lambda r: ((r[0], r[1]), count_line_starts(*r))))
        return ranges | "ReadLines" >> beam.FlatMap(_read_planned_range, starts=beam.pvalue.AsDict(starts))


def match_files(pattern: str, flag: str) -> list[str]:
    """Expands a file or glob (local or gs://) into a sorted list of paths.

    Raises:
      PipelineInputError: nothing matches, or only empty files do.
    """
    try:
        results = FileSystems.match([pattern])
    except Exception as error:  # Beam raises BeamIOError with the cause inside.
        raise PipelineInputError(f"{flag} {pattern!r}: cannot list files ({error})") from None
    metadata = [m for result in results for m in result.metadata_list]
    if not metadata:
        raise PipelineInputError(f"{flag} {pattern!r} matches no file")
    if all(m.size_in_bytes == 0 for m in metadata):
        raise PipelineInputError(f"{flag} {pattern!r} matches only empty files")
    return sorted(m.path for m in metadata)


def first_lines(path: str, count: int = 2) -> list[str]:
    """The first ``count`` decoded lines of a file (for format detection)."""
    lines = []
    for _, number, text in read_positioned_lines(path):
        lines.append(text)
        if number >= count:
            break
    return lines


def sha256_of(path: str) -> str:
    """sha256 of the file's bytes as stored (compressed files are not inflated)."""
    digest = hashlib.sha256()
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- rejects
def rejection(path: str, line: int, reason: str, text: str) -> dict[str, Any]:
    """The dead-letter record written to ``rejected/`` for one unused input row."""
    return {"source": path, "line": line, "reason": reason, "text": text}


def encode_json_line(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, ensure_ascii=False).encode("utf-8")


# --------------------------------------------------------------------------- grouping
class _ChunkByKey(beam.DoFn):
    """Buffers elements per key within a bundle and emits ``(key, [elements])`` chunks.

    With ``spill_dir``, each chunk is pickled to its own file there and the
    chunk crosses the shuffle as ``(key, path)`` (see "Spilling" below).
    """

    def __init__(self, key_fn: Callable[[Any], int], chunk_size: int, spill_dir: str | None = None):
        super().__init__()
        self._key_fn = key_fn
        self._chunk_size = chunk_size
        self._spill_dir = spill_dir
        self._buffers: dict[int, list] = {}

    def start_bundle(self):
        self._buffers = {}

    def _emit(self, key: int, buffer: list) -> tuple[int, Any]:
        return (key, buffer) if self._spill_dir is None else (key, spill_chunk(self._spill_dir, key, buffer))

    def process(self, element):
        key = self._key_fn(element)
        buffer = self._buffers.setdefault(key, [])
        buffer.append(element)
        if len(buffer) >= self._chunk_size:
            self._buffers[key] = []
            yield self._emit(key, buffer)

    def finish_bundle(self):
        from apache_beam.transforms.window import GlobalWindows

        for key, buffer in self._buffers.items():
            if buffer:
                yield GlobalWindows.windowed_value(self._emit(key, buffer))
        self._buffers = {}


# Spilling: on one machine, Beam's in-process runner (the FnApiRunner behind the
# DirectRunner) keeps every PCollection that crosses a stage boundary in memory as
# encoded bytes, and copies a stage's whole input into its data channel before the
# stage runs; it has no spilling, so a pipeline's peak grows with its largest
# shuffle. With a spill directory, the large shuffles here move file paths instead:
# a chunk of elements is pickled to a local file on the producing side, and the
# consuming stage reads the files of one bucket (or one chunk) at a time. Only for
# runners whose workers share this machine's disk (the DirectRunner); Dataflow's
# shuffle is disk- and service-backed already, and its workers do not share a disk.
SPILL_CHOICES = ("auto", "on", "off")


def spill_chunk(spill_dir: str, key: int, elements: list) -> str:
    """Pickles ``elements`` into a new file under ``spill_dir``; returns its path."""
    import pickle
    import uuid

    path = os.path.join(spill_dir, f"{key:06d}-{uuid.uuid4().hex}.pkl")
    with open(path, "wb") as handle:
        pickle.dump(elements, handle, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def load_chunk(path: str) -> list:
    """The elements ``spill_chunk`` wrote (files this pipeline wrote itself, never user input)."""
    import pickle

    with open(path, "rb") as handle:
        return pickle.load(handle)


def wants_spill(choice: str, options) -> bool:
    """Whether ``--spill choice`` spills on this pipeline's runner.

    ``auto`` spills on the DirectRunner (the default runner) and not elsewhere;
    ``on`` with another runner is an error, checked before any output is touched.

    Raises:
      PipelineInputError: ``--spill on`` with a runner whose workers do not share this machine's disk.
    """
    from apache_beam.options.pipeline_options import StandardOptions

    if choice not in SPILL_CHOICES:
        raise PipelineInputError(f"--spill must be one of {', '.join(SPILL_CHOICES)}, got {choice!r}")
    runner = str(options.view_as(StandardOptions).runner or "DirectRunner")
    local = runner.split(".")[-1] in ("DirectRunner", "direct", "SwitchingDirectRunner", "BundleBasedDirectRunner")
    if choice == "on" and not local:
        raise PipelineInputError(f"--spill on needs the DirectRunner (its workers share this machine's disk), "
                                 f"not {runner}; use --spill auto or off")
    return choice == "on" or (choice == "auto" and local)


def _concatenate(key: int, chunks: Iterable[Any], spilled: bool) -> tuple[int, list]:
    if not spilled:
        return key, [element for chunk in chunks for element in chunk]
    return key, [element for path in sorted(p for p in chunks if p) for element in load_chunk(path)]


class GroupIntoBuckets(beam.PTransform):
    """Groups elements into ``num_buckets`` buckets: ``(bucket, [elements])``.

    The same grouping as keying every element and ``GroupByKey``, but elements
    cross the shuffle in per-bundle chunks: on the DirectRunner the per-element
    cost of a shuffle dominates pipelines of small records, and chunking cuts it
    several-fold. ``key_fn`` must return an int in ``[0, num_buckets)``.
    Every bucket is emitted, empty ones as ``(bucket, [])``.

    With ``spill_dir`` (a local directory; see ``wants_spill``), chunks are pickled to files there and
    only their paths are shuffled: the runner then holds one bucket at a time,
    not every bucket. The buckets hold the same elements either way.
    """

    def __init__(self, key_fn: Callable[[Any], int], num_buckets: int, chunk_size: int = 5000,
                 spill_dir: str | None = None):
        super().__init__()
        self._key_fn = key_fn
        self._num_buckets = num_buckets
        self._chunk_size = chunk_size
        self._spill_dir = spill_dir

    def expand(self, pcoll):
        spilled = self._spill_dir is not None
        chunks = pcoll | "Chunk" >> beam.ParDo(_ChunkByKey(self._key_fn, self._chunk_size, self._spill_dir))
        empty = "" if spilled else []  # an empty chunk: no path, or no elements
        every = pcoll.pipeline | "EveryBucket" >> beam.Create([(i, empty) for i in range(self._num_buckets)])
        return (
            (chunks, every)
            | "FlattenChunks" >> beam.Flatten()
            | "GroupChunks" >> beam.GroupByKey()
            | "Concatenate" >> beam.Map(lambda group: _concatenate(*group, spilled))
        )


class SpillToDisk(beam.PTransform):
    """A PCollection -> a small PCollection of its spilled chunk files (``ReadSpilled`` gives the elements back).

    For a PCollection that several later stages read (tf.Transform's analysis and
    transform both read the train rows): each reader applies its own
    ``ReadSpilled``, so each reads the files inside its own stage and the runner
    holds only the paths. Without ``spill_dir`` the elements pass through
    unchanged and ``ReadSpilled`` is the identity: the same pipeline either way.
    """

    def __init__(self, spill_dir: str | None, chunk_size: int = 8):
        super().__init__()
        self._spill_dir = spill_dir
        self._chunk_size = chunk_size

    def expand(self, pcoll):
        if self._spill_dir is None:
            return pcoll
        return (pcoll
                | "Chunk" >> beam.ParDo(_ChunkByKey(lambda _: 0, self._chunk_size, self._spill_dir))
                | "Paths" >> beam.MapTuple(lambda _, path: path))


class ReadSpilled(beam.PTransform):
    """The elements of ``SpillToDisk``'s files, read one file at a time (the identity without spilling).

    Each reader shuffles the paths itself: the shuffle makes every file written
    before any is read, and it starts the reader's own stage, so the loading is
    fused with what consumes it. With one shuffle shared by two readers, the
    runner fused both loads into one stage and, since the second reader (the
    transform) waits for a side input (the analysis), kept its whole output in
    memory between the stages: at 25M ratings a 4.5 GB spike.
    """

    def __init__(self, spill_dir: str | None):
        super().__init__()
        self._spilled = spill_dir is not None

    def expand(self, pcoll):
        if not self._spilled:
            return pcoll
        return (pcoll
                | "KeyPaths" >> beam.Map(lambda path: (0, path))
                | "GroupPaths" >> beam.GroupByKey()
                | "Paths" >> beam.FlatMapTuple(lambda _, paths: sorted(paths))
                | "Load" >> beam.FlatMap(load_chunk))


# --------------------------------------------------------------------------- writing
def _masked_crc32c(data: bytes) -> int:
    import google_crc32c  # Installed with google-cloud-storage (and Beam[gcp]).

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord_frame(record: bytes) -> bytes:
    """One record in TFRecord framing: length, CRC of length, data, CRC of data."""
    length = struct.pack("<Q", len(record))
    return (
        length
        + struct.pack("<I", _masked_crc32c(length))
        + record
        + struct.pack("<I", _masked_crc32c(record))
    )


def shard_path(prefix: str, index: int, num_shards: int, suffix: str) -> str:
    return f"{prefix}-{index:05d}-of-{num_shards:05d}{suffix}"


# "--num-shards auto": one shard per this many bytes of (uncompressed) input text, so a shard's records,
# which WriteDeterministicShards groups and sorts in one worker, stay bounded however large the input.
SHARD_TARGET_BYTES = 64 << 20
_COMPRESSION_RATIO = 4  # text inputs compress about 4x; a compressed file counts as 4x its size


def shard_count(value: str) -> int | str:
    """argparse type of ``--num-shards``: ``auto`` or a positive integer."""
    if value == "auto":
        return value
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be 'auto' or an integer >= 1, got {value!r}")
    return count


def resolve_shard_count(value: int | str, paths: Sequence[str], minimum: int) -> int:
    """``--num-shards``: an integer as given; ``auto`` from the inputs' size (deterministic, so reruns match).

    ``auto`` = max(``minimum``, ceil(input bytes / 64 MiB)), compressed files counted
    at 4x their size: ML-100K gets ``minimum``, ML-25M's 650 MB ``ratings.csv`` 10.
    """
    if value != "auto":
        return int(value)
    total = 0
    for path in paths:
        size = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
        compressed = CompressionTypes.detect_compression_type(path) != CompressionTypes.UNCOMPRESSED
        total += size * (_COMPRESSION_RATIO if compressed else 1)
    return max(minimum, -(-total // SHARD_TARGET_BYTES))


class WriteDeterministicShards(beam.PTransform):
    """Writes byte records into exactly ``num_shards`` files with stable content.

    Beam's own sharded sinks assign records to shards at random and keep arrival
    order, so a rerun gives different files. Here a record's shard is a stable
    hash of its bytes and each shard is sorted, so the same input gives the same
    files on every run and runner. Every shard file exists, even when empty.

    Args:
      prefix: path prefix, e.g. ``OUTPUT/train/part``.
      num_shards: number of files.
      kind: ``"tfrecord"`` (gzip TFRecord) or ``"jsonl"`` (newline-delimited text).
      spill_dir: shuffle the records through local files (``GroupIntoBuckets``); the same files either way.
    """

    def __init__(self, prefix: str, num_shards: int, kind: str = "tfrecord", spill_dir: str | None = None):
        super().__init__()
        if kind not in ("tfrecord", "jsonl"):
            raise ValueError(f"unknown shard kind {kind!r}")
        self._prefix = prefix
        self._num_shards = num_shards
        self._kind = kind
        self._spill_dir = spill_dir

    def expand(self, records):
        n = self._num_shards
        # crc32 is stable across processes and ~10x cheaper than blake2b here.
        return (
            records
            | "GroupByShard" >> GroupIntoBuckets(lambda b: zlib.crc32(b) % n, n, spill_dir=self._spill_dir)
            | "WriteShard" >> beam.MapTuple(self._write_shard)
        )

    def _write_shard(self, index: int, records: list[bytes]) -> str:
        if self._kind == "tfrecord":
            path = shard_path(self._prefix, index, self._num_shards, ".tfrecord.gz")
            compression, frame = CompressionTypes.GZIP, tfrecord_frame
        else:
            path = shard_path(self._prefix, index, self._num_shards, ".jsonl")
            compression, frame = CompressionTypes.UNCOMPRESSED, lambda r: r + b"\n"
        with FileSystems.create(path, compression_type=compression) as handle:
            for record in sorted(records):
                handle.write(frame(record))
        return path


# --------------------------------------------------------------------------- counters
def counter(name: str):
    """A Beam counter in the pipeline namespace (exact for batch pipelines)."""
    return Metrics.counter(COUNTER_NAMESPACE, name)


def count(name: str) -> Callable[..., None]:
    """The ``inc`` of a pipeline counter, for DoFns that bind it once in ``__init__``."""
    return counter(name).inc


def read_counters(result) -> dict[str, int]:
    """All committed pipeline counters of a finished pipeline, by name."""
    query = result.metrics().query(MetricsFilter().with_namespace(COUNTER_NAMESPACE))
    counters: dict[str, int] = {}
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        counters[counter.key.metric.name] = counters.get(counter.key.metric.name, 0) + int(value)
    return counters


# --------------------------------------------------------------------------- entry points
def parse_pipeline_args(parser, argv: Sequence[str] | None):
    """Splits ``argv`` into the pipeline's own flags and Beam pipeline options; anything else is an error.

    Beam's own ``PipelineOptions`` only logs and drops a flag that no options class
    knows, so a misspelt flag (``--eval_fraction`` for ``--eval-fraction``) would
    silently run with the default. Here the rest of ``argv`` is parsed with every
    registered options class, the way ``PipelineOptions.get_all_options`` does,
    and what is left over is one clear error naming the flag.

    Args:
      parser: the pipeline's ``argparse.ArgumentParser`` (its own flags).
      argv: command-line arguments (None: ``sys.argv[1:]``).

    Returns:
      ``(args, beam_args)``: the parsed own flags and the Beam option strings.

    Raises:
      PipelineInputError: an argument that is neither a flag of this pipeline nor a Beam option.
    """
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    args, rest = parser.parse_known_args(argv)
    beam_parser = _BeamArgumentParser(allow_abbrev=False)
    seen = set()
    for cls in PipelineOptions.__subclasses__():
        if str(cls) not in seen:
            seen.add(str(cls))
            cls._add_argparse_args(beam_parser)  # noqa: SLF001  (what get_all_options does)
    _, unknown = beam_parser.parse_known_args(rest)
    if unknown:
        raise PipelineInputError(
            f"unrecognized argument(s) {' '.join(unknown)}: neither a flag of {parser.prog} "
            "nor a Beam pipeline option (see --help; Beam options use underscores, e.g. --temp_location)"
        )
    return args, rest


def split_summary(output: str, split: str, num_shards: int, examples: int, suffix: str = ".tfrecord.gz") -> dict[str, Any]:
    """The ``dataset.json`` entry of one split: its example count and shard files (relative to ``output``).

    Every pipeline writes ``"splits": {name: split_summary(...)}``; the trainer checks
    the files it finds and the examples it reads against it.
    """
    del output  # the files are relative, so an output can be copied or moved as a whole
    return {"examples": int(examples),
            "files": [shard_path(f"{split}/part", i, num_shards, suffix) for i in range(num_shards)]}


def pipeline_main(name: str, run: Callable[[Sequence[str] | None], dict[str, Any]],
                  describe: Callable[[dict[str, Any]], str], argv: Sequence[str] | None = None) -> int:
    """A pipeline's ``main``: runs it, prints a one-line summary, or one error line.

    Returns:
      0; 2 for bad input (``PipelineInputError``); 1 for any other failure, printed
      as one line too (``VERBOSE=1`` shows Beam's logs and the traceback).
    """
    import sys

    verbose = bool(os.environ.get("VERBOSE"))
    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        # Beam logs a DoFn's exception with its traceback before re-raising it; the
        # exception itself reaches this function and is printed as one line.
        logging.getLogger("apache_beam.runners.common").setLevel(logging.CRITICAL)
    try:
        summary = run(argv)
        if DRY_RUN_KEY in summary:
            describe = describe_dataflow_job
    except PipelineInputError as error:
        print(f"{name} pipeline: error: {str(error).replace(INPUT_ERROR_MARKER, '', 1)}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001  (one line; the traceback on request)
        if verbose:
            raise
        print(f"{name} pipeline: failed: {_reason(error)} (rerun with VERBOSE=1 for the traceback); "
              "the output is incomplete and has no dataset.json", file=sys.stderr)
        return 1
    print(f"{name} pipeline: {describe(summary)}")
    return 0


_WRITE_FAILURES = ("No space left on device", "Disk quota exceeded", "Read-only file system", "Permission denied",
                   "Not a directory", "Is a directory")


def known_failure(error: BaseException, output: str | None = None) -> str | None:
    """The one-line message of a pipeline failure caused by a bad input or output location, else None.

    Looks through the exception chain and the text the runner reports for an
    ``InputFileError`` (its marker) or an operating-system write failure.
    """
    texts = []
    seen: BaseException | None = error
    while seen is not None and len(texts) < 10:
        texts.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    text = "\n".join(texts)
    found = re.search(re.escape(INPUT_ERROR_MARKER) + r"([^\n]*)", text)
    if found:
        return re.sub(r" \[while running '[^']*'\]$", "", found.group(1)).strip()
    if output is not None:
        for failure in _WRITE_FAILURES:
            if failure in text:
                return (f"writing {output} failed ({failure}); free space or choose a writable --output, then rerun "
                        "(the output is incomplete and has no dataset.json)")
    return None


def run_pipeline(pipeline, output: str | None = None):
    """Runs ``pipeline`` to its end and returns the result.

    Raises:
      PipelineInputError: a bad input file met inside a worker (``InputFileError``)
        or an output that could not be written, as one line; the pipeline ending
        in any state but DONE.
    """
    from apache_beam.runners.runner import PipelineState

    try:
        result = pipeline.run()
        state = result.wait_until_finish()
    except Exception as error:  # noqa: BLE001  (re-raised unless it is a known cause)
        message = known_failure(error, output)
        if message is None:
            raise
        raise PipelineInputError(message) from None
    if state is not None and state != PipelineState.DONE:
        raise PipelineInputError(f"the pipeline ended in state {state}; the output is incomplete, rerun it")
    return result


def require_usable(*, flag: str, source: str, used: int, breakdown: dict[str, int], output: str,
                   files: Sequence[str] = (), what: str = "row") -> None:
    """Fails when an input side gave no usable row (an empty file, a header alone, every row rejected).

    Args:
      flag: the input's flag (``--input``).
      source: what was given (the flag's value).
      used: rows of that input that ended in an output.
      breakdown: where its rows went instead (``{"header lines": 1, "rejected": 0}``).
      output: the pipeline output (``rejected/`` is named when it holds rows).
      files: the input's files (only their rejected rows are shown; empty: any).
      what: the unit for the message.

    Raises:
      PipelineInputError: ``used`` is 0.
    """
    if used > 0:
        return
    detail = ", ".join(f"{count} {name}" for name, count in breakdown.items() if count) or "no lines"
    first = first_rejections(output, limit=1, keep=(lambda r: r["source"] in files) if files else None)
    shown = (f"; first rejected: {os.path.basename(first[0]['source'])}:{first[0]['line']}: {first[0]['reason']}; "
             f"all in {join_path(output, 'rejected')}") if first else ""
    raise PipelineInputError(f"{flag} {source}: no usable {what} ({detail}){shown}; "
                             "check that it is the right file for this flag and its format")


# --------------------------------------------------------------------------- outputs
def write_text(path: str, text: str) -> None:
    """Writes ``text`` as UTF-8 to ``path`` (local or gs://), replacing any earlier file."""
    with FileSystems.create(path) as handle:
        handle.write(text.encode("utf-8"))


def write_json(path: str, payload: dict[str, Any]) -> None:
    """Writes ``payload`` as indented JSON (sorted keys) to ``path``."""
    write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


MARKER = "dataset.json"


def commit_marker(output: str, payload: dict[str, Any], name: str = MARKER) -> str:
    """Writes the commit marker ``OUTPUT/dataset.json`` last and atomically; returns its path.

    Written to a temporary name and renamed: a local rename is atomic, so a run
    killed while writing leaves no half-written marker (a GCS object appears only
    once it is complete anyway). The trainer treats an output without the marker
    as unfinished.
    """
    path = join_path(output, name)
    temporary = f"{path}.tmp"
    write_json(temporary, payload)
    FileSystems.rename([temporary], [path])
    return path


def read_json(path: str) -> dict[str, Any]:
    with FileSystems.open(path) as handle:
        return json.loads(handle.read().decode("utf-8"))


def join_path(*parts: str) -> str:
    return FileSystems.join(*parts)


def clear_outputs(output: str, names: Sequence[str]) -> None:
    """Deletes earlier outputs of a pipeline so no stale shard survives a rerun.

    The commit marker (``dataset.json``) goes first, so a rerun that dies part
    way leaves nothing that looks finished. On gs:// a folder is only a name
    prefix (``exists`` is false for it), so ``NAME/`` is deleted as a prefix
    there; deleting a prefix without objects is a no-op.
    """
    ordered = [MARKER, f"{MARKER}.tmp", *(n for n in names if n not in (MARKER, f"{MARKER}.tmp"))]
    for name in ordered:
        path = FileSystems.join(output, name)
        if FileSystems.exists(path):
            logging.info("Removing earlier output %s", path)
            FileSystems.delete([path])
        elif path.startswith("gs://") and name not in (MARKER, f"{MARKER}.tmp"):
            logging.info("Removing earlier outputs under %s/", path)
            FileSystems.delete([path.rstrip("/") + "/"])


DRY_RUN_KEY = "dataflow_dry_run"  # the key of the summary a --dry_run=True DataflowRunner build returns


def is_dataflow_dry_run(options) -> bool:
    """Whether ``options`` ask for Beam's own Dataflow dry run (``--runner DataflowRunner --dry_run=True``)."""
    from apache_beam.options.pipeline_options import StandardOptions, TestOptions

    runner = options.view_as(StandardOptions).runner
    return bool(options.view_as(TestOptions).dry_run) and "dataflow" in str(runner or "").lower()


def gcs_emulated() -> bool:
    """Whether gs:// goes to a storage emulator (``STORAGE_EMULATOR_HOST``, as the Cloud Storage client reads it)."""
    return bool(os.environ.get("STORAGE_EMULATOR_HOST"))


def build_dataflow_job(pipeline, output: str) -> dict[str, Any]:
    """Builds the Dataflow job of ``pipeline`` with Beam's ``--dry_run`` and describes it; nothing is submitted.

    The DataflowRunner translates the pipeline, resolves the worker environment
    (``--sdk_container_image`` or Beam's image for this Python and Beam version)
    and packages what it would stage (``--setup_file`` as an sdist), then returns
    before any request. The pipeline's own writes never happen, so ``output``
    is neither cleared nor written and no ``dataset.json`` appears.

    Returns:
      ``{DRY_RUN_KEY: {"job_name", "project", "region", "steps": [top-level transform names],
      "worker_images": [...], "staged": [file names], "setup_file", "sdk_container_image", "output"}}``.
    """
    from apache_beam.portability.api import beam_runner_api_pb2

    result = pipeline.run()
    job = result.job
    proto = job.proto_pipeline
    transforms = proto.components.transforms
    # The runner wraps the pipeline in one synthetic root; its children are the steps the user wrote.
    steps = [transforms[child].unique_name for root in proto.root_transform_ids
             for child in transforms[root].subtransforms]
    images, staged = [], []
    for environment in proto.components.environments.values():
        if environment.urn == "beam:env:docker:v1":
            images.append(beam_runner_api_pb2.DockerPayload.FromString(environment.payload).container_image)
        staged += [beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(d.role_payload).staged_name
                   for d in environment.dependencies]
    options = job.options.get_all_options()
    return {DRY_RUN_KEY: {
        "job_name": job.proto.name, "project": options.get("project"), "region": options.get("region"),
        "steps": steps, "worker_images": sorted(set(images)), "staged": sorted(set(staged)),
        "setup_file": options.get("setup_file"), "sdk_container_image": options.get("sdk_container_image"),
        "output": output}}


def describe_dataflow_job(summary: dict[str, Any]) -> str:
    """The one line ``pipeline_main`` prints for a dry run."""
    job = summary[DRY_RUN_KEY]
    worker = (f"worker image {job['sdk_container_image']}" if job["sdk_container_image"]
              else f"setup file {job['setup_file']} staged as workflow.tar.gz on {', '.join(job['worker_images'])}"
              if job["setup_file"] else f"worker image {', '.join(job['worker_images'])}")
    return (f"Dataflow dry run: job {job['job_name']} built, {len(job['steps'])} steps ({', '.join(job['steps'])}); "
            f"{worker}; nothing was submitted and {job['output']} was not written")


def prepare_output(output: str, names: Sequence[str], flag: str = "--output") -> None:
    """Checks that ``output`` is a writable directory, then removes earlier outputs (marker first).

    Called before the pipeline is built, so an unusable location is one line
    instead of a failure inside a Beam sink.

    Raises:
      PipelineInputError: ``output`` is an existing file, cannot be created, or cannot be written.
    """
    todo = "choose a directory you can write to (it is created when missing)"
    if "://" not in output:
        if os.path.exists(output) and not os.path.isdir(output):
            raise PipelineInputError(f"{flag} {output} is an existing file, not a directory; {todo}")
        try:
            os.makedirs(output, exist_ok=True)
        except OSError as error:
            raise PipelineInputError(f"{flag} {output}: cannot create the directory ({error.strerror}); {todo}") from None
    probe = join_path(output, f".write-probe-{os.getpid()}")
    try:
        write_text(probe, "")
        FileSystems.delete([probe])
        clear_outputs(output, names)
    except Exception as error:  # noqa: BLE001  (Beam wraps local and GCS failures in several types)
        raise PipelineInputError(f"{flag} {output} cannot be written ({_reason(error)}); {todo}") from None


def first_rejections(
    output: str, limit: int = 5, keep: Callable[[dict[str, Any]], bool] | None = None
) -> list[dict[str, Any]]:
    """The first rejected rows (by source and line) from ``OUTPUT/rejected/``.

    Args:
      output: the pipeline's output directory.
      limit: how many rows to return at most.
      keep: when given, only rows for which it is true count (applied before ``limit``).
    """
    matches = FileSystems.match([FileSystems.join(output, "rejected", "*.jsonl")])[0].metadata_list
    rows: list[dict[str, Any]] = []
    for metadata in matches:
        with FileSystems.open(metadata.path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            decoded = (json.loads(line) for line in handle.read().decode("utf-8").splitlines() if line)
            rows.extend(r for r in decoded if keep is None or keep(r))
    rows.sort(key=lambda r: (r["source"], r["line"]))
    return rows[:limit]
