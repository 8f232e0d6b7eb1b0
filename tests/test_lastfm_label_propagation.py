"""The label propagation baseline: the propagation itself, and a run on generated and real graphs."""
import numpy as np
import pytest

from tools import lastfm_label_propagation as lp
from tools import synth

from tests.conftest import shared_file


def test_propagation_spreads_along_edges_and_keeps_clamped_rows():
    # path 0 - 1 - 2 - 3: node 0 is class 0, node 3 class 1; 1 and 2 take the nearer one.
    edges = np.array([[0, 1], [1, 2], [2, 3]])
    seeds = np.zeros((4, 2))
    seeds[0, 0] = seeds[3, 1] = 1.0
    clamp = np.array([True, False, False, True])
    scores = lp.propagate(edges, 4, seeds, clamp, alpha=0.9, iterations=50)
    assert scores.argmax(axis=1).tolist() == [0, 0, 1, 1]
    np.testing.assert_array_equal(scores[clamp], seeds[clamp])


def test_beats_the_majority_class_on_a_planted_graph(tmp_path, capsys):
    paths = synth.write_lastfm(synth.generate_lastfm(600, seed=2, num_classes=4, avg_likes=3), str(tmp_path))
    users, labels, edges, skipped = lp.read_graph(paths["edges.csv"], paths["target.csv"], 4)
    assert skipped == 0 and len(users) == 600
    result = lp.evaluate(users, labels, edges, seed=0, fractions=(0.8, 0.1, 0.1), num_classes=4, alpha=0.9, iterations=30)
    majority = np.bincount(labels).max() / len(labels)
    assert result["test"]["accuracy"] > majority + 0.2
    assert result["valid"]["users"] + result["test"]["users"] == pytest.approx(120, abs=4)


@pytest.mark.real_data
def test_real_lastfm_asia_seed_0(capsys):
    edges, targets = shared_file("lastfm_asia", "lastfm_asia_edges.csv"), shared_file("lastfm_asia", "lastfm_asia_target.csv")
    assert lp.main(["--edges", str(edges), "--targets", str(targets), "--seeds", "0"]) == 0
    out = capsys.readouterr().out
    assert "7624 labelled users, 27806 friendships, 0 rows skipped" in out
    assert "seed 0: valid acc 0.8667 macro-F1 0.7959 | test acc 0.8686 macro-F1 0.7779" in out
