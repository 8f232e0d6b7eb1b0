"""Hostile and damaged inputs to the pipelines (issue 11): each class is one line, exit 2, no traceback.

Files that real users have: random bytes, a zip or gzip file under another name,
UTF-16 text, a download cut in half (gzip, bzip2), a corrupt gzip, an empty file,
a header without rows, JSON in Latin-1, an ``--output`` that is a file. Each ends
in one line naming the flag or file, the reason and what to do; a damaged
compressed file fails instead of being read up to the damage, and a failed run
leaves no ``dataset.json``. Most cases are refused before Beam starts; the ones
met inside a Beam worker (a cut that lies beyond the first 64 KB, JSON that is not
UTF-8, inputs without a usable row) run the small LastFM pipeline and one
MovieLens run.
"""
from __future__ import annotations

import bz2
import json
import gzip
import io
import random
import zipfile
from pathlib import Path

import pytest

from beam_pipelines import common, lastfm, movielens

RATINGS = "".join(f"{u}\t{i}\t{(u * i) % 5 + 1}\t{1000 + u * 50 + i}\n" for u in range(1, 31) for i in range(1, 21))


def _errors(module, argv, capsys, name: str) -> str:
    """Runs ``module.main``; asserts exit 2 and one error line without a traceback; returns the line."""
    code = module.main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    lines = [line for line in captured.err.splitlines() if line.startswith(f"{name} pipeline")]
    assert code == 2 and len(lines) == 1, (code, captured.err[-2000:])
    assert lines[0].startswith(f"{name} pipeline: error: ")
    return lines[0]


def _zip(text: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("u.data", text)
    return buffer.getvalue()


def _flip(data: bytes) -> bytes:
    damaged = bytearray(data)
    for offset in range(len(damaged) // 2, len(damaged) // 2 + 4):
        damaged[offset] ^= 0xFF
    return bytes(damaged)


_GZ = gzip.compress(RATINGS.encode(), mtime=0)
_BZ2 = bz2.compress(RATINGS.encode())
CASES = {  # name: (file name, content, expected part of the one line)
    "random bytes": ("u.data", random.Random(0).randbytes(4000), "is binary data, not text"),
    "UTF-16 text": ("u.data", RATINGS.encode("utf-16"), "is UTF-16 or UTF-32 text; convert it to UTF-8"),
    "zip archive": ("ml-100k.data", _zip(RATINGS), "is a zip archive; unzip it"),
    "gzip under another name": ("u.data", _GZ, "holds gzip data but its name does not end in .gz; rename it"),
    ".gz name, plain text": ("u.data.gz", RATINGS.encode(), "is named .gz but does not hold gzip data"),
    "gzip cut in half": ("u.data.gz", _GZ[: len(_GZ) // 2],
                         "Compressed file ended before the end-of-stream marker was reached); the file is damaged"),
    "bzip2 cut in half": ("u.data.bz2", _BZ2[: len(_BZ2) // 2], "ended before the end-of-stream marker"),
    "corrupt gzip": ("u.data.gz", _flip(_GZ), "cannot be read"),
    "empty file": ("u.data", b"", "matches only empty files"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_damaged_ratings_files_are_one_line_before_beam(case, tmp_path, capsys):
    name, content, expected = CASES[case]
    path = tmp_path / name
    path.write_bytes(content)
    line = _errors(movielens, ["--input", str(path), "--output", str(tmp_path / "out")], capsys, "movielens")
    assert expected in line and (str(path) in line or "matches only empty" in line), line
    assert not (tmp_path / "out" / "dataset.json").exists()


def test_the_same_checks_guard_every_input_flag(tmp_path, capsys):
    good = tmp_path / "u.data"
    good.write_text(RATINGS)
    bad = tmp_path / "u1.test"
    bad.write_bytes(random.Random(1).randbytes(2000))
    line = _errors(movielens, ["--input", str(good), "--split", "given", "--test-input", str(bad),
                               "--output", str(tmp_path / "out")], capsys, "movielens")
    assert f"--test-input {bad}: is binary data" in line
    line = _errors(lastfm, ["--edges", str(bad), "--targets", str(good), "--output", str(tmp_path / "out")],
                   capsys, "lastfm")
    assert f"--edges {bad}: is binary data" in line


def test_output_locations_that_cannot_be_written(tmp_path, capsys):
    good = tmp_path / "u.data"
    good.write_text(RATINGS)
    taken = tmp_path / "taken"
    taken.write_text("not a directory")
    line = _errors(movielens, ["--input", str(good), "--output", str(taken)], capsys, "movielens")
    assert f"--output {taken} is an existing file, not a directory; choose a directory" in line
    assert taken.read_text() == "not a directory"
    line = _errors(movielens, ["--input", str(good), "--output", str(taken / "below")], capsys, "movielens")
    assert f"--output {taken / 'below'}: cannot create the directory (Not a directory)" in line
    line = _errors(lastfm, ["--edges", str(good), "--targets", str(good), "--output", str(taken)], capsys, "lastfm")
    assert "is an existing file" in line


def test_rating_rules_per_release_and_their_override(tmp_path, capsys):
    rule = lambda path, fmt: movielens.default_rating_rule(path, fmt)[0]  # noqa: E731
    assert rule("/d/ml-100k/u.data", "tab") == rule("/d/ml-1m/ratings.dat", "dat") == movielens.WHOLE_STARS
    assert rule("/d/ml-10M100K/ratings.dat", "dat") == rule("/d/ml-25m/ratings.csv", "csv") == movielens.HALF_STARS
    parse = movielens.parse_rating_fields
    for text, fmt, path, reason in (("1\t2\t0\t5", "tab", "u.data", "rating 0 is outside [1, 5]"),
                                    ("1\t2\t3.5\t5", "tab", "u.data", "rating 3.5 is not a multiple of 1"),
                                    ("1::2::4.5::5", "dat", "ml-1m/ratings.dat", "rating 4.5 is not a multiple of 1"),
                                    ("1,2,0,5", "csv", "ratings.csv", "rating 0 is outside [0.5, 5]"),
                                    ("1,2,4.25,5", "csv", "ratings.csv", "rating 4.25 is not a multiple of 0.5")):
        with pytest.raises(movielens.RowError, match=reason.replace("[", r"\[").replace("]", r"\]")):
            parse(text, fmt, rule(path, fmt))
    assert parse("1::2::4.5::5", "dat", rule("ml-10m/ratings.dat", "dat"))[2] == 4.5
    assert parse("1\t2\t0\t5", "tab", movielens.parse_rating_range("0,5"))[2] == 0.0
    assert parse("1\t2\t2.7\t5", "tab", movielens.parse_rating_range("0,10"))[2] == 2.7
    good = tmp_path / "u.data"
    good.write_text(RATINGS)
    for value in ("5,1", "1", "a,b", "1,5,-1", "1,inf"):
        line = _errors(movielens, ["--input", str(good), "--output", str(tmp_path / "o"), "--rating-range", value],
                       capsys, "movielens")
        assert "--rating-range must be LOW,HIGH or LOW,HIGH,STEP" in line


# --------------------------------------------------------------------------- met inside a Beam worker
@pytest.fixture
def graph(tmp_path):
    rng = random.Random(3)
    edges = "node_1,node_2\n" + "".join(f"{a},{b}\n" for a in range(60) for b in rng.sample(range(60), 3) if a != b)
    (tmp_path / "edges.csv").write_text(edges)
    (tmp_path / "target.csv").write_text("id,target\n" + "".join(f"{a},{a % 3}\n" for a in range(60)))
    return tmp_path


def _lastfm(graph: Path, *extra: str) -> list[str]:
    return ["--edges", str(graph / "edges.csv"), "--targets", str(graph / "target.csv"), "--num-classes", "3",
            "--num-shards", "1", "--output", str(graph / "out"), *extra]


@pytest.mark.slow
def test_a_cut_beyond_the_first_block_fails_inside_the_pipeline(graph, capsys):
    # ~300 KB of edges: the cut lies past the 64 KB that check_text_file reads before the pipeline.
    lines = "".join(f"{a},{a + 1 + n}\n" for n in range(200) for a in range(0, 59 - n) if a + 1 + n < 60) * 30
    packed = gzip.compress(("node_1,node_2\n" + lines).encode(), mtime=0)
    cut = graph / "edges.csv.gz"
    cut.write_bytes(packed[: int(len(packed) * 0.9)])
    assert len(gzip.decompress(packed)) > 2 * 65536
    argv = _lastfm(graph)
    argv[1] = str(cut)
    line = _errors(lastfm, argv, capsys, "lastfm")
    assert f"{cut}: cannot be read past line" in line and "end-of-stream marker" in line
    assert not (graph / "out" / "dataset.json").exists()


@pytest.mark.slow
def test_json_that_is_not_utf8_and_inputs_without_a_usable_row(graph, capsys):
    (graph / "likes.json").write_bytes('{"1": [1], "2": [3], "caf\u00e9": [2]}'.encode("latin-1"))
    line = _errors(lastfm, _lastfm(graph, "--features", str(graph / "likes.json")), capsys, "lastfm")
    assert f"{graph / 'likes.json'}: is not UTF-8 text (byte 0xe9 at offset 25); save it as UTF-8" in line
    (graph / "header.csv").write_text("node_1,node_2\n")
    argv = _lastfm(graph)
    argv[1] = str(graph / "header.csv")
    line = _errors(lastfm, argv, capsys, "lastfm")
    assert f"--edges {graph / 'header.csv'}: no usable row (1 lines read, 1 header lines)" in line
    assert not (graph / "out" / "dataset.json").exists()


@pytest.mark.slow
def test_a_header_without_rows_is_not_a_success(tmp_path, capsys):
    """The issue's example: it used to 'succeed' with 0 train and 0 eval rows, 1 user and 1 item."""
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n\n")
    line = _errors(movielens, ["--input", str(path), "--output", str(tmp_path / "out"), "--num-shards", "1"],
                   capsys, "movielens")
    assert f"--input {path}: no usable row (2 lines read, 1 header lines, 1 blank lines)" in line
    assert not (tmp_path / "out" / "dataset.json").exists()


def test_known_failure_finds_the_input_error_in_what_a_runner_reports():
    inner = common.input_file_error("gs://b/u.data.gz", "cannot be read past line 7 (EOFError: x)", "fetch it again")
    reported = RuntimeError(f"Dataflow job failed:\nTraceback ...\n{inner} [while running 'ReadLines']\n")
    assert common.known_failure(reported) == "gs://b/u.data.gz: cannot be read past line 7 (EOFError: x); fetch it again"
    assert "No space left on device" in common.known_failure(OSError("[Errno 28] No space left on device"), "/o")
    assert common.known_failure(ValueError("a bug")) is None


# --------------------------------------------------------------------------- playlists
@pytest.mark.slow
def test_playlist_inputs_damaged_or_without_a_usable_row(tmp_path, capsys):
    from beam_pipelines import playlists

    csv_rows = "user_id,artistname,trackname,playlistname\n" + "".join(
        f"u{u},a{t % 5},t{t},list{p}\n" for u in range(8) for p in range(3) for t in range(u, u + 4))
    slice_ = json.dumps({"playlists": [{"pid": p, "name": f"n{p}", "tracks": [{"track_uri": f"t:{t}"} for t in range(3)]}
                                       for p in range(3000)]}).encode()
    cases = {
        "playlists.csv": (random.Random(4).randbytes(3000), "--input {p}: is binary data"),
        "mpd.slice.json.gz": (gzip.compress(slice_, mtime=0)[:-100], "{p}: cannot be read (EOFError"),
        "header.csv": (b"user_id,artistname,trackname,playlistname\n\n", "--input: no usable playlist"),
    }
    for name, (content, expected) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        line = _errors(playlists, ["--input", str(path), "--output", str(tmp_path / "out"), "--num-shards", "1"],
                       capsys, "playlists")
        assert expected.format(p=path) in line, line
        assert not (tmp_path / "out" / "dataset.json").exists()
    (tmp_path / "good.csv").write_text(csv_rows)
    (tmp_path / "follows.csv").write_text("user_id,playlist_id\n")
    line = _errors(playlists, ["--input", str(tmp_path / "good.csv"), "--interactions", str(tmp_path / "follows.csv"),
                               "--output", str(tmp_path / "out"), "--num-shards", "1"], capsys, "playlists")
    assert f"--interactions {tmp_path / 'follows.csv'}: no usable follow (1 lines read, 1 header lines)" in line
