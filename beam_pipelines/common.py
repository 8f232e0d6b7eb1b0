"""Pieces every pipeline shares, written once.

Owns: stable hashing (never Python's ``hash()``, which is salted per process),
reading lines together with their file and line number, dead-letter records,
deterministic sharded writers (TFRecord and JSON lines), Beam counters and the
``dataset.json`` summary. All file access goes through Beam ``FileSystems`` so
``gs://`` works wherever a local path does.
"""
from __future__ import annotations

import hashlib
import json
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


def read_positioned_lines(path: str) -> Iterator[tuple[str, int, str]]:
    """Yields ``(path, line_number, text)`` for every line of ``path`` (1-based).

    Compression is detected from the file name (``.gz``, ``.bz2`` ...).
    """
    with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as handle:
        # Beam's CompressedFile (.gz, .bz2) has readline() but is not iterable.
        for number, raw in enumerate(iter(handle.readline, b""), start=1):
            yield path, number, decode_line(raw, number == 1)


class ReadPositionedLines(beam.PTransform):
    """Reads whole files into ``(path, line_number, text)`` elements.

    Beam's ``ReadFromText`` splits files for parallelism but cannot tell a line's
    number, which the dedup tie rule (latest input position wins), the reject
    report and the leave-one-out tie rule all need; so each file is read by one
    worker and the stages after the first shuffle spread the work out again.
    """

    def __init__(self, paths: Sequence[str]):
        super().__init__()
        self._paths = sorted(paths)

    def expand(self, pbegin):
        return (
            pbegin
            | "ListFiles" >> beam.Create(self._paths)
            | "ReadLines" >> beam.FlatMap(read_positioned_lines)
        )


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
    """Buffers elements per key within a bundle and emits ``(key, [elements])`` chunks."""

    def __init__(self, key_fn: Callable[[Any], int], chunk_size: int):
        super().__init__()
        self._key_fn = key_fn
        self._chunk_size = chunk_size
        self._buffers: dict[int, list] = {}

    def start_bundle(self):
        self._buffers = {}

    def process(self, element):
        key = self._key_fn(element)
        buffer = self._buffers.setdefault(key, [])
        buffer.append(element)
        if len(buffer) >= self._chunk_size:
            self._buffers[key] = []
            yield key, buffer

    def finish_bundle(self):
        from apache_beam.transforms.window import GlobalWindows

        for key, buffer in self._buffers.items():
            if buffer:
                yield GlobalWindows.windowed_value((key, buffer))
        self._buffers = {}


class GroupIntoBuckets(beam.PTransform):
    """Groups elements into ``num_buckets`` buckets: ``(bucket, [elements])``.

    The same grouping as keying every element and ``GroupByKey``, but elements
    cross the shuffle in per-bundle chunks: on the DirectRunner the per-element
    cost of a shuffle dominates pipelines of small records, and chunking cuts it
    several-fold. ``key_fn`` must return an int in ``[0, num_buckets)``.
    Every bucket is emitted, empty ones as ``(bucket, [])``.
    """

    def __init__(self, key_fn: Callable[[Any], int], num_buckets: int, chunk_size: int = 5000):
        super().__init__()
        self._key_fn = key_fn
        self._num_buckets = num_buckets
        self._chunk_size = chunk_size

    def expand(self, pcoll):
        chunks = pcoll | "Chunk" >> beam.ParDo(_ChunkByKey(self._key_fn, self._chunk_size))
        every = pcoll.pipeline | "EveryBucket" >> beam.Create([(i, []) for i in range(self._num_buckets)])
        return (
            (chunks, every)
            | "FlattenChunks" >> beam.Flatten()
            | "GroupChunks" >> beam.GroupByKey()
            | "Concatenate" >> beam.MapTuple(lambda key, lists: (key, [e for chunk in lists for e in chunk]))
        )


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
    """

    def __init__(self, prefix: str, num_shards: int, kind: str = "tfrecord"):
        super().__init__()
        if kind not in ("tfrecord", "jsonl"):
            raise ValueError(f"unknown shard kind {kind!r}")
        self._prefix = prefix
        self._num_shards = num_shards
        self._kind = kind

    def expand(self, records):
        n = self._num_shards
        # crc32 is stable across processes and ~10x cheaper than blake2b here.
        return (
            records
            | "GroupByShard" >> GroupIntoBuckets(lambda b: zlib.crc32(b) % n, n)
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
    """A pipeline's ``main``: runs it, prints a one-line summary, or one error line (exit 2)."""
    import os
    import sys

    logging.getLogger().setLevel(logging.INFO if os.environ.get("VERBOSE") else logging.WARNING)
    try:
        summary = run(argv)
    except PipelineInputError as error:
        print(f"{name} pipeline: error: {error}", file=sys.stderr)
        return 2
    print(f"{name} pipeline: {describe(summary)}")
    return 0


# --------------------------------------------------------------------------- outputs
def write_text(path: str, text: str) -> None:
    """Writes ``text`` as UTF-8 to ``path`` (local or gs://), replacing any earlier file."""
    with FileSystems.create(path) as handle:
        handle.write(text.encode("utf-8"))


def write_json(path: str, payload: dict[str, Any]) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_json(path: str) -> dict[str, Any]:
    with FileSystems.open(path) as handle:
        return json.loads(handle.read().decode("utf-8"))


def join_path(*parts: str) -> str:
    return FileSystems.join(*parts)


def clear_outputs(output: str, names: Sequence[str]) -> None:
    """Deletes earlier outputs of a pipeline so no stale shard survives a rerun.

    On gs:// a folder is only a name prefix (``exists`` is false for it), so
    ``NAME/`` is deleted as a prefix there; deleting a prefix without objects is a no-op.
    """
    for name in names:
        path = FileSystems.join(output, name)
        if FileSystems.exists(path):
            logging.info("Removing earlier output %s", path)
            FileSystems.delete([path])
        elif path.startswith("gs://"):
            logging.info("Removing earlier outputs under %s/", path)
            FileSystems.delete([path.rstrip("/") + "/"])


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
