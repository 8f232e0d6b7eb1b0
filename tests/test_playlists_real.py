"""Playlists pipeline on the real samples in ../shared/data (Pichl CSV and the MPD slice): every row accounted for."""
from __future__ import annotations

import json

import pytest

from beam_pipelines import playlists
from schemas import playlists as S
from tests.conftest import read_examples, shared_file

pytestmark = pytest.mark.real_data


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    pichl = shared_file("spotify-playlists-pichl-sample", "spotify_dataset_sample.csv")
    mpd = shared_file("spotify-mpd-sample", "mpd.slice.0-999.first29.json")
    out = tmp_path_factory.mktemp("real") / "out"
    summary = playlists.run(["--input", str(pichl), "--input", str(mpd), "--output", str(out), "--num-shards", "1"])
    return out, summary


def test_both_samples_parse_with_every_row_accounted_for(real_run):
    out, summary = real_run
    assert summary["accounting"]["balanced"], summary["accounting"]
    c = summary["counts"]["detail"]
    # Pichl sample (README): 500 data rows under one header, 456 users, 492 (user, playlist) pairs;
    # one row has an empty artist (kept, counted), none is rejected.
    assert (c["pichl_lines_read"], c["pichl_header_lines"], c["pichl_rows_used"]) == (501, 1, 500)
    assert c.get("pichl_rejected", 0) == 0 and c["pichl_rows_without_artist"] == 1
    # MPD slice (README): 29 playlists, 1447 playlist-track rows, 1397 distinct tracks;
    # a track listed twice in one playlist is a duplicate, so 1430 rows are used.
    assert (c["mpd_playlists_read"], c["mpd_playlists_used"], c["mpd_tracks_read"]) == (29, 29, 1447)
    assert c["mpd_track_duplicates"] + c["mpd_tracks_used"] == 1447 and c["mpd_track_duplicates"] == 17
    assert summary["vocabulary"]["users"] == 456 + 29
    assert summary["vocabulary"]["playlists"] == 492 + 29
    assert summary["vocabulary"]["tracks"] == 498 + 1397  # no track id is shared by the two layouts
    assert summary["mpd_owner_mapping"]["users"] == 29
    assert summary["rejected_fraction"] == 0
    rejected = [json.loads(line) for line in (out / "rejected" / "part-00000-of-00001.jsonl").read_text().splitlines()]
    assert len(rejected) == 17 and all(r["reason"].startswith("duplicate (playlist, track)") for r in rejected)


def test_real_ids_and_tables(real_run):
    out, summary = real_run
    users = (out / S.VOCAB_DIR / S.USER_VOCAB).read_text(encoding="utf-8").split("\n")[:-1]
    assert {f"mpd:{pid}" for pid in range(29)} <= set(users)
    assert "5c2b840d66d02ac7aa6a069eddd17f48" in users
    playlist_ids = (out / S.VOCAB_DIR / S.PLAYLIST_VOCAB).read_text(encoding="utf-8").split("\n")[:-1]
    assert "mpd:0/Throwbacks" in playlist_ids
    assert "5c2b840d66d02ac7aa6a069eddd17f48/Lol HiGh Sk00l MeMorIeZ" in playlist_ids
    tracks = read_examples(out / S.PLAYLIST_TRACKS_DIR / "part-*.tfrecord.gz")
    assert len(tracks) == 521 and sum(len(r[S.TRACK_INDEX]) for r in tracks) == 500 + 1430
    # Almost every user has one playlist: nearly all train-only (3 Pichl users hold >= 3 playlists).
    assert summary["splits"]["valid"]["examples"] == summary["splits"]["test"]["examples"] == 3
    assert summary["splits"]["train"]["examples"] == 521 - 6
