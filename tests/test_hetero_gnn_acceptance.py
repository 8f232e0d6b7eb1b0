"""LastFM GNN acceptance: the real graph end to end, and the edge-type ablation on generated data (slow)."""
from __future__ import annotations

import pytest

from tests.conftest import run_experiment, shared_file


@pytest.mark.real_data
@pytest.mark.slow
def test_real_lastfm_end_to_end(tmp_path):
    from beam_pipelines import lastfm

    folder = shared_file("lastfm_asia")
    summary = lastfm.run(["--edges", str(folder / "lastfm_asia_edges.csv"), "--targets",
                          str(folder / "lastfm_asia_target.csv"), "--output", str(tmp_path / "out")])
    assert summary["counts"]["users"] == {"train": 6098, "valid": 765, "test": 761}
    assert summary["counts"]["follows_pairs"] == 27806 and summary["counts"]["rejected_rows"] == 0
    result = run_experiment("lastfm_hetero_gnn.yaml", tmp_path / "out", tmp_path / "job", "train.epochs=8",
                            "train.patience=3", "train.ensemble_size=1")  # one fit (the YAML averages 3)
    assert result.test["accuracy"] > 0.85 and result.test["macro_f1"] > 0.7


@pytest.mark.slow
def test_ablation_each_edge_type_contributes(tmp_path):
    """On generated data where follows and likes both carry the class, dropping either one costs accuracy."""
    from beam_pipelines import lastfm
    from rawdata import synth

    paths = synth.write_lastfm(synth.generate_lastfm(1000, seed=1, num_classes=4, avg_likes=8,
                                                     follow_homophily=0.5, like_homophily=0.5), str(tmp_path))
    lastfm.run(["--edges", paths["edges.csv"], "--targets", paths["target.csv"], "--features", paths["features.json"],
                "--output", str(tmp_path / "out"), "--num-classes", "4", "--num-shards", "1"])
    accuracy = {}
    for edge_sets in ("follows+likes+liked_by", "follows", "likes+liked_by"):
        metrics = run_experiment("lastfm_hetero_gnn.yaml", tmp_path / "out", tmp_path / edge_sets, "train.epochs=12",
                                 "train.batch_size=32", "train.patience=12", "hparams.hidden_dim=32",
                                 "train.ensemble_size=1",
                                 f"hparams.edge_sets={edge_sets}",
                                 # The GNN alone: Correct and Smooth runs over the friendship graph whatever
                                 # edge sets the model reads, so it would put follows back into the
                                 # likes-only variant.
                                 "hparams.correct_and_smooth=false", "hparams.prior_correction=0").to_json()
        # valid + test (200 users) rather than test alone (100): less noise for the comparison.
        accuracy[edge_sets] = (metrics["valid"]["accuracy"] + metrics["test"]["accuracy"]) / 2
    print(accuracy)
    assert accuracy["follows+likes+liked_by"] > accuracy["follows"] + 0.02
    assert accuracy["follows+likes+liked_by"] > accuracy["likes+liked_by"] + 0.05
