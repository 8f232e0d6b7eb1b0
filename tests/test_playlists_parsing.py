"""Playlists pipeline, pure pieces: raw layouts, duplicates, collections, hold-out, negatives, example bytes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from beam_pipelines import playlist_collections as pc
from beam_pipelines import playlists
from schemas import playlists as S

USER = "5c2b840d66d02ac7aa6a069eddd17f48"


# --------------------------------------------------------------------------- ids
def test_ids_are_unambiguous_and_one_line():
    assert S.playlist_id("u1", "  Rock/Pop\nmix\t ") == "u1/Rock/Pop mix"
    assert S.split_playlist_id("u1/Rock/Pop mix") == ("u1", "Rock/Pop mix")
    for bad in ("noslash", "/name", "owner/"):
        with pytest.raises(ValueError):
            S.split_playlist_id(bad)
    assert S.track_id(" Spice Girls ", "Wannabe\u2028Radio") == "Spice Girls\x1fWannabe Radio"
    assert S.clean_text("caf\u00e9 \U0001f3b8 ") == "caf\u00e9 \U0001f3b8"
    assert S.mpd_owner(17) == "mpd:17"


# --------------------------------------------------------------------------- Pichl CSV
def test_pichl_header_of_the_real_sample_and_the_original_file():
    sample = 'user_id," ""artistname"""," ""trackname"""," ""playlistname"""'
    original = '"user_id", "artistname", "trackname", "playlistname"'
    for header in (sample, original):
        assert pc.is_header(header)
        assert pc.header_names(header) == pc.PICHL_COLUMNS
    assert not pc.is_header(f"{USER},Spice Girls,Wannabe,Lol")


def test_pichl_lines_quoted_commas_and_quotes():
    assert pc.parse_pichl_line(f"{USER},Spice Girls,Wannabe - Radio Edit,Lol HiGh Sk00l MeMorIeZ") == (
        USER, "Lol HiGh Sk00l MeMorIeZ", "Spice Girls\x1fWannabe - Radio Edit", True)
    owner, name, track, _ = pc.parse_pichl_line(f'{USER},"Weird Al"" Yankovic""","White, Nerdy",musik')
    assert (owner, name, track) == (USER, "musik", 'Weird Al" Yankovic"\x1fWhite, Nerdy')
    # the original file's `", "` separators
    assert pc.parse_pichl_line(f'"{USER}", "Elvis Costello", "Red Shoes", "HARD ROCK 2010"')[1] == "HARD ROCK 2010"
    # an empty artist is allowed (the real sample has one) and reported
    assert pc.parse_pichl_line(f"{USER},,avicii vs nicky romero,Bautizo")[2:] == ("\x1favicii vs nicky romero", False)


@pytest.mark.parametrize("text, reason", [
    (f"{USER},a,b", "expected 4 CSV fields"),
    (f"{USER},a,b,c,d", "expected 4 CSV fields"),
    (f'{USER},"unterminated,b,c', "malformed CSV"),
    (f'{USER},"a"x,b,c', "malformed CSV"),
    (",a,b,c", "empty user_id"),
    ("bad user,a,b,c", "white space"),
    ("a/b,a,b,c", "contains '/'"),
    ("mpd:3,a,b,c", "reserved for MPD"),
    (f"{USER},a,,c", "empty trackname"),
    (f"{USER},a,b,  ", "empty playlistname"),
])
def test_pichl_rejections_say_why(text, reason):
    with pytest.raises(pc.RowError, match=reason):
        pc.parse_pichl_line(text)


def test_interaction_lines():
    assert pc.parse_interaction_line(f'u2,"{USER}/Rock, Paper",1400000000') == ("u2", f"{USER}/Rock, Paper", 1400000000)
    assert pc.parse_interaction_line("u2,u1/Mix") == ("u2", "u1/Mix", None)
    for text, reason in (("u2,nolist", "is not <owner>/<name>"), ("u2,u1/x,-5", "not a non-negative integer"),
                         ("u2", "expected 2 or 3"), ("u2,u1/\x01\x02,5", "empty playlist name")):
        with pytest.raises(pc.RowError, match=reason):
            pc.parse_interaction_line(text)


def test_detect_format():
    assert pc.detect_format("x/mpd.slice.0-999.json", "{") == "mpd"
    assert pc.detect_format("x/slice.JSON.gz", "") == "mpd"
    assert pc.detect_format("x/data.txt", '  {"info": ') == "mpd"
    assert pc.detect_format("x/spotify_dataset.csv", "user_id,...") == "pichl"


# --------------------------------------------------------------------------- MPD JSON
def test_mpd_entries_and_tracks():
    assert pc.check_mpd_playlist({"pid": 3, "name": " Throwbacks ", "tracks": []}) == (3, "Throwbacks", [])
    for entry, reason in (([], "not an object"), ({"pid": "3", "name": "x", "tracks": []}, "pid '3'"),
                          ({"pid": True, "name": "x", "tracks": []}, "pid True"),
                          ({"pid": 3, "name": "  ", "tracks": []}, "name is missing"),
                          ({"pid": 3, "name": "x", "tracks": {}}, "tracks is not a list")):
        with pytest.raises(pc.RowError, match=reason):
            pc.check_mpd_playlist(entry)
    assert pc.check_mpd_track({"track_uri": "spotify:track:0UaMYEvWZi0ZqiDOoHU3YI"}) == "spotify:track:0UaMYEvWZi0ZqiDOoHU3YI"
    for track in ("x", {"track_name": "no uri"}, {"track_uri": "a b"}):
        with pytest.raises(pc.RowError):
            pc.check_mpd_track(track)
    with pytest.raises(pc.RowError, match="not JSON"):
        pc.parse_mpd_document('{"playlists": [')
    with pytest.raises(pc.RowError, match="playlists"):
        pc.parse_mpd_document('{"info": {}}')


# --------------------------------------------------------------------------- grouping
def test_build_playlists_first_position_wins():
    rows = [
        pc.Row(USER, "Mix", "a\x1f1", 0, 3, 0),
        pc.Row(USER, "Mix", "a\x1f2", 0, 2, 0),
        pc.Row(USER, "Mix", "a\x1f1", 1, 1, 0),  # same (playlist, track), later file: duplicate
        pc.Row(USER, "Other", "a\x1f1", 0, 4, 0),
        pc.Row("mpd:7", "Chill", "spotify:track:x", 1, 5, 1),
        pc.Row("mpd:7", "Chill", "spotify:track:x", 1, 5, 3),  # a track repeated inside one MPD playlist
        pc.Row("mpd:7", "Chill", "spotify:track:y", 2, 1, 1),  # pid 7 again in another file
    ]
    built = pc.build_playlists(rows, ["f0", "f1", "f2"])
    assert built.playlists == [(f"{USER}/Mix", USER, ("a\x1f2", "a\x1f1")), (f"{USER}/Other", USER, ("a\x1f1",)),
                               ("mpd:7/Chill", "mpd:7", ("spotify:track:x",))]
    assert built.counts == {"pichl_rows_used": 3, "pichl_duplicates": 1, "mpd_tracks_used": 1,
                            "mpd_track_duplicates": 2, "mpd_playlists_used": 1, "mpd_playlists_duplicate": 1}
    reasons = sorted((d["source"], d["line"], d["reason"]) for d in built.duplicates)
    assert reasons == [
        ("f1", 1, "duplicate (playlist, track): first at f0:3"),
        ("f1", 5, "duplicate (playlist, track): first at f1:5 track 0"),
        ("f2", 1, "duplicate MPD playlist mpd:7: first at f1 playlist #5"),
    ]


def test_collect_memberships_rejects_unknown_own_and_repeated_follows():
    index = {"a/P": 0, "a/Q": 1, "b/R": 2}
    owned = [("a", "a/P"), ("a", "a/Q"), ("b", "b/R")]
    follows = [("b", "a/P", 0, 5), ("b", "a/P", 0, 9), ("a", "a/Q", 0, 6), ("c", "a/Z", 0, 7), ("c", "b/R", 0, 8)]
    collections, rejections, counts = pc.collect_memberships(owned, follows, index, ["follows.csv"])
    assert collections == [("a", ((0, 1), (1, 1))), ("b", ((0, 0), (2, 1))), ("c", ((2, 0),))]
    assert counts == {"interactions_used": 2, "interactions_unknown_playlist": 1, "interactions_own_playlist": 1,
                      "interactions_duplicates": 1}
    assert sorted((r["line"], r["reason"]) for r in rejections) == [
        (6, "duplicate: the user owns this playlist"), (7, "unknown playlist_id (no such playlist)"),
        (9, "duplicate follow: first at follows.csv:5")]


def test_vocabulary_blob_round_trip():
    blob = pc.encode_ids(["b", "a/x y", "c"])
    lookup = pc.Lookup()(blob)
    assert lookup.ids == ["a/x y", "b", "c"] and lookup.index == {"a/x y": 0, "b": 1, "c": 2}


# --------------------------------------------------------------------------- split
def test_holdout_by_stable_hash_and_min_playlists():
    ids = [f"u/p{i}" for i in range(6)]
    test, valid = playlists.holdout("u", ids, seed=0, min_playlists=3)
    assert test != valid and {test, valid} <= set(ids)
    assert (test, valid) == playlists.holdout("u", list(reversed(ids)), seed=0, min_playlists=3)  # order-free
    assert playlists.holdout("u", ids[:2], seed=0, min_playlists=3) == (None, None)
    assert playlists.holdout("u", ids[:4], seed=0, min_playlists=5) == (None, None)
    picks = {playlists.holdout("u", ids, seed=s, min_playlists=3) for s in range(20)}
    assert len(picks) > 5  # the seed moves the hold-out


def test_negatives_never_in_collection_distinct_and_seeded():
    collection = set(range(0, 100, 3))
    a = playlists.sample_negatives(100, collection, 50, seed=5)
    assert len(a) == len(set(a)) == 50 and not set(a) & collection and all(0 <= p < 100 for p in a)
    assert a == playlists.sample_negatives(100, collection, 50, seed=5)
    assert a != playlists.sample_negatives(100, collection, 50, seed=6)
    # fewer candidates than asked: every playlist outside the collection
    assert playlists.sample_negatives(10, {1, 2, 3}, 50, seed=0) == [0, 4, 5, 6, 7, 8, 9]


def test_negatives_of_a_bucket_are_each_users_own_stream():
    """The vectorized bucket path gives, per user, the first distinct draws of that user's stream
    outside their collection, whatever else is in the bucket (clashing users included)."""
    rng = np.random.default_rng(0)
    collections = [set(rng.choice(200, size=k, replace=False).tolist()) for k in (0, 3, 120, 9, 150)]
    seeds = [11, 2**63 + 5, 7, 7, 123456789]
    together = playlists.sample_negatives_many(200, collections, 40, seeds)
    for collection, seed, got in zip(collections, seeds, together):
        assert got == playlists._walk_stream(200, collection, 40, seed)
        assert got == playlists.sample_negatives(200, collection, 40, seed)
        assert len(got) == len(set(got)) == 40 and not set(got) & collection
    stream = playlists.negative_draws([11], 0, 400, 200)[0].tolist()
    assert together[0] == list(dict.fromkeys(stream))[:40]  # empty collection: the distinct draws in order


# --------------------------------------------------------------------------- examples
def test_encode_example_is_tensorflows_deterministic_bytes():
    from tensorflow.core.example import example_pb2

    ints = {S.USER_INDEX: [3], S.NEGATIVE_PLAYLIST_INDEX: [7, 600_001, 2**40], S.TRACK_INDEX: []}
    floats = {S.NEIGHBOUR_SIMILARITY: [0.25, 1.0]}
    expected = example_pb2.Example()
    for key, values in ints.items():
        expected.features.feature[key].int64_list.value.extend(values)
    for key, values in floats.items():
        expected.features.feature[key].float_list.value.extend(values)
    got = playlists.encode_example(ints, floats)
    assert got == expected.SerializeToString(deterministic=True)
    parsed = example_pb2.Example.FromString(got)
    assert list(parsed.features.feature[S.NEGATIVE_PLAYLIST_INDEX].int64_list.value) == [7, 600_001, 2**40]


def test_playlist_table_from_unordered_chunks():
    chunks = [(np.array([2, 0]), np.array([0, 2, 3]), np.array([5, 6, 7])), (np.array([1]), np.array([0, 1]), np.array([8]))]
    offsets, tracks = playlists.playlist_table(chunks)
    assert offsets.tolist() == [0, 1, 2, 4] and tracks.tolist() == [7, 8, 5, 6]


def test_rejection_summary_of_an_mpd_entry_drops_the_track_list():
    text = pc._mpd_summary({"pid": 1, "name": "x", "tracks": [{}] * 40})
    assert json.loads(text) == {"pid": 1, "name": "x", "tracks": "<40 tracks>"}
