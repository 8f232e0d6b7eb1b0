"""Playlists pipeline end to end on a tiny generated fixture with planted bad rows: run(argv), outputs, rerun bytes."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from beam_pipelines import playlists
from rawdata import playlist_synth as synth
from schemas import playlists as S
from tests.conftest import read_examples

REPO = Path(__file__).resolve().parents[1]
SHARDED = ("train", "valid", "test", S.PLAYLIST_TRACKS_DIR, S.CANDIDATES_DIR, S.NEIGHBOURS_DIR)


def _mpd_slice() -> dict:
    track = lambda i: {"pos": i, "artist_name": "A", "track_name": f"T{i}", "track_uri": f"spotify:track:{i:04d}"}  # noqa: E731
    return {"info": {"slice": "0-2"}, "playlists": [
        {"name": "Throwbacks ", "pid": 0, "tracks": [track(1), track(2), track(1)]},  # a repeated track
        {"name": "Bad", "pid": "x", "tracks": []},  # malformed entry
        {"name": "Mixed", "pid": 2, "tracks": [track(3), {"pos": 1}, "oops"]},  # two malformed tracks
        {"name": "Again", "pid": 0, "tracks": [track(9)]},  # pid 0 again: a duplicate playlist
    ]}


@pytest.fixture(scope="module")
def fixture_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("playlists")
    data = synth.generate_playlists(150, seed=4, num_communities=3)
    csv_path, follows_path = str(work / "playlists.csv"), str(work / "follows.csv")
    synth.write_playlists_csv(data, csv_path)
    synth.write_interactions_csv(data, follows_path)
    first_row = open(csv_path).read().splitlines()[1]
    owner = data.user_ids[data.playlist_owner[0]]
    other = data.user_ids[1 if data.playlist_owner[0] == 0 else 0]  # any other user
    with open(csv_path, "a") as handle:  # bad rows, each must land in rejected/ with its reason
        handle.write(f'{first_row}\n\n{owner},"unterminated,x,y\n{owner},a,b\n{owner},artist,,Name\n')
    own = S.playlist_id(owner, data.playlist_names[0])
    followed = open(follows_path).read().splitlines()[1]
    with open(follows_path, "a") as handle:
        own_field = synth.csv_field(own)
        handle.write(f"{other},{owner}/No such playlist,5\n{owner},{own_field},6\n{followed}\n{other},{own_field},soon\n")
    mpd_path = work / "mpd.slice.0-2.json"
    mpd_path.write_text(json.dumps(_mpd_slice(), indent=4))
    out = work / "out"
    argv = ["--input", csv_path, "--input", str(mpd_path), "--interactions", follows_path, "--output", str(out),
            "--num-shards", "2", "--seed", "3", "--max-rejected-fraction", "0.5"]
    summary = playlists.run(argv)
    return {"out": out, "summary": summary, "data": data, "argv": argv}


def _rejected(out: Path) -> list[dict]:
    return [json.loads(line) for f in glob.glob(str(out / "rejected" / "*.jsonl")) for line in open(f) if line.strip()]


def _vocab(out: Path, name: str) -> list[str]:
    return (out / S.VOCAB_DIR / name).read_text(encoding="utf-8").split("\n")[:-1]


def test_every_row_is_accounted_for_and_rejects_say_why(fixture_run):
    out, summary = fixture_run["out"], fixture_run["summary"]
    accounting = summary["accounting"]
    assert accounting["balanced"], accounting
    c = summary["counts"]["detail"]
    data = fixture_run["data"]
    assert c["pichl_lines_read"] == data.num_rows + 1 + 5  # header + the rows appended
    assert (c["pichl_header_lines"], c["pichl_blank_lines"], c["pichl_rejected"], c["pichl_duplicates"]) == (1, 1, 3, 1)
    assert c["pichl_rows_used"] == data.num_rows
    assert (c["mpd_playlists_read"], c["mpd_playlists_rejected"], c["mpd_playlists_duplicate"], c["mpd_playlists_used"]) == (4, 1, 1, 2)
    assert (c["mpd_tracks_read"], c["mpd_tracks_rejected"], c["mpd_track_duplicates"], c["mpd_tracks_used"]) == (7, 2, 2, 3)
    assert (c["interactions_unknown_playlist"], c["interactions_own_playlist"], c["interactions_duplicates"],
            c["interactions_rejected"]) == (1, 1, 1, 1)
    assert c["interactions_used"] == len(data.follow_user)
    rejected = _rejected(out)
    assert len(rejected) == (3 + 1) + (1 + 2 + 2) + 4  # Pichl (+ duplicate), MPD (entry, tracks, duplicates), follows
    reasons = " | ".join(sorted(r["reason"] for r in rejected))
    for expected in ("malformed CSV", "expected 4 CSV fields", "empty trackname", "duplicate (playlist, track)",
                     "mpd playlist #2: pid 'x'", "mpd pid 2 track 1: track_uri None", "mpd pid 2 track 2",
                     "duplicate MPD playlist mpd:0", "unknown playlist_id", "the user owns this playlist",
                     "duplicate follow", "timestamp 'soon'"):
        assert expected in reasons, (expected, reasons)
    mpd = [r for r in rejected if r["source"].endswith(".json")]
    assert {r["line"] for r in mpd} == {1, 2, 3, 4}  # the playlist's position in the file
    assert summary["counts"]["rejected_rows"] == 3 + 1 + 2 + 1 + 1  # malformed or unknown, not duplicates


def test_dataset_json_contract(fixture_run):
    out, summary = fixture_run["out"], fixture_run["summary"]
    assert json.loads((out / "dataset.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["dataset"] == "playlists" and summary["schema"] == "playlists"
    for name in S.SPLITS:
        entry = summary["splits"][name]
        assert len(entry["files"]) == 2 and all((out / f).exists() for f in entry["files"])
        assert entry["examples"] == len(read_examples(out / name / "part-*.tfrecord.gz"))
    for name in playlists.TABLES:
        assert all((out / f).exists() for f in summary["tables"][name]["files"])
    vocabulary = summary["vocabulary"]
    for kind, name in (("users", S.USER_VOCAB), ("playlists", S.PLAYLIST_VOCAB), ("tracks", S.TRACK_VOCAB)):
        ids = _vocab(out, name)
        assert len(ids) == vocabulary[kind] and ids == sorted(ids) and len(set(ids)) == len(ids)
        assert vocabulary["files"][kind] == f"{S.VOCAB_DIR}/{name}"
    assert vocabulary["users"] == 150 + 2 and "mpd:0" in _vocab(out, S.USER_VOCAB)
    assert "mpd:0/Throwbacks" in _vocab(out, S.PLAYLIST_VOCAB)
    assert {s["format"] for s in summary["sources"]} == {"pichl", "mpd", "interactions"}
    assert all(len(s["sha256"]) == 64 for s in summary["sources"])
    assert summary["split"]["seed"] == 3 and summary["split"]["num_negatives"] == 50
    assert "mpd:<pid>" in summary["mpd_owner_mapping"]["rule"]
    assert summary["pairing"]["statistics"]["neighbours_per_user"]["count"] == vocabulary["users"]
    report = json.loads((out / S.PAIRING_DIR / S.PAIRING_REPORT).read_text())
    assert report["statistics"] == summary["pairing"]["statistics"]
    for png in report["histograms"].values():
        assert (out / png).read_bytes().startswith(b"\x89PNG")


def _tables(out: Path):
    train = read_examples(out / "train" / "part-*.tfrecord.gz")
    evals = {s: read_examples(out / s / "part-*.tfrecord.gz") for s in ("valid", "test")}
    collection = defaultdict(set)
    for row in train + evals["valid"] + evals["test"]:
        collection[row[S.USER_INDEX][0]].add(row[S.PLAYLIST_INDEX][0])
    train_of = defaultdict(set)
    for row in train:
        train_of[row[S.USER_INDEX][0]].add(row[S.PLAYLIST_INDEX][0])
    return train, evals, collection, train_of


def test_held_out_playlists_negatives_and_candidate_flags(fixture_run):
    out, summary = fixture_run["out"], fixture_run["summary"]
    train, evals, collection, train_of = _tables(out)
    candidates = {r[S.USER_INDEX][0]: set(r[S.CANDIDATE_PLAYLIST_INDEX]) for r in
                  read_examples(out / S.CANDIDATES_DIR / "part-*.tfrecord.gz")}
    num_playlists = summary["vocabulary"]["playlists"]
    assert len(evals["valid"]) == len(evals["test"]) > 0
    held = defaultdict(set)
    for split, rows in evals.items():
        hits = 0
        for row in rows:
            user, positive = row[S.USER_INDEX][0], row[S.PLAYLIST_INDEX][0]
            negatives = row[S.NEGATIVE_PLAYLIST_INDEX]
            assert positive not in train_of[user]  # the held-out edge is in no train example
            assert len(negatives) == len(set(negatives)) == 50
            assert not set(negatives) & collection[user] and all(0 <= n < num_playlists for n in negatives)
            assert len(collection[user]) >= 3
            assert row[S.POSITIVE_IN_CANDIDATES][0] == int(positive in candidates[user])
            hits += row[S.POSITIVE_IN_CANDIDATES][0]
            held[user].add(positive)
        assert hits == summary["pairing"]["candidate_recall"][split]["positive_in_candidates"]
    assert all(len(p) == 2 for p in held.values())  # valid and test are different playlists
    train_only = [u for u in collection if u not in held]
    assert all(len(collection[u]) < 3 for u in train_only)
    assert len(train_only) == summary["counts"]["users_train_only"]


def test_candidates_and_neighbours_follow_the_rule(fixture_run):
    out = fixture_run["out"]
    _, _, _, train_of = _tables(out)
    neighbours = {r[S.USER_INDEX][0]: r for r in read_examples(out / S.NEIGHBOURS_DIR / "part-*.tfrecord.gz")}
    candidates = {r[S.USER_INDEX][0]: r for r in read_examples(out / S.CANDIDATES_DIR / "part-*.tfrecord.gz")}
    assert set(neighbours) == set(candidates) == set(range(len(_vocab(out, S.USER_VOCAB))))
    for user, row in candidates.items():
        taken = neighbours[user][S.NEIGHBOUR_USER_INDEX]
        similarities = neighbours[user][S.NEIGHBOUR_SIMILARITY]
        assert len(taken) <= 50 and user not in taken and similarities == sorted(similarities, reverse=True)
        reachable = set().union(*(train_of[n] for n in taken)) - train_of[user]
        assert row[S.NUM_REACHABLE][0] == len(reachable)
        assert set(row[S.CANDIDATE_PLAYLIST_INDEX]) <= reachable and len(row[S.CANDIDATE_PLAYLIST_INDEX]) <= 75
        if len(taken) < 50 and len(taken) and len(reachable) >= 20:
            # the last neighbour was needed: without it fewer than 20 were reachable
            before = set().union(*(train_of[n] for n in taken[:-1])) - train_of[user]
            assert len(before) < 20


def test_playlist_tracks_hold_every_playlist_as_content(fixture_run):
    out, data = fixture_run["out"], fixture_run["data"]
    playlist_ids, track_ids = _vocab(out, S.PLAYLIST_VOCAB), _vocab(out, S.TRACK_VOCAB)
    rows = read_examples(out / S.PLAYLIST_TRACKS_DIR / "part-*.tfrecord.gz")
    assert sorted(r[S.PLAYLIST_INDEX][0] for r in rows) == list(range(len(playlist_ids)))
    table = {playlist_ids[r[S.PLAYLIST_INDEX][0]]: [track_ids[t] for t in r[S.TRACK_INDEX]] for r in rows}
    for p in range(0, len(data.playlist_owner), 37):  # held-out playlists included
        pid = S.playlist_id(data.user_ids[data.playlist_owner[p]], data.playlist_names[p])
        expected = [S.track_id(data.track_artist[t], data.track_title[t])
                    for t in data.playlist_tracks[data.playlist_offsets[p]:data.playlist_offsets[p + 1]]]
        assert table[pid] == expected
    assert table["mpd:0/Throwbacks"] == ["spotify:track:0001", "spotify:track:0002"]


def test_examples_parse_with_the_schema_feature_specs(fixture_run):
    import tensorflow as tf

    out = fixture_run["out"]
    for name, spec in (("train", S.train_feature_spec()), ("valid", S.eval_feature_spec()),
                       (S.PLAYLIST_TRACKS_DIR, S.playlist_tracks_feature_spec()),
                       (S.CANDIDATES_DIR, S.candidates_feature_spec()), (S.NEIGHBOURS_DIR, S.neighbours_feature_spec())):
        files = sorted(glob.glob(str(out / name / "part-*.tfrecord.gz")))
        batch = next(iter(tf.data.TFRecordDataset(files, compression_type="GZIP").batch(1000)))
        parsed = tf.io.parse_example(batch, spec)
        assert int(tf.shape(parsed[S.USER_INDEX if name != S.PLAYLIST_TRACKS_DIR else S.PLAYLIST_INDEX])[0]) > 0


def test_rerun_in_another_process_gives_identical_files(fixture_run, tmp_path):
    out, argv = fixture_run["out"], list(fixture_run["argv"])
    again = tmp_path / "again"
    argv[argv.index("--output") + 1] = str(again)
    # Another process: Python's hash seed (set and dict order) differs between processes.
    subprocess.run([sys.executable, "-m", "beam_pipelines.playlists", *argv], check=True, capture_output=True,
                   cwd=REPO, timeout=300, env={**os.environ, "PYTHONHASHSEED": "12345"})
    compared = 0
    for name in (*SHARDED, "rejected", S.VOCAB_DIR):
        for path in sorted(glob.glob(str(out / name / "*"))):
            assert Path(path).read_bytes() == (again / name / os.path.basename(path)).read_bytes(), path
            compared += 1
    assert compared == 6 * 2 + 1 + 3
    first, second = (json.loads((d / "dataset.json").read_text()) for d in (out, again))
    for volatile in ("pipeline_seconds",):
        first.pop(volatile), second.pop(volatile)
    first["pairing"].pop("seconds"), second["pairing"].pop("seconds")
    for summary in (first, second):
        summary["counts"]["detail"] = {k: v for k, v in summary["counts"]["detail"].items() if not k.endswith("_ms")}
    assert first == second


def test_too_many_rejects_fail_with_one_line_and_no_dataset_json(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text(synth.PICHL_HEADER + "\nu1,a,b,Mix\nu1,a,b\nu1,only\n")
    out = tmp_path / "out"
    assert playlists.main(["--input", str(bad), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "of rows rejected" in err and "expected 4 CSV fields" in err
    assert not (out / "dataset.json").exists()


def test_bad_flags_and_headers_are_one_line_errors(tmp_path, capsys):
    assert playlists.main(["--input", str(tmp_path / "none.csv"), "--output", str(tmp_path / "o")]) == 2
    assert "matches no file" in capsys.readouterr().err
    other = tmp_path / "other.csv"
    other.write_text("user_id,song,list\nu1,a,b\n")
    assert playlists.main(["--input", str(other), "--output", str(tmp_path / "o")]) == 2
    assert "header columns user_id, song, list are not user_id, artistname" in capsys.readouterr().err
    assert playlists.main(["--input", str(other), "--output", str(tmp_path / "o"), "--min-reachable", "0"]) == 2
    assert "min-reachable must be >= 1" in capsys.readouterr().err
    assert playlists.main(["--input", str(other), "--output", str(tmp_path / "o"),
                           "--min-playlists-for-holdout", "2"]) == 2
    assert "one test, one valid, one train" in capsys.readouterr().err
