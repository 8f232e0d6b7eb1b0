"""KNN pairing, pure pieces: cosine top-K, the reachable-playlists rule on hand-checkable graphs, candidates, report."""
from __future__ import annotations

import numpy as np
import pytest

from beam_pipelines import knn_pairing as knn


def _index(train: dict[int, list[int]], playlist_tracks: dict[int, list[int]], seed: int = 0,
           held: dict[int, tuple[int, int]] | None = None, block_size: int = 0) -> knn.PairingIndex:
    """An index from user -> train playlists and playlist -> tracks (users and playlists 0..N-1)."""
    held = held or {}
    users = [(u, f"user{u}", train[u], *held.get(u, (-1, -1))) for u in sorted(train)]
    # Two chunks in reverse order: the index must not depend on chunk order.
    chunks = [knn.user_chunk(users[len(users) // 2:], seed), knn.user_chunk(users[:len(users) // 2], seed)]
    counts = [len(playlist_tracks[p]) for p in range(len(playlist_tracks))]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    tracks = np.array([t for p in range(len(playlist_tracks)) for t in playlist_tracks[p]], dtype=np.int64)
    num_tracks = int(tracks.max()) + 1
    return knn.build_index(chunks, (offsets, tracks), num_tracks, block_size=block_size)


def _pair_all(index: knn.PairingIndex, config: knn.PairingConfig) -> dict[int, knn.PairingResult]:
    return {r.user_index: r for b in range(index.num_blocks) for r in knn.pair_block(index, b, config)}


# Hand-checkable graph. Liked tracks (train side): user 0 {0,1,2,3} (owns p0); user 1 {0,1,2,4} (p1, p2);
# user 2 {0,1} (p3); user 3 {3,9} (p4, p5, p6); user 4 {8} (p7: nothing shared); user 5 {0,1,2,3,5,6}
# (p8, p9 and follows p0); user 6 follows p1 and p2, exactly like user 1.
# Cosines with user 0: u5 4/sqrt(24) = .8165, u1 = u6 3/4 = .75 (a tie), u2 2/sqrt(8) = .7071, u3 1/sqrt(8) = .3536.
PLAYLIST_TRACKS = {0: [0, 1, 2, 3], 1: [0, 1, 2], 2: [4], 3: [0, 1], 4: [3], 5: [3], 6: [9], 7: [8], 8: [5], 9: [6]}
TRAIN = {0: [0], 1: [1, 2], 2: [3], 3: [4, 5, 6], 4: [7], 5: [8, 9, 0], 6: [1, 2]}


def test_similarity_order_ties_and_zero_similarity():
    results = _pair_all(_index(TRAIN, PLAYLIST_TRACKS), knn.PairingConfig(k=10, min_reachable=100, max_neighbours=10))
    user0 = results[0]
    assert user0.neighbours.tolist() == [5, 1, 6, 2, 3]  # tie 1/6 to the lower index; user 4 shares nothing
    np.testing.assert_allclose(user0.similarities, [4 / 24**0.5, 0.75, 0.75, 2 / 8**0.5, 1 / 8**0.5], atol=1e-9)
    assert results[4].neighbours.tolist() == [] and results[4].num_reachable == 0
    assert 0 not in results[0].neighbours  # never oneself


def test_rule_stops_at_min_reachable_and_excludes_own_playlists():
    config = knn.PairingConfig(k=10, min_reachable=3, max_neighbours=2)
    user0 = _pair_all(_index(TRAIN, PLAYLIST_TRACKS), config)[0]
    # u5 brings p8, p9 (p0 is user 0's own: not reachable) = 2 < 3; u1 adds p1, p2 = 4 >= 3: stop at 2 neighbours.
    assert user0.neighbours.tolist() == [5, 1]
    assert user0.num_reachable == 4 and user0.candidates.tolist() == [1, 2, 8, 9]
    stop_early = _pair_all(_index(TRAIN, PLAYLIST_TRACKS), knn.PairingConfig(k=10, min_reachable=2, max_neighbours=2))[0]
    assert stop_early.neighbours.tolist() == [5] and stop_early.candidates.tolist() == [8, 9]


def test_rule_never_takes_more_than_max_neighbours():
    user0 = _pair_all(_index(TRAIN, PLAYLIST_TRACKS), knn.PairingConfig(k=10, min_reachable=3, max_neighbours=1))[0]
    assert user0.neighbours.tolist() == [5] and user0.num_reachable == 2  # below min_reachable, but capped


def test_take_neighbours_directly():
    playlists = {1: [10, 11], 2: [11, 12], 3: [13]}
    taken, reachable = knn.take_neighbours([1, 2, 3], np.array([10]), playlists.get, min_reachable=2, max_neighbours=5)
    assert taken == 2 and reachable.tolist() == [11, 12]
    taken, reachable = knn.take_neighbours([1, 2, 3], np.array([]), playlists.get, min_reachable=9, max_neighbours=5)
    assert taken == 3 and reachable.tolist() == [10, 11, 12, 13]


def _star_graph() -> tuple[dict, dict]:
    """User 0 owns p0 {t0}; users 1..60 own p_u {t0, t_u}: all tied with user 0, each bringing one new playlist.

    User 61 owns p61 {t500}; users 62..121 all follow one playlist p62 {t500} owned by user 62: identical
    vectors (similarity 1), and all of them together make one playlist reachable.
    """
    tracks = {0: [0], **{u: [0, u] for u in range(1, 61)}, 61: [500], 62: [500]}
    train = {0: [0], **{u: [u] for u in range(1, 61)}, 61: [61], **{u: [62] for u in range(62, 122)}}
    return train, tracks


def test_default_rule_20_playlists_50_neighbours():
    train, tracks = _star_graph()
    results = _pair_all(_index(train, tracks), knn.PairingConfig())
    assert knn.PairingConfig() == knn.PairingConfig(k=50, min_reachable=20, max_neighbours=50, num_candidates=75)
    assert results[0].neighbours.tolist() == list(range(1, 21))  # 20 neighbours -> 20 reachable: stop
    assert results[0].num_reachable == 20 and results[0].candidates.tolist() == list(range(1, 21))
    assert len(results[61].neighbours) == 50 and results[61].num_reachable == 1  # never more than 50
    assert results[61].neighbours.tolist() == list(range(62, 112))  # the exact top 50 of 60 tied users


def test_candidates_are_seeded_per_user():
    train, tracks = _star_graph()
    config = knn.PairingConfig(min_reachable=20, num_candidates=5)
    first = _pair_all(_index(train, tracks, seed=0), config)[0].candidates
    again = _pair_all(_index(train, tracks, seed=0, block_size=7), config)[0].candidates
    other = _pair_all(_index(train, tracks, seed=1), config)[0].candidates
    assert len(first) == 5 and len(set(first.tolist())) == 5 and set(first.tolist()) <= set(range(1, 21))
    assert first.tolist() == sorted(first.tolist())
    assert first.tolist() == again.tolist()  # same seed, other block layout: same candidates
    assert first.tolist() != other.tolist()


def test_held_out_playlists_stay_out_of_vectors_and_are_flagged():
    # user 0 holds out p1 (valid, tracks {7}) and p2 (test); user 1 has p1 in train.
    tracks = {0: [0], 1: [7], 2: [0], 3: [0, 7]}
    train = {0: [0], 1: [1, 3]}
    index = _index(train, tracks, held={0: (1, 2)})
    assert index.vectors[0].indices.tolist() == [0]  # not track 7 of the held-out p1
    result = _pair_all(index, knn.PairingConfig(min_reachable=1))[0]
    assert result.candidates.tolist() == [1, 3]
    assert (result.valid_hit, result.test_hit, result.valid_reachable) == (1, 0, 1)
    assert _pair_all(index, knn.PairingConfig(min_reachable=1))[1].valid_hit == -1  # user 1 holds nothing out


def test_build_index_checks_user_indices():
    chunk = knn.user_chunk([(0, "a", [0], -1, -1), (2, "b", [0], -1, -1)], seed=0)
    with pytest.raises(ValueError, match="0..N-1"):
        knn.build_index([chunk], (np.array([0, 1]), np.array([0])), 1)


def test_summary_statistics_by_hand():
    stats = knn.summary_statistics([1, 2, 3, 4])
    assert stats == {"count": 4, "min": 1.0, "max": 4.0, "mean": 2.5, "median": 2.5, "p25": 1.75, "p75": 3.25,
                     "p90": pytest.approx(3.7), "p99": pytest.approx(3.97)}


def test_pairing_report_counts_times_chosen_for_every_user():
    parts = [{"neighbours": np.array([2, 1]), "reachable": np.array([5, 3]), "chosen": np.array([1, 2, 1])},
             {"neighbours": np.array([0]), "reachable": np.array([0]), "chosen": np.array([], dtype=np.int64)}]
    report = knn.pairing_report(parts, num_users=4, config=knn.PairingConfig())
    assert report["distributions"]["times_chosen_as_neighbour"].tolist() == [0, 2, 1, 0]
    assert report["statistics"]["neighbours_per_user"]["max"] == 2.0
    assert report["statistics"]["reachable_playlists"]["median"] == 3.0
    png = knn.histogram_png(np.array([0, 1, 1, 5]), "t", "x", knn.summary_statistics([0, 1, 1, 5]))
    assert png.startswith(b"\x89PNG")
