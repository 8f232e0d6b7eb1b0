"""Playlist ranking: the KNN-candidate metrics by hand, the track pooling, both rankers through the one
experiment on a tiny pipeline output, the popularity baseline, and ``recommend`` (never a playlist the user has)."""
from __future__ import annotations

import json
import math
import shutil
from collections import defaultdict

import numpy as np
import pytest

from schemas import playlists as S
from tests.conftest import METRICS_TOP_LEVEL, read_examples, run_experiment

SHOWN = ("mrr", "hit@1", "hit@5", "hit@10", "ndcg@10", "knn_mrr", "knn_hit@1", "knn_hit@5", "knn_hit@10",
         "knn_candidate_recall", "knn_in_mrr")


# --------------------------------------------------------------------------- pure pieces
def test_candidate_ranking_metrics_by_hand():
    from trainer import playlists

    scores = np.array([[0.9, 0.5, 0.95, 0.0],   # the positive is a candidate; one scores higher: rank 1
                       [0.8, 0.1, 0.2, 0.3],    # the positive is not a candidate: a miss everywhere
                       [0.1, 0.1, 0.0, 0.7]])   # a tie counts against the model; the 0.7 is padding: rank 1
    valid = np.array([[True, True, True, False], [True, True, True, True], [True, True, True, False]])
    result = playlists.candidate_ranking_metrics(scores, valid, np.array([True, False, True]))
    assert result["knn_hit@1"] == 0.0 and result["knn_hit@5"] == pytest.approx(2 / 3)
    assert result["knn_mrr"] == pytest.approx((1 / 2 + 0 + 1 / 2) / 3)
    assert result["knn_ndcg@5"] == pytest.approx(2 / math.log2(3) / 3)
    assert result["knn_in_mrr"] == pytest.approx(1 / 2) and result["knn_in_hit@5"] == 1.0
    assert result["knn_candidate_recall"] == pytest.approx(2 / 3) and result["knn_num_users"] == 3
    assert result["knn_mean_candidates"] == pytest.approx((3 + 3 + 3) / 3)  # the positive counted where it is one
    assert result["knn_hr@5"] == result["knn_hit@5"]


def test_csr_rows_in_any_order():
    from trainer import playlists

    csr = playlists.CSR.from_rows(np.array([2, 0]), np.array([3, 1]), np.array([7, 8, 9, 5]), num_rows=4)
    assert csr.offsets.tolist() == [0, 1, 1, 4, 4] and csr.values.tolist() == [5, 7, 8, 9]
    assert csr.row(2).tolist() == [7, 8, 9] and csr.row(1).tolist() == []
    assert csr.dense(np.array([2, 1, 0])).tolist() == [[7, 8, 9], [-1, -1, -1], [5, -1, -1]]
    with pytest.raises(ValueError, match="twice"):
        playlists.CSR.from_rows(np.array([1, 1]), np.array([1, 1]), np.array([1, 2]), num_rows=3)


def test_track_pool_mean_and_sqrt_by_hand():
    import tensorflow as tf

    from trainer.models.playlist_tracks_bpr import TrackPool

    table = tf.constant(np.arange(12, dtype=np.float32).reshape(4, 3))  # row t = [3t, 3t+1, 3t+2]
    offsets, tracks = np.array([0, 2, 2, 4]), np.array([1, 0, 3, 2])  # rows: {1, 0}, {}, {3, 2}
    ids = tf.constant([2, 0, 1, 3])  # 3 is the OOV id: zeros, as is the empty row 1
    mean = TrackPool(offsets, tracks, "mean")(ids, table).numpy()
    np.testing.assert_allclose(mean, [[7.5, 8.5, 9.5], [1.5, 2.5, 3.5], [0, 0, 0], [0, 0, 0]])
    root = TrackPool(offsets, tracks, "sqrt")(ids, table).numpy()
    np.testing.assert_allclose(root[0], np.array([15.0, 17.0, 19.0]) / np.sqrt(2), rtol=1e-6)
    # The gradient reaches the table's rows of the pooled tracks only, weighted 1/n per use.
    variable = tf.Variable(table)
    weights = tf.constant(np.arange(1, 13, dtype=np.float32).reshape(4, 3))  # d loss / d pooled row
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(TrackPool(offsets, tracks, "mean")(ids, variable) * weights)
    expected = np.zeros((4, 3), np.float32)
    expected[[3, 2]] = weights.numpy()[0] / 2  # id 2 -> tracks {3, 2}
    expected[[1, 0]] = weights.numpy()[1] / 2  # id 0 -> tracks {1, 0}
    np.testing.assert_allclose(tf.convert_to_tensor(tape.gradient(loss, variable)).numpy(), expected)
    pool = TrackPool(offsets, tracks, "mean")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])  # a batch's unknown size, as in fit
    def traced_gradient(batch):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(pool(batch, variable) * weights)
        return tf.convert_to_tensor(tape.gradient(loss, variable))

    np.testing.assert_allclose(traced_gradient(tf.constant([2, 0, 1, 3], tf.int64)).numpy(), expected)
    assert TrackPool(offsets, tracks, "mean")(tf.zeros([0], tf.int64), table).shape == (0, 3)


# --------------------------------------------------------------------------- a tiny pipeline output, both rankers
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from beam_pipelines import playlists as pipeline
    from rawdata import playlist_synth as synth

    work = tmp_path_factory.mktemp("playlist_ranking")
    data = synth.generate_playlists(300, seed=5, num_communities=3)
    csv_path, follows_path = str(work / "playlists.csv"), str(work / "follows.csv")
    synth.write_playlists_csv(data, csv_path)
    synth.write_interactions_csv(data, follows_path)
    out = work / "out"
    pipeline.run(["--input", csv_path, "--interactions", follows_path, "--output", str(out), "--num-shards", "1"])
    small = ("train.batch_size=512", "train.shuffle_buffer=4096", "hparams.embedding_dim=16")
    tracks = run_experiment("playlists_tracks_bpr.yaml", out, work / "job_tracks", "train.epochs=2", *small)
    ids = run_experiment("playlists_bpr.yaml", out, work / "job_ids", "train.epochs=1", *small)
    return {"out": out, "work": work, "tracks": tracks, "ids": ids}


def _collections(out) -> tuple[list[str], list[str], dict[int, set[int]], dict[int, set[int]]]:
    """Vocabularies, each user's whole collection (train + held out) and KNN candidates, read from the files."""
    users = (out / S.VOCAB_DIR / S.USER_VOCAB).read_text(encoding="utf-8").split("\n")[:-1]
    playlists = (out / S.VOCAB_DIR / S.PLAYLIST_VOCAB).read_text(encoding="utf-8").split("\n")[:-1]
    collection: dict[int, set[int]] = defaultdict(set)
    for split in S.SPLITS:
        for row in read_examples(out / split / "part-*.tfrecord.gz"):
            collection[row[S.USER_INDEX][0]].add(row[S.PLAYLIST_INDEX][0])
    candidates = {r[S.USER_INDEX][0]: set(r[S.CANDIDATE_PLAYLIST_INDEX])
                  for r in read_examples(out / S.CANDIDATES_DIR / "part-*.tfrecord.gz")}
    return users, playlists, collection, candidates


@pytest.mark.slow
def test_both_rankers_report_both_protocols_in_the_one_output_contract(trained):
    summary = json.loads((trained["out"] / "dataset.json").read_text())
    for name, model in (("tracks", "playlist_tracks_bpr"), ("ids", "playlist_bpr")):
        result = trained[name]
        written = json.loads((trained["work"] / f"job_{name}" / "metrics.json").read_text())
        assert set(written) == METRICS_TOP_LEVEL and written["model"] == model
        assert written["task"] == "playlist_ranking" and written["selection"]["monitor"] == "mrr"
        for split in ("valid", "test"):
            values = result.to_json()[split]
            assert all(0.0 <= values[k] <= 1.0 for k in SHOWN), (name, split, values)
            assert values["num_candidates"] == 51  # the positive and its 50 fixed negatives
            recall = summary["pairing"]["candidate_recall"][split]["candidate_recall"]
            assert values["knn_candidate_recall"] == pytest.approx(recall, abs=1e-6)  # dataset.json rounds to 6 places
            assert values["knn_hit@10"] <= values["knn_candidate_recall"] + 1e-12  # a non-candidate is a miss
            assert values["hit@1"] <= values["hit@5"] <= values["hit@10"]
        plots = {p.name for p in (trained["work"] / f"job_{name}" / "plots").iterdir()}
        assert {"loss.png", "positive_rank.png"} <= plots
    # Track content scores held-out playlists no train member ever touched; the planted communities make it
    # beat the id-only model even after a few steps (the id-only model can only learn popularity-like signal).
    assert trained["tracks"].valid["mrr"] > trained["ids"].valid["mrr"]


@pytest.mark.slow
def test_popularity_baseline_matches_a_direct_count(trained):
    from baselines import playlist_popularity

    out = trained["out"]
    result = playlist_popularity.evaluate(str(out))
    members = np.zeros(json.loads((out / "dataset.json").read_text())["vocabulary"]["playlists"])
    for row in read_examples(out / "train" / "part-*.tfrecord.gz"):
        members[row[S.PLAYLIST_INDEX][0]] += 1
    rows = read_examples(out / "valid" / "part-*.tfrecord.gz")
    ranks = np.array([(members[r[S.NEGATIVE_PLAYLIST_INDEX]] >= members[r[S.PLAYLIST_INDEX][0]]).sum() for r in rows])
    assert result["valid"]["mrr"] == pytest.approx(np.mean(1.0 / (ranks + 1)))
    assert result["valid"]["hit@5"] == pytest.approx(np.mean(ranks < 5))
    assert trained["tracks"].valid["mrr"] > result["valid"]["mrr"]  # planted tastes: content beats popularity


@pytest.mark.slow
def test_recommend_never_returns_a_playlist_the_user_has(trained):
    from trainer import playlist_serving

    out = trained["out"]
    users, playlist_ids, collection, candidates = _collections(out)
    recommender = playlist_serving.Recommender(trained["tracks"].outputs["export"])
    answers = recommender([*users, "no-such-user"])
    index = {p: i for i, p in enumerate(playlist_ids)}
    filled = 0
    for user, answer in enumerate(answers[:-1]):
        assert answer.known_user and len(answer.playlists) == playlist_serving.TOP_K
        chosen = [index[p] for p, _, _ in answer.playlists]
        assert len(set(chosen)) == len(chosen) and not set(chosen) & collection[user], user
        from_candidates = [i for i, (_, _, c) in zip(chosen, answer.playlists) if c]
        usable = candidates[user] - collection[user]
        assert set(from_candidates) <= usable and len(from_candidates) == min(len(usable), playlist_serving.TOP_K)
        scores = [s for _, s, c in answer.playlists if c]
        assert scores == sorted(scores, reverse=True) and answer.num_candidates == len(usable)
        filled += len(from_candidates) < playlist_serving.TOP_K
    unknown = answers[-1]
    assert not unknown.known_user and unknown.popular_fallback and len(unknown.playlists) == playlist_serving.TOP_K
    assert not any(c for _, _, c in unknown.playlists)
    scores = [s for _, s, _ in unknown.playlists]
    assert scores == sorted(scores, reverse=True) and scores[0] >= 2  # member counts of the most popular


@pytest.mark.slow
def test_recommend_command_prints_and_refuses_a_non_export(trained, capsys, tmp_path):
    from trainer import playlist_serving

    out = trained["out"]
    user = (out / S.VOCAB_DIR / S.USER_VOCAB).read_text(encoding="utf-8").split("\n")[0]
    assert playlist_serving.main(["--export", trained["ids"].outputs["export"], user, "nobody"]) == 0
    printed = capsys.readouterr().out
    assert f"user {user}: " in printed and "user nobody: unknown user -> the most popular playlists" in printed
    assert printed.count("  1. ") == 2
    assert playlist_serving.main(["--export", str(tmp_path), user]) == 2
    assert capsys.readouterr().err.strip() == f"playlist_serving: error: no SavedModel in {tmp_path}"


@pytest.mark.slow
def test_a_missing_table_is_one_clear_error(trained, tmp_path):
    from trainer import data as data_lib
    from trainer import playlists

    copy = tmp_path / "out"
    shutil.copytree(trained["out"], copy)
    (copy / S.CANDIDATES_DIR / "part-00000-of-00001.tfrecord.gz").unlink()
    with pytest.raises(data_lib.DataError, match="candidates shard .* is missing; .* rerun python -m beam_pipelines"):
        playlists.load_playlist_data(str(copy), model="playlist_bpr", verify_records=False)


@pytest.mark.slow
def test_leaderboard_rows_show_the_playlist_metrics(trained):
    from workflows import leaderboard

    rows = [{"model": r.model, "task": r.task, "data": r.data, "valid": r.valid, "test": r.test,
             "best_epoch": r.selection["best_epoch"], "epochs_run": r.selection["epochs_run"],
             "train_seconds": r.timings["train_seconds"], "examples_per_second": r.timings["train_examples_per_second"]}
            for r in (trained["tracks"], trained["ids"])]
    table = leaderboard.markdown_table(rows).splitlines()
    assert table[2].startswith("| playlist_tracks_bpr | playlist_ranking | out | mrr ")
    assert "knn_mrr" in table[2] and "hit@5" in table[3] and table[3].startswith("| playlist_bpr |")
