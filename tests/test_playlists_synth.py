"""rawdata.playlist_synth: shape, determinism, planted taste communities, and the CSV layouts it writes."""
from __future__ import annotations

import numpy as np
import pytest

from beam_pipelines import playlist_collections as pc
from rawdata import playlist_synth as synth
from schemas import playlists as S
from tests.conftest import SHARED_DATA


@pytest.fixture(scope="module")
def data() -> synth.SyntheticPlaylists:
    return synth.generate_playlists(3000, seed=2)


def _liked(d: synth.SyntheticPlaylists):
    """Binary user x track matrix of owned and followed playlists (scipy CSR)."""
    import scipy.sparse as sp

    users = np.concatenate([d.playlist_owner, d.follow_user])
    playlists = np.concatenate([np.arange(len(d.playlist_owner)), d.follow_playlist])
    member = sp.csr_matrix((np.ones(len(users)), (users, playlists)), shape=(len(d.user_ids), len(d.playlist_owner)))
    content = sp.csr_matrix((np.ones(d.num_rows), (d.row_playlists(), d.playlist_tracks)),
                            shape=(len(d.playlist_owner), len(d.track_artist)))
    liked = (member @ content).tocsr()
    liked.data[:] = 1.0
    return liked


def test_shape_at_the_seed_scale(data):
    users = len(data.user_ids)
    assert len(set(data.user_ids)) == users and all(len(u) == 32 for u in data.user_ids)
    owned = np.bincount(data.playlist_owner, minlength=users)
    assert owned.min() >= 1 and 5.5 < owned.mean() < 6.5
    lengths = np.diff(data.playlist_offsets)
    assert lengths.min() >= 1 and 5.5 < lengths.mean() < 7.5
    assert 2.5 < len(data.follow_user) / users < 3.5
    assert len(data.track_artist) == pytest.approx(2 * users, rel=0.05)
    assert int(data.user_community.max()) + 1 == 3  # at least 3 communities, one per 1000 users
    # names unique per owner; a track once per playlist; follows never one's own playlist, never twice
    pairs = set(zip(data.playlist_owner.tolist(), data.playlist_names))
    assert len(pairs) == len(data.playlist_names)
    keys = data.row_playlists() * len(data.track_artist) + data.playlist_tracks
    assert len(np.unique(keys)) == len(keys)
    assert not np.any(data.playlist_owner[data.follow_playlist] == data.follow_user)
    follows = data.follow_user * len(data.playlist_owner) + data.follow_playlist
    assert len(np.unique(follows)) == len(follows)
    assert len(set(zip(data.track_artist, data.track_title))) == len(data.track_artist)


def test_deterministic_by_seed():
    a, b, c = (synth.generate_playlists(400, seed=s) for s in (7, 7, 8))
    assert a.user_ids == b.user_ids and a.playlist_names == b.playlist_names
    for name in ("playlist_owner", "playlist_tracks", "follow_user", "follow_playlist", "follow_timestamp"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.user_ids != c.user_ids


def test_users_of_a_community_share_far_more_tracks(data):
    liked = _liked(data)
    norms = np.sqrt(np.asarray(liked.sum(axis=1)).ravel())
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, len(data.user_ids), size=(2, 20000))
    keep = a != b
    a, b = a[keep], b[keep]
    overlap = np.asarray(liked[a].multiply(liked[b]).sum(axis=1)).ravel()
    cosine = overlap / (norms[a] * norms[b])
    same = data.user_community[a] == data.user_community[b]
    within, across = cosine[same].mean(), cosine[~same].mean()
    assert within > 10 * across, (within, across)
    # and the follows lean on the follower's community too
    share = np.mean(data.user_community[data.playlist_owner[data.follow_playlist]] == data.user_community[data.follow_user])
    assert share > 0.85


def test_track_popularity_is_skewed_within_a_community(data):
    counts = np.bincount(data.playlist_tracks, minlength=len(data.track_artist))
    pool = np.sort(counts[data.track_community == 0])[::-1]
    assert pool[: len(pool) // 10].sum() > 0.4 * pool.sum()  # top decile holds far more than a tenth
    assert counts.max() < 0.2 * len(data.playlist_owner)  # but no track is in most playlists


def test_csv_layouts_round_trip_through_the_pipeline_parsers(data, tmp_path):
    small = synth.generate_playlists(60, seed=1, num_communities=2)
    csv_path, follows_path = tmp_path / "p.csv", tmp_path / "f.csv"
    assert synth.write_playlists_csv(small, str(csv_path)) == small.num_rows
    assert synth.write_interactions_csv(small, str(follows_path)) == len(small.follow_user)
    lines = csv_path.read_text(encoding="utf-8").split("\n")
    assert lines[0] == synth.PICHL_HEADER and lines[-1] == ""
    real = SHARED_DATA / "spotify-playlists-pichl-sample" / "spotify_dataset_sample.csv"
    if real.exists():  # the header is byte for byte the real sample's
        assert real.read_text(encoding="utf-8").split("\n")[0] == synth.PICHL_HEADER
    assert pc.header_names(lines[0]) == pc.PICHL_COLUMNS
    playlist = small.row_playlists()
    for i, line in enumerate(lines[1:-1]):
        owner, name, track, _ = pc.parse_pichl_line(line)
        p, t = playlist[i], small.playlist_tracks[i]
        assert owner == small.user_ids[small.playlist_owner[p]] and name == small.playlist_names[p]
        assert track == S.track_id(small.track_artist[t], small.track_title[t])
    assert any('"' in line for line in lines)  # names with commas and quotes were quoted
    follows = follows_path.read_text(encoding="utf-8").split("\n")
    assert follows[0] == synth.INTERACTIONS_HEADER
    for i, line in enumerate(follows[1:-1]):
        user, playlist_id, timestamp = pc.parse_interaction_line(line)
        p = small.follow_playlist[i]
        assert user == small.user_ids[small.follow_user[i]] and timestamp == small.follow_timestamp[i]
        assert playlist_id == S.playlist_id(small.user_ids[small.playlist_owner[p]], small.playlist_names[p])


def test_cli(tmp_path, capsys):
    out, follows = tmp_path / "p.csv", tmp_path / "f.csv"
    assert synth.main(["--num-users", "50", "--output", str(out), "--interactions", str(follows), "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "50 users" in printed and out.exists() and follows.exists()
    assert synth.main(["--num-users", "1", "--output", str(out)]) == 2
